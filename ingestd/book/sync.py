"""Binance's local-book sync rules as a pure state machine (no I/O, no clock, no logging).

States::

    IDLE ──first diff──► BUFFERING ──snapshot──► BRIDGING ──diff spanning L──► SYNCED
      ▲                    ▲   │ stale snapshot: ask again   (REPLAYING)           │
      │                    └───┴──────────── desync / crossed / audit ◄───────────┘
      └──────────────────────────── disconnect (any state)

* **BUFFERING**: every diff is kept (at most ``max_buffered``; on overflow the oldest go, and
  the snapshot must then be newer than the oldest one kept). A snapshot was requested.
* On the snapshot (``L = lastUpdateId``): older than the first buffered diff (spot
  ``L + 1 < U``, futures ``L < U``) → ask for another. Otherwise load it, then feed the buffer.
* **BRIDGING**: diffs already in the snapshot are dropped (spot ``u <= L``, futures ``u < L``;
  the real USDⓈ-M ETHUSDT capture has a first valid event with ``u == L``). The first diff
  applied must span it: spot ``U <= L + 1 <= u``, futures ``U <= L <= u``.
* **REPLAYING** (with ``replay_chunk``): the buffered diffs are applied to the snapshot at most
  ``replay_chunk`` per call (:meth:`BookSync.continue_replay`), so a caller on an event loop can
  let other work run in between; diffs arriving meanwhile are buffered behind them. The book is
  not exact until the buffer is empty.
* **SYNCED**: spot ``U == prev_u + 1``; futures ``pu == prev_u`` (futures ids are a global
  sequence: ``U`` jumps, so ``U == prev_u + 1`` would be wrong there). A diff with
  ``u <= prev_u`` was already applied (a duplicate across a connection rotation): ignored. A
  break, or a crossed book after applying, discards the book: the offending diff starts a new
  buffer and a new snapshot is needed.

The caller (:class:`ingestd.book.manager.BookManager`) fetches snapshots, writes gap records and
logs; this module only says what happened through :class:`SyncResult`.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from ingestd.book.book import OrderBook
from ingestd.book.records import GapKind
from ingestd.records import DepthDiff, DepthSnapshot

Market = Literal["spot", "futures"]


class SyncState(enum.StrEnum):
    """Where a symbol's book is in the sync procedure."""

    IDLE = "idle"
    """No diff yet (start, or after a disconnect): nothing buffered, nothing requested."""
    BUFFERING = "buffering"
    """Diffs are buffered; a snapshot was requested."""
    BRIDGING = "bridging"
    """A snapshot is loaded; waiting for the diff that spans its ``lastUpdateId``."""
    REPLAYING = "replaying"
    """A snapshot is loaded and the buffered diffs are being applied, a chunk at a time."""
    SYNCED = "synced"
    """The book is exact at :attr:`BookSync.last_update_id`."""


