"""REST trade history: the endpoints that fill a hole in a trade stream, and their pure parsers.

Both venues number aggregated trades and trades contiguously per symbol, so a hole the
websocket left is a range of ids, fetched with ``fromId`` paging (docs/binance.md, REST):

===============================  =====  =======  ===========  ================================
endpoint                         limit  weight   key          rows
===============================  =====  =======  ===========  ================================
``GET /fapi/v1/aggTrades``       1000   20       no           ``{a,p,q,f,l,T,m}`` (+ ``nq``)
``GET /api/v3/aggTrades``        1000   4        no           ``{a,p,q,f,l,T,m,M}``
``GET /fapi/v1/historicalTrades`` 500   20       MARKET_DATA  ``{id,price,qty,quoteQty,time,…}``
``GET /api/v3/historicalTrades``  1000  25       (see below)  ``{id,price,qty,quoteQty,time,…}``
===============================  =====  =======  ===========  ================================

USDⓈ-M ``aggTrades`` only serves recent history (24-48 h); ``historicalTrades`` needs an API key
in ``X-MBX-APIKEY`` on USDⓈ-M. ingestd backfills trades only when ``INGESTD_API_KEY`` is set.

REST rows carry no event time: records built from them have ``exchange_ts=None``,
``transaction_ts`` = the trade time, ``recv_ts`` = when the response was read, ``source="rest"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import msgspec

from ingestd.errors import ParseError
from ingestd.records import AggTrade, Trade
from ingestd.venues.binance.symbols import Contract

_MS: Final = 1_000_000

HistoryChannel = Literal["agg_trade", "trade"]


@dataclass(frozen=True, slots=True)
class HistoryEndpoint:
    """One REST history endpoint of one venue."""

    path: str
    weight: int
    limit: int
    """Most rows per request."""
    needs_key: bool


ENDPOINTS: Final[dict[tuple[str, str], HistoryEndpoint]] = {
    ("binance-usdm", "agg_trade"): HistoryEndpoint("/fapi/v1/aggTrades", 20, 1000, needs_key=False),
    ("binance-spot", "agg_trade"): HistoryEndpoint("/api/v3/aggTrades", 4, 1000, needs_key=False),
    ("binance-usdm", "trade"): HistoryEndpoint("/fapi/v1/historicalTrades", 20, 500, needs_key=True),
    ("binance-spot", "trade"): HistoryEndpoint("/api/v3/historicalTrades", 25, 1000, needs_key=True),
}
"""(venue, channel) → its history endpoint. Spot ``historicalTrades`` is gated on a key too:
ingestd asks for trades only with ``INGESTD_API_KEY`` (the key is then sent)."""


class _AggRow(msgspec.Struct, frozen=True):
    a: int
    p: str
    q: str
    f: int
    l: int  # noqa: E741 - Binance's field name
    T: int
    m: bool
    nq: str | None = None


class _TradeRow(msgspec.Struct, frozen=True, rename={"is_buyer_maker": "isBuyerMaker"}):
    id: int
    price: str
    qty: str
    time: int
    is_buyer_maker: bool


class _Error(msgspec.Struct, frozen=True):
    code: int
    msg: str = ""


_AGG_ROWS: Final = msgspec.json.Decoder(list[_AggRow])
_TRADE_ROWS: Final = msgspec.json.Decoder(list[_TradeRow])
_ERROR: Final = msgspec.json.Decoder(_Error)


def _decode_error(body: bytes | str, where: str, exc: Exception) -> ParseError:
    try:
        e = _ERROR.decode(body)
    except msgspec.DecodeError:
        return ParseError(f"bad history body: {exc}", stream=where)
    return ParseError(f"Binance error {e.code}: {e.msg}", stream=where)


def parse_agg_trades(venue: str, contract: Contract, body: bytes | str, recv_ts: int) -> list[AggTrade]:
    """An ``aggTrades`` body → records, in the body's order [real spot row, nautilus_trader
    ``http_spot_market_agg_trades.json``]::

        [{"a":966492862,"p":"60759.60000000","q":"0.00841000","f":1111480471,"l":1111480471,
          "T":1634944096633,"m":false,"M":true}]

    Raises :class:`ParseError` for an error body or any other shape.
    """
    where = f"aggTrades?symbol={contract.native}"
    try:
        rows = _AGG_ROWS.decode(body)
        return [
            AggTrade(
                venue=venue,
                symbol=contract.symbol,
                native=contract.native,
                exchange_ts=None,
                recv_ts=recv_ts,
                transaction_ts=r.T * _MS,
                agg_id=r.a,
                first_trade_id=r.f,
                last_trade_id=r.l,
                price=float(r.p),
                qty=float(r.q),
                is_buyer_maker=r.m,
                normal_qty=None if r.nq is None else float(r.nq),
                source="rest",
            )
            for r in rows
        ]
    except msgspec.DecodeError as exc:
        raise _decode_error(body, where, exc) from exc
    except ValueError as exc:
        raise ParseError(f"bad number in aggTrades row: {exc}", stream=where) from exc


def parse_historical_trades(venue: str, contract: Contract, body: bytes | str, recv_ts: int) -> list[Trade]:
    """A ``historicalTrades`` body → records [real spot row, nautilus_trader
    ``http_spot_market_historical_trades.json``]::

        [{"id":1111471896,"price":"60814.78000000","qty":"0.00034000","quoteQty":"20.67702520",
          "time":1634943219887,"isBuyerMaker":true,"isBestMatch":true}]

    The stream's ``X`` (trade type) is not in the rows: ``trade_type`` stays ``None``.
    """
    where = f"historicalTrades?symbol={contract.native}"
    try:
        rows = _TRADE_ROWS.decode(body)
        return [
            Trade(
                venue=venue,
                symbol=contract.symbol,
                native=contract.native,
                exchange_ts=None,
                recv_ts=recv_ts,
                transaction_ts=r.time * _MS,
                trade_id=r.id,
                price=float(r.price),
                qty=float(r.qty),
                is_buyer_maker=r.is_buyer_maker,
                source="rest",
            )
            for r in rows
        ]
    except msgspec.DecodeError as exc:
        raise _decode_error(body, where, exc) from exc
    except ValueError as exc:
        raise ParseError(f"bad number in historicalTrades row: {exc}", stream=where) from exc


def record_id(record: AggTrade | Trade) -> int:
    """The id that numbers records of a trade channel contiguously."""
    return record.agg_id if isinstance(record, AggTrade) else record.trade_id
