"""Binance frames and REST depth bodies → normalized records. Pure: no I/O, no clock, no logging.

The stream name, not the payload, decides the channel: we subscribed it, and some payloads carry
no event type at all (spot ``bookTicker``, spot ``depth<N>``). Each stream name is resolved once
into a :class:`_Route` (channel, contract, typed decoders) and cached.

Decoding is done once, by msgspec, into typed wire Structs (:mod:`.wire`) with ``strict=False``:
prices and quantities arrive as float64 while the JSON is parsed, and depth levels as lists of
``(price, qty)`` tuples, so no Python loop ever touches a level. Once a stream's route is known,
its frames skip the generic envelope: the name is sliced from the ``{"stream":"<name>"`` prefix
and the whole frame is decoded in one pass by a per-route ``Frame[Wire]`` decoder. The first
frame of a stream, control replies and anything odd take the slow path (envelope with
``data: msgspec.Raw``, then the typed decode).

Measured on this machine type (2 cores, Python 3.11, msgspec 0.22, orjson 3.13), decode only,
3,000 real USDⓈ-M ``btcusdt@depth@0ms`` frames from hftbacktest (1,472 bytes, 62 levels each on
average):

=============================================================  ============
approach                                                       µs / frame
=============================================================  ============
``orjson.loads`` alone (prices still strings)                  5.9-6.2
``orjson.loads`` + ``float()`` on every price and quantity      30-32
msgspec envelope with ``data: Raw``, then typed ``data``       7.3-7.9
msgspec one pass, ``Frame[Wire]`` chosen from the name prefix  6.1-6.6
=============================================================  ============

and for small frames (``bookTicker``, 180 bytes): msgspec 0.6-0.7 µs, orjson + float 1.6-1.7 µs.

The whole :meth:`FrameParser.parse`, records built, same machine: ``depth@0ms`` (1,650 bytes)
7.8-8.1 µs, ``bookTicker`` 1.4-1.5 µs, ``trade`` 1.5-1.6 µs; over the entire hftbacktest USDⓈ-M
BTCUSDT file (93,953 frames) 2.5 µs per frame, about 400k frames/s on one core. Without the
one-pass fast path (generic envelope, then ``data``) it was 1.5-1.9x slower on every channel.
msgspec's string-to-float conversion is correctly rounded: every price and quantity of the
recorded captures equals ``float(text)`` exactly (checked in ``tests/test_parse.py``).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from ingestd.errors import ParseError
from ingestd.records import (
    AggTrade,
    BookTicker,
    DepthDiff,
    DepthSnapshot,
    Kline,
    Liquidation,
    MarkPrice,
    MiniTicker,
    PartialDepth,
    Record,
    Ticker,
    Trade,
)
from ingestd.venues.binance.endpoints import SPOT, VENUES, stream_kind, stream_symbol
from ingestd.venues.binance.symbols import Contract, ContractSet
from ingestd.venues.binance.wire import (
    AggTradeWire,
    DepthSnapshotWire,
    Envelope,
    ErrorBody,
    ForceOrderWire,
    Frame,
    FuturesBookTickerWire,
    FuturesDepthWire,
    KlineWire,
    MarkPriceWire,
    MiniTickerWire,
    SpotBookTickerWire,
    SpotDepthWire,
    SpotPartialDepthWire,
    TickerWire,
    TradeWire,
)

__all__ = ["SERVER_SHUTDOWN", "FrameParser", "parse_depth_snapshot"]

# -- stream tables (data) ----------------------------------------------------------------------

SERVER_SHUTDOWN: Final = "!serverShutdown"
"""What :meth:`FrameParser.parse` returns as the stream name when the venue announces a shutdown."""

KLINE_INTERVALS: Final = frozenset(
    ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M")
)
"""Intervals Binance serves (``1M`` is a month, ``1m`` a minute: case matters)."""

PARTIAL_DEPTHS: Final = {"depth5": 5, "depth10": 10, "depth20": 20}

ALL_MARKET_STREAMS: Final = {
    "!ticker@arr": "ticker",
    "!miniTicker@arr": "miniTicker",
    "!markPrice@arr": "markPrice",
    "!bookTicker": "bookTicker",
    "!forceOrder@arr": "forceOrder",
}
"""All-market stream (speed suffix stripped) → the per-symbol kind its elements have."""

_PREFIX: Final = b'{"stream":"'
_NAME_AT: Final = len(_PREFIX)
_MS: Final = 1_000_000
"""Binance ms → ns."""


# -- per-channel builders ----------------------------------------------------------------------
# Each takes (route, contract, wire struct, recv_ts) and returns one record. The docstring shows a
# real payload, trimmed, from tests/data (source in brackets).


def _trade(r: _Route, c: Contract, w: TradeWire, recv_ts: int) -> Trade:
    """``<s>@trade`` → :class:`Trade`; futures ``X`` becomes ``trade_type`` (spot: ``None``).

    USDⓈ-M [hftbacktest usdm_btcusdt]::

        {"e":"trade","E":1723161256322,"T":1723161256322,"s":"BTCUSDT","t":5266583935,
         "p":"61800.30","q":"0.006","X":"MARKET","m":false}

    spot [hftbacktest spot_btcusdt]: ``{"e":"trade",...,"T":1723161255342,"m":true,"M":true}``.
    """
    return Trade(
        venue=r.venue, symbol=c.symbol, native=c.native, exchange_ts=w.event_time * _MS, recv_ts=recv_ts,
        transaction_ts=w.trade_time * _MS, trade_id=w.trade_id, price=w.price, qty=w.qty,
        is_buyer_maker=w.buyer_is_maker, trade_type=w.trade_type,
    )  # fmt: skip


def _agg_trade(r: _Route, c: Contract, w: AggTradeWire, recv_ts: int) -> AggTrade:
    """``<s>@aggTrade`` → :class:`AggTrade`. ``f > l`` has been seen live: not checked.

    USDⓈ-M [crypto-msg-parser line 5]::

        {"e":"aggTrade","E":1616202009196,"a":389551486,"s":"BTCUSDT","p":"58665.00",
         "q":"0.043","f":621622993,"l":621622993,"T":1616202009188,"m":false}

    Spot adds ``"M":true``; futures may add ``nq`` (→ ``normal_qty``).
    """
    return AggTrade(
        venue=r.venue, symbol=c.symbol, native=c.native, exchange_ts=w.event_time * _MS, recv_ts=recv_ts,
        transaction_ts=w.trade_time * _MS, agg_id=w.agg_id, first_trade_id=w.first_trade_id,
        last_trade_id=w.last_trade_id, price=w.price, qty=w.qty, is_buyer_maker=w.buyer_is_maker,
        normal_qty=w.normal_qty,
    )  # fmt: skip


def _book_ticker(
    r: _Route, c: Contract, w: SpotBookTickerWire | FuturesBookTickerWire, recv_ts: int
) -> BookTicker:
    """``<s>@bookTicker`` / ``!bookTicker`` → :class:`BookTicker`.

    USDⓈ-M [hftbacktest usdm_btcusdt]::

        {"e":"bookTicker","u":5123107839020,"s":"BTCUSDT","b":"61800.20","B":"2.507",
         "a":"61800.30","A":"2.510","T":1723161256313,"E":1723161256313}

    spot has no ``e``, ``E`` or ``T`` (``exchange_ts`` is ``None``) [hftbacktest spot_btcusdt]::

        {"u":50093239212,"s":"BTCUSDT","b":"61837.63000000","B":"3.78826000",
         "a":"61837.64000000","A":"1.54698000"}
    """
    e, t = w.event_time, w.trade_time
    return BookTicker(
        venue=r.venue, symbol=c.symbol, native=c.native, exchange_ts=None if e is None else e * _MS,
        recv_ts=recv_ts, transaction_ts=None if t is None else t * _MS, update_id=w.update_id,
        bid_price=w.bid_price, bid_qty=w.bid_qty, ask_price=w.ask_price, ask_qty=w.ask_qty,
    )  # fmt: skip


def _depth_diff(r: _Route, c: Contract, w: SpotDepthWire | FuturesDepthWire, recv_ts: int) -> DepthDiff:
    """``<s>@depth[@100ms|@0ms]`` → :class:`DepthDiff`; futures ``pu`` → ``prev_final_update_id``.

    USDⓈ-M [hftbacktest usdm_btcusdt, levels cut]::

        {"e":"depthUpdate","E":1723161256299,"T":1723161256298,"s":"BTCUSDT",
         "U":5123107832006,"u":5123107837557,"pu":5123107831937,
         "b":[["58710.20","0.014"],["61510.90","0.000"]],"a":[["61800.30","3.330"]]}

    spot has no ``T``/``pu``; COIN-M adds ``ps``. A side may be ``[]``.
    """
    t = w.trade_time
    return DepthDiff(
        venue=r.venue, symbol=c.symbol, native=c.native, exchange_ts=w.event_time * _MS, recv_ts=recv_ts,
        transaction_ts=None if t is None else t * _MS, first_update_id=w.first_update_id,
        final_update_id=w.final_update_id, prev_final_update_id=w.prev_final_update_id, bids=w.bids,
        asks=w.asks,
    )  # fmt: skip


def _partial_depth_spot(r: _Route, c: Contract, w: SpotPartialDepthWire, recv_ts: int) -> PartialDepth:
    """Spot ``<s>@depth<N>[@100ms]`` → :class:`PartialDepth`: only ``lastUpdateId`` and levels.

    The payload names neither symbol nor time [crypto-msg-parser line 16]::

        {"lastUpdateId":17044571457,"bids":[["1782.00000000","6.48300000"]],
         "asks":[["1782.01000000","15.46080000"]]}
    """
    return PartialDepth(
        venue=r.venue, symbol=c.symbol, native=c.native, exchange_ts=None, recv_ts=recv_ts, depth=r.depth,
        first_update_id=None, final_update_id=w.last_update_id, prev_final_update_id=None, bids=w.bids,
        asks=w.asks,
    )  # fmt: skip


def _partial_depth_futures(r: _Route, c: Contract, w: FuturesDepthWire, recv_ts: int) -> PartialDepth:
    """Futures ``<s>@depth<N>[@100ms]`` → :class:`PartialDepth`: a full ``depthUpdate`` object.

    ``pu`` can be ``-1`` and a side can be empty [crypto-msg-parser line 20, COIN-M]::

        {"e":"depthUpdate","E":1648006221596,"T":1648006221340,"s":"RUNEUSD_PERP","ps":"RUNEUSD",
         "U":395028983849,"u":395028983849,"pu":-1,"b":[],"a":[["8.4400","2"]]}
    """
    t = w.trade_time
    return PartialDepth(
        venue=r.venue, symbol=c.symbol, native=c.native, exchange_ts=w.event_time * _MS, recv_ts=recv_ts,
        transaction_ts=None if t is None else t * _MS, depth=r.depth, first_update_id=w.first_update_id,
        final_update_id=w.final_update_id, prev_final_update_id=w.prev_final_update_id, bids=w.bids,
        asks=w.asks,
    )  # fmt: skip


def _kline(r: _Route, c: Contract, w: KlineWire, recv_ts: int) -> Kline:
    """``<s>@kline_<i>`` → :class:`Kline`; bar open/close times in ns, ``closed`` from ``k.x``.

    [cryptofeed 2021-10_head BINANCE_FUTURES.ws.1.0]::

        {"e":"kline","E":1626992741424,"s":"CTKUSDT","k":{"t":1626992700000,"T":1626992759999,
         "s":"CTKUSDT","i":"1m","f":23961275,"L":23961322,"o":"1.01000","c":"1.01100",
         "h":"1.01100","l":"1.01000","v":"3917","n":48,"x":false,"q":"3957.89900",
         "V":"1729","Q":"1748.01900","B":"0"}}
    """
    k = w.kline
    return Kline(
        venue=r.venue, symbol=c.symbol, native=c.native, exchange_ts=w.event_time * _MS, recv_ts=recv_ts,
        interval=k.interval, open_time=k.open_time * _MS, close_time=k.close_time * _MS, open=k.open,
        high=k.high, low=k.low, close=k.close, volume=k.volume, quote_volume=k.quote_volume,
        trades=k.trades, taker_buy_volume=k.taker_buy_volume,
        taker_buy_quote_volume=k.taker_buy_quote_volume, closed=k.closed,
    )  # fmt: skip


def _mark_price(r: _Route, c: Contract, w: MarkPriceWire, recv_ts: int) -> MarkPrice:
    """``<s>@markPrice[@1s]`` / ``!markPrice@arr`` → :class:`MarkPrice` (futures only).

    ``T`` here is the next funding time, not a transaction time: ``transaction_ts`` stays ``None``.
    Delivery contracts send ``T: 0`` (no funding), stored as ``None``. USDⓈ-M
    [crypto-msg-parser line 9]::

        {"e":"markPriceUpdate","E":1617308820003,"s":"BTCUSDT","p":"58940.14924532",
         "P":"58905.14663658","i":"58857.26693664","r":"0.00058455","T":1617321600000}

    COIN-M has no ``i`` (``index_price`` is ``None``); ``ap`` is read when present.
    """
    nft = w.next_funding_time
    return MarkPrice(
        venue=r.venue, symbol=c.symbol, native=c.native, exchange_ts=w.event_time * _MS, recv_ts=recv_ts,
        mark_price=w.mark_price, index_price=w.index_price,
        estimated_settle_price=w.estimated_settle_price, funding_rate=w.funding_rate,
        next_funding_time=nft * _MS if nft else None, mark_price_avg=w.mark_price_avg,
    )  # fmt: skip


def _liquidation(r: _Route, c: Contract, w: ForceOrderWire, recv_ts: int) -> Liquidation:
    """``<s>@forceOrder`` / ``!forceOrder@arr`` → :class:`Liquidation`; ``transaction_ts`` is ``o.T``.

    [tiagosiebler/binance test/websocket-client.test.ts, IOTXUSDT 2021-10-19]::

        {"e":"forceOrder","E":1634653599186,"o":{"s":"IOTXUSDT","S":"SELL","o":"LIMIT",
         "f":"IOC","q":"3661","p":"0.06606","ap":"0.06669","X":"FILLED","l":"962",
         "z":"3661","T":1634653599180}}
    """
    o = w.order
    return Liquidation(
        venue=r.venue, symbol=c.symbol, native=c.native, exchange_ts=w.event_time * _MS, recv_ts=recv_ts,
        transaction_ts=o.trade_time * _MS, side=o.side, order_type=o.order_type,
        time_in_force=o.time_in_force, qty=o.qty, price=o.price, avg_price=o.avg_price, status=o.status,
        last_filled_qty=o.last_filled_qty, filled_qty=o.filled_qty,
    )  # fmt: skip


def _ticker(r: _Route, c: Contract, w: TickerWire, recv_ts: int) -> Ticker:
    """``<s>@ticker`` / ``!ticker@arr`` → :class:`Ticker`. Futures: no ``x``/bid/ask (``None``).

    spot [crypto-msg-parser line 27]::

        {"e":"24hrTicker","E":1653812650349,"s":"ETHUSDT","p":"28.23000000","P":"1.600",
         "w":"1781.16275609","x":"1764.61000000","c":"1792.84000000","Q":"0.55720000",
         "b":"1792.83000000","B":"1.62740000","a":"1792.84000000","A":"20.29140000",
         "o":"1764.61000000","h":"1808.98000000","l":"1748.94000000","v":"471703.53110000",
         "q":"840180761.51358100","O":1653726250344,"C":1653812650344,"F":841094172,
         "L":841646650,"n":552479}
    """
    return Ticker(
        venue=r.venue, symbol=c.symbol, native=c.native, exchange_ts=w.event_time * _MS, recv_ts=recv_ts,
        price_change=w.price_change, price_change_pct=w.price_change_pct,
        weighted_avg_price=w.weighted_avg_price, last_price=w.last_price, last_qty=w.last_qty,
        open=w.open, high=w.high, low=w.low, volume=w.volume, quote_volume=w.quote_volume,
        open_time=w.open_time * _MS, close_time=w.close_time * _MS, first_trade_id=w.first_trade_id,
        last_trade_id=w.last_trade_id, trades=w.trades, prev_close=w.prev_close, bid_price=w.bid_price,
        bid_qty=w.bid_qty, ask_price=w.ask_price, ask_qty=w.ask_qty,
    )  # fmt: skip


def _mini_ticker(r: _Route, c: Contract, w: MiniTickerWire, recv_ts: int) -> MiniTicker:
    """``<s>@miniTicker`` / ``!miniTicker@arr`` → :class:`MiniTicker`.

    No genuine capture exists (docs/binance.md §8.4); the keys are the 24hrTicker's ``E,s,c,o,h,l,v,q``::

        {"e":"24hrMiniTicker","E":1653812650349,"s":"ETHUSDT","c":"1792.84000000",
         "o":"1764.61000000","h":"1808.98000000","l":"1748.94000000",
         "v":"471703.53110000","q":"840180761.51358100"}
    """
    return MiniTicker(
        venue=r.venue, symbol=c.symbol, native=c.native, exchange_ts=w.event_time * _MS, recv_ts=recv_ts,
        close=w.close, open=w.open, high=w.high, low=w.low, volume=w.volume, quote_volume=w.quote_volume,
    )  # fmt: skip


# -- per-market channel specs (data) -----------------------------------------------------------

Build = Callable[["_Route", Contract, Any, int], Record]


@dataclass(frozen=True, slots=True)
class _Spec:
    """How one stream kind is decoded on one market."""

    wire: type[msgspec.Struct]
    build: Build
    symbol_of: Callable[[Any], str] | None
    """Reads the payload's symbol; ``None`` when the payload has none (spot ``depth<N>``)."""


