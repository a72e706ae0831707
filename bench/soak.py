"""Soak run: ingestd against the sim replaying real captures in a loop, memory and handles sampled.

    python -m bench.soak --minutes 10            # as fast as the daemon reads (speed 0)
    python -m bench.soak --minutes 60 --speed 20 # a set rate: 20x the capture's own pace

The sim runs in its own process (``ingestd.sim.cli --loop --loop-shift --resume continue``): each
pass of the capture gets fresh ids and times, so the daemon stores every pass (its duplicate
filter would drop a plain replay) and each book resyncs once per pass from a snapshot. The daemon
runs in this process with storage on, exactly as ``ingestd run`` sets it up (uvloop, tuned GC),
so its task count can be read directly. Every ``--sample-s`` seconds one row is taken: RSS, open
file descriptors, asyncio tasks, frames read, records stored, rows waiting for the disk.

At the end the sim is paused, the daemon reads what is in flight and stops (flushing Parquet),
and the checks run:

* records: per channel, rows stored == frames the sim sent (snapshots and gap records == what
  the daemon emitted), none dropped, no duplicate dropped;
* memory: after warm-up, the peak RSS of the last window is within the band of the first
  window's peak (windows as long as a Parquet rotation, so both hold a full buffer cycle);
* handles: file descriptors and tasks at the end are no more than after warm-up (+2 slack).

Exit code 0 when every check passes, 1 otherwise. ``--json FILE`` writes samples and results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow as pa

from ingestd.app import Daemon
from ingestd.config import load_settings
from ingestd.consumers.schema import open_dataset
from ingestd.loop import loop_factory, tune_gc
from ingestd.observe.logging import setup_logging
from ingestd.sim.venue import BUNDLED_CAPTURE
from ingestd.venues.binance.endpoints import stream_kind

log = logging.getLogger("ingestd.soak")

KIND_CHANNEL = {"trade": "trade", "aggTrade": "agg_trade", "bookTicker": "book_ticker", "depth": "depth_diff"}


@dataclass(frozen=True, slots=True)
class Sample:
    """One row of the table."""

    t_s: float
    rss_mb: float
    py_blocks_k: int
    """Python objects' memory blocks in use, thousands (``sys.getallocatedblocks``): grows with a leak."""
    arrow_mb: float
    """Bytes held by pyarrow's memory pool."""
    fds: int
    tasks: int
    frames: int
    frames_per_s: float
    stored_rows: int
    pending_rows: int
    queue_depth: int
    synced_books: int


