"""Scripted faults for the sim venue: what tests of the whole project break on purpose.

Websocket faults act on the connections that match a :class:`Where` (all of them by default):
close now or after N more data frames with a close code (``1006`` aborts TCP with no close
frame), stall (connected, nothing sent) until resumed or for N s, inject raw frames, announce
``serverShutdown``. A ``sticky`` fault also hits connections opened later, until :meth:`Faults.clear`.
``drop`` aborts connections and refuses new handshakes on their route for N seconds: in a
``live`` replay the venue goes on meanwhile, so the client comes back to a hole. Depth diffs can
be skipped (never sent, on any connection), and a whole stream silenced (it is subscribed and
acknowledged, then never sends, while the rest of its connection streams on). REST faults (a
status with ``Retry-After``, a delay, a bad JSON body) apply to the next N requests of a path.
The clock skew shifts ``serverTime``. Everything is plain state read by the venue; this module does no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from ingestd.errors import ConfigError
from ingestd.sim.captures import Market, Timeline

ABORT: int = 1006
"""Close "code" meaning: drop the TCP connection without a close frame (abnormal closure)."""


@dataclass(frozen=True, slots=True)
class Where:
    """Which websocket connections a fault hits; every field given must match (none: all).

    ``route`` is ``"/public"``, ``"/market"`` or ``""`` (unrouted ``/stream`` and ``/ws``);
    ``stream`` matches a subscribed name as requested or the capture stream serving it.
    """

    route: str | None = None
    stream: str | None = None
    connection: int | None = None

    def matches(self, conn: ConnectionView) -> bool:
        if self.connection is not None and conn.id != self.connection:
            return False
        if self.route is not None and conn.route != self.route:
            return False
        return self.stream is None or self.stream in conn.stream_names()


class ConnectionView(Protocol):
    """What a fault needs to know about a live connection."""

    @property
    def id(self) -> int: ...

    @property
    def route(self) -> str: ...

    def stream_names(self) -> Collection[str]: ...


@dataclass(frozen=True, slots=True)
class Close:
    """Close after ``after_frames`` more data frames (0: now) with ``code`` (1006: abort TCP)."""

    code: int = 1000
    after_frames: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Stall:
    """Send nothing for ``seconds`` (``None``: until :meth:`Faults.resume`)."""

    seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Resume:
    """End a stall."""


@dataclass(frozen=True, slots=True)
class Inject:
    """Send these frames next, as they are. ``bare`` replaces them on raw (non-combined) connections."""

    frames: tuple[bytes, ...]
    binary: bool = False
    bare: tuple[bytes, ...] | None = None


Command = Close | Stall | Resume | Inject


class ConnectionControl(Protocol):
    """The venue side: hands a command to every matching live connection, returns how many."""

    def apply(self, command: Command, where: Where) -> int: ...


RestKind = Literal["status", "delay", "bad_json"]


@dataclass(slots=True)
class RestFault:
    """One armed REST fault for ``path`` (``"*"``: any path); ``remaining`` ``None`` = until cleared."""

    path: str
    kind: RestKind
    remaining: int | None = 1
    status: int = 200
    retry_after: float | None = None
    body: bytes | None = None
    delay_s: float = 0.0


@dataclass(slots=True)
class _Refusal:
    status: int
    remaining: int
    route: str | None = None
    """Only handshakes on this route (``None``: any)."""
    until: float | None = None
    """Monotonic deadline instead of a count (``None``: ``remaining`` counts)."""


def server_shutdown_frames(now_ms: int) -> tuple[bytes, bytes]:
    """Binance's shutdown notice (spot, since 2026-05): combined and bare forms."""
    data = orjson.dumps({"e": "serverShutdown", "E": now_ms})
    return b'{"stream":"!serverShutdown","data":' + data + b"}", data


