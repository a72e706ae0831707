"""Binance wire shapes as msgspec Structs: what the JSON looks like, not what we store.

Each Struct names its fields for what they mean and maps them to Binance's one-letter keys with
``msgspec.field(name=...)``. They are decoded with ``strict=False`` so that decimal strings such
as ``"61800.20"`` become float64 while the JSON is parsed (the same value ``float("61800.20")``
gives: msgspec rounds correctly), and ``[["61800.20","0.014"], ...]`` becomes a list of
``(price, qty)`` tuples with no Python loop.

Shapes differ per market (docs/binance.md §8.3), so there is one Struct per shape:

- required fields are the ones a record cannot do without (ids, prices, the futures ``pu``);
- fields a market does not send default to ``None`` (spot bookTicker has no ``E``/``T``, futures
  tickers have no best bid/ask, COIN-M markPrice has no index price ``i``);
- unknown keys are ignored, because Binance adds fields without notice (``nq``, ``ap``, ``st``).
"""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

from ingestd.records import Level

W = TypeVar("W")


class Frame(msgspec.Struct, Generic[W], gc=False):
    """A combined-stream frame whose stream is already known: only ``data`` is decoded."""

    data: W


class Envelope(msgspec.Struct, kw_only=True, gc=False):
    """Any top-level websocket message, for the first frame of a stream and for control replies.

    Errors come flat (``{"code":2,"msg":..}``, as documented) or nested
    (``{"error":{"code":2,"msg":..},"id":1}``); both are read.

    ``data`` stays raw bytes: it is decoded once the stream name has told us its shape.
    An empty ``Raw`` means the key was absent (``null`` decodes to ``b"null"``).
    """

    stream: str | None = None
    data: msgspec.Raw = msgspec.Raw()
    result: msgspec.Raw = msgspec.Raw()
    id: object = None
    code: object = None
    error: object = None
    msg: object = None
    event: object = msgspec.field(default=None, name="e")


class ErrorBody(msgspec.Struct, kw_only=True, gc=False):
    """A REST or websocket error reply: ``{"code":-1121,"msg":"Invalid symbol."}``."""

    code: object = None
    msg: object = None


# -- trades ------------------------------------------------------------------------------------


class TradeWire(msgspec.Struct, kw_only=True, gc=False):
    """``trade`` (spot and futures; spot adds ``M``, futures adds ``X``)."""

    event_time: int = msgspec.field(name="E")
    trade_time: int = msgspec.field(name="T")
    symbol: str = msgspec.field(name="s")
    trade_id: int = msgspec.field(name="t")
    price: float = msgspec.field(name="p")
    qty: float = msgspec.field(name="q")
    buyer_is_maker: bool = msgspec.field(name="m")
    trade_type: str | None = msgspec.field(default=None, name="X")


class AggTradeWire(msgspec.Struct, kw_only=True, gc=False):
    """``aggTrade``; futures may add ``nq`` (quantity without RPI fills). ``f > l`` happens."""

    event_time: int = msgspec.field(name="E")
    trade_time: int = msgspec.field(name="T")
    symbol: str = msgspec.field(name="s")
    agg_id: int = msgspec.field(name="a")
    price: float = msgspec.field(name="p")
    qty: float = msgspec.field(name="q")
    first_trade_id: int = msgspec.field(name="f")
    last_trade_id: int = msgspec.field(name="l")
    buyer_is_maker: bool = msgspec.field(name="m")
    normal_qty: float | None = msgspec.field(default=None, name="nq")


# -- book --------------------------------------------------------------------------------------


class SpotBookTickerWire(msgspec.Struct, kw_only=True, gc=False):
    """Spot ``bookTicker``: ``{u,s,b,B,a,A}`` only; ``E``/``T`` are read if Binance adds them."""

    update_id: int = msgspec.field(name="u")
    symbol: str = msgspec.field(name="s")
    bid_price: float = msgspec.field(name="b")
    bid_qty: float = msgspec.field(name="B")
    ask_price: float = msgspec.field(name="a")
    ask_qty: float = msgspec.field(name="A")
    event_time: int | None = msgspec.field(default=None, name="E")
    trade_time: int | None = msgspec.field(default=None, name="T")


