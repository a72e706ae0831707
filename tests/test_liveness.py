"""Liveness (systemd ``WATCHDOG=1`` and ``/healthz``): the rule, and the daemon under a real
AF_UNIX notify socket against the sim replaying the real BTCUSDT capture.

* a subscribed stream that never sends (the sim silences it): pings go on past every freshness
  and first-frame deadline, ``/readyz`` names the stream, metrics flag it, the gap log has a
  ``silent_stream`` record;
* the event loop blocked longer than ``health.loop_deadline_s``: no ping and ``/healthz`` 503;
* the venue unreachable (connection refused, backing off): pings go on;
* the intake blocked by a consumer past its deadline: no ping and ``/healthz`` 503, until it
  moves again.

Waits are on counters (the notifier's rounds and pings, connection events, connect failures);
where a deadline must pass, the test waits for that much time *and* for the counters to move,
and asserts on what the daemon decided in every round, never on how long anything took.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from ingestd.app import Daemon
from ingestd.book.records import Gap
from ingestd.config import HealthSettings, StreamSettings
from ingestd.observe.liveness import Intake, Liveness
from ingestd.observe.quiet import QuietStreams
from ingestd.records import Record
from ingestd.sim import SimVenue
from ingestd.venues.binance.symbols import Contract, ContractSet
from tests.e2e import read_channel, settings_for
from tests.ops import Listener, free_port, get_json, running, scrape, value, wait_for

WATCHDOG_USEC = 100_000
"""systemd's WatchdogSec in µs: a watchdog round every 50 ms."""
TICKER = "btcusdt@bookTicker"


@pytest_asyncio.fixture
async def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Listener]:
    """systemd's side of ``Type=notify`` with ``WatchdogSec=0.1``, drained by the event loop."""
    lst = Listener(tmp_path / "notify.sock")
    lst.watch()
    monkeypatch.setenv("NOTIFY_SOCKET", str(lst.path))
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    try:
        yield lst
    finally:
        lst.drain()
        lst.close()


def since(listener: Listener, mark: int) -> list[str]:
    return [m for _, m in listener.messages[mark:]]


# --------------------------------------------------------------------------- the rule


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def conn(frames: int = 0, connects: int = 1, failures: int = 0, state: str = "streaming") -> dict[str, Any]:
    return {"frames": frames, "connects": connects, "connect_failures": failures, "state": state}


def streams_stats(connections: dict[str, dict[str, Any]], carried: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "connections": connections,
        "streams": {s: {"connection": c} for c, names in carried.items() for s in names},
    }


def liveness(
    intake: Callable[[], Intake], clock: Clock, *, loop_deadline_s: float = 2.0, liveness_s: float = 5.0
) -> Liveness:
    health = HealthSettings(loop_deadline_s=loop_deadline_s, liveness_s=liveness_s)
    streams = StreamSettings(stale_after_s=60.0, backoff_max_s=30.0, connect_timeout_s=10.0)
    return Liveness(health, streams, intake, venue="binance-usdm", clock=clock)


def test_loop_deadline_a_late_heartbeat_and_a_missing_one() -> None:
    clock = Clock()
    live = liveness(lambda: Intake(phase="starting"), clock)
    assert live.tick_s == 0.5  # a quarter of the 2 s deadline
    assert live.check() == (
        True,
        {"not_alive": [], "intake": "starting", "loop_lag_s": 0.0, "loop_worst_lag_s": 0.0},
    )
    # Not started: the loop is not watched yet.
    live._last_beat = clock.now  # what start() does, without a running loop
    clock.now += 1.9
    assert live.check()[0]
    clock.now += 0.2  # 2.1 s without a heartbeat
    ok, detail = live.check()
    assert not ok
    assert detail["not_alive"] == ["event loop blocked: no heartbeat for 2.1 s (limit 2 s)"]
    # The heartbeat that was due 0.5 s after the last one runs now, 1.6 s late: within the limit.
    live.beat(clock.now - 1.6)
    assert live.check()[0]
    # One 3 s late: not alive for the next 2 s, whatever runs first after the block.
    clock.now += 3.5
    live.beat(clock.now - 3.0)
    assert (live.late_beats, live.last_lag_s) == (1, 3.0)
    ok, detail = live.check()
    assert not ok
    assert detail["not_alive"][0].startswith("event loop was blocked 0.0 s ago")
    clock.now += 0.5
    live.beat(clock.now)
    clock.now += 1.4
    live.beat(clock.now)
    assert not live.check()[0]  # 1.9 s after the late beat
    clock.now += 0.2
    live.beat(clock.now)
    assert live.check()[0]
    assert (live.checks, live.failed_checks) == (7, 3)


