"""``ingestd export nautilus``: stored data → a nautilus_trader ``ParquetDataCatalog``.

Everything is built from nautilus_trader's own objects and written with ``catalog.write_data``;
no file is made by hand. The stored tree is read by :class:`~ingestd.replay.Replay`, so the
order, the contract definitions valid at each moment and the books are the replay's:

* **Instruments** from the ``contract`` rows: ``CryptoPerpetual`` ``BTCUSDT-PERP.BINANCE``
  (USDⓈ-M) or ``CurrencyPair`` ``BTCUSDT.BINANCE`` (spot); price and size increments are the
  stored tick and step sizes (exact decimal strings), precisions their decimals. A changed
  definition is a new instrument version at its ``recv_ts``.
* **Trades**: ``TradeTick`` from ``trade`` (or ``agg_trade`` where no ``trade`` is stored, or as
  ``--trades`` says; never both, which would count every trade twice), aggressor ``SELLER``
  when the buyer is the maker.
* **Quotes**: ``QuoteTick`` from ``book_ticker``.
* **Book**: ``OrderBookDelta`` from what the replay's book actually did, recorded by an order
  book subclass: a loaded snapshot is a ``CLEAR`` then ``ADD`` per level (``F_SNAPSHOT``,
  ``F_LAST`` on the last); an applied diff is ``UPDATE`` per level with qty > 0 and ``DELETE``
  per level with qty 0, ``sequence`` = the diff's final update id, ``F_LAST`` on its last
  delta; a discarded book (a gap: desync, disconnect, audit mismatch …) is a ``CLEAR``. So a
  diff already inside a snapshot is never sent, buffered diffs follow their snapshot, and every
  resync of the gap log is a new ``CLEAR`` + snapshot: a backtest book never bridges a gap.
  With ``--from``, the book is warmed up before the window and starts as one snapshot of the
  rebuilt book at its first depth record inside it.
* **Bars** from closed klines (``EXTERNAL`` bars, ``ts_event`` = the bar's close time);
  **mark prices** as ``MarkPriceUpdate``. Index prices and funding rates are not exported:
  nautilus_trader 1.221's catalog cannot read back ``IndexPriceUpdate`` nor write
  ``FundingRateUpdate``.

Timestamps: ``ts_event`` is the exchange time (``exchange_ts``; ``recv_ts`` where there is none,
e.g. spot bookTicker; a buffered diff keeps its own), ``ts_init`` = ``recv_ts``, which is what
nautilus orders a backtest by. nautilus wants ``ts_init`` non-decreasing per data type and
instrument; the replay's order gives that except where the wall clock stepped back, and those
few are raised to the previous value (counted in ``clamped``).

Idempotent: data is written in chunks, each first clearing its ``[first, last]`` ``ts_init``
range from the catalog (``catalog.delete_data_range``), so exporting the same range again, or an
overlapping one, replaces what is there instead of failing nautilus's disjoint-interval check.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from nautilus_trader.model.data import (
    NULL_ORDER,
    Bar,
    BarSpecification,
    BarType,
    BookOrder,
    MarkPriceUpdate,
    OrderBookDelta,
    QuoteTick,
    TradeTick,
)
from nautilus_trader.model.enums import (
    AggregationSource,
    AggressorSide,
    BarAggregation,
    BookAction,
    OrderSide,
    PriceType,
    RecordFlag,
)
from nautilus_trader.model.identifiers import InstrumentId, Symbol, TradeId
from nautilus_trader.model.instruments import CryptoPerpetual, CurrencyPair, Instrument
from nautilus_trader.model.objects import Currency, Money, Price, Quantity
from nautilus_trader.persistence.catalog import ParquetDataCatalog

from ingestd.book.book import OrderBook
from ingestd.book.sync import SyncState
from ingestd.producers.contract_records import ContractRecord
from ingestd.records import (
    AggTrade,
    BookTicker,
    DepthDiff,
    DepthSnapshot,
    Kline,
    Level,
    MarkPrice,
    Record,
    Trade,
)
from ingestd.replay.engine import Replay, TimeLike
from ingestd.venues.binance.endpoints import VENUES
from ingestd.venues.binance.symbols import Contract

log = logging.getLogger("ingestd.export")

VENUE: Final = "BINANCE"
CHUNK_ROWS: Final = 200_000
"""Objects of one type and instrument written per ``write_data`` call (bounded memory)."""
MARK_PRICE_PRECISION: Final = 8
"""Binance writes mark prices with 8 decimals (they are not on the tick grid)."""
F_LAST: Final = int(RecordFlag.F_LAST)
F_SNAPSHOT: Final = int(RecordFlag.F_SNAPSHOT)
READ_CHANNELS: Final = ("contract", "trade", "agg_trade", "book_ticker", "depth_snapshot", "depth_diff",
                        "kline", "mark_price", "gap")  # fmt: skip
_DEFINITION_FIELDS: Final = (
    "status", "contract_type", "base_asset", "quote_asset", "margin_asset", "tick_size", "step_size",
    "min_qty", "min_notional", "price_precision", "qty_precision", "onboard_ts", "delivery_ts",
)  # fmt: skip
_UNITS: Final = {
    "s": BarAggregation.SECOND,
    "m": BarAggregation.MINUTE,
    "h": BarAggregation.HOUR,
    "d": BarAggregation.DAY,
    "w": BarAggregation.WEEK,
    "M": BarAggregation.MONTH,
}


def instrument_id(venue: str, native: str) -> InstrumentId:
    """``BTCUSDT-PERP.BINANCE`` (USDⓈ-M) or ``BTCUSDT.BINANCE`` (spot)."""
    suffix = "-PERP" if VENUES[venue].routed else ""
    return InstrumentId.from_str(f"{native}{suffix}.{VENUE}")


def _decimals(text: str) -> int:
    exp = Decimal(text).normalize().as_tuple().exponent
    assert isinstance(exp, int)
    return max(0, -exp)


def _increment(text: str) -> str:
    """``"0.10"`` → ``"0.1"``: the increment written with exactly its own decimals."""
    return format(Decimal(text).normalize(), "f")


def _currency(code: str) -> Currency:
    # strict=False: a code nautilus does not list becomes a crypto currency of 8 decimals.
    return Currency.from_str(code, strict=False)


def build_instrument(row: ContractRecord) -> Instrument:
    """The nautilus instrument a stored contract row defines (its ``recv_ts`` as both times)."""
    iid = instrument_id(row.venue, row.native)
    price_prec, size_prec = _decimals(row.tick_size), _decimals(row.step_size)
    base, quote = _currency(row.base_asset), _currency(row.quote_asset)
    common: dict[str, Any] = {
        "instrument_id": iid,
        "raw_symbol": Symbol(row.native),
        "base_currency": base,
        "quote_currency": quote,
        "price_precision": price_prec,
        "size_precision": size_prec,
        "price_increment": Price.from_str(_increment(row.tick_size)),
        "size_increment": Quantity.from_str(_increment(row.step_size)),
        "ts_event": row.recv_ts,
        "ts_init": row.recv_ts,
        "min_quantity": Quantity.from_str(_increment(row.min_qty)) if Decimal(row.min_qty) > 0 else None,
        "min_notional": Money(Decimal(row.min_notional), quote) if row.min_notional else None,
        "info": {"status": row.status, "contract_type": row.contract_type},
    }
    if VENUES[row.venue].routed:
        settle = _currency(row.margin_asset or row.quote_asset)
        return CryptoPerpetual(settlement_currency=settle, is_inverse=False, **common)
    return CurrencyPair(**common)


def bar_type(iid: InstrumentId, interval: str) -> BarType | None:
    """The ``EXTERNAL`` last-price bar type of a Binance kline interval (``1m``, ``4h``, ``1M`` …)."""
    unit = _UNITS.get(interval[-1:])
    step = interval[:-1]
    if unit is None or not step.isdigit() or int(step) <= 0:
        return None
    return BarType(iid, BarSpecification(int(step), unit, PriceType.LAST), AggregationSource.EXTERNAL)


@dataclass(slots=True)
class _Instrument:
    """One symbol's current instrument and what its data needs."""

    iid: InstrumentId
    key: str
    price_prec: int
    size_prec: int
    row: ContractRecord