class FuturesBookTickerWire(msgspec.Struct, kw_only=True, gc=False):
    """Futures ``bookTicker``: spot's fields plus ``E`` (required) and ``T``."""

    update_id: int = msgspec.field(name="u")
    symbol: str = msgspec.field(name="s")
    bid_price: float = msgspec.field(name="b")
    bid_qty: float = msgspec.field(name="B")
    ask_price: float = msgspec.field(name="a")
    ask_qty: float = msgspec.field(name="A")
    event_time: int = msgspec.field(name="E")
    trade_time: int | None = msgspec.field(default=None, name="T")


class SpotDepthWire(msgspec.Struct, kw_only=True, gc=False):
    """Spot ``depthUpdate``: ``e,E,s,U,u,b,a`` (continuity is ``U == prev_u + 1``)."""

    event_time: int = msgspec.field(name="E")
    symbol: str = msgspec.field(name="s")
    first_update_id: int = msgspec.field(name="U")
    final_update_id: int = msgspec.field(name="u")
    bids: list[Level] = msgspec.field(name="b")
    asks: list[Level] = msgspec.field(name="a")
    trade_time: int | None = msgspec.field(default=None, name="T")
    prev_final_update_id: int | None = msgspec.field(default=None, name="pu")


class FuturesDepthWire(msgspec.Struct, kw_only=True, gc=False):
    """Futures ``depthUpdate`` (diff and top-N): spot's fields plus ``T`` and a required ``pu``.

    ``pu`` is what futures books check continuity with, so a diff without it is malformed.
    """

    event_time: int = msgspec.field(name="E")
    symbol: str = msgspec.field(name="s")
    first_update_id: int = msgspec.field(name="U")
    final_update_id: int = msgspec.field(name="u")
    prev_final_update_id: int = msgspec.field(name="pu")
    bids: list[Level] = msgspec.field(name="b")
    asks: list[Level] = msgspec.field(name="a")
    trade_time: int | None = msgspec.field(default=None, name="T")


class SpotPartialDepthWire(msgspec.Struct, kw_only=True, gc=False):
    """Spot ``depth<N>``: ``{lastUpdateId,bids,asks}``, no symbol and no event time."""

    last_update_id: int = msgspec.field(name="lastUpdateId")
    bids: list[Level]
    asks: list[Level]


class DepthSnapshotWire(msgspec.Struct, kw_only=True, gc=False):
    """REST depth: spot ``{lastUpdateId,bids,asks}``; fapi adds ``E,T``; dapi ``symbol,pair``."""

    last_update_id: int = msgspec.field(name="lastUpdateId")
    bids: list[Level]
    asks: list[Level]
    event_time: int | None = msgspec.field(default=None, name="E")
    trade_time: int | None = msgspec.field(default=None, name="T")
    symbol: str | None = None


# -- candles, tickers --------------------------------------------------------------------------


class KlineBodyWire(msgspec.Struct, kw_only=True, gc=False):
    """The ``k`` object of a kline event (``B`` is an ignored ``"0"``)."""

    open_time: int = msgspec.field(name="t")
    close_time: int = msgspec.field(name="T")
    interval: str = msgspec.field(name="i")
    open: float = msgspec.field(name="o")
    close: float = msgspec.field(name="c")
    high: float = msgspec.field(name="h")
    low: float = msgspec.field(name="l")
    volume: float = msgspec.field(name="v")
    trades: int = msgspec.field(name="n")
    closed: bool = msgspec.field(name="x")
    quote_volume: float = msgspec.field(name="q")
    taker_buy_volume: float = msgspec.field(name="V")
    taker_buy_quote_volume: float = msgspec.field(name="Q")