def test_intake_phases_and_runs_without_websockets_are_alive() -> None:
    clock = Clock()
    state = {"intake": Intake(phase="waiting out a REST ban until 2026-01-01T00:00:00Z")}
    live = liveness(lambda: state["intake"], clock)
    clock.now += 10_000
    ok, detail = live.check()
    assert (ok, detail["intake"]) == (True, "waiting out a REST ban until 2026-01-01T00:00:00Z")
    state["intake"] = Intake(streams=None)
    assert live.check()[1]["intake"] == "no websocket streams (REST only)"
    assert live.check()[0]


def test_intake_progress_frames_connects_and_retries_within_each_connections_deadline() -> None:
    """Allowance: max(stale deadline, backoff cap + connect timeout) + liveness_s, per connection:
    /public (book streams) 60 + 5 s; /market (trades only: 10x stale) 600 + 5 s."""
    clock = Clock()
    conns = {"v/public#0": conn(frames=10), "v/market#0": conn(frames=3)}
    carried = {"v/public#0": ["btcusdt@bookTicker", "btcusdt@depth@0ms"], "v/market#0": ["btcusdt@trade"]}
    live = liveness(lambda: Intake(streams=streams_stats(conns, carried)), clock)
    assert live.check()[0]
    # /market is quiet for 601 s (trades-only: its own deadline is 600 s), /public streams on.
    for _ in range(10):
        clock.now += 60.1
        conns["v/public#0"]["frames"] += 1
        assert live.check()[0]
    # /public stops too: 64 s later it is past its 65 s allowance only by the next check...
    clock.now += 64.9
    ok, detail = live.check()
    assert ok, detail
    assert detail["intake"] == "1 of 2 connection(s) made progress within their deadline"
    clock.now += 0.2
    ok, detail = live.check()
    assert not ok
    (reason,) = detail["not_alive"]
    assert reason == (
        "intake stuck: no connection read a frame, connected or retried in time: "
        "v/public#0 65 s (allowed 65 s); v/market#0 666 s (allowed 605 s)"
    )
    # A failed connect attempt is progress: backing off from an unreachable venue is right.
    conns["v/public#0"].update(connect_failures=1, state="backoff", last_error="connection refused")
    ok, detail = live.check()
    assert ok
    assert detail["intake"].endswith("backing off: v/public#0 (connection refused)")


def test_backoff_cap_and_connect_timeout_widen_the_allowance() -> None:
    clock = Clock()
    conns = {"v/public#0": conn()}
    carried = {"v/public#0": ["btcusdt@bookTicker"]}
    health = HealthSettings(liveness_s=1.0)
    streams = StreamSettings(stale_after_s=2.0, backoff_max_s=30.0, connect_timeout_s=10.0)
    live = Liveness(
        health,
        streams,
        lambda: Intake(streams=streams_stats(conns, carried)),
        venue="binance-usdm",
        clock=clock,
    )
    assert live.check()[0]
    clock.now += 41.0  # 30 s backoff + 10 s connect timeout + 1 s
    assert live.check()[0]
    clock.now += 0.1
    assert not live.check()[0]


# --------------------------------------------------------------------------- the daemon


def _settings(sim: SimVenue, data: Path, **over: Any) -> Any:
    base: dict[str, Any] = {
        "symbols": "BTCUSDT",
        "channels": "trade,book_ticker,depth_diff",
        "storage": {"enabled": False},
    }
    for k, v in over.items():
        base[k] = {**base[k], **v} if isinstance(base.get(k), dict) and isinstance(v, dict) else v
    return settings_for(sim.rest_url, sim.ws_url, data, **base)


