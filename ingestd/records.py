"""Normalized records: one frozen struct per channel.

The field names are a public contract: they are the Parquet column names, the JSON keys and the
attributes hooks read. Every record carries ``venue``, ``symbol`` (normalized, ``BTC-USDT-PERP``),
``native`` (``BTCUSDT``), ``exchange_ts`` (ns, from the payload's ``E``; ``None`` where the venue
sends no event time, e.g. spot bookTicker), ``recv_ts`` (ns, local wall clock when the frame
arrived) and ``transaction_ts`` (ns, from ``T``, where the venue sends it).

Prices and quantities are float64 parsed from the exchange's decimal strings (a decimal string of
at most 15 significant digits round-trips exactly through float64, so books rebuild losslessly);
ids are int64. Depth levels are lists of ``(price, qty)`` tuples; quantity 0 deletes a level.

Structs are ``gc=False``: records never form reference cycles, and keeping millions of them out
of the cyclic collector's view is what keeps GC pauses away at high rates (docs/performance.md §4).
"""

from __future__ import annotations

from typing import ClassVar, Final, Literal

import msgspec

Level = tuple[float, float]
"""One book level: ``(price, qty)``."""

Source = Literal["ws", "rest"]
"""Where a trade record came from: the websocket stream, or REST history filling a hole."""

VENUES: Final = ("binance-usdm", "binance-spot")


