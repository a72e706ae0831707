"""The websocket producer: one supervised connection per :class:`ConnectionPlan`.

Each planned connection is a *slot* with one controller task (in an ``asyncio.TaskGroup``) and
one reader task per open socket. The controller reconnects inside itself — capped, jittered
backoff that resets only once data flows — so the group only ever sees fatal errors. It also
runs the watchdogs without per-frame timers: it sleeps until the nearest deadline (staleness,
first-frame deadline, rotation) and re-checks.

Frames: ``recv_ts`` is read once per frame; with ``raw`` the exact bytes are emitted first as a
:class:`~ingestd.records.RawFrame`; the parser's records are emitted as one batch per frame.
Before emission every record passes a per-``(stream, native)`` high-water mark of its id
(``final_update_id``, ``update_id``, ``trade_id``, ``agg_id``, kline ``(open_time, exchange_ts)``,
else ``exchange_ts``): a record at or below the mark is a duplicate, dropped and counted. The
marks outlive connections, so a venue that replays after a reconnect adds no duplicates.

Rotation (make-before-break, before Binance's 24 h cut): a second socket is opened on the same
streams. Until it has *caught up* on a key (the primary has emitted up to what the new socket
has delivered for that key), its records are held back: the primary still delivers them, so
nothing is lost however the two sockets race. Once the new socket has data, every key it has
delivered is caught up and the primary has read a frame that arrived after the new socket was
open, emission switches and the old socket is closed. One ``ROTATED`` event replaces the
``DISCONNECTED``/``CONNECTED`` pair: no data was lost, books need not resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any, Final, Protocol

from ingestd.backoff import Backoff, classify
from ingestd.config import StreamSettings
from ingestd.errors import ParseError, TransportError
from ingestd.producers.events import ConnectionEvent, ConnectionEventKind, Emit, OnConnectionEvent
from ingestd.producers.plan import ConnectionPlan, plan_connections
from ingestd.producers.transport import AiohttpTransport, WsConnection, WsTransport
from ingestd.records import RawFrame, Record
from ingestd.venues.binance.endpoints import VenueSpec, stream_symbol

__all__ = ["ConnectionPlan", "FrameParserLike", "SlotState", "StreamsProducer", "plan_connections"]

log = logging.getLogger("ingestd.streams")

SERVER_SHUTDOWN_STREAM: Final = "!serverShutdown"
ROTATION_POLL_S: Final = 0.05
"""How often the controller re-checks a rotation's hand-over conditions (only while rotating)."""

Kind = ConnectionEventKind


class FrameParserLike(Protocol):
    """What the producer needs from a venue parser (``ingestd.venues.binance.parse.FrameParser``)."""

    def parse(self, frame: bytes | str, recv_ts: int) -> tuple[str, list[Record]]:
        """``(stream, records)`` of one combined-stream frame; ``("", [])`` for a control reply,
        ``("!serverShutdown", [])`` for the shutdown notice. Raises ``ParseError`` on bad input."""


class SlotState(enum.StrEnum):
    """Where one planned connection is."""

    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    """Open and subscribed; no data yet."""
    STREAMING = "streaming"
    ROTATING = "rotating"
    BACKOFF = "backoff"
    CLOSED = "closed"


def _kline_key(r: Any) -> tuple[int, int] | None:
    return None if r.exchange_ts is None else (r.open_time, r.exchange_ts)


_KEYS: Final[dict[str, Callable[[Any], Any]]] = {
    "depth_diff": attrgetter("final_update_id"),
    "partial_depth": attrgetter("final_update_id"),
    "book_ticker": attrgetter("update_id"),
    "trade": attrgetter("trade_id"),
    "agg_trade": attrgetter("agg_id"),
    "kline": _kline_key,
}
_EXCHANGE_TS: Final = attrgetter("exchange_ts")


class _StreamStats:
    __slots__ = (
        "connection", "duplicates", "errors_in_episode", "first_frame_ts", "frames",
        "keyfn", "last_frame", "parse_errors", "records",
    )  # fmt: skip

    def __init__(self, connection: str) -> None:
        self.connection = connection
        self.frames = 0
        self.records = 0
        self.parse_errors = 0
        self.duplicates = 0
        self.errors_in_episode = 0
        self.first_frame_ts: int | None = None
        self.last_frame = 0.0
        self.keyfn: Callable[[Any], Any] | None = None


