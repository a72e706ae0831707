"""Turning contender runs into the table, the JSON and the README's "Latest" section."""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bench.probe import read_latency

if TYPE_CHECKING:
    from bench.run import Run
    from bench.workload import Workload

LABELS: Final = {
    "ceiling": "(a) ceiling: aiohttp + orjson, receive and decode only",
    "ceiling-picows": "(a') ceiling with picows instead of aiohttp",
    "ceiling-wss": "(a'') ceiling over wss (TLS, certificate verified)",
    "ingestd": "(b) ingestd end to end, storage on, all 6 channels",
    "ingestd-nostorage": "(c) ingestd --no-storage, hook only",
    "ingestd-nostorage-wss": "(c') ingestd --no-storage over wss + https",
    "ingestd-cf": "(b') ingestd end to end, storage on, cryptofeed's channels",
    "ingestd-wproc": "(b'') (b) with storage.writer: process (writer on the sim's core)",
    "cryptofeed": "(d) cryptofeed 2.4 BinanceFutures, L2 book + trades",
}
TLS_PAIRS: Final = {"ceiling-wss": "ceiling", "ingestd-nostorage-wss": "ingestd-nostorage"}
"""TLS contender → its plain twin: the difference in CPU µs/msg is the TLS cost per message."""
BEGIN: Final = "<!-- latest:begin -->"
END: Final = "<!-- latest:end -->"
PERF_BEGIN: Final = "<!-- perf:begin -->"
PERF_END: Final = "<!-- perf:end -->"
"""The top-level README's "Performance" quote of the table (full runs only)."""


def progress_line(round_no: int, run: Run) -> str:
    if not run.ok:
        return (
            f"  round {round_no} {run.contender:<18} FAILED: {run.error.splitlines()[0] if run.error else ''}"
        )
    extra = f"  ({run.error})" if run.error else ""
    return (
        f"  round {round_no} {run.contender:<18} {run.rate:>9,.0f} msg/s  {run.cpu_us:6.2f} µs/msg  "
        f"{run.rss_mb:7.0f} MB  sim {run.sim_cpu:4.0%}{extra}"
    )


def _pct(sorted_values: Sequence[int], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] / 1e3


