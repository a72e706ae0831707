"""Following listings: the run's contract set kept equal to what trades, without a restart.

With ``discovery.follow`` (``--follow-listings``) the :class:`ListingWatcher` reads exchangeInfo
every ``discovery.refresh_s`` (300 s) through the shared REST client, at
:data:`REFRESH_PRIORITY`: after urgent depth snapshots (a book out of sync waits for nothing),
in arrival order with routine ones, before trade backfill (a backfill of thousands of pages
must not delay a delisting by hours). The read costs USDⓈ-M weight 1, spot 20.

What it reads is narrowed exactly as start-up narrows discovery (:func:`narrow`: ``--symbols``,
then ``--shard`` with the same rendezvous hashing, so a shard follows only its own contracts:
a contract's shard depends on its name and ``N`` alone, never on the rest of the set) and
compared with the run's set (:func:`diff`):

* **listed** (now ``TRADING`` and selected): the parser, the snapshot queue, the order books
  and the trade backfill learn the contract first, so the first frame of its streams finds all
  of them; then its ``contract`` row is written and its streams are planned on **new**
  connections (:meth:`~ingestd.producers.streams.StreamsProducer.add`). No running connection
  is closed, re-subscribed or changed. Its book syncs like any other (first diff → snapshot);
  its trades are backfilled from its first one, within ``backfill.max_age_s``;
* **delisted** (``SETTLING``, ``BREAK``, any status but ``TRADING``, or gone from the list):
  its streams are retired (no longer expected: neither stale nor silent in ``/readyz``; a
  connection left with none closes), its book is dropped, its snapshot requests are cancelled,
  its trade holes already queued are still filled (that data was traded while it was listed;
  should it trade again, its backfill goes on from its last trade), and its ``contract`` row
  carries the status read;
* **changed** (the same contract with another definition, e.g. a new tick size): a ``contract``
  row and the new definition in the parser and the hooks' context.

Each change is one log line. Hooks see it through their context (``contracts``,
``price_precision``, ``min_qty`` updated before the row is emitted) and, if they take one,
their ``on_contract`` callback (:mod:`ingestd.consumers.hooks`). A failed read (unreachable,
5xx after the client's retries, 429, 418, a body that is not exchangeInfo) is logged once per
failure episode and tried again at the next period; it never stops the daemon.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from ingestd.book.manager import BookManager
from ingestd.config import Settings, StreamSettings
from ingestd.consumers.hooks import HookContext
from ingestd.errors import IngestError, ParseError, StartupError
from ingestd.producers.backfill import Backfiller
from ingestd.producers.contract_records import contract_records
from ingestd.producers.discovery import discover, fetch_exchange_info
from ingestd.producers.events import Emit
from ingestd.producers.plan import plan_connections
from ingestd.producers.pollers import PollerSet
from ingestd.producers.rest import RestClient
from ingestd.producers.snapshots import SnapshotProducer
from ingestd.producers.streams import StreamsProducer
from ingestd.shard import select_shard
from ingestd.venues.binance.endpoints import VenueSpec, stream_symbol
from ingestd.venues.binance.parse import FrameParser
from ingestd.venues.binance.symbols import Contract, ContractDefinition, ContractSet

log = logging.getLogger("ingestd.listings")

REFRESH_PRIORITY: Final = 0
"""Budget priority of a refresh: with routine snapshots (0), after urgent ones (10), before
trade backfill (-1)."""

_V = TypeVar("_V")


# -- pure parts ------------------------------------------------------------------------------------


def narrow(discovered: ContractSet, symbols: Sequence[str], shard: tuple[int, int] | None) -> ContractSet:
    """The contracts of ``discovered`` a run ingests: those ``symbols`` names (every one when
    empty; a name not there is left out), then shard ``K`` of ``N``'s. Pure."""
    contracts = discovered
    if symbols:
        by_native = discovered.by_native()
        kept = tuple(by_native[n] for n in dict.fromkeys(symbols) if n in by_native)
        contracts = ContractSet(discovered.venue, kept, discovered.skipped_unsafe)
    if shard is not None:
        contracts = select_shard(contracts, *shard)
    return contracts