def rss_mb() -> float:
    """Resident set size of this process (Linux ``/proc``), in MiB."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _parquet_stats(daemon: Daemon) -> dict[str, Any]:
    consumer: dict[str, Any] = daemon.bus.stats()["consumers"].get("parquet", {})
    return consumer


def take_sample(daemon: Daemon, started: float, prev: Sample | None) -> Sample:
    now = time.monotonic() - started
    streams = daemon.streams.stats() if daemon.streams is not None else {"frames": 0}
    pq = _parquet_stats(daemon)
    books = daemon.books.stats()["totals"] if daemon.books is not None else {"synced": 0}
    frames = int(streams["frames"])
    rate = 0.0
    if prev is not None and now > prev.t_s:
        rate = (frames - prev.frames) / (now - prev.t_s)
    return Sample(
        t_s=round(now, 1),
        rss_mb=round(rss_mb(), 1),
        py_blocks_k=sys.getallocatedblocks() // 1000,
        arrow_mb=round(pa.total_allocated_bytes() / 2**20, 1),
        fds=open_fds(),
        tasks=len(asyncio.all_tasks()),
        frames=frames,
        frames_per_s=round(rate),
        stored_rows=int(pq.get("rows", 0)),
        pending_rows=int(pq.get("pending_rows", 0)),
        queue_depth=int(pq.get("depth", 0)),
        synced_books=int(books.get("synced", 0)),
    )


COLUMNS = (
    ("t(s)", 7, "t_s", ".0f"),
    ("RSS MB", 7, "rss_mb", ".1f"),
    ("blocks k", 8, "py_blocks_k", "d"),
    ("arrow MB", 8, "arrow_mb", ".1f"),
    ("fds", 4, "fds", "d"),
    ("tasks", 5, "tasks", "d"),
    ("frames", 10, "frames", "d"),
    ("frames/s", 8, "frames_per_s", ".0f"),
    ("stored", 10, "stored_rows", "d"),
    ("pending", 8, "pending_rows", "d"),
    ("queue", 6, "queue_depth", "d"),
    ("books", 5, "synced_books", "d"),
)


def print_table(samples: Sequence[Sample], every: int) -> None:
    print(" ".join(f"{title:>{width}}" for title, width, _, _ in COLUMNS))
    rows = list(samples[::every])
    if samples and rows[-1] is not samples[-1]:
        rows.append(samples[-1])
    for s in rows:
        print(" ".join(f"{getattr(s, attr):>{width}{fmt}}" for _, width, attr, fmt in COLUMNS))


# --------------------------------------------------------------------------- the sim process


class SimProcess:
    """``python -m ingestd.sim.cli`` in a child process; ``rest``/``ws`` once it is ready."""

    def __init__(self, captures: Sequence[Path], speed: float) -> None:
        cmd = [sys.executable, "-m", "ingestd.sim.cli", "--loop", "--loop-shift", "--resume", "continue"]
        cmd += ["--speed", str(speed)]
        for c in captures:
            cmd += ["--capture", str(c)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().split()
        if len(ready) != 2:
            self.close()
            raise RuntimeError(f"the sim did not start (exit {self.proc.poll()})")
        self.rest, self.ws = (kv.split("=", 1)[1] for kv in ready)

    async def stats(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(self.rest + "/_sim/stats") as resp:
            body: dict[str, Any] = await resp.json()
            return body

    async def fault(self, session: aiohttp.ClientSession, **body: Any) -> None:
        async with session.post(self.rest + "/_sim/faults", json=body) as resp:
            resp.raise_for_status()

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return 0.0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# --------------------------------------------------------------------------- the run


def stored_per_channel(data_dir: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in sorted(data_dir.glob("venue=*/channel=*")):
        channel = d.name.partition("=")[2]
        out[channel] = out.get(channel, 0) + open_dataset(data_dir, channel).count_rows()
    return out


def sent_per_channel(frames_sent: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for stream, n in frames_sent.items():
        channel = KIND_CHANNEL.get(stream_kind(stream))
        if channel is not None and n:
            out[channel] = out.get(channel, 0) + n
    return out


def window_peak(samples: Sequence[Sample], start: float, end: float) -> float:
    inside = [s.rss_mb for s in samples if start <= s.t_s <= end]
    return max(inside) if inside else float("nan")


def slope_mb_per_h(samples: Sequence[Sample]) -> float:
    if len(samples) < 3:
        return 0.0
    xs = [s.t_s / 3600.0 for s in samples]
    ys = [s.rss_mb for s in samples]
    return float(statistics.linear_regression(xs, ys).slope)


async def soak(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    sim = SimProcess(args.capture, args.speed)
    try:
        return await _soak(args, data_dir, sim)
    finally:
        sim.close()


async def _soak(args: argparse.Namespace, data_dir: Path, sim: SimProcess) -> dict[str, Any]:
    settings = load_settings(
        environ={},
        cli={
            "rest_url": sim.rest,
            "ws_url": sim.ws,
            "symbols": args.symbols,
            "channels": args.channels,
            "storage": {"data_dir": str(data_dir), "rotate_seconds": args.rotate_s},
            "console": {"enabled": False},
            "health": {"port": 0},
            "shutdown_timeout_s": 120,
        },
    )
    daemon = Daemon(settings)
    run = asyncio.create_task(daemon.run(), name="soak:daemon")
    duration = args.minutes * 60.0
    warmup = args.warmup_s if args.warmup_s is not None else min(max(60.0, 2 * args.rotate_s), duration / 3)
    window = max(args.rotate_s, 3 * args.sample_s)
    samples: list[Sample] = []
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        prev: Sample | None = None
        while time.monotonic() - started < duration and not run.done():
            await asyncio.sleep(args.sample_s)
            prev = take_sample(daemon, started, prev)
            samples.append(prev)
            if args.verbose:
                print_table([prev], 1)
        if run.done():
            raise RuntimeError(f"the daemon stopped early: {run.result()}")
        # Pause the venue, let the daemon read what is in flight, then stop it (Parquet flushed).
        await sim.fault(session, action="stall")
        deadline = time.monotonic() + 60
        sent: dict[str, int] = {}
        while time.monotonic() < deadline:
            sent = (await sim.stats(session))["frames_sent"]
            frames = daemon.streams.stats()["frames"] if daemon.streams is not None else 0
            if frames >= sum(sent.values()):
                break
            await asyncio.sleep(0.1)
        sim_stats = await sim.stats(session)
    final = take_sample(daemon, started, prev)
    stats = daemon.stats()
    daemon.request_stop("soak done")
    code = await asyncio.wait_for(run, 180)
    pq = _parquet_stats(daemon)
    stored = stored_per_channel(data_dir)
    sent_by_channel = sent_per_channel(sim_stats["frames_sent"])
    snapshots = int(stats.get("snapshots", {}).get("emitted", 0))
    gap_records = sum(int(v) for v in stats.get("books", {}).get("totals", {}).get("gaps", {}).values())
    resyncs = int(stats.get("books", {}).get("totals", {}).get("resyncs", 0))

    after = [s for s in samples if s.t_s >= warmup]
    base_peak = window_peak(after, warmup, warmup + window)
    end_peak = window_peak(after, final.t_s - window, final.t_s)
    band = max(args.rss_band_mb, args.rss_band_pct / 100.0 * base_peak)
    first = after[0] if after else final
    checks = {
        "exit code 0": code == 0,
        "records in == records stored (stream channels)": all(
            stored.get(ch, 0) == n for ch, n in sent_by_channel.items()
        ),
        "snapshots stored == emitted": stored.get("depth_snapshot", 0) == snapshots,
        "nothing dropped (parquet queue and writer)": int(pq.get("dropped", 0)) == 0
        and int(pq.get("dropped_rows", 0)) == 0,
        "no duplicate dropped (fresh ids each pass)": int(stats["streams"]["duplicates"]) == 0,
        "parse errors == 0": int(stats["streams"]["parse_errors"]) == 0,
        f"RSS end-window peak within {band:.0f} MB of the first window's": abs(end_peak - base_peak) <= band,
        "fds do not grow": final.fds <= first.fds + 2,
        "tasks do not grow": final.tasks <= first.tasks + 2,
    }
    return {
        "settings": {
            "minutes": args.minutes,
            "speed": args.speed,
            "captures": [str(c) for c in args.capture],
            "symbols": args.symbols,
            "channels": args.channels,
            "rotate_s": args.rotate_s,
            "warmup_s": warmup,
            "window_s": window,
        },
        "samples": [asdict(s) for s in [*samples, final]],
        "frames_read": final.frames,
        "mean_frames_per_s": round(final.frames / max(final.t_s, 1e-9)),
        "passes": max((c.get("loops", 0) for c in sim_stats["connections"]), default=0),
        "sent_per_channel": sent_by_channel,
        "stored_per_channel": stored,
        "snapshots_emitted": snapshots,
        "gap_records": gap_records,
        "book_resyncs": resyncs,
        "parquet": {
            k: pq.get(k) for k in ("files", "rows", "bytes", "dropped", "dropped_rows", "write_errors")
        },
        "rss_first_window_peak_mb": base_peak,
        "rss_last_window_peak_mb": end_peak,
        "rss_band_mb": round(band, 1),
        "rss_slope_mb_per_h_after_warmup": round(slope_mb_per_h(after), 2),
        "rss_max_mb": max(s.rss_mb for s in [*samples, final]),
        "sim_rss_mb": round(sim.rss_mb(), 1),
        "fds_after_warmup": first.fds,
        "fds_end": final.fds,
        "tasks_after_warmup": first.tasks,
        "tasks_end": final.tasks,
        "checks": checks,
    }


def report(result: dict[str, Any], every: int) -> bool:
    samples = [Sample(**s) for s in result["samples"]]
    print_table(samples, every)
    print()
    for key in (
        "settings", "frames_read", "mean_frames_per_s", "passes", "sent_per_channel", "stored_per_channel",
        "snapshots_emitted", "gap_records", "book_resyncs", "parquet", "rss_first_window_peak_mb",
        "rss_last_window_peak_mb", "rss_band_mb", "rss_slope_mb_per_h_after_warmup", "rss_max_mb",
        "sim_rss_mb", "fds_after_warmup", "fds_end", "tasks_after_warmup", "tasks_end",
    ):  # fmt: skip
        print(f"{key}: {result[key]}")
    print()
    ok = True
    for name, passed in result["checks"].items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")
        ok = ok and passed
    return ok


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    p.add_argument(
        "--capture",
        type=Path,
        action="append",
        help=f"capture to loop, repeatable (default: the bundled {BUNDLED_CAPTURE.name})",
    )
    p.add_argument("--symbols", default="BTCUSDT", help="native symbols (default BTCUSDT)")
    p.add_argument("--channels", default="trade,book_ticker,depth_diff", help="channels to ingest")
    p.add_argument("--speed", type=float, default=0.0, help="sim speed: 0 = as fast as read (default)")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples (default 5)")
    p.add_argument("--warmup-s", type=float, help="default: max(60, 2 x rotate-s), at most a third")
    p.add_argument("--rotate-s", type=float, default=60.0, help="Parquet rotate_seconds (default 60)")
    p.add_argument("--rss-band-mb", type=float, default=32.0, help="allowed RSS drift, MB (default 32)")
    p.add_argument("--rss-band-pct", type=float, default=10.0, help="or this share of it (default 10)")
    p.add_argument("--data-dir", type=Path, help="Parquet root (default: a temporary dir, removed)")
    p.add_argument("--json", type=Path, help="write samples and results here")
    p.add_argument("--table-every", type=int, default=0, help="print every Nth sample (default: ~30 rows)")
    p.add_argument("--verbose", action="store_true", help="print each sample as it is taken")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.capture = args.capture or [BUNDLED_CAPTURE]
    setup_logging("text", "WARNING")
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.mkdtemp(prefix="ingestd-soak-")
        args.data_dir = Path(tmp)
    try:
        with asyncio.Runner(loop_factory=loop_factory(True)) as runner:
            tune_gc()
            result = runner.run(soak(args, args.data_dir))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    every = args.table_every or max(1, len(result["samples"]) // 30)
    return 0 if report(result, every) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