def latency(out: Path, detail: dict[str, Any]) -> dict[str, Any]:
    """p50/p99/p999 (µs) of receive→hook and exchange→hook from a run's samples.

    The first 10 % of samples (and for ingestd everything before all books synced) are left
    out. exchange→hook: ``E`` is mapped to the moment the sim sent the frame (its replay clock
    runs from ``E``), by subtracting per route the smallest receive-minus-``E`` seen; what is left is
    sim send → hook, ms pacing jitter of the sim included.
    """
    n = int(detail.get("latency_samples", 0))
    if not n:
        return {}
    recv_lat, ex_lat, recv_ex, route = read_latency(out, n)
    skip = max(n // 10, int(detail.get("warm_samples", 0)))
    offsets: dict[int, int] = {}
    for i in range(skip, n):
        if recv_ex[i] >= 0:
            r = route[i]
            offsets[r] = min(offsets.get(r, recv_ex[i]), recv_ex[i])
    recv = sorted(recv_lat[skip:])
    ex = sorted(ex_lat[i] - offsets[route[i]] for i in range(skip, n) if ex_lat[i] >= 0)
    seconds = (int(detail.get("last_ns", 0)) - int(detail.get("first_ns", 0))) / 1e9
    return {
        "samples": n - skip,
        "rate": round(n / seconds) if seconds > 0 else None,
        "recv_hook_us": {
            f"p{q}": round(_pct(recv, v), 1) for q, v in (("50", 0.5), ("99", 0.99), ("999", 0.999))
        },
        "exchange_hook_us": {
            f"p{q}": round(_pct(ex, v), 1) for q, v in (("50", 0.5), ("99", 0.99), ("999", 0.999))
        },
    }


def latency_line(run: Run) -> str:
    lat = run.detail.get("latency") or {}
    if not run.ok or not lat:
        why = run.error.splitlines()[0] if run.error else "no samples"
        return f"  latency {run.contender:<18} FAILED: {why}"
    r, e = lat["recv_hook_us"], lat["exchange_hook_us"]
    return (
        f"  latency {run.contender:<18} {lat['samples']:,} samples at {lat['rate'] or 0:,} msg/s: "
        f"recv→hook p50 {r['p50']} p99 {r['p99']} p999 {r['p999']} µs; "
        f"exchange→hook p50 {e['p50']} p99 {e['p99']} p999 {e['p999']} µs"
    )


def parquet_rows(data_dir: Path) -> dict[str, int]:
    """Rows per channel in a finished data directory (file footers only)."""
    import pyarrow.parquet as pq  # noqa: PLC0415 - only the main venv runs this

    rows: dict[str, int] = {}
    for f in data_dir.glob("venue=*/channel=*/symbol=*/date=*/*.parquet"):
        channel = f.parts[-4].split("=", 1)[1]
        rows[channel] = rows.get(channel, 0) + pq.read_metadata(f).num_rows
    return rows


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def summarize(
    runs: dict[str, list[Run]],
    lat_runs: dict[str, Run],
    wl: Workload,
    info: dict[str, Any],
    args: argparse.Namespace,
    seconds: float,
) -> dict[str, Any]:
    """Medians per contender, ratios, latency and every raw run."""
    rows: dict[str, dict[str, Any]] = {}
    for name, rs in runs.items():
        good = [r for r in rs if r.ok]
        rows[name] = {
            "label": LABELS[name],
            "runs_ok": len(good),
            "runs": len(rs),
            "msgs_per_s": round(_median([r.rate for r in good])),
            "cpu_us_per_msg": round(_median([r.cpu_us for r in good]), 2),
            "peak_rss_mb": round(_median([r.rss_mb for r in good])),
            "sim_cpu": round(_median([r.sim_cpu for r in good]), 2),
            "rates": [round(r.rate) for r in good],
            "errors": [r.error for r in rs if r.error],
            "raw": [
                {
                    "ok": r.ok,
                    "msgs": r.msgs,
                    "seconds": round(r.seconds, 3),
                    "cpu_s": round(r.cpu_s, 3),
                    "rss_mb": round(r.rss_mb, 1),
                    "sim_cpu": round(r.sim_cpu, 2),
                    "detail": {k: v for k, v in r.detail.items() if k != "latency"},
                }
                for r in rs
            ],
        }
    ceiling = rows.get("ceiling", {}).get("msgs_per_s") or 0
    cf = rows.get("cryptofeed", {}).get("msgs_per_s") or 0
    for row in rows.values():
        rate = row["msgs_per_s"]
        row["x_ceiling"] = round(rate / ceiling, 2) if ceiling and rate else None
        row["x_cryptofeed"] = round(rate / cf, 2) if cf and rate else None
    for name, run in lat_runs.items():
        if name in rows:
            rows[name]["latency"] = run.detail.get("latency") or {"error": run.error}
    tls_cost = {
        plain: round(rows[tls]["cpu_us_per_msg"] - rows[plain]["cpu_us_per_msg"], 2)
        for tls, plain in TLS_PAIRS.items()
        if rows.get(tls, {}).get("runs_ok") and rows.get(plain, {}).get("runs_ok")
    }
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": info,
        "workload": {
            "frames": wl.frames,
            "symbols": len(wl.symbols),
            "bytes_per_frame": round(wl.bytes / wl.frames),
            "levels_per_diff": round(wl.levels / max(1, wl.count(("depth",))), 1),
            "mix": {"depth": 45, "aggTrade": 25, "bookTicker": 20, "markPrice": 4, "kline": 3, "ticker": 3},
            "file": wl.path.name,
        },
        "settings": {"runs": args.runs, "quick": args.quick, "latency_seconds": args.latency_seconds},
        "seconds": round(seconds),
        "contenders": rows,
        "tls_cost_us_per_msg": tls_cost,
    }


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or v == 0 else format(v, spec)


