"""Backfill, end to end: the daemon against a live sim whose venue goes on while the daemon is
away. After the market connection is dropped mid-run, after a 429 during the backfill, and after
a ``kill -9`` and a restart on the same data dir, the stored aggregate ids of the symbol are
contiguous and unique from the first to the last, every row equals the venue's payload field by
field, the REST-filled ones are marked ``source="rest"``, and the gap log holds the hole and the
``backfill`` record that closed it.

Ground truth: the aggTrade stream the sim serves for the bundled capture (hftbacktest USDⓈ-M
BTCUSDT, 2024-08-08), derived from its real trades (``ingestd.sim.agg_trades``).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingestd.app import Daemon
from ingestd.sim import BUNDLED_CAPTURE, SimVenue, load_capture
from ingestd.sim.agg_trades import with_agg_trades
from tests.e2e import settings_for
from tests.faults_util import closed_trade_holes, read_rows
from tests.ops import free_port, parse_metrics, status_of, value, wait_for, wait_until

MS = 1_000_000


@pytest.fixture(scope="module")
def venue_aggs() -> dict[int, tuple[int, dict[str, Any]]]:
    """agg id → (receive ns, payload) of the stream the sim serves."""
    cap = with_agg_trades(load_capture(BUNDLED_CAPTURE))
    sid = cap.streams.index("btcusdt@aggTrade")
    rows = zip(cap.ts, cap.sid, cap.frames, strict=True)
    out = {}
    for ts, s, f in rows:
        if s == sid:
            p = orjson.loads(f)["data"]
            out[p["a"]] = (ts, p)
    return out


def assert_contiguous_and_true(
    data: Path, venue_aggs: dict[int, tuple[int, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Stored aggTrades: ids contiguous and unique first to last, each equal to the venue's
    payload; stream rows carry its event time, REST rows none. Returns the rows."""
    rows = read_rows(data, "agg_trade")
    ids = sorted(r["agg_id"] for r in rows)
    assert ids, "nothing stored"
    assert len(ids) == len(set(ids)), "duplicates"
    assert ids == list(range(ids[0], ids[-1] + 1)), "a hole is left"
    for r in rows:
        _, p = venue_aggs[r["agg_id"]]
        got = (r["first_trade_id"], r["last_trade_id"], r["price"], r["qty"], r["is_buyer_maker"])
        assert got == (p["f"], p["l"], float(p["p"]), float(p["q"]), p["m"]), r
        assert (r["transaction_ts"], r["normal_qty"], r["native"]) == (p["T"] * MS, float(p["nq"]), "BTCUSDT")
        assert r["source"] in ("ws", "rest")
        assert r["exchange_ts"] == (p["E"] * MS if r["source"] == "ws" else None)
    return rows


def assert_closed_holes(data: Path, rows: list[dict[str, Any]], reason: str) -> list[dict[str, Any]]:
    """Every REST row lies in a hole the gap log names, and every such hole is closed by a
    ``backfill`` record with the same range and count. Returns the holes."""
    holes, _ = closed_trade_holes(data)
    assert all(h["data_channel"] == "agg_trade" for h in holes)
    assert any(h["reason"] == reason for h in holes), holes
    rest = {r["agg_id"] for r in rows if r["source"] == "rest"}
    covered: set[int] = set()
    for h in holes:
        covered |= set(range(h["first_update_id"], h["final_update_id"] + 1))
    assert rest == covered
    return holes


