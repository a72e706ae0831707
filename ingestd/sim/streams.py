"""Websocket side of the sim: one :class:`WsConnection` per client, replaying the timeline.

Each connection owns two tasks, both owned by the venue's handler: a *pump* that writes the
frames of the subscribed streams in capture order, and a *reader* that answers Binance's live
control messages (SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS, SET/GET_PROPERTY). Frames are
encoded here and written to the transport in bulk: aiohttp's per-frame ``send_*`` caps a replay
far below what a client can read (docs/performance.md §2), and a chunk per drain keeps the loop responsive.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson
from aiohttp import web

from ingestd.sim.captures import Market, Timeline
from ingestd.sim.faults import ABORT, Close, Command, Faults, Inject, Resume, Stall
from ingestd.sim.schedule import Schedule
from ingestd.sim.shift import LoopShift
from ingestd.venues.binance.channels import MARKET_ROUTE, PUBLIC_ROUTE, route_for
from ingestd.venues.binance.endpoints import SPOT, USDM

log = logging.getLogger("ingestd.sim")

ResumeMode = Literal["restart", "continue", "live"]

_CHUNK_BYTES: Final = 256 * 1024
_CHUNK_FRAMES: Final = 4096
_SCAN: Final = 65536
"""Frames looked at per pump step before yielding (a sparse subscription scans far)."""
_MAX_PENDING: Final = 100_000
"""Injected frames waiting per connection; more is a test bug, refused loudly."""
_ABORT_FLUSH_S: Final = 1.0
_CLOSE_TIMEOUT_S: Final = 2.0
_TEXT, _BINARY = 0x1, 0x2
_SMALL_TEXT_HEADERS: Final = tuple(bytes((0x80 | _TEXT, n)) for n in range(126))


def frame_header(length: int, opcode: int = _TEXT) -> bytes:
    """RFC 6455 header of an unmasked, final server frame carrying ``length`` bytes."""
    if opcode == _TEXT and length < 126:
        return _SMALL_TEXT_HEADERS[length]
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def encode(payload: bytes, opcode: int = _TEXT) -> bytes:
    return frame_header(len(payload), opcode) + payload


class ReplayState:
    """What connections of one venue share: the timeline, positions and counters."""

    def __init__(
        self,
        timeline: Timeline,
        faults: Faults,
        *,
        speed: float,
        loop: bool,
        resume: ResumeMode,
        shift: LoopShift | None = None,
        schedule: Schedule | None = None,
    ) -> None:
        self.timeline = timeline
        self.faults = faults
        self.speed = speed
        self.loop = loop
        self.resume = resume
        self.shift = shift
        """With ``loop``: moves ids and times of each pass after the first (``None``: replay as is)."""
        n = len(timeline.streams)
        self.schedule = schedule or Schedule(
            timeline, speed=speed, live=resume == "live", furthest=lambda: max(self.position, default=-1)
        )
        """Venue time and listing windows (see :mod:`ingestd.sim.schedule`)."""
        self.position = [-1] * n
        """Per stream: timeline index of the frame sent last, on any connection (last write wins)."""
        self.passes = [0] * n
        """Per stream: the loop pass that frame was sent in."""
        self.sent = [0] * n
        self.skipped = [0] * n
        self.injected = 0

    def market_for(self, route: str) -> Market:
        """Routed paths are USDⓈ-M; unrouted ones are spot when the sim holds a spot capture."""
        if route in (PUBLIC_ROUTE, MARKET_ROUTE) or "spot" not in self.timeline.markets:
            return "futures"
        return "spot"

    def serves(self, route: str, requested: str) -> int | None:
        """The timeline stream a subscription gets on ``route``; ``None``: silent, like Binance
        on a wrong route (a ``/market`` stream on ``/public`` or on an unrouted connection). The
        route a stream belongs on is its channel's, from the channel table."""
        market = self.market_for(route)
        if market == "futures" and route_for(requested) != (route or PUBLIC_ROUTE):
            return None
        return self.timeline.resolve(market, requested)


@dataclass(slots=True)
class _Limiter:
    """Incoming control messages per second (5 spot, 10 futures); more closes the connection."""

    limit: int
    stamps: deque[float] = field(default_factory=deque)

    def allow(self, now: float) -> bool:
        while self.stamps and now - self.stamps[0] >= 1.0:
            self.stamps.popleft()
        self.stamps.append(now)
        return len(self.stamps) <= self.limit


