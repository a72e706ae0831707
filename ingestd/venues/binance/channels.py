"""The Binance channel table: one :class:`~ingestd.channels.ChannelSpec` per channel per venue.

This is the only place that says, for a channel, which stream carries it and on which route, on
which venue it exists, which wire shape its payload has and how a record is built from it, what
identifies and orders its records, what drives its frames and which prices to validate. To add a
channel: its record (:mod:`ingestd.records`), its wire shape (:mod:`.wire`) and, here, its builder
and one spec per venue it exists on (docs/architecture.md walks through it).

Routing (USDⓈ-M, since 2026-04-23, docs/binance.md): book streams (``@depth*``, ``@bookTicker``)
on ``/public``, everything else on ``/market``. A stream on the wrong route is acknowledged and
then silent, so each spec names its route and a connection never mixes two.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final, Protocol

from ingestd.book.records import BookTop, Gap
from ingestd.channels import Cadence, ChannelSpec, ChannelTable, Source
from ingestd.errors import ParseError
from ingestd.observe.records import ClockSample
from ingestd.producers.contract_records import ContractRecord
from ingestd.producers.poller_records import (
    FundingRate,
    LongShortRatio,
    OpenInterest,
    PremiumIndex,
    TakerVolume,
)
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
from ingestd.venues.binance.endpoints import SPOT, USDM, VENUES, stream_kind
from ingestd.venues.binance.symbols import Contract
from ingestd.venues.binance.wire import (
    AggTradeWire,
    DepthSnapshotWire,
    ForceOrderWire,
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

PUBLIC_ROUTE: Final = "/public"
MARKET_ROUTE: Final = "/market"
"""USDⓈ-M routes; an unrouted venue (spot) has ``""`` (its connections are ``/stream``)."""

KLINE_INTERVALS: Final = frozenset(
    ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M")
)
"""Intervals Binance serves (``1M`` is a month, ``1m`` a minute: case matters)."""

TEMPLATE_PARAMS: Final[dict[str, frozenset[str]]] = {
    "interval": KLINE_INTERVALS,
    "levels": frozenset(("5", "10", "20")),
}
"""Values each named template parameter may take (``{interval}``, ``{levels}``)."""

_MS: Final = 1_000_000
"""Binance ms → ns."""


class RouteInfo(Protocol):
    """What a builder reads from the parser's per-stream route."""

    @property
    def venue(self) -> str: ...

    @property
    def depth(self) -> int:
        """The stream's numeric template parameter (``depth20`` → 20), else 0."""
        ...


# -- builders: wire struct -> record -------------------------------------------------------------
# Each takes (route, contract, wire struct, recv_ts) and returns one record. The docstring shows a
# real recorded payload, trimmed (its source in brackets; see docs/binance.md).


def _trade(r: RouteInfo, c: Contract, w: TradeWire, recv_ts: int) -> Trade:
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


def _agg_trade(r: RouteInfo, c: Contract, w: AggTradeWire, recv_ts: int) -> AggTrade:
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
    r: RouteInfo, c: Contract, w: SpotBookTickerWire | FuturesBookTickerWire, recv_ts: int
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


def _depth_diff(r: RouteInfo, c: Contract, w: SpotDepthWire | FuturesDepthWire, recv_ts: int) -> DepthDiff:
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


def _partial_depth_spot(r: RouteInfo, c: Contract, w: SpotPartialDepthWire, recv_ts: int) -> PartialDepth:
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


def _partial_depth_futures(r: RouteInfo, c: Contract, w: FuturesDepthWire, recv_ts: int) -> PartialDepth:
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


def _kline(r: RouteInfo, c: Contract, w: KlineWire, recv_ts: int) -> Kline:
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


def _mark_price(r: RouteInfo, c: Contract, w: MarkPriceWire, recv_ts: int) -> MarkPrice:
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


def _liquidation(r: RouteInfo, c: Contract, w: ForceOrderWire, recv_ts: int) -> Liquidation:
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


def _ticker(r: RouteInfo, c: Contract, w: TickerWire, recv_ts: int) -> Ticker:
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


