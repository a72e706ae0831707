"""The daemon: owns every running part and runs the lifecycle.

Start-up: REST client → discovery (the contract set: fixed for the run, or followed by the
listing watcher with ``--follow-listings``, :mod:`ingestd.producers.listings`) → consumers on
the bus → book manager → snapshot producer → streams producer. Everything a producer emits goes
through :meth:`Daemon._emit`: the book manager sees each batch first (and may add gap/book
records), then the bus fans it out.

Shutdown runs in phases under one deadline: stop intake (producers closed, nothing
new enters) → drain the queues and flush the consumers (Parquet files are complete and renamed)
→ close the REST client. A second SIGINT forces: remaining tasks are cancelled and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import time
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

from ingestd import speedups
from ingestd.book.manager import REPLAY_CHUNK, BookManager
from ingestd.book.records import GapKind
from ingestd.bus import Bus, OverflowPolicy
from ingestd.channels import Cadence
from ingestd.config import Settings
from ingestd.consumers.console import ConsoleReporter
from ingestd.consumers.hooks import HookConsumer, HookContext, HookFunc, HookSpec
from ingestd.consumers.jsonl import JsonDump
from ingestd.consumers.nats import NatsPublisher
from ingestd.consumers.parquet import ParquetWriter
from ingestd.errors import IngestError, PhaseTimeoutError, StartupError
from ingestd.observe.health import HealthServer
from ingestd.observe.liveness import Intake, Liveness
from ingestd.observe.metrics import MetricsTap, render
from ingestd.observe.quiet import QuietStreams, QuietWatch
from ingestd.observe.records import clock_sample, silent_stream_notices
from ingestd.observe.sdnotify import SdNotifier, ServiceNotifier
from ingestd.producers.backfill import Backfiller
from ingestd.producers.clock import ClockEstimate, ClockSync
from ingestd.producers.contract_records import contract_records
from ingestd.producers.events import ConnectionEvent, ConnectionEventKind
from ingestd.producers.listings import Followers, ListingWatcher, discover_run_contracts, narrow
from ingestd.producers.pollers import PollerSet
from ingestd.producers.rest import RestClient
from ingestd.producers.snapshots import SnapshotProducer
from ingestd.producers.streams import StreamsProducer, plan_connections
from ingestd.records import AnyRecord, Record
from ingestd.shard import shard_label
from ingestd.tls import client_context, trust_source
from ingestd.venues.binance.channels import TABLES
from ingestd.venues.binance.endpoints import VENUES, VenueSpec
from ingestd.venues.binance.parse import FrameParser
from ingestd.venues.binance.symbols import ContractSet

log = logging.getLogger("ingestd.app")

INTAKE_SHARE = 0.5
"""Share of ``shutdown_timeout_s`` that stopping the producers may use; the rest is the drain's."""


