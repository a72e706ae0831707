"""The book stage in the data flow: one :class:`BookSync` per symbol, the gap log, the audit.

:meth:`BookManager.process` sees every batch before the bus does (``Daemon._emit``) and returns
the extra records to publish with it: :class:`Gap` records and, when asked for, :class:`BookTop`
views. It asks for REST snapshots through the ``request_snapshot(native, urgent)`` callback
(non-blocking: the snapshot producer queues the request and later emits the
:class:`~ingestd.records.DepthSnapshot`, which comes back through :meth:`process`).

Integrity audit: Binance's ``bookTicker.u`` shares the depth diffs' id space, so a bookTicker
whose ``u`` equals the final id of a diff describes exactly the book after that diff. Best bid
and ask (price and quantity) are compared exactly; a mismatch is logged, written as an
``audit_mismatch`` gap, and that symbol alone resyncs. bookTicker is real-time while depth diffs
are batched, so the matching ticker usually arrives *before* its diff (in the real hftbacktest
USDⓈ-M BTCUSDT capture: 503 of 629 pairs; spot and COIN-M: all of them, up to 32 tickers ahead).
Tickers ahead of the book are therefore held in a short per-symbol queue (at most
:data:`AUDIT_AHEAD`, oldest dropped) and checked when the diff with their ``u`` is applied; a
ticker arriving right after its diff is checked at once. Only a ticker whose diff was already
followed by another one cannot be checked (the book has moved on).

Pure like the rest of ``ingestd.book``: no I/O, no clock (timestamps come from the records and
events), logs only on transitions.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

from ingestd.book.book import OrderBook
from ingestd.book.records import BookTop, Gap, GapKind
from ingestd.book.sync import APPLIED, NOTHING, BookSync, GapInfo, Market, SyncResult, SyncState
from ingestd.producers.events import ConnectionEvent, ConnectionEventKind
from ingestd.records import AnyRecord, BookTicker, DepthDiff, DepthSnapshot, Level, Record
from ingestd.venues.binance.channels import channel_of
from ingestd.venues.binance.endpoints import stream_symbol
from ingestd.venues.binance.symbols import Contract, ContractSet

log = logging.getLogger("ingestd.book")

AUDIT_AHEAD: Final = 128
"""bookTickers held per symbol while they are ahead of the book (see the module docstring)."""

REPLAY_CHUNK: Final = 128
"""Buffered diffs applied per step when a snapshot is replayed (:meth:`BookManager.continue_replays`):
2-3 ms at the 15-18 µs a diff costs on a 5,000-level book, so a 10,000-diff replay lets the event
loop run ~80 times instead of holding it ~150-200 ms (tests/test_loop_stalls.py measures both)."""

DIFF_BYTES: Final = 400
LEVEL_BYTES: Final = 120
TICKER_BYTES: Final = 320
"""What one buffered record holds as Python objects, rounded up: a diff ``DIFF_BYTES`` plus
``LEVEL_BYTES`` per level row, a bookTicker ``TICKER_BYTES`` (tracemalloc on the real USDⓈ-M
BTCUSDT capture: 7,365 bytes per 62-level diff, 119 per level; 313 per bookTicker). The memory
bound (``books.max_buffered_mb``) counts with these."""
ID_RESET: Final = GapKind.ID_RESET.value
"""The duplicate filter's notice that a stream's ids restarted lower (a depth one resyncs the book)."""

RequestSnapshot = Callable[[str, bool], None]
"""``request_snapshot(native, urgent)``: queue a REST depth snapshot (must not block)."""


@dataclass(slots=True)
class _Symbol:
    """Per-symbol state beside the sync machine: gap episode, counters, BookTop cadence."""

    contract: Contract
    sync: BookSync
    gap_started_ts: int | None = None
    """``started_ts`` of the open gap episode (``None``: no episode open)."""
    gap_last_id: int | None = None
    gap_kind: str | None = None
    gaps: dict[str, int] = field(default_factory=dict)
    resyncs: int = 0
    audit_checks: int = 0
    audit_mismatches: int = 0
    held_reason: str = ""
    """Why a ticker checked during snapshot replay disagreed (reported after the replay)."""
    since_top: int = 0
    repeated_disconnects: int = 0
    counted_synced: bool = False
    """Counted in the manager's "all books synced" tally."""
    ahead: deque[BookTicker] = field(default_factory=lambda: deque(maxlen=AUDIT_AHEAD))
    """bookTickers with an update id the book has not reached yet, oldest first."""
    replay_of: DepthSnapshot | None = None
    """The snapshot being replayed in chunks (its times stamp the records the replay makes)."""
    replay_held: list[BookTicker] = field(default_factory=list)
    """A ticker that disagreed with the book during that replay (checked once it is done)."""
    held: int = 0
    """Bytes of buffered diffs and held tickers counted towards the memory bound (0 once synced)."""


