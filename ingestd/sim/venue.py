"""``SimVenue``: a Binance-compatible venue on 127.0.0.1 replaying recorded captures (aiohttp).

REST: ``/fapi/v1/{exchangeInfo,depth,time,ping,aggTrades}`` and
``/api/v3/{exchangeInfo,depth,time,ping,aggTrades}``, plus every other market-data endpoint
(trades, klines, tickers, funding, open interest …, see
:mod:`ingestd.sim.market`), every answer carrying ``X-MBX-USED-WEIGHT-1M`` (Binance's documented
weights, per rolling minute and API family; past the limit a 429 with ``Retry-After``).
Websockets: ``/public/stream``, ``/market/stream`` (USDⓈ-M routes; a stream on the wrong route
is acknowledged and silent),
``/stream`` (spot, or ``/public`` when the sim holds no spot capture; spot captures also serve the
generated ``<symbol>@ticker_<1h|4h|1d>`` streams), ``/ws/<name>`` raw streams,
and the live control messages. Every symbol with trades has an ``@aggTrade`` stream (recorded,
or derived from its trades: :mod:`ingestd.sim.agg_trades`), and ``aggTrades`` answers from it.
A ``live`` replay runs on the venue's own clock, and listings can change during a run
(:mod:`ingestd.sim.schedule`). ``POST /_sim/faults`` and ``GET /_sim/stats`` let tests drive a
sim running in another process.

Usage::

    async with SimVenue([capture_path], speed=0) as sim:
        ...  # connect to sim.rest_url / sim.ws_url; sim.faults.close(1001); sim.stats()
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Self

import orjson
from aiohttp import web

from ingestd.collect.endpoints import request_weight
from ingestd.errors import ConfigError
from ingestd.sim.agg_trades import AggTradeIndex, with_agg_trades
from ingestd.sim.books import DepthBooks
from ingestd.sim.captures import Capture, CaptureError, Market, Timeline, load_capture
from ingestd.sim.exchange_info import build_exchange_info, with_statuses
from ingestd.sim.faults import Close, Command, Faults, RestFault, Where
from ingestd.sim.market import MarketData
from ingestd.sim.schedule import ListingChange, Schedule
from ingestd.sim.shift import LoopShift
from ingestd.sim.streams import ReplayState, ResumeMode, WsConnection, parse_ws_path, serve_connection
from ingestd.sim.window_tickers import with_window_tickers
from ingestd.venues.binance.endpoints import EXCHANGE_INFO_WEIGHT, SPOT, TIME_WEIGHT, USDM, VenueSpec

log = logging.getLogger("ingestd.sim")

BUNDLED_CAPTURE: Final = Path(__file__).resolve().parent / "data" / "usdm_btcusdt_20240808.gz"
"""The real USDⓈ-M BTCUSDT capture shipped in the package (see ``data/ORIGIN.md``)."""

_FAMILIES: Final[dict[str, tuple[VenueSpec, Market]]] = {"fapi": (USDM, "futures"), "api": (SPOT, "spot")}
_DEFAULT_DEPTH_LIMIT: Final = {"fapi": 500, "api": 100}
_MAX_DEPTH_LIMIT: Final = {"fapi": 1000, "api": 5000}
_CLOSE_GRACE_S: Final = 2.0
_KEEP_CLOSED: Final = 1000
"""Closed connections kept for ``stats()``; older ones are forgotten (a long soak reconnects a lot)."""
_JSON: Final = "application/json"

SnapshotAt = Literal["now", "subscribed"]
"""Where REST depth answers the book (see :class:`SimVenue`)."""

_ERROR_BODIES: Final[dict[int, dict[str, Any]]] = {
    429: {
        "code": -1003,
        "msg": "Too many requests; current limit of IP(127.0.0.1) request weight is {limit} per minute. "
        "Please use the websocket for live updates to avoid polling the API.",
    },
    418: {
        "code": -1003,
        "msg": "Way too many requests; IP(127.0.0.1) banned until {until}. "
        "Please use the websocket for live updates to avoid bans.",
    },
    500: {"code": -1000, "msg": "An unknown error occurred while processing the request."},
    503: {
        "code": -1008,
        "msg": "Server is currently overloaded with other requests. Please try again in a few minutes.",
    },
}
_GENERIC_ERROR: Final = {
    "code": -1001,
    "msg": "Internal error; unable to process your request. Please try again.",
}


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    """One websocket connection. Per-stream maps are keyed by the capture's stream name;
    ``first``/``last`` are the 0-based positions within that stream of the frames sent first/last."""

    id: int
    route: str
    path: str
    subscriptions: tuple[str, ...]
    open: bool
    close_code: int | None
    frames_sent: dict[str, int]
    first: dict[str, int]
    last: dict[str, int]
    injected: int
    skipped: int
    loops: int


@dataclass(frozen=True, slots=True)
class SimStats:
    """A snapshot of what the sim did. ``frames_sent`` sums all connections per capture stream
    name (``frames_sent_by_market`` keeps spot and futures apart when names collide)."""

    connections_open: int
    connections_total: int
    frames_sent: dict[str, int]
    frames_sent_by_market: dict[str, dict[str, int]]
    frames_skipped: dict[str, int]
    injected: int
    rest_requests: dict[str, int]
    rest_faults: dict[str, int]
    used_weight: dict[str, int]
    connections: tuple[ConnectionStats, ...] = field(default=())

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))


class _WeightMeter:
    """Request weight used in the last 60 s for one API family (``time.monotonic`` seconds)."""

    def __init__(self) -> None:
        self._entries: deque[tuple[float, int]] = deque()
        self._used = 0

    def used(self, now: float) -> int:
        while self._entries and now - self._entries[0][0] >= 60.0:
            self._used -= self._entries.popleft()[1]
        return self._used

    def add(self, now: float, weight: int) -> int:
        self.used(now)
        self._entries.append((now, weight))
        self._used += weight
        return self._used

    def retry_after(self, now: float) -> int:
        """Seconds until the oldest counted request leaves the window."""
        return max(1, math.ceil(60.0 - (now - self._entries[0][0]))) if self._entries else 1


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SimVenue:
    """A local Binance venue replaying ``captures`` (paths or loaded :class:`Capture` objects).

    ``speed`` 0 sends as fast as each client reads, 1 is real time, 10 ten times faster.
    ``loop`` starts a connection's replay again at the end of the capture (else it stays open
    and silent). ``resume`` ``"restart"``: every new connection replays from the start;
    ``"continue"``: a new connection continues each stream right after the last frame of it sent
    on any earlier connection, and REST depth answers a book rolled forward to that point.
    ``loop_shift`` (with ``loop``): every pass after the first moves ids and times forward so it
    looks like new data to a client that drops repeated ids (:mod:`ingestd.sim.shift`).

    ``snapshot_at`` ``"now"``: REST depth answers the venue's current position (see
    :meth:`_depth`). ``"subscribed"``: it answers the book right after the first depth diff the
    newest open connection carrying the symbol sent, as a venue with no REST latency would to a
    client that asks on its first diff. A client that buffers from its first diff then bridges
    on it and applies every later diff of the connection: tests that must exercise a book (and
    its bookTicker audit) get the whole capture, however far another connection ran ahead.

    ``ssl_context`` (a server context, :func:`ingestd.tls.server_context`) serves the same app
    over TLS: ``https://`` and ``wss://``.

    ``resume`` ``"live"``: the venue runs on its own clock from its first connection (``speed`` > 0), a new
    connection starts at the venue's "now" and REST answers what was published up to then: a
    client that was away has a hole. ``listings`` change exchangeInfo and the symbols' streams
    during the run. ``derive_agg_trades``: symbols with recorded trades but no recorded
    ``@aggTrade`` get one derived from the trades.
    """

    def __init__(
        self,
        captures: Sequence[Path | str | Capture],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 0.0,
        loop: bool = False,
        resume: ResumeMode = "restart",
        loop_shift: bool = False,
        snapshot_at: SnapshotAt = "now",
        ssl_context: ssl.SSLContext | None = None,
        listings: Sequence[ListingChange] = (),
        derive_agg_trades: bool = True,
    ) -> None:
        if not math.isfinite(speed) or speed < 0:
            raise ConfigError(f"speed must be a finite number >= 0, not {speed}")
        if resume not in ("restart", "continue", "live"):
            raise ConfigError(f"resume must be 'restart', 'continue' or 'live', not {resume!r}")
        if resume == "live" and (speed <= 0 or loop):
            raise ConfigError("a live replay needs a speed > 0 and cannot loop")
        if snapshot_at not in ("now", "subscribed"):
            raise ConfigError(f"snapshot_at must be 'now' or 'subscribed', not {snapshot_at!r}")
        if snapshot_at == "subscribed" and loop:
            # A looping connection's first diff belongs to an earlier pass than its current one.
            raise ConfigError("snapshot_at='subscribed' cannot be combined with loop")
        self._sources = list(captures)
        self.host, self.port = host, port
        self.speed, self.loop, self.resume = speed, loop, resume
        self.loop_shift = loop_shift
        self.snapshot_at: SnapshotAt = snapshot_at
        self.ssl_context = ssl_context
        self.listings = tuple(listings)
        self.derive_agg_trades = derive_agg_trades
        self.faults = Faults()
        self.timeline: Timeline | None = None
        self._state: ReplayState | None = None
        self._books: DepthBooks | None = None
        self._market: MarketData | None = None
        self._aggs: AggTradeIndex | None = None
        self.schedule: Schedule | None = None
        self._info: dict[Market, dict[str, Any]] = {}
        self._runner: web.AppRunner | None = None
        self._conns: dict[int, WsConnection] = {}
        self._ids = itertools.count()
        self._total_conns = 0
        self._meters = {family: _WeightMeter() for family in _FAMILIES}
        self._rest_requests: dict[str, int] = {}
        self._rest_faults: dict[str, int] = {}
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def rest_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self._host_in_url}:{self.port}"

    @property
    def ws_url(self) -> str:
        scheme = "wss" if self.ssl_context is not None else "ws"
        return f"{scheme}://{self._host_in_url}:{self.port}"

    @property
    def _host_in_url(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    async def start(self) -> None:
        """Load the captures, bind, serve. Raises :class:`CaptureError` for a bad capture."""
        if self._runner is not None or self._closed:
            raise RuntimeError("SimVenue.start() called twice or after close()")
        captures = [
            src if isinstance(src, Capture) else await asyncio.to_thread(load_capture, src)
            for src in self._sources
        ]
        if not captures:
            raise CaptureError("no capture given")
        # Spot captures gain the generated <symbol>@ticker_<window> streams (no capture has them).
        captures = [await asyncio.to_thread(with_window_tickers, c) for c in captures]
        if self.derive_agg_trades:
            captures = [await asyncio.to_thread(with_agg_trades, c) for c in captures]
        self.timeline = tl = await asyncio.to_thread(Timeline, captures)
        shift = await asyncio.to_thread(_loop_shift, tl) if self.loop and self.loop_shift else None
        self.schedule = Schedule(
            tl, self.listings, speed=self.speed, live=self.resume == "live", furthest=self._furthest
        )
        self._state = ReplayState(
            tl,
            self.faults,
            speed=self.speed,
            loop=self.loop,
            resume=self.resume,
            shift=shift,
            schedule=self.schedule,
        )
        self._books = DepthBooks(tl)
        self._market = MarketData(tl)
        self._aggs = AggTradeIndex(tl)
        self._info = {m: await asyncio.to_thread(build_exchange_info, tl, m) for m in ("futures", "spot")}
        self.faults.bind(tl, self, _now_ms)
        app = web.Application()
        for path, family, handler in self._rest_routes():
            app.router.add_get(path, self._rest(family, handler))
        ws = self._ws_handler
        for route in ("", "/{route:public|market}"):
            app.router.add_get(f"{route}/stream", ws)
            app.router.add_get(f"{route}/ws", ws)
            app.router.add_get(f"{route}/ws/{{names:.+}}", ws)
        app.router.add_post("/_sim/faults", self._control)
        app.router.add_get("/_sim/stats", self._stats_handler)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=_CLOSE_GRACE_S)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info(
            "sim listening on %s: %d frames, %d streams, symbols %s (speed %g, %s%s)",
            self.rest_url, len(tl), len(tl.streams),
            ",".join(tl.symbols("futures") + tl.symbols("spot")), self.speed, self.resume,
            ", loop" if self.loop else "",
        )  # fmt: skip

    async def close(self) -> None:
        """Close every websocket (1001 going away), then the server. Idempotent."""
        if self._closed:
            return
        self._closed = True
        conns = [c for c in self._conns.values() if c.open]
        for conn in conns:
            conn.command(Close(1001, reason="sim closing"))
        if conns:
            done = asyncio.gather(*(c.done.wait() for c in conns))
            try:
                await asyncio.wait_for(done, _CLOSE_GRACE_S)
            except TimeoutError:
                for conn in conns:
                    transport = conn.request.transport
                    if conn.open and transport is not None:
                        transport.abort()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        log.info("sim closed after %d websocket connections", self._total_conns)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ websocket

    def apply(self, command: Command, where: Where) -> int:
        """:class:`~ingestd.sim.faults.ConnectionControl`: hand ``command`` to matching connections."""
        hit = 0
        for conn in list(self._conns.values()):
            if conn.open and where.matches(conn):
                conn.command(command)
                hit += 1
        if hit:
            log.info("sim fault %s on %d connection(s)", type(command).__name__, hit)
        return hit

    def _furthest(self) -> int:
        return max(self._state.position, default=-1) if self._state is not None else -1

    def start_clock(self) -> None:
        """Start a live replay's clock now (otherwise its first websocket connection does)."""
        assert self.schedule is not None
        self.schedule.start(asyncio.get_running_loop().time())

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        assert self._state is not None
        route, combined, names = parse_ws_path(request)
        refused = self.faults.take_refusal(route)
        if refused is not None:
            return web.Response(status=refused, text="sim: connection refused by fault\n")
        self.start_clock()
        ws = web.WebSocketResponse(autoping=True, compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        conn = WsConnection(
            next(self._ids),
            route=route,
            path=request.path_qs,
            combined=combined,
            state=self._state,
            request=request,
        )
        conn.subscribe(names)
        for cmd in self.faults.sticky_for(conn):
            conn.command(cmd)
        self._conns[conn.id] = conn
        self._total_conns += 1
        log.info("sim connection %d opened: %s (%d streams)", conn.id, request.path, len(names))
        try:
            await serve_connection(conn, ws)
        finally:
            log.info("sim connection %d closed (code %s)", conn.id, conn.close_code)
            closed = [cid for cid, c in self._conns.items() if not c.open]
            for cid in closed[: max(0, len(closed) - _KEEP_CLOSED)]:
                del self._conns[cid]
        return ws

    # ------------------------------------------------------------------ REST

    def _rest_routes(self) -> list[tuple[str, str, Callable[[web.Request, str], tuple[int, int, bytes]]]]:
        out: list[tuple[str, str, Callable[[web.Request, str], tuple[int, int, bytes]]]] = []
        for family, prefix in (("fapi", "/fapi/v1"), ("api", "/api/v3")):
            out += [
                (f"{prefix}/exchangeInfo", family, self._exchange_info),
                (f"{prefix}/depth", family, self._depth),
                (f"{prefix}/aggTrades", family, self._agg_trades),
                (f"{prefix}/time", family, self._time),
                (f"{prefix}/ping", family, self._ping),
            ]
        # Every other market-data endpoint (trades, klines, tickers, funding, open interest …).
        for path in MarketData.PATHS:
            out.append((path, "api" if path.startswith("/api/") else "fapi", self._market_data))
        return out

    def _market_data(self, request: web.Request, _family: str) -> tuple[int, int, bytes]:
        assert self._market is not None
        return self._market.answer(request.path, request.query, request.headers)

    def _rest(
        self, family: str, handler: Callable[[web.Request, str], tuple[int, int, bytes]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            path = request.path
            self._rest_requests[path] = self._rest_requests.get(path, 0) + 1
            fault = self.faults.take_rest(path)
            if fault is not None:
                self._rest_faults[path] = self._rest_faults.get(path, 0) + 1
                if fault.kind == "delay":
                    await asyncio.sleep(fault.delay_s)
                elif fault.kind == "status":
                    return self._fault_response(family, fault)
            loop_now = time.monotonic()
            meter = self._meters[family]
            status, weight, body = handler(request, family)
            limit = self.faults.weight_limits.get(family, _FAMILIES[family][0].weight_limit_per_minute)
            if meter.used(loop_now) + weight > limit:
                retry = meter.retry_after(loop_now)
                msg = dict(_ERROR_BODIES[429], msg=str(_ERROR_BODIES[429]["msg"]).format(limit=limit))
                return self._response(429, orjson.dumps(msg), meter.used(loop_now), retry_after=retry)
            used = meter.add(loop_now, weight)
            if fault is not None and fault.kind == "bad_json":
                body = body[: max(1, len(body) // 2)]
            return self._response(status, body, used)

        return handle

    def _response(
        self, status: int, body: bytes, used: int, *, retry_after: float | None = None
    ) -> web.Response:
        headers = {"X-MBX-USED-WEIGHT-1M": str(used), "X-MBX-USED-WEIGHT": str(used)}
        if retry_after is not None:
            headers["Retry-After"] = str(math.ceil(retry_after))
        return web.Response(status=status, body=body, content_type=_JSON, headers=headers)

    def _fault_response(self, family: str, fault: RestFault) -> web.Response:
        used = self._meters[family].used(time.monotonic())
        body = fault.body
        if body is None:
            template = _ERROR_BODIES.get(fault.status, _GENERIC_ERROR)
            until = _now_ms() + int((fault.retry_after or 0) * 1000)
            limit = self.faults.weight_limits.get(family, _FAMILIES[family][0].weight_limit_per_minute)
            body = orjson.dumps(dict(template, msg=str(template["msg"]).format(limit=limit, until=until)))
        return self._response(fault.status, body, used, retry_after=fault.retry_after)

    def _server_time(self) -> int:
        return _now_ms() + self.faults.clock_skew_ms

    def _exchange_info(self, _request: web.Request, family: str) -> tuple[int, int, bytes]:
        spec, market = _FAMILIES[family]
        doc = dict(self._info[market], serverTime=self._server_time())
        sched = self.schedule
        if sched is not None and sched.changes:
            now = sched.now_ns(asyncio.get_running_loop().time())
            doc = with_statuses(doc, lambda native: sched.status(native, market, now), sched.onboard_ms)
        return 200, EXCHANGE_INFO_WEIGHT[spec.name], orjson.dumps(doc)

    def _agg_trades(self, request: web.Request, family: str) -> tuple[int, int, bytes]:
        """``aggTrades``: from the symbol's aggTrade stream, only what the venue has published."""
        assert self._aggs is not None
        assert self.schedule is not None
        schedule, loop_now = self.schedule, asyncio.get_running_loop().time()
        status, body = self._aggs.request(
            _FAMILIES[family][1], request.query, lambda sid: schedule.window(sid, loop_now)
        )
        return status, request_weight(request.path, request.query), body

    def _time(self, _request: web.Request, _family: str) -> tuple[int, int, bytes]:
        return 200, TIME_WEIGHT, orjson.dumps({"serverTime": self._server_time()})

    def _ping(self, _request: web.Request, _family: str) -> tuple[int, int, bytes]:
        return 200, 1, b"{}"

    def _depth(self, request: web.Request, family: str) -> tuple[int, int, bytes]:
        assert self._books is not None
        assert self._state is not None
        assert self.timeline is not None
        spec, market = _FAMILIES[family]
        raw_limit = request.query.get("limit")
        limit = _DEFAULT_DEPTH_LIMIT[family]
        if raw_limit is not None:
            if not raw_limit.isdigit() or int(raw_limit) < 1:
                msg = "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'."
                return 400, 1, orjson.dumps({"code": -1100, "msg": msg})
            limit = min(int(raw_limit), _MAX_DEPTH_LIMIT[family])
        weight = spec.depth_weight(limit)
        symbol = request.query.get("symbol", "")
        if not symbol:
            msg = "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
            return 400, weight, orjson.dumps({"code": -1102, "msg": msg})
        if symbol not in self.timeline.symbols(market):
            return 400, weight, b'{"code":-1121,"msg":"Invalid symbol."}'
        sids = self.timeline.symbol_sids(market, symbol)
        subscribed = self._subscribed_position(sids) if self.snapshot_at == "subscribed" else None
        if subscribed is not None:
            body = self._books.body(market, symbol, subscribed, live=True, limit=limit)
            return (200, weight, body) if body is not None else self._no_snapshot(symbol, weight)
        # A restarted replay answers at the position of the connection carrying the symbol's depth
        # diffs: its other streams ride another connection (USDⓈ-M /market) that, replayed as fast
        # as it is read, runs ahead in capture time. So does a looping replay with shifted ids: a
        # book from the /market connection's pass would be passes ahead of the depth stream and
        # never bridge. A live-like ("continue") venue otherwise answers "now", the furthest any
        # of its streams got.
        if self.resume == "restart" or self._state.shift is not None:
            sids_at = [s for s in sids if self.timeline.streams[s].is_depth_diff] or sids
        else:
            sids_at = sids
        position = max((self._state.position[s] for s in sids_at), default=-1)
        live = self.resume != "restart"
        if self.resume == "live":
            # The venue's book now, whatever any connection was sent.
            assert self.schedule is not None
            position = self.schedule.position(asyncio.get_running_loop().time())
        body = self._books.body(market, symbol, position, live=live, limit=limit)
        shift = self._state.shift
        if body is not None and shift is not None and sids:
            # The pass of the stream the book follows: ids of a looped pass are shifted.
            body = shift.snapshot(body, max(self._state.passes[s] for s in sids_at))
        if body is None:
            return self._no_snapshot(symbol, weight)
        return 200, weight, body

    @staticmethod
    def _no_snapshot(symbol: str, weight: int) -> tuple[int, int, bytes]:
        msg = f"sim: the capture holds no depth snapshot for {symbol}"
        return 500, weight, orjson.dumps({"code": -1000, "msg": msg})

    def _subscribed_position(self, sids: Sequence[int]) -> int | None:
        """Timeline index of the first depth diff the newest open connection sent (``snapshot_at``).

        ``None`` when no open connection sent one yet: then the usual rule answers.
        """
        assert self.timeline is not None
        depth = [s for s in sids if self.timeline.streams[s].is_depth_diff]
        found: int | None = None
        # Connections are kept in the order they opened: the last match is the newest.
        for conn in self._conns.values():
            if conn.open:
                firsts = [conn.first[s] for s in depth if conn.first[s] >= 0]
                if firsts:
                    found = min(firsts)
        return found

    # ------------------------------------------------------------------ control and stats

    async def _control(self, request: web.Request) -> web.Response:
        try:
            body = await request.json(loads=orjson.loads)
            result = self.faults.apply_json(body if isinstance(body, Mapping) else {"action": None})
        except (ConfigError, orjson.JSONDecodeError, OverflowError) as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400, dumps=_dumps)
        return web.json_response(result, dumps=_dumps)

    async def _stats_handler(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.stats().to_json(), content_type=_JSON)

    def stats(self) -> SimStats:
        """What was sent so far: per stream, per connection, REST requests and faults."""
        tl, st = self.timeline, self._state
        if tl is None or st is None:
            return SimStats(0, 0, {}, {}, {}, 0, {}, {}, {})
        names = [s.name for s in tl.streams]
        by_market: dict[str, dict[str, int]] = {}
        totals: dict[str, int] = {}
        skipped: dict[str, int] = {}
        for s, info in enumerate(tl.streams):
            by_market.setdefault(info.market, {})[info.name] = st.sent[s]
            totals[info.name] = totals.get(info.name, 0) + st.sent[s]
            if st.skipped[s]:
                skipped[info.name] = skipped.get(info.name, 0) + st.skipped[s]
        now = time.monotonic()
        conns = tuple(
            ConnectionStats(
                id=c.id,
                route=c.route,
                path=c.path,
                subscriptions=tuple(c.subs),
                open=c.open,
                close_code=c.close_code,
                frames_sent={names[s]: n for s, n in enumerate(c.sent) if n},
                first={names[s]: tl.ordinal[i] for s, i in enumerate(c.first) if i >= 0},
                last={names[s]: tl.ordinal[i] for s, i in enumerate(c.last) if i >= 0},
                injected=c.injected,
                skipped=c.skipped,
                loops=c.loops,
            )
            for c in self._conns.values()
        )
        return SimStats(
            connections_open=sum(1 for c in self._conns.values() if c.open),
            connections_total=self._total_conns,
            frames_sent=totals,
            frames_sent_by_market=by_market,
            frames_skipped=skipped,
            injected=st.injected,
            rest_requests=dict(self._rest_requests),
            rest_faults=dict(self._rest_faults),
            used_weight={f: m.used(now) for f, m in self._meters.items()},
            connections=conns,
        )


def _loop_shift(tl: Timeline) -> LoopShift:
    snaps = [s.body for lst in tl.snapshots.values() for s in lst]
    return LoopShift.measure(tl.frames, snaps, tl.ts[-1] - tl.ts[0] if len(tl) else 0)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()