_SYMBOL: Final = operator.attrgetter("symbol")

_SHARED_SPECS: Final[dict[str, _Spec]] = {
    "trade": _Spec(TradeWire, _trade, _SYMBOL),
    "aggTrade": _Spec(AggTradeWire, _agg_trade, _SYMBOL),
    "kline": _Spec(KlineWire, _kline, _SYMBOL),
    "ticker": _Spec(TickerWire, _ticker, _SYMBOL),
    "miniTicker": _Spec(MiniTickerWire, _mini_ticker, _SYMBOL),
}

_SPOT_SPECS: Final[dict[str, _Spec]] = {
    **_SHARED_SPECS,
    "depth": _Spec(SpotDepthWire, _depth_diff, _SYMBOL),
    "depthN": _Spec(SpotPartialDepthWire, _partial_depth_spot, None),
    "bookTicker": _Spec(SpotBookTickerWire, _book_ticker, _SYMBOL),
}
"""Spot has no markPrice or forceOrder streams."""

_FUTURES_SPECS: Final[dict[str, _Spec]] = {
    **_SHARED_SPECS,
    "depth": _Spec(FuturesDepthWire, _depth_diff, _SYMBOL),
    "depthN": _Spec(FuturesDepthWire, _partial_depth_futures, _SYMBOL),
    "bookTicker": _Spec(FuturesBookTickerWire, _book_ticker, _SYMBOL),
    "markPrice": _Spec(MarkPriceWire, _mark_price, _SYMBOL),
    "forceOrder": _Spec(ForceOrderWire, _liquidation, operator.attrgetter("order.symbol")),
}
"""USDⓈ-M (COIN-M payloads have the same shapes plus ``ps``, so they parse too)."""