@dataclass(slots=True)
class Faults:
    """Runtime fault switches of one :class:`~ingestd.sim.venue.SimVenue` (``venue.faults``)."""

    clock_skew_ms: int = 0
    """Added to ``serverTime`` (``/time``, exchangeInfo) and to ``serverShutdown``'s ``E``."""
    weight_limits: dict[str, int] = field(default_factory=dict)
    """Per API family (``"fapi"``, ``"api"``): overrides the per-minute weight limit (2400/6000)."""
    skip: set[int] = field(default_factory=set)
    """Timeline indices of frames never sent (see :meth:`skip_depth_diff`)."""
    _timeline: Timeline | None = field(default=None, repr=False)
    _target: ConnectionControl | None = field(default=None, repr=False)
    _sticky: list[tuple[Command, Where]] = field(default_factory=list)
    _rest: list[RestFault] = field(default_factory=list)
    _refusals: list[_Refusal] = field(default_factory=list)
    _now_ms: Callable[[], int] | None = field(default=None, repr=False)

    def bind(self, timeline: Timeline, target: ConnectionControl, now_ms: Callable[[], int]) -> None:
        """Called by the venue at start: the timeline, its connections, its clock (ms)."""
        self._timeline, self._target, self._now_ms = timeline, target, now_ms

    # ------------------------------------------------------------------ websocket faults

    def _send(self, command: Command, where: Where, sticky: bool) -> int:
        if sticky:
            self._sticky.append((command, where))
        return self._target.apply(command, where) if self._target is not None else 0

    def close(
        self,
        code: int = 1000,
        *,
        after_frames: int = 0,
        reason: str = "",
        route: str | None = None,
        stream: str | None = None,
        connection: int | None = None,
        sticky: bool = False,
    ) -> int:
        """Close matching connections now or after ``after_frames`` more data frames each.

        ``code`` 1000/1001/1011/… sends a close frame; :data:`ABORT` (1006) drops TCP without
        one, after flushing what was already written. Returns the number of connections hit.
        """
        if after_frames < 0 or not 1000 <= code <= 4999:
            raise ConfigError(f"close: bad code {code} or after_frames {after_frames}")
        return self._send(Close(code, after_frames, reason), Where(route, stream, connection), sticky)

    def stall(
        self,
        seconds: float | None = None,
        *,
        route: str | None = None,
        stream: str | None = None,
        connection: int | None = None,
        sticky: bool = False,
    ) -> int:
        """Matching connections stay open and send no data until :meth:`resume` or ``seconds``."""
        return self._send(Stall(seconds), Where(route, stream, connection), sticky)

    def resume(self) -> int:
        """End every stall (and forget sticky stalls)."""
        self._sticky = [(c, w) for c, w in self._sticky if not isinstance(c, Stall)]
        return self._send(Resume(), Where(), sticky=False)

    def inject(
        self,
        frames: Sequence[bytes | str],
        *,
        binary: bool = False,
        route: str | None = None,
        stream: str | None = None,
        connection: int | None = None,
    ) -> int:
        """Send arbitrary frames (malformed JSON, wrong types, unknown events, huge …) next."""
        raw = tuple(f.encode() if isinstance(f, str) else bytes(f) for f in frames)
        return self._send(Inject(raw, binary), Where(route, stream, connection), sticky=False)

    def server_shutdown(
        self, *, route: str | None = None, stream: str | None = None, connection: int | None = None
    ) -> int:
        """Send ``{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":<ms>}}``."""
        now = self._now_ms() if self._now_ms is not None else 0
        combined, bare = server_shutdown_frames(now + self.clock_skew_ms)
        return self._send(Inject((combined,), bare=(bare,)), Where(route, stream, connection), sticky=False)

    def sticky_for(self, conn: ConnectionView) -> list[Command]:
        """Sticky commands a new connection starts with."""
        return [c for c, w in self._sticky if w.matches(conn)]

    def skip_depth_diff(
        self,
        symbol: str,
        *,
        index: int | None = None,
        update_id: int | None = None,
        market: Market | None = None,
    ) -> int:
        """Never send one depth diff of ``symbol``: its ``index``-th (0-based) or the one whose
        final update id ``u`` is ``update_id``. Returns its timeline index."""
        tl = self._timeline
        if tl is None:
            raise ConfigError("skip_depth_diff: the venue has not started")
        if (index is None) == (update_id is None):
            raise ConfigError("skip_depth_diff: give exactly one of index or update_id")
        markets: tuple[Market, ...] = (market,) if market else ("futures", "spot")
        sids = [s for m in markets for s in tl.symbol_sids(m, symbol) if tl.streams[s].is_depth_diff]
        if not sids:
            raise ConfigError(f"skip_depth_diff: no depth diff stream for {symbol}")
        sid = sids[0]
        for i, s in enumerate(tl.sid):
            if s != sid:
                continue
            if index is not None and tl.ordinal[i] == index:
                self.skip.add(i)
                return i
            if update_id is not None:
                data = tl.parsed(i)
                if isinstance(data, dict) and data.get("u") == update_id:
                    self.skip.add(i)
                    return i
        raise ConfigError(f"skip_depth_diff: {symbol} has no diff with index={index} update_id={update_id}")

    def silence(self, stream: str, *, market: Market | None = None) -> int:
        """Never send any frame of the capture stream ``stream`` (``btcusdt@bookTicker``) on any
        connection: a subscribed stream that stays silent while its connection streams on.
        Returns how many frames that holds back."""
        tl = self._timeline
        if tl is None:
            raise ConfigError("silence: the venue has not started")
        sids = {
            s for s, info in enumerate(tl.streams) if info.name == stream and market in (None, info.market)
        }
        if not sids:
            raise ConfigError(f"silence: the capture has no stream {stream!r}")
        held = [i for i, s in enumerate(tl.sid) if s in sids]
        self.skip.update(held)
        return len(held)

    def refuse_connections(self, status: int = 503, *, count: int = 1) -> None:
        """The next ``count`` websocket handshakes fail with HTTP ``status``."""
        self._refusals.append(_Refusal(status, count))

    def drop(self, seconds: float, *, route: str | None = None, code: int = ABORT, status: int = 503) -> int:
        """An outage: close matching connections (default: abort TCP) and refuse every handshake
        on ``route`` (``None``: any) with HTTP ``status`` for ``seconds``. Returns the connections hit."""
        if not seconds >= 0 or seconds == float("inf"):
            raise ConfigError(f"drop: seconds must be a finite number >= 0, not {seconds}")
        self._refusals.append(_Refusal(status, 0, route=route, until=time.monotonic() + seconds))
        return self.close(code, route=route)

    def take_refusal(self, route: str = "") -> int | None:
        """Venue side: the status to refuse this handshake on ``route`` with, if any."""
        now = time.monotonic()
        self._refusals = [
            r for r in self._refusals if (r.remaining > 0 if r.until is None else r.until > now)
        ]
        for r in self._refusals:
            if r.route is not None and r.route != route:
                continue
            if r.until is None:
                r.remaining -= 1
            return r.status
        return None

    # ------------------------------------------------------------------ REST faults

    def rest_error(
        self,
        path: str,
        status: int,
        *,
        count: int | None = 1,
        retry_after: float | None = None,
        body: bytes | str | None = None,
    ) -> None:
        """Answer the next ``count`` requests of ``path`` with ``status`` (429/418 carry
        ``Retry-After``, default 1 s; the body defaults to Binance's error for that status)."""
        if retry_after is None and status in (418, 429):
            retry_after = 1.0
        raw = body.encode() if isinstance(body, str) else body
        self._rest.append(RestFault(path, "status", count, status=status, retry_after=retry_after, body=raw))

    def rest_delay(self, path: str, seconds: float, *, count: int | None = 1) -> None:
        """Hold the next ``count`` responses of ``path`` for ``seconds`` (client timeouts)."""
        self._rest.append(RestFault(path, "delay", count, delay_s=seconds))

    def rest_bad_json(self, path: str, *, count: int | None = 1) -> None:
        """Answer the next ``count`` requests of ``path`` with 200 and a truncated JSON body."""
        self._rest.append(RestFault(path, "bad_json", count))

    def take_rest(self, path: str) -> RestFault | None:
        """Venue side: the fault this request of ``path`` gets, if any (consumes one use)."""
        for fault in self._rest:
            if fault.path not in (path, "*") or fault.remaining == 0:
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
            self._rest = [f for f in self._rest if f.remaining != 0]
            return fault
        return None

    def clear(self) -> None:
        """Forget every armed fault (skips, REST faults, sticky faults, refusals, skew) and resume."""
        self.skip.clear()
        self._rest.clear()
        self._refusals.clear()
        self._sticky.clear()
        self.weight_limits.clear()
        self.clock_skew_ms = 0
        self.resume()

    # ------------------------------------------------------------------ control endpoint

    def apply_json(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /_sim/faults``: ``{"action": ..., ...}`` → ``{"ok": true, ...}``.

        Actions: ``close`` (code, after_frames, reason, sticky), ``drop`` (seconds, code, status),
        ``stall`` (seconds, sticky),
        ``resume``, ``inject`` (frames: list of strings, binary), ``server_shutdown``,
        ``skip_depth_diff`` (symbol, index | update_id, market), ``silence`` (stream, market),
        ``refuse_connections``
        (status, count), ``rest_error`` (path, status, count, retry_after, body),
        ``rest_delay`` (path, seconds, count), ``rest_bad_json`` (path, count),
        ``clock_skew`` (ms), ``weight_limit`` (family, limit), ``clear``. Connection faults take
        ``route``, ``stream``, ``connection``. Raises :class:`ConfigError` on a bad request.
        """
        args = dict(body)
        action = args.pop("action", None)
        where = {k: args.pop(k) for k in ("route", "stream", "connection") if k in args}
        try:
            match action:
                case "close":
                    return {"ok": True, "connections": self.close(**args, **where)}
                case "drop":
                    if set(where) - {"route"}:
                        raise ConfigError("drop: only 'route' selects the connections")
                    return {"ok": True, "connections": self.drop(**args, **where)}
                case "stall":
                    return {"ok": True, "connections": self.stall(**args, **where)}
                case "resume":
                    return {"ok": True, "connections": self.resume()}
                case "inject":
                    frames = args.pop("frames")
                    return {"ok": True, "connections": self.inject(frames, **args, **where)}
                case "server_shutdown":
                    return {"ok": True, "connections": self.server_shutdown(**where)}
                case "skip_depth_diff":
                    return {"ok": True, "index": self.skip_depth_diff(**args)}
                case "silence":
                    return {"ok": True, "frames": self.silence(**args)}
                case "refuse_connections":
                    self.refuse_connections(**args)
                case "rest_error":
                    self.rest_error(**args)
                case "rest_delay":
                    self.rest_delay(**args)
                case "rest_bad_json":
                    self.rest_bad_json(**args)
                case "clock_skew":
                    self.clock_skew_ms = int(args["ms"])
                case "weight_limit":
                    self.weight_limits[str(args["family"])] = int(args["limit"])
                case "clear":
                    self.clear()
                case _:
                    raise ConfigError(f"unknown fault action {action!r}")
        except (TypeError, KeyError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{action}: bad arguments {sorted(body)}: {exc}") from exc
        return {"ok": True}