def _mini_ticker(r: RouteInfo, c: Contract, w: MiniTickerWire, recv_ts: int) -> MiniTicker:
    """``<s>@miniTicker`` / ``!miniTicker@arr`` → :class:`MiniTicker`.

    No recorded capture has one; the keys are the 24hrTicker's ``E,s,c,o,h,l,v,q``::

        {"e":"24hrMiniTicker","E":1653812650349,"s":"ETHUSDT","c":"1792.84000000",
         "o":"1764.61000000","h":"1808.98000000","l":"1748.94000000",
         "v":"471703.53110000","q":"840180761.51358100"}
    """
    return MiniTicker(
        venue=r.venue, symbol=c.symbol, native=c.native, exchange_ts=w.event_time * _MS, recv_ts=recv_ts,
        close=w.close, open=w.open, high=w.high, low=w.low, volume=w.volume, quote_volume=w.quote_volume,
    )  # fmt: skip


# -- the tables (data) ---------------------------------------------------------------------------

TOP_LEVEL_SYMBOL: Final = operator.attrgetter("symbol")
"""``symbol_of`` of payloads with a top-level ``s`` (the parser's fastest per-symbol emit)."""
_SYMBOL: Final = TOP_LEVEL_SYMBOL
_STREAM, _SNAPSHOT, _POLL, _DERIVED = Source.STREAM, Source.SNAPSHOT, Source.POLL, Source.DERIVED
_BOOK, _TRADE, _EVENT = Cadence.BOOK, Cadence.TRADE, Cadence.EVENT

# USDⓈ-M. COIN-M payloads have the same shapes plus ``ps``, so they parse too.
_USDM_STREAMS: Final = (
    ChannelSpec(channel="trade", record=Trade, source=_STREAM, template="{s}@trade", route=MARKET_ROUTE,
                cadence=_TRADE, wire=TradeWire, build=_trade, symbol_of=_SYMBOL, identity=("trade_id",),
                prices=("price",), documented=False, instead="agg_trade"),
    ChannelSpec(channel="agg_trade", record=AggTrade, source=_STREAM, template="{s}@aggTrade",
                route=MARKET_ROUTE, cadence=_TRADE, wire=AggTradeWire, build=_agg_trade, symbol_of=_SYMBOL,
                identity=("agg_id",), prices=("price",)),
    ChannelSpec(channel="book_ticker", record=BookTicker, source=_STREAM, template="{s}@bookTicker",
                all_market="!bookTicker", route=PUBLIC_ROUTE, cadence=_BOOK, wire=FuturesBookTickerWire,
                build=_book_ticker, symbol_of=_SYMBOL, identity=("update_id",),
                prices=("bid_price", "ask_price")),
    ChannelSpec(channel="depth_diff", record=DepthDiff, source=_STREAM, template="{s}@depth@100ms",
                route=PUBLIC_ROUTE, cadence=_BOOK, wire=FuturesDepthWire, build=_depth_diff,
                symbol_of=_SYMBOL, identity=("final_update_id",)),
    ChannelSpec(channel="depth_snapshot", record=DepthSnapshot, source=_SNAPSHOT, wire=DepthSnapshotWire,
                identity=("last_update_id",)),
    ChannelSpec(channel="partial_depth", record=PartialDepth, source=_STREAM,
                template="{s}@depth{levels}@100ms", route=PUBLIC_ROUTE, cadence=_BOOK, wire=FuturesDepthWire,
                build=_partial_depth_futures, symbol_of=_SYMBOL, identity=("final_update_id",)),
    # A bar is updated many times: one update is (bar, event time).
    ChannelSpec(channel="kline", record=Kline, source=_STREAM, template="{s}@kline_{interval}",
                route=MARKET_ROUTE, cadence=_TRADE, wire=KlineWire, build=_kline, symbol_of=_SYMBOL,
                identity=("open_time", "exchange_ts"), prices=("close",)),
    # Keyed on the millisecond event time, which two different events may share: content counts.
    ChannelSpec(channel="mark_price", record=MarkPrice, source=_STREAM, template="{s}@markPrice@1s",
                all_market="!markPrice@arr", route=MARKET_ROUTE, cadence=_BOOK, wire=MarkPriceWire,
                build=_mark_price, symbol_of=_SYMBOL, identity=("exchange_ts",), content=True,
                prices=("mark_price", "index_price")),
    ChannelSpec(channel="liquidation", record=Liquidation, source=_STREAM, template="{s}@forceOrder",
                all_market="!forceOrder@arr", route=MARKET_ROUTE, cadence=_EVENT, wire=ForceOrderWire,
                build=_liquidation, symbol_of=operator.attrgetter("order.symbol"), identity=("exchange_ts",),
                content=True, prices=("price",)),
    ChannelSpec(channel="ticker", record=Ticker, source=_STREAM, template="{s}@ticker",
                all_market="!ticker@arr", route=MARKET_ROUTE, cadence=_TRADE, wire=TickerWire, build=_ticker,
                symbol_of=_SYMBOL, identity=("exchange_ts",), content=True,
                prices=("last_price", "bid_price", "ask_price")),
    ChannelSpec(channel="mini_ticker", record=MiniTicker, source=_STREAM, template="{s}@miniTicker",
                all_market="!miniTicker@arr", route=MARKET_ROUTE, cadence=_TRADE, wire=MiniTickerWire,
                build=_mini_ticker, symbol_of=_SYMBOL, identity=("exchange_ts",), content=True,
                prices=("close",)),
)  # fmt: skip