class KlineWire(msgspec.Struct, kw_only=True, gc=False):
    """``kline``: ``{e,E,s,k:{...}}``."""

    event_time: int = msgspec.field(name="E")
    symbol: str = msgspec.field(name="s")
    kline: KlineBodyWire = msgspec.field(name="k")


class TickerWire(msgspec.Struct, kw_only=True, gc=False):
    """``24hrTicker``. Spot adds ``x`` and best bid/ask ``b,B,a,A``; futures has none of them."""

    event_time: int = msgspec.field(name="E")
    symbol: str = msgspec.field(name="s")
    price_change: float = msgspec.field(name="p")
    price_change_pct: float = msgspec.field(name="P")
    weighted_avg_price: float = msgspec.field(name="w")
    last_price: float = msgspec.field(name="c")
    last_qty: float = msgspec.field(name="Q")
    open: float = msgspec.field(name="o")
    high: float = msgspec.field(name="h")
    low: float = msgspec.field(name="l")
    volume: float = msgspec.field(name="v")
    quote_volume: float = msgspec.field(name="q")
    open_time: int = msgspec.field(name="O")
    close_time: int = msgspec.field(name="C")
    first_trade_id: int = msgspec.field(name="F")
    last_trade_id: int = msgspec.field(name="L")
    trades: int = msgspec.field(name="n")
    prev_close: float | None = msgspec.field(default=None, name="x")
    bid_price: float | None = msgspec.field(default=None, name="b")
    bid_qty: float | None = msgspec.field(default=None, name="B")
    ask_price: float | None = msgspec.field(default=None, name="a")
    ask_qty: float | None = msgspec.field(default=None, name="A")


class MiniTickerWire(msgspec.Struct, kw_only=True, gc=False):
    """``24hrMiniTicker``: ``e,E,s,c,o,h,l,v,q``."""

    event_time: int = msgspec.field(name="E")
    symbol: str = msgspec.field(name="s")
    close: float = msgspec.field(name="c")
    open: float = msgspec.field(name="o")
    high: float = msgspec.field(name="h")
    low: float = msgspec.field(name="l")
    volume: float = msgspec.field(name="v")
    quote_volume: float = msgspec.field(name="q")


# -- futures only ------------------------------------------------------------------------------


class MarkPriceWire(msgspec.Struct, kw_only=True, gc=False):
    """``markPriceUpdate``. COIN-M has no ``i``; ``ap`` is new (2026-03); ``T`` is next funding."""

    event_time: int = msgspec.field(name="E")
    symbol: str = msgspec.field(name="s")
    mark_price: float = msgspec.field(name="p")
    estimated_settle_price: float | None = msgspec.field(default=None, name="P")
    index_price: float | None = msgspec.field(default=None, name="i")
    funding_rate: float | None = msgspec.field(default=None, name="r")
    next_funding_time: int | None = msgspec.field(default=None, name="T")
    mark_price_avg: float | None = msgspec.field(default=None, name="ap")


class ForceOrderBodyWire(msgspec.Struct, kw_only=True, gc=False):
    """The ``o`` object of a ``forceOrder`` event."""

    symbol: str = msgspec.field(name="s")
    side: str = msgspec.field(name="S")
    order_type: str = msgspec.field(name="o")
    time_in_force: str = msgspec.field(name="f")
    qty: float = msgspec.field(name="q")
    price: float = msgspec.field(name="p")
    avg_price: float = msgspec.field(name="ap")
    status: str = msgspec.field(name="X")
    last_filled_qty: float = msgspec.field(name="l")
    filled_qty: float = msgspec.field(name="z")
    trade_time: int = msgspec.field(name="T")


class ForceOrderWire(msgspec.Struct, kw_only=True, gc=False):
    """``forceOrder``: ``{e,E,o:{...}}``; the symbol is inside ``o``."""

    event_time: int = msgspec.field(name="E")
    order: ForceOrderBodyWire = msgspec.field(name="o")