@functools.cache
def _decoders(
    wire: type[msgspec.Struct], many: bool
) -> tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any]]:
    """(whole-frame decoder, data-only decoder) for one wire type; shared by every parser."""
    # All-market streams send a JSON array (``!ticker@arr``) or one object per message
    # (``!bookTicker``, ``!forceOrder@arr``); msgspec tells the two apart by the JSON type.
    # mypy cannot see a runtime-built type (``wire`` is a variable): hence the ignore.
    data_type: Any = list[wire] | wire if many else wire  # type: ignore[valid-type]
    return (
        msgspec.json.Decoder(Frame[data_type], strict=False),
        msgspec.json.Decoder(data_type, strict=False),
    )


# -- routes ------------------------------------------------------------------------------------


Emit = Callable[["_Route", Any, int], list[Record]]


@dataclass(frozen=True, slots=True)
class _Route:
    """Everything needed to turn one stream's frames into records, resolved once per stream."""

    stream: str
    venue: str
    build: Build
    emit: Emit
    """One of the ``_emit_*`` functions below, chosen for the stream's shape when resolved."""
    symbol_of: Callable[[Any], str] | None
    contract: Contract | None
    """The stream's contract; ``None`` for all-market streams (each element names its own)."""
    by_native: Mapping[str, Contract]
    depth: int
    frame_decoder: msgspec.json.Decoder[Any]
    data_decoder: msgspec.json.Decoder[Any]