# REST pollers (USDⓈ-M only). Each row's own time is its exchange_ts; the current open interest
# (no period) and its history (a period) share a channel.
_POLLED: Final = (
    ChannelSpec(channel="premium_index", record=PremiumIndex, source=_POLL, identity=("exchange_ts",),
                content=True),
    ChannelSpec(channel="funding_rate", record=FundingRate, source=_POLL, identity=("exchange_ts",),
                content=True),
    ChannelSpec(channel="open_interest", record=OpenInterest, source=_POLL,
                identity=("period", "exchange_ts"), content=True, order=("exchange_ts",)),
    ChannelSpec(channel="long_short_ratio", record=LongShortRatio, source=_POLL,
                identity=("kind", "period", "exchange_ts"), order=("exchange_ts",)),
    ChannelSpec(channel="taker_volume", record=TakerVolume, source=_POLL, identity=("period", "exchange_ts"),
                order=("exchange_ts",)),
)  # fmt: skip

# Made by the daemon, on every venue. A gap's kind is part of its identity: a desync and the
# resync ending it share their started_ts.
_DERIVED_SPECS: Final = (
    ChannelSpec(channel="gap", record=Gap, source=_DERIVED, identity=("kind", "started_ts"), content=True),
    ChannelSpec(channel="book", record=BookTop, source=_DERIVED, identity=("last_update_id",)),
    ChannelSpec(channel="clock", record=ClockSample, source=_DERIVED, identity=("exchange_ts",),
                content=True),
    # A definition is its content: the same definition read again (a restart) is the same fact.
    ChannelSpec(channel="contract", record=ContractRecord, source=_DERIVED, identity=("status",),
                content=True, event_time=False),
)  # fmt: skip


def _spot(spec: ChannelSpec) -> ChannelSpec:
    """The spot spec of a USDⓈ-M one: unrouted, and where spot's payload shape differs, its own."""
    if spec.source is not Source.STREAM:
        return replace(spec, event_time=False) if spec.channel == "depth_snapshot" else spec
    out = replace(spec, route="", documented=True, instead=None)
    if spec.channel == "book_ticker":  # {u,s,b,B,a,A}: no event time
        return replace(out, wire=SpotBookTickerWire, event_time=False)
    if spec.channel == "depth_diff":  # no T, no pu
        return replace(out, wire=SpotDepthWire)
    if spec.channel == "partial_depth":  # {lastUpdateId,bids,asks}: no symbol, no time
        return replace(
            out, wire=SpotPartialDepthWire, build=_partial_depth_spot, symbol_of=None, event_time=False
        )
    return out


_SPOT_MISSING: Final = frozenset({"mark_price", "liquidation"})
"""Futures-only concepts: spot has no markPrice or forceOrder streams."""
_SPOT_ONLY: Final[tuple[ChannelSpec, ...]] = ()
"""Channels only spot has (none is ingested yet); a channel on both venues is listed once above."""

USDM_CHANNELS: Final = ChannelTable(USDM.name, (*_USDM_STREAMS, *_POLLED, *_DERIVED_SPECS))
SPOT_CHANNELS: Final = ChannelTable(
    SPOT.name,
    (*(_spot(s) for s in _USDM_STREAMS if s.channel not in _SPOT_MISSING), *_SPOT_ONLY, *_DERIVED_SPECS),
)
TABLES: Final[dict[str, ChannelTable]] = {USDM.name: USDM_CHANNELS, SPOT.name: SPOT_CHANNELS}
"""Venue name → its channel table."""

SELECTABLE: Final[tuple[str, ...]] = tuple(dict.fromkeys(c for t in TABLES.values() for c in t.selectable))
"""Every channel a user may name in ``channels`` on some venue."""


