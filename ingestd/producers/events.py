"""What producers hand to the rest of the daemon: record batches and connection events."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ingestd.records import AnyRecord

Emit = Callable[[Sequence[AnyRecord]], Awaitable[None]]
"""Where a producer sends each batch (one per frame or REST body). May wait (back-pressure)."""


class ConnectionEventKind(enum.StrEnum):
    CONNECTED = "connected"
    """The socket is open and subscribed; ``streams`` are the ones it carries."""
    DATA_FLOWING = "data_flowing"
    """The first data frame arrived on this connection (backoff resets now)."""
    DISCONNECTED = "disconnected"
    """The socket closed or failed; ``reason`` says why. Books of its symbols must resync."""
    STREAM_SILENT = "stream_silent"
    """A subscribed stream delivered nothing within its first-frame deadline (``streams``)."""
    STALE = "stale"
    """No frame at all for ``stale_after_s``: the watchdog is reconnecting."""
    ROTATED = "rotated"
    """A make-before-break rotation finished; the old connection is closed."""
    SERVER_SHUTDOWN = "server_shutdown"
    """The venue announced a shutdown; reconnecting at once."""


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """A transition of one websocket connection. Logged, counted and fed to books/gap log."""

    kind: ConnectionEventKind
    connection: str
    """Stable name: ``<venue>/<route>#<index>``, e.g. ``binance-usdm/public#0``."""
    streams: tuple[str, ...]
    natives: tuple[str, ...]
    ts: int
    """ns wall clock."""
    reason: str = ""


OnConnectionEvent = Callable[[ConnectionEvent], None]
