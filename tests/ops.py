"""Helpers for the operations tests: a free port, HTTP GETs, Prometheus samples, a daemon task."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Mapping

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ingestd.app import Daemon


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (``health.port`` 0 means off)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def get(url: str) -> tuple[int, bytes]:
    """``GET url`` → (status, body)."""
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.read()


async def get_json(url: str) -> tuple[int, dict[str, object]]:
    status, body = await get(url)
    data = orjson.loads(body)
    assert isinstance(data, dict), body[:200]
    return status, data


def parse_metrics(text: str) -> dict[str, list[Sample]]:
    """Family name → samples, through prometheus_client's own parser (fails on bad syntax)."""
    return {f.name: list(f.samples) for f in text_string_to_metric_families(text)}


async def scrape(base: str) -> dict[str, list[Sample]]:
    status, body = await get(base + "/metrics")
    assert status == 200
    return parse_metrics(body.decode())


def value(families: Mapping[str, list[Sample]], sample: str, **labels: str) -> float:
    """The one sample named ``sample`` whose labels include ``labels``."""
    family = sample.removesuffix("_total").removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
    found = [
        s.value
        for s in families[family]
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (sample, labels, families[family])
    return found[0]


def consumers_idle(daemon: Daemon) -> bool:
    """Every consumer has taken and finished all it was given, and Parquet writes nothing now.

    Queues empty, no batch inside a consumer (``inflight``), no sealed Parquet chunk waiting
    for or inside the off-loop writer: files on disk and every counter agree until more comes.
    """
    consumers = daemon.bus.stats()["consumers"]
    return all(
        c["depth"] == 0 and c["inflight"] == 0 and not c.get("sealed_rows") for c in consumers.values()
    )


@contextlib.asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[asyncio.Task[int]]:
    """Run ``daemon`` in a task; on exit ask it to stop and wait for its exit code."""
    task = asyncio.create_task(daemon.run())
    try:
        yield task
    finally:
        daemon.request_stop("test done")
        try:
            await asyncio.wait_for(asyncio.shield(task), 30)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