def table(summary: dict[str, Any]) -> str:
    """The markdown table (throughput, then latency) with the machine line."""
    m = summary["machine"]
    w = summary["workload"]
    lines = [
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, uvloop {m['uvloop']}, "
        f"{m['os']}; sim and contender pinned to separate cores. {summary['when']}.",
        f"Workload: {w['frames']:,} frames over {w['symbols']} symbols, {w['bytes_per_frame']} B/frame, "
        f"{w['levels_per_diff']} levels per depth diff; medians of {summary['settings']['runs']} alternating "
        "run(s) each.",
        "",
        "| contender | msgs/s | CPU µs/msg | msgs/s per busy core | peak RSS MB | x ceiling | x cryptofeed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary["contenders"].values():
        if not row["runs_ok"]:
            why = "unavailable" if any("unavailable" in e for e in row["errors"]) else "failed"
            lines.append(f"| {row['label']} | {why} | | | | | |")
            continue
        lines.append(
            f"| {row['label']} | {row['msgs_per_s']:,} | {row['cpu_us_per_msg']:.2f} "
            f"| {round(1e6 / row['cpu_us_per_msg']):,} "
            f"| {row['peak_rss_mb']:,} | {_fmt(row['x_ceiling'], '.2f')} "
            f"| {_fmt(row['x_cryptofeed'], '.2f')} |"
        )
    cost = summary.get("tls_cost_us_per_msg") or {}
    if cost:
        rows = summary["contenders"]
        parts = [
            f"{rows[plain]['label'].split(' ', 1)[0]} {us:+.2f} µs/msg "
            f"({us / rows[plain]['cpu_us_per_msg']:+.0%})"
            for plain, us in cost.items()
        ]
        lines += [
            "",
            f"TLS cost per message (CPU µs/msg over wss minus over ws, same run): {'; '.join(parts)}.",
        ]
    lat = [(n, r["label"], r["latency"]) for n, r in summary["contenders"].items() if r.get("latency")]
    if lat:
        lines += [
            "",
            "Latency at the workload's natural rate (sim `--speed 1`), µs:",
            "",
            "| contender | rate msg/s | recv→hook p50 | p99 | p999 | exchange→hook p50 | p99 | p999 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for _, label, lt in lat:
            if "recv_hook_us" not in lt:
                lines.append(f"| {label} | failed | | | | | | |")
                continue
            r, e = lt["recv_hook_us"], lt["exchange_hook_us"]
            lines.append(
                f"| {label} | {lt['rate'] or 0:,} | {r['p50']} | {r['p99']} | {r['p999']} "
                f"| {e['p50']} | {e['p99']} | {e['p999']} |"
            )
    lines += replay_lines(summary.get("replay"))
    return "\n".join(lines)


def replay_lines(doc: dict[str, Any] | None) -> list[str]:
    """The replay rows under the table (:mod:`bench.replay`), or nothing when they were skipped."""
    if doc is None:
        return []
    head = (
        f"Replay of the stored workload ({doc['frames']:,} frames as the daemon stored them), one process "
        f"on the contender core, records/s, medians (min-max) of {doc['runs']} round(s); "
        "x pyarrow read: against `pyarrow.parquet.read_table` of the same files in the same run:"
    )
    if "error" in doc:
        return ["", head, "", f"failed: {doc['error']}"]
    from bench.replay import rows_md  # noqa: PLC0415 - bench.replay imports pyarrow

    return ["", head, "", *rows_md(doc["rows"])]


def update_readme(
    path: Path, table_md: str, summary: dict[str, Any], *, begin: str = BEGIN, end: str = END
) -> None:
    """Replace the text between the markers ``begin`` and ``end`` of ``path`` with ``table_md``
    (bench/README.md's "Latest" section gets the markers appended when it has none)."""
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n## Latest\n\n{begin}\n{end}\n"
    if begin not in text or end not in text:
        if begin != BEGIN:
            return
        text += f"\n## Latest\n\n{begin}\n{end}\n"
    block = (
        f"{begin}\n{table_md}\n\n(`python -m bench.run{' --quick' if summary['settings']['quick'] else ''}`, "
        f"{summary['seconds']} s; raw numbers in `bench/results/latest.json`.)\n{end}"
    )
    path.write_text(
        re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.DOTALL)
    )