@dataclass(frozen=True, slots=True)
class ContractChanges:
    """How a contract set changed: contracts added, removed, and redefined (new definitions)."""

    listed: tuple[Contract, ...] = ()
    delisted: tuple[Contract, ...] = ()
    changed: tuple[Contract, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.listed or self.delisted or self.changed)


def diff(old: ContractSet, new: ContractSet) -> ContractChanges:
    """What changed from ``old`` to ``new`` (pure; each part in its set's order)."""
    before, after = old.by_native(), new.by_native()
    return ContractChanges(
        listed=tuple(c for c in new if c.native not in before),
        delisted=tuple(c for c in old if c.native not in after),
        changed=tuple(c for c in new if (prev := before.get(c.native)) is not None and prev != c),
    )


def definition_changes(old: Contract, new: Contract) -> str:
    """``tick_size 0.01 -> 0.001, min_qty 1 -> 0.1``: the definition fields that differ."""
    if old.definition is None or new.definition is None:
        return "definition"
    parts = [
        f"{f.name} {getattr(old.definition, f.name)} -> {getattr(new.definition, f.name)}"
        for f in dataclasses.fields(ContractDefinition)
        if getattr(old.definition, f.name) != getattr(new.definition, f.name)
    ]
    return ", ".join(parts) or "definition"


async def discover_run_contracts(client: RestClient, venue: VenueSpec, settings: Settings) -> ContractSet:
    """The run's contracts at start-up: discovered, narrowed to ``--symbols`` and to the shard.

    A ``--symbols`` name that is not trading is a :class:`StartupError` naming it, unless the run
    follows listings: it is then logged and picked up when it lists. A run with no contract at
    all is a :class:`StartupError` either way.
    """
    discovered = await discover(client, venue)
    if discovered.skipped_unsafe:
        log.warning(
            "skipped %d symbols with unsafe names: %s",
            len(discovered.skipped_unsafe),
            ", ".join(discovered.skipped_unsafe[:10]),
        )
    missing = [n for n in settings.symbols if n not in discovered]
    if missing:
        if not settings.discovery.follow:
            raise StartupError(
                f"{venue.name}: not listed as trading: {', '.join(missing)} "
                f"({len(discovered)} trading symbols discovered)"
            )
        log.warning("not trading (yet): %s; followed, ingested once listed", ", ".join(missing))
    contracts = narrow(discovered, settings.symbols, settings.shard)
    if not len(contracts) and settings.shard is not None:
        k, n = settings.shard
        raise StartupError(f"shard {k}/{n} of {len(discovered)} contracts is empty: use fewer shards")
    if not len(contracts):
        raise StartupError(f"{venue.name}: discovery found no trading contracts at {client.base_url}")
    return contracts


def _replace_in_place(mapping: MutableMapping[str, _V], fresh: Mapping[str, _V]) -> None:
    """``mapping`` becomes ``fresh``, the same object (a hook may hold a reference to it)."""
    for key in [k for k in mapping if k not in fresh]:
        del mapping[key]
    mapping.update(fresh)


# -- the watcher -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Followers:
    """The parts of a run that follow its contract set (``None``: the run has no such part).

    ``channels`` are the run's stream channels (``depth_snapshot`` is REST: not planned).
    """

    channels: tuple[str, ...]
    stream_settings: StreamSettings
    parser: FrameParser | None = None
    streams: StreamsProducer | None = None
    books: BookManager | None = None
    snapshots: SnapshotProducer | None = None
    backfill: Backfiller | None = None
    pollers: PollerSet | None = None
    hooks: HookContext | None = None


