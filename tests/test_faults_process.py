"""Fault matrix, process rows: SIGTERM under load, kill -9 under load, SIGHUP. The daemon runs as
``python -m ingestd`` against ``python -m ingestd.sim.cli``, both real processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from ingestd.sim.venue import BUNDLED_CAPTURE
from tests.faults_util import (
    CaptureTruth,
    expected_row,
    free_port,
    read_rows,
    row_key,
)
from tests.ops import status_of, wait_until

CHANNELS = ["trade", "book_ticker", "depth_diff"]


@pytest.fixture(scope="module")
def truth() -> CaptureTruth:
    return CaptureTruth.load(BUNDLED_CAPTURE)


@contextmanager
def sim_process(*flags: str) -> Iterator[tuple[str, str]]:
    """``python -m ingestd.sim.cli`` on the bundled capture; yields (rest, ws) once it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingestd.sim.cli", "--capture", str(BUNDLED_CAPTURE), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        rest, ws = (kv.split("=", 1)[1] for kv in proc.stdout.readline().split())
        yield rest, ws
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@contextmanager
def daemon_process(
    rest: str, ws: str, data: Path, config: dict[str, Any], *flags: str
) -> Iterator[subprocess.Popen[str]]:
    """``python -m ingestd`` with a config file; killed if the test leaves it running."""
    cfg = data.parent / f"{data.name}-config.yaml"
    cfg.write_text(json.dumps(config))  # JSON is YAML
    cmd = [
        sys.executable, "-m", "ingestd", "--config", str(cfg), "--rest-url", rest, "--ws-url", ws,
        "--data-dir", str(data), "--symbols", "BTCUSDT", "--channels", ",".join(CHANNELS),
        "--log-format", "text", *flags,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


BASE_CONFIG: dict[str, Any] = {
    "console": {"enabled": False},
    "clock": {"enabled": False},
    "health": {"port": 0},
    "shutdown_timeout_s": 10,
}


def parquet_files(data: Path) -> list[Path]:
    return sorted(p for p in data.rglob("*.parquet") if not p.name.startswith("."))


def assert_prefixes_of_the_capture(data: Path, truth: CaptureTruth) -> int:
    """Per stream, storage holds the capture's first N frames exactly (nothing skipped, nothing
    twice), field by field. Returns the number of rows."""
    total = 0
    for channel in CHANNELS:
        rows = read_rows(data, channel)
        total += len(rows)
        keys = [row_key(channel, r) for r in rows]
        assert len(keys) == len(set(keys)), f"{channel}: duplicates"
        want = truth.keys(channel, "BTCUSDT")
        assert sorted(keys, key=want.index) == want[: len(keys)], f"{channel}: not a prefix of the capture"
        payloads = truth.by_key(channel, "BTCUSDT")
        for r in rows:
            expect = expected_row(channel, payloads[row_key(channel, r)])
            got = {k: r[k] for k in expect}
            for side in ("bids", "asks"):
                if side in got:
                    got[side] = [(lv["price"], lv["qty"]) for lv in got[side]]
            assert got == expect, (channel, row_key(channel, r))
    return total


def test_sigterm_under_load_flushes_every_record_accepted_before_the_signal(
    truth: CaptureTruth, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    port = free_port()
    # Nothing is flushed before the signal: one file per buffer, an hour or a million rows away.
    config = {**BASE_CONFIG, "storage": {"rotate_seconds": 3600, "rotate_rows": 1_000_000}}
    with (
        sim_process("--speed", "20", "--resume", "continue") as (rest, ws),
        daemon_process(rest, ws, data, config, "--health-port", str(port)) as proc,
    ):
        wait_until(
            lambda: status_of(port)["bus"]["consumers"]["parquet"]["put"] >= 3000, what="3,000 records in"
        )
        assert parquet_files(data) == []
        before = status_of(port)["bus"]["consumers"]["parquet"]
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        assert proc.stderr is not None
        log = proc.stderr.read()
    assert code == 0, log
    assert "stopping: SIGTERM" in log
    # Within its deadline by its own clock (the phases are bounded by it; how long the process
    # then took to exit depends on the machine), nothing cut at the deadline, no task cancelled.
    (stopped,) = re.findall(r"stopped in ([0-9.]+) s \(SIGTERM\)(.*)", log)
    assert float(stopped[0]) < config["shutdown_timeout_s"]
    assert "cancelled" not in stopped[1]
    assert "not flushed" not in log
    stored = assert_prefixes_of_the_capture(data, truth)
    snapshots = len(read_rows(data, "depth_snapshot"))
    contracts = len(read_rows(data, "contract"))  # the start-up definition row
    assert contracts == 1
    # Everything the storage queue had accepted when we looked (and what came until the signal).
    assert stored + snapshots + contracts >= before["put"]
    closed = [line for line in log.splitlines() if "parquet writer closed" in line]
    assert len(closed) == 1
    assert f" {stored + snapshots + contracts} rows" in closed[0]
    assert closed[0].endswith(", 0 dropped")
    for f in parquet_files(data):
        pq.ParquetFile(f)  # complete


def test_kill_9_under_load_leaves_only_complete_files_and_the_next_start_appends(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # Small files, written all the time: a kill lands while files are being written.
    config = {**BASE_CONFIG, "storage": {"rotate_rows": 2000, "rotate_seconds": 0.5}}
    with sim_process("--speed", "0", "--loop", "--loop-shift", "--resume", "continue") as (rest, ws):
        with daemon_process(rest, ws, data, config) as proc:
            wait_until(lambda: len(parquet_files(data)) >= 5, what="files being written")
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(10) == -signal.SIGKILL
        first_run = parquet_files(data)
        for f in first_run:
            pq.ParquetFile(f)  # every file that has a final name is complete
        # A write cut short leaves at most a hidden temp file, never a half file with a data name.
        # Plant one, as a kill in the middle of a write leaves it: readers must not see it.
        half = first_run[0].with_name(f".{first_run[0].stem}-half.parquet.tmp")
        half.write_bytes(first_run[0].read_bytes()[: first_run[0].stat().st_size // 2])
        assert sum(len(read_rows(data, ch)) for ch in CHANNELS) == _rows(first_run)

        with daemon_process(rest, ws, data, config, "--duration", "1") as proc:
            code = proc.wait(30)
            assert proc.stderr is not None
            log = proc.stderr.read()
    assert code == 0, log
    assert re.search(r"removed \d+ incomplete temp file", log), log
    assert not list(data.rglob("*.tmp"))
    second_run = parquet_files(data)
    assert set(first_run) < set(second_run)  # appended: old files kept, new files added
    for f in second_run:
        pq.ParquetFile(f)
    assert sum(len(read_rows(data, ch)) for ch in CHANNELS) == _rows(second_run) > _rows(first_run)


def _rows(files: list[Path]) -> int:
    """Rows of the stream channels in ``files``, from the Parquet footers."""
    wanted = tuple(f"channel={c}" for c in CHANNELS)
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files if f.parent.parent.parent.name in wanted)


def test_sighup_reopens_the_log_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log_file = tmp_path / "ingestd.log"
    with (
        sim_process("--speed", "1", "--resume", "continue") as (rest, ws),
        daemon_process(rest, ws, data, BASE_CONFIG, "--log-file", str(log_file)) as proc,
    ):
        wait_until(lambda: "running:" in log_file.read_text(), what="the running line")
        rotated = tmp_path / "ingestd.log.1"
        shutil.move(log_file, rotated)  # what logrotate does
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: log_file.exists() and "SIGHUP" in log_file.read_text(), what="a new log file")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    old, new = rotated.read_text(), log_file.read_text()
    assert "running:" in old
    assert "SIGHUP" not in old
    assert "SIGHUP: log file reopened" in new
    assert "stopped in" in new  # later lines go to the file at the original path
    assert "stopped in" not in old
    assert os.stat(log_file).st_ino != os.stat(rotated).st_ino