def _mismatch(r: _Route, got: str) -> ParseError:
    assert r.contract is not None
    return ParseError(
        f"payload symbol {got!r} does not match the stream's {r.contract.native}", stream=r.stream
    )


def _emit_one(r: _Route, payload: Any, recv_ts: int) -> list[Record]:
    """A per-symbol stream whose payload has a top-level ``s`` (most of them)."""
    c = r.contract
    assert c is not None
    if payload.symbol != c.native:
        raise _mismatch(r, payload.symbol)
    return [r.build(r, c, payload, recv_ts)]


def _emit_one_nested(r: _Route, payload: Any, recv_ts: int) -> list[Record]:
    """A per-symbol stream whose symbol sits deeper (``forceOrder``: ``o.s``)."""
    c = r.contract
    assert c is not None
    assert r.symbol_of is not None
    got = r.symbol_of(payload)
    if got != c.native:
        raise _mismatch(r, got)
    return [r.build(r, c, payload, recv_ts)]


def _emit_one_unnamed(r: _Route, payload: Any, recv_ts: int) -> list[Record]:
    """A per-symbol stream whose payload names no symbol (spot ``depth<N>``): trust the name."""
    c = r.contract
    assert c is not None
    return [r.build(r, c, payload, recv_ts)]


def _emit_many(r: _Route, payload: Any, recv_ts: int) -> list[Record]:
    """An all-market stream: a JSON array, or one object per message (``!bookTicker``)."""
    get = r.by_native.get
    symbol_of = r.symbol_of
    assert symbol_of is not None
    build = r.build
    out: list[Record] = []
    for item in payload if isinstance(payload, list) else (payload,):
        # Elements for symbols outside the contract set are expected, not errors: futures
        # all-market streams carry every listed symbol (and, since 2026, COIN-M ones too).
        c = get(symbol_of(item))
        if c is not None:
            out.append(build(r, c, item, recv_ts))
    return out


