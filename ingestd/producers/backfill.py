"""Trade backfill: holes in a trade stream, found by id and filled from REST history.

Binance numbers aggregated trades (and trades) contiguously per symbol, so whatever the stream
missed while a socket was down, a rotation switched without proven overlap, or the daemon was
not running, is a range of ids that ``aggTrades`` (``historicalTrades``) still serves
(:mod:`ingestd.venues.binance.history`). :class:`Backfiller` does three things:

* **find holes** (:meth:`Backfiller.observe`, on every batch the producers emit, before the bus):
  it keeps the last stream record per ``(channel, symbol)``; a record whose id jumps past
  ``last + 1`` opens a hole. On a restart that appends to an existing data dir the last stored
  id (:mod:`ingestd.producers.stored`) stands in for the last record seen; a contract listed
  during the run (:meth:`Backfiller.listed`) has a hole from its first trade on;
* **write the gap log**: a ``trade_gap`` record per hole (ids, count, the receive times either
  side), then ``backfill`` (count stored) and/or ``unfilled`` (count and why) — see
  :mod:`ingestd.book.records`;
* **fill** with ``fromId`` paging through the shared :class:`~ingestd.producers.rest.RestClient`:
  the host's weight budget, below depth snapshots in priority. Failures (429, 418, 5xx, time-outs,
  bad bodies) wait and retry on the worker's own task, so live intake never waits for them;
  the rows go to the same channel with ``source="rest"``.

A hole older than ``max_age_s`` (venue time from the record before it to the record after it,
plus the time it has waited here) is not fetched: it is logged and written as ``unfilled``.
Trades are backfilled only when ``INGESTD_API_KEY`` is set; without it each trade hole is
written as ``unfilled`` and one line says why. Logs record episodes (backfilling started, caught
up with totals), never one line per hole or request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field

from ingestd.backoff import Backoff
from ingestd.book.records import Gap, GapKind
from ingestd.errors import BannedError, IngestError, ParseError, RateLimitedError, RestError
from ingestd.producers.events import Emit
from ingestd.producers.inflight import EmitGuard, run_workers
from ingestd.producers.rest import RestClient
from ingestd.producers.stored import StoredTail, stored_tails
from ingestd.records import AggTrade, AnyRecord, Record, Trade
from ingestd.venues.binance.history import (
    ENDPOINTS,
    HistoryEndpoint,
    parse_agg_trades,
    parse_historical_trades,
    record_id,
)
from ingestd.venues.binance.symbols import Contract, ContractSet

log = logging.getLogger("ingestd.backfill")

BACKFILL_PRIORITY: Final = -1
"""Budget priority of a backfill request: after depth snapshots (0 routine, 10 urgent)."""
MAX_PENDING: Final = 10_000
"""Holes waiting at once; past this a new hole is written ``unfilled`` (policy: reject newest)."""
WORKERS: Final = 2
API_KEY_HEADER: Final = "X-MBX-APIKEY"
_NS: Final = 1_000_000_000


class BackfillSettings(BaseModel):
    """Filling holes in the trade channels from REST history."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    enabled: bool = True
    max_age_s: Annotated[float, Field(gt=0)] = 3600.0
    """Holes older than this (venue time) are only logged (``unfilled``), never fetched."""
    retry_initial_s: Annotated[float, Field(gt=0)] = 1.0
    retry_max_s: Annotated[float, Field(gt=0)] = 60.0
    """Capped, jittered backoff between failed requests of one hole."""


@dataclass(slots=True)
class Hole:
    """Ids ``first..last`` of ``native``'s ``channel`` that the stream did not deliver."""

    channel: str
    native: str
    first: int | None
    """``None``: a new listing; the start is found by paging back from ``last``."""
    last: int
    before_id: int | None
    before_ts: int | None
    """Venue time (``transaction_ts``, ns) of the record before the hole."""
    after_ts: int | None
    """Venue time of the record after it."""
    started_ts: int
    """Receive time of the record before the hole (gap log ``started_ts``)."""
    ended_ts: int
    """Receive time of the record after it (gap log ``ended_ts``)."""
    detected: float
    """Monotonic time the hole was found."""
    why: str

    @property
    def size(self) -> int:
        return 0 if self.first is None else self.last - self.first + 1


