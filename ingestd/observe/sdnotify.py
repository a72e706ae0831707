"""systemd's notify protocol over the ``NOTIFY_SOCKET`` datagram socket (no dependency).

``READY=1`` once the daemon is streaming, ``WATCHDOG=1`` pings only while healthy (so systemd
restarts a daemon that is alive but useless), ``STATUS=…`` lines for ``systemctl status``, and
``STOPPING=1`` at shutdown. Without ``NOTIFY_SOCKET`` (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

log = logging.getLogger("ingestd.observe")

Readiness = Callable[[], tuple[bool, dict[str, Any]]]

STATUS_INTERVAL_S: Final = 5.0
"""How often readiness is checked for STATUS when systemd asked for no watchdog."""


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
        self._failing = 0

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
                # Non-blocking: a full receive queue (systemd busy) must never stall the event
                # loop; that message is dropped and counted instead.
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._sock.sendto(message.encode(), self._target())
        except OSError as exc:
            self.errors += 1
            if not self._failing:
                log.warning("sd_notify to %s failed: %s (counting until one succeeds)", self._address, exc)
            self._failing += 1
            return False
        if self._failing:
            log.info("sd_notify to %s works again after %d failed message(s)", self._address, self._failing)
            self._failing = 0
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
        """Close the socket. Idempotent; a later :meth:`notify` opens a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def status_line(ok: bool, detail: Mapping[str, Any]) -> str:
    """One line for ``systemctl status``: ``ready`` or the first reasons it is not."""
    if ok:
        return "ready: streaming"
    reasons = [str(r) for r in detail.get("not_ready") or ()]
    more = f" (+{len(reasons) - 2} more)" if len(reasons) > 2 else ""
    return "not ready: " + "; ".join(reasons[:2]) + more


class ServiceNotifier:
    """The daemon's side of ``Type=notify``, on top of an :class:`SdNotifier`.

    ``READY=1`` once, when every planned websocket connection has delivered data (or at once
    when there are none, :meth:`ready`); from then a task owned here checks ``readiness`` every
    half ``WATCHDOG_USEC`` and sends ``WATCHDOG=1`` only while it holds, so systemd restarts a
    daemon that is alive but stuck; ``STATUS=`` when the summary changes; readiness flips are
    logged (transitions only). :meth:`stopping` cancels the task and sends ``STOPPING=1``, the
    last message. Without ``NOTIFY_SOCKET`` nothing is sent and no task runs.
    """

    def __init__(self, notifier: SdNotifier, readiness: Readiness) -> None:
        self.notifier = notifier
        self._readiness = readiness
        self._flowing: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self.ready_sent = False
        self.last_ok: bool | None = None

    def data_flowing(self, connection: str, planned: Collection[str]) -> None:
        """``connection`` delivered its first data; READY once every ``planned`` one has."""
        if self.ready_sent:
            return
        self._flowing.add(connection)
        if self._flowing.issuperset(planned):
            self.ready(f"streaming on {len(self._flowing)} connection(s)")

    def ready(self, status: str) -> None:
        """Send ``READY=1`` (once) and start the watchdog task."""
        if self.ready_sent or self._stopped:
            return
        self.ready_sent = True
        log.info("%s", status)
        if not self.notifier.enabled:
            return
        self.notifier.ready(status)
        self._task = asyncio.create_task(self._watch(), name="sd_notify:watchdog")

    async def _watch(self) -> None:
        interval = self.notifier.watchdog_interval_s or STATUS_INTERVAL_S
        last_key: tuple[str, ...] | None = None
        while True:
            try:
                ok, detail = self._readiness()
            except Exception:
                # A bug in a stats() must not end the task silently: count it as not ready.
                if self.last_ok is not False:
                    log.exception("readiness check failed")
                ok, detail = False, {"not_ready": ["readiness check failed"]}
            if ok and self.notifier.watchdog_interval_s is not None:
                self.notifier.watchdog()
            if ok is not self.last_ok:
                if ok and self.last_ok is not None:
                    log.info("ready again: watchdog pings resume")
                elif not ok:
                    log.warning("%s; watchdog pings withheld", status_line(ok, detail))
                self.last_ok = ok
            # A new STATUS when the set of reasons changes, not each time an age in one ticks.
            key = tuple(str(r).split(": ")[0] for r in detail.get("not_ready") or ())
            if key != last_key:
                self.notifier.status(status_line(ok, detail))
                last_key = key
            await asyncio.sleep(interval)

    async def stopping(self) -> None:
        """Stop the watchdog task, then send ``STOPPING=1``. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.notifier.stopping()
