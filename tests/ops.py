"""Helpers for the tests: waiting on conditions (the one place for it), a free port, HTTP GETs,
Prometheus samples, a daemon task, systemd's side of the notify socket.

Tests never sleep to synchronise and never bound how long something took: they wait on an
event, a counter or a condition with :func:`wait_for`, whose generous overall timeout only
matters when the test fails (the suite runs on loaded 2-core machines). See docs/testing.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ingestd.app import Daemon

T = TypeVar("T")

WAIT_S = 30.0
"""Default overall timeout of :func:`wait_for`: long enough for a loaded machine, and only spent
when the condition never holds (the test then fails naming what it waited for)."""
POLL_S = 0.01


async def wait_for(
    cond: Callable[[], bool | Awaitable[bool]], timeout: float = WAIT_S, what: str = "condition"
) -> float:
    """Wait until ``cond()`` (sync or async) holds; returns the monotonic time it was seen to.

    Checked at once, then every 10 ms. Raises ``AssertionError`` naming ``what`` after
    ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        r = cond()
        if isinstance(r, Awaitable):
            r = await r
        if r:
            return time.monotonic()
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached in {timeout:g} s")
        await asyncio.sleep(POLL_S)


def wait_until(cond: Callable[[], bool], what: str = "condition", timeout: float = 2 * WAIT_S) -> None:
    """:func:`wait_for` for tests that drive a daemon in another process (no event loop here).

    ``OSError`` from ``cond`` counts as "not yet" (the daemon's health port is not up).
    """
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if cond():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout:g} s")
        time.sleep(POLL_S)


def status_of(port: int) -> dict[str, Any]:
    """``GET /status`` of a daemon in another process, as a dict."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as resp:
        body: dict[str, Any] = orjson.loads(resp.read())
        return body


def completes_at_once(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` for one step and return its result; fails if it would have waited.

    The check for "never blocks" that no machine's load can break: a coroutine that finishes at
    its first step suspended for nothing, however long the step itself took.
    """
    try:
        coro.send(None)
    except StopIteration as done:
        return cast("T", done.value)
    coro.close()
    name = getattr(coro, "__qualname__", repr(coro))
    raise AssertionError(f"{name} suspended: it waited for something")


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


class Listener:
    """systemd's side: a datagram socket bound in tmp_path that collects (time, message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> list[str]:
        """Read what arrived; returns the new messages."""
        new = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                break
            new.append(data.decode())
            self.messages.append((time.monotonic(), new[-1]))
        return new

    def lines(self) -> list[str]:
        return [m for _, m in self.messages]

    def watch(self) -> None:
        """Drain from the event loop as soon as anything arrives, as systemd does: the kernel
        queues only net.unix.max_dgram_qlen (often 10) datagrams, the rest would be refused."""
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self.drain)
        self._watched = True

    def close(self) -> None:
        if getattr(self, "_watched", False):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
