"""``ingestd status [--url]`` against a running daemon (in-process, replaying the real capture)."""

from __future__ import annotations

import argparse
import asyncio
import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingestd.app import Daemon
from ingestd.cli import main
from ingestd.observe import status as status_cmd
from ingestd.sim import SimVenue
from tests.e2e import capture_frames, settings_for, wait_for
from tests.ops import free_port, running


def _rows(text: str) -> dict[str, list[str]]:
    """First column → the other columns, for every table line."""
    return {parts[0]: parts[1:] for line in text.splitlines() if (parts := line.split())}


@pytest.mark.asyncio
async def test_status_prints_the_table_of_a_running_daemon(
    bundled_capture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = capture_frames(bundled_capture)
    total = len(frames["trade"]) + len(frames["bookTicker"]) + len(frames["depth"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with SimVenue([bundled_capture], speed=0) as sim:
        settings = settings_for(
            sim.rest_url,
            sim.ws_url,
            tmp_path / "data",
            symbols="BTCUSDT",
            channels="trade,book_ticker,depth_diff",
            health={"port": port},
        )
        daemon = Daemon(settings)
        async with running(daemon):
            await wait_for(lambda: daemon.bus.published >= total and daemon.readiness()[0], 30)
            out = io.StringIO()
            args = argparse.Namespace(url=url, timeout=5.0, json=False)
            # The command blocks (urllib): run it in a thread so the daemon's loop can answer.
            code = await asyncio.to_thread(status_cmd.run, args, out)
            stats = daemon.stats()
            cli_code = await asyncio.to_thread(main, ["status", "--url", url, "--json"])
            raw = capsys.readouterr().out
    assert code == 0
    text = out.getvalue()
    head = text.splitlines()[0].split()
    assert head[:2] == ["binance-usdm", "READY"]
    assert head[-2:] == ["contracts", "1"]
    rows = _rows(text)
    assert rows["STREAM"] == ["STATE", "AGE", "RATE/s", "RECONN", "DUPS", "ERRORS", "BOOK"]
    streams = stats["streams"]["streams"]
    assert set(streams) == {"btcusdt@trade", "btcusdt@bookTicker", "btcusdt@depth@100ms"}
    for name, st in streams.items():
        state, age, rate, reconn, dups, errors, book = rows[name]
        assert state == "streaming"
        assert age.endswith("s")
        assert float(rate) > 0
        assert (reconn, dups, errors) == ("0", str(st["duplicates"]), "0")
        assert book == ("synced" if name == "btcusdt@depth@100ms" else "-")
    assert rows["CONSUMER"] == ["QUEUED", "HIGH", "MAX", "DROPPED"]
    for name, c in stats["bus"]["consumers"].items():
        queued, high, size, dropped = rows[name]
        assert (queued, dropped, size) == ("0", "0", str(c["maxsize"]))
        assert int(high) == c["high_water"] > 0
    assert "books 1/1 synced, 0 resyncs, 0 audit mismatches" in text
    assert rows["clock"][0] == "offset"

    assert cli_code == 0
    snap = orjson.loads(raw)
    assert snap["ready"] is True
    assert snap["venue"] == "binance-usdm"
    assert snap["streams"]["streams"]["btcusdt@trade"]["frames"] == len(frames["trade"])
    assert snap["bus"]["consumers"]["metrics"]["records_per_channel"]["trade"] == len(frames["trade"])


def test_unreachable_daemon_is_exit_code_3(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["status", "--url", url, "--timeout", "2"]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"ingestd status: cannot read {url}/status: ")
    assert main(["status", "--url", "file:///etc/passwd"]) == 3
    assert "is not an http:// or https:// URL" in capsys.readouterr().err


def test_not_ready_is_exit_code_1_and_names_the_reasons() -> None:
    snap: dict[str, Any] = {
        "venue": "binance-spot",
        "ready": False,
        "not_ready": ["stream ethusdt@trade: last frame 41.0 s ago", "book ETHUSDT: buffering"],
        "uptime_s": 100.0,
        "contracts": 2,
        "streams": {
            "streams": {
                "ethusdt@trade": {"connection": "c#0", "frames": 500, "last_frame_age_s": 41.0},
                "ethusdt@depth@100ms": {"connection": "c#0", "frames": 1000, "last_frame_age_s": 0.1},
                "ethusdt@depth20@100ms": {"connection": "c#0", "frames": 10, "last_frame_age_s": 0.2},
                "btcusdt@bookTicker": {"connection": "c#0", "frames": 0, "last_frame_age_s": None},
            },
            "connections": {"c#0": {"state": "streaming", "reconnects": 3}},
        },
        "books": {"symbols": {"ETHUSDT": {"state": "buffering"}}},
    }
    out = io.StringIO()
    status_cmd.render(snap, out)
    rows = _rows(out.getvalue())
    assert out.getvalue().splitlines()[:3] == [
        "binance-spot  NOT READY  uptime 100s  contracts 2",
        "  not ready: stream ethusdt@trade: last frame 41.0 s ago",
        "  not ready: book ETHUSDT: buffering",
    ]
    assert rows["ethusdt@trade"] == ["streaming", "41.0s", "5.0", "3", "0", "0", "-"]
    assert rows["ethusdt@depth@100ms"][-1] == "buffering"
    assert rows["ethusdt@depth20@100ms"][-1] == "-"  # partial depth feeds no book
    assert rows["btcusdt@bookTicker"][1] == "-"  # no frame yet

    # Not alive (what restarts the daemon) is said first; alive says nothing extra.
    out = io.StringIO()
    status_cmd.render({**snap, "alive": False, "not_alive": ["event loop blocked: 12 s"]}, out)
    assert out.getvalue().splitlines()[:2] == [
        "binance-spot  NOT READY  NOT ALIVE  uptime 100s  contracts 2",
        "  not alive: event loop blocked: 12 s",
    ]
    out = io.StringIO()
    status_cmd.render({**snap, "alive": True, "not_alive": []}, out)
    assert out.getvalue().splitlines()[0] == "binance-spot  NOT READY  uptime 100s  contracts 2"