def _sniff_stream(frame: bytes) -> str | None:
    """The stream name of a frame too broken to decode, for the error message only."""
    if not frame.startswith(_PREFIX):
        return None
    end = frame.find(b'"', _NAME_AT)
    if end < 0:
        return None
    return frame[_NAME_AT:end].decode("utf-8", "replace")


def _frame_error(route: _Route, frame: bytes, exc: msgspec.DecodeError) -> str:
    """The error of decoding the whole frame, so that slow-path messages point at ``$.data.p``
    like the fast path's do (``data`` decoded alone would say ``$.p``). Error path only."""
    try:
        route.frame_decoder.decode(frame)
    except msgspec.DecodeError as whole:
        return str(whole)
    return str(exc)


def _error_text(code: object, msg: object, error: object) -> str | None:
    """``code=.. msg=..`` of a flat or nested (``{"error":{...}}``) error reply, else ``None``."""
    if isinstance(error, dict):
        code, msg = error.get("code"), error.get("msg")
    if code is None and msg is None:
        return None
    return f"error reply: code={code!r} msg={msg!r}"


_ENVELOPE: Final = msgspec.json.Decoder(Envelope)


class FrameParser:
    """Turns combined-stream frames of one venue into records, for the contracts of one run.

    One instance per venue; it caches one route per stream name it has parsed (bounded by the
    subscribed streams: only names with a known kind and symbol are cached). Not thread-safe.
    """

    __slots__ = ("_by_key", "_by_name", "_specs", "contracts", "venue")

    def __init__(self, venue: str, contracts: ContractSet) -> None:
        if venue not in VENUES:
            raise ValueError(f"unknown venue {venue!r}; expected one of {', '.join(VENUES)}")
        self.venue = venue
        self.contracts = contracts
        self._specs = _SPOT_SPECS if venue == SPOT.name else _FUTURES_SPECS
        self._by_name: dict[str, _Route] = {}
        self._by_key: dict[bytes, _Route] = {}

    def parse(self, frame: bytes | str, recv_ts: int) -> tuple[str, list[Record]]:
        """A combined-stream frame ``{"stream": name, "data": payload}`` → (stream name, records).

        Control replies ``{"result": ..., "id": ...}`` → ``("", [])``. A ``serverShutdown`` event
        (bare ``{"e":"serverShutdown",...}`` or wrapped with stream ``!serverShutdown``) →
        ``("!serverShutdown", [])``. All-market streams keep only elements for the contract set.
        Error replies ``{"code":..,"msg":..}`` and anything malformed raise :class:`ParseError`
        whose ``stream`` is the stream name when one could be read, else ``None``.
        """
        if isinstance(frame, str):
            frame = frame.encode()
        if frame.startswith(_PREFIX):
            # Fast path: a stream seen before. Its name is the bytes up to the next quote; a name
            # written with JSON escapes would not match a cached key and takes the slow path.
            route = self._by_key.get(frame[_NAME_AT : frame.find(b'"', _NAME_AT)])
            if route is not None:
                try:
                    payload = route.frame_decoder.decode(frame).data
                except msgspec.DecodeError as exc:
                    raise ParseError(f"bad payload: {exc}", stream=route.stream) from exc
                return route.stream, route.emit(route, payload, recv_ts)
        return self._parse_slow(frame, recv_ts)

    def _parse_slow(self, frame: bytes, recv_ts: int) -> tuple[str, list[Record]]:
        try:
            env = _ENVELOPE.decode(frame)
        except msgspec.DecodeError as exc:
            raise ParseError(f"not a JSON object frame: {exc}", stream=_sniff_stream(frame)) from exc
        name = env.stream
        if name is None:
            err = _error_text(env.code, env.msg, env.error)
            if err is not None:
                raise ParseError(err)
            if env.event == "serverShutdown":
                return SERVER_SHUTDOWN, []
            if env.result:
                return "", []
            raise ParseError("neither a combined-stream frame nor a control reply")
        if name == SERVER_SHUTDOWN:
            return SERVER_SHUTDOWN, []
        if not env.data:
            raise ParseError("frame has no 'data'", stream=name)
        route = self._route(name)
        try:
            payload = route.data_decoder.decode(env.data)
        except msgspec.DecodeError as exc:
            raise ParseError(f"bad payload: {_frame_error(route, frame, exc)}", stream=name) from exc
        return name, route.emit(route, payload, recv_ts)

    def _route(self, name: str) -> _Route:
        route = self._by_name.get(name)
        if route is None:
            route = self._resolve(name)
            self._by_name[name] = route
            self._by_key[name.encode()] = route
        return route

    def _resolve(self, name: str) -> _Route:
        """Stream name → route, or :class:`ParseError` for an unknown kind or symbol."""
        kind = stream_kind(name)
        contract: Contract | None = None
        depth = 0
        if name.startswith("!"):
            channel = ALL_MARKET_STREAMS.get(kind)
            if channel is None:
                raise ParseError(f"unknown stream kind {kind!r}", stream=name)
        elif kind.startswith("kline_"):
            if kind[6:] not in KLINE_INTERVALS:
                raise ParseError(f"unknown kline interval {kind[6:]!r}", stream=name)
            channel = "kline"
        elif kind in PARTIAL_DEPTHS:
            channel, depth = "depthN", PARTIAL_DEPTHS[kind]
        else:
            channel = kind
        spec = self._specs.get(channel)
        if spec is None:
            raise ParseError(f"unknown stream kind {kind!r} on {self.venue}", stream=name)
        if not name.startswith("!"):
            native = (stream_symbol(name) or "").upper()
            contract = self.contracts.get(native)
            if contract is None:
                raise ParseError(f"symbol {native!r} is not in the contract set", stream=name)
        if contract is None:
            emit: Emit = _emit_many
        elif spec.symbol_of is None:
            emit = _emit_one_unnamed
        elif spec.symbol_of is _SYMBOL:
            emit = _emit_one
        else:
            emit = _emit_one_nested
        frame_decoder, data_decoder = _decoders(spec.wire, contract is None)
        return _Route(
            stream=name,
            venue=self.venue,
            build=spec.build,
            emit=emit,
            symbol_of=spec.symbol_of,
            contract=contract,
            by_native=self.contracts.by_native(),
            depth=depth,
            frame_decoder=frame_decoder,
            data_decoder=data_decoder,
        )