@pytest.mark.asyncio
async def test_a_silent_stream_never_stops_the_watchdog(
    bundled_capture: Path, tmp_path: Path, notify: Listener
) -> None:
    """bookTicker is subscribed and acknowledged but never sends; depth and trades stream. Every
    deadline is small: pings go on, /readyz and the metrics name the stream, the gap log has it."""
    deadline = 1.0
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    async with SimVenue([bundled_capture], speed=1.0) as sim:
        assert sim.faults.silence(TICKER) == 66_089
        settings = _settings(
            sim,
            data,
            storage={"enabled": True},
            health={
                "port": port,
                "freshness_s": deadline,
                "quiet_freshness_s": 4 * deadline,
                "liveness_s": deadline,
            },
            streams={"first_frame_deadline_s": deadline},
        )
        daemon = Daemon(settings)
        svc = daemon.service

        def reported() -> bool:
            books = daemon.books.stats()["symbols"] if daemon.books is not None else {}
            return (
                daemon.stats()["connection_events"].get("stream_silent", 0) >= 1
                and books.get("BTCUSDT", {}).get("state") == "synced"
                and svc.ready_sent
            )

        async with running(daemon) as task:
            await wait_for(reported, what="the silent stream reported and the book synced")
            started, pings = time.monotonic(), svc.pings
            # Well past every deadline (freshness, first frame, stale, liveness margin), and a
            # good number of watchdog rounds later.
            await wait_for(
                lambda: svc.pings >= pings + 20 and time.monotonic() - started > 6 * deadline,
                what="20 more pings over 6 s",
            )
            status, ready = await get_json(base + "/readyz")
            status_h, healthz = await get_json(base + "/healthz")
            fams = await scrape(base)
            stream = daemon.stats()["streams"]["streams"][TICKER]
        assert task.result() == 0
    # Every watchdog round found the daemon alive: not one ping was withheld.
    assert svc.withheld == 0
    assert svc.pings == svc.rounds
    lines = notify.lines()
    assert lines[0].startswith("READY=1")
    assert not any(m.startswith("STATUS=not alive") for m in lines)
    assert any(m.startswith("STATUS=not ready: ") and f"stream {TICKER}: no frame yet" in m for m in lines)
    assert status == 503
    not_ready = ready["not_ready"]
    assert isinstance(not_ready, list)
    assert f"stream {TICKER}: no frame yet" in not_ready
    assert (status_h, healthz["status"], healthz["not_alive"]) == (200, "alive", [])
    assert (stream["frames"], stream["first_frame_seen"]) == (0, False)
    assert value(fams, "ingestd_stream_silent", stream=TICKER) == 1
    assert len(fams["ingestd_stream_silent"]) == 1  # only that one
    assert value(fams, "ingestd_ready") == 0
    assert value(fams, "ingestd_alive") == 1
    gaps = read_channel(data, "gap").to_pylist()
    silent = [g for g in gaps if g["kind"] == "silent_stream"]
    assert silent
    assert {(g["symbol"], g["ended_ts"]) for g in silent} == {("BTC-USDT-PERP", None)}
    assert all(TICKER in g["reason"] and "public#0" in g["reason"] for g in silent)


@pytest.mark.asyncio
async def test_silent_streams_reach_the_gap_log_without_order_books(
    bundled_capture: Path, tmp_path: Path
) -> None:
    """No depth diffs, so no book manager: the daemon still writes the silent_stream notice."""
    data = tmp_path / "data"
    async with SimVenue([bundled_capture], speed=1.0) as sim:
        sim.faults.silence(TICKER)
        settings = _settings(
            sim, data, channels="trade,book_ticker", storage={"enabled": True},
            streams={"first_frame_deadline_s": 0.3}, clock={"enabled": False},
        )  # fmt: skip
        daemon = Daemon(settings)
        seen: list[Record] = []

        async def gaps(record: Record) -> None:
            seen.append(record)

        daemon.add_hook(gaps, channels=["gap"])
        async with running(daemon):
            await wait_for(lambda: bool(seen), what="a gap record")
    (gap,) = read_channel(data, "gap").to_pylist()
    (hooked,) = seen
    stored = {k: v for k, v in gap.items() if k not in ("channel", "venue", "date")}
    assert {k: getattr(hooked, k) for k in stored} == stored
    assert (gap["kind"], gap["symbol"], gap["native"], gap["last_update_id"]) == (
        "silent_stream", "BTC-USDT-PERP", "BTCUSDT", None
    )  # fmt: skip
    assert gap["reason"] == f"binance-usdm/public#0: no first frame on {TICKER}"
    assert gap["started_ts"] == gap["recv_ts"]