@dataclass(slots=True)
class ExportStats:
    """What an export wrote."""

    catalog: str
    written: dict[str, int] = field(default_factory=dict)
    """Objects written per nautilus type name."""
    chunks: int = 0
    clamped: int = 0
    """Objects whose ``ts_init`` was raised to keep it non-decreasing (a wall clock stepped back)."""
    off_grid: int = 0
    """Prices or sizes that were not exact multiples of their increment (rounded; should be 0)."""
    no_instrument: dict[str, int] = field(default_factory=dict)
    """Records skipped per symbol because no contract row defines it."""
    replay: dict[str, Any] = field(default_factory=dict)


class _DeltaBook(OrderBook):
    """The replay's order book of one symbol, telling the exporter every change it makes."""

    __slots__ = ("_export", "native")

    def __init__(self, native: str, export: NautilusExport) -> None:
        super().__init__()
        self.native = native
        self._export = export

    def load_snapshot(self, bids: Iterable[Level], asks: Iterable[Level], last_update_id: int) -> None:
        super().load_snapshot(bids, asks, last_update_id)
        self._export.book_snapshot(self.native, self)

    def apply(self, bids: Iterable[Level], asks: Iterable[Level], final_update_id: int | None = None) -> None:
        bids = bids if isinstance(bids, Sequence) else list(bids)
        asks = asks if isinstance(asks, Sequence) else list(asks)
        super().apply(bids, asks, final_update_id)
        self._export.book_diff(self.native, bids, asks, final_update_id)

    def clear(self) -> None:
        before = self.last_update_id
        super().clear()
        if hasattr(self, "_export"):  # OrderBook.__init__ does not clear; a discard does
            self._export.book_cleared(self.native, before)