class Record(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Fields every record has. ``channel`` names the Parquet partition and the bus topic."""

    channel: ClassVar[str] = ""

    venue: str
    symbol: str
    native: str
    exchange_ts: int | None
    recv_ts: int
    transaction_ts: int | None = None


class Trade(Record, frozen=True, kw_only=True, gc=False):
    """One trade (``<s>@trade``). ``trade_type`` is futures ``X`` (MARKET, INSURANCE_FUND …).

    ``source`` is ``"rest"`` for a trade fetched from ``historicalTrades`` to fill a hole the
    stream left (no event time: ``exchange_ts`` is ``None``, ``transaction_ts`` is the trade time).
    """

    channel: ClassVar[str] = "trade"

    trade_id: int
    price: float
    qty: float
    is_buyer_maker: bool
    trade_type: str | None = None
    source: Source = "ws"


class AggTrade(Record, frozen=True, kw_only=True, gc=False):
    """An aggregated trade (``<s>@aggTrade``). ``normal_qty`` is futures ``nq`` (RPI excluded).

    ``source`` is ``"rest"`` for an aggregate fetched from ``aggTrades`` to fill a hole the stream
    left (no event time: ``exchange_ts`` is ``None``, ``transaction_ts`` is the trade time).
    """

    channel: ClassVar[str] = "agg_trade"

    agg_id: int
    first_trade_id: int
    last_trade_id: int
    price: float
    qty: float
    is_buyer_maker: bool
    normal_qty: float | None = None
    source: Source = "ws"


class BookTicker(Record, frozen=True, kw_only=True, gc=False):
    """Best bid and ask (``<s>@bookTicker``). ``update_id`` shares the depth diffs' id space."""

    channel: ClassVar[str] = "book_ticker"

    update_id: int
    bid_price: float
    bid_qty: float
    ask_price: float
    ask_qty: float


class DepthDiff(Record, frozen=True, kw_only=True, gc=False):
    """One diff-depth event (``<s>@depth@100ms``). ``prev_final_update_id`` is futures ``pu``."""

    channel: ClassVar[str] = "depth_diff"

    first_update_id: int
    final_update_id: int
    prev_final_update_id: int | None
    bids: list[Level]
    asks: list[Level]


class DepthSnapshot(Record, frozen=True, kw_only=True, gc=False):
    """A REST depth snapshot (``/fapi/v1/depth``, ``/api/v3/depth``)."""

    channel: ClassVar[str] = "depth_snapshot"

    last_update_id: int
    bids: list[Level]
    asks: list[Level]


class PartialDepth(Record, frozen=True, kw_only=True, gc=False):
    """Top-N book (``<s>@depth<5|10|20>@100ms``). Spot sends only ``lastUpdateId``: it lands in
    ``final_update_id`` and the other ids stay ``None``."""

    channel: ClassVar[str] = "partial_depth"

    depth: int
    first_update_id: int | None
    final_update_id: int
    prev_final_update_id: int | None
    bids: list[Level]
    asks: list[Level]


class Kline(Record, frozen=True, kw_only=True, gc=False):
    """A candle update (``<s>@kline_<i>``); ``closed`` is true on the final update of a bar."""

    channel: ClassVar[str] = "kline"

    interval: str
    open_time: int
    close_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float
    trades: int
    taker_buy_volume: float
    taker_buy_quote_volume: float
    closed: bool


class MarkPrice(Record, frozen=True, kw_only=True, gc=False):
    """Mark price and funding (``<s>@markPrice@1s``, futures only)."""

    channel: ClassVar[str] = "mark_price"

    mark_price: float
    index_price: float | None
    estimated_settle_price: float | None
    funding_rate: float | None
    next_funding_time: int | None
    mark_price_avg: float | None = None


class Liquidation(Record, frozen=True, kw_only=True, gc=False):
    """A liquidation order (``<s>@forceOrder``, futures only)."""

    channel: ClassVar[str] = "liquidation"

    side: str
    order_type: str
    time_in_force: str
    qty: float
    price: float
    avg_price: float
    status: str
    last_filled_qty: float
    filled_qty: float


class Ticker(Record, frozen=True, kw_only=True, gc=False):
    """24 h rolling ticker (``<s>@ticker``). Spot adds previous close and best bid/ask."""

    channel: ClassVar[str] = "ticker"

    price_change: float
    price_change_pct: float
    weighted_avg_price: float
    last_price: float
    last_qty: float
    open: float
    high: float
    low: float
    volume: float
    quote_volume: float
    open_time: int
    close_time: int
    first_trade_id: int
    last_trade_id: int
    trades: int
    prev_close: float | None = None
    bid_price: float | None = None
    bid_qty: float | None = None
    ask_price: float | None = None
    ask_qty: float | None = None


class MiniTicker(Record, frozen=True, kw_only=True, gc=False):
    """24 h mini ticker (``<s>@miniTicker``)."""

    channel: ClassVar[str] = "mini_ticker"

    close: float
    open: float
    high: float
    low: float
    volume: float
    quote_volume: float


class RawFrame(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An exact frame as received, for ``--raw`` dumps that ``ingestd sim`` can replay.

    ``source`` is the websocket URL path (``/public/stream``) or the REST path with its query
    (``/fapi/v1/depth?symbol=BTCUSDT&limit=1000``); ``data`` is the frame's bytes untouched.
    """

    channel: ClassVar[str] = "raw"

    venue: str
    source: str
    recv_ts: int
    data: bytes


MARKET_RECORDS: Final[tuple[type[Record], ...]] = (
    Trade,
    AggTrade,
    BookTicker,
    DepthDiff,
    DepthSnapshot,
    PartialDepth,
    Kline,
    MarkPrice,
    Liquidation,
    Ticker,
    MiniTicker,
)

RECORD_TYPES: dict[str, type[Record]] = {cls.channel: cls for cls in MARKET_RECORDS}
"""Channel name → record type. Later stages (gaps, books, clock, pollers) register here too."""

CHANNELS: Final[tuple[str, ...]] = tuple(cls.channel for cls in MARKET_RECORDS)
"""The market-data channels a user can ask for with ``--channels``."""

AnyRecord = Record | RawFrame


def register(cls: type[Record]) -> type[Record]:
    """Register a record type defined outside this module (gap log, book view …)."""
    RECORD_TYPES[cls.channel] = cls
    return cls


def ms_to_ns(ms: int) -> int:
    """Binance millisecond epoch → ns epoch."""
    return ms * 1_000_000


TRADE_TIME_CHANNELS: Final = frozenset({"agg_trade", "trade"})
"""Channels whose records without an event time (REST history: ``source="rest"``) are placed in
time by their trade time, ``transaction_ts``: stored in that day's partition and selected by it
in a replay window (a trade from before midnight fetched after it belongs to its own day)."""


def event_time(rec: Record) -> int:
    """The time a record is partitioned and selected by: ``exchange_ts``; for a trade without
    one (:data:`TRADE_TIME_CHANNELS`), ``transaction_ts``; else ``recv_ts``."""
    ts = rec.exchange_ts
    if ts is not None:
        return ts
    if rec.transaction_ts is not None and rec.channel in TRADE_TIME_CHANNELS:
        return rec.transaction_ts
    return rec.recv_ts