@pytest.mark.asyncio
async def test_a_quiet_stream_is_reported_never_a_restart(
    bundled_capture: Path, tmp_path: Path, notify: Listener
) -> None:
    """The trades stop (the sim stalls their socket) past quiet_freshness_s, then resume: the
    gap log gets a quiet_stream record when it is noticed and one closing it, the metrics name
    the stream meanwhile, /readyz too, and every watchdog round pings."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    trade = "btcusdt@trade"
    async with SimVenue([bundled_capture], speed=1.0) as sim:
        settings = _settings(sim, tmp_path / "data", health={"port": port, "quiet_freshness_s": 1.0})
        daemon = Daemon(settings)
        svc = daemon.service
        seen: list[Gap] = []

        async def gaps(record: Record) -> None:
            if isinstance(record, Gap) and record.kind == "quiet_stream":
                seen.append(record)

        daemon.add_hook(gaps, channels=["gap"])
        async with running(daemon) as task:
            await wait_for(lambda: svc.ready_sent and daemon.readiness()[0], what="ready")
            assert sim.faults.stall(stream=trade) == 1
            await wait_for(lambda: len(seen) == 1, what="the quiet_stream record")
            fams = await scrape(base)
            status_r, ready = await get_json(base + "/readyz")
            status_h, _ = await get_json(base + "/healthz")
            sim.faults.resume()
            await wait_for(lambda: len(seen) == 2, what="the record closing the quiet period")
        assert task.result() == 0
    assert svc.withheld == 0
    assert value(fams, "ingestd_stream_quiet", stream=trade) == 1
    assert len(fams["ingestd_stream_quiet"]) == 1
    assert (status_r, status_h) == (503, 200)
    not_ready = ready["not_ready"]
    assert isinstance(not_ready, list)
    assert any(r.startswith(f"stream {trade}: last frame ") for r in not_ready)
    began, ended = seen
    for g in seen:
        assert (g.symbol, g.native, g.data_channel, g.last_update_id) == (
            "BTC-USDT-PERP",
            "BTCUSDT",
            "trade",
            None,
        )
        assert g.reason.startswith(f"binance-usdm/market#0: {trade} ")
    assert began.ended_ts is None
    assert "sent nothing for" in began.reason
    assert "limit 1 s" in began.reason
    assert ended.started_ts == began.started_ts
    assert ended.ended_ts is not None
    assert ended.ended_ts > ended.started_ts
    assert "delivered again" in ended.reason
    assert daemon.stats()["quiet"] == {"quiet_streams": [], "episodes": 1}


def test_quiet_scan_opens_and_closes_periods_per_stream() -> None:
    """The rule, on stats snapshots: book streams against freshness_s, trade-driven against
    quiet_freshness_s, liquidations exempt, never-seen streams left to the first-frame deadline."""
    btc = Contract("binance-usdm", "BTCUSDT", "BTC-USDT-PERP", "BTC", "USDT", 0.1, 1, 0.001, 0.001)
    contracts = ContractSet("binance-usdm", (btc,))
    quiet = QuietStreams("binance-usdm", contracts, HealthSettings(freshness_s=2.0, quiet_freshness_s=10.0))

    def st(cadence: str, age: float | None, seen: bool = True) -> dict[str, Any]:
        return {"connection": "c#0", "cadence": cadence, "last_frame_age_s": age, "first_frame_seen": seen}

    now = 1_000 * 10**9
    snap = {
        "btcusdt@bookTicker": st("book", 2.5),
        "btcusdt@trade": st("trade", 9.0),
        "btcusdt@forceOrder": st("event", 3600.0),
        "btcusdt@depth@100ms": st("book", None, seen=False),
        "!markPrice@arr@1s": st("book", 3.0),
    }
    began = quiet.scan(snap, now)
    assert [(g.kind, g.data_channel, g.started_ts, g.ended_ts) for g in began if isinstance(g, Gap)] == [
        ("quiet_stream", "book_ticker", now - int(2.5e9), None)
    ]
    assert quiet.stats() == {"quiet_streams": ["!markPrice@arr@1s", "btcusdt@bookTicker"], "episodes": 2}
    assert quiet.scan(snap, now + 10**9) == []  # still quiet: nothing new
    snap["btcusdt@bookTicker"] = st("book", 0.1)
    snap["btcusdt@trade"] = st("trade", 10.5)
    later = now + 5 * 10**9
    out = [g for g in quiet.scan(snap, later) if isinstance(g, Gap)]
    assert [(g.data_channel, g.started_ts, g.ended_ts) for g in out] == [
        ("book_ticker", now - int(2.5e9), later - int(0.1e9)),
        ("trade", later - int(10.5e9), None),
    ]
    assert quiet.stats()["quiet_streams"] == ["!markPrice@arr@1s", "btcusdt@trade"]


def _block(seconds: float, sent: threading.Event) -> None:
    """The misbehaviour under test: hold the event loop (a sync call in async code) for at least
    ``seconds`` and until the probe's request is in the kernel's buffers."""
    until = time.monotonic() + seconds
    while time.monotonic() < until or not sent.is_set():
        time.sleep(0.01)


def _probe(port: int, sent: threading.Event, out: list[bytes]) -> None:
    """GET /healthz from a thread: connect and send while the loop is blocked, read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        sent.set()
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    out.append(b"".join(chunks))


