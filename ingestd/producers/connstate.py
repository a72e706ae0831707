"""Runtime state of the streams producer's connections: what :meth:`StreamsProducer.stats`
reports and what its controller and readers update (no I/O here).

A :class:`Slot` is one planned connection for the whole run (counters, backoff, the sockets it
currently has); a :class:`Live` is one open socket of it (the primary, or a rotation candidate
while a make-before-break rotation runs); a :class:`StreamStats` counts one stream.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Sequence
from typing import Any

from ingestd.backoff import Backoff
from ingestd.channels import Cadence, ChannelSpec
from ingestd.config import StreamSettings
from ingestd.producers.dedupe import Handover
from ingestd.producers.plan import ConnectionPlan
from ingestd.producers.transport import WsConnection
from ingestd.venues.binance.channels import cadence_of

HANDOVER_MAX_HELD = 100_000
"""Records a rotation candidate may buffer before the switch is forced (bounds its memory)."""

QUIET_STALE_FACTOR = 10
"""A connection without a book-driven stream (only trades, klines, tickers, liquidations…) waits
this many times ``stale_after_s`` before it calls itself stale: a thin market is quiet, and the
keepalive pings already catch a dead TCP connection."""


def stale_deadline(streams: Sequence[str], settings: StreamSettings, venue: str) -> float:
    """Seconds without any frame after which a connection carrying ``streams`` on ``venue`` is
    stale: ``stale_after_s`` when one of them is :attr:`~ingestd.channels.Cadence.BOOK` (pushed
    on a cadence, trades or not: silence is a stall), else :data:`QUIET_STALE_FACTOR` times it."""
    steady = any(cadence_of(venue, s) is Cadence.BOOK for s in streams)
    return settings.stale_after_s if steady else settings.stale_after_s * QUIET_STALE_FACTOR


def _age(now: float, t: float) -> float | None:
    return round(now - t, 3) if t else None


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


class StreamStats:
    """Counters of one stream (across every socket that carried it)."""

    __slots__ = (
        "cadence", "connection", "duplicates", "errors_in_episode", "first_frame_ts", "frames",
        "id_reset_at", "id_resets", "last_frame", "parse_errors", "records", "spec",
    )  # fmt: skip

    def __init__(self, connection: str, cadence: Cadence) -> None:
        self.connection = connection
        self.cadence = cadence
        self.frames = 0
        self.records = 0
        self.parse_errors = 0
        self.duplicates = 0
        self.id_resets = 0
        """Times the stream's ids restarted lower (each wrote an ``id_reset`` gap record)."""
        self.id_reset_at = float("-inf")
        self.errors_in_episode = 0
        self.first_frame_ts: int | None = None
        self.last_frame = 0.0
        self.spec: ChannelSpec | None = None
        """The channel of the stream's records (identity and order key for the duplicate filter)."""

    def snapshot(self, now: float) -> dict[str, Any]:
        """The stream's part of ``stats()``."""
        return {
            "connection": self.connection,
            "cadence": self.cadence.value,
            "frames": self.frames,
            "records": self.records,
            "parse_errors": self.parse_errors,
            "duplicates": self.duplicates,
            "id_resets": self.id_resets,
            "first_frame_seen": self.first_frame_ts is not None,
            "first_frame_ts": self.first_frame_ts,
            "last_frame_age_s": _age(now, self.last_frame),
        }


class Live:
    """One open socket of a slot: the primary, or a rotation candidate."""

    __slots__ = (
        "busy_at", "connected", "data_seen", "emitting", "end_reason", "handover", "last_frame",
        "reader", "shutdown_notice", "silence_checked", "source", "unseen", "ws",
    )  # fmt: skip

    def __init__(self, ws: WsConnection, streams: Sequence[str], *, candidate: bool) -> None:
        self.ws = ws
        self.connected = time.monotonic()
        self.last_frame = self.connected
        self.data_seen = False
        self.unseen = set(streams)
        self.silence_checked = False
        self.end_reason: str | None = None
        self.emitting = False
        """The reader waits in ``emit`` or for the emit lock (back-pressure, a rotation's other
        reader): frames queue in the socket, which is not a stall."""
        self.busy_at = 0.0
        """When the watchdog last saw the reader waiting so (staleness counts from the later of
        this and ``last_frame``; ``last_frame`` itself stays the last frame read)."""
        self.shutdown_notice = False
        """The venue announced ``serverShutdown`` on this socket; a rotation replaces it."""
        self.reader: asyncio.Task[None] | None = None
        self.source = object()
        """Names this socket to the duplicate filter (a token: the marks must not keep a closed
        socket alive)."""
        self.handover: Handover | None = Handover(self.source) if candidate else None
        """Set while this socket is a rotation candidate; ``None`` once it is the primary."""

    def heard_at(self) -> float:
        """Since when the connection counts as quiet."""
        return max(self.last_frame, self.busy_at)

    def overfull(self) -> bool:
        """The candidate buffers so much that the old socket is far behind: switch now."""
        return self.handover is not None and self.handover.held >= HANDOVER_MAX_HELD

    def handover_ready(self, primary: Live) -> bool:
        """Overlap is proven on every key, and the primary has read a frame that arrived after
        this socket opened (so its backlog from before is drained)."""
        return (
            self.data_seen
            and self.handover is not None
            and self.handover.ready()
            and primary.last_frame >= self.connected
        )


class Slot:
    """Everything about one planned connection that outlives its sockets."""

    def __init__(self, plan: ConnectionPlan, ws_url: str, settings: StreamSettings, venue: str) -> None:
        self.plan = plan
        self.url = plan.url(ws_url)
        self.source = plan.source(ws_url)
        self.backoff = Backoff.from_settings(settings)
        self.rotate_backoff = Backoff.from_settings(settings)
        self.stale_after_s = stale_deadline(plan.streams, settings, venue)
        self.state = SlotState.IDLE
        self.primary: Live | None = None
        self.candidate: Live | None = None
        self.immediate = False
        """Reconnect without a backoff delay (after a serverShutdown notice)."""
        self.last_shutdown = float("-inf")
        self.rotate_at = 0.0
        self.opening: asyncio.Task[Live | None] | None = None
        self.emit_lock = asyncio.Lock()
        self._wake: asyncio.Future[None] | None = None
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

    def wake_future(self) -> asyncio.Future[None]:
        """What the controller waits on besides its deadlines; :meth:`poke` resolves it."""
        if self._wake is None or self._wake.done():
            self._wake = asyncio.get_running_loop().create_future()
        return self._wake

    def poke(self) -> None:
        """Wake the controller now (a reader saw something it must act on)."""
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def snapshot(self, now: float) -> dict[str, Any]:
        """The connection's part of ``stats()``."""
        return {
            "state": self.state.value,
            "url": self.url,
            "connects": self.connects,
            "reconnects": self.reconnects,
            "reconnect_reasons": dict(self.reasons),
            "connect_failures": self.connect_failures,
            "last_error": self.last_error,
            "rotations": self.rotations,
            "frames": self.frames,
            "bytes": self.bytes,
            "parse_errors": self.parse_errors,
            "last_frame_age_s": _age(now, self.last_frame),
            "backoff_attempts": self.backoff.attempts,
            "silent_streams": list(self.silent),
        }
