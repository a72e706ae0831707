"""``python -m bench.pipeline``: ingestd's data path in one process, without a network, for profiling.

The frames of the benchmark workload (:mod:`bench.workload`) go through the daemon's own parts,
wired as :class:`ingestd.app.Daemon` wires them: the :class:`StreamsProducer` (reading from an
in-memory transport instead of aiohttp), the :class:`BookManager`, the :class:`Bus` and every
consumer the daemon attaches by default (Parquet writer, metrics tap, console) plus a counting hook
with the ``block`` policy, as in ``make bench``. REST snapshots are answered in-process with the
workload's own snapshot lines (the newest one recorded so far for the symbol, cut to 50 levels).

What it leaves out of the daemon: aiohttp (the transport reads the workload file, ~0.3 µs per
frame, against ~2 µs for aiohttp's receive), the REST client, the health server. So its numbers
are the pipeline's own CPU cost, reproducible on a busy machine and under a profiler:

    python -m bench.pipeline --frames 100000                 # CPU µs/frame, GC, faults, RSS
    python -m bench.pipeline --frames 100000 --no-storage    # the same without Parquet
    valgrind --tool=callgrind python -m bench.pipeline ...    # instruction counts (see README)

The transport hands out up to :data:`BURST` frames per loop iteration (``ready()`` is true within
a burst), which is what aiohttp does at saturation with one socket read of ~64 KB. The measured
window starts after ``--warm`` frames (books synced) and ends when every consumer is closed (the
last Parquet file is written and fsynced), so work left at the end is charged to the frames.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgspec

from bench import workload
from bench.probe import cpu_ns
from ingestd.app import Daemon
from ingestd.book.manager import BookManager
from ingestd.config import Settings
from ingestd.loop import loop_factory, tune_gc
from ingestd.producers.streams import StreamsProducer, plan_connections
from ingestd.records import AnyRecord
from ingestd.venues.binance.parse import FrameParser, parse_depth_snapshot
from ingestd.venues.binance.symbols import ContractSet, parse_exchange_info

BURST: Final = 96
"""Frames the transport has "ready" per loop iteration (one ~64 KB socket read at 680 B/frame)."""
SNAPSHOT_LIMIT: Final = 50
CACHE: Final = Path(__file__).resolve().parent / ".cache"
STREAM_CHANNELS: Final = frozenset(
    ("depth_diff", "agg_trade", "book_ticker", "mark_price", "kline", "ticker")
)


def contracts_for(symbols: tuple[str, ...]) -> ContractSet:
    """The workload's symbols as a USDⓈ-M contract set (tick and step from the workload table)."""
    spec = {s[0]: s for s in workload.SYMBOLS}
    rows = []
    for native in symbols:
        _, pdec, tick_units, qdec, _ = spec[native]
        tick = f"{tick_units * 10**-pdec:.{pdec}f}"
        step = f"{10**-qdec:.{qdec}f}" if qdec else "1"
        rows.append({
            "symbol": native, "status": "TRADING", "contractType": "PERPETUAL",
            "baseAsset": native.removesuffix("USDT"), "quoteAsset": "USDT",
            "filters": [{"filterType": "PRICE_FILTER", "tickSize": tick},
                        {"filterType": "LOT_SIZE", "minQty": step, "stepSize": step}],
        })  # fmt: skip
    return parse_exchange_info("binance-usdm", {"symbols": rows})


class Feed:
    """The workload file, read lazily, dealt out to the connections that subscribed each stream."""

    def __init__(self, path: Path, frames: int, owner: dict[bytes, int], on_snapshot: Any, warm: int) -> None:
        self._lines = self._read(path)
        self._warm = warm
        self.warmed = asyncio.Event()
        self._owner = owner
        self._queues: dict[int, collections.deque[bytes]] = collections.defaultdict(collections.deque)
        self._left = frames
        self._on_snapshot = on_snapshot
        self.delivered = 0
        self.done = asyncio.Event()

    @staticmethod
    def _read(path: Path) -> Iterator[bytes]:
        with path.open("rb", buffering=1 << 20) as f:
            for line in f:
                yield line[line.index(b" ") + 1 : -1]

    def has_next(self, conn: int) -> bool:
        """Connection ``conn`` has another frame (read ahead until it has one, or the end)."""
        q = self._queues[conn]
        while not q:
            if self._left <= 0:
                return False
            line = next(self._lines, None)
            if line is None:
                self._left = 0
                return False
            if not line.startswith(b'{"stream":"'):
                self._on_snapshot(line)
                continue
            name = line[11 : line.index(b'"', 11)]
            owner = self._owner.get(name)
            if owner is None:
                continue  # a stream this run did not subscribe (--channels)
            self._left -= 1
            self._queues[owner].append(line)
        return True

    def next_for(self, conn: int) -> bytes | None:
        """The next frame of connection ``conn``; ``None`` when the workload is exhausted."""
        if not self.has_next(conn):
            return None
        self.delivered += 1
        if self.delivered == self._warm:
            self.warmed.set()
        return self._queues[conn].popleft()


