"""``python -m bench.replay``: replay throughput, against reading the same Parquet with pyarrow.

The bench workload (:mod:`bench.workload`, 300,000 frames over 50 symbols by default) is stored
once by the daemon (the sim at ``--speed 0``, storage on, all six channels) under
``bench/.cache/replay-<frames>/``; then, on that tree, each of these runs ``--runs`` times
(medians are reported):

* ``pyarrow``: ``pq.read_table`` of every file, all columns: the floor of reading the tree;
* ``pyarrow + to_pylist``: the same, then every row as Python objects (what any Python
  consumer of the rows pays);
* ``replay, no books``: ``ingestd.replay.records(books=False)`` iterated (records rebuilt and
  merged by ``recv_ts``);
* ``replay with books``: the same with ``books=True`` (every snapshot, diff and bookTicker
  through the daemon's BookManager, as of each record);
* ``replay with books + hook``: ``run_hooks`` with one counting hook through the daemon's
  ``HookConsumer`` (what ``ingestd replay --hook`` does): a hook taking the context is called
  once per record (so it reads the book as of each); a hook without it gets batches.

Rates are records per second of wall time on one process. The table goes to stdout, to
``bench/results/replay.json`` and between the ``replay`` markers of ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pyarrow.parquet as pq

from bench import procs, workload

CACHE: Final = procs.ROOT / "bench" / ".cache"
RESULTS: Final = procs.ROOT / "bench" / "results"
BEGIN: Final = "<!-- replay:begin -->"
END: Final = "<!-- replay:end -->"


def store(wl: workload.Workload, data: Path) -> None:
    """Store the workload as the daemon does live (sim at speed 0, storage on, every channel)."""
    from ingestd.app import Daemon  # noqa: PLC0415 - the bench imports ingestd lazily
    from ingestd.config import load_settings  # noqa: PLC0415
    from ingestd.sim import SimVenue  # noqa: PLC0415

    async def run() -> None:
        async with SimVenue([wl.path], speed=0) as sim:
            settings = load_settings(
                environ={},
                cli={
                    "rest_url": sim.rest_url,
                    "ws_url": sim.ws_url,
                    "symbols": ",".join(wl.symbols),
                    "channels": "agg_trade,book_ticker,depth_diff,mark_price,kline,ticker",
                    "storage": {"data_dir": str(data), "rotate_seconds": 3600},
                    "snapshots": {"limit": 50, "weight_headroom": 1.0},
                    "console": {"enabled": False},
                    "health": {"port": 0},
                },
            )
            daemon = Daemon(settings)
            task = asyncio.create_task(daemon.run())
            while daemon.streams is None or daemon.streams.stats()["frames"] < wl.frames:
                if task.done():
                    raise RuntimeError("the daemon stopped before storing the workload")
                await asyncio.sleep(0.5)
            daemon.request_stop("stored")
            await task

    asyncio.run(run())


def _pyarrow(data: Path, *, rows: bool) -> int:
    n = 0
    for f in sorted(data.rglob("*.parquet")):
        table = pq.read_table(f)
        n += table.num_rows
        if rows:
            for col in table.columns:
                col.to_pylist()
    return n


def _replay(data: Path, *, books: bool) -> int:
    from ingestd.replay import records  # noqa: PLC0415

    return sum(1 for _ in records(data, books=books))


def _replay_hook(data: Path, *, context: bool = True) -> int:
    from ingestd.consumers.hooks import HookConsumer  # noqa: PLC0415
    from ingestd.replay import HookTarget, Replay, run_hooks  # noqa: PLC0415

    count = 0

    async def hook(rec: Any, ctx: Any) -> None:
        nonlocal count
        count += 1

    async def plain(rec: Any) -> None:
        nonlocal count
        count += 1

    replay = Replay(data, books=True)
    func = hook if context else plain
    consumer = HookConsumer("count", func, channels=None, timeout_s=5.0, context=replay.context)
    try:
        import uvloop  # noqa: PLC0415

        uvloop.run(run_hooks(replay, [HookTarget(consumer)]))
    except ImportError:
        asyncio.run(run_hooks(replay, [HookTarget(consumer)]))
    return count


CASES: Final[dict[str, Callable[[Path], int]]] = {
    "pyarrow: read_table, every file": lambda d: _pyarrow(d, rows=False),
    "pyarrow: read_table + to_pylist": lambda d: _pyarrow(d, rows=True),
    "ingestd.replay.records, no books": lambda d: _replay(d, books=False),
    "ingestd.replay.records, books": lambda d: _replay(d, books=True),
    "ingestd replay --hook: books + one hook(rec, ctx)": _replay_hook,
    "ingestd replay --hook: books + one hook(rec)": lambda d: _replay_hook(d, context=False),
}


def measure(data: Path, runs: int) -> list[dict[str, Any]]:
    out = []
    for label, case in CASES.items():
        rates, n = [], 0
        for _ in range(runs):
            gc.collect()
            t0 = time.perf_counter()
            n = case(data)
            rates.append(n / (time.perf_counter() - t0))
        rate = statistics.median(rates)
        out.append({"case": label, "records": n, "records_per_s": round(rate), "us_per_record": 1e6 / rate})
        print(f"  {label:<42} {rate:>12,.0f} rec/s  {1e6 / rate:7.2f} µs/rec  ({n:,} records)")
    return out


def table(rows: list[dict[str, Any]], info: dict[str, Any], frames: int) -> str:
    floor = rows[0]["records_per_s"]
    lines = [
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Tree: the bench workload "
        f"({frames:,} frames, 50 symbols) as the daemon stored it.",
        "",
        "| replay of the stored tree | records/s | µs/record | x pyarrow read |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        rate = r["records_per_s"]
        lines.append(f"| {r['case']} | {rate:,} | {r['us_per_record']:.2f} | {rate / floor:.3f} |")
    return "\n".join(lines)


def update_readme(path: Path, block: str) -> None:
    text = path.read_text()
    if BEGIN not in text:
        return
    new = (
        f"{BEGIN}\n{block}\n\n(`python -m bench.replay`; raw numbers in `bench/results/replay.json`.)\n{END}"
    )
    path.write_text(re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: new, text, flags=re.DOTALL))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=300_000, help="workload frames (default 300000)")
    p.add_argument("--runs", type=int, default=3, help="runs per case; the median is reported (default 3)")
    p.add_argument("--no-readme", action="store_true", help="do not update bench/README.md")
    args = p.parse_args(argv)
    wl = workload.ensure(CACHE, frames=args.frames)
    data = CACHE / f"replay-{args.frames}"
    if not (data / ".stored").exists():
        print(f"storing the workload ({wl.frames:,} frames) under {data} ...")
        store(wl, data)
        (data / ".stored").write_text("ok\n")
    info = procs.machine()
    print(f"replay throughput on {data}:")
    rows = measure(data, args.runs)
    block = table(rows, info, wl.frames)
    print()
    print(block)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "replay.json").write_text(
        json.dumps({"machine": info, "frames": wl.frames, "rows": rows}, indent=1)
    )
    if not args.no_readme:
        update_readme(procs.ROOT / "bench" / "README.md", block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