class BookView:
    """Read-only access to one symbol's local book for hooks.

    Every read checks the live state: once the book loses sync, ``is_synced`` is ``False`` and
    the tops and levels read as empty until it is exact again. The view reflects the newest diff
    the manager has processed, which may be ahead of the record a hook is handling.
    """

    __slots__ = ("_book", "_sync", "native", "symbol")

    def __init__(self, symbol: str, native: str, sync: BookSync) -> None:
        self.symbol = symbol
        self.native = native
        self._sync = sync
        self._book: OrderBook = sync.book

    @property
    def is_synced(self) -> bool:
        """True when the book is exact."""
        return self._sync.state is SyncState.SYNCED

    @property
    def last_update_id(self) -> int | None:
        """Final id of the last diff applied, or ``None`` when not synced."""
        return self._book.last_update_id if self.is_synced else None

    def best_bid(self) -> Level | None:
        """``(price, qty)`` of the best bid, or ``None`` (empty side or not synced)."""
        return self._book.best_bid() if self.is_synced else None

    def best_ask(self) -> Level | None:
        """``(price, qty)`` of the best ask, or ``None`` (empty side or not synced)."""
        return self._book.best_ask() if self.is_synced else None

    def levels(self, n: int) -> tuple[list[Level], list[Level]]:
        """Top ``n`` levels ``(bids highest first, asks lowest first)``; empty when not synced."""
        return self._book.levels(n) if self.is_synced else ([], [])

    def __repr__(self) -> str:
        return f"<BookView {self.symbol} synced={self.is_synced} u={self.last_update_id}>"