class ReplayConnection:
    """A :class:`ingestd.producers.transport.WsConnection` reading one connection's frames."""

    def __init__(self, feed: Feed, conn: int) -> None:
        self._feed = feed
        self._conn = conn
        self._n = 0
        self._closed = asyncio.Event()

    @property
    def close_code(self) -> int | None:
        return 1000 if self._closed.is_set() else None

    def ready(self) -> bool:
        # False at the end of a burst and after the last frame, so the reader emits what it holds.
        return self._n % BURST != 0 and self._feed.has_next(self._conn)

    async def recv(self) -> bytes | None:
        if self._n % BURST == 0:
            await asyncio.sleep(0)  # the end of one socket read: other tasks run
        self._n += 1
        frame = self._feed.next_for(self._conn)
        if frame is None:
            self._feed.done.set()
            await self._closed.wait()
            return None
        return frame

    async def send(self, text: str) -> None:
        return None

    async def close(self, code: int = 1000) -> None:
        self._closed.set()


class ReplayTransport:
    """Opens :class:`ReplayConnection` s; the connection is found by its stream list."""

    def __init__(self, feed_factory: Any, by_url: dict[str, int]) -> None:
        self._feed_factory = feed_factory
        self._by_url = by_url

    async def connect(self, url: str, timeout: float) -> ReplayConnection:  # noqa: ASYNC109 - the seam's signature
        return ReplayConnection(self._feed_factory(), self._by_url[url])


class Snapshots:
    """Answers the book manager's snapshot requests with the workload's snapshot lines."""

    def __init__(self, contracts: ContractSet) -> None:
        self._contracts = contracts
        self._latest: dict[str, bytes] = {}
        self._given: dict[str, bytes] = {}
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self.emit: Any = None
        self.served = 0

    def request(self, native: str, urgent: bool = False) -> None:
        self._pending.add(native)
        self._wake.set()

    def seen(self, body: bytes) -> None:
        at = body.find(b'"symbol":"')
        native = body[at + 10 : body.index(b'"', at + 10)].decode()
        self._latest[native] = body
        if native in self._pending:
            self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for native in list(self._pending):
                body = self._latest.get(native)
                if body is None or body is self._given.get(native):
                    continue  # wait for a snapshot newer than the one already given
                self._pending.discard(native)
                self._given[native] = body
                contract = self._contracts.get(native)
                assert contract is not None
                snap = parse_depth_snapshot("binance-usdm", contract, body, time.time_ns())
                snap = msgspec.structs.replace(
                    snap, bids=snap.bids[:SNAPSHOT_LIMIT], asks=snap.asks[:SNAPSHOT_LIMIT]
                )
                self.served += 1
                await self.emit([snap])


class Counter:
    """The counting hook (like ``bench/contenders/hook.py``), with the measurement marks."""

    def __init__(self, expect_warm: int) -> None:
        self.count = 0
        self.other = 0
        self.expect_warm = expect_warm
        self.warm = asyncio.Event()
        self.target: int | None = None
        self.reached = asyncio.Event()
        self.last_ns = 0

    def expect(self, n: int) -> None:
        """Set ``reached`` once ``n`` stream records have been counted."""
        self.target = n
        if self.count >= n:
            self.reached.set()

    async def __call__(self, record: AnyRecord) -> None:
        if record.channel not in STREAM_CHANNELS:
            self.other += 1
            return
        self.count += 1
        self.last_ns = time.time_ns()
        if self.count == self.expect_warm:
            self.warm.set()
        if self.target is not None and self.count >= self.target:
            self.reached.set()


