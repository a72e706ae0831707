"""Helpers for end-to-end tests: run the sim and the daemon in-process, read the capture and storage."""

from __future__ import annotations

import asyncio
import gzip
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from ingestd.app import Daemon
from ingestd.config import Settings, load_settings
from ingestd.consumers.schema import open_dataset
from ingestd.venues.binance.endpoints import stream_kind


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


async def run_until(
    daemon: Daemon, done: Callable[[], bool], *, timeout: float = 60.0, settle: float = 0.3
) -> int:
    """Run ``daemon`` until ``done()`` holds (checked every 50 ms), then stop it; returns its exit code."""
    task = asyncio.create_task(daemon.run())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while loop.time() < deadline and not task.done():
            if done():
                await asyncio.sleep(settle)
                break
            await asyncio.sleep(0.05)
        else:
            if not task.done():
                raise AssertionError(f"condition not reached in {timeout} s; stats: {daemon.stats()}")
        daemon.request_stop("test done")
        return await asyncio.wait_for(task, 30)
    finally:
        if not task.done():
            task.cancel()


async def wait_for(cond: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        r = cond()
        if isinstance(r, Awaitable):
            r = await r
        if r:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def read_channel(data_dir: Path, channel: str) -> pa.Table:
    """One channel of the stored hive dataset as a table (partition columns included)."""
    return open_dataset(data_dir, channel).to_table()


def stored_counts(data_dir: Path) -> Counter[str]:
    t = open_dataset(data_dir).to_table(columns=["channel"])
    return Counter(t.column("channel").to_pylist())
