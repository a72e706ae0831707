"""The websocket producer: one supervised connection per :class:`ConnectionPlan`.

Each planned connection is a *slot* with one controller task (in an ``asyncio.TaskGroup``) and
one reader task per open socket. The controller reconnects inside itself — capped, jittered
backoff that resets only once data flows — so the group only ever sees fatal errors. It also
runs the watchdogs without per-frame timers: it sleeps until the nearest deadline (staleness,
first-frame deadline, rotation) and re-checks.

Frames: ``recv_ts`` is read once per frame; with ``raw`` the exact bytes are emitted first as a
:class:`~ingestd.records.RawFrame`; the parser's records are emitted as one batch per frame.
Before emission every record passes a per-``(stream, native)`` high-water mark of its channel's
ordering key (the channel table's: ``final_update_id``, ``update_id``, ``trade_id``, ``agg_id``,
kline ``(open_time, exchange_ts)``, else ``exchange_ts``; :mod:`ingestd.producers.dedupe` has the
rule): a proven copy is dropped and counted, so a venue replaying the last records after a
reconnect adds no duplicates; ids that restart lower are a new sequence, emitted behind an
``id_reset`` gap record (counted per stream, logged).

Rotation (make-before-break, before Binance's 24 h cut): a second socket is opened on the same
streams while the primary keeps emitting. The new socket's records are buffered per key until
overlap with the primary is proven (see :mod:`ingestd.producers.dedupe`), so nothing is lost
whichever socket runs ahead. Once every key either socket delivered is proven and the primary
has read a frame that arrived after the new socket opened, the old socket is closed (what it
already read is still admitted), the new one becomes the primary, and one ``ROTATED`` event
replaces the ``DISCONNECTED``/``CONNECTED`` pair: no data was lost, books need not resync. A new
socket that delivers nothing within ``first_frame_deadline_s`` is dropped and the rotation
retried with backoff; one that has data but no proof by then is switched to anyway (logged).

The contract set can change during a run (listings): :meth:`StreamsProducer.add` opens new
connections for new plans while the others run on untouched (never closed, re-subscribed or
changed: a reconnect keeps resubscribing exactly its own streams), and
:meth:`StreamsProducer.retire` stops expecting the streams of contracts that stopped trading —
they leave ``stats()["streams"]`` (so neither silence nor staleness is reported for them), and a
connection whose every stream is retired is closed for good; one that still carries live
streams keeps them all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

from ingestd.backoff import classify
from ingestd.config import StreamSettings
from ingestd.errors import ParseError, TransportError
from ingestd.producers.connstate import Live, Slot, SlotState, StreamStats
from ingestd.producers.dedupe import HighWaterMarks
from ingestd.producers.events import ConnectionEvent, ConnectionEventKind, Emit, OnConnectionEvent
from ingestd.producers.plan import ConnectionPlan, plan_connections
from ingestd.producers.transport import AiohttpTransport, WsConnection, WsTransport
from ingestd.records import AnyRecord, RawFrame, Record
from ingestd.venues.binance.channels import cadence_of, channel_spec
from ingestd.venues.binance.endpoints import VenueSpec, stream_kind, stream_symbol

__all__ = ["ConnectionPlan", "FrameParserLike", "SlotState", "StreamsProducer", "plan_connections"]

log = logging.getLogger("ingestd.streams")

SERVER_SHUTDOWN_STREAM: Final = "!serverShutdown"
ROTATION_POLL_S: Final = 0.05
"""How often the controller re-checks a rotation's hand-over conditions (only while rotating)."""

ID_RESET_LOG_S: Final = 60.0
"""An id restart is logged as a warning unless the same stream restarted less than this ago."""
SHUTDOWN_REPEAT_S: Final = 10.0
"""A second serverShutdown within this many seconds reconnects with backoff, not at once."""
RELEASE_BATCH: Final = 4096
"""Records per batch when a rotation releases what the new socket buffered."""
EMIT_BATCH: Final = 512
"""At most this many records gathered over consecutive frames before they are emitted."""

Kind = ConnectionEventKind


class FrameParserLike(Protocol):
    """What the producer needs from a venue parser (``ingestd.venues.binance.parse.FrameParser``)."""

    def parse(self, frame: bytes | str, recv_ts: int) -> tuple[str, list[Record]]:
        """``(stream, records)`` of one combined-stream frame; ``("", [])`` for a control reply,
        ``("!serverShutdown", [])`` for the shutdown notice. Raises ``ParseError`` on bad input."""


def _close_reason(code: int | None) -> str:
    return "closed" if code is None else f"close {code}"