class NautilusExport:
    """One export run; see the module docstring. ``run()`` returns its :class:`ExportStats`."""

    def __init__(
        self,
        data: str | Path,
        catalog: str | Path,
        *,
        venue: str | None = None,
        symbols: Iterable[str] | None = None,
        start: TimeLike = None,
        end: TimeLike = None,
        trades: str = "auto",
    ) -> None:
        if trades not in ("auto", "trade", "agg_trade"):
            raise ValueError(f"trades must be auto, trade or agg_trade, not {trades!r}")
        self._books: dict[str, _DeltaBook] = {}
        self.replay = Replay(
            data, venue=venue, symbols=symbols, channels=READ_CHANNELS, start=start, end=end,
            books=True, book_factory=self._book_for,
        )  # fmt: skip
        root = Path(data) / f"venue={self.replay.venue}"
        self._trade_channel = {s: self._trades_of(root, s, trades) for s in self._stored_symbols(root)}
        Path(catalog).mkdir(parents=True, exist_ok=True)
        self.catalog = ParquetDataCatalog(str(catalog))
        self.stats = ExportStats(str(catalog))
        self._instruments: dict[str, _Instrument] = {}
        self._versions: dict[str, list[Instrument]] = {}
        self._buffers: dict[tuple[type, str], list[Any]] = {}
        self._last_ts: dict[tuple[type, str], int] = {}
        self._live_books: set[str] = set()
        self._warm = self.replay.start is not None
        self._buffered_ts: dict[str, dict[int, int]] = {}
        """Per native: exchange times of diffs the book is holding for its snapshot."""
        for row in self.replay.contract_rows.values():
            self._define(row, initial=True)

    @staticmethod
    def _trades_of(root: Path, symbol: str, choice: str) -> str:
        """The channel whose trades become TradeTicks: never both (each trade would count twice)."""
        if choice != "auto":
            return choice
        return "trade" if (root / "channel=trade" / f"symbol={symbol}").is_dir() else "agg_trade"

    @staticmethod
    def _stored_symbols(root: Path) -> list[str]:
        return sorted({p.name.partition("=")[2] for p in root.glob("channel=*/symbol=*")})

    def _book_for(self, contract: Contract) -> OrderBook:
        book = self._books[contract.native] = _DeltaBook(contract.native, self)
        return book

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> ExportStats:
        """Read the whole selection, write the catalog, return what was written."""
        for rec in self.replay:
            self._record(rec)
        self._finish()
        self.stats.replay = self.replay.stats()
        return self.stats

    def _record(self, rec: Record) -> None:
        cls = type(rec)
        if cls is ContractRecord:
            assert isinstance(rec, ContractRecord)
            self._define(rec, initial=False)
            return
        if cls is DepthDiff or cls is DepthSnapshot:
            self._depth_seen(rec)
            return
        inst = self._instruments.get(rec.native)
        if inst is None:
            if rec.channel != "gap":
                self.stats.no_instrument[rec.symbol] = self.stats.no_instrument.get(rec.symbol, 0) + 1
            return
        ts_event = rec.exchange_ts if rec.exchange_ts is not None else rec.recv_ts
        if cls is Trade or cls is AggTrade:
            assert isinstance(rec, Trade | AggTrade)
            if self._trade_channel.get(rec.symbol) == rec.channel:
                self._trade(inst, rec, ts_event)
        elif cls is BookTicker:
            assert isinstance(rec, BookTicker)
            ts = self._ts(QuoteTick, inst.key, rec.recv_ts)
            self._add(QuoteTick, inst.key, QuoteTick(
                inst.iid, self._price(rec.bid_price, inst), self._price(rec.ask_price, inst),
                self._size(rec.bid_qty, inst), self._size(rec.ask_qty, inst), ts_event, ts,
            ))  # fmt: skip
        elif cls is Kline:
            assert isinstance(rec, Kline)
            if rec.closed:
                self._bar(inst, rec)
        elif cls is MarkPrice:
            assert isinstance(rec, MarkPrice)
            ts = self._ts(MarkPriceUpdate, inst.key, rec.recv_ts)
            price = Price(rec.mark_price, MARK_PRICE_PRECISION)
            self._add(MarkPriceUpdate, inst.key, MarkPriceUpdate(inst.iid, price, ts_event, ts))

    def _trade(self, inst: _Instrument, rec: Trade | AggTrade, ts_event: int) -> None:
        ts = self._ts(TradeTick, inst.key, rec.recv_ts)
        trade_id = rec.trade_id if isinstance(rec, Trade) else rec.agg_id
        side = AggressorSide.SELLER if rec.is_buyer_maker else AggressorSide.BUYER
        tick = TradeTick(
            inst.iid, self._price(rec.price, inst), self._size(rec.qty, inst), side, TradeId(str(trade_id)),
            ts_event, ts,
        )  # fmt: skip
        self._add(TradeTick, inst.key, tick)

    def _bar(self, inst: _Instrument, k: Kline) -> None:
        bt = bar_type(inst.iid, k.interval)
        if bt is None:
            return
        key = str(bt)
        ts = self._ts(Bar, key, k.recv_ts)
        bar = Bar(
            bt, self._price(k.open, inst), self._price(k.high, inst), self._price(k.low, inst),
            self._price(k.close, inst), self._size(k.volume, inst), k.close_time, ts,
        )  # fmt: skip
        self._add(Bar, key, bar)

    # -- instruments --------------------------------------------------------------------------

    def _define(self, row: ContractRecord, *, initial: bool) -> None:
        have = self._instruments.get(row.native)
        if have is not None and _same_definition(have.row, row):
            return
        instrument = build_instrument(row)
        iid = instrument.id
        price_prec, size_prec = _decimals(row.tick_size), _decimals(row.step_size)
        if have is not None and (have.price_prec, have.size_prec) != (price_prec, size_prec):
            # One catalog file holds one precision: what was built with the old one goes first.
            self._flush_instrument(have.key)
        self._instruments[row.native] = _Instrument(iid, iid.value, price_prec, size_prec, row)
        versions = self._versions.setdefault(iid.value, [])
        if versions and versions[-1].ts_init > instrument.ts_init:
            return  # an older row than one already used (the prelude's): keep the newer
        versions.append(instrument)
        if not initial:
            log.info(
                "export: %s redefined at %d (tick %s, step %s)",
                iid,
                row.recv_ts,
                row.tick_size,
                row.step_size,
            )

    # -- books --------------------------------------------------------------------------------

    def _depth_seen(self, rec: Record) -> None:
        """A depth record was handed on (the book took it in before)."""
        native = rec.native
        books = self.replay.books
        if books is None:  # snapshots stored without diffs: no book to rebuild
            return
        state = books.state(native)
        if isinstance(rec, DepthDiff) and state is not SyncState.SYNCED:
            # Held (or bridging): if a snapshot replays it later, its delta keeps this time.
            held = self._buffered_ts.setdefault(native, {})
            held[rec.final_update_id] = rec.exchange_ts if rec.exchange_ts is not None else rec.recv_ts
            if len(held) > self.replay.max_buffered:
                del held[next(iter(held))]
        elif isinstance(rec, DepthSnapshot) and state is SyncState.SYNCED:
            self._buffered_ts.pop(native, None)
        if native not in self._live_books and self._warm:
            # First depth record inside the window: the warmed-up book starts as one snapshot.
            self._live_books.add(native)
            book = self._books.get(native)
            if book is not None and book.last_update_id is not None and len(book):
                self._snapshot_deltas(native, book, rec)

    def _book_inst(self, native: str) -> _Instrument | None:
        if self._warm and native not in self._live_books:
            return None  # still warming up before the window: the book starts as a snapshot
        return self._instruments.get(native)

    def book_snapshot(self, native: str, book: OrderBook) -> None:
        """The book loaded a REST snapshot: CLEAR + ADDs."""
        rec = self.replay.current
        if rec is not None and self._book_inst(native) is not None:
            self._snapshot_deltas(native, book, rec)

    def _snapshot_deltas(self, native: str, book: OrderBook, rec: Record) -> None:
        inst = self._instruments.get(native)
        if inst is None:
            return
        seq = book.last_update_id or 0
        ts_event = rec.exchange_ts if rec.exchange_ts is not None else rec.recv_ts
        ts = self._ts(OrderBookDelta, inst.key, rec.recv_ts)
        levels = [(OrderSide.BUY, p, q) for p, q in book.bids.items()]
        levels += [(OrderSide.SELL, p, q) for p, q in book.asks.items()]
        flags = F_SNAPSHOT | (F_LAST if not levels else 0)
        clear = OrderBookDelta(inst.iid, BookAction.CLEAR, NULL_ORDER, flags, seq, ts_event, ts)
        self._add(OrderBookDelta, inst.key, clear)
        if not levels:
            return
        last = len(levels) - 1
        for i, (side, p, q) in enumerate(levels):
            order = BookOrder(side, self._price(p, inst), self._size(q, inst), 0)
            f = F_SNAPSHOT | (F_LAST if i == last else 0)
            self._add(
                OrderBookDelta,
                inst.key,
                OrderBookDelta(inst.iid, BookAction.ADD, order, f, seq, ts_event, ts),
            )

    def book_diff(self, native: str, bids: Sequence[Level], asks: Sequence[Level], u: int | None) -> None:
        """The book applied a diff: UPDATE / DELETE per level, F_LAST on the last."""
        inst = self._book_inst(native)
        rec = self.replay.current
        if inst is None or rec is None or not (bids or asks):
            return
        seq = u or 0
        if isinstance(rec, DepthDiff) and rec.final_update_id == u:
            ts_event = rec.exchange_ts if rec.exchange_ts is not None else rec.recv_ts
        else:  # a held diff replayed on a snapshot: its own exchange time
            held = self._buffered_ts.get(native, {})
            ts_event = held.pop(seq, rec.exchange_ts if rec.exchange_ts is not None else rec.recv_ts)
        ts = self._ts(OrderBookDelta, inst.key, rec.recv_ts)
        n = len(bids) + len(asks)
        i = 0
        for side, levels in ((OrderSide.BUY, bids), (OrderSide.SELL, asks)):
            for p, q in levels:
                i += 1
                action = BookAction.UPDATE if q != 0.0 else BookAction.DELETE
                order = BookOrder(side, self._price(p, inst), self._size(q, inst), 0)
                delta = OrderBookDelta(inst.iid, action, order, F_LAST if i == n else 0, seq, ts_event, ts)
                self._add(OrderBookDelta, inst.key, delta)

    def book_cleared(self, native: str, before: int | None) -> None:
        """The book was discarded (a gap): one CLEAR, so nautilus' book is empty too."""
        inst = self._book_inst(native)
        rec = self.replay.current
        if inst is None or rec is None:
            return
        ts_event = rec.exchange_ts if rec.exchange_ts is not None else rec.recv_ts
        ts = self._ts(OrderBookDelta, inst.key, rec.recv_ts)
        clear = OrderBookDelta(inst.iid, BookAction.CLEAR, NULL_ORDER, F_LAST, before or 0, ts_event, ts)
        self._add(OrderBookDelta, inst.key, clear)

    # -- values -------------------------------------------------------------------------------

    def _price(self, value: float, inst: _Instrument) -> Price:
        if round(value, inst.price_prec) != value:
            self.stats.off_grid += 1
        return Price(value, inst.price_prec)

    def _size(self, value: float, inst: _Instrument) -> Quantity:
        if round(value, inst.size_prec) != value:
            self.stats.off_grid += 1
        return Quantity(value, inst.size_prec)

    def _ts(self, cls: type, key: str, recv_ts: int) -> int:
        last = self._last_ts.get((cls, key))
        if last is not None and recv_ts < last:
            self.stats.clamped += 1
            return last
        return recv_ts

    # -- writing ------------------------------------------------------------------------------

    def _add(self, cls: type, key: str, obj: Any) -> None:
        k = (cls, key)
        buf = self._buffers.get(k)
        if buf is None:
            buf = self._buffers[k] = []
        ts = obj.ts_init
        # Chunks split only where ts_init moves on: two files must not share a timestamp.
        if len(buf) >= CHUNK_ROWS and ts > self._last_ts[k]:
            self._write(cls, key, buf)
            buf = self._buffers[k] = []
        buf.append(obj)
        self._last_ts[k] = ts

    def _flush_instrument(self, key: str) -> None:
        for (cls, k), buf in list(self._buffers.items()):
            if buf and (k == key or k.startswith(f"{key}-")):  # bar types start with the instrument id
                self._write(cls, k, buf)
                self._buffers[(cls, k)] = []

    def _write(self, cls: type, key: str, objs: list[Any]) -> None:
        if not objs:
            return
        self.catalog.delete_data_range(cls, key, objs[0].ts_init, objs[-1].ts_init)
        self.catalog.write_data(objs)
        name = cls.__name__
        self.stats.written[name] = self.stats.written.get(name, 0) + len(objs)
        self.stats.chunks += 1

    def _finish(self) -> None:
        for (cls, key), buf in self._buffers.items():
            self._write(cls, key, buf)
        self._buffers.clear()
        for key, versions in self._versions.items():
            if versions:
                self._write(type(versions[0]), key, sorted(versions, key=lambda i: i.ts_init))


def _same_definition(a: ContractRecord, b: ContractRecord) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in _DEFINITION_FIELDS)
