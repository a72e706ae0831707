"""Fault matrix, REST row: 429 with Retry-After, 418 ban, 5xx, timeouts and bad JSON on the depth
snapshots a book needs. Waits are honoured, retries bounded, errors counted in
``Daemon.stats()["rest"]`` / ``["snapshots"]``, and the book syncs with storage complete."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingestd.app import Daemon
from ingestd.producers.budget import BANS_KEY
from ingestd.sim import SimVenue
from tests.faults_util import (
    CF_FUTURES,
    CaptureTruth,
    RequestTimes,
    admitted,
    assert_storage_is_capture,
    books_synced,
    fault_settings,
    gaps,
    read_rows,
    real_capture,
    running,
    until,
)

DEPTH = "/fapi/v1/depth"
NATIVE = "SUSHIUSDT"
CHANNELS = ["book_ticker", "depth_diff"]


@pytest.fixture(scope="module")
def truth() -> CaptureTruth:
    return CaptureTruth.load(real_capture(CF_FUTURES))


Check = Callable[[Daemon, RequestTimes], Awaitable[None]]


async def _run(
    truth: CaptureTruth, data: Path, arm: Callable[[SimVenue], None], during: Check, **snapshots: Any
) -> tuple[Daemon, dict[str, Any]]:
    """One symbol's books against a sim whose depth endpoint misbehaves as ``arm`` says."""
    async with SimVenue([CF_FUTURES], speed=0, resume="continue") as sim:
        arm(sim)
        settings = fault_settings(
            sim,
            data,
            symbols=NATIVE,
            channels=",".join(CHANNELS),
            snapshots={"limit": 100, "weight_headroom": 1.0, **snapshots},
        )
        daemon = Daemon(settings)
        want = sum(len(truth.keys(ch, NATIVE)) for ch in CHANNELS)
        async with RequestTimes(sim, DEPTH) as requests, running(daemon):
            await during(daemon, requests)
            await until(lambda: books_synced(daemon, [NATIVE]), timeout=10, what="the book synced")
            await until(lambda: admitted(daemon) >= want, what="every frame")
            stats = daemon.stats()
        stats["sim_rest_requests"] = dict(sim.stats().rest_requests)
    truth_one = CaptureTruth(truth.capture, {k: v for k, v in truth.payloads.items() if k[1] == NATIVE})
    assert_storage_is_capture(data, truth_one, channels=CHANNELS)
    assert len(read_rows(data, "depth_snapshot")) == stats["snapshots"]["emitted"] == 1
    assert stats["books"]["symbols"][NATIVE]["syncs"] == 1
    return daemon, stats


async def _nothing(_daemon: Daemon, _requests: RequestTimes) -> None:
    return


@pytest.mark.asyncio
async def test_429_pauses_the_host_for_retry_after_then_retries(truth: CaptureTruth, tmp_path: Path) -> None:
    times: list[float] = []

    def arm(sim: SimVenue) -> None:
        sim.faults.rest_error(DEPTH, 429, count=1, retry_after=1)

    async def during(_daemon: Daemon, requests: RequestTimes) -> None:
        await until(lambda: len(requests.times) >= 2, timeout=5, what="the retry")
        times.extend(requests.times)

    _, stats = await _run(truth, tmp_path / "data", arm, during)
    assert times[1] - times[0] >= 0.95  # Retry-After: 1
    rest = stats["rest"]
    assert rest["status_429"] == 1
    assert rest["errors"] == {"429": 1}
    assert rest["retries"] == 1
    assert stats["sim_rest_requests"][DEPTH] == 2
    assert stats["snapshots"]["failed"] == 0  # the client waited and retried inside the request