class StreamsProducer:
    """Runs the planned websockets and emits their records. ``await run()``; ``await close()``.

    ``emit`` receives one batch per frame (it may wait: back-pressure reaches the socket).
    ``on_event`` receives :class:`~ingestd.producers.events.ConnectionEvent` transitions.
    ``transport`` defaults to aiohttp with the venue's keepalive cadence, verifying ``wss://``
    peers with ``ssl_context`` (``None``: aiohttp's default context).
    """

    def __init__(  # noqa: PLR0917 - positional order is the daemon's call (app.py)
        self,
        venue: VenueSpec,
        ws_url: str,
        plans: Sequence[ConnectionPlan],
        parser: FrameParserLike,
        emit: Emit,
        settings: StreamSettings,
        *,
        raw: bool = False,
        on_event: OnConnectionEvent | None = None,
        transport: WsTransport | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        names = [p.name for p in plans]
        if len(set(names)) != len(names):
            raise ValueError(f"connection plan names must be unique: {names}")
        self._venue = venue
        self._parser = parser
        self._emit = emit
        self._settings = settings
        self._raw = raw
        self._on_event = on_event
        self._transport: WsTransport = transport or AiohttpTransport(
            max_frame_bytes=settings.max_frame_bytes,
            ping_interval_s=settings.ping_interval_s or venue.ping_interval_s,
            ssl_context=ssl_context,
        )
        self._ws_url = ws_url
        self._slots = [Slot(p, ws_url, settings, venue.name) for p in plans]
        self._group: asyncio.TaskGroup | None = None
        self._retired: set[str] = set()
        """Streams no longer expected (their contract stopped trading)."""
        self._retired_slots: set[str] = set()
        """Connections whose every stream is retired: closed, never reconnected."""
        self._streams: dict[str, StreamStats] = {
            s: StreamStats(p.name, cadence_of(venue.name, s)) for p in plans for s in p.streams
        }
        self._aliases: dict[str, str] = {}
        """Received stream name → planned name, when the venue's spelling differs."""
        self._marks = HighWaterMarks()
        self._stopping = False
        self._stop: asyncio.Future[None] | None = None
        self._running = False
        self._finished = asyncio.Event()
        self.parse_errors = 0
        self.duplicates = 0
        self.id_resets = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run every planned connection until :meth:`close`. Raises only a fatal error."""
        if self._stopping:
            return
        if self._running:
            raise RuntimeError("StreamsProducer.run() is already running")
        self._running = True
        self._finished.clear()
        self._stop = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.TaskGroup() as tg:
                # Kept for add(): connections planned later join the same group.
                self._group = tg
                for slot in list(self._slots):
                    tg.create_task(self._run_slot(slot), name=f"streams:{slot.plan.name}")
                # Held until close(): with every connection retired the group must stay open,
                # or a contract listed later would get a connection no task runs.
                tg.create_task(self._until_stopped(), name="streams:open")
        except BaseExceptionGroup as group:
            # Only fatal errors reach the group; surface the first one as itself.
            fatal = next((e for e in group.exceptions if isinstance(e, Exception)), None)
            if fatal is None:
                raise
            raise fatal from group
        finally:
            self._group = None
            self._running = False
            self._finished.set()

    async def _until_stopped(self) -> None:
        await asyncio.shield(self._stop_future())

    async def close(self) -> None:
        """Stop every connection and wait until :meth:`run` has returned. Idempotent.

        A batch already handed to ``emit`` is finished first; the caller bounds the wait.
        """
        self._stopping = True
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)
        lives = [lv for s in self._slots for lv in (s.primary, s.candidate) if lv is not None]
        # Closing the sockets wakes the readers; the controllers then see the stop and return.
        await asyncio.gather(*(lv.ws.close() for lv in lives), return_exceptions=True)
        if self._running:
            await self._finished.wait()

    # -- a contract set that changes --------------------------------------------------------------

    def add(self, plans: Sequence[ConnectionPlan]) -> list[str]:
        """Open a new connection for each of ``plans`` (streams of contracts listed during the
        run). A name already taken gets the next free index of its route. Returns, per plan, the
        name of the connection that carries it.

        A stream retired earlier (its contract delisted) whose connection is still open (it
        carries other streams) is still subscribed there: that connection expects it again and
        no new socket subscribes to it, so one connection carries each stream. A plan whose every
        stream is adopted so opens nothing (its name is the adopting connection's)."""
        if self._stopping:
            return []
        taken = {s.plan.name for s in self._slots}
        names: list[str] = []
        for plan in plans:
            adopted = self._adopt(plan.streams)
            fresh = tuple(s for s in plan.streams if s not in adopted)
            if not fresh:
                names.append(next(iter(adopted.values())))
                continue
            if len(fresh) < len(plan.streams):
                kept = {stream_symbol(s) for s in fresh}
                natives = tuple(n for n in plan.natives if n.lower() in kept)
                plan = dataclasses.replace(plan, streams=fresh, natives=natives)  # noqa: PLW2901 - the narrowed plan
            if plan.name in taken:
                plan = dataclasses.replace(plan, name=_free_name(plan.name, taken))  # noqa: PLW2901 - the renamed plan
            taken.add(plan.name)
            slot = Slot(plan, self._ws_url, self._settings, self._venue.name)
            self._slots.append(slot)
            for stream in plan.streams:
                self._retired.discard(stream)
                self._streams[stream] = StreamStats(plan.name, cadence_of(self._venue.name, stream))
            if self._group is not None:
                self._group.create_task(self._run_slot(slot), name=f"streams:{plan.name}")
            names.append(plan.name)
            log.info("%s planned: %d stream(s) of %d new contract(s)", plan.name, len(plan.streams),
                     len(plan.natives))  # fmt: skip
        return names

    def _adopt(self, streams: Sequence[str]) -> dict[str, str]:
        """Retired ``streams`` still subscribed on an open connection: expected there again.
        Returns stream → the connection that carries it."""
        adopted: dict[str, str] = {}
        for slot in self._slots:
            name = slot.plan.name
            if name in self._retired_slots:
                continue
            for stream in streams:
                if stream in self._retired and stream in slot.plan.streams and stream not in adopted:
                    self._retired.discard(stream)
                    self._streams[stream] = StreamStats(name, cadence_of(self._venue.name, stream))
                    adopted[stream] = name
                    log.info("%s: %s expected again (still subscribed there)", name, stream)
        return adopted

    async def retire(self, natives: Iterable[str]) -> list[str]:
        """Stop expecting every stream of ``natives`` (native symbols). A connection left with no
        expected stream is closed for good (no reconnect, no ``DISCONNECTED`` event); any other
        connection goes on as it is. Returns the names of the connections closed."""
        lower = {n.lower() for n in natives}
        gone = {name for name in self._streams if (stream_symbol(name) or "") in lower}
        gone.update(a for a, planned in self._aliases.items() if planned in gone)
        self._retired |= gone
        closed: list[str] = []
        for slot in self._slots:
            name = slot.plan.name
            if name in self._retired_slots or not all(s in self._retired for s in slot.plan.streams):
                continue
            self._retired_slots.add(name)
            closed.append(name)
            # Closing the sockets wakes the controller, which sees the retirement and returns.
            for lv in (slot.primary, slot.candidate):
                if lv is not None:
                    lv.end_reason = lv.end_reason or "retired"
                    await lv.ws.close()
            slot.poke()
            log.info("%s closed: every stream it carried is retired", name)
        return closed

    # -- one planned connection -----------------------------------------------------------------

    async def _run_slot(self, slot: Slot) -> None:
        name = slot.plan.name
        graceful = False
        try:
            while not self._stopping and name not in self._retired_slots:
                if slot.connects or slot.connect_failures:
                    # At once only right after a serverShutdown notice (not hours later).
                    fresh = time.monotonic() - slot.last_shutdown < SHUTDOWN_REPEAT_S * 6
                    delay = 0.0 if slot.immediate and fresh else slot.backoff.next_delay()
                    slot.immediate = False
                    if delay > 0:
                        slot.state = SlotState.BACKOFF
                        await asyncio.wait({self._stop_future()}, timeout=delay)
                        if self._stopped():
                            break
                slot.state = SlotState.CONNECTING
                try:
                    live = await self._open(slot, candidate=False)
                except Exception as exc:
                    if not classify(exc):
                        raise _fatal(name, exc) from exc
                    self._connect_failed(slot, exc)
                    continue
                if live is None:
                    break
                reason = await self._serve(slot, live)
                if self._stopped() or name in self._retired_slots:
                    break
                slot.reconnects += 1
                slot.reasons[reason] = slot.reasons.get(reason, 0) + 1
                quiet = reason in ("close 1000", "close 1001", "server_shutdown")
                detail = f": {slot.last_error}" if reason.startswith("error") else ""
                level = logging.INFO if quiet else logging.WARNING
                log.log(level, "%s disconnected (%s%s); reconnecting", name, reason, detail)
                self._event(Kind.DISCONNECTED, slot, reason=reason)
            graceful = True
        finally:
            slot.state = SlotState.CLOSED
            # On a clean stop a reader may finish the batch it is emitting; on an error or a
            # cancellation it is cancelled.
            for lv in (slot.candidate, slot.primary):
                if lv is not None:
                    await self._close_live(lv, cancel=not graceful)

    def _connect_failed(self, slot: Slot, exc: Exception) -> None:
        slot.connect_failures += 1
        slot.failures_in_row += 1
        slot.last_error = str(exc)
        # The first failure of an episode is the transition worth a warning; the rest are counted
        # (stats) and summarised when the connection comes back.
        level = logging.WARNING if slot.failures_in_row == 1 else logging.DEBUG
        log.log(level, "%s: connect failed (%s); retrying with backoff", slot.plan.name, exc)

    async def _open(self, slot: Slot, *, candidate: bool) -> Live | None:
        """Connect and start the reader. ``None`` when stopped while connecting."""
        ws = await self._connect(slot)
        if ws is None:
            return None
        live = Live(ws, slot.plan.streams, candidate=candidate)
        slot.connects += 1
        if candidate:
            slot.candidate = live
        else:
            slot.primary = live
            slot.state = SlotState.CONNECTED
            retried = f" after {slot.failures_in_row} failed attempt(s)" if slot.failures_in_row else ""
            slot.failures_in_row = 0
            log.info(
                "%s connected: %d stream(s) on %s%s",
                slot.plan.name,
                len(slot.plan.streams),
                slot.source,
                retried,
            )
            self._event(Kind.CONNECTED, slot)
        live.reader = asyncio.create_task(self._read(slot, live), name=f"streams-reader:{slot.plan.name}")
        return live

    async def _connect(self, slot: Slot) -> WsConnection | None:
        stop = self._stop_future()
        task = asyncio.ensure_future(self._transport.connect(slot.url, self._settings.connect_timeout_s))
        waits: set[asyncio.Future[Any]] = {task, stop}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await _abandon_connect(task)
            raise
        if not task.done():
            await _abandon_connect(task)
            return None
        conn = task.result()  # raises the connect error
        if self._stopped():
            await conn.close()
            return None
        return conn

    async def _serve(self, slot: Slot, primary: Live) -> str:
        """Supervise ``primary`` (and its rotations) until the current socket ends; return why.

        Every socket it owns is closed when it returns.
        """
        slot.rotate_at = primary.connected + self._settings.rotate_after_s
        graceful = False
        try:
            while True:
                reader = primary.reader
                assert reader is not None
                if reader.done():
                    reason = self._end_reason(slot, primary)
                    heir = await self._heir(slot, primary, reason)
                    if heir is not None:
                        primary = heir
                        continue
                    graceful = True
                    return reason
                if self._stopped() or slot.plan.name in self._retired_slots:
                    graceful = True
                    return "closed"
                now = time.monotonic()
                if await self._watchdogs(slot, primary, now):
                    continue
                promoted = await self._rotation_step(slot, primary, now)
                if promoted is not None:
                    primary = promoted
                    continue
                await self._sleep_until_due(slot, primary, reader, now)
        finally:
            opening, slot.opening = slot.opening, None
            if opening is not None:
                opening.cancel()
                await asyncio.wait({opening})
            for lv in (slot.candidate, slot.primary):
                if lv is not None:
                    await self._close_live(lv, cancel=not graceful)
            slot.candidate = None

    async def _watchdogs(self, slot: Slot, primary: Live, now: float) -> bool:
        """Stale and first-frame checks. ``True`` when the primary was closed as stale."""
        st = self._settings
        if primary.emitting:
            # Back-pressure: the reader waits for the bus, frames wait in the socket. Not a stall.
            primary.busy_at = now
        elif primary.end_reason is None and now - primary.heard_at() >= slot.stale_after_s:
            quiet_for = now - primary.heard_at()
            primary.end_reason = "stale"
            log.warning("%s stale: no frame for %.1f s; reconnecting", slot.plan.name, quiet_for)
            self._event(Kind.STALE, slot, reason=f"no frame for {quiet_for:.1f} s")
            await primary.ws.close()
            return True
        if not primary.silence_checked and now >= primary.connected + st.first_frame_deadline_s:
            primary.silence_checked = True
            self._report_silent(slot, primary)
        return False

    async def _rotation_step(self, slot: Slot, primary: Live, now: float) -> Live | None:
        """Advance a make-before-break rotation; the new primary once it has taken over."""
        if slot.opening is None and slot.candidate is None and now >= slot.rotate_at:
            slot.state = SlotState.ROTATING
            slot.opening = asyncio.create_task(self._open(slot, candidate=True))
        if slot.opening is not None and slot.opening.done():
            task, slot.opening = slot.opening, None
            try:
                task.result()
            except Exception as exc:
                if not classify(exc):
                    raise _fatal(slot.plan.name, exc) from exc
                self._rotation_failed(slot, primary, f"connect failed: {exc}")
        cand = slot.candidate
        if cand is None:
            return None
        assert cand.reader is not None
        # The hand-over deadline reuses the first-frame deadline: a socket that has not proven
        # itself by then is not going to.
        handover_by = cand.connected + self._settings.first_frame_deadline_s
        if cand.reader.done() or cand.end_reason is not None:
            # Ended, or ending (its own serverShutdown: the reader waits out the close handshake).
            reason = self._end_reason(slot, cand) if cand.reader.done() else cand.end_reason
            await self._close_live(cand, cancel=True)
            slot.candidate = None
            self._rotation_failed(slot, primary, f"new socket ended ({reason})")
        elif cand.handover_ready(primary) or (cand.data_seen and (now >= handover_by or cand.overfull())):
            await self._promote(slot, primary, cand)
            slot.rotate_at = cand.connected + self._settings.rotate_after_s
            return cand
        elif now >= handover_by:
            await self._close_live(cand)
            slot.candidate = None
            self._rotation_failed(slot, primary, "new socket delivered no data")
        return None

    async def _sleep_until_due(
        self, slot: Slot, primary: Live, reader: asyncio.Task[None], now: float
    ) -> None:
        """Sleep until the nearest deadline, the reader ending, a connect finishing or a stop."""
        st = self._settings
        wake = primary.heard_at() + slot.stale_after_s
        if not primary.silence_checked:
            wake = min(wake, primary.connected + st.first_frame_deadline_s)
        if slot.candidate is not None or slot.opening is not None:
            wake = min(wake, now + ROTATION_POLL_S)
        else:
            wake = min(wake, slot.rotate_at)
        waits: set[asyncio.Future[Any]] = {reader, self._stop_future(), slot.wake_future()}
        if slot.opening is not None:
            waits.add(slot.opening)
        timeout = max(0.0, wake - time.monotonic())
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)

    def _rotation_failed(self, slot: Slot, primary: Live, why: str) -> None:
        delay = slot.rotate_backoff.next_delay()
        slot.state = SlotState.STREAMING if primary.data_seen else SlotState.CONNECTED
        slot.rotate_at = time.monotonic() + delay
        log.warning("%s: rotation attempt failed (%s); keeping the current socket, retrying in %.1f s",
                    slot.plan.name, why, delay)  # fmt: skip

    async def _heir(self, slot: Slot, old: Live, reason: str) -> Live | None:
        """The primary ended (``reason``) while a rotation was under way: the new socket, once up,
        takes over instead of a reconnect from scratch. ``None`` when there is none."""
        opening = slot.opening
        if self._stopped() or (opening is None and slot.candidate is None):
            return None
        if opening is not None:
            # Most likely connected moments from now: wait for it rather than open another socket.
            waits: set[asyncio.Future[Any]] = {opening, self._stop_future()}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if not opening.done():
                return None  # stopping: _serve's cleanup cancels it
            slot.opening = None
            exc = None if opening.cancelled() else opening.exception()
            if exc is not None and not classify(exc):
                raise _fatal(slot.plan.name, exc) from exc
        new = slot.candidate
        if new is None or new.reader is None or new.reader.done() or new.handover is None:
            return None
        if new.end_reason is not None:  # it got its own serverShutdown: no heir
            return None
        proven = new.data_seen and new.handover.ready()
        await self._promote(slot, old, new, old_ended=None if proven else reason)
        slot.rotate_at = new.connected + self._settings.rotate_after_s
        return new

    async def _promote(self, slot: Slot, old: Live, new: Live, *, old_ended: str | None = None) -> None:
        """Make ``new`` the primary. ``old_ended``: the old socket already ended, for that reason,
        before overlap was proven, so this counts as a reconnect (books resync) not a rotation."""
        handover = new.handover
        assert handover is not None
        unproven = handover.unproven() if new.data_seen else max(1, handover.unproven())
        # Close the old socket first, still as the primary: the frames it has read are admitted
        # and may release what the new socket buffered.
        if old.end_reason is None:
            old.end_reason = "rotated"
        await self._close_live(old)
        async with slot.emit_lock:
            if old_ended is not None:
                slot.reconnects += 1
                slot.reasons[old_ended] = slot.reasons.get(old_ended, 0) + 1
                log.warning("%s disconnected (%s) mid-rotation; the new socket takes over, %d key(s) "
                            "without proven overlap", slot.plan.name, old_ended, unproven)  # fmt: skip
                self._event(Kind.DISCONNECTED, slot, reason=old_ended)
            specs = {name: st.spec for name, st in self._streams.items() if st.spec is not None}
            kept, dropped = self._marks.release(handover, specs)
            for name, n in dropped.items():
                self._streams[name].duplicates += n
                self.duplicates += n
            if self._marks.reset_log:
                self._id_resets()
            new.handover = None
            slot.primary, slot.candidate = new, None
            for i in range(0, len(kept), RELEASE_BATCH):
                await self._emit(kept[i : i + RELEASE_BATCH])
        slot.rotate_backoff.reset()
        slot.immediate = False
        slot.state = SlotState.STREAMING if new.data_seen else SlotState.CONNECTED
        if old_ended is not None:
            self._event(Kind.CONNECTED, slot)
            if new.data_seen:
                self._event(Kind.DATA_FLOWING, slot)
            return
        slot.rotations += 1
        age = new.connected - old.connected
        why = " (serverShutdown)" if old.shutdown_notice else ""
        extra = f"; {unproven} key(s) switched without proven overlap" if unproven else ""
        log.info("%s rotated to a new socket after %.0f s%s%s", slot.plan.name, age, why, extra)
        self._event(Kind.ROTATED, slot, reason=f"after {age:.0f} s{why}{extra}")

    def _end_reason(self, slot: Slot, live: Live) -> str:
        """Why ``live``'s reader ended; raises when it ended on a fatal error."""
        assert live.reader is not None
        assert live.reader.done()
        exc = None if live.reader.cancelled() else live.reader.exception()
        if exc is not None:
            if not classify(exc):
                raise _fatal(slot.plan.name, exc) from exc
            slot.last_error = str(exc)
            live.end_reason = live.end_reason or f"error {type(exc).__name__}"
        return live.end_reason or _close_reason(live.ws.close_code)

    async def _close_live(self, live: Live, *, cancel: bool = False) -> None:
        """Close the socket and wait for its reader (which finishes a batch in flight first,
        unless ``cancel``)."""
        await live.ws.close()
        reader = live.reader
        if reader is None:
            return
        if cancel and not reader.done():
            reader.cancel()
        # asyncio.wait does not raise the reader's error; only our own cancellation propagates.
        await asyncio.wait({reader})
        if not reader.cancelled() and (exc := reader.exception()) is not None:
            log.debug("reader of a closed socket ended with %r", exc)

    def _stopped(self) -> bool:
        # A method, not the attribute: the flag flips while this task awaits.
        return self._stopping

    def _stop_future(self) -> asyncio.Future[None]:
        assert self._stop is not None
        return self._stop

    # -- the hot path ---------------------------------------------------------------------------

    async def _read(self, slot: Slot, live: Live) -> None:
        """Read frames until the socket ends; emit their records in batches.

        Records of consecutive frames are gathered while the transport already holds the next
        frame (``ws.ready()``) and emitted together when it does not, or at
        :data:`EMIT_BATCH` records: one bus hop per burst instead of one per frame (a per-frame
        hop cost more than parsing). The reader therefore only suspends in ``recv`` with
        nothing pending, so no admitted record waits on the network or is lost to a cancel.
        From the first pending record to its emission the slot's emit lock is held: during a
        rotation the other socket's reader cannot emit in between (admission order is kept).
        """
        ws = live.ws
        venue = self._venue.name
        raw = self._raw
        # With raw dumps on, each frame's exact bytes and then its records go out as two batches
        # per frame, as a replayable dump has always been written (and tests pin).
        ready = _never_ready if raw else getattr(ws, "ready", _never_ready)
        lock = slot.emit_lock
        emit = self._emit
        pending: list[AnyRecord] = []
        holding = False
        try:
            while True:
                if pending and (len(pending) >= EMIT_BATCH or not ready()):
                    batch, pending = pending, []
                    live.emitting = True
                    await emit(batch)
                    live.emitting = False
                    lock.release()
                    holding = False
                frame = await ws.recv()
                if frame is None:
                    if live.end_reason is None:
                        live.end_reason = _close_reason(ws.close_code)
                    if pending:  # not expected (ready() said a data frame was queued)
                        batch, pending = pending, []
                        await emit(batch)
                    return
                recv_ts = time.time_ns()
                if not holding:
                    live.emitting = True  # the other reader of a rotation may hold the lock
                    await lock.acquire()
                    live.emitting = False
                    holding = True
                if raw:
                    live.emitting = True
                    await emit([RawFrame(venue=venue, source=slot.source, recv_ts=recv_ts, data=frame)])
                    live.emitting = False
                if self._frame(slot, live, frame, recv_ts, pending):
                    # serverShutdown on a rotation candidate: what was read goes out before the
                    # socket closes.
                    if pending:
                        batch, pending = pending, []
                        await emit(batch)
                    lock.release()
                    holding = False
                    await ws.close()
                    return
                if not pending:
                    lock.release()
                    holding = False
        finally:
            if holding:
                lock.release()

    def _frame(self, slot: Slot, live: Live, frame: bytes, recv_ts: int, out: list[AnyRecord]) -> bool:
        """Parse one frame and append its admitted records to ``out``.

        Returns ``True`` when the socket must close now (``serverShutdown`` on a rotation candidate).
        """
        now = time.monotonic()
        live.last_frame = slot.last_frame = now
        slot.frames += 1
        slot.bytes += len(frame)
        try:
            stream, records = self._parser.parse(frame, recv_ts)
        except ParseError as exc:
            self._parse_error(slot, exc.stream, exc)
            return False
        except Exception as exc:  # noqa: BLE001 - a parser bug must not cost the connection; _parse_error logs its traceback once per episode
            self._parse_error(slot, None, exc)
            return False
        if not stream:
            return False
        if stream == SERVER_SHUTDOWN_STREAM:
            return self._server_shutdown(slot, live)
        st = self._streams.get(stream)
        if st is None:
            stream = self._canonical(slot, stream)
            st = self._streams.get(stream) or self._new_stream(slot, stream)
        st.frames += 1
        st.last_frame = now
        if live.unseen or not live.data_seen or st.errors_in_episode or slot.errors_in_episode:
            self._data_transitions(slot, live, stream, st)
        if st.first_frame_ts is None:
            st.first_frame_ts = recv_ts
        if records:
            st.records += len(records)
            kept = self._admit(slot, live, stream, st, records)
            if kept:
                out.extend(kept)
        return False

    def _admit(
        self, slot: Slot, live: Live, stream: str, st: StreamStats, records: list[Record]
    ) -> list[Record]:
        """Drop records at or below their (stream, native) high-water mark; advance the marks."""
        spec = st.spec
        if spec is None:
            spec = st.spec = channel_spec(self._venue.name, type(records[0]))
        cand = slot.candidate
        rival = cand.handover if cand is not None and cand is not live else None
        marks = self._marks
        kept, dropped = marks.admit(
            stream, records, spec, source=live.source, candidate=live.handover, rival=rival
        )
        if dropped:
            st.duplicates += dropped
            self.duplicates += dropped
        if marks.reset_log:
            self._id_resets()
        return kept

    def _id_resets(self) -> None:
        """Count and log the id restarts the marks just saw (their gap records are emitted)."""
        now = time.monotonic()
        for stream, gap in self._marks.reset_log:
            st = self._streams.get(stream)
            self.id_resets += 1
            level = logging.WARNING
            if st is not None:
                st.id_resets += 1
                if now - st.id_reset_at < ID_RESET_LOG_S:
                    level = logging.DEBUG
                st.id_reset_at = now
            log.log(level, "%s: %s; records kept, id_reset gap written", gap.native, gap.reason)
        self._marks.reset_log.clear()

    def _canonical(self, slot: Slot, stream: str) -> str:
        """The planned name of a stream the venue spells differently (same symbol and kind, another
        speed suffix: a replay of ``btcusdt@depth@0ms`` answering ``btcusdt@depth@100ms``)."""
        known = self._aliases.get(stream)
        if known is not None:
            return known
        want = (stream_symbol(stream), stream_kind(stream))
        for planned in slot.plan.streams:
            if (stream_symbol(planned), stream_kind(planned)) == want:
                self._aliases[stream] = planned
                return planned
        return stream

    def _new_stream(self, slot: Slot, stream: str) -> StreamStats:
        # A stream the plan did not name (the venue's spelling differs): counted, still emitted.
        st = self._streams[stream] = StreamStats(slot.plan.name, cadence_of(self._venue.name, stream))
        return st

    def _data_transitions(self, slot: Slot, live: Live, stream: str, st: StreamStats) -> None:
        """Bookkeeping for the rare data frames that change a state (first frame, episode end)."""
        if st.errors_in_episode:
            log.info("%s parses again after %d bad frame(s)", stream, st.errors_in_episode)
            st.errors_in_episode = 0
        if slot.errors_in_episode:
            log.info("%s: frames parse again after %d bad frame(s)", slot.plan.name, slot.errors_in_episode)
            slot.errors_in_episode = 0
        if live.unseen:
            live.unseen.discard(stream)
        if not live.data_seen:
            self._first_data(slot, live)

    def _first_data(self, slot: Slot, live: Live) -> None:
        live.data_seen = True
        if live.handover is not None:
            return
        # Only data proves the subscription works (a wrong route is acked and then silent).
        slot.backoff.reset()
        slot.state = SlotState.STREAMING
        log.debug("%s: data flowing", slot.plan.name)
        self._event(Kind.DATA_FLOWING, slot)

    def _parse_error(self, slot: Slot, stream: str | None, exc: Exception) -> None:
        self.parse_errors += 1
        st = self._streams.get(stream) if stream else None
        if st is not None:
            st.parse_errors += 1
            st.errors_in_episode += 1
            first = st.errors_in_episode == 1
        else:
            slot.parse_errors += 1
            slot.errors_in_episode += 1
            first = slot.errors_in_episode == 1
        if not first:
            return
        where = stream or f"{slot.plan.name} (stream unknown)"
        if isinstance(exc, ParseError):
            log.warning("bad frame on %s: %s; counting until a good frame", where, exc)
        else:
            log.error("parser failed on %s; counting until a good frame", where, exc_info=exc)

    def _server_shutdown(self, slot: Slot, live: Live) -> bool:
        """The venue will close this socket. A primary keeps reading while a make-before-break
        rotation starts at once (what the venue sends behind the notice is still read, and the new
        socket's overlap is dropped by id); a rotation candidate is closed (the attempt is retried).
        Returns ``True`` when ``live`` must close now."""
        if live.handover is not None:
            live.end_reason = "server_shutdown"
            return True
        now = time.monotonic()
        # At once, as Binance asks; but a venue repeating the notice on every new socket gets the
        # normal backoff, or the IP's connection-attempt budget would burn.
        repeated = now - slot.last_shutdown < SHUTDOWN_REPEAT_S
        slot.last_shutdown = now
        live.shutdown_notice = True
        slot.immediate = not repeated  # should this socket end before a new one took over
        if slot.candidate is None and slot.opening is None:
            slot.rotate_at = min(
                slot.rotate_at, now + (slot.rotate_backoff.next_delay() if repeated else 0.0)
            )
            slot.poke()
        log.info("%s: venue announced serverShutdown; switching to a new socket%s", slot.plan.name,
                 " with backoff (repeated notice)" if repeated else " now")  # fmt: skip
        self._event(Kind.SERVER_SHUTDOWN, slot, reason="serverShutdown")
        return False

    def _report_silent(self, slot: Slot, live: Live) -> None:
        silent = tuple(s for s in slot.plan.streams if s in live.unseen and s not in self._retired)
        slot.silent = silent
        if not silent:
            return
        by_lower = {n.lower(): n for n in slot.plan.natives}
        natives = tuple(dict.fromkeys(n for s in silent if (n := by_lower.get(stream_symbol(s) or ""))))
        deadline = self._settings.first_frame_deadline_s
        log.warning("%s: %d stream(s) silent %.0f s after connecting: %s",
                    slot.plan.name, len(silent), deadline, ", ".join(silent))  # fmt: skip
        self._event(Kind.STREAM_SILENT, slot, streams=silent, natives=natives)

    def _event(
        self,
        kind: ConnectionEventKind,
        slot: Slot,
        *,
        streams: tuple[str, ...] | None = None,
        natives: tuple[str, ...] | None = None,
        reason: str = "",
    ) -> None:
        if self._on_event is None:
            return
        plan = slot.plan
        ev = ConnectionEvent(
            kind,
            plan.name,
            plan.streams if streams is None else streams,
            plan.natives if natives is None else natives,
            time.time_ns(),
            reason,
        )
        try:
            self._on_event(ev)
        except Exception:
            log.exception("connection event handler failed on %s %s", plan.name, kind.value)

    # -- observation ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A snapshot: per connection, per stream, and totals (``reconnects``, ``parse_errors``)."""
        now = time.monotonic()
        retired = self._retired
        return {
            "connections": {
                s.plan.name: s.snapshot(now) for s in self._slots if s.plan.name not in self._retired_slots
            },
            "streams": {name: st.snapshot(now) for name, st in self._streams.items() if name not in retired},
            "retired_streams": sorted(retired & self._streams.keys()),
            "retired_connections": sorted(self._retired_slots),
            "reconnects": sum(s.reconnects for s in self._slots),
            "parse_errors": self.parse_errors,
            "duplicates": self.duplicates,
            "id_resets": self.id_resets,
            "frames": sum(s.frames for s in self._slots),
        }


def _free_name(name: str, taken: set[str]) -> str:
    """``<venue>/<route>#<n>`` with the lowest index not in ``taken``."""
    prefix = name.rpartition("#")[0]
    index = 0
    while f"{prefix}#{index}" in taken:
        index += 1
    return f"{prefix}#{index}"


def _never_ready() -> bool:
    return False


def _fatal(name: str, exc: BaseException) -> TransportError:
    """A non-retriable error that names the connection (raised ``from`` the original)."""
    return TransportError(f"{name}: {exc}", url=getattr(exc, "url", None), retriable=False)


async def _abandon_connect(task: asyncio.Future[WsConnection]) -> None:
    """Cancel a connect in progress; close the socket if it won the race anyway."""
    task.cancel()
    await asyncio.wait({task})
    if task.done() and not task.cancelled() and task.exception() is None:
        await task.result().close()
