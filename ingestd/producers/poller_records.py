"""Records of the REST pollers, and the pure parsers that make them from REST bodies.

Channels: ``premium_index``, ``funding_rate``, ``open_interest``, ``long_short_ratio``,
``taker_volume``. Each type is registered in :data:`ingestd.records.RECORD_TYPES` on import, so
Parquet, NDJSON, NATS and hooks handle them like market records. Times are ns like every record;
``exchange_ts`` is the row's own time (``time``, ``fundingTime``, ``timestamp``), which is also
what the pollers deduplicate on.

No genuine capture of these endpoints exists (docs/binance.md §8.4): the payload shapes
below are Binance's documented ones (docs/binance.md §4.4). Parsers are tolerant where Binance is
inconsistent: ``/futures/data/*`` ``timestamp`` comes as a string in the doc examples and as a
number live, so both are read; numbers may be strings or JSON numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from ingestd.errors import ParseError
from ingestd.records import Record, register
from ingestd.venues.binance.symbols import Contract

_MS = 1_000_000

RatioKind = Literal["top_position", "top_account", "global_account"]
"""``topLongShortPositionRatio``, ``topLongShortAccountRatio``, ``globalLongShortAccountRatio``."""


class PremiumIndex(Record, frozen=True, kw_only=True, gc=False):
    """Mark price, index price and funding of one contract (``GET /fapi/v1/premiumIndex``)."""

    channel: ClassVar[str] = "premium_index"

    mark_price: float
    index_price: float | None
    estimated_settle_price: float | None
    last_funding_rate: float | None
    interest_rate: float | None
    next_funding_time: int | None
    """ns; ``None`` for delivery contracts (Binance sends 0)."""


class FundingRate(Record, frozen=True, kw_only=True, gc=False):
    """One settled funding (``GET /fapi/v1/fundingRate``); ``exchange_ts`` is the funding time."""

    channel: ClassVar[str] = "funding_rate"

    funding_rate: float
    mark_price: float | None = None
    rate_type: str | None = None
    """``Regular`` or ``Special`` (sent since mid 2026)."""


class OpenInterest(Record, frozen=True, kw_only=True, gc=False):
    """Open interest in contracts (base asset): the current value (``/fapi/v1/openInterest``,
    ``period`` ``None``) or one period of the history (``/futures/data/openInterestHist``, with
    its value in quote asset and the circulating supply)."""

    channel: ClassVar[str] = "open_interest"

    open_interest: float
    open_interest_value: float | None = None
    circulating_supply: float | None = None
    period: str | None = None


class LongShortRatio(Record, frozen=True, kw_only=True, gc=False):
    """One period of a long/short ratio (``/futures/data/*LongShort*Ratio``); ``kind`` says which."""

    channel: ClassVar[str] = "long_short_ratio"

    kind: str
    period: str
    long_short_ratio: float
    long_share: float
    """``longAccount`` (or ``longPosition``): share of accounts / positions that are long."""
    short_share: float


class TakerVolume(Record, frozen=True, kw_only=True, gc=False):
    """One period of taker buy/sell volume (``/futures/data/takerlongshortRatio``), base asset."""

    channel: ClassVar[str] = "taker_volume"

    period: str
    buy_sell_ratio: float
    buy_volume: float
    sell_volume: float


for _cls in (PremiumIndex, FundingRate, OpenInterest, LongShortRatio, TakerVolume):
    register(_cls)


# -- parsing helpers ---------------------------------------------------------------------------


def _error_text(body: Any) -> str | None:
    if isinstance(body, Mapping) and "code" in body and "msg" in body:
        return f"Binance error {body.get('code')}: {body.get('msg')}"
    return None


def _rows(body: Any, where: str) -> list[Mapping[str, Any]]:
    rows = [body] if isinstance(body, Mapping) and _error_text(body) is None else body
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
        what = _error_text(body) or f"expected an object or a list of objects, got {type(body).__name__}"
        raise ParseError(what, stream=where)
    return rows


def _float(row: Mapping[str, Any], key: str, where: str) -> float:
    value = row.get(key)
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    raise ParseError(f"{key}: not a number: {value!r}", stream=where)


def _opt_float(row: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = row.get(key)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            try:
                return float(value)
            except ValueError:
                return None
    return None


def _ms(row: Mapping[str, Any], key: str, where: str) -> int:
    """A ms time as int or digit string (the ``/futures/data`` ``timestamp`` type trap)."""
    value = row.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise ParseError(f"{key}: not a ms time: {value!r}", stream=where)


def _check_symbol(row: Mapping[str, Any], contract: Contract, where: str) -> None:
    symbol = row.get("symbol")
    if symbol is not None and symbol != contract.native:
        raise ParseError(f"row is for {symbol!r}, not {contract.native}", stream=where)


# -- parsers -----------------------------------------------------------------------------------


def parse_premium_index(venue: str, contract: Contract, body: Any, recv_ts: int) -> list[PremiumIndex]:
    """``/fapi/v1/premiumIndex?symbol=X`` → one record [docs/binance.md §4.4 shape]::

    {"symbol":"BTCUSDT","markPrice":"11793.63104562","indexPrice":"11781.80495970",
     "estimatedSettlePrice":"11781.16138815","lastFundingRate":"0.00038246",
     "interestRate":"0.00010000","nextFundingTime":1597392000000,"time":1597370495002}
    """
    where = f"/fapi/v1/premiumIndex?symbol={contract.native}"
    out = []
    for row in _rows(body, where):
        _check_symbol(row, contract, where)
        nft = row.get("nextFundingTime")
        out.append(
            PremiumIndex(
                venue=venue, symbol=contract.symbol, native=contract.native,
                exchange_ts=_ms(row, "time", where) * _MS, recv_ts=recv_ts,
                mark_price=_float(row, "markPrice", where), index_price=_opt_float(row, "indexPrice"),
                estimated_settle_price=_opt_float(row, "estimatedSettlePrice"),
                last_funding_rate=_opt_float(row, "lastFundingRate"),
                interest_rate=_opt_float(row, "interestRate"),
                next_funding_time=nft * _MS if isinstance(nft, int) and nft > 0 else None,
            )
        )  # fmt: skip
    return out


def parse_funding_rates(venue: str, contract: Contract, body: Any, recv_ts: int) -> list[FundingRate]:
    """``/fapi/v1/fundingRate?symbol=X`` → one record per settlement [docs/binance.md §4.4 shape]::

    [{"symbol":"BTCUSDT","fundingRate":"-0.03750000","fundingTime":1570608000000,
      "markPrice":"34287.54619963","rateType":"Regular"}]
    """
    where = f"/fapi/v1/fundingRate?symbol={contract.native}"
    out = []
    for row in _rows(body, where):
        _check_symbol(row, contract, where)
        rate_type = row.get("rateType")
        out.append(
            FundingRate(
                venue=venue, symbol=contract.symbol, native=contract.native,
                exchange_ts=_ms(row, "fundingTime", where) * _MS, recv_ts=recv_ts,
                funding_rate=_float(row, "fundingRate", where), mark_price=_opt_float(row, "markPrice"),
                rate_type=rate_type if isinstance(rate_type, str) else None,
            )
        )  # fmt: skip
    return out


def parse_open_interest(
    venue: str, contract: Contract, body: Any, recv_ts: int, period: str | None = None
) -> list[OpenInterest]:
    """``/fapi/v1/openInterest`` (``period`` ``None``) or ``/futures/data/openInterestHist``::

    {"openInterest":"10659.509","symbol":"BTCUSDT","time":1589437530011}
    [{"symbol":"BTCUSDT","sumOpenInterest":"20403.63700000","sumOpenInterestValue":
      "150570784.07809979","CMCCirculatingSupply":"165880.538","timestamp":"1583127900000"}]
    """
    hist = period is not None
    where = (
        "/futures/data/openInterestHist" if hist else "/fapi/v1/openInterest"
    ) + f"?symbol={contract.native}"
    out = []
    for row in _rows(body, where):
        _check_symbol(row, contract, where)
        out.append(
            OpenInterest(
                venue=venue, symbol=contract.symbol, native=contract.native,
                exchange_ts=_ms(row, "timestamp" if hist else "time", where) * _MS, recv_ts=recv_ts,
                open_interest=_float(row, "sumOpenInterest" if hist else "openInterest", where),
                open_interest_value=_opt_float(row, "sumOpenInterestValue"),
                circulating_supply=_opt_float(row, "CMCCirculatingSupply"), period=period,
            )
        )  # fmt: skip
    return out


def parse_long_short(
    venue: str, contract: Contract, body: Any, recv_ts: int, *, kind: RatioKind, period: str
) -> list[LongShortRatio]:
    """``/futures/data/{top,global}LongShort*Ratio`` → one record per period::

    [{"symbol":"BTCUSDT","longShortRatio":"1.4342","longAccount":"0.5891",
      "shortAccount":"0.4108","timestamp":"1583139600000"}]

    (COIN-M's position ratio names the shares ``longPosition``/``shortPosition``; both are read.)
    """
    where = f"/futures/data/{kind} long/short ratio?symbol={contract.native}"
    out = []
    for row in _rows(body, where):
        _check_symbol(row, contract, where)
        long_share = _opt_float(row, "longAccount", "longPosition")
        short_share = _opt_float(row, "shortAccount", "shortPosition")
        if long_share is None or short_share is None:
            raise ParseError("no longAccount/shortAccount shares", stream=where)
        out.append(
            LongShortRatio(
                venue=venue, symbol=contract.symbol, native=contract.native,
                exchange_ts=_ms(row, "timestamp", where) * _MS, recv_ts=recv_ts, kind=kind, period=period,
                long_short_ratio=_float(row, "longShortRatio", where), long_share=long_share,
                short_share=short_share,
            )
        )  # fmt: skip
    return out


def parse_taker_volume(
    venue: str, contract: Contract, body: Any, recv_ts: int, period: str
) -> list[TakerVolume]:
    """``/futures/data/takerlongshortRatio`` → one record per period::

    [{"buySellRatio":"1.5586","buyVol":"387.3300","sellVol":"248.5030","timestamp":"1585614900000"}]
    """
    where = f"/futures/data/takerlongshortRatio?symbol={contract.native}"
    return [
        TakerVolume(
            venue=venue, symbol=contract.symbol, native=contract.native,
            exchange_ts=_ms(row, "timestamp", where) * _MS, recv_ts=recv_ts, period=period,
            buy_sell_ratio=_float(row, "buySellRatio", where), buy_volume=_float(row, "buyVol", where),
            sell_volume=_float(row, "sellVol", where),
        )
        for row in _rows(body, where)
    ]  # fmt: skip