class WsConnection:
    """One client connection: its subscriptions, replay cursor, pending faults and counters."""

    def __init__(
        self, cid: int, *, route: str, path: str, combined: bool, state: ReplayState, request: web.Request
    ) -> None:
        self.id = cid
        self.route = route
        self.path = path
        self.combined = combined
        self.state = state
        self.request = request
        self.market = state.market_for(route)
        n_streams = len(state.timeline.streams)
        self._unwanted = len(state.timeline)
        self.subs: dict[str, int | None] = {}
        """Requested name → timeline stream (``None``: acknowledged and silent)."""
        self._refs = [0] * n_streams
        self.floor = [self._unwanted] * n_streams
        """Per stream: frames at or below this index are not sent (``len(timeline)``: unwanted)."""
        self.pos = 0
        self.started = False
        self.t0: tuple[float, int] | None = None
        self.wake = asyncio.Event()
        self.pending: deque[tuple[bytes, int]] = deque()
        self.close_request: Close | None = None
        self._close_after: int | None = None
        self._close_cmd: Close | None = None
        self.stall_until: float | None = None
        self.sent = [0] * n_streams
        self.first = [-1] * n_streams
        self.last = [-1] * n_streams
        self.skipped = 0
        self.injected = 0
        self.loops = 0
        self.close_code: int | None = None
        self.open = True
        self.done = asyncio.Event()
        self._drain_task: asyncio.Future[None] | None = None
        self._limiter = _Limiter((USDM if self.market == "futures" else SPOT).control_msgs_per_second)

    # ------------------------------------------------------------------ subscriptions

    def stream_names(self) -> set[str]:
        names = set(self.subs)
        names.update(self.state.timeline.streams[s].name for s in self.subs.values() if s is not None)
        return names

    def subscribe(self, names: list[str]) -> None:
        st = self.state
        for name in names:
            if name in self.subs:
                continue
            sid = st.serves(self.route, name)
            self.subs[name] = sid
            if sid is None:
                continue
            self._refs[sid] += 1
            if self._refs[sid] > 1:
                continue
            floor = self.pos - 1 if self.started else -1
            if st.resume == "continue":
                floor = max(floor, st.position[sid])
                if st.shift is not None and not self.started:
                    self.loops = max(self.loops, st.passes[sid])  # go on in the same (shifted) pass
            elif st.resume == "live":
                # The venue went on without this connection: what it published before is history.
                floor = max(floor, st.schedule.position(asyncio.get_running_loop().time()))
            else:
                # A restarted replay: REST snapshots follow this connection's position.
                st.position[sid] = floor
            # Frames of a symbol before its listing are never published.
            self.floor[sid] = max(floor, st.schedule.floor[sid])
        self.wake.set()

    def unsubscribe(self, names: list[str]) -> None:
        for name in names:
            sid = self.subs.pop(name, None)
            if sid is not None:
                self._refs[sid] -= 1
                if self._refs[sid] == 0:
                    self.floor[sid] = self._unwanted

    def _wanted(self) -> list[int]:
        return [s for s, r in enumerate(self._refs) if r]

    # ------------------------------------------------------------------ faults

    def command(self, cmd: Command) -> None:
        """Apply one fault command (called from the venue, never blocks)."""
        if isinstance(cmd, Close):
            if cmd.after_frames == 0:
                self.close_request = cmd
            else:
                self._close_after, self._close_cmd = cmd.after_frames, cmd
        elif isinstance(cmd, Stall):
            now = asyncio.get_running_loop().time()
            self.stall_until = math.inf if cmd.seconds is None else now + cmd.seconds
        elif isinstance(cmd, Resume):
            self.stall_until = None
        elif isinstance(cmd, Inject):
            frames = cmd.bare if (cmd.bare is not None and not self.combined) else cmd.frames
            if len(self.pending) + len(frames) > _MAX_PENDING:
                raise OverflowError(
                    f"sim connection {self.id}: more than {_MAX_PENDING} injected frames pending"
                )
            opcode = _BINARY if cmd.binary else _TEXT
            self.pending.extend((f, opcode) for f in frames)
        self.wake.set()

    # ------------------------------------------------------------------ the pump

    async def _sleep(self, seconds: float | None) -> None:
        # Cleared here, after the caller looked at the state: a set() from another task can only
        # happen while we await below, so no wake-up is lost.
        self.wake.clear()
        if seconds is None:
            await self.wake.wait()
            return
        try:
            async with asyncio.timeout(max(0.0, seconds)):
                await self.wake.wait()
        except TimeoutError:
            pass

    def _write(self, data: bytes) -> bool:
        transport = self.request.transport
        if transport is None or transport.is_closing():
            return False
        transport.write(data)
        return True

    def _blocked(self) -> bool:
        """A drain is pending: the client is not reading fast enough to take more."""
        return self._drain_task is not None and not self._drain_task.done()

    async def _drain(self) -> None:
        """Wait until the client has taken what was written, or until a fault command arrives.

        The drain runs as its own task so that a close or stall can interrupt the wait: a client
        that stops reading must not make the sim deaf to faults. It is never cancelled here (the
        protocol's drain waiter is shared), only awaited again next time.
        """
        transport = self.request.transport
        if transport is None or transport.is_closing():
            return
        if not self._blocked():
            if transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]:
                # Below the high-water mark drain() would return at once; yield anyway so one
                # fast connection cannot starve the others (and the REST handlers) at speed 0.
                await asyncio.sleep(0)
                return
            self._drain_task = asyncio.ensure_future(self.request.writer.drain())
        assert self._drain_task is not None
        self.wake.clear()
        waker = asyncio.ensure_future(self.wake.wait())
        try:
            waiting: list[asyncio.Future[Any]] = [self._drain_task, waker]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()
        if self._drain_task.done():
            self._drain_task.result()  # re-raises a lost connection

    def _restart(self) -> None:
        self.loops += 1
        for s in self._wanted():
            self.floor[s] = self.state.schedule.floor[s]
        self.pos, self.t0 = 0, None

    async def pump(self) -> Close | None:
        """Send frames until a close is requested (returned) or the transport goes away (``None``)."""
        loop = asyncio.get_running_loop()
        n = len(self.state.timeline)
        while True:
            if self.close_request is not None:
                return self.close_request
            transport = self.request.transport
            if transport is None or transport.is_closing():
                return None
            now = loop.time()
            if self.stall_until is not None:
                if now < self.stall_until:
                    await self._sleep(None if math.isinf(self.stall_until) else self.stall_until - now)
                    continue
                self.stall_until = None
            if self._blocked():
                await self._drain()
                continue
            if self.pending:
                batch = [encode(f, op) for f, op in self.pending]
                self.injected += len(batch)
                self.state.injected += len(batch)
                self.pending.clear()
                self._write(b"".join(batch))
                await self._drain()
                continue
            wanted = self._wanted()
            if not wanted:
                await self._sleep(None)
                continue
            if not self.started:
                self.pos = min(self.floor[s] for s in wanted) + 1
                self.started = True
                sched = self.state.schedule
                if sched.live and sched.anchor is not None:
                    # Paced by the venue's clock, not from this connection's first frame.
                    self.t0 = (sched.anchor, sched.t0_ns)
            if self.pos >= n:
                if self.state.loop:
                    self._restart()
                    continue
                await self._sleep(None)  # end of capture: open and silent
                continue
            count, next_due = self._fill(now)
            if count:
                await self._drain()
            elif next_due is not None:
                await self._sleep(next_due - now)
            else:
                await asyncio.sleep(0)

    def _fill(self, now: float) -> tuple[int, float | None]:
        """Write the next chunk of due frames; returns (frames written, when the next is due)."""
        st = self.state
        tl = st.timeline
        sids, frames, floor, shift, loops = tl.sid, tl.frames, self.floor, st.shift, self.loops
        skip, ceil = st.faults.skip, st.schedule.ceil
        speed_ns = st.speed * 1e9
        limit = _CHUNK_FRAMES if self._close_after is None else min(_CHUNK_FRAMES, self._close_after)
        parts: list[bytes] = []
        size = count = 0
        next_due: float | None = None
        i = self.pos
        end = min(len(sids), i + _SCAN)
        while i < end:
            s = sids[i]
            if i > floor[s] and (ceil is None or i < ceil[s]):
                if skip and i in skip:
                    self.skipped += 1
                    st.skipped[s] += 1
                    i += 1
                    continue
                if speed_ns:
                    if self.t0 is None:
                        self.t0 = (now, tl.ts[i])
                    due = self.t0[0] + (tl.ts[i] - self.t0[1]) / speed_ns
                    if due > now:
                        next_due = due
                        break
                payload = frames[i] if self.combined else tl.data(i)
                if shift is not None and loops:
                    payload = shift.frame(payload, loops)
                parts += (frame_header(len(payload)), payload)
                size += len(payload)
                self.sent[s] += 1
                st.sent[s] += 1
                st.position[s], st.passes[s] = i, loops
                if self.first[s] < 0:
                    self.first[s] = i
                self.last[s] = i
                count += 1
                if count >= limit or size >= _CHUNK_BYTES:
                    i += 1
                    break
            i += 1
        self.pos = i
        if count:
            self._write(b"".join(parts))
        if self._close_after is not None:
            self._close_after -= count
            if self._close_after <= 0:
                self.close_request, self._close_after = self._close_cmd, None
        return count, next_due

    # ------------------------------------------------------------------ closing

    async def close_with(self, cmd: Close, ws: web.WebSocketResponse) -> None:
        """Close as the fault says: a close frame with ``cmd.code``, or (1006) a TCP abort."""
        transport = self.request.transport
        if cmd.code == ABORT:
            # Flush what was written so "frames sent" means "frames the client can read", then
            # drop the connection without a close frame.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + _ABORT_FLUSH_S
            # Polled: asyncio offers no "write buffer empty" event (drain() stops at the
            # high-water mark), and this runs once per aborted connection.
            while transport is not None and transport.get_write_buffer_size() and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            if transport is not None:
                transport.abort()
            self.close_code = ABORT
            return
        self.close_code = cmd.code
        try:
            # A client that stopped reading never takes the close frame: give up and abort.
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await ws.close(code=cmd.code, message=cmd.reason.encode())
        except TimeoutError:
            self.close_code = ABORT
            if transport is not None:
                transport.abort()

    # ------------------------------------------------------------------ control messages

    def send_control(self, body: dict[str, Any]) -> None:
        self._write(encode(orjson.dumps(body)))

    def on_text(self, text: str | bytes) -> None:
        """One incoming text frame: a Binance control message (answered at once)."""
        if not self._limiter.allow(asyncio.get_running_loop().time()):
            self.close_request = Close(1008, reason="Too many requests")
            self.wake.set()
            return
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.send_control({"code": 3, "msg": "Invalid JSON: not a JSON document", "id": None})
            return
        if not isinstance(msg, dict):
            self.send_control({"code": 2, "msg": "Invalid request: request must be an object", "id": None})
            return
        req_id = msg.get("id")
        if req_id is not None and not isinstance(req_id, int | str):
            self.send_control({"code": 2, "msg": "Invalid request: invalid id", "id": None})
            return
        method, params = msg.get("method"), msg.get("params", [])
        if not isinstance(params, list):
            self.send_control({"code": 2, "msg": "Invalid request: params must be an array", "id": req_id})
            return
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not all(isinstance(p, str) for p in params):
                self.send_control({"code": 2, "msg": "Invalid request: names must be strings", "id": req_id})
                return
            (self.subscribe if method == "SUBSCRIBE" else self.unsubscribe)(list(params))
            self.send_control({"result": None, "id": req_id})
        elif method == "LIST_SUBSCRIPTIONS":
            self.send_control({"result": list(self.subs), "id": req_id})
        elif method == "SET_PROPERTY" and len(params) == 2 and params[0] == "combined":
            if not isinstance(params[1], bool):
                self.send_control({"code": 1, "msg": "Invalid value type: expected Boolean", "id": req_id})
                return
            self.combined = params[1]
            self.send_control({"result": None, "id": req_id})
        elif method == "GET_PROPERTY" and params == ["combined"]:
            self.send_control({"result": self.combined, "id": req_id})
        elif method in ("SET_PROPERTY", "GET_PROPERTY"):
            self.send_control({"code": 0, "msg": "Unknown property", "id": req_id})
        else:
            self.send_control({"code": 2, "msg": f"Invalid request: unknown method {method!r}", "id": req_id})


