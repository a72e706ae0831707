"""systemd's notify protocol: messages received on a real AF_UNIX datagram socket.

The daemon (against the sim replaying the real capture in real time) must send ``READY=1`` once
every connection streams, ``WATCHDOG=1`` while it is alive, also while a stream is stalled and
/readyz is 503 (that is reported in ``STATUS=``, never enforced), and ``STOPPING=1`` last. The
liveness failures that do withhold pings are in test_liveness.py.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from ingestd.app import Daemon
from ingestd.observe.sdnotify import SdNotifier, ServiceNotifier, alive_line, status_line
from ingestd.sim import SimVenue
from tests.e2e import settings_for, wait_for
from tests.ops import Listener, running

WATCHDOG_USEC = 100_000
"""systemd's WatchdogSec in µs: pings are due every 50 ms."""
FRESHNESS_S = 1.0
"""bookTicker and depth@0ms are never quiet for more than 0.16 s in the capture's first 30 s."""


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    lst = Listener(tmp_path / "notify.sock")
    try:
        yield lst
    finally:
        lst.close()


@pytest_asyncio.fixture
async def watched(tmp_path: Path) -> AsyncIterator[Listener]:
    """A listener drained by the event loop itself (for daemon runs)."""
    lst = Listener(tmp_path / "notify.sock")
    lst.watch()
    try:
        yield lst
    finally:
        lst.drain()
        lst.close()


