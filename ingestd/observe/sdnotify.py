"""systemd's notify protocol over the ``NOTIFY_SOCKET`` datagram socket (no dependency).

``READY=1`` once the daemon is streaming, ``WATCHDOG=1`` pings only while healthy (so systemd
restarts a daemon that is alive but useless), ``STATUS=…`` lines for ``systemctl status``, and
``STOPPING=1`` at shutdown. Without ``NOTIFY_SOCKET`` (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("ingestd.observe")


class SdNotifier:
    """Sends notify messages; owns its socket; ``close()`` is idempotent."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET") or None
        self._sock: socket.socket | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            # Ping at half the interval systemd asked for, as sd_watchdog_enabled(3) advises.
            self.watchdog_interval_s = int(usec) / 2_000_000
        self.sent = 0
        self.errors = 0

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def _target(self) -> str | bytes:
        assert self._address is not None
        # A leading '@' names a socket in the abstract namespace.
        return b"\0" + self._address[1:].encode() if self._address.startswith("@") else self._address

    def notify(self, message: str) -> bool:
        """Send one message (``READY=1``, ``STATUS=…``); ``False`` when off or on error."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self._target())
        except OSError as exc:
            self.errors += 1
            if self.errors == 1:
                log.warning("sd_notify to %s failed: %s", self._address, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