# -- lookups -------------------------------------------------------------------------------------


def channel_spec(venue: str, record: type[Record]) -> ChannelSpec:
    """The spec of ``record``'s channel on ``venue`` (an unknown venue reads the USDⓈ-M table)."""
    return TABLES.get(venue, USDM_CHANNELS).spec_for(record)


@dataclass(frozen=True, slots=True)
class StreamMatch:
    """A stream name resolved against a venue's table."""

    spec: ChannelSpec
    param: str | None = None
    """The value of the template's parameter (``1m`` of ``kline_1m``, ``20`` of ``depth20``)."""

    @property
    def depth(self) -> int:
        """The parameter as a number of levels (``depth20`` → 20), else 0."""
        return int(self.param) if self.param is not None and self.param.isdigit() else 0


class _Index:
    """A table's stream kinds: exact (``aggTrade``), parametrised (``kline_`` + interval) and
    all-market (``!ticker@arr``), derived from the templates."""

    def __init__(self, table: ChannelTable) -> None:
        self.exact: dict[str, ChannelSpec] = {}
        self.prefixed: list[tuple[str, str, ChannelSpec]] = []
        self.all_market: dict[str, ChannelSpec] = {}
        for spec in table.streamed:
            assert spec.template is not None
            head, brace, rest = stream_kind(spec.template).partition("{")
            if brace:
                self.prefixed.append((head, rest.partition("}")[0], spec))
            else:
                self.exact[head] = spec
            if spec.all_market is not None:
                self.all_market[spec.all_market] = spec
        self.prefixed.sort(key=lambda entry: -len(entry[0]))


_INDEX: Final = {venue: _Index(table) for venue, table in TABLES.items()}


def match_stream(venue: str, stream: str) -> StreamMatch:
    """The spec of ``stream`` on ``venue``; :class:`ParseError` for a kind the table lacks."""
    index = _INDEX[venue]
    kind = stream_kind(stream)
    if stream.startswith("!"):
        spec = index.all_market.get(kind)
        if spec is None:
            raise ParseError(f"unknown stream kind {kind!r} on {venue}", stream=stream)
        return StreamMatch(spec)
    spec = index.exact.get(kind)
    if spec is not None:
        return StreamMatch(spec)
    for head, name, spec in index.prefixed:
        if kind.startswith(head) and len(kind) > len(head):
            value = kind[len(head) :]
            if value not in TEMPLATE_PARAMS[name]:
                raise ParseError(f"unknown {spec.channel} {name} {value!r}", stream=stream)
            return StreamMatch(spec, value)
    raise ParseError(f"unknown stream kind {kind!r} on {venue}", stream=stream)


def _lookup(venue: str, stream: str) -> ChannelSpec | None:
    try:
        return match_stream(venue if venue in _INDEX else USDM.name, stream).spec
    except ParseError:
        return None


def channel_of(venue: str, stream: str) -> str | None:
    """The channel ``stream`` carries on ``venue``; ``None`` for a stream the table lacks."""
    spec = _lookup(venue, stream)
    return None if spec is None else spec.channel


def route_for(stream: str, venue: str = USDM.name) -> str:
    """The route ``stream`` must be subscribed on. A stream the table lacks is not book data,
    so on USDⓈ-M it belongs on ``/market`` (Binance's rule for everything else)."""
    spec = _lookup(venue, stream)
    if spec is not None and spec.route is not None:
        return spec.route
    return MARKET_ROUTE if VENUES[venue].routed else ""


def cadence_of(venue: str, stream: str) -> Cadence:
    """What drives ``stream``'s frames; a stream the table lacks counts as trade-driven (quiet)."""
    spec = _lookup(venue, stream)
    return spec.cadence if spec is not None and spec.cadence is not None else Cadence.TRADE


def stream_name(spec: ChannelSpec, native: str, **params: object) -> str:
    """The stream of ``spec`` for ``native`` (``BTCUSDT``), its parameters from ``params``
    (``interval="1m"``, ``levels=20``)."""
    if spec.template is None:
        raise ValueError(f"{spec.channel} is not a stream")
    return spec.template.format(s=native.lower(), **params)


def stream_specs(venue: str, channels: Sequence[str]) -> list[ChannelSpec]:
    """The stream specs of ``channels`` on ``venue``, in order; REST-only channels skipped."""
    table = TABLES[venue]
    return [table[c] for c in channels if table[c].source is Source.STREAM]