class GcTimer:
    """Collections per generation and the time spent in them (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.collected = 0
        self._t = 0.0
        self.on = False

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if not self.on:
            return
        if phase == "start":
            self._t = time.perf_counter()
        else:
            g = info["generation"]
            self.count[g] += 1
            self.seconds[g] += time.perf_counter() - self._t
            self.collected += info["collected"]


def _usage() -> dict[str, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"user": ru.ru_utime, "sys": ru.ru_stime, "minflt": ru.ru_minflt, "majflt": ru.ru_majflt}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    wl = workload.ensure(CACHE, frames=args.workload)
    contracts = contracts_for(wl.symbols)
    kinds = tuple(k for k, ch in workload.CHANNEL.items() if ch in args.channels)
    data_dir = Path(tempfile.mkdtemp(prefix="ingestd-pipeline-", dir=args.tmp))
    env = {
        "channels": [*args.channels, "depth_snapshot"] if "depth_diff" in args.channels else args.channels,
        "storage": {
            "enabled": args.storage,
            "data_dir": str(data_dir),
            "queue_size": 20_000,
            **({"writer": args.writer} if args.writer else {}),
        },
        "hooks": {"policy": "block"},
        "console": {"enabled": args.console},
        "health": {"port": 9 if args.metrics else 0},  # only decides whether the tap is attached
        "ws_url": "ws://replay",
    }
    settings = Settings.model_validate(env)
    daemon = Daemon(settings)
    daemon.contracts = contracts
    ctx = daemon.hook_context
    ctx.contracts = contracts
    ctx.price_precision, ctx.min_qty = contracts.price_precision(), contracts.min_qty()
    frames = min(args.frames, wl.count(kinds))
    hook = Counter(args.warm)
    if args.hook:
        daemon.add_hook(hook, name="count")
    daemon._attach_consumers()
    await daemon.bus.start()
    snaps = Snapshots(contracts)
    snaps.emit = daemon._emit
    if args.books and "depth_diff" in args.channels:
        daemon.books = BookManager(
            "binance-usdm", contracts, market="futures", request_snapshot=snaps.request
        )
        ctx.books = daemon.books
    plans = plan_connections(daemon.venue, contracts, list(args.channels), settings.streams)
    owner = {s.encode(): i for i, p in enumerate(plans) for s in p.streams}
    by_url = {p.url(settings.ws_url or ""): i for i, p in enumerate(plans)}
    feed = Feed(wl.path, frames, owner, snaps.seen, args.warm)
    streams = StreamsProducer(
        daemon.venue, settings.ws_url or "", plans, FrameParser(daemon.venue.name, contracts),
        daemon._emit, settings.streams, transport=ReplayTransport(lambda: feed, by_url),
    )  # fmt: skip
    tasks = [asyncio.create_task(streams.run()), asyncio.create_task(snaps.run())]
    tune_gc()
    gct = GcTimer()
    gc.callbacks.append(gct)

    # Warm-up: books synced and the first files started.
    await (hook.warm if args.hook else feed.warmed).wait()
    synced = daemon.books.stats()["totals"]["synced"] if daemon.books else 0
    warm_frames = feed.delivered
    gct.on = True
    u0, c0, t0 = _usage(), cpu_ns() / 1e9, time.perf_counter()
    await feed.done.wait()
    if args.hook:
        hook.expect(feed.delivered)
        await hook.reached.wait()
    await streams.close()
    await daemon.bus.close()
    c1, t1, u1 = cpu_ns() / 1e9, time.perf_counter(), _usage()
    gct.on = False
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    n = feed.delivered - warm_frames
    bus = daemon.bus.stats()
    parquet = bus["consumers"].get("parquet", {})
    shutil.rmtree(data_dir, ignore_errors=True)
    return {
        "frames": n,
        "cpu_us_per_frame": round((c1 - c0) / n * 1e6, 3),
        "user_us": round((u1["user"] - u0["user"]) / n * 1e6, 3),
        "sys_us": round((u1["sys"] - u0["sys"]) / n * 1e6, 3),
        "wall_us": round((t1 - t0) / n * 1e6, 3),
        "minflt_per_frame": round((u1["minflt"] - u0["minflt"]) / n, 3),
        "gc": {
            "collections": gct.count,
            "us_per_frame": [round(s / n * 1e6, 3) for s in gct.seconds],
            "collected": gct.collected,
        },
        "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "books_synced_at_warm": synced,
        "hook_records": hook.count,
        "snapshots_served": snaps.served,
        "parquet_rows": parquet.get("rows"),
        "parquet_files": parquet.get("files"),
        "duplicates": streams.stats()["duplicates"],
        "queues": {
            name: {"high_water": c["high_water"], "blocked_s": c["blocked_seconds"]}
            for name, c in bus["consumers"].items()
        },
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", type=int, default=300_000, help="workload size (frames) to read from")
    p.add_argument("--frames", type=int, default=100_000, help="frames fed (warm-up included)")
    p.add_argument("--warm", type=int, default=10_000, help="frames before the measured window")
    p.add_argument("--channels", default="depth_diff,agg_trade,book_ticker,mark_price,kline,ticker")
    for flag in ("storage", "books", "hook", "metrics", "console"):
        p.add_argument(f"--no-{flag}", dest=flag, action="store_false")
    p.add_argument("--no-uvloop", dest="uvloop", action="store_false")
    p.add_argument("--writer", choices=("thread", "process"), default=None,
                   help="storage.writer (default: the setting's default)")  # fmt: skip
    p.add_argument("--tmp", default=None, help="where the Parquet tree goes (default: the system's temp)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = p.parse_args(argv)
    args.channels = tuple(c for c in args.channels.split(",") if c)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    with asyncio.Runner(loop_factory=loop_factory(args.uvloop)) as runner:
        result = runner.run(run(args))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (freeing everything) in callgrind runs


if __name__ == "__main__":
    sys.exit(main())
