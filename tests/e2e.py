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