def parse_ws_path(request: web.Request) -> tuple[str, bool, list[str]]:
    """(route, combined, stream names) of a websocket request path."""
    route = request.match_info.get("route", "")
    route = f"/{route}" if route else ""
    combined = request.path.endswith("/stream")
    raw = request.query.get("streams", "") if combined else request.match_info.get("names", "")
    return route, combined, [n for n in raw.split("/") if n]


async def serve_connection(conn: WsConnection, ws: web.WebSocketResponse) -> None:
    """Run one connection to its end: pump and reader tasks, then the close the pump asked for."""
    pump = asyncio.create_task(conn.pump(), name=f"sim-ws{conn.id}-pump")
    reader = asyncio.create_task(_read(conn, ws), name=f"sim-ws{conn.id}-reader")
    try:
        done, _ = await asyncio.wait({pump, reader}, return_when=asyncio.FIRST_COMPLETED)
        if pump in done and not pump.cancelled():
            exc = pump.exception()
            if exc is not None and not isinstance(exc, ConnectionError):
                log.error("sim connection %d: pump failed: %r", conn.id, exc)
            elif exc is None and (cmd := pump.result()) is not None:
                await conn.close_with(cmd, ws)
    finally:
        tasks = [pump, reader] + ([conn._drain_task] if conn._drain_task is not None else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if conn.close_code is None:
            conn.close_code = ws.close_code
        conn.open = False
        conn.done.set()


async def _read(conn: WsConnection, ws: web.WebSocketResponse) -> None:
    async for msg in ws:
        if msg.type is web.WSMsgType.TEXT:
            conn.on_text(msg.data)