@pytest.mark.asyncio
async def test_ready_then_watchdog_while_alive_even_when_not_ready_then_stopping(
    bundled_capture: Path, tmp_path: Path, watched: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = watched
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    async with SimVenue([bundled_capture], speed=1.0) as sim:
        settings = settings_for(
            sim.rest_url,
            sim.ws_url,
            tmp_path / "data",
            symbols="BTCUSDT",
            channels="trade,book_ticker,depth_diff",
            storage={"enabled": False},
            health={
                "port": 0,
                "freshness_s": FRESHNESS_S,
                "quiet_freshness_s": FRESHNESS_S,
            },  # no HTTP: liveness and readiness drive sd_notify alone
        )
        daemon = Daemon(settings)
        svc = daemon.service
        assert daemon.notifier.watchdog_interval_s == pytest.approx(0.05)
        async with running(daemon) as task:
            # The watched listener reads every datagram as it arrives (add_reader).
            await wait_for(
                lambda: daemon.readiness()[0] and "STATUS=ready: streaming" in listener.lines(), 15
            )
            lines = listener.lines()
            ready = [i for i, m in enumerate(lines) if m.startswith("READY=1")]
            assert len(ready) == 1
            assert ready[0] < lines.index("WATCHDOG=1")
            assert lines[ready[0]] == "READY=1\nSTATUS=streaming on 2 connection(s)"
            assert daemon.notifier.errors == 0

            # Stall the /public socket (bookTicker + depth): stale after 1 s, so not ready; /market
            # (trades) streams on, so the daemon is alive and the pings go on.
            assert sim.faults.stall(stream="btcusdt@bookTicker") == 1
            await wait_for(lambda: not daemon.readiness()[0], FRESHNESS_S + 5)
            mark, pings, stalled_at = len(listener.messages), svc.pings, time.monotonic()
            # A dozen watchdog rounds on, and past the freshness deadline again.
            await wait_for(
                lambda: svc.pings >= pings + 12 and time.monotonic() - stalled_at > FRESHNESS_S, 30
            )
            assert not daemon.readiness()[0]
            assert svc.withheld == 0
            during = [m for _, m in listener.messages[mark:]]
            assert during.count("WATCHDOG=1") >= 12
            status = [m for m in listener.lines() if m.startswith("STATUS=not ready: ")]
            assert status
            assert "stream btcusdt@bookTicker: last frame" in status[-1]

            sim.faults.resume()
            mark = len(listener.messages)
            await wait_for(lambda: "STATUS=ready: streaming" in [m for _, m in listener.messages[mark:]], 10)
        assert task.result() == 0
    listener.drain()
    assert daemon.notifier.errors == 0  # nothing was refused: the listener saw every message
    assert svc.withheld == 0  # alive throughout
    lines = listener.lines()
    assert lines[-1] == "STOPPING=1"
    assert lines.count("STOPPING=1") == 1
    assert lines.count("READY=1\nSTATUS=streaming on 2 connection(s)") == 1
    assert lines.index("STATUS=ready: streaming") < len(lines) - 1
    assert not any(m.startswith("STATUS=not alive") for m in lines)


@pytest.mark.asyncio
async def test_ready_at_once_without_streams(
    bundled_capture: Path, tmp_path: Path, watched: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only REST depth snapshots: nothing to stream, READY as soon as start-up is done."""
    listener = watched
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    async with SimVenue([bundled_capture], speed=0) as sim:
        settings = settings_for(
            sim.rest_url, sim.ws_url, tmp_path / "data", symbols="BTCUSDT", channels="depth_snapshot",
            storage={"enabled": False}, health={"port": 0}, clock={"enabled": False},
        )  # fmt: skip
        daemon = Daemon(settings)
        async with running(daemon):
            await wait_for(lambda: bool(listener.drain()) or bool(listener.messages), 10)
        listener.drain()
    lines = listener.lines()
    assert lines[0] == "READY=1\nSTATUS=running: no websocket streams to wait for"
    assert lines[-1] == "STOPPING=1"
    # No WATCHDOG_USEC: no pings, but readiness still reaches systemctl status.
    assert "WATCHDOG=1" not in lines


def test_notifier_is_a_no_op_without_notify_socket() -> None:
    n = SdNotifier({})
    assert not n.enabled
    assert n.watchdog_interval_s is None
    assert n.ready() is False
    assert n.watchdog() is False
    assert n.sent == 0
    n.close()
    n.close()


def test_watchdog_interval_and_pid(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    assert SdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"}).watchdog_interval_s == 15.0
    mine = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert SdNotifier(mine).watchdog_interval_s == 15.0
    # WATCHDOG_PID names another process (we were forked from the one systemd watches): not ours.
    other = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert SdNotifier(other).watchdog_interval_s is None
    assert SdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "0"}).watchdog_interval_s is None
    assert SdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "x"}).watchdog_interval_s is None


def test_messages_reach_the_socket_in_order(listener: Listener) -> None:
    n = SdNotifier({"NOTIFY_SOCKET": str(listener.path)})
    assert n.enabled
    assert n.ready("up")
    assert n.status("busy")
    assert n.watchdog()
    assert n.stopping()
    assert n.sent == 4
    n.close()
    assert listener.drain() == ["READY=1\nSTATUS=up", "STATUS=busy", "WATCHDOG=1", "STOPPING=1"]


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX") or os.uname().sysname != "Linux", reason="Linux only")
def test_abstract_namespace_socket() -> None:
    name = f"ingestd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(b"\0" + name.encode())
        srv.settimeout(2)
        n = SdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert n.watchdog()
        assert srv.recv(100) == b"WATCHDOG=1"
        n.close()


def test_failures_are_counted_and_logged_once_per_episode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ingestd.observe")
    path = tmp_path / "late.sock"
    n = SdNotifier({"NOTIFY_SOCKET": str(path)})
    assert n.watchdog() is False  # nobody listens yet
    assert n.watchdog() is False
    assert n.errors == 2
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(str(path))
        assert n.watchdog() is True
    logged = [r.getMessage() for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(logged) == 2
    assert logged[0].startswith(f"sd_notify to {path} failed: ")
    assert logged[1] == f"sd_notify to {path} works again after 2 failed message(s)"
    n.close()


def test_a_full_queue_never_blocks(listener: Listener) -> None:
    """systemd not reading: sends fail at once (counted) instead of blocking the event loop."""
    n = SdNotifier({"NOTIFY_SOCKET": str(listener.path)})
    started = time.monotonic()
    results = [n.watchdog() for _ in range(2_000)]
    assert time.monotonic() - started < 2
    assert results[0] is True
    assert results[-1] is False
    assert n.errors == results.count(False) > 0
    assert len(listener.drain()) == n.sent
    n.close()


@pytest.mark.asyncio
async def test_service_notifier_sequence(listener: Listener) -> None:
    """READY once all planned connections flowed; WATCHDOG every round while alive, ready or
    not; none while not alive; STATUS when the reasons change. Synced on the notifier's rounds."""
    state: dict[str, bool] = {"ok": True, "alive": True}

    def readiness() -> tuple[bool, dict[str, object]]:
        return state["ok"], {"not_ready": [] if state["ok"] else ["a", "b", "c"]}

    def liveness() -> tuple[bool, dict[str, object]]:
        return state["alive"], {"not_alive": [] if state["alive"] else ["event loop blocked: 3 s"]}

    sd = SdNotifier({"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "20000"})
    svc = ServiceNotifier(sd, readiness, liveness)
    planned = ("v/public#0", "v/market#0")
    sent = [svc.ready_sent]
    svc.data_flowing("v/public#0", planned)
    sent.append(svc.ready_sent)
    svc.data_flowing("v/public#0", planned)
    sent.append(svc.ready_sent)
    svc.data_flowing("v/market#0", planned)
    sent.append(svc.ready_sent)
    assert sent == [False, False, False, True]
    svc.data_flowing("v/market#0", planned)  # a reconnect: READY is not repeated

    async def rounds(n: int) -> list[str]:
        """Wait until ``n`` more rounds ran; the datagrams that arrived meanwhile."""
        mark, target = len(listener.messages), svc.rounds + n

        def done() -> bool:
            listener.drain()  # the kernel queues only ~10 datagrams: keep reading while waiting
            return svc.rounds >= target

        await wait_for(done, 10)
        listener.drain()
        return [m for _, m in listener.messages[mark:]]

    await rounds(2)
    state["ok"] = False
    not_ready = await rounds(3)
    assert not_ready.count("STATUS=not ready: a; b (+1 more)") == 1
    assert not_ready.count("WATCHDOG=1") >= 2  # not ready is reported, never enforced
    withheld = svc.withheld
    assert withheld == 0
    state["alive"] = False
    dead = await rounds(3)
    assert "STATUS=not alive: event loop blocked: 3 s" in dead
    # Every round from the one that saw "not alive" on withheld its ping.
    assert "WATCHDOG=1" not in dead[dead.index("STATUS=not alive: event loop blocked: 3 s") :]
    assert svc.withheld >= 3
    state["alive"] = state["ok"] = True
    back = await rounds(2)
    assert "WATCHDOG=1" in back
    assert "STATUS=ready: streaming" in back
    await svc.stopping()
    await svc.stopping()
    listener.drain()
    lines = listener.lines()
    assert lines[0] == "READY=1\nSTATUS=streaming on 2 connection(s)"
    assert lines[1:3] == ["WATCHDOG=1", "STATUS=ready: streaming"]
    assert lines[-1] == "STOPPING=1"
    assert lines.count("READY=1\nSTATUS=streaming on 2 connection(s)") == 1
    assert svc.pings == lines.count("WATCHDOG=1")
    assert svc.pings + svc.withheld == svc.rounds
    sd.close()


@pytest.mark.asyncio
async def test_ready_waits_no_longer_for_a_connection_whose_streams_are_silent(listener: Listener) -> None:
    """A connection that passed its first-frame deadline with no data has had its chance: READY
    does not wait for it (its silence is reported in the gap log, metrics and /readyz)."""
    sd = SdNotifier({"NOTIFY_SOCKET": str(listener.path)})
    svc = ServiceNotifier(sd, lambda: (True, {}))
    planned = ("v/public#0", "v/market#0")
    svc.data_flowing("v/public#0", planned)
    sent = [svc.ready_sent]
    svc.streams_silent("v/market#0", planned)
    sent.append(svc.ready_sent)
    svc.streams_silent("v/market#0", planned)  # a later silence: READY is not repeated
    assert sent == [False, True]
    await svc.stopping()
    assert listener.drain() == [
        "READY=1\nSTATUS=streaming on 1 connection(s), 1 with no data yet (silent streams)",
        "STOPPING=1",
    ]
    sd.close()


def test_status_line() -> None:
    assert alive_line({"not_alive": ["x", "y", "z"]}) == "not alive: x; y (+1 more)"
    assert status_line(True, {}) == "ready: streaming"
    assert status_line(False, {"not_ready": ["x"]}) == "not ready: x"
    assert status_line(False, {"not_ready": ["x", "y", "z", "w"]}) == "not ready: x; y (+2 more)"