@pytest.mark.asyncio
async def test_a_blocked_event_loop_withholds_the_watchdog_and_fails_healthz(
    bundled_capture: Path, tmp_path: Path, notify: Listener
) -> None:
    loop_deadline = 1.0
    port = free_port()
    async with SimVenue([bundled_capture], speed=1.0) as sim:
        settings = _settings(sim, tmp_path / "data", health={"port": port, "loop_deadline_s": loop_deadline})
        daemon = Daemon(settings)
        svc = daemon.service
        async with running(daemon) as task:
            await wait_for(lambda: svc.pings >= 3 and daemon.liveness.check()[0], what="alive and pinging")
            # Read what is already in the socket: everything after the mark is sent after the block.
            notify.drain()
            mark, withheld = len(notify.messages), svc.withheld
            sent = threading.Event()
            answer: list[bytes] = []
            probe = threading.Thread(target=_probe, args=(port, sent, answer), daemon=True)
            probe.start()
            _block(3 * loop_deadline, sent)
            # The first watchdog round after the block found the daemon not alive.
            await wait_for(
                lambda: any(m.startswith("STATUS=not alive: event loop") for m in since(notify, mark))
            )
            after = since(notify, mark)
            first = next(i for i, m in enumerate(after) if m.startswith("STATUS=not alive"))
            assert "WATCHDOG=1" not in after[:first]
            assert svc.withheld > withheld
            await asyncio.to_thread(probe.join, 60)
            # Recovery: pings resume once the loop has answered in time for loop_deadline_s.
            pings = svc.pings
            await wait_for(lambda: svc.pings > pings and daemon.liveness.check()[0], what="alive again")
            status_after, healthz_after = await get_json(f"http://127.0.0.1:{port}/healthz")
        assert task.result() == 0
    head, _, body = answer[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), head
    healthz = orjson.loads(body)
    assert healthz["status"] == "not alive"
    assert healthz["not_alive"][0].startswith("event loop ")
    assert daemon.liveness.late_beats >= 1
    assert daemon.liveness.worst_lag_s >= 2 * loop_deadline
    assert (status_after, healthz_after["not_alive"]) == (200, [])