class ListingWatcher:
    """Keeps a run's contract set equal to what trades (see the module docstring).

    ``await run()`` reads exchangeInfo every ``refresh_s`` until :meth:`close`; :meth:`refresh`
    reads once now and :meth:`apply` applies a new discovered set (both for tests and callers
    that know better). ``narrow`` selects the run's contracts from what is discovered;
    ``on_change`` is told each new set (the daemon keeps its own reference current).
    """

    def __init__(
        self,
        client: RestClient,
        venue: VenueSpec,
        contracts: ContractSet,
        followers: Followers,
        emit: Emit,
        *,
        refresh_s: float,
        narrow: Callable[[ContractSet], ContractSet],
        on_change: Callable[[ContractSet], None] | None = None,
    ) -> None:
        if not refresh_s > 0:
            raise ValueError(f"refresh_s must be positive, got {refresh_s}")
        self.client = client
        self.venue = venue
        self.contracts = contracts
        self.followers = followers
        self.refresh_s = refresh_s
        self._emit = emit
        self._narrow = narrow
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._lock = asyncio.Lock()
        """One refresh at a time (the periodic one and a caller's)."""
        self._failures_in_row = 0
        self._last_refresh: float | None = None
        self.refreshes = 0
        self.failures = 0
        self.listed = 0
        self.delisted = 0
        self.changed = 0
        self.last_error: str | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Refresh every ``refresh_s`` until :meth:`close`. Returns normally when closed; raises
        only on a bug (a failed refresh is logged and retried)."""
        if self._closed or self._task is not None:
            return
        log.info("following listings: exchangeInfo every %g s", self.refresh_s)
        task = self._task = asyncio.create_task(self._loop(), name="listings")
        try:
            # asyncio.wait does not raise the task's error: it is raised below, as itself.
            await asyncio.wait({task})
        finally:
            if not task.done():  # run() itself was cancelled
                task.cancel()
                await asyncio.wait({task})
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            raise exc

    async def _loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()

    async def close(self) -> None:
        """Stop refreshing (a refresh in progress is abandoned: the run is stopping). Idempotent."""
        self._closed = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})

    # -- one refresh ------------------------------------------------------------------------------

    async def refresh(self) -> ContractChanges | None:
        """Read exchangeInfo once and apply it; ``None`` when the read failed (logged)."""
        async with self._lock:
            try:
                info = await fetch_exchange_info(self.client, self.venue, priority=REFRESH_PRIORITY)
                if not info.statuses:
                    # Binance never lists nothing: an empty document must not retire every stream.
                    raise ParseError("exchangeInfo lists no symbol at all", stream="exchangeInfo")
            except IngestError as exc:
                self._failed(exc)
                return None
            self.refreshes += 1
            self._last_refresh = time.monotonic()
            if self._failures_in_row:
                log.info("listing refresh works again after %d failed attempt(s)", self._failures_in_row)
                self._failures_in_row = 0
            return await self._apply(self._narrow(info.contracts), info.statuses, info.recv_ts)

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        self._failures_in_row += 1
        self.last_error = str(exc)
        if self._failures_in_row == 1:
            log.warning("listing refresh failed (%s); the contract set stays as it is, retrying every %g s",
                        exc, self.refresh_s)  # fmt: skip

    async def apply(
        self, discovered: ContractSet, statuses: Mapping[str, str] | None = None, recv_ts: int | None = None
    ) -> ContractChanges:
        """Apply ``discovered`` (exchangeInfo's trading contracts, before narrowing). ``statuses``
        gives the status of every listed symbol (for the rows of contracts that left)."""
        async with self._lock:
            ts = time.time_ns() if recv_ts is None else recv_ts
            return await self._apply(self._narrow(discovered), statuses or {}, ts)

    async def _apply(self, new: ContractSet, statuses: Mapping[str, str], recv_ts: int) -> ContractChanges:
        old = self.contracts
        changes = diff(old, new)
        if not changes or self._closed:
            return changes
        f = self.followers
        # Delisted first: their streams stop being expected before anything else forgets them.
        expected = f.streams.stats()["streams"] if f.streams is not None else {}
        closed: list[str] = []
        if changes.delisted and f.streams is not None:
            closed = await f.streams.retire([c.native for c in changes.delisted])
        # Then everything that routes or keeps state learns the new set, before any stream of a
        # listed contract opens: its first frame finds its route, its book and its backfill.
        self.contracts = new
        if f.parser is not None:
            f.parser.set_contracts(new)
        cancelled = set(f.snapshots.set_contracts(new)) if f.snapshots is not None else set()
        if f.pollers is not None:
            f.pollers.contracts = new
        for c in changes.delisted:
            if f.books is not None:
                f.books.remove(c.native)
            if f.backfill is not None:
                f.backfill.retire(c.native)
        for c in changes.listed:
            if f.books is not None:
                f.books.add(c)
            if f.backfill is not None:
                f.backfill.listed(c)
        if f.backfill is not None and changes.listed:
            # Before their streams open: the first record is compared with what is stored.
            await f.backfill.resume_listed(changes.listed)
        if f.hooks is not None:
            f.hooks.contracts = new
            _replace_in_place(f.hooks.price_precision, new.price_precision())
            _replace_in_place(f.hooks.min_qty, new.min_qty())
        if self._on_change is not None:
            self._on_change(new)
        # The definitions go out before any record of a listed contract can.
        await self._emit(contract_records(old, new, recv_ts, statuses=statuses))
        carriers = self._open_streams(changes.listed)
        self._log(changes, old, statuses, expected, closed, cancelled, carriers)
        self.listed += len(changes.listed)
        self.delisted += len(changes.delisted)
        self.changed += len(changes.changed)
        return changes

    def _open_streams(self, listed: Sequence[Contract]) -> dict[str, list[tuple[str, int]]]:
        """Plan the listed contracts' streams on new connections; native → [(connection, streams)]."""
        f = self.followers
        carriers: dict[str, list[tuple[str, int]]] = {c.native: [] for c in listed}
        if listed and f.streams is not None and f.channels:
            plans = plan_connections(
                self.venue, ContractSet(self.venue.name, tuple(listed)), f.channels, f.stream_settings
            )
            for plan, name in zip(plans, f.streams.add(plans), strict=False):
                for native in plan.natives:
                    n = sum(1 for s in plan.streams if stream_symbol(s) == native.lower())
                    carriers[native].append((name, n))
        if f.books is None and f.snapshots is not None:
            # Snapshots without diffs: one per contract, as at start-up.
            for c in listed:
                f.snapshots.request(c.native)
        return carriers

    def _log(  # noqa: PLR0917 - one line per change needs all of it
        self,
        changes: ContractChanges,
        old: ContractSet,
        statuses: Mapping[str, str],
        expected: Mapping[str, Any],
        closed: list[str],
        cancelled: set[str],
        carriers: Mapping[str, list[tuple[str, int]]],
    ) -> None:
        f = self.followers
        for c in changes.listed:
            on = carriers.get(c.native) or []
            streams = sum(n for _, n in on)
            where = f" on {', '.join(name for name, _ in on)}" if on else ""
            extra = "".join((
                "; book syncing" if f.books is not None else "",
                "; trades backfilled from its first one" if f.backfill is not None else "",
            ))  # fmt: skip
            log.info("listed %s (%s): %d stream(s)%s%s", c.native, c.symbol, streams, where, extra)
        for c in changes.delisted:
            lower = c.native.lower()
            retired = sum(1 for s in expected if stream_symbol(s) == lower)
            parts = [f"{retired} stream(s) retired"]
            if f.books is not None:
                parts.append("book dropped")
            if c.native in cancelled:
                parts.append("snapshot request cancelled")
            status = statuses.get(c.native) or "no longer listed"
            log.info("delisted %s (%s, %s): %s", c.native, c.symbol, status, ", ".join(parts))
        if closed:
            log.info("connection(s) %s closed: nothing left on them", ", ".join(closed))
        before = old.by_native()
        for c in changes.changed:
            log.info("contract %s changed: %s", c.native, definition_changes(before[c.native], c))

    # -- observation ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for /status and metrics."""
        return {
            "refresh_s": self.refresh_s,
            "contracts": len(self.contracts),
            "refreshes": self.refreshes,
            "failures": self.failures,
            "failing": self._failures_in_row > 0,
            "last_error": self.last_error,
            "last_refresh_age_s": (
                None if self._last_refresh is None else round(time.monotonic() - self._last_refresh, 3)
            ),
            "listed": self.listed,
            "delisted": self.delisted,
            "changed": self.changed,
        }