@dataclass(frozen=True, slots=True)
class GapInfo:
    """Why the book was discarded (or why the snapshot did not fit), with the ids involved."""

    kind: GapKind
    reason: str
    last_update_id: int | None
    """Last id applied to a good book (``None`` if it never synced since the last discard)."""
    first_update_id: int | None = None
    final_update_id: int | None = None
    prev_final_update_id: int | None = None


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one call did. Most calls return a shared constant (no allocation)."""

    applied: int = 0
    """Diffs applied to the book by this call."""
    synced: bool = False
    """The book became exact during this call."""
    need_snapshot: bool = False
    """The caller must fetch a (new) snapshot for this symbol."""
    urgent: bool = False
    """The snapshot replaces a book that was lost (a resync), not a first sync."""
    gap: GapInfo | None = None
    """Set when the book was discarded, a snapshot was rejected or buffered diffs were dropped."""
    already_in_snapshot: int = 0
    """Buffered diffs discarded because the snapshot already contains them."""
    more: bool = False
    """The replay stopped after a chunk: call :meth:`BookSync.continue_replay` again."""


DUPLICATE_RUN: Final = 64
"""Diffs in a row at or below a synced book's id taken for stale copies (ignored); one more is a
broken sequence: the ids went back without an ``id_reset`` notice, so the book resyncs rather
than sit on a book no diff updates any more."""

NOTHING: Final = SyncResult()
APPLIED: Final = SyncResult(applied=1)
_NEED_FIRST: Final = SyncResult(need_snapshot=True)
_NEED_URGENT: Final = SyncResult(need_snapshot=True, urgent=True)


class BookSync:
    """One symbol's book and its sync state. Feed it every diff and snapshot, in arrival order."""

    __slots__ = (
        "_bridge_prev_u",
        "_buffer",
        "_dup_run",
        "_dup_since",
        "_gap_open",
        "_last_good",
        "_overflowed",
        "_replay_state",
        "_replay_synced",
        "_reset_from",
        "_reset_ts",
        "already_in_snapshot",
        "applied",
        "awaiting_snapshot",
        "book",
        "buffered_levels",
        "ignored_duplicates",
        "ignored_snapshots",
        "market",
        "max_buffered",
        "overflow_dropped",
        "replay_chunk",
        "shed_dropped",
        "snapshot_id",
        "spot",
        "stale_snapshots",
        "state",
        "syncs",
    )

    def __init__(
        self,
        market: Market,
        max_buffered: int,
        book: OrderBook | None = None,
        *,
        replay_chunk: int | None = None,
    ) -> None:
        """``book``: the (empty) book to keep, e.g. a subclass that records each change.
        ``replay_chunk``: diffs applied per call when a snapshot is replayed (``None``: all)."""
        if market not in ("spot", "futures"):
            raise ValueError(f"market must be 'spot' or 'futures', not {market!r}")
        if max_buffered < 1:
            raise ValueError(f"max_buffered must be >= 1, not {max_buffered}")
        if replay_chunk is not None and replay_chunk < 1:
            raise ValueError(f"replay_chunk must be >= 1 or None, not {replay_chunk}")
        self.replay_chunk = replay_chunk
        self._replay_state = SyncState.BRIDGING
        """What the state is between two chunks of a replay (BRIDGING until the diff spanning
        the snapshot, then SYNCED)."""
        self._replay_synced = False
        self.market: Market = market
        self.spot = market == "spot"
        self.max_buffered = max_buffered
        self.book = book if book is not None else OrderBook()
        self.state = SyncState.IDLE
        self._buffer: deque[DepthDiff] = deque()
        self.buffered_levels = 0
        """Level rows (bids + asks) of the buffered diffs: what they hold in memory."""
        self.snapshot_id: int | None = None
        """``lastUpdateId`` of the snapshot the current book was built from."""
        self.awaiting_snapshot = False
        self._bridge_prev_u: int | None = None
        self._last_good: int | None = None
        self._gap_open = False
        self._overflowed = False
        self.syncs = 0
        self.applied = 0
        self.already_in_snapshot = 0
        self.overflow_dropped = 0
        self.stale_snapshots = 0
        self.ignored_duplicates = 0
        self._dup_run = 0
        """Diffs in a row at or below the synced book's id (see :data:`DUPLICATE_RUN`)."""
        self._dup_since = -1
        self._reset_from: int | None = None
        """After :meth:`restart`: the last id of the old id space (a snapshot at or above it is
        from before the restart)."""
        self._reset_ts: int | None = None
        """After :meth:`restart`: the venue time it was seen at (an older snapshot is stale)."""
        """``applied`` when that run began (a diff applied since starts a new run)."""
        self.ignored_snapshots = 0
        self.shed_dropped = 0
        """Buffered diffs dropped by :meth:`shed` (the manager's memory bound)."""

    # -- reading --------------------------------------------------------------------------

    @property
    def is_synced(self) -> bool:
        """True when the book is exact (hooks may read it)."""
        return self.state is SyncState.SYNCED

    @property
    def last_update_id(self) -> int | None:
        """The id the book is at (``None`` when no snapshot is loaded)."""
        return self.book.last_update_id

    @property
    def buffered(self) -> int:
        """Diffs waiting for a snapshot."""
        return len(self._buffer)

    # -- feeding ----------------------------------------------------------------------------

    def on_diff(self, diff: DepthDiff) -> SyncResult:
        """Feed one diff (in arrival order). Returns :data:`APPLIED` on the common path."""
        state = self.state
        if state is SyncState.SYNCED:
            return self._apply_synced(diff)
        if state is SyncState.BRIDGING:
            return self._bridge(diff)
        if state is SyncState.IDLE:
            self.state = SyncState.BUFFERING
            self._buffer.append(diff)
            self.buffered_levels += len(diff.bids) + len(diff.asks)
            self.awaiting_snapshot = True
            return _NEED_URGENT if self._gap_open else _NEED_FIRST
        # BUFFERING, or REPLAYING: a new diff waits behind the ones being replayed.
        return self._buffer_diff(diff)

    def on_snapshot(self, snap: DepthSnapshot, after_each: Callable[[], None] | None = None) -> SyncResult:
        """Feed a REST snapshot. Ignored when the book is synced (e.g. periodic polling).

        ``after_each`` is called after each buffered diff applied on top of the snapshot, while the
        book is exactly the state that diff describes (the manager's bookTicker audit needs every
        intermediate state, not just the last). It must not change this object's state.
        """
        state = self.state
        if state is SyncState.SYNCED or state is SyncState.REPLAYING:
            # Synced (periodic polling), or a replay under way finishes with its own snapshot.
            self.ignored_snapshots += 1
            return NOTHING
        big_l = snap.last_update_id
        if self._reset_from is not None or self._reset_ts is not None:
            at = snap.transaction_ts if snap.transaction_ts is not None else snap.exchange_ts
            if at is not None and self._reset_ts is not None:
                stale = at < self._reset_ts  # the venue's clock says it all
            else:
                # Without a stamp, ids tell, until the new ones pass the old last id (then a
                # snapshot of the old space is older than the buffer: the usual checks refuse it).
                floor = self._reset_from
                newest = self._buffer[-1].final_update_id if self._buffer else None
                stale = floor is not None and big_l >= floor and (newest is None or newest < floor)
            if stale:
                # Fetched before the ids restarted: it would "contain" every new diff.
                self.ignored_snapshots += 1
                self.awaiting_snapshot = True
                return _NEED_URGENT
            self._reset_from = self._reset_ts = None
        self.awaiting_snapshot = False
        if state is SyncState.BRIDGING:
            # A second answer to an earlier request: keep whichever snapshot is newer.
            if self.snapshot_id is not None and big_l <= self.snapshot_id:
                self.ignored_snapshots += 1
                return NOTHING
            self._load(snap)
            return NOTHING
        buf = self._buffer
        if not buf:
            # Snapshot before any diff (IDLE, or the buffer was cleared): hold it and let the
            # first diff prove it spans (see _bridge).
            self._load(snap)
            return NOTHING
        first = buf[0]
        too_old = first.first_update_id > (big_l + 1 if self.spot else big_l)
        if too_old:
            self.stale_snapshots += 1
            self.awaiting_snapshot = True
            self.state = SyncState.BUFFERING
            self._gap_open = True
            return SyncResult(
                need_snapshot=True,
                urgent=True,
                gap=GapInfo(
                    GapKind.STALE_SNAPSHOT,
                    f"snapshot lastUpdateId {big_l} is older than the first buffered diff "
                    f"(U={first.first_update_id})",
                    self._last_good,
                    final_update_id=big_l,
                ),
            )
        self._load(snap)
        self._replay_state = SyncState.BRIDGING
        self._replay_synced = False
        return self._replay(after_each)

    def continue_replay(self, after_each: Callable[[], None] | None = None) -> SyncResult:
        """Apply the next chunk of a replay (``REPLAYING``); :data:`NOTHING` in any other state.

        ``after_each`` as for :meth:`on_snapshot`. ``result.more`` says whether to call again.
        """
        if self.state is not SyncState.REPLAYING:
            return NOTHING
        self.state = self._replay_state
        return self._replay(after_each)

    def resync(self, kind: GapKind, reason: str, *, stream_alive: bool) -> SyncResult:
        """Discard the book on the caller's request (disconnect, audit mismatch, ban …).

        ``stream_alive``: the diffs keep flowing (audit mismatch), so a snapshot is requested
        now and new diffs are buffered. Otherwise (the connection dropped) everything buffered is
        dropped and the book goes IDLE: the first diff of the new connection asks for the
        snapshot, so it is not fetched before the stream it must bridge exists.
        """
        last = self._last_good
        self._discard()
        self._gap_open = True
        gap = GapInfo(kind, reason, last)
        if stream_alive:
            self.state = SyncState.BUFFERING
            self.awaiting_snapshot = True
            return SyncResult(need_snapshot=True, urgent=True, gap=gap)
        self._buffer.clear()
        self.buffered_levels = 0
        self.state = SyncState.IDLE
        self.awaiting_snapshot = False
        return SyncResult(gap=gap)

    def restart(self, kind: GapKind, reason: str, since: int | None = None) -> SyncResult:
        """The stream's ids restarted (``id_reset``, seen at venue time ``since``): the book and
        every buffered diff belong to the old id space and are dropped; the diffs that come next
        are buffered for a snapshot requested now (``need_snapshot``, urgent). A snapshot from
        before the restart (one in flight then: stamped before ``since``, or without a stamp at
        or above the old last id) is refused and asked for again. :data:`NOTHING` when the book is idle (its
        first diff asks for the snapshot)."""
        if self.state is SyncState.IDLE and not self._buffer:
            return NOTHING
        last = self._last_good
        self._reset_from, self._reset_ts = last, since
        self._start_over()
        return SyncResult(need_snapshot=True, urgent=True, gap=GapInfo(kind, reason, last))

    def shed(self, reason: str) -> SyncResult:
        """Drop the buffer (and the book, if one is being built) to free memory, and start the
        sync again. A buffering book keeps the snapshot it already asked for (it bridges from the
        diffs that come next); one that had its snapshot (bridging, replaying) needs a new one
        (``need_snapshot``). Returns the ``memory_bound`` gap."""
        need = self.state is not SyncState.BUFFERING
        last = self._last_good
        self.shed_dropped += len(self._buffer)
        self._start_over()
        return SyncResult(need_snapshot=need, urgent=True, gap=GapInfo(GapKind.MEMORY_BOUND, reason, last))

    # -- internals --------------------------------------------------------------------------

    def _start_over(self) -> None:
        """Drop the book and every buffered diff; buffer again, a gap open, waiting for a snapshot."""
        self._discard()
        self._buffer.clear()
        self.buffered_levels = 0
        self.state = SyncState.BUFFERING
        self.awaiting_snapshot = True
        self._gap_open = True
        self._overflowed = False

    def _apply_synced(self, diff: DepthDiff) -> SyncResult:
        book = self.book
        prev = book.last_update_id
        assert prev is not None
        u = diff.final_update_id
        # Spot ids are contiguous per symbol; futures ids are global, so only ``pu`` links events.
        ok = (diff.first_update_id == prev + 1) if self.spot else (diff.prev_final_update_id == prev)
        if not ok:
            if u <= prev:
                self.ignored_duplicates += 1
                if self._dup_since != self.applied:
                    self._dup_since, self._dup_run = self.applied, 0
                self._dup_run += 1
                if self._dup_run <= DUPLICATE_RUN:
                    return NOTHING
                self._dup_since = -1
                return self._break(
                    diff,
                    GapKind.DESYNC,
                    f"{DUPLICATE_RUN + 1} diffs in a row at or below the book's u={prev} (last U="
                    f"{diff.first_update_id} u={u}): its ids went back",
                )
            rule = "U == prev_u + 1" if self.spot else "pu == prev_u"
            return self._break(
                diff,
                GapKind.DESYNC,
                f"sequence break: expected {rule} with prev_u={prev}, got U={diff.first_update_id} "
                f"u={u} pu={diff.prev_final_update_id}",
            )
        book.apply(diff.bids, diff.asks, u)
        self.applied += 1
        if book.crossed():
            return self._crossed(diff)
        self._last_good = u
        return APPLIED

    def _bridge(self, diff: DepthDiff) -> SyncResult:
        """First diff after a snapshot: drop it if contained, apply it if it spans, else reject."""
        big_l = self.snapshot_id
        assert big_l is not None
        u = diff.final_update_id
        if (u <= big_l) if self.spot else (u < big_l):
            self.already_in_snapshot += 1
            self._bridge_prev_u = u
            return SyncResult(already_in_snapshot=1)
        if diff.first_update_id <= (big_l + 1 if self.spot else big_l):
            self.book.apply(diff.bids, diff.asks, u)
            self.applied += 1
            if self.book.crossed():
                return self._crossed(diff)
            self._last_good = u
            self.state = SyncState.SYNCED
            self.syncs += 1
            self._gap_open = False
            self._overflowed = False
            self._bridge_prev_u = None
            return SyncResult(applied=1, synced=True)
        prev_u = self._bridge_prev_u
        if prev_u is None:
            kind, reason = (
                GapKind.STALE_SNAPSHOT,
                f"snapshot lastUpdateId {big_l} is older than the stream (first diff U="
                f"{diff.first_update_id})",
            )
            self.stale_snapshots += 1
        else:
            kind, reason = (
                GapKind.DESYNC,
                f"diffs skip the snapshot: after u={prev_u} (contained in lastUpdateId {big_l}) "
                f"came U={diff.first_update_id} u={u} pu={diff.prev_final_update_id}",
            )
        return self._break(diff, kind, reason)

    def _buffer_diff(self, diff: DepthDiff) -> SyncResult:
        buf = self._buffer
        buf.append(diff)
        self.buffered_levels += len(diff.bids) + len(diff.asks)
        if len(buf) <= self.max_buffered:
            return NOTHING
        old = buf.popleft()
        self.buffered_levels -= len(old.bids) + len(old.asks)
        self.overflow_dropped += 1
        if self._overflowed:
            return NOTHING
        # Reported once per buffering episode; the snapshot must now be newer than buf[0].
        self._overflowed = True
        self._gap_open = True
        return SyncResult(
            gap=GapInfo(
                GapKind.BUFFER_OVERFLOW,
                f"more than {self.max_buffered} diffs buffered while waiting for a snapshot; "
                "dropping the oldest",
                self._last_good,
                first_update_id=buf[0].first_update_id,
            )
        )

    def _replay(self, after_each: Callable[[], None] | None = None) -> SyncResult:
        """Feed the buffered diffs to a freshly loaded snapshot (at most ``replay_chunk`` of them:
        then the state is REPLAYING and ``more`` is set)."""
        buf = self._buffer
        applied = contained = 0
        synced = False
        left = self.replay_chunk if self.replay_chunk is not None else len(buf)
        while buf:
            if left <= 0:
                self._replay_state = self.state
                self._replay_synced = self._replay_synced or synced
                self.state = SyncState.REPLAYING
                return SyncResult(applied=applied, already_in_snapshot=contained, more=True)
            left -= 1
            diff = buf.popleft()
            self.buffered_levels -= len(diff.bids) + len(diff.asks)
            res = self._bridge(diff) if self.state is SyncState.BRIDGING else self._apply_synced(diff)
            if after_each is not None and res.applied and self.state is SyncState.SYNCED:
                after_each()
            applied += res.applied
            contained += res.already_in_snapshot
            synced = synced or res.synced
            if res.gap is not None:
                # The book was discarded part-way: what is left of the buffer stays buffered
                # (the offending diff was already put back in front by _break).
                self._replay_synced = False
                return SyncResult(
                    applied=applied,
                    need_snapshot=res.need_snapshot,
                    urgent=True,
                    gap=res.gap,
                    already_in_snapshot=contained,
                )
        # Synced is reported once, when the whole buffer is in (the book is exact only then).
        synced = synced or self._replay_synced
        self._replay_synced = False
        return SyncResult(applied=applied, synced=synced, already_in_snapshot=contained)

    def _load(self, snap: DepthSnapshot) -> None:
        self.book.load_snapshot(snap.bids, snap.asks, snap.last_update_id)
        self.snapshot_id = snap.last_update_id
        self._bridge_prev_u = None
        self.state = SyncState.BRIDGING

    def _discard(self) -> None:
        self.book.clear()
        self.snapshot_id = None
        self._bridge_prev_u = None

    def _break(self, diff: DepthDiff, kind: GapKind, reason: str) -> SyncResult:
        """Discard the book; ``diff`` (newer than anything applied) heads the new buffer."""
        last = self._last_good
        self._discard()
        self._buffer.appendleft(diff)
        self.buffered_levels += len(diff.bids) + len(diff.asks)
        self.state = SyncState.BUFFERING
        self.awaiting_snapshot = True
        self._gap_open = True
        self._overflowed = False
        return SyncResult(
            need_snapshot=True,
            urgent=True,
            gap=GapInfo(
                kind,
                reason,
                last,
                diff.first_update_id,
                diff.final_update_id,
                diff.prev_final_update_id,
            ),
        )

    def _crossed(self, diff: DepthDiff) -> SyncResult:
        """The diff was applied and crossed the book: discard it, buffer from the next diff."""
        bid, ask = self.book.best_bid(), self.book.best_ask()
        self._discard()
        self.state = SyncState.BUFFERING
        self.awaiting_snapshot = True
        self._gap_open = True
        self._overflowed = False
        return SyncResult(
            applied=1,
            need_snapshot=True,
            urgent=True,
            gap=GapInfo(
                GapKind.CROSSED,
                f"book crossed after applying U={diff.first_update_id} u={diff.final_update_id}: "
                f"best bid {bid} >= best ask {ask}",
                self._last_good,
                diff.first_update_id,
                diff.final_update_id,
                diff.prev_final_update_id,
            ),
        )
