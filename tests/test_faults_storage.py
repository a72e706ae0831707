"""Fault matrix, consumer rows: slow or failing hooks never touch storage; a slow disk holds the
daemon back without loss; a failing disk is one clear error, keeps rows up to the bound, drops
the rest (counted) and the daemon keeps streaming; writes resume when the disk heals."""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from ingestd.app import Daemon
from ingestd.consumers.parquet import ParquetWriter
from ingestd.records import Record
from ingestd.sim import SimVenue
from tests.faults_util import (
    CF_FUTURES,
    CaptureTruth,
    admitted,
    assert_storage_is_capture,
    expected_row,
    fault_settings,
    read_rows,
    real_capture,
    received_all,
    row_key,
    running,
    until,
)


@pytest.fixture(scope="module")
def truth() -> CaptureTruth:
    return CaptureTruth.load(real_capture(CF_FUTURES))


def _consumer(daemon: Daemon, prefix: str) -> dict[str, Any]:
    consumers = daemon.bus.stats()["consumers"]
    found: list[dict[str, Any]] = [v for k, v in consumers.items() if k.startswith(prefix)]
    assert len(found) == 1, (prefix, list(consumers))
    return found[0]


@pytest.mark.asyncio
async def test_slow_blocking_and_failing_hooks_leave_storage_whole(
    truth: CaptureTruth, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    calls = {"slow": 0, "blocking": 0, "failing": 0}

    async def slow(_record: Record) -> None:
        calls["slow"] += 1
        await asyncio.sleep(0.05)  # past the 10 ms timeout: cancelled and counted

    async def blocking(_record: Record) -> None:
        calls["blocking"] += 1
        if calls["blocking"] % 50 == 0:
            time.sleep(0.03)  # holds the whole event loop: cannot be interrupted, only counted

    async def failing(_record: Record) -> None:
        calls["failing"] += 1
        raise ValueError("strategy bug")

    async with SimVenue([CF_FUTURES], speed=0, resume="continue") as sim:
        settings = fault_settings(
            sim, data, hooks={"timeout_s": 0.01, "queue_size": 20, "policy": "drop_oldest"}
        )
        daemon = Daemon(settings)
        for hook in (slow, blocking, failing):
            daemon.add_hook(hook, name=hook.__name__)
        async with running(daemon):
            await until(lambda: admitted(daemon) >= truth.count(), what="every frame")
            await until(lambda: received_all(sim, daemon))
            streams = daemon.stats()["streams"]
        stats = daemon.bus.stats()["consumers"]

    assert_storage_is_capture(data, truth)
    parquet = stats["parquet"]
    assert parquet["dropped"] == 0
    assert parquet["dropped_rows"] == 0
    assert streams["reconnects"] == 0
    slow_s, blocking_s, failing_s = (_consumer(daemon, f"hook:{n}") for n in ("slow", "blocking", "failing"))
    # Each hook's own queue dropped its oldest records (counted) instead of holding anything back.
    assert slow_s["dropped"] > 0
    for s in (slow_s, blocking_s, failing_s):
        assert s["put"] == s["got"] + s["dropped"]  # every record offered is accounted for
        assert s["depth"] == 0
        assert s["policy"] == "drop_oldest"
    assert slow_s["timeouts"] == slow_s["calls"] == calls["slow"]
    assert failing_s["errors"] == failing_s["calls"] == calls["failing"]
    assert failing_s["last_error"] == "ValueError: strategy bug"
    assert blocking_s["overruns"] == calls["blocking"] // 50
    assert blocking_s["errors"] == blocking_s["timeouts"] == 0


def _failing_writes(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Make every Parquet write raise ENOSPC while ``state["full"]``; count the attempts."""
    state: dict[str, Any] = {"full": True, "attempts": 0}
    real = ParquetWriter._write_chunk

    def write(self: ParquetWriter, chunk: Any) -> Any:
        state["attempts"] += 1
        if state["full"]:
            raise OSError(errno.ENOSPC, "No space left on device", str(chunk.directory))
        return real(self, chunk)

    monkeypatch.setattr(ParquetWriter, "_write_chunk", write)
    return state


@pytest.mark.asyncio
async def test_a_full_disk_is_one_clear_error_rows_kept_to_the_bound_then_counted_drops(
    truth: CaptureTruth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    bound = 500
    disk = _failing_writes(monkeypatch)
    caplog.set_level(logging.WARNING, logger="ingestd")
    # Paced (20x) so the first failed write (a 100-row file) comes early and the bound then holds.
    async with SimVenue([CF_FUTURES], speed=20, resume="continue") as sim:
        storage = {"rotate_rows": 100, "max_pending_rows": bound}
        settings = fault_settings(sim, data, channels="agg_trade,book_ticker,kline", storage=storage)
        daemon = Daemon(settings)
        want = sum(truth.count(c) for c in ("agg_trade", "book_ticker", "kline"))
        async with running(daemon):
            # The daemon keeps streaming: every frame is read while nothing can be written.
            await until(lambda: admitted(daemon) >= want and received_all(sim, daemon), what="every frame")
            await until(lambda: _consumer(daemon, "parquet")["depth"] == 0, what="the queue drained")
            during = dict(_consumer(daemon, "parquet"))
            streams = daemon.stats()["streams"]
            disk["full"] = False  # the disk heals: sealed files are written at the next retry
            await until(lambda: not _consumer(daemon, "parquet")["failing"], timeout=5, what="the recovery")
        after = dict(_consumer(daemon, "parquet"))  # closed: every row kept is written

    assert streams["reconnects"] == 0
    assert during["failing"] is True
    assert during["write_errors"] >= 1
    assert during["pending_rows"] == bound  # kept in memory up to the bound ...
    # The rows: every stream record plus the start-up contract row of each symbol.
    total = want + len(daemon.contracts or ())
    assert during["dropped_rows"] == total - bound  # ... and the rest dropped, counted
    assert during["dropped"] == 0  # the bus queue itself dropped nothing
    assert after["failing"] is False
    assert after["rows"] == bound
    assert after["dropped_rows"] == total - bound
    # One clear error for the episode (path and errno), one for the drops, one line on recovery.
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    failed = [m for m in errors if m.startswith("parquet write failed")]
    assert len(failed) == 1
    assert "errno 28" in failed[0]
    assert str(data) in failed[0]
    assert len([m for m in errors if "dropping records" in m]) == 1
    assert any("parquet writes recovered" in r.getMessage() for r in caplog.records)
    # What was kept is the oldest of each stream, stored once and field by field equal.
    stored = 0
    for channel in ("agg_trade", "book_ticker", "kline"):
        rows = read_rows(data, channel)
        stored += len(rows)
        per: dict[str, list[Any]] = {}
        for row in rows:
            per.setdefault(row["native"], []).append(row)
        for native, got in per.items():
            keys = truth.keys(channel, native)
            held = sorted(keys.index(row_key(channel, r)) for r in got)
            assert held == list(range(len(held))), (channel, native)  # a prefix: the newest dropped
            payloads = truth.by_key(channel, native)
            for r in got:
                want_row = expected_row(channel, payloads[row_key(channel, r)])
                assert {k: r[k] for k in want_row} == want_row
    assert stored + len(read_rows(data, "contract")) == bound  # the contract rows came first


@pytest.mark.asyncio
async def test_a_slow_disk_holds_the_daemon_back_and_loses_nothing(
    truth: CaptureTruth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    real = ParquetWriter._write_chunk

    def slow_write(self: ParquetWriter, chunk: Any) -> Any:
        time.sleep(0.04)  # a disk that takes 40 ms per file (runs in the writer's thread)
        return real(self, chunk)

    monkeypatch.setattr(ParquetWriter, "_write_chunk", slow_write)
    async with SimVenue([CF_FUTURES], speed=0, resume="continue") as sim:
        storage = {"rotate_rows": 50, "max_pending_rows": 200, "queue_size": 100}
        daemon = Daemon(fault_settings(sim, data, storage=storage))
        async with running(daemon):
            await until(lambda: admitted(daemon) >= truth.count(), what="every frame")
            parquet = _consumer(daemon, "parquet")
    assert parquet["blocked_seconds"] > 0  # back-pressure reached the websocket readers
    assert parquet["dropped"] == 0
    assert parquet["dropped_rows"] == 0
    assert_storage_is_capture(data, truth)