class _Live:
    """One open socket of a slot: the primary, or a rotation candidate."""

    __slots__ = (
        "candidate", "caught", "connected", "data_seen", "end_reason", "held", "last_frame",
        "needed", "reader", "silence_checked", "unseen", "ws",
    )  # fmt: skip

    def __init__(self, ws: WsConnection, streams: Sequence[str], *, candidate: bool) -> None:
        self.ws = ws
        self.candidate = candidate
        self.connected = time.monotonic()
        self.last_frame = self.connected
        self.data_seen = False
        self.unseen = set(streams)
        self.silence_checked = False
        self.end_reason: str | None = None
        self.reader: asyncio.Task[None] | None = None
        # Rotation hand-over, per (stream, native) key: the highest key held back (ahead of the
        # primary), keys proven to overlap, and keys the primary emitted that are not proven yet.
        self.held: dict[tuple[str, str], Any] = {}
        self.caught: set[tuple[str, str]] = set()
        self.needed: set[tuple[str, str]] = set()

    def handover_ready(self, primary: _Live) -> bool:
        """Every key either socket delivered is proven to overlap, and the primary has read a
        frame that arrived after this socket opened."""
        return self.data_seen and not self.held and not self.needed and primary.last_frame >= self.connected


class _Slot:
    """Everything about one planned connection that outlives its sockets."""

    def __init__(self, plan: ConnectionPlan, ws_url: str, settings: StreamSettings) -> None:
        self.plan = plan
        self.url = plan.url(ws_url)
        self.source = plan.source(ws_url)
        self.backoff = Backoff.from_settings(settings)
        self.rotate_backoff = Backoff.from_settings(settings)
        self.state = SlotState.IDLE
        self.primary: _Live | None = None
        self.candidate: _Live | None = None
        self.immediate = False
        self.emit_lock = asyncio.Lock()
        self.connects = 0
        self.reconnects = 0
        self.reasons: dict[str, int] = {}
        self.connect_failures = 0
        self.failures_in_row = 0
        self.last_error = ""
        self.rotations = 0
        self.frames = 0
        self.bytes = 0
        self.last_frame = 0.0
        self.parse_errors = 0
        self.errors_in_episode = 0
        self.silent: tuple[str, ...] = ()


def _close_reason(code: int | None) -> str:
    return "closed" if code is None else f"close {code}"