@pytest.mark.asyncio
async def test_an_unreachable_venue_keeps_the_watchdog_going(
    bundled_capture: Path, tmp_path: Path, notify: Listener
) -> None:
    """The sim goes away (its port refuses connections): the daemon backs off and retries, which
    is progress, so pings go on, far past the liveness deadline."""
    port = free_port()
    sim = SimVenue([bundled_capture], speed=1.0)
    await sim.start()
    try:
        settings = _settings(
            sim, tmp_path / "data", channels="book_ticker,depth_diff",
            health={"port": port, "liveness_s": 0.5, "freshness_s": 0.5},
            streams={"stale_after_s": 0.5, "backoff_initial_s": 0.05, "backoff_max_s": 0.2,
                     "connect_timeout_s": 0.5},
        )  # fmt: skip
        # /public (book streams): allowed max(0.5 stale, 0.2 + 0.5) + 0.5 = 1.2 s without a step.
        allowance = 1.2
        daemon = Daemon(settings)
        svc = daemon.service
        async with running(daemon) as task:
            await wait_for(lambda: svc.pings >= 3 and daemon.readiness()[0], what="ready and pinging")
            await sim.close()
            gone, pings = time.monotonic(), svc.pings

            def failures() -> int:
                conns = daemon.stats()["streams"]["connections"].values()
                return sum(int(c["connect_failures"]) for c in conns)

            await wait_for(
                lambda: (
                    failures() >= 5 and svc.pings >= pings + 20 and time.monotonic() - gone > 3 * allowance
                ),
                what="5 refused connects and 20 pings over 3.6 s",
            )
            alive, detail = daemon.liveness.check()
            status, healthz = await get_json(f"http://127.0.0.1:{port}/healthz")
            ready = daemon.readiness()[0]
        assert task.result() == 0
    finally:
        await sim.close()
    assert svc.withheld == 0
    assert not ready
    assert alive, detail
    assert "backing off: binance-usdm/public#0" in detail["intake"]
    assert (status, healthz["status"]) == (200, "alive")
    assert not any(m.startswith("STATUS=not alive") for m in notify.lines())


@pytest.mark.asyncio
async def test_a_stuck_intake_withholds_the_watchdog_and_fails_healthz(
    bundled_capture: Path, tmp_path: Path, notify: Listener
) -> None:
    """A hook with the ``block`` policy stops taking records: the bus fills, the reader waits for
    it (back-pressure is not staleness, so nothing reconnects), no frame is read. Past the
    connection's allowance the daemon is not alive; once the hook takes records again it is."""
    port = free_port()
    release = asyncio.Event()

    async def hook(_record: Record) -> None:
        await release.wait()

    async with SimVenue([bundled_capture], speed=1.0) as sim:
        settings = _settings(
            sim, tmp_path / "data", channels="book_ticker",
            health={"port": port, "liveness_s": 0.5},
            streams={"stale_after_s": 0.5, "backoff_max_s": 0.2, "connect_timeout_s": 0.5},
            hooks={"policy": "block", "queue_size": 100, "timeout_s": 600},
        )  # fmt: skip
        daemon = Daemon(settings)
        daemon.add_hook(hook, name="stuck")
        svc = daemon.service
        async with running(daemon) as task:
            await wait_for(lambda: svc.ready_sent, what="READY")
            await wait_for(lambda: not daemon.liveness.check()[0], what="not alive")
            status, healthz = await get_json(f"http://127.0.0.1:{port}/healthz")
            await wait_for(lambda: svc.withheld >= 3, what="three pings withheld")
            frames = daemon.stats()["streams"]["frames"]
            release.set()
            pings = svc.pings
            await wait_for(lambda: svc.pings > pings, what="pings again")
            moved = daemon.stats()["streams"]["frames"] > frames
        assert task.result() == 0
    assert status == 503
    reasons = healthz["not_alive"]
    assert isinstance(reasons, list)
    (reason,) = reasons
    assert reason.startswith("intake stuck: no connection read a frame, connected or retried in time: ")
    assert "binance-usdm/public#0" in reason
    assert moved
    assert daemon.stats()["streams"]["reconnects"] == 0
    # Datagrams keep their order: "not alive", then nothing (rounds withheld their ping) until
    # the round that found it alive again pinged and said so.
    lines = notify.lines()
    stuck = next(i for i, m in enumerate(lines) if m.startswith("STATUS=not alive: intake stuck"))
    assert lines[stuck + 1] == "WATCHDOG=1"
    assert lines[stuck + 2].startswith("STATUS=")
    assert not lines[stuck + 2].startswith("STATUS=not alive")