class BookManager:
    """Exact local books for every contract of a run, fed by the record stream.

    ``book_depth > 0`` adds a :class:`BookTop` of that many levels every ``book_every`` applied
    diffs (``1`` or ``0`` = after every diff) and whenever a book becomes synced.
    ``book_factory(contract)`` makes each symbol's :class:`OrderBook` (default: a plain one).
    """

    def __init__(
        self,
        venue: str,
        contracts: ContractSet,
        *,
        market: Market,
        request_snapshot: RequestSnapshot,
        max_buffered: int = 10_000,
        book_depth: int = 0,
        book_every: int = 0,
        book_factory: Callable[[Contract], OrderBook] | None = None,
        replay_chunk: int | None = None,
        max_buffered_bytes: int | None = None,
    ) -> None:
        if book_depth < 0 or book_every < 0:
            raise ValueError("book_depth and book_every must be >= 0")
        if max_buffered_bytes is not None and max_buffered_bytes <= 0:
            raise ValueError(f"max_buffered_bytes must be positive, not {max_buffered_bytes}")
        self.max_buffered_bytes = max_buffered_bytes
        self.venue = venue
        self.market: Market = market
        self._request = request_snapshot
        self.book_depth = book_depth
        self.book_every = max(1, book_every)
        self._max_buffered = max_buffered
        self._book_factory = book_factory
        self._replay_chunk = replay_chunk
        self._by_native: dict[str, _Symbol] = {}
        self._views: dict[str, BookView] = {}
        for c in contracts:
            self.add(c)
        self.unknown_symbols = 0
        self.snapshot_requests = 0
        self._first_synced = 0
        self._replaying: dict[str, None] = {}
        """Natives whose snapshot replay goes on in chunks (see :meth:`continue_replays`)."""
        self._held = 0
        """Bytes buffered across all symbols (the sum of their ``held``)."""
        self._waiting: dict[str, None] = {}
        """Natives waiting for a snapshot, longest-waiting first (the memory bound sheds those)."""
        self.shed = 0
        """Times a book's buffer was dropped to keep within ``max_buffered_bytes``."""
        self._shed_in_episode = 0

    # -- data path --------------------------------------------------------------------------

    def process(self, batch: Sequence[AnyRecord]) -> list[Record]:
        """Feed one batch (in arrival order); returns the gap/book records to publish with it."""
        out: list[Record] = []
        books = self._by_native
        depth = self.book_depth
        for rec in batch:
            cls = type(rec)
            if cls is DepthDiff:
                assert isinstance(rec, DepthDiff)
                sym = books.get(rec.native)
                if sym is None:
                    self.unknown_symbols += 1
                    continue
                res = sym.sync.on_diff(rec)
                if res is APPLIED:
                    if depth:
                        sym.since_top += 1
                        if sym.since_top >= self.book_every:
                            out.append(self._top(sym, rec))
                    # After the BookTop: a failed audit discards the book this diff built.
                    if sym.ahead:
                        self._audit_ahead(sym, out)
                else:
                    if res is not NOTHING:
                        self._handle(sym, res, rec, out)
                    self._settle(sym, rec.recv_ts, out)
            elif cls is BookTicker:
                assert isinstance(rec, BookTicker)
                sym = books.get(rec.native)
                if sym is not None:
                    self._audit(sym, rec, out)
            elif cls is Gap:
                assert isinstance(rec, Gap)
                if rec.kind == ID_RESET and rec.data_channel == "depth_diff":
                    self._id_reset(rec, out)
            elif cls is DepthSnapshot:
                assert isinstance(rec, DepthSnapshot)
                sym = books.get(rec.native)
                if sym is None:
                    self.unknown_symbols += 1
                    continue
                held: list[BookTicker] = []
                res = sym.sync.on_snapshot(
                    rec, partial(self._audit_replayed, sym, held) if sym.ahead else None
                )
                self._replayed(sym, res, rec, held, out)
                self._settle(sym, rec.recv_ts, out)
        return out

    @property
    def replaying(self) -> bool:
        """A snapshot replay is under way in chunks: call :meth:`continue_replays`."""
        return bool(self._replaying)

    def continue_replays(self) -> list[Record]:
        """Apply the next chunk of every replay under way; returns the records it makes (gaps,
        the ``resync`` end of a gap, book views), stamped with the replayed snapshot's times."""
        out: list[Record] = []
        for native in list(self._replaying):
            sym = self._by_native[native]
            rec = sym.replay_of
            if sym.sync.state is not SyncState.REPLAYING or rec is None:
                self._end_replay(sym)  # discarded meanwhile (a disconnect, an audit mismatch)
                continue
            held = sym.replay_held
            res = sym.sync.continue_replay(partial(self._audit_replayed, sym, held) if sym.ahead else None)
            self._replayed(sym, res, rec, held, out)
            self._settle(sym, rec.recv_ts, out)
        return out

    def _replayed(
        self, sym: _Symbol, res: SyncResult, rec: DepthSnapshot, held: list[BookTicker], out: list[Record]
    ) -> None:
        """After a snapshot or a replay chunk: records, and the bookkeeping of a chunked replay."""
        if res.more:
            if sym.replay_of is None:
                sym.replay_of, sym.replay_held = rec, held
                self._replaying[sym.contract.native] = None
            return
        self._end_replay(sym)
        if res is not NOTHING:
            self._handle(sym, res, rec, out)
        if held and sym.sync.is_synced:
            # A ticker disagreed with the book mid-replay: resync now that replay is done.
            self._mismatch(sym, held[0], held_reason=True, out=out)

    def _end_replay(self, sym: _Symbol) -> None:
        sym.replay_of = None
        sym.replay_held = []
        self._replaying.pop(sym.contract.native, None)

    def on_connection_event(self, ev: ConnectionEvent) -> list[Record]:
        """React to a websocket transition; returns the gap records to publish.

        ``DISCONNECTED``: every symbol whose depth-diff stream the connection carried loses its
        book (gap ``disconnect``); the first diff of the new connection asks for a snapshot.
        ``STREAM_SILENT``: a ``silent_stream`` notice per symbol of the silent streams (no resync:
        a silent depth stream simply never syncs, a silent bookTicker stream costs no book data).
        """
        out: list[Record] = []
        if ev.kind is ConnectionEventKind.DISCONNECTED:
            natives = self._depth_natives(ev)
            for native in natives:
                sym = self._by_native[native]
                if sym.sync.state is SyncState.IDLE and sym.gap_kind == GapKind.DISCONNECT:
                    # Nothing arrived since the last disconnect: the open episode covers this one.
                    sym.repeated_disconnects += 1
                    continue
                sym.ahead.clear()
                res = sym.sync.resync(
                    GapKind.DISCONNECT, f"{ev.connection} disconnected: {ev.reason}", stream_alive=False
                )
                assert res.gap is not None
                out.append(self._gap(sym, res.gap, ev.ts, None))
                self._settle(sym, ev.ts, out)
            if natives:
                log.warning("%s disconnected: %d book(s) will resync", ev.connection, len(natives))
        elif ev.kind is ConnectionEventKind.STREAM_SILENT:
            by_native: dict[str, list[str]] = {}
            for stream in ev.streams:
                native = (stream_symbol(stream) or "").upper()
                if native in self._by_native:
                    by_native.setdefault(native, []).append(stream)
            for native in ev.natives:
                if native in self._by_native:
                    by_native.setdefault(native, [])
            for native, streams in by_native.items():
                sym = self._by_native[native]
                what = ", ".join(streams) or "its streams"
                info = GapInfo(
                    GapKind.SILENT_STREAM,
                    f"{ev.connection}: no first frame on {what}",
                    sym.sync.last_update_id if sym.sync.is_synced else None,
                )
                out.append(self._gap(sym, info, ev.ts, None, opens=False))
        return out

    def record_gap(self, native: str, kind: GapKind, reason: str, ts: int) -> list[Record]:
        """Write a gap of ``kind`` for ``native`` on another component's behalf (e.g. ``ban``:
        snapshots cannot be fetched). The book is left alone; it syncs when it can."""
        sym = self._by_native.get(native)
        if sym is None:
            return []
        last = sym.sync.last_update_id if sym.sync.is_synced else sym.gap_last_id
        return [self._gap(sym, GapInfo(kind, reason, last), ts, None)]

    # -- a contract set that changes (listings) ---------------------------------------------

    def add(self, contract: Contract) -> bool:
        """Keep a book for ``contract`` from now on (a listing during the run). It starts idle and
        syncs like any other: its first diff asks for a snapshot. ``False`` if already kept."""
        if contract.native in self._by_native:
            return False
        factory = self._book_factory
        book = factory(contract) if factory is not None else None
        sym = _Symbol(
            contract, BookSync(self.market, self._max_buffered, book, replay_chunk=self._replay_chunk)
        )
        # Tickers wait while the book is behind them: as many as diffs may wait for a
        # snapshot, so a slow snapshot (or a burst replay) does not thin out the audit.
        sym.ahead = deque(maxlen=max(AUDIT_AHEAD, self._max_buffered))
        self._by_native[contract.native] = sym
        view = BookView(contract.symbol, contract.native, sym.sync)
        self._views[contract.native] = view
        self._views[contract.symbol] = view
        return True

    def remove(self, native: str) -> bool:
        """Drop the book of ``native`` (its contract stopped trading): it leaves :meth:`stats`
        (so readiness stops waiting for it) and :meth:`get`; later records of it are counted as
        unknown symbols. ``False`` if there was none."""
        sym = self._by_native.pop(native, None)
        if sym is None:
            return False
        self._views.pop(native, None)
        self._views.pop(sym.contract.symbol, None)
        # What it held no longer counts towards the memory bound, and no replay of it goes on.
        self._held -= sym.held
        self._waiting.pop(native, None)
        self._replaying.pop(native, None)
        if sym.counted_synced:
            # The "all books synced" line counts first syncs of the books kept now.
            self._first_synced -= 1
        return True

    # -- readiness (hooks) ------------------------------------------------------------------

    def get(self, symbol: str) -> BookView | None:
        """The book of ``symbol`` (normalized ``BTC-USDT-PERP`` or native ``BTCUSDT``), or
        ``None`` when it is unknown or not synced right now."""
        view = self._views.get(symbol)
        if view is None or not view.is_synced:
            return None
        return view

    def state(self, native: str) -> SyncState | None:
        """Sync state of ``native`` (``None`` if not a contract of the run)."""
        sym = self._by_native.get(native)
        return None if sym is None else sym.sync.state

    def stats(self) -> dict[str, Any]:
        """A snapshot: per symbol and totals (states, syncs, resyncs, gaps by kind, audit)."""
        symbols: dict[str, dict[str, Any]] = {}
        totals: dict[str, Any] = {
            "symbols": len(self._by_native),
            "synced": 0,
            "syncs": 0,
            "resyncs": 0,
            "applied": 0,
            "buffered": 0,
            "audit_checks": 0,
            "audit_mismatches": 0,
            "stale_snapshots": 0,
            "overflow_dropped": 0,
            "buffered_bytes": self._held,
            "shed": self.shed,
            "gaps": {},
            "unknown_symbols": self.unknown_symbols,
            "snapshot_requests": self.snapshot_requests,
        }
        gaps_total: dict[str, int] = totals["gaps"]
        for native, sym in self._by_native.items():
            s = sym.sync
            row = {
                "symbol": sym.contract.symbol,
                "state": s.state.value,
                "last_update_id": s.last_update_id,
                "syncs": s.syncs,
                "resyncs": sym.resyncs,
                "applied": s.applied,
                "buffered": s.buffered,
                "already_in_snapshot": s.already_in_snapshot,
                "stale_snapshots": s.stale_snapshots,
                "overflow_dropped": s.overflow_dropped,
                "buffered_bytes": sym.held,
                "shed_dropped": s.shed_dropped,
                "ignored_duplicates": s.ignored_duplicates,
                "ignored_snapshots": s.ignored_snapshots,
                "audit_checks": sym.audit_checks,
                "audit_mismatches": sym.audit_mismatches,
                "gaps": dict(sym.gaps),
                "gap_open_since": sym.gap_started_ts,
            }
            symbols[native] = row
            totals["synced"] += s.is_synced
            for key in ("syncs", "resyncs", "applied", "buffered", "audit_checks", "audit_mismatches",
                        "stale_snapshots", "overflow_dropped"):  # fmt: skip
                totals[key] += row[key]
            for kind, n in sym.gaps.items():
                gaps_total[kind] = gaps_total.get(kind, 0) + n
        return {"symbols": symbols, "totals": totals}

    # -- internals --------------------------------------------------------------------------

    def _handle(
        self, sym: _Symbol, res: SyncResult, rec: DepthDiff | DepthSnapshot, out: list[Record]
    ) -> None:
        """Turn a non-trivial :class:`SyncResult` into records, a snapshot request and logs."""
        native = sym.contract.native
        if res.synced and res.gap is None:
            self._synced(sym, rec, out)
        elif res.applied and self.book_depth and sym.sync.is_synced:
            sym.since_top += res.applied
            if sym.since_top >= self.book_every:
                out.append(self._top(sym, rec))
        if res.gap is not None:
            gap = res.gap
            if gap.kind is GapKind.BUFFER_OVERFLOW:
                log.warning("%s: %s", native, gap.reason)
            elif gap.kind is GapKind.STALE_SNAPSHOT:
                log.info("%s: %s; requesting another", native, gap.reason)
            else:
                log.warning("%s: book discarded (%s): %s", native, gap.kind.value, gap.reason)
            out.append(self._gap(sym, gap, rec.recv_ts, rec.exchange_ts))
        if res.need_snapshot:
            self.snapshot_requests += 1
            self._request(native, res.urgent)
        if res.applied and sym.ahead and sym.sync.is_synced:
            self._audit_ahead(sym, out)

    def _id_reset(self, notice: Gap, out: list[Record]) -> None:
        """The duplicate filter saw the depth stream's ids restart lower: the book (and what it
        buffered) is of the old id space; discard it and sync again from a new snapshot."""
        sym = self._by_native.get(notice.native)
        if sym is None:
            return
        res = sym.sync.restart(GapKind.ID_RESET, f"depth ids restarted: {notice.reason}", notice.exchange_ts)
        if res.gap is None:
            return
        sym.ahead.clear()
        log.warning("%s: book discarded (id_reset): %s", sym.contract.native, notice.reason)
        out.append(self._gap(sym, res.gap, notice.recv_ts, notice.exchange_ts))
        self.snapshot_requests += 1
        self._request(sym.contract.native, True)
        self._settle(sym, notice.recv_ts, out)

    def _synced(self, sym: _Symbol, rec: DepthDiff | DepthSnapshot, out: list[Record]) -> None:
        s = sym.sync
        native = sym.contract.native
        if sym.gap_started_ts is not None:
            sym.resyncs += 1
            secs = (rec.recv_ts - sym.gap_started_ts) / 1e9
            log.info("%s: book resynced at u=%s from snapshot %s after %.1f s (%s)",
                     native, s.last_update_id, s.snapshot_id, secs, sym.gap_kind)  # fmt: skip
            out.append(
                Gap(
                    venue=self.venue,
                    symbol=sym.contract.symbol,
                    native=native,
                    exchange_ts=rec.exchange_ts,
                    recv_ts=rec.recv_ts,
                    transaction_ts=None,
                    kind=GapKind.RESYNC.value,
                    reason=f"book exact again after {sym.gap_kind}",
                    last_update_id=sym.gap_last_id,
                    first_update_id=s.snapshot_id,
                    final_update_id=s.last_update_id,
                    started_ts=sym.gap_started_ts,
                    ended_ts=rec.recv_ts,
                )
            )
            sym.gap_started_ts = sym.gap_last_id = sym.gap_kind = None
        else:
            # First syncs are one line per symbol at start-up: DEBUG, plus one INFO when all are.
            if not sym.counted_synced:
                self._first_synced += 1
                sym.counted_synced = True
            log.debug("%s: book synced at u=%s from snapshot %s (%d buffered diff(s) already in it)",
                      native, s.last_update_id, s.snapshot_id, s.already_in_snapshot)  # fmt: skip
            if self._first_synced == len(self._by_native):
                log.info("all %d books synced", self._first_synced)
        if self.book_depth:
            out.append(self._top(sym, rec))

    def _gap(
        self, sym: _Symbol, info: GapInfo, ts: int, exchange_ts: int | None, *, opens: bool = True
    ) -> Gap:
        """A gap record; ``opens`` starts (or joins) the symbol's gap episode."""
        kind = info.kind.value
        sym.gaps[kind] = sym.gaps.get(kind, 0) + 1
        started = ts
        if opens:
            if sym.gap_started_ts is None:
                sym.gap_started_ts = ts
                sym.gap_last_id = info.last_update_id
            started = sym.gap_started_ts
            sym.gap_kind = kind
        return Gap(
            venue=self.venue,
            symbol=sym.contract.symbol,
            native=sym.contract.native,
            exchange_ts=exchange_ts,
            recv_ts=ts,
            transaction_ts=None,
            kind=kind,
            reason=info.reason,
            last_update_id=info.last_update_id,
            first_update_id=info.first_update_id,
            final_update_id=info.final_update_id,
            prev_final_update_id=info.prev_final_update_id,
            started_ts=started,
        )

    def _top(self, sym: _Symbol, diff: DepthDiff | DepthSnapshot) -> BookTop:
        sym.since_top = 0
        bids, asks = sym.sync.book.levels(self.book_depth)
        last = sym.sync.last_update_id
        assert last is not None
        return BookTop(
            venue=self.venue,
            symbol=sym.contract.symbol,
            native=sym.contract.native,
            exchange_ts=diff.exchange_ts,
            recv_ts=diff.recv_ts,
            transaction_ts=diff.transaction_ts,
            bids=bids,
            asks=asks,
            last_update_id=last,
            depth=self.book_depth,
        )

    def _audit(self, sym: _Symbol, t: BookTicker, out: list[Record]) -> None:
        """A bookTicker arrived: check it now if it is the book's state, hold it if ahead."""
        s = sym.sync
        if s.state is SyncState.SYNCED:
            last = s.book.last_update_id
            assert last is not None
            if t.update_id == last:
                self._check(sym, t, out)
            elif t.update_id > last:
                ahead = sym.ahead
                ahead.append(t)
                # A synced book is at most a few diffs behind its tickers: a fixed few are held.
                if len(ahead) > AUDIT_AHEAD:
                    ahead.popleft()
        elif s.state is not SyncState.IDLE:
            # Not synced yet: the ticker may match a diff the coming snapshot makes applicable.
            sym.ahead.append(t)
            self._settle(sym, t.recv_ts, out)

    def _audit_ahead(self, sym: _Symbol, out: list[Record]) -> None:
        """The book moved to a new id: drop held tickers it passed, check one it reached."""
        ahead = sym.ahead
        last = sym.sync.book.last_update_id
        assert last is not None
        while ahead and ahead[0].update_id < last:
            ahead.popleft()
        if ahead and ahead[0].update_id == last:
            self._check(sym, ahead.popleft(), out)

    def _audit_replayed(self, sym: _Symbol, held: list[BookTicker]) -> None:
        """During snapshot replay: check the held ticker matching this diff, defer a mismatch."""
        ahead = sym.ahead
        last = sym.sync.book.last_update_id
        assert last is not None
        while ahead and ahead[0].update_id < last:
            ahead.popleft()
        if ahead and ahead[0].update_id == last:
            t = ahead.popleft()
            sym.audit_checks += 1
            if not held and not self._top_matches(sym, t):
                sym.held_reason = self._mismatch_reason(sym, t)
                held.append(t)

    @staticmethod
    def _top_matches(sym: _Symbol, t: BookTicker) -> bool:
        book = sym.sync.book
        return book.best_bid() == (t.bid_price, t.bid_qty) and book.best_ask() == (t.ask_price, t.ask_qty)

    @staticmethod
    def _mismatch_reason(sym: _Symbol, t: BookTicker) -> str:
        book = sym.sync.book
        return (
            f"bookTicker u={t.update_id} says bid {t.bid_price} x {t.bid_qty}, ask {t.ask_price} x "
            f"{t.ask_qty}; book has bid {book.best_bid()}, ask {book.best_ask()}"
        )

    def _check(self, sym: _Symbol, t: BookTicker, out: list[Record]) -> None:
        sym.audit_checks += 1
        if self._top_matches(sym, t):
            return
        self._mismatch(sym, t, held_reason=False, out=out)

    def _mismatch(self, sym: _Symbol, t: BookTicker, *, held_reason: bool, out: list[Record]) -> None:
        s = sym.sync
        sym.audit_mismatches += 1
        reason = sym.held_reason if held_reason else self._mismatch_reason(sym, t)
        log.error("%s: audit mismatch: %s", sym.contract.native, reason)
        sym.ahead.clear()
        res = s.resync(GapKind.AUDIT_MISMATCH, reason, stream_alive=True)
        assert res.gap is not None
        gap = GapInfo(GapKind.AUDIT_MISMATCH, reason, res.gap.last_update_id, t.update_id, t.update_id, None)
        out.append(self._gap(sym, gap, t.recv_ts, t.exchange_ts))
        self.snapshot_requests += 1
        self._request(sym.contract.native, True)
        self._settle(sym, t.recv_ts, out)

    # -- the memory bound -------------------------------------------------------------------

    def _settle(self, sym: _Symbol, ts: int, out: list[Record]) -> None:
        """Recount what ``sym`` holds after its buffer or held tickers changed; shed past the bound.

        Only books waiting for a snapshot count: a synced book holds no diffs and at most
        :data:`AUDIT_AHEAD` tickers (a fixed few per symbol).
        """
        s = sym.sync
        state = s.state
        native = sym.contract.native
        if state is SyncState.SYNCED or state is SyncState.IDLE:
            new = 0
            if self._waiting:
                self._waiting.pop(native, None)
            if state is SyncState.SYNCED and len(sym.ahead) > AUDIT_AHEAD:
                for _ in range(len(sym.ahead) - AUDIT_AHEAD):
                    sym.ahead.popleft()
        else:
            new = s.buffered * DIFF_BYTES + s.buffered_levels * LEVEL_BYTES + len(sym.ahead) * TICKER_BYTES
            if native not in self._waiting:
                self._waiting[native] = None
        self._held += new - sym.held
        sym.held = new
        bound = self.max_buffered_bytes
        if bound is None:
            return
        if self._held > bound:
            self._shed(bound, ts, out)
        elif self._shed_in_episode and self._held <= bound // 2:
            log.info("book buffers back under half of books.max_buffered_mb after %d shed buffer(s)",
                     self._shed_in_episode)  # fmt: skip
            self._shed_in_episode = 0

    def _shed(self, bound: int, ts: int, out: list[Record]) -> None:
        """Drop the buffers of the books that have waited longest until the total fits again."""
        for native in list(self._waiting):
            if self._held <= bound:
                return
            sym = self._by_native[native]
            if not sym.held:
                continue
            s = sym.sync
            reason = (
                f"books.max_buffered_mb ({bound / 2**20:g} MB) reached with {len(self._waiting)} book(s) "
                f"waiting for snapshots: dropped the {s.buffered} diff(s) and {len(sym.ahead)} bookTicker(s) "
                f"({sym.held / 2**20:.2f} MB) of the one waiting longest; its sync starts again"
            )
            sym.ahead.clear()
            res = s.shed(reason)
            self._end_replay(sym)
            self.shed += 1
            self._shed_in_episode += 1
            if self._shed_in_episode == 1:
                log.warning("%s: %s (logged once until the buffers shrink)", native, reason)
            assert res.gap is not None
            out.append(self._gap(sym, res.gap, ts, None))
            if res.need_snapshot:  # a book being built had consumed its snapshot
                self.snapshot_requests += 1
                self._request(native, True)
            self._held -= sym.held
            sym.held = 0
            # Its wait starts again: to the back of the line.
            del self._waiting[native]
            self._waiting[native] = None

    def _depth_natives(self, ev: ConnectionEvent) -> list[str]:
        """Natives whose diff-depth stream ``ev``'s connection carried (all of ``ev.natives``
        when the event names no streams)."""
        if not ev.streams:
            return [n for n in ev.natives if n in self._by_native]
        found: dict[str, None] = {}
        for stream in ev.streams:
            if channel_of(self.venue, stream) != "depth_diff":
                continue
            native = (stream_symbol(stream) or "").upper()
            if native in self._by_native:
                found[native] = None
        return list(found)