class StreamsProducer:
    """Runs the planned websockets and emits their records. ``await run()``; ``await close()``.

    ``emit`` receives one batch per frame (it may wait: back-pressure reaches the socket).
    ``on_event`` receives :class:`~ingestd.producers.events.ConnectionEvent` transitions.
    ``transport`` defaults to aiohttp with the venue's keepalive cadence.
    """

    def __init__(
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
        )
        self._slots = [_Slot(p, ws_url, settings) for p in plans]
        self._streams: dict[str, _StreamStats] = {s: _StreamStats(p.name) for p in plans for s in p.streams}
        self._hwm: dict[tuple[str, str], Any] = {}
        self._stopping = False
        self._stop: asyncio.Future[None] | None = None
        self._running = False
        self._finished = asyncio.Event()
        self.parse_errors = 0
        self.duplicates = 0

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
                for slot in self._slots:
                    tg.create_task(self._run_slot(slot), name=f"streams:{slot.plan.name}")
        except BaseExceptionGroup as group:
            # Only fatal errors reach the group; surface the first one as itself.
            fatal = next((e for e in group.exceptions if isinstance(e, Exception)), None)
            if fatal is None:
                raise
            raise fatal from group
        finally:
            self._running = False
            self._finished.set()

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

    # -- one planned connection -----------------------------------------------------------------

    async def _run_slot(self, slot: _Slot) -> None:
        name = slot.plan.name
        graceful = False
        try:
            while not self._stopping:
                if slot.connects or slot.connect_failures:
                    delay = 0.0 if slot.immediate else slot.backoff.next_delay()
                    slot.immediate = False
                    if delay > 0:
                        slot.state = SlotState.BACKOFF
                        await asyncio.wait({self._stop_future()}, timeout=delay)
                        if self._stopping:
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
                if self._stopping:
                    break
                slot.reconnects += 1
                slot.reasons[reason] = slot.reasons.get(reason, 0) + 1
                quiet = reason in ("close 1000", "close 1001", "server_shutdown")
                log.log(
                    logging.INFO if quiet else logging.WARNING,
                    "%s disconnected (%s); reconnecting",
                    name,
                    reason,
                )
                self._event(Kind.DISCONNECTED, slot, reason=reason)
            graceful = True
        finally:
            slot.state = SlotState.CLOSED
            # On a clean stop a reader may finish the batch it is emitting; on an error or a
            # cancellation it is cancelled.
            for lv in (slot.candidate, slot.primary):
                if lv is not None:
                    await self._close_live(lv, cancel=not graceful)

    def _connect_failed(self, slot: _Slot, exc: Exception) -> None:
        slot.connect_failures += 1
        slot.failures_in_row += 1
        slot.last_error = str(exc)
        # The first failure of an episode is the transition worth a warning; the rest are counted
        # (stats) and summarised when the connection comes back.
        level = logging.WARNING if slot.failures_in_row == 1 else logging.DEBUG
        log.log(level, "%s: connect failed (%s); retrying with backoff", slot.plan.name, exc)

    async def _open(self, slot: _Slot, *, candidate: bool) -> _Live | None:
        """Connect and start the reader. ``None`` when stopped while connecting."""
        ws = await self._connect(slot)
        if ws is None:
            return None
        live = _Live(ws, slot.plan.streams, candidate=candidate)
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

    async def _connect(self, slot: _Slot) -> WsConnection | None:
        stop = self._stop_future()
        task = asyncio.ensure_future(self._transport.connect(slot.url, self._settings.connect_timeout_s))
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await _abandon_connect(task)
            raise
        if not task.done():
            await _abandon_connect(task)
            return None
        conn = task.result()  # raises the connect error
        if self._stopping:
            await conn.close()
            return None
        return conn

    async def _serve(self, slot: _Slot, primary: _Live) -> str:
        """Supervise ``primary`` (and its rotations) until the current socket ends; return why.

        Every socket it owns is closed when it returns.
        """
        st = self._settings
        rotate_at = primary.connected + st.rotate_after_s
        opening: asyncio.Task[_Live | None] | None = None
        graceful = False
        try:
            while True:
                assert primary.reader is not None
                if primary.reader.done():
                    graceful = True
                    return self._end_reason(slot, primary)
                if self._stopping:
                    graceful = True
                    return "closed"
                now = time.monotonic()
                if primary.end_reason is None and now - primary.last_frame >= st.stale_after_s:
                    quiet_for = now - primary.last_frame
                    primary.end_reason = "stale"
                    log.warning("%s stale: no frame for %.1f s; reconnecting", slot.plan.name, quiet_for)
                    self._event(Kind.STALE, slot, reason=f"no frame for {quiet_for:.1f} s")
                    await primary.ws.close()
                    continue
                if not primary.silence_checked and now >= primary.connected + st.first_frame_deadline_s:
                    primary.silence_checked = True
                    self._report_silent(slot, primary)
                if opening is None and slot.candidate is None and now >= rotate_at:
                    slot.state = SlotState.ROTATING
                    opening = asyncio.create_task(self._open(slot, candidate=True))
                if opening is not None and opening.done():
                    task, opening = opening, None
                    try:
                        task.result()
                    except Exception as exc:
                        if not classify(exc):
                            raise _fatal(slot.plan.name, exc) from exc
                        rotate_at = self._rotation_failed(slot, primary, f"connect failed: {exc}")
                cand = slot.candidate
                if cand is not None:
                    assert cand.reader is not None
                    handover_by = cand.connected + st.first_frame_deadline_s
                    if cand.reader.done():
                        reason = self._end_reason(slot, cand)
                        await self._close_live(cand)
                        slot.candidate = None
                        rotate_at = self._rotation_failed(slot, primary, f"new socket ended ({reason})")
                    elif cand.handover_ready(primary) or (cand.data_seen and now >= handover_by):
                        await self._promote(slot, primary, cand)
                        primary = cand
                        rotate_at = primary.connected + st.rotate_after_s
                        continue
                    elif now >= handover_by:
                        await self._close_live(cand)
                        slot.candidate = None
                        rotate_at = self._rotation_failed(slot, primary, "new socket delivered no data")
                wake = primary.last_frame + st.stale_after_s
                if not primary.silence_checked:
                    wake = min(wake, primary.connected + st.first_frame_deadline_s)
                if slot.candidate is not None or opening is not None:
                    wake = min(wake, now + ROTATION_POLL_S)
                else:
                    wake = min(wake, rotate_at)
                waits: set[asyncio.Future[Any]] = {primary.reader, self._stop_future()}
                if opening is not None:
                    waits.add(opening)
                timeout = max(0.0, wake - time.monotonic())
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if opening is not None:
                opening.cancel()
                await asyncio.wait({opening})
            for lv in (slot.candidate, slot.primary):
                if lv is not None:
                    await self._close_live(lv, cancel=not graceful)
            slot.candidate = None

    def _rotation_failed(self, slot: _Slot, primary: _Live, why: str) -> float:
        delay = slot.rotate_backoff.next_delay()
        slot.state = SlotState.STREAMING if primary.data_seen else SlotState.CONNECTED
        log.warning("%s: rotation attempt failed (%s); keeping the current socket, retrying in %.1f s",
                    slot.plan.name, why, delay)  # fmt: skip
        return time.monotonic() + delay

    async def _promote(self, slot: _Slot, old: _Live, new: _Live) -> None:
        unproven = len(new.needed | new.held.keys())
        new.candidate = False
        slot.primary, slot.candidate = new, None
        old.end_reason = "rotated"
        await self._close_live(old)
        slot.rotations += 1
        slot.rotate_backoff.reset()
        slot.state = SlotState.STREAMING
        age = new.connected - old.connected
        extra = f"; {unproven} key(s) switched without proven overlap" if unproven else ""
        log.info("%s rotated to a new socket after %.0f s%s", slot.plan.name, age, extra)
        self._event(Kind.ROTATED, slot, reason=f"after {age:.0f} s{extra}")

    def _end_reason(self, slot: _Slot, live: _Live) -> str:
        """Why ``live``'s reader ended; raises when it ended on a fatal error."""
        assert live.reader is not None and live.reader.done()
        exc = None if live.reader.cancelled() else live.reader.exception()
        if exc is not None:
            if not classify(exc):
                raise _fatal(slot.plan.name, exc) from exc
            slot.last_error = str(exc)
            live.end_reason = live.end_reason or f"error {type(exc).__name__}"
        return live.end_reason or _close_reason(live.ws.close_code)

    async def _close_live(self, live: _Live, *, cancel: bool = False) -> None:
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

    def _stop_future(self) -> asyncio.Future[None]:
        assert self._stop is not None
        return self._stop

    # -- the hot path ---------------------------------------------------------------------------

    async def _read(self, slot: _Slot, live: _Live) -> None:
        ws = live.ws
        parser = self._parser
        emit = self._emit
        streams = self._streams
        venue = self._venue.name
        source = slot.source
        raw = self._raw
        while True:
            frame = await ws.recv()
            if frame is None:
                if live.end_reason is None:
                    live.end_reason = _close_reason(ws.close_code)
                return
            recv_ts = time.time_ns()
            now = time.monotonic()
            live.last_frame = slot.last_frame = now
            slot.frames += 1
            slot.bytes += len(frame)
            if raw:
                await emit([RawFrame(venue=venue, source=source, recv_ts=recv_ts, data=frame)])
            try:
                stream, records = parser.parse(frame, recv_ts)
            except ParseError as exc:
                self._parse_error(slot, exc.stream, exc)
                continue
            except Exception as exc:  # a parser bug must not cost the connection: counted, traced once
                self._parse_error(slot, None, exc)
                continue
            if not stream:
                continue
            if stream == SERVER_SHUTDOWN_STREAM:
                self._server_shutdown(slot, live)
                await ws.close()
                return
            st = streams.get(stream)
            if st is None:
                st = streams[stream] = _StreamStats(slot.plan.name)
            st.frames += 1
            st.last_frame = now
            if st.first_frame_ts is None:
                st.first_frame_ts = recv_ts
            if st.errors_in_episode:
                log.info("%s parses again after %d bad frame(s)", stream, st.errors_in_episode)
                st.errors_in_episode = 0
            if slot.errors_in_episode:
                log.info(
                    "%s: frames parse again after %d bad frame(s)", slot.plan.name, slot.errors_in_episode
                )
                slot.errors_in_episode = 0
            if live.unseen:
                live.unseen.discard(stream)
            if not live.data_seen:
                self._first_data(slot, live)
            if records:
                st.records += len(records)
                # The lock keeps emission in admission order when a rotation runs two readers.
                async with slot.emit_lock:
                    kept = self._admit(slot, live, stream, st, records)
                    if kept:
                        await emit(kept)

    def _admit(
        self, slot: _Slot, live: _Live, stream: str, st: _StreamStats, records: list[Record]
    ) -> list[Record]:
        """Drop records at or below their (stream, native) high-water mark; advance the marks."""
        keyfn = st.keyfn
        if keyfn is None:
            keyfn = st.keyfn = _KEYS.get(records[0].channel, _EXCHANGE_TS)
        hwm = self._hwm
        other = slot.candidate if not live.candidate else None
        kept: list[Record] = []
        dropped = 0
        for r in records:
            key = keyfn(r)
            if key is None:
                if live.candidate:
                    dropped += 1  # unkeyed: only the primary may emit it
                else:
                    kept.append(r)
                continue
            hk = (stream, r.native)
            prev = hwm.get(hk)
            if live.candidate and hk not in live.caught:
                if prev is not None and key <= prev:
                    # Overlap proven: from here on this socket continues the primary's sequence.
                    live.caught.add(hk)
                    live.held.pop(hk, None)
                    live.needed.discard(hk)
                else:
                    live.held[hk] = key  # ahead of the primary, which still delivers it
                dropped += 1
                continue
            if prev is not None and key <= prev:
                dropped += 1
                continue
            hwm[hk] = key
            kept.append(r)
            if other is not None and hk not in other.caught:
                # A rotation runs: the new socket may switch only once it has proven overlap on
                # every key the primary is still delivering.
                held = other.held.get(hk)
                if held is not None and key >= held:
                    del other.held[hk]
                    other.caught.add(hk)
                    other.needed.discard(hk)
                else:
                    other.needed.add(hk)
        if dropped:
            st.duplicates += dropped
            self.duplicates += dropped
        return kept

    def _first_data(self, slot: _Slot, live: _Live) -> None:
        live.data_seen = True
        if live.candidate:
            return
        # Only data proves the subscription works (a wrong route is acked and then silent).
        slot.backoff.reset()
        slot.state = SlotState.STREAMING
        log.debug("%s: data flowing", slot.plan.name)
        self._event(Kind.DATA_FLOWING, slot)

    def _parse_error(self, slot: _Slot, stream: str | None, exc: Exception) -> None:
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

    def _server_shutdown(self, slot: _Slot, live: _Live) -> None:
        if live.candidate:
            live.end_reason = "server_shutdown"
            return
        live.end_reason = "server_shutdown"
        slot.immediate = True
        log.info("%s: venue announced serverShutdown; reconnecting now", slot.plan.name)
        self._event(Kind.SERVER_SHUTDOWN, slot, reason="serverShutdown")

    def _report_silent(self, slot: _Slot, live: _Live) -> None:
        silent = tuple(s for s in slot.plan.streams if s in live.unseen)
        slot.silent = silent
        if not silent:
            return
        by_lower = {n.lower(): n for n in slot.plan.natives}
        natives = tuple(dict.fromkeys(n for s in silent if (n := by_lower.get(stream_symbol(s) or ""))))
        log.warning("%s: %d stream(s) silent %.0f s after connecting: %s",
                    slot.plan.name, len(silent), self._settings.first_frame_deadline_s, ", ".join(silent))  # fmt: skip
        self._event(Kind.STREAM_SILENT, slot, streams=silent, natives=natives)

    def _event(
        self,
        kind: ConnectionEventKind,
        slot: _Slot,
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

        def age(t: float) -> float | None:
            return round(now - t, 3) if t else None

        connections = {
            s.plan.name: {
                "state": s.state.value,
                "url": s.url,
                "connects": s.connects,
                "reconnects": s.reconnects,
                "reconnect_reasons": dict(s.reasons),
                "connect_failures": s.connect_failures,
                "last_error": s.last_error,
                "rotations": s.rotations,
                "frames": s.frames,
                "bytes": s.bytes,
                "parse_errors": s.parse_errors,
                "last_frame_age_s": age(s.last_frame),
                "backoff_attempts": s.backoff.attempts,
                "silent_streams": list(s.silent),
            }
            for s in self._slots
        }
        streams = {
            name: {
                "connection": st.connection,
                "frames": st.frames,
                "records": st.records,
                "parse_errors": st.parse_errors,
                "duplicates": st.duplicates,
                "first_frame_seen": st.first_frame_ts is not None,
                "first_frame_ts": st.first_frame_ts,
                "last_frame_age_s": age(st.last_frame),
            }
            for name, st in self._streams.items()
        }
        return {
            "connections": connections,
            "streams": streams,
            "reconnects": sum(s.reconnects for s in self._slots),
            "parse_errors": self.parse_errors,
            "duplicates": self.duplicates,
            "frames": sum(s.frames for s in self._slots),
        }


def _fatal(name: str, exc: BaseException) -> TransportError:
    """A non-retriable error that names the connection (raised ``from`` the original)."""
    return TransportError(f"{name}: {exc}", url=getattr(exc, "url", None), retriable=False)


async def _abandon_connect(task: asyncio.Future[WsConnection]) -> None:
    """Cancel a connect in progress; close the socket if it won the race anyway."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait({task})
    if task.done() and not task.cancelled():
        if task.exception() is None:
            await task.result().close()