_SNAPSHOT: Final = msgspec.json.Decoder(DepthSnapshotWire, strict=False)
_ERROR_BODY: Final = msgspec.json.Decoder(ErrorBody)


def parse_depth_snapshot(venue: str, contract: Contract, body: bytes | str, recv_ts: int) -> DepthSnapshot:
    """A REST depth body (``/api/v3/depth``, ``/fapi/v1/depth``, ``/dapi/v1/depth``) → record.

    spot is ``{lastUpdateId,bids,asks}`` (no times: ``exchange_ts`` is ``None``); fapi adds ``E``
    and ``T``; dapi also ``symbol`` and ``pair`` (a ``symbol`` other than the contract's is an
    error) [hftbacktest usdm_btcusdt line 55, levels cut]::

        {"lastUpdateId":5123107852948,"E":1723161256501,"T":1723161256493,
         "bids":[["61800.20","2.909"],["61800.10","0.696"]],"asks":[["61800.30","1.072"]]}

    Raises :class:`ParseError` (``stream`` is the REST path and symbol) for an error body or
    any other shape.
    """
    spec = VENUES.get(venue)
    where = f"{spec.depth_path if spec else 'depth'}?symbol={contract.native}"
    try:
        w = _SNAPSHOT.decode(body)
    except msgspec.DecodeError as exc:
        err: str | None = None
        try:
            e = _ERROR_BODY.decode(body)
            err = _error_text(e.code, e.msg, None)
        except msgspec.DecodeError:
            pass
        raise ParseError(err or f"bad depth snapshot: {exc}", stream=where) from exc
    if w.symbol is not None and w.symbol != contract.native:
        raise ParseError(f"snapshot is for {w.symbol!r}, not {contract.native}", stream=where)
    e_ms, t_ms = w.event_time, w.trade_time
    return DepthSnapshot(
        venue=venue, symbol=contract.symbol, native=contract.native,
        exchange_ts=None if e_ms is None else e_ms * _MS, recv_ts=recv_ts,
        transaction_ts=None if t_ms is None else t_ms * _MS, last_update_id=w.last_update_id, bids=w.bids,
        asks=w.asks,
    )  # fmt: skip
