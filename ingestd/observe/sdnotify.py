"""systemd's notify protocol over the ``NOTIFY_SOCKET`` datagram socket (no dependency).

``READY=1`` once the daemon is streaming, ``WATCHDOG=1`` pings only while it is alive (the rule
in :mod:`ingestd.observe.liveness`, the same one ``/healthz`` answers: so systemd restarts a
daemon that is hung or stuck, never one that merely has a silent stream), ``STATUS=…`` lines
for ``systemctl status`` (liveness, else readiness), and ``STOPPING=1`` at shutdown. Without
``NOTIFY_SOCKET`` (not under systemd) every call is a no-op.
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
"""``() -> (ok, detail)``: readiness (``detail["not_ready"]``) or liveness (``detail["not_alive"]``)."""


def _always_alive() -> tuple[bool, dict[str, Any]]:
    return True, {"not_alive": []}


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


def alive_line(detail: Mapping[str, Any]) -> str:
    """One line for ``systemctl status`` when the daemon is not alive: the first reasons."""
    reasons = [str(r) for r in detail.get("not_alive") or ()]
    more = f" (+{len(reasons) - 2} more)" if len(reasons) > 2 else ""
    return "not alive: " + ("; ".join(reasons[:2]) or "unknown") + more


class ServiceNotifier:
    """The daemon's side of ``Type=notify``, on top of an :class:`SdNotifier`.

    ``READY=1`` once, when every planned websocket connection has delivered data or reported
    its streams silent (or at once when there are none, :meth:`ready`); from then a task owned
    here checks ``liveness`` every half ``WATCHDOG_USEC`` and sends ``WATCHDOG=1`` only while it
    holds, so systemd restarts a daemon that is hung or stuck. Readiness is reported, never
    enforced: ``STATUS=`` names what is not ready (or why the daemon is not alive) when that
    changes, and flips of either are logged (transitions only). :meth:`stopping` cancels the
    task and sends ``STOPPING=1``, the last message. Without ``NOTIFY_SOCKET`` nothing is sent
    and no task runs.
    """

    def __init__(self, notifier: SdNotifier, readiness: Readiness, liveness: Readiness | None = None) -> None:
        self.notifier = notifier
        self._readiness = readiness
        self._liveness = liveness or _always_alive
        self._flowing: set[str] = set()
        self._silent: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self.ready_sent = False
        self.last_ok: bool | None = None
        self.last_alive: bool | None = None
        self.rounds = 0
        """Watchdog rounds run (one check of liveness and readiness each)."""
        self.pings = 0
        """``WATCHDOG=1`` sent."""
        self.withheld = 0
        """Rounds that sent no ``WATCHDOG=1`` because the daemon was not alive."""

    def data_flowing(self, connection: str, planned: Collection[str]) -> None:
        """``connection`` delivered its first data; READY once every ``planned`` one has."""
        if self.ready_sent:
            return
        self._flowing.add(connection)
        self._maybe_ready(planned)

    def streams_silent(self, connection: str, planned: Collection[str]) -> None:
        """``connection`` passed its first-frame deadline with silent streams: it has had its
        chance (the silence is reported), so start-up does not wait for it any longer."""
        if self.ready_sent:
            return
        self._silent.add(connection)
        self._maybe_ready(planned)

    def _maybe_ready(self, planned: Collection[str]) -> None:
        if not (self._flowing | self._silent).issuperset(planned):
            return
        quiet = self._silent - self._flowing
        extra = f", {len(quiet)} with no data yet (silent streams)" if quiet else ""
        self.ready(f"streaming on {len(self._flowing)} connection(s){extra}")

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

    @staticmethod
    def _check(check: Readiness, what: str, key: str, previous: bool | None) -> tuple[bool, dict[str, Any]]:
        try:
            return check()
        except Exception:
            # A bug in a stats() must not end the task silently: count it as failing (logged once).
            if previous is not False:
                log.exception("%s check failed", what)
            return False, {key: [f"{what} check failed"]}

    async def _watch(self) -> None:
        interval = self.notifier.watchdog_interval_s or STATUS_INTERVAL_S
        last_key: tuple[str, ...] | None = None
        while True:
            self.rounds += 1
            alive, why = self._check(self._liveness, "liveness", "not_alive", self.last_alive)
            ok, detail = self._check(self._readiness, "readiness", "not_ready", self.last_ok)
            if alive:
                if self.notifier.watchdog_interval_s is not None:
                    self.notifier.watchdog()
                    self.pings += 1
            else:
                self.withheld += 1
            # Liveness logs its own flips (it is checked by /healthz too): nothing to add here.
            self.last_alive = alive
            if ok is not self.last_ok:
                if ok and self.last_ok is not None:
                    log.info("ready again")
                elif not ok:
                    # Reported, not enforced: a silent stream is data quality, not a hung daemon.
                    log.warning("%s (watchdog pings go on while alive)", status_line(ok, detail))
                self.last_ok = ok
            line = status_line(ok, detail) if alive else alive_line(why)
            # A new STATUS when the set of reasons changes, not each time an age in one ticks.
            reasons = detail.get("not_ready") if alive else why.get("not_alive")
            key = (str(alive), *(str(r).split(": ")[0] for r in reasons or ()))
            if key != last_key:
                self.notifier.status(line)
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