class Daemon:
    """One run of ingestd. Create, optionally :meth:`add_hook`, then ``await run()``.

    ``ssl_context``: the verifying TLS context (:func:`ingestd.tls.client_context`), when the
    caller built it already; else it is built here from ``settings.tls``.
    """

    def __init__(self, settings: Settings, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        self.venue: VenueSpec = VENUES[settings.venue]
        self.rest_url = settings.rest_url or self.venue.rest_url
        self.ws_url = settings.ws_url or self.venue.ws_url
        # One verifying TLS context for every REST call and websocket, built before the loop
        # runs (it reads CA files); a bad tls.ca_file is a ConfigError here (exit 2).
        self.tls = ssl_context if ssl_context is not None else client_context(settings.tls.ca_file)
        self.contracts: ContractSet | None = None
        self.bus = Bus()
        self.books: BookManager | None = None
        self.rest: RestClient | None = None
        self.snapshots: SnapshotProducer | None = None
        self.streams: StreamsProducer | None = None
        self.clock: ClockSync | None = None
        self.pollers: PollerSet | None = None
        self.backfill: Backfiller | None = None
        self.listings: ListingWatcher | None = None
        self.health: HealthServer | None = None
        self.metrics = MetricsTap(self._clock_offset_ns, counts=self.bus.counts)
        self.console: ConsoleReporter | None = None
        self.notifier = SdNotifier()
        self._phase: str | None = "starting"
        """What the intake does before the producers run (and while stopping); see :meth:`_intake`."""
        self.quiet: QuietWatch | None = None
        self.liveness = Liveness(settings.health, settings.streams, self._intake, venue=settings.venue)
        self.service = ServiceNotifier(self.notifier, self.readiness, self.liveness.check)
        self._clock_skewed = False
        self.hook_context = HookContext()
        self._hooks: list[HookSpec] = [HookSpec.load(spec) for spec in settings.hooks.specs]
        self._stop = asyncio.Event() if _has_loop() else None
        self._stop_reason = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._fatal: BaseException | None = None
        self._started_at = 0.0
        self._conn_events: dict[str, int] = {}
        self.book_errors = 0
        """Batches the order books failed on (stored anyway)."""
        self._book_errors_in_episode = 0
        self._replay_driven = False
        self._force = asyncio.Event() if _has_loop() else None

    # -- public API ---------------------------------------------------------------------------

    def add_hook(
        self,
        func: HookFunc,
        *,
        channels: Iterable[str] | None = None,
        symbols: Iterable[str] | None = None,
        name: str | None = None,
        on_contract: HookFunc | None = None,
    ) -> None:
        """Register an async callable ``func(record)`` (or ``func(record, context)``).

        ``channels`` and ``symbols`` (normalized, ``BTC-USDT-PERP``) filter what it receives. Each hook
        gets its own bounded queue (policy from settings) and task; its errors and timeouts are
        counted, never propagated. ``on_contract(row)`` (or ``(row, context)``) is also called
        with each ``contract`` row of those symbols: at start, then on every listing, delisting
        or definition change (:mod:`ingestd.consumers.hooks`).
        """
        self._hooks.append(
            HookSpec(
                func,
                name or str(getattr(func, "__qualname__", "hook")),
                frozenset(channels) if channels is not None else None,
                frozenset(symbols) if symbols is not None else None,
                on_contract,
            )
        )

    def request_stop(self, reason: str = "requested") -> None:
        """Ask for an orderly shutdown. Safe to call from a signal handler, more than once."""
        if self._stop is None:
            return
        if not self._stop.is_set():
            log.info("stopping: %s", reason)
            self._stop_reason = reason
        self._stop.set()

    @property
    def channels(self) -> tuple[str, ...]:
        chans = list(self.settings.channels)
        # A book needs snapshots, and a book must be rebuildable from storage: diffs imply snapshots.
        if "depth_diff" in chans and "depth_snapshot" not in chans:
            chans.append("depth_snapshot")
        return tuple(chans)

    async def run(self) -> int:
        """Run until the duration elapses, a signal arrives or a fatal error. Returns an exit code."""
        if self._stop is None:
            self._stop = asyncio.Event()
        if self._force is None:
            self._force = asyncio.Event()
        self._started_at = time.monotonic()
        self._install_signals()
        self.liveness.start()
        for channel in self.channels:
            spec = TABLES[self.venue.name].get(channel)
            if spec is not None and not spec.documented:
                log.warning(
                    "channel %s on %s: Binance does not document this stream on the venue's "
                    "websocket, it may stay silent; use %s (docs/binance.md §2.3)",
                    channel, self.venue.name, spec.instead or "another channel",
                )  # fmt: skip
        try:
            await self._start()
        except StartupError:
            await self._shutdown()
            raise
        except IngestError as exc:
            await self._shutdown()
            raise StartupError(str(exc)) from exc
        log.info(
            "running: %s, %d contracts, channels %s, rest=%s ws=%s",
            self.venue.name,
            len(self.contracts or ()),
            ",".join(self.channels),
            self.rest_url,
            self.ws_url,
        )
        duration = self.settings.duration_s
        try:
            if duration > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), duration)
                if not self._stop.is_set():
                    self.request_stop(f"duration of {duration:g} s elapsed")
            else:
                await self._stop.wait()
        finally:
            await self._shutdown()
        if self._fatal is not None:
            log.error("stopped after a fatal error: %s", self._fatal)
            return 1
        return 0

    def stats(self) -> dict[str, Any]:
        """A snapshot of every component's counters (status line, metrics, tests)."""
        out: dict[str, Any] = {
            "venue": self.venue.name,
            "uptime_s": round(time.monotonic() - self._started_at, 3) if self._started_at else 0.0,
            "phase": self._phase or "running",
            "contracts": len(self.contracts or ()),
            "bus": self.bus.stats(),
            "connection_events": dict(self._conn_events),
            "book_errors": self.book_errors,
            "liveness": self.liveness.stats(),
            "quiet": self.quiet.quiet.stats() if self.quiet is not None else {},
            "speedups": speedups.active(),
        }
        if self.streams is not None:
            out["streams"] = self.streams.stats()
        if self.snapshots is not None:
            out["snapshots"] = self.snapshots.stats()
        if self.rest is not None:
            out["rest"] = self.rest.stats()
        if self.books is not None:
            out["books"] = self.books.stats()
        if self.clock is not None:
            out["clock"] = self.clock.stats()
        if self.pollers is not None:
            out["pollers"] = self.pollers.stats()
        if self.console is not None:
            out["console"] = self.console.stats()
        if self.backfill is not None:
            out["backfill"] = self.backfill.stats()
        if self.listings is not None:
            out["listings"] = self.listings.stats()
        if self.health is not None:
            out["health_url"] = self.health.url
        return out

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when every stream is fresh and every book is synced; else name what is not.

        How fresh a stream must be follows its channel's cadence (the channel table's). Book-driven
        streams (depth, bookTicker, mark price) tick several times a second on any listed contract,
        so they must deliver within ``health.freshness_s``. Trade-driven streams (trades, klines,
        tickers) can be quiet for minutes on a thin contract: they get ``health.quiet_freshness_s``.
        Event-driven ones (liquidations) come only when something happens and are exempt.
        """
        not_ready: list[str] = []
        if self.contracts is None:
            not_ready.append("starting")
        hs = self.settings.health
        uptime = time.monotonic() - self._started_at if self._started_at else 0.0
        if self.streams is not None:
            for name, st in self.streams.stats()["streams"].items():
                cadence = st["cadence"]
                if cadence == Cadence.EVENT:
                    continue
                quiet = cadence != Cadence.BOOK
                limit = hs.quiet_freshness_s if quiet else hs.freshness_s
                age = st.get("last_frame_age_s")
                if not st.get("first_frame_seen"):
                    # A quiet stream gets its grace from when it became expected (a listing's too).
                    if not quiet or st.get("expected_for_s", uptime) > limit:
                        not_ready.append(f"stream {name}: no frame yet")
                elif age is None or age > limit:
                    not_ready.append(f"stream {name}: last frame {age} s ago")
        if self.books is not None:
            for sym, b in self.books.stats()["symbols"].items():
                if b["state"] != "synced":
                    not_ready.append(f"book {sym}: {b['state']}")
            if self._book_errors_in_episode:
                not_ready.append(f"order books failing ({self._book_errors_in_episode} batch(es) in a row)")
        return (not not_ready, {"not_ready": not_ready})

    def _intake(self) -> Intake:
        """For :class:`Liveness`: the start-up/shutdown phase, else what the websockets do."""
        if self._phase is not None:
            return Intake(phase=self._phase)
        return Intake(streams=self.streams.stats() if self.streams is not None else None)

    def _metrics(self) -> bytes:
        return render(self.stats, self.metrics, ready=self.readiness, alive=self.liveness.check)

    def _clock_offset_ns(self) -> int | None:
        """ns the venue clock is ahead of ours: 0 without a clock, ``None`` before its first estimate."""
        if self.clock is None:
            return None if self.settings.clock.enabled else 0
        if self.clock.offset_ms is None:
            return None
        return int(self.clock.offset_ms * 1_000_000)

    # -- start-up -----------------------------------------------------------------------------

    async def _start(self) -> None:
        s = self.settings
        if any(u.startswith(("https:", "wss:")) for u in (self.rest_url, self.ws_url)):
            log.info("TLS: verifying certificates against %s", trust_source(s.tls.ca_file))
        state_file = s.snapshots.state_file or (s.storage.data_dir / ".ingestd-state.json")
        self.rest = RestClient(
            self.rest_url,
            self.venue,
            headroom=s.snapshots.weight_headroom,
            state_file=state_file if s.storage.enabled or s.snapshots.state_file else None,
            timeout_s=s.snapshots.request_timeout_s,
            ssl_context=self.tls,
        )
        await self._wait_out_ban()
        self.contracts = await discover_run_contracts(self.rest, self.venue, s)
        discovered_at = time.time_ns()
        if s.health.port:
            self.health = HealthServer(
                s.health.host,
                s.health.port,
                stats=self.stats,
                ready=self.readiness,
                metrics=self._metrics,
                alive=self.liveness.check,
            )
            await self.health.start()
        if s.clock.enabled:
            self.clock = ClockSync(
                self.rest,
                self.venue,
                samples=s.clock.samples,
                interval_s=s.clock.interval_s,
                on_estimate=self._on_clock_estimate,
            )
            self.clock.start()
        self.hook_context.contracts = self.contracts
        self.hook_context.price_precision = self.contracts.price_precision()
        self.hook_context.min_qty = self.contracts.min_qty()
        await self._start_consumers()
        # The run's contract definitions go first (channel contract): replay and exports read
        # the definition valid at each moment from them.
        await self._emit(contract_records(None, self.contracts, discovered_at))

        chans = self.channels
        if "depth_snapshot" in chans:
            self.snapshots = SnapshotProducer(
                self.rest,
                self.venue,
                self.contracts,
                self._emit,
                limit=s.snapshots.limit,
                poll_interval_s=s.snapshots.poll_interval_s,
                raw=s.json_dump.raw,
                on_ban=self._on_ban,
            )
            self._spawn(self.snapshots.run(), "snapshots")
        if "depth_diff" in chans and self.snapshots is not None:
            snaps = self.snapshots
            self.books = BookManager(
                self.venue.name,
                self.contracts,
                market="futures" if self.venue.routed else "spot",
                request_snapshot=lambda native, urgent: snaps.request(native, urgent=urgent),
                max_buffered=s.snapshots.max_buffered_diffs,
                book_depth=s.books.depth,
                book_every=s.books.every,
                replay_chunk=REPLAY_CHUNK,
                max_buffered_bytes=int(s.books.max_buffered_mb * 2**20),
            )
            self.hook_context.books = self.books
        elif self.snapshots is not None:
            for c in self.contracts:
                self.snapshots.request(c.native)

        if s.pollers.enabled:
            self.pollers = PollerSet(self.rest, self.venue, self.contracts, self._emit, s.pollers)
            self._spawn(self.pollers.run(), "pollers")

        if s.backfill.enabled and ("agg_trade" in chans or "trade" in chans):
            await self._start_backfill(chans)

        stream_channels = tuple(c for c in chans if c != "depth_snapshot")
        parser = FrameParser(self.venue.name, self.contracts)
        if stream_channels:
            plans = plan_connections(self.venue, self.contracts, stream_channels, s.streams)
            self.streams = StreamsProducer(
                self.venue,
                self.ws_url,
                plans,
                parser,
                self._emit,
                s.streams,
                raw=s.json_dump.raw,
                on_event=self._on_connection_event,
                ssl_context=self.tls,
            )
            self._spawn(self.streams.run(), "streams")
            self._watch_quiet(self.streams)
        else:
            self.service.ready("running: no websocket streams to wait for")
        if s.discovery.follow:
            self._follow_listings(parser, stream_channels)
        self._phase = None

    def _watch_quiet(self, streams: StreamsProducer) -> None:
        """Data quality: quiet streams into the gap log and metrics (never liveness)."""
        assert self.contracts is not None
        hs = self.settings.health
        quiet = QuietStreams(self.venue.name, self.contracts, hs)
        interval = max(0.05, min(5.0, hs.freshness_s / 4, hs.quiet_freshness_s / 4))
        self.quiet = QuietWatch(quiet, lambda: streams.stats()["streams"], self._emit, interval)
        self.quiet.start()

    async def _start_consumers(self) -> None:
        self._attach_consumers()
        await self.bus.start()
        if self.console is not None:
            await self.console.start()

    def _follow_listings(self, parser: FrameParser, stream_channels: tuple[str, ...]) -> None:
        """``--follow-listings``: every part that knows the contract set follows exchangeInfo."""
        s = self.settings
        assert self.rest is not None
        assert self.contracts is not None
        followers = Followers(
            stream_channels, s.streams, parser=parser, streams=self.streams, books=self.books,
            snapshots=self.snapshots, backfill=self.backfill, pollers=self.pollers, hooks=self.hook_context,
        )  # fmt: skip
        self.listings = ListingWatcher(
            self.rest, self.venue, self.contracts, followers, self._emit, refresh_s=s.discovery.refresh_s,
            narrow=lambda found: narrow(found, s.symbols, s.shard), on_change=self._contracts_changed,
        )  # fmt: skip
        self._spawn(self.listings.run(), "listings")

    def _contracts_changed(self, contracts: ContractSet) -> None:
        self.contracts = contracts
        if self.quiet is not None:
            # A listed contract's quiet streams are named in the gap log too.
            self.quiet.quiet.contracts = contracts

    async def _start_backfill(self, chans: Sequence[str]) -> None:
        """Trade holes are filled from REST; on an existing data dir, from its last stored ids."""
        s = self.settings
        assert self.rest is not None
        assert self.contracts is not None
        key = os.environ.get("INGESTD_API_KEY", "").strip() or None
        self.backfill = Backfiller(
            self.rest, self.venue.name, self.contracts, self._emit, s.backfill, chans, api_key=key
        )
        if s.storage.enabled:
            await self.backfill.resume_from_storage(s.storage.data_dir)
        self._spawn(self.backfill.run(), "backfill")

    def _attach_consumers(self) -> None:
        s = self.settings
        if s.storage.enabled:
            prefix = shard_label(*s.shard) if s.shard is not None else ""
            self.bus.attach(
                ParquetWriter(s.storage, file_prefix=prefix),
                maxsize=s.storage.queue_size,
                policy=OverflowPolicy.BLOCK,
            )
        if s.json_dump.dir is not None:
            self.bus.attach(
                JsonDump(s.json_dump), maxsize=s.json_dump.queue_size, policy=OverflowPolicy.BLOCK
            )
        if s.nats.url is not None:
            # NATS must never hold storage back: its own buffer drops oldest (counted) on outage.
            self.bus.attach(
                NatsPublisher(s.nats), maxsize=s.nats.buffer_records, policy=OverflowPolicy.DROP_OLDEST
            )
        if s.health.port:
            self.bus.attach(self.metrics, maxsize=100_000, policy=OverflowPolicy.DROP_OLDEST)
        for i, h in enumerate(self._hooks):
            consumer = HookConsumer(
                f"hook:{h.name}#{i}",
                h.func,
                channels=h.channels,
                timeout_s=s.hooks.timeout_s,
                context=self.hook_context,
                on_contract=h.on_contract,
            )
            self.bus.attach(
                consumer, maxsize=s.hooks.queue_size, policy=OverflowPolicy(s.hooks.policy), symbols=h.symbols
            )
        if s.console.enabled:
            # Not a bus consumer: the line is made from the bus's count of what was published.
            self.console = ConsoleReporter(
                s.console.interval_s, stats=self._console_stats, counts=self.bus.counts.per_channel
            )

    def _console_stats(self) -> dict[str, Any]:
        reconnects = 0
        if self.streams is not None:
            reconnects = int(self.streams.stats().get("reconnects", 0))
        drops = sum(int(c.get("dropped", 0)) for c in self.bus.stats()["consumers"].values())
        return {"reconnects": reconnects, "drops": drops}

    # -- data path ----------------------------------------------------------------------------

    async def _emit(self, batch: Sequence[AnyRecord]) -> None:
        backfill = self.backfill
        if backfill is not None:
            gaps = backfill.observe(batch)
            if gaps:
                batch = [*batch, *gaps]
        books = self.books
        if books is not None:
            try:
                extra = books.process(batch)
            except Exception as exc:  # noqa: BLE001 - a book bug must not cost the batch or the daemon
                self._book_failed(exc)
            else:
                self._books_ok()
                if extra:
                    batch = [*batch, *extra]
        await self.bus.publish(batch)
        if books is not None and books.replaying and not self._replay_driven:
            await self._drive_replays(books)

    async def _drive_replays(self, books: BookManager) -> None:
        """Finish the snapshot replays under way, one chunk per turn of the event loop.

        Driven by one emit at a time (the one that saw the replay start, usually the snapshot's):
        between chunks the other producers run, and their diffs for a book being replayed wait
        behind its buffer. The emit returns once every replay is done (back-pressure on the
        snapshot worker, not on the sockets).
        """
        self._replay_driven = True
        try:
            while books.replaying:
                await asyncio.sleep(0)
                try:
                    extra = books.continue_replays()
                except Exception as exc:  # noqa: BLE001 - as in _emit: counted, the daemon goes on
                    self._book_failed(exc)
                    return
                if extra:
                    await self.bus.publish(extra)
        finally:
            self._replay_driven = False

    def _books_ok(self) -> None:
        if self._book_errors_in_episode:
            log.info("order books process again after %d failed batch(es)", self._book_errors_in_episode)
            self._book_errors_in_episode = 0

    def _book_failed(self, exc: Exception) -> None:
        """Count a BookManager failure; the traceback is logged once per episode."""
        self.book_errors += 1
        self._book_errors_in_episode += 1
        if self._book_errors_in_episode == 1:
            msg = "order-book processing failed; records are still stored, counting until it recovers"
            log.error(msg, exc_info=exc)

    def _on_connection_event(self, ev: ConnectionEvent) -> None:
        self._conn_events[ev.kind.value] = self._conn_events.get(ev.kind.value, 0) + 1
        if ev.kind is ConnectionEventKind.DATA_FLOWING:
            self._notify_data_flowing(ev)
        elif ev.kind is ConnectionEventKind.STREAM_SILENT and self.streams is not None:
            # Start-up does not wait for a connection whose streams are silent: that is reported.
            self.service.streams_silent(ev.connection, self.streams.stats()["connections"].keys())
        if self.books is not None:
            extra: list[Record] = self.books.on_connection_event(ev)
        elif ev.kind is ConnectionEventKind.STREAM_SILENT and self.contracts is not None:
            extra = silent_stream_notices(self.venue.name, self.contracts, ev)
        else:
            return
        if extra:
            # Connection events arrive from the producer's task; publishing is async, so the gap
            # records are handed to a referenced task rather than dropped.
            self._spawn(self.bus.publish(extra), f"gap:{ev.connection}", fatal=False)

    def _notify_data_flowing(self, ev: ConnectionEvent) -> None:
        """sd_notify READY=1 once every planned connection has delivered data."""
        if self.service.ready_sent or self.streams is None:
            return
        self.service.data_flowing(ev.connection, self.streams.stats()["connections"].keys())

    async def _on_clock_estimate(self, est: ClockEstimate) -> None:
        """Store each clock estimate (channel ``clock``); warn once per episode past the limit."""
        limit = self.settings.clock.warn_offset_ms
        if abs(est.offset_ms) > limit and not self._clock_skewed:
            log.warning(
                "venue clock is %+.1f ms off ours (limit %.0f ms, rtt %.1f ms): is NTP running? "
                "latency metrics are corrected by it",
                est.offset_ms,
                limit,
                est.rtt_ms,
            )
        elif abs(est.offset_ms) <= limit and self._clock_skewed:
            log.info("venue clock offset back within %.0f ms: %+.1f ms", limit, est.offset_ms)
        self._clock_skewed = abs(est.offset_ms) > limit
        host = self.rest.host if self.rest is not None else ""
        await self._emit([clock_sample(self.venue.name, host, est)])

    def _on_ban(self, native: str, until: float) -> None:
        if self.books is None:
            return
        reason = f"REST host banned (418) until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(until))}"
        gaps = self.books.record_gap(native, GapKind.BAN, reason, time.time_ns())
        if gaps:
            self._spawn(self.bus.publish(gaps), f"ban-gap:{native}", fatal=False)

    async def _wait_out_ban(self) -> None:
        """A 418 ban remembered from an earlier run: wait it out (SIGTERM still stops us)."""
        assert self.rest is not None
        assert self._stop is not None
        until = self.rest.banned_until or 0.0
        remaining = until - time.time()
        if remaining <= 0:
            return
        log.warning(
            "REST host %s banned (418) until %s: waiting %.0f s before discovery",
            self.rest_url,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until)),
            remaining,
        )
        self._phase = (
            f"waiting out a REST ban until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(until))}"
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), remaining)
        self._phase = "starting"
        if self._stop.is_set():
            raise StartupError("stopped while waiting for a REST ban to end")

    # -- tasks and shutdown -------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None], name: str, *, fatal: bool = True) -> None:
        async def wrapper() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if fatal:
                    log.exception("%s failed", name)
                    self._fatal = exc
                    self.request_stop(f"{name} failed: {exc}")
                else:
                    log.exception("background task %s failed", name)

        task = asyncio.create_task(wrapper(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
            loop.add_signal_handler(signal.SIGINT, self._on_sigint)
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _remove_signals(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _on_sigint(self) -> None:
        if self._stop is not None and self._stop.is_set():
            log.warning("second SIGINT: forcing shutdown")
            if self._force is not None:
                self._force.set()
            for t in list(self._tasks):
                t.cancel()
        self.request_stop("SIGINT")

    def _on_sighup(self) -> None:
        for h in logging.getLogger("ingestd").handlers:
            reopen = getattr(h, "reopen", None)
            if callable(reopen):
                reopen()
        log.info("SIGHUP: log file reopened")

    async def _shutdown(self) -> None:
        deadline = self.settings.shutdown_timeout_s
        started = time.monotonic()

        def left(share: float = 1.0) -> float:
            return max(0.1, deadline * share - (time.monotonic() - started))

        # Stopping intake may use at most half the deadline: the rest is reserved for the drain.
        intake = INTAKE_SHARE

        # systemd: STOPPING=1 as shutdown begins (TimeoutStopSec runs from here); no WATCHDOG after.
        self._phase = "stopping"
        await self.service.stopping()
        # Phase 1: stop intake. Producers close their sockets; nothing new enters the bus. Each
        # finishes the batch it is emitting (within the deadline): the clock emits records too.
        for name, part in (
            # First: no listing may open a connection while the others close.
            ("listings", self.listings),
            ("clock", self.clock),
            ("quiet streams", self.quiet),
            ("streams", self.streams),
            ("snapshots", self.snapshots),
            ("pollers", self.pollers),
            ("backfill", self.backfill),
        ):
            if part is None:
                continue
            try:
                async with asyncio.timeout(left(intake)):
                    await part.close()
            except TimeoutError:
                log.warning("%s", PhaseTimeoutError(f"shutdown.stop_{name}", deadline))
        cancelled = await self._cancel_tasks(left(intake))
        # Phase 2: drain every queue and flush consumers (Parquet files completed and renamed).
        drain = asyncio.ensure_future(self.bus.close())
        waits: list[asyncio.Future[Any]] = [drain]
        if self._force is not None:
            waits.append(asyncio.ensure_future(self._force.wait()))
        done, _ = await asyncio.wait(waits, timeout=left(), return_when=asyncio.FIRST_COMPLETED)
        for w in waits[1:]:
            w.cancel()
        if drain not in done:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await drain
            log.error("%s: some records were not flushed", PhaseTimeoutError("shutdown.drain", deadline))
        # Phase 3: release the clock task, console line, health endpoint and REST session.
        if self.console is not None:
            with contextlib.suppress(Exception):
                await self.console.close()
        if self.clock is not None:
            with contextlib.suppress(Exception):
                await self.clock.close()
        if self.health is not None:
            with contextlib.suppress(Exception):
                await self.health.close()
        await self.liveness.close()
        self.notifier.close()
        if self.rest is not None:
            with contextlib.suppress(Exception):
                await self.rest.close()
        self._remove_signals()
        log.info(
            "stopped in %.2f s (%s)%s",
            time.monotonic() - started,
            self._stop_reason or "done",
            f", {cancelled} task(s) cancelled" if cancelled else "",
        )

    async def _cancel_tasks(self, grace_s: float) -> int:
        pending = [t for t in self._tasks if not t.done()]
        if not pending:
            return 0
        _, still = await asyncio.wait(pending, timeout=min(grace_s, 2.0))
        for t in still:
            t.cancel()
        for t in still:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        return len(still)


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