async def until(daemon: Daemon, cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    try:
        await wait_for(cond, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; stats: {daemon.stats()}") from None


def agg_records(daemon: Daemon) -> int:
    if daemon.streams is None:
        return 0
    return int(daemon.streams.stats()["streams"].get("btcusdt@aggTrade", {}).get("records", 0))


def caught_up(daemon: Daemon, holes: int = 1) -> bool:
    bf = daemon.backfill
    return (
        bf is not None
        and bf.filled_holes >= holes
        and bf.stats()["pending"] == 0
        and bf.stats()["active"] == 0
    )


async def drop_and_backfill(
    tmp_path: Path, arm: Callable[[SimVenue], None] | None = None
) -> tuple[Daemon, SimVenue]:
    data = tmp_path / "data"
    async with SimVenue([BUNDLED_CAPTURE], speed=2, resume="live") as sim:
        settings = settings_for(
            sim.rest_url, sim.ws_url, data, symbols="BTCUSDT", channels="agg_trade,book_ticker",
            streams={"backoff_initial_s": 0.2, "backoff_max_s": 1.0}, clock={"enabled": False},
        )  # fmt: skip
        daemon = Daemon(settings)
        task = asyncio.create_task(daemon.run())
        try:
            await until(daemon, lambda: agg_records(daemon) >= 150, "aggTrades flowing")
            if arm is not None:
                arm(sim)
            # The /market connection goes down for 2 s; the venue goes on without it.
            assert sim.faults.drop(2.0, route="/market") == 1
            before = agg_records(daemon)
            await until(
                daemon, lambda: caught_up(daemon) and agg_records(daemon) >= before + 100, "backfilled"
            )
        finally:
            daemon.request_stop("test done")
            assert await asyncio.wait_for(task, 30) == 0
    return daemon, sim


@pytest.mark.asyncio
async def test_a_dropped_market_connection_is_backfilled(
    tmp_path: Path, venue_aggs: dict[int, tuple[int, dict[str, Any]]]
) -> None:
    daemon, _ = await drop_and_backfill(tmp_path)
    data = tmp_path / "data"
    rows = assert_contiguous_and_true(data, venue_aggs)
    (hole,) = assert_closed_holes(data, rows, "the stream skipped them")
    assert hole["count"] > 10  # two seconds of trades at speed 2
    # Only the market connection was dropped: the book-ticker connection was never touched.
    conns = daemon.stats()["streams"]["connections"]
    assert conns["binance-usdm/public#0"]["reconnects"] == 0
    assert conns["binance-usdm/market#0"]["reconnects"] == 1
    fams = parse_metrics(daemon._metrics().decode())
    assert value(fams, "ingestd_backfill_rows_total") == hole["count"]
    assert value(fams, "ingestd_backfill_holes_total") == 1
    assert value(fams, "ingestd_backfill_unfilled_ids_total") == 0


@pytest.mark.asyncio
async def test_a_429_during_backfill_is_honoured_and_the_hole_still_fills(
    tmp_path: Path, venue_aggs: dict[int, tuple[int, dict[str, Any]]]
) -> None:
    def arm(sim: SimVenue) -> None:
        sim.faults.rest_error("/fapi/v1/aggTrades", 429, count=2, retry_after=1)

    daemon, sim = await drop_and_backfill(tmp_path, arm)
    data = tmp_path / "data"
    rows = assert_contiguous_and_true(data, venue_aggs)
    assert_closed_holes(data, rows, "the stream skipped them")
    rest = daemon.stats()["rest"]
    assert rest["status_429"] == 2
    # Two refusals, then one page: no request was sent while the host was paused.
    assert sim.stats().rest_requests["/fapi/v1/aggTrades"] == 3
    assert rest["waited_s"] >= 1.9  # Retry-After: 1 s, twice


# --------------------------------------------------------------------------- kill -9 and restart


@contextmanager
def sim_process(*flags: str) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingestd.sim.cli", "--capture", str(BUNDLED_CAPTURE), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@contextmanager
def daemon_process(urls: str, data: Path, port: int) -> Iterator[subprocess.Popen[str]]:
    rest, ws = (kv.split("=", 1)[1] for kv in urls.split())
    config = {
        "console": {"enabled": False},
        "clock": {"enabled": False},
        "storage": {"rotate_seconds": 0.5},
        "streams": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0},
    }
    cfg = data.parent / f"config-{port}.yaml"
    cfg.write_text(json.dumps(config))  # JSON is YAML
    cmd = [
        sys.executable, "-m", "ingestd", "--config", str(cfg), "--rest-url", rest, "--ws-url", ws,
        "--data-dir", str(data), "--symbols", "BTCUSDT", "--channels", "agg_trade",
        "--health-port", str(port), "--log-format", "text",
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


def stored_ids(data: Path) -> list[int]:
    return sorted(r["agg_id"] for r in read_rows(data, "agg_trade"))


def test_kill_9_and_a_restart_within_max_age_backfill_what_was_lost(
    tmp_path: Path, venue_aggs: dict[int, tuple[int, dict[str, Any]]]
) -> None:
    data = tmp_path / "data"
    with sim_process("--speed", "2", "--resume", "live") as urls:
        first = free_port()
        with daemon_process(urls, data, first) as proc:
            wait_until(lambda: len(stored_ids(data)) >= 150, "aggTrades stored")
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(10) == -signal.SIGKILL
        before = stored_ids(data)
        second = free_port()
        with daemon_process(urls, data, second) as proc:

            def done() -> bool:
                bf = status_of(second).get("backfill") or {}
                return bool(bf.get("filled_holes")) and bf["pending"] == 0 and bf["active"] == 0

            wait_until(done, "the restart backfilled")
            wait_until(lambda: len(stored_ids(data)) >= len(before) + 200, "the second run stored more")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            assert proc.stderr is not None
            log = proc.stderr.read()
    assert "the stream resumes from the last stored ids" in log, log
    rows = assert_contiguous_and_true(data, venue_aggs)
    holes = assert_closed_holes(data, rows, "since the last run stored")
    restart = next(h for h in holes if h["reason"] == "since the last run stored")
    assert restart["last_update_id"] == before[-1]
    assert stored_ids(data)[: len(before)] == before  # the first run's files were kept