@pytest.mark.asyncio
async def test_418_ban_stops_every_request_until_it_ends_and_is_recorded(
    truth: CaptureTruth, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    state: dict[str, Any] = {}

    def arm(sim: SimVenue) -> None:
        sim.faults.rest_error(DEPTH, 418, count=1, retry_after=1)

    async def during(daemon: Daemon, requests: RequestTimes) -> None:
        await until(lambda: len(requests.times) >= 1, timeout=5, what="the first request")
        banned_at = time.time()
        await until((data / ".ingestd-state.json").exists, timeout=5, what="the ban state")
        assert daemon.rest is not None
        state["until"] = orjson.loads((data / ".ingestd-state.json").read_bytes())[BANS_KEY][daemon.rest.host]
        state["banned_at"] = banned_at
        await until(lambda: len(requests.times) >= 2, timeout=5, what="the request after the ban")
        state["gap"] = requests.times[1] - requests.times[0]

    _, stats = await _run(truth, data, arm, during)
    rest = stats["rest"]
    assert rest["status_418"] == 1
    assert rest["errors"] == {"418": 1}
    assert stats["sim_rest_requests"][DEPTH] == 2  # nothing was sent during the ban
    assert state["gap"] >= 0.95  # Retry-After: 1
    # Persisted for a restart: the ban's end, about Retry-After from when it came.
    assert state["banned_at"] - 0.5 <= state["until"] <= state["banned_at"] + 2.5
    # One gap record for the ban episode, then the book resynced when snapshots came back.
    log = gaps(data)
    assert [g["kind"] for g in log] == ["ban", "resync"]
    assert "418" in log[0]["reason"]
    assert log[1]["started_ts"] == log[0]["started_ts"]


@pytest.mark.asyncio
async def test_5xx_is_retried_with_backoff_inside_the_request(truth: CaptureTruth, tmp_path: Path) -> None:
    def arm(sim: SimVenue) -> None:
        sim.faults.rest_error(DEPTH, 503, count=2)

    _, stats = await _run(truth, tmp_path / "data", arm, _nothing)
    rest = stats["rest"]
    assert rest["errors"] == {"503": 2}
    assert rest["retries"] == 2
    assert stats["sim_rest_requests"][DEPTH] == 3
    assert stats["snapshots"]["failed"] == 0


@pytest.mark.asyncio
async def test_a_persistent_5xx_costs_bounded_attempts_per_fetch(truth: CaptureTruth, tmp_path: Path) -> None:
    seen: dict[str, int] = {}

    def arm(sim: SimVenue) -> None:
        sim.faults.rest_error(DEPTH, 500, count=None)  # until cleared

    def failed(daemon: Daemon) -> int:
        return int(daemon.snapshots.stats()["failed"]) if daemon.snapshots is not None else 0

    async def during(daemon: Daemon, requests: RequestTimes) -> None:
        await until(lambda: failed(daemon) >= 1, timeout=10, what="the first failed fetch")
        seen["attempts"] = requests.sim.stats().rest_requests[DEPTH]
        requests.sim.faults.clear()

    _, stats = await _run(truth, tmp_path / "data", arm, during)
    # 1 attempt + max_retries (3) per fetch, then the fetch fails and is retried later with backoff.
    assert seen["attempts"] == 4
    assert stats["snapshots"]["failed"] == 1
    assert stats["rest"]["errors"]["500"] == stats["sim_rest_requests"][DEPTH] - 1


@pytest.mark.asyncio
async def test_a_timed_out_request_is_counted_and_retried(truth: CaptureTruth, tmp_path: Path) -> None:
    def arm(sim: SimVenue) -> None:
        sim.faults.rest_delay(DEPTH, 1.0, count=1)

    _, stats = await _run(truth, tmp_path / "data", arm, _nothing, request_timeout_s=0.2)
    rest = stats["rest"]
    assert rest["errors"] == {"timeout": 1}
    assert rest["retries"] == 1
    assert stats["sim_rest_requests"][DEPTH] == 2


@pytest.mark.asyncio
async def test_a_bad_json_body_is_counted_and_fetched_again(truth: CaptureTruth, tmp_path: Path) -> None:
    def arm(sim: SimVenue) -> None:
        sim.faults.rest_bad_json(DEPTH, count=1)

    _, stats = await _run(truth, tmp_path / "data", arm, _nothing)
    snaps = stats["snapshots"]
    assert snaps["failed"] == 1
    assert snaps["fetched"] == 1
    assert "JSON" in snaps["last_error"] or "snapshot" in snaps["last_error"]
    assert stats["sim_rest_requests"][DEPTH] == 2
    assert stats["rest"]["errors"] == {}  # a 200 with a broken body: the snapshot stage counts it
