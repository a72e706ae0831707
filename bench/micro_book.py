"""``python -m bench.micro_book [CAPTURE ...]``: the order book alone, compiled against pure Python.

Replays a real capture's depth diffs (default: the sim's bundled USDⓈ-M BTCUSDT capture) the way
``BookSync`` uses the book: load the snapshot, then for every diff after it ``apply`` and read both
tops (``crossed()``), as the sync machine does after each diff. Records are parsed once, before
timing, so only the book is measured. Rounds alternate between the implementations; the table
shows the best and the median round, µs per diff.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from ingestd import speedups
from ingestd.book.book import PyOrderBook
from ingestd.records import DepthDiff, DepthSnapshot
from ingestd.sim.captures import load_capture
from ingestd.venues.binance.parse import FrameParser, parse_depth_snapshot
from ingestd.venues.binance.symbols import Contract, ContractSet

BUNDLED = Path(__file__).resolve().parents[1] / "ingestd" / "sim" / "data" / "usdm_btcusdt_20240808.gz"


def records(path: Path) -> tuple[DepthSnapshot, list[DepthDiff]]:
    """The first snapshot of the capture's first symbol and the diffs after it."""
    cap = load_capture(path)
    venue = "binance-spot" if cap.market == "spot" else "binance-usdm"
    snap0 = cap.snapshots[0]
    c = Contract(venue=venue, native=snap0.symbol, symbol=snap0.symbol, base="", quote="",
                 tick_size=0.01, price_precision=2, min_qty=0.0, step_size=0.0)  # fmt: skip
    cs = ContractSet(venue, (c,))
    parser = FrameParser(venue, cs)
    snap = parse_depth_snapshot(venue, c, snap0.body, snap0.recv_ns)
    diffs: list[DepthDiff] = []
    for ts, frame in zip(cap.ts, cap.frames, strict=True):
        if b"@depth" not in frame[:80] or ts < snap0.recv_ns:
            continue
        try:
            _, recs = parser.parse(frame, ts)
        except Exception:
            continue
        diffs += [r for r in recs if isinstance(r, DepthDiff) and r.final_update_id >= snap.last_update_id]
    return snap, diffs


def one_round(cls: Any, snap: DepthSnapshot, diffs: list[DepthDiff]) -> float:
    book = cls()
    book.load_snapshot(snap.bids, snap.asks, snap.last_update_id)
    started = time.perf_counter()
    for d in diffs:
        book.apply(d.bids, d.asks, d.final_update_id)
        book.crossed()
    return (time.perf_counter() - started) / len(diffs) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.micro_book", description=__doc__.split("\n\n")[0])
    p.add_argument("captures", nargs="*", type=Path, default=[BUNDLED])
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    compiled = speedups.load("ingestd.book._cbook")
    impls: dict[str, Any] = {"python": PyOrderBook}
    if compiled is not None:
        impls["compiled"] = compiled.OrderBook
    print("| capture | diffs | levels/diff | " + " | ".join(f"{n} best / median" for n in impls) + " |")
    for path in args.captures:
        snap, diffs = records(path)
        per = sum(len(d.bids) + len(d.asks) for d in diffs) / len(diffs)
        times: dict[str, list[float]] = {n: [] for n in impls}
        for _ in range(args.rounds):
            for name, cls in impls.items():
                times[name].append(one_round(cls, snap, diffs))
        cells = " | ".join(f"{min(t):.2f} / {statistics.median(t):.2f}" for t in times.values())
        print(f"| {path.name} | {len(diffs)} | {per:.0f} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