def _venue_ts(r: Record) -> int | None:
    return r.transaction_ts if r.transaction_ts is not None else r.exchange_ts


class Backfiller:
    """Finds and fills holes of the ``channels`` (``agg_trade``, ``trade``) of ``contracts``.

    ``emit`` receives the REST rows and gap records (the daemon's emit: they are stored like any
    batch). ``api_key`` enables trade backfill (``historicalTrades``).
    """

    def __init__(  # noqa: PLR0917 - positional order is the daemon's call (app.py)
        self,
        client: RestClient,
        venue: str,
        contracts: ContractSet,
        emit: Emit,
        settings: BackfillSettings,
        channels: Iterable[str],
        *,
        api_key: str | None = None,
    ) -> None:
        self.client = client
        self.venue = venue
        self.settings = settings
        self.channels = frozenset(c for c in channels if c in ("agg_trade", "trade"))
        self._contracts: dict[str, Contract] = dict(contracts.by_native())
        self._guard = EmitGuard(emit)
        """close() lets a batch inside ``emit`` finish and starts none after it."""
        self._headers = {API_KEY_HEADER: api_key} if api_key else None
        self._max_age_ns = int(settings.max_age_s * _NS)
        self._last_agg: dict[str, AggTrade] = {}
        self._last_trade: dict[str, Trade] = {}
        self._restored: dict[tuple[str, str], StoredTail] = {}
        self._listed: set[str] = set()
        self._data_dir: Path | None = None
        """The data dir read at start-up (:meth:`resume_from_storage`), read again for listings."""
        self._queue: deque[Hole] = deque()
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._active = 0
        self._told_no_key: set[str] = set()
        self._full_told = False
        self._episode: dict[str, int] | None = None
        """Totals of the current backfill episode (``None``: caught up)."""
        self.holes = 0
        self.filled_holes = 0
        self.rows = 0
        self.unfilled_holes = 0
        self.unfilled_ids = 0
        self.requests = 0
        self.failures = 0
        self.last_error: str | None = None

    # -- what the stream delivers (hot path) ----------------------------------------------------

    def observe(self, batch: Sequence[AnyRecord]) -> list[Record] | None:
        """Look at one batch before it is published; returns gap records to publish with it.

        Only stream records count (``source="ws"``): the rows this class fetched come back through
        ``emit`` and are passed over.
        """
        out: list[Record] | None = None
        agg, trd = self._last_agg, self._last_trade
        for r in batch:
            cls = type(r)
            if cls is AggTrade:
                a: Any = r
                if a.source != "ws":
                    continue
                prev: Any = agg.get(a.native)
                if prev is not None and a.agg_id <= prev.agg_id + 1:
                    if a.agg_id > prev.agg_id:
                        agg[a.native] = a
                    # At or below the last id: a late copy, never a reason to move back (the next
                    # record would look like a hole over ids already stored). Ids that really
                    # restart lower come after an id_reset gap, which forgets the old sequence.
                    continue
                agg[a.native] = a
                gaps = self._jump("agg_trade", a, a.agg_id, prev, None if prev is None else prev.agg_id)
            elif cls is Trade:
                t: Any = r
                if t.source != "ws" or "trade" not in self.channels:
                    continue
                prev = trd.get(t.native)
                if prev is not None and t.trade_id <= prev.trade_id + 1:
                    if t.trade_id > prev.trade_id:
                        trd[t.native] = t
                    continue
                trd[t.native] = t
                gaps = self._jump("trade", t, t.trade_id, prev, None if prev is None else prev.trade_id)
            elif cls is Gap:
                g: Any = r
                if g.kind == GapKind.ID_RESET.value:
                    # A new sequence starts at the next record of this channel: it is not a hole.
                    if g.data_channel == "agg_trade":
                        agg.pop(g.native, None)
                    elif g.data_channel == "trade":
                        trd.pop(g.native, None)
                continue
            else:
                continue
            if gaps:
                out = gaps if out is None else [*out, *gaps]
        return out

    def _jump(self, channel: str, r: Record, rid: int, prev: Record | None, pid: int | None) -> list[Record]:
        """A record that does not follow the last one: a hole, or the first record of a symbol."""
        if channel not in self.channels:
            return []
        now = time.monotonic()
        if prev is not None and pid is not None:
            hole = Hole(channel, r.native, pid + 1, rid - 1, pid, _venue_ts(prev), _venue_ts(r),
                        prev.recv_ts, r.recv_ts, now, "the stream skipped them")  # fmt: skip
            return self._open(hole)
        out: list[Record] = []
        tail = self._restored.pop((channel, r.native), None)
        if tail is not None:
            self._listed.discard(r.native)  # a listing with stored trades: goes on from them
            for h in tail.holes:
                stored = Hole(channel, r.native, h.first, h.last, h.first - 1, h.before_ts, _venue_ts(r),
                              h.before_recv, h.after_recv, now, "missing in storage")  # fmt: skip
                out += self._open(stored)
            if rid > tail.last_id + 1:
                after = Hole(channel, r.native, tail.last_id + 1, rid - 1, tail.last_id, tail.last_ts,
                             _venue_ts(r), tail.last_recv, r.recv_ts, now,
                             "since the last run stored")  # fmt: skip
                out += self._open(after)
        elif r.native in self._listed:
            self._listed.discard(r.native)
            if rid > 0:
                listing = Hole(channel, r.native, None, rid - 1, None, None, _venue_ts(r), r.recv_ts,
                               r.recv_ts, now, "listed during the run")  # fmt: skip
                out += self._open(listing, log_now=False)
        return out

    # -- holes ----------------------------------------------------------------------------------

    def _age_ns(self, hole: Hole) -> int:
        """How old the hole's start is, on the venue's clock, now."""
        waited = int((time.monotonic() - hole.detected) * _NS)
        if hole.before_ts is not None and hole.after_ts is not None:
            return max(0, hole.after_ts - hole.before_ts) + waited
        return max(0, hole.ended_ts - hole.started_ts) + waited

    def _open(self, hole: Hole, *, log_now: bool = True) -> list[Record]:
        """Write a hole's ``trade_gap`` and queue it (or write it ``unfilled`` at once)."""
        self.holes += 1
        out: list[Record] = (
            [] if hole.first is None else [self._gap(hole, GapKind.TRADE_GAP, hole.why, hole.size)]
        )
        ep = ENDPOINTS.get((self.venue, hole.channel))
        why: str | None = None
        if ep is None or (ep.needs_key and self._headers is None):
            why = "no API key (INGESTD_API_KEY): trades cannot be backfilled"
            if hole.channel not in self._told_no_key:
                self._told_no_key.add(hole.channel)
                log.warning(
                    "%s %s has a hole of %s ids; %s %s cannot be backfilled without an API key "
                    "(set INGESTD_API_KEY): written to the gap log as unfilled",
                    hole.native, hole.channel, hole.size or "?", self.venue, hole.channel,
                )  # fmt: skip
        elif self._age_ns(hole) > self._max_age_ns:
            why = f"older than backfill.max_age_s ({self.settings.max_age_s:g} s)"
            log.warning("%s %s: hole of %d ids is %s: not fetched", hole.native, hole.channel, hole.size, why)
        elif len(self._queue) >= MAX_PENDING:
            why = f"backfill queue full ({MAX_PENDING} holes)"
            if not self._full_told:
                self._full_told = True
                log.warning("backfill queue full (%d holes): new holes are written unfilled", MAX_PENDING)
        if why is not None:
            if hole.first is not None:
                out.append(self._unfilled(hole, hole.size, why))
            return out
        self._queue.append(hole)
        self._ready.set()
        if self._episode is None:
            self._episode = {"holes": 0, "rows": 0, "unfilled": 0}
            if log_now:
                log.info("backfilling %s %s ids %s..%s (%s) from REST",
                         hole.native, hole.channel, hole.first, hole.last, hole.why)  # fmt: skip
        self._episode["holes"] += 1
        return out

    def _gap(self, hole: Hole, kind: GapKind, reason: str, count: int | None) -> Gap:
        c = self._contracts.get(hole.native)
        return Gap(
            venue=self.venue,
            symbol=c.symbol if c is not None else hole.native,
            native=hole.native,
            exchange_ts=None,
            recv_ts=time.time_ns(),
            kind=kind.value,
            reason=reason,
            last_update_id=hole.before_id,
            first_update_id=hole.first,
            final_update_id=hole.last,
            started_ts=hole.started_ts,
            ended_ts=hole.ended_ts,
            count=count,
            data_channel=hole.channel,
        )

    def _unfilled(self, hole: Hole, count: int, why: str) -> Gap:
        self.unfilled_holes += 1
        self.unfilled_ids += count
        if self._episode is not None:
            self._episode["unfilled"] += count
        return self._gap(hole, GapKind.UNFILLED, why, count)

    # -- what the daemon tells it ---------------------------------------------------------------

    def restore(self, tails: Iterable[StoredTail]) -> None:
        """The data dir's last stored records: the first stream record of each symbol is compared
        with them (a restart that appends), and the holes found in storage are queued then."""
        for t in tails:
            if t.channel in self.channels and t.native in self._contracts:
                self._restored[(t.channel, t.native)] = t

    async def resume_from_storage(self, data_dir: Path) -> None:
        """On an existing data dir, :meth:`restore` what it holds: the last stored ids of each
        symbol and the holes stored within ``max_age_s``, read from the Parquet footers off the
        event loop. A data dir that does not exist yet holds nothing."""
        self._data_dir = data_dir
        symbols = [(c.native, c.symbol) for c in self._contracts.values()]
        tails = await asyncio.to_thread(
            stored_tails, data_dir, self.venue, symbols, sorted(self.channels), self.settings.max_age_s
        )
        self.restore(tails)
        if tails:
            holes = sum(len(t.holes) for t in tails)
            log.info(
                "data dir holds trades of %d symbol(s)%s: the stream resumes from the last stored ids",
                len(tails),
                f" and {holes} hole(s) within backfill.max_age_s" if holes else "",
            )

    def listed(self, contract: Contract) -> None:
        """A contract that started trading during the run: its history before its first stream
        record (from its listing, within ``max_age_s``) is a hole. One that traded earlier in
        the run (a spot pair back from ``BREAK``) goes on from the last record the stream gave:
        only ids after it are missing (what was stored before must not be fetched again)."""
        self._contracts[contract.native] = contract
        if contract.native not in self._last_agg and contract.native not in self._last_trade:
            self._listed.add(contract.native)

    async def resume_listed(self, contracts: Sequence[Contract]) -> None:
        """Contracts just :meth:`listed` that the data dir holds trades of (stored by an earlier
        run): they resume from the stored tail like the contracts of the start-up, so only the ids
        after it are fetched and the holes stored within ``max_age_s`` are filled (not their
        whole history again). Footers only, off the event loop; nothing without a data dir."""
        if self._data_dir is None:
            return
        symbols = [(c.native, c.symbol) for c in contracts if c.native in self._listed]
        if not symbols:
            return
        tails = await asyncio.to_thread(
            stored_tails, self._data_dir, self.venue, symbols, sorted(self.channels), self.settings.max_age_s
        )
        self.restore(tails)
        for t in tails:
            log.info("%s %s: listed with trades stored up to id %d; the stream resumes from there",
                     t.native, t.channel, t.last_id)  # fmt: skip

    def retire(self, native: str) -> None:
        """A contract that stopped trading: no listing hole is opened for it any more; its queued
        holes are still filled (those trades happened while it was listed). Its last records
        are kept (one per channel) in case it trades again."""
        self._listed.discard(native)

    # -- filling --------------------------------------------------------------------------------

    async def _next(self) -> Hole:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    async def _worker(self) -> None:
        while True:
            hole = await self._next()
            self._active += 1
            try:
                await self._fill(hole)
            finally:
                self._active -= 1
            if not self._queue and not self._active and self._episode is not None:
                ep, self._episode = self._episode, None
                log.info("backfill caught up: %d hole(s), %d record(s) from REST, %d id(s) unfilled",
                         ep["holes"], ep["rows"], ep["unfilled"])  # fmt: skip

    def _parse(
        self, channel: str, contract: Contract, body: bytes, recv_ts: int
    ) -> list[AggTrade] | list[Trade]:
        if channel == "agg_trade":
            return parse_agg_trades(self.venue, contract, body, recv_ts)
        return parse_historical_trades(self.venue, contract, body, recv_ts)

    async def _page(
        self, hole: Hole, ep: HistoryEndpoint, contract: Contract, from_id: int
    ) -> list[AggTrade] | list[Trade] | str:
        """One page from ``from_id``; retried until it comes, or the reason to give up."""
        backoff = Backoff(self.settings.retry_initial_s, self.settings.retry_max_s, 2.0)
        params: dict[str, str | int] = {"symbol": contract.native, "fromId": from_id, "limit": ep.limit}
        while True:
            if self._age_ns(hole) > self._max_age_ns:
                limit = self.settings.max_age_s
                return f"older than backfill.max_age_s ({limit:g} s) before it could be fetched"
            try:
                self.requests += 1
                resp = await self.client.get(
                    ep.path, params, weight=ep.weight, priority=BACKFILL_PRIORITY, headers=self._headers
                )
                return self._parse(hole.channel, contract, resp.body, resp.recv_ts)
            except BannedError as exc:
                self._failed(exc)
                # The host is closed until the ban ends; the hole's age decides whether to wait.
                await asyncio.sleep(max(0.0, min(exc.until - time.time(), self.settings.max_age_s)))
            except RateLimitedError as exc:
                self._failed(exc)
                await asyncio.sleep(exc.retry_after or backoff.next_delay())
            except RestError as exc:
                self._failed(exc)
                if not exc.retriable:
                    return f"REST refused: {exc}"
                await asyncio.sleep(backoff.next_delay())
            except (ParseError, IngestError) as exc:
                self._failed(exc)
                await asyncio.sleep(backoff.next_delay())

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        first = self.last_error is None
        self.last_error = str(exc)
        log.log(logging.WARNING if first else logging.DEBUG, "backfill request failed (%s); retrying", exc)

    async def _find_start(self, hole: Hole, ep: HistoryEndpoint, contract: Contract) -> int | str:
        """The first id of a listing hole: page back from its end until its history starts or
        passes ``max_age_s`` (venue time before the record after the hole)."""
        bound = None if hole.after_ts is None else hole.after_ts - self._max_age_ns
        lo = hole.last + 1 - ep.limit
        while True:
            rows = await self._page(hole, ep, contract, max(0, lo))
            if isinstance(rows, str):
                return rows
            keep = [r for r in rows if record_id(r) <= hole.last]
            if not keep:
                return hole.last + 1
            if bound is not None and any((r.transaction_ts or 0) < bound for r in keep):
                young = [r for r in keep if (r.transaction_ts or 0) >= bound]
                log.warning("%s %s: history before its first record goes back past backfill.max_age_s; "
                            "only the last %g s are fetched", hole.native, hole.channel,
                            self.settings.max_age_s)  # fmt: skip
                return record_id(young[0]) if young else hole.last + 1
            if lo <= 0 or record_id(keep[0]) > lo:
                return record_id(keep[0])
            lo -= ep.limit

    async def _fill(self, hole: Hole) -> None:
        contract = self._contracts.get(hole.native)
        ep = ENDPOINTS[(self.venue, hole.channel)]
        assert contract is not None  # holes are only opened for contracts of the run
        if hole.first is None:
            start = await self._find_start(hole, ep, contract)
            if isinstance(start, str):
                log.warning("%s %s: the history before its listing was not fetched: %s",
                            hole.native, hole.channel, start)  # fmt: skip
                # Where its history starts is unknown: the record has no first id and no count.
                self.unfilled_holes += 1
                await self._guard.emit([self._gap(hole, GapKind.UNFILLED, start, None)])
                return
            if start > hole.last:
                return
            hole.first = start
            hole.before_id = start - 1
            if not await self._guard.emit([self._gap(hole, GapKind.TRADE_GAP, hole.why, hole.size)]):
                return
        assert hole.first is not None
        from_id, filled, pages = hole.first, 0, 0
        why = ""
        while from_id <= hole.last:
            rows = await self._page(hole, ep, contract, from_id)
            if isinstance(rows, str):
                why = rows
                break
            pages += 1
            keep = [r for r in rows if from_id <= record_id(r) <= hole.last]
            if keep:
                if not await self._guard.emit(keep):
                    return  # closing: the hole stays open in the gap log
                filled += len(keep)
                self.rows += len(keep)
            if not rows or record_id(rows[-1]) >= hole.last:
                break
            nxt = record_id(rows[-1]) + 1
            if nxt <= from_id:
                why = "the venue's pages did not advance"
                break
            from_id = nxt
        missing = hole.size - filled
        if missing and not why:
            why = f"the venue served no rows for {missing} of the ids"
        out: list[Record] = []
        if filled:
            self.filled_holes += 1
            text = f"{filled} of {hole.size} ids from REST in {pages} request(s)"
            out.append(self._gap(hole, GapKind.BACKFILL, text, filled))
        if missing:
            out.append(self._unfilled(hole, missing, why))
            log.warning("%s %s: %d of ids %d..%d not backfilled: %s",
                        hole.native, hole.channel, missing, hole.first, hole.last, why)  # fmt: skip
        if self._episode is not None:
            self._episode["rows"] += filled
        log.debug("backfilled %s %s ids %d..%d: %d row(s), %d page(s)",
                  hole.native, hole.channel, hole.first, hole.last, filled, pages)  # fmt: skip
        await self._guard.emit(out)

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Fill holes until :meth:`close`. Returns normally when closed; raises only on a bug."""
        if self._closed or self._tasks:
            return
        self._tasks = [asyncio.create_task(self._worker(), name=f"backfill#{i}") for i in range(WORKERS)]
        await run_workers(self._tasks)

    async def close(self) -> None:
        """Stop filling (a hole being fetched is abandoned). Idempotent. What was not filled stays
        open in the gap log; a restart within ``max_age_s`` finds it in storage again.

        A batch already handed to ``emit`` is finished first (never cut half-emitted); no batch
        starts after. The caller bounds the wait (see :class:`~ingestd.producers.inflight.EmitGuard`)."""
        if self._closed:
            return
        self._closed = True
        left = len(self._queue) + self._active
        await self._guard.stop(self._tasks)
        if left:
            log.warning("%d trade hole(s) not backfilled at shutdown (open in the gap log)", left)
        self._queue.clear()

    def stats(self) -> dict[str, Any]:
        """Counters for /status and metrics."""
        return {
            "holes": self.holes,
            "filled_holes": self.filled_holes,
            "rows": self.rows,
            "unfilled_holes": self.unfilled_holes,
            "unfilled_ids": self.unfilled_ids,
            "pending": len(self._queue),
            "active": self._active,
            "requests": self.requests,
            "failures": self.failures,
            "last_error": self.last_error,
            "channels": sorted(self.channels),
        }
