"""``python -m bench.replay``: replay throughput, against reading the same Parquet with pyarrow.

``python -m bench.run`` (``make bench``) runs this too and puts its rows under the main table and
into ``bench/results/latest.json`` (``--no-replay`` skips it); ``python -m bench.replay`` runs it
alone.

The bench workload (:mod:`bench.workload`, 300,000 frames over 50 symbols by default) is stored
once by the daemon (the sim at ``--speed 0``, storage on, all six channels) under
``bench/.cache/replay-<frames>/``; then, on that tree, each of these runs ``--runs`` times, one
round after the other (every case once per round, so drift of the machine touches them all);
medians with min-max are reported, and each rate as a ratio to the pyarrow read of the same
run:

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

Rates are records per second of wall time on one process (pinned to one core when ``cpu`` is
given). Alone, the table goes to stdout, to ``bench/results/replay.json`` and between the
``replay`` markers of ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
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


def prepare(cache: Path, frames: int, symbols: int = 50) -> tuple[workload.Workload, Path]:
    """The workload and the tree the daemon stored from it (stored on first use, then reused)."""
    wl = workload.ensure(cache, frames=frames, symbols=symbols)
    data = cache / f"replay-{frames}" if symbols == 50 else cache / f"replay-{frames}-{symbols}s"
    if not (data / ".stored").exists():
        shutil.rmtree(data, ignore_errors=True)  # a store that was interrupted
        print(f"storing the workload ({wl.frames:,} frames) under {data} ...")
        store(wl, data)
        (data / ".stored").write_text("ok\n")
    return wl, data


def measure(
    data: Path, runs: int, *, cases: dict[str, Callable[[Path], int]] | None = None, cpu: int | None = None
) -> list[dict[str, Any]]:
    """Every case ``runs`` times in rounds; per case the median rate with min-max, and its ratio to
    the first case (the pyarrow read) of the same run. Pinned to ``cpu`` while it measures."""
    cases = CASES if cases is None else cases
    before = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    rates: dict[str, list[float]] = {label: [] for label in cases}
    counts: dict[str, int] = {}
    try:
        for r in range(runs):
            for label, case in cases.items():
                gc.collect()
                t0 = time.perf_counter()
                n = case(data)
                rate = n / (time.perf_counter() - t0)
                rates[label].append(rate)
                if counts.setdefault(label, n) != n:
                    raise RuntimeError(f"{label}: {n} records in round {r + 1}, {counts[label]} before")
                print(f"  replay round {r + 1} {label:<50} {rate:>10,.0f} rec/s  ({n:,} records)")
    finally:
        if cpu is not None:
            os.sched_setaffinity(0, before)
    return summarize(rates, counts)


def summarize(rates: dict[str, list[float]], counts: dict[str, int]) -> list[dict[str, Any]]:
    """Rows of :func:`measure` from the rates of each case (the first case is the baseline)."""
    floor = statistics.median(next(iter(rates.values())))
    out = []
    for label, rs in rates.items():
        rate = statistics.median(rs)
        out.append({
            "case": label,
            "records": counts[label],
            "records_per_s": round(rate),
            "min": round(min(rs)),
            "max": round(max(rs)),
            "rates": [round(x) for x in rs],
            "us_per_record": round(1e6 / rate, 2),
            "x_pyarrow": round(rate / floor, 3),
        })  # fmt: skip
    return out


HEADER: Final = (
    "| replay of the stored tree | records/s | min-max | µs/record | x pyarrow read |",
    "|---|---:|---:|---:|---:|",
)


def rows_md(rows: list[dict[str, Any]]) -> list[str]:
    """The table's lines (header included): medians, min-max, ratio to the pyarrow read."""
    return [*HEADER] + [
        f"| {r['case']} | {r['records_per_s']:,} | {r['min']:,}-{r['max']:,} | {r['us_per_record']:.2f} "
        f"| {r['x_pyarrow']:.3f} |"
        for r in rows
    ]


def table(rows: list[dict[str, Any]], info: dict[str, Any], frames: int, runs: int) -> str:
    lines = [
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Tree: the bench workload "
        f"({frames:,} frames, 50 symbols) as the daemon stored it; medians (min-max) of {runs} run(s).",
        "",
        *rows_md(rows),
    ]
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
    p.add_argument("--cpu", type=int, help="pin to this CPU while measuring (default: not pinned)")
    p.add_argument("--no-readme", action="store_true", help="do not update bench/README.md")
    args = p.parse_args(argv)
    wl, data = prepare(CACHE, args.frames)
    info = procs.machine()
    print(f"replay throughput on {data}:")
    rows = measure(data, args.runs, cpu=args.cpu)
    block = table(rows, info, wl.frames, args.runs)
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
