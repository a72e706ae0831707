"""REST depth snapshots: a coalescing queue of symbols, fetched through the host's budget.

Books ask for a snapshot with :meth:`SnapshotProducer.request` (non-blocking). A symbol is
queued at most once — asking again while it waits is a no-op, or moves it ahead when the new
request is urgent, and asking while its fetch is in flight joins that fetch (weight is spent
once) — so the queue is bounded by the number of contracts by construction. Urgent
requests (a book out of sync) go first, and also carry a higher priority into the weight
budget. A few workers fetch concurrently, but the budget sets the pace: at USDⓈ-M's 2400 x
0.5 weight/min, 1000-level snapshots (weight 20) go out one per second.

A failed fetch never ends the run: it is counted, logged once per failure episode, and the
symbol is tried again after a capped, jittered backoff (a request for it meanwhile joins the
scheduled retry instead of bypassing the backoff). During a 418 ban or a 429 pause workers wait
for the host instead of failing symbol after symbol.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ingestd.backoff import Backoff
from ingestd.errors import BannedError, ConfigError, IngestError, RateLimitedError
from ingestd.producers.events import Emit
from ingestd.producers.inflight import EmitGuard, run_workers
from ingestd.producers.rest import RestClient
from ingestd.records import AnyRecord, RawFrame
from ingestd.venues.binance.endpoints import VenueSpec
from ingestd.venues.binance.parse import parse_depth_snapshot
from ingestd.venues.binance.symbols import ContractSet

log = logging.getLogger("ingestd.snapshots")

URGENT_PRIORITY = 10
"""Budget priority of an urgent snapshot (a book out of sync); routine ones use 0."""


def validate_limit(venue: VenueSpec, limit: int | None) -> int:
    """The depth limit to use: ``limit`` or the venue default; :class:`ConfigError` if invalid."""
    if limit is None:
        return venue.default_depth_limit
    if limit not in venue.depth_limits:
        lims = venue.depth_limits
        contiguous = list(lims) == list(range(lims[0], lims[-1] + 1))
        allowed = f"{lims[0]}..{lims[-1]}" if contiguous else ", ".join(map(str, lims))
        raise ConfigError(
            f"snapshots.limit: {limit} is not a depth limit of {venue.name} (allowed: {allowed})",
            key="snapshots.limit",
        )
    return limit


class SnapshotProducer:
    """Fetches ``/depth`` snapshots for requested symbols and emits them as ``DepthSnapshot``.

    With ``raw`` the exact body is emitted first, as a :class:`RawFrame` whose ``source`` is
    ``<depth path>?symbol=X&limit=L``. ``poll_interval_s`` > 0 also requests every contract at
    that interval.
    """

    def __init__(
        self,
        client: RestClient,
        venue: VenueSpec,
        contracts: ContractSet,
        emit: Emit,
        *,
        limit: int | None,
        poll_interval_s: float = 0.0,
        raw: bool = False,
        concurrency: int = 2,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
        on_ban: Callable[[str, float], None] | None = None,
    ) -> None:
        if not 1 <= concurrency <= 8:
            raise ValueError(f"concurrency must be 1..8, got {concurrency}")
        if poll_interval_s < 0:
            raise ConfigError(
                f"snapshots.poll_interval_s: {poll_interval_s} < 0", key="snapshots.poll_interval_s"
            )
        self.client = client
        self.venue = venue
        self.contracts = contracts
        self.limit = validate_limit(venue, limit)
        self.weight = venue.depth_weight(self.limit)
        self.poll_interval_s = poll_interval_s
        self.raw = raw
        self.concurrency = concurrency
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._guard = EmitGuard(emit)
        self._on_ban = on_ban
        """Told ``(native, ban_end_epoch_s)`` when a fetch meets a 418 ban (for the gap log)."""
        self._ban_told: dict[str, float] = {}
        # Insertion-ordered sets: FIFO within each class, each symbol in at most one of them.
        self._urgent: dict[str, None] = {}
        self._normal: dict[str, None] = {}
        self._ready = asyncio.Event()
        self._in_flight: set[str] = set()
        self._retry_timers: dict[str, asyncio.TimerHandle] = {}
        self._retry_urgent: set[str] = set()
        self._backoffs: dict[str, Backoff] = {}
        """Per-symbol retry pacing while its fetches fail; dropped on success."""
        self._failing: set[str] = set()
        """Symbols whose last fetch failed. An episode runs from the first failure until no
        symbol is failing: one warning when it starts, one line when it ends."""
        self._episode_failures = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.requested = 0
        self.coalesced = 0
        self.fetched = 0
        self.failed = 0
        self.emitted = 0
        self.cancelled = 0
        self.last_latency_s: float | None = None
        self.last_error: str | None = None

    # -- requests ---------------------------------------------------------------------------------

    def request(self, native: str, *, urgent: bool = False) -> None:
        """Queue a snapshot of ``native`` (non-blocking). Already pending → no second entry;
        ``urgent`` moves a pending one ahead. ``native`` must be one of the run's contracts."""
        if native not in self.contracts:
            raise ValueError(f"snapshot requested for {native!r}, not a contract of this run")
        if self._closed:
            return
        self.requested += 1
        self._enqueue(native, urgent)

    def set_contracts(self, contracts: ContractSet) -> list[str]:
        """The run's contracts changed (listings): requests are admitted for ``contracts`` from
        now on, and every request of a contract that left is cancelled — queued, waiting for a
        retry, or in flight (its answer is not emitted). Returns the natives whose request was
        cancelled."""
        gone = [c.native for c in self.contracts if c.native not in contracts]
        self.contracts = contracts
        cancelled: list[str] = []
        for native in gone:
            timer = self._retry_timers.pop(native, None)
            if timer is not None:
                timer.cancel()
            waiting = native in self._urgent or native in self._normal or native in self._in_flight
            if timer is not None or waiting:
                cancelled.append(native)
            self._urgent.pop(native, None)
            self._normal.pop(native, None)
            self._retry_urgent.discard(native)
            self._backoffs.pop(native, None)
            self._ban_told.pop(native, None)
            self._failing.discard(native)
        if gone and not self._failing:
            self._episode_failures = 0  # a failure episode of a contract that left ends with it
        self.cancelled += len(cancelled)
        return cancelled

    def _enqueue(self, native: str, urgent: bool) -> None:
        if native in self._in_flight:
            # Its fetch is under way: that answer serves this request too, and the weight is
            # spent once. (A book that finds the answer stale asks again once it has it: by
            # then the fetch is over, see _fetch, and the request is a new one.)
            self.coalesced += 1
            return
        if native in self._retry_timers:
            # A retry is already scheduled; joining it keeps the backoff honest.
            self.coalesced += 1
            if urgent:
                self._retry_urgent.add(native)
            return
        if native in self._urgent:
            self.coalesced += 1
            return
        if native in self._normal:
            self.coalesced += 1
            if not urgent:
                return
            del self._normal[native]
        (self._urgent if urgent else self._normal)[native] = None
        self._ready.set()

    @property
    def pending(self) -> int:
        """Symbols queued or waiting for a retry (not counting fetches in flight)."""
        return len(self._urgent) + len(self._normal) + len(self._retry_timers)

    async def _next(self) -> tuple[str, bool]:
        while not (self._urgent or self._normal):
            self._ready.clear()
            await self._ready.wait()
        if self._urgent:
            native = next(iter(self._urgent))
            del self._urgent[native]
            return native, True
        native = next(iter(self._normal))
        del self._normal[native]
        return native, False

    def _requeue_front(self, native: str, urgent: bool) -> None:
        """Put a symbol back at the head of its class (its fetch was stopped by the host)."""
        if native not in self.contracts:
            return  # cancelled while in flight
        queue = self._urgent if urgent else self._normal
        if native in self._urgent or native in self._normal or native in self._retry_timers:
            return
        rest = dict(queue)
        queue.clear()
        queue[native] = None
        queue.update(rest)
        self._ready.set()

    def _schedule_retry(self, native: str, urgent: bool) -> float:
        if native not in self.contracts:
            return 0.0  # cancelled while in flight
        backoff = self._backoffs.get(native)
        if backoff is None:
            backoff = self._backoffs[native] = Backoff(self.retry_initial_s, self.retry_max_s, 2.0)
        delay = backoff.next_delay()
        if urgent:
            self._retry_urgent.add(native)
        self._retry_timers[native] = asyncio.get_running_loop().call_later(delay, self._retry_due, native)
        return delay

    def _retry_due(self, native: str) -> None:
        self._retry_timers.pop(native, None)
        urgent = native in self._retry_urgent
        self._retry_urgent.discard(native)
        if not self._closed:
            self._enqueue(native, urgent)

    # -- fetching ----------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            native, urgent = await self._next()
            self._in_flight.add(native)
            try:
                await self._fetch(native, urgent)
            finally:
                self._in_flight.discard(native)

    async def _fetch(self, native: str, urgent: bool) -> None:
        contract = self.contracts.get(native)
        assert contract is not None  # request() admits contracts only
        path = self.venue.depth_path
        try:
            resp = await self.client.get(
                path,
                {"symbol": native, "limit": self.limit},
                weight=self.weight,
                priority=URGENT_PRIORITY if urgent else 0,
            )
            snapshot = parse_depth_snapshot(self.venue.name, contract, resp.body, resp.recv_ts)
        except BannedError as exc:
            # The whole host is closed: wait for the ban to end instead of burning retries.
            self._note_failure(native, exc)
            self._requeue_front(native, urgent)
            # Told once per symbol and ban: a second worker that picks the symbol up meets the
            # same ban locally and must not write a second gap record for it.
            if self._on_ban is not None and self._ban_told.get(native) != exc.until:
                self._ban_told[native] = exc.until
                self._on_ban(native, exc.until)
            await asyncio.sleep(max(0.0, exc.until - time.time()))
            return
        except RateLimitedError as exc:
            self._note_failure(native, exc)
            self._requeue_front(native, urgent)
            await asyncio.sleep(exc.retry_after or 1.0)
            return
        except (IngestError, ValueError) as exc:
            self._note_failure(native, exc)
            delay = self._schedule_retry(native, urgent)
            log.debug("snapshot %s failed (%s), retry in %.1f s", native, exc, delay)
            return
        # The answer is in: from here a request for this symbol is a new one (the book may ask
        # again inside the emit below, finding the snapshot stale), not a join of this fetch.
        self._in_flight.discard(native)
        self.fetched += 1
        self.last_latency_s = resp.elapsed_s
        if native not in self.contracts:
            # Cancelled while in flight (the contract stopped trading): no book waits for it.
            return
        self._backoffs.pop(native, None)
        if native in self._failing:
            self._failing.discard(native)
            if not self._failing:
                log.info("snapshots recovered after %d failed fetch(es)", self._episode_failures)
                self._episode_failures = 0
        batch: list[AnyRecord] = []
        if self.raw:
            source = f"{path}?symbol={native}&limit={self.limit}"
            batch.append(RawFrame(venue=self.venue.name, source=source, recv_ts=resp.recv_ts, data=resp.body))
        batch.append(snapshot)
        if await self._guard.emit(batch):
            self.emitted += 1

    def _note_failure(self, native: str, exc: Exception) -> None:
        self.failed += 1
        self.last_error = f"{native}: {exc}"
        if not self._failing:
            log.warning("snapshot fetch failing (%s: %s); retrying with backoff", native, exc)
        self._failing.add(native)
        self._episode_failures += 1

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            for c in self.contracts:
                self.request(c.native)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Fetch until :meth:`close`. Returns normally when closed; raises only on a bug."""
        if self._closed or self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"snapshots#{i}") for i in range(self.concurrency)
        ]
        if self.poll_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._poll(), name="snapshots.poll"))
        await run_workers(self._tasks)

    async def close(self) -> None:
        """Stop fetching; drop the queue and scheduled retries. Idempotent; no task left.

        A snapshot already handed to ``emit`` (applied to its book, given to some consumers) is
        finished first; fetches still waiting for the venue are cancelled. The caller bounds the
        wait with its shutdown deadline (see :class:`~ingestd.producers.inflight.EmitGuard`).
        """
        self._closed = True
        for h in self._retry_timers.values():
            h.cancel()
        self._retry_timers.clear()
        self._urgent.clear()
        self._normal.clear()
        await self._guard.stop(self._tasks)

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and the status line."""
        return {
            "requested": self.requested,
            "coalesced": self.coalesced,
            "fetched": self.fetched,
            "failed": self.failed,
            "emitted": self.emitted,
            "cancelled": self.cancelled,
            "pending": self.pending,
            "urgent_pending": len(self._urgent),
            "in_flight": len(self._in_flight),
            "last_latency_s": None if self.last_latency_s is None else round(self.last_latency_s, 4),
            "last_error": self.last_error,
            "limit": self.limit,
            "weight": self.weight,
        }
