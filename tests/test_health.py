"""The health endpoint inside the daemon: /healthz, /readyz (stream freshness, book sync), /status.

Against ``ingestd sim`` replaying the real BTCUSDT capture in real time: /readyz answers 503
naming the book while the REST host refuses depth snapshots, 200 once the book is synced,
503 naming exactly the stalled stream while the sim stalls its connection, and 200 again after
the sim resumes.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from ingestd.app import Daemon
from ingestd.errors import StartupError
from ingestd.observe.health import HealthServer
from ingestd.sim import SimVenue
from tests.e2e import settings_for, wait_for
from tests.ops import free_port, get, get_json, running

FRESHNESS_S = 1.5
"""The capture's trade stream is never quiet for more than 0.62 s in its first 30 s (real time)."""


@pytest.mark.asyncio
async def test_readyz_follows_book_sync_and_a_stalled_stream(bundled_capture: Path, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with SimVenue([bundled_capture], speed=1.0) as sim:
        # Every depth snapshot fails until cleared: the book cannot sync, the streams are fine.
        sim.faults.rest_error("/fapi/v1/depth", 503, count=None)
        settings = settings_for(
            sim.rest_url,
            sim.ws_url,
            tmp_path / "data",
            symbols="BTCUSDT",
            channels="trade,book_ticker,depth_diff",
            storage={"enabled": False},
            health={"port": port, "freshness_s": FRESHNESS_S, "quiet_freshness_s": FRESHNESS_S},
        )
        daemon = Daemon(settings)
        async with running(daemon) as task:
            await wait_for(lambda: daemon.health is not None and daemon.streams is not None, 10)
            assert daemon.health is not None
            assert daemon.health.url == base

            status, body = await get_json(base + "/healthz")
            assert (status, body["status"], body["not_alive"]) == (200, "alive", [])

            async def book_named() -> bool:
                status, body = await get_json(base + "/readyz")
                reasons = body["not_ready"]
                assert isinstance(reasons, list)
                return status == 503 and reasons == ["book BTCUSDT: buffering"]

            # The streams deliver; only the book (no snapshot) holds readiness back.
            await wait_for(book_named, 10)
            books = daemon.stats()["books"]["symbols"]
            assert books["BTCUSDT"]["state"] != "synced"

            sim.faults.clear()
            await wait_for(lambda: daemon.readiness()[0], 20)
            status, body = await get_json(base + "/readyz")
            assert (status, body) == (200, {"ready": True, "not_ready": []})
            assert daemon.stats()["books"]["symbols"]["BTCUSDT"]["state"] == "synced"

            # Stall the socket carrying the trade stream (the /market route): it alone goes stale.
            assert sim.faults.stall(stream="btcusdt@trade") == 1

            async def trade_stale() -> bool:
                status, _ = await get(base + "/readyz")
                return status == 503

            await wait_for(trade_stale, FRESHNESS_S + 5)
            status, body = await get_json(base + "/readyz")
            assert status == 503
            assert body["ready"] is False
            reasons = body["not_ready"]
            assert isinstance(reasons, list)
            assert len(reasons) == 1
            assert reasons[0].startswith("stream btcusdt@trade: last frame ")
            age = daemon.stats()["streams"]["streams"]["btcusdt@trade"]["last_frame_age_s"]
            assert age > FRESHNESS_S

            # /status carries the same verdict and the stats it is made from.
            status, snap = await get_json(base + "/status")
            assert status == 200
            assert snap["ready"] is False
            not_ready = snap["not_ready"]
            assert isinstance(not_ready, list)
            assert [r.split(": ")[0] for r in not_ready] == ["stream btcusdt@trade"]
            streams = snap["streams"]
            assert isinstance(streams, dict)
            assert streams["streams"]["btcusdt@trade"]["last_frame_age_s"] > FRESHNESS_S
            assert streams["streams"]["btcusdt@bookTicker"]["last_frame_age_s"] < FRESHNESS_S
            # Not ready is not "not alive": /public streams on, the stall is only reported.
            status, body = await get_json(base + "/healthz")
            assert (status, body["status"], body["not_alive"]) == (200, "alive", [])

            sim.faults.resume()

            async def ready_again() -> bool:
                status, _ = await get(base + "/readyz")
                return status == 200

            await wait_for(ready_again, 10)
            # No reconnect was needed: the stall was shorter than stale_after_s.
            assert daemon.stats()["streams"]["reconnects"] == 0
        assert task.result() == 0
    # The endpoint is closed with the daemon.
    with pytest.raises(OSError):
        await get(base + "/healthz")


@pytest.mark.asyncio
async def test_port_in_use_is_a_startup_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HealthServer("127.0.0.1", port, stats=dict, ready=lambda: (True, {}), metrics=lambda: b"")
        with pytest.raises(StartupError, match=f"127.0.0.1:{port}"):
            await server.start()
        await server.close()


@pytest.mark.asyncio
async def test_endpoints_answer_from_the_callables() -> None:
    calls = {"ready": 0}
    state = {"ok": False, "alive": False}

    def ready() -> tuple[bool, dict[str, object]]:
        calls["ready"] += 1
        return state["ok"], {"not_ready": [] if state["ok"] else ["stream x@trade: no frame yet"]}

    def alive() -> tuple[bool, dict[str, object]]:
        return state["alive"], {"not_alive": [] if state["alive"] else ["event loop blocked: 3 s"]}

    server = HealthServer(
        "127.0.0.1",
        0,
        stats=lambda: {"venue": "binance-usdm", "uptime_s": 1.0},
        ready=ready,
        metrics=lambda: b"# HELP x y\n",
        alive=alive,
    )
    await server.start()
    try:
        assert server.port != 0  # port 0 here: the OS picked one, and the server reports it
        status, body = await get_json(server.url + "/healthz")
        assert (status, body) == (503, {"status": "not alive", "not_alive": ["event loop blocked: 3 s"]})
        state["alive"] = True
        status, body = await get_json(server.url + "/healthz")
        assert (status, body) == (200, {"status": "alive", "not_alive": []})
        status, body = await get_json(server.url + "/readyz")
        assert (status, body) == (503, {"ready": False, "not_ready": ["stream x@trade: no frame yet"]})
        state["ok"] = True
        status, body = await get_json(server.url + "/readyz")
        assert (status, body) == (200, {"ready": True, "not_ready": []})
        status, body = await get_json(server.url + "/status")
        assert body == {
            "ready": True, "not_ready": [], "alive": True, "not_alive": [],
            "venue": "binance-usdm", "uptime_s": 1.0,
        }  # fmt: skip
        status, raw = await get(server.url + "/metrics")
        assert (status, raw) == (200, b"# HELP x y\n")
        status, _ = await get(server.url + "/nope")
        assert status == 404
        assert server.requests == 6
    finally:
        await server.close()
        await server.close()  # idempotent
    await asyncio.sleep(0)
