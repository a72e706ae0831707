"""Helpers for end-to-end tests: run the sim and the daemon in-process, read the capture and storage."""

from __future__ import annotations

import asyncio
import gzip
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from ingestd.app import Daemon
from ingestd.config import Settings, load_settings
from ingestd.consumers.schema import open_dataset
from ingestd.venues.binance.endpoints import stream_kind
from tests.ops import wait_for

__all__ = [
    "capture_frames", "capture_lines", "read_channel", "run_until", "settings_for", "stored_counts",
    "wait_for",
]  # fmt: skip


def capture_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(recv_ns, json)`` for each line of an hftbacktest capture."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        for line in fh:
            ts, _, body = line.partition(b" ")
            yield int(ts), orjson.loads(body)


def capture_frames(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Payloads per stream kind (``depth``, ``bookTicker``, ``trade`` …) plus ``snapshot``."""
    out: dict[str, list[dict[str, Any]]] = {}
    for _, msg in capture_lines(path):
        if "stream" in msg:
            out.setdefault(stream_kind(msg["stream"]), []).append(msg["data"])
        elif "lastUpdateId" in msg:
            out.setdefault("snapshot", []).append(msg)
    return out


def settings_for(sim_rest: str, sim_ws: str, data_dir: Path, **over: Any) -> Settings:
    cli: dict[str, Any] = {
        "rest_url": sim_rest,
        "ws_url": sim_ws,
        "storage": {"data_dir": str(data_dir), "rotate_seconds": 3600},
        "console": {"enabled": False},
        "health": {"port": 0},
        "use_uvloop": False,
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cli.get(k), dict):
            cli[k] = {**cli[k], **v}
        else:
            cli[k] = v
    return load_settings(environ={}, cli=cli)


async def run_until(daemon: Daemon, done: Callable[[], bool], *, timeout: float = 60.0) -> int:
    """Run ``daemon`` until ``done()`` holds, then stop it; returns its exit code.

    Stopping drains every queue and flushes every consumer, so whatever ``done()`` saw admitted
    is stored: no settling time is needed (or allowed) before the stop.
    """
    task = asyncio.create_task(daemon.run())
    try:
        try:
            await wait_for(lambda: task.done() or done(), timeout, "run_until's condition")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; stats: {daemon.stats()}") from None
        daemon.request_stop("test done")
        return await asyncio.wait_for(task, 30)
    finally:
        if not task.done():
            task.cancel()


def read_channel(data_dir: Path, channel: str) -> pa.Table:
    """One channel of the stored hive dataset as a table (partition columns included)."""
    return open_dataset(data_dir, channel).to_table()


def stored_counts(data_dir: Path) -> Counter[str]:
    t = open_dataset(data_dir).to_table(columns=["channel"])
    return Counter(t.column("channel").to_pylist())


MS = 1_000_000


def demo_counts(frames: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """Records the offline demo (``trade,book_ticker,depth_diff`` of one symbol) must store."""
    return {
        "trade": len(frames["trade"]),
        "book_ticker": len(frames["bookTicker"]),
        "depth_diff": len(frames["depth"]),
        "depth_snapshot": 1,
    }


def assert_stored_as_captured(
    data: Path, frames: dict[str, list[dict[str, Any]]], expected: dict[str, int]
) -> None:
    """Storage holds ``expected`` rows per channel, and every trade, bookTicker and depth diff of
    the capture exactly once, equal to its payload field by field; the depth snapshot too."""
    counts = stored_counts(data)
    for channel, n in expected.items():
        assert counts[channel] == n, (channel, counts)

    trades = read_channel(data, "trade").sort_by("trade_id").to_pylist()
    want = sorted(frames["trade"], key=lambda d: d["t"])
    assert len(trades) == len(want)
    for row, d in zip(trades, want, strict=True):
        assert row["trade_id"] == d["t"]
        assert row["price"] == float(d["p"])
        assert row["qty"] == float(d["q"])
        assert row["is_buyer_maker"] is d["m"]
        assert row["exchange_ts"] == d["E"] * MS
        assert row["transaction_ts"] == d["T"] * MS
        assert row["trade_type"] == d["X"]
        assert row["symbol"] == "BTC-USDT-PERP"
        assert row["native"] == "BTCUSDT"
        assert row["venue"] == "binance-usdm"

    tickers = read_channel(data, "book_ticker").sort_by("update_id").to_pylist()
    want = sorted(frames["bookTicker"], key=lambda d: d["u"])
    assert len(tickers) == len(want)
    for row, d in zip(tickers, want, strict=True):
        assert (row["update_id"], row["bid_price"], row["bid_qty"], row["ask_price"], row["ask_qty"]) == (
            d["u"],
            float(d["b"]),
            float(d["B"]),
            float(d["a"]),
            float(d["A"]),
        )
        assert row["exchange_ts"] == d["E"] * MS

    diffs = read_channel(data, "depth_diff").sort_by("final_update_id").to_pylist()
    want = sorted(frames["depth"], key=lambda d: d["u"])
    assert len(diffs) == len(want)
    for row, d in zip(diffs, want, strict=True):
        assert row["first_update_id"] == d["U"]
        assert row["final_update_id"] == d["u"]
        assert row["prev_final_update_id"] == d["pu"]
        assert [(lv["price"], lv["qty"]) for lv in row["bids"]] == [(float(p), float(q)) for p, q in d["b"]]
        assert [(lv["price"], lv["qty"]) for lv in row["asks"]] == [(float(p), float(q)) for p, q in d["a"]]

    (snap,) = read_channel(data, "depth_snapshot").to_pylist()
    body = frames["snapshot"][0]
    assert snap["last_update_id"] == body["lastUpdateId"]
    assert len(snap["bids"]) == len(body["bids"])
    assert [(lv["price"], lv["qty"]) for lv in snap["asks"]] == [
        (float(p), float(q)) for p, q in body["asks"]
    ]
    assert snap["exchange_ts"] == body["E"] * MS
