"""``python -m bench.run`` (``make bench``): ingestd against the receive ceiling and cryptofeed.

One command, one table. Steps:

1. the workload (:mod:`bench.workload`) is generated once into ``bench/.cache`` and reused;
2. the sim (``ingestd.sim``) replays it at ``--speed 0`` on one core, and every contender runs on
   the other core, one after the other, alternating their order each round, ``--runs`` rounds;
3. then the sim replays at ``--speed 1`` (the workload's natural 20 k msg/s) and each contender
   that has a hook runs once with latency sampling;
4. replay throughput (:mod:`bench.replay`): a 300,000-frame workload as the daemon stored it,
   read back by ``ingestd.replay`` (with and without books, and through a hook) against
   ``pyarrow.parquet.read_table`` of the same files, in this process pinned to the contender
   core, ``--runs`` rounds (``--no-replay`` skips it);
5. medians are printed as one table, written to ``bench/results/latest.json`` and into the
   "Latest" section of ``bench/README.md``.

Contenders: ``ceiling`` (bare aiohttp + orjson), ``ingestd`` (end to end, storage on, all six
channels, counting hook), ``ingestd-nostorage`` (``--no-storage``, hook only), ``ingestd-cf``
(storage on, only cryptofeed's channels: the same bytes cryptofeed gets) and ``cryptofeed``
(BinanceFutures L2 book + trades, count-only callbacks, its own virtualenv).

``ceiling-wss`` and ``ingestd-nostorage-wss`` are ``ceiling`` and ``ingestd-nostorage`` over
``wss://`` (and ``https://``): a second sim serves the same workload with a throwaway certificate
(:mod:`ingestd.sim.certs`, made fresh in ``bench/.cache/tls``) that the contender verifies, the
ceiling through ``SSL_CERT_FILE``, ingestd through ``--ca-file``. Their CPU µs/msg minus their
plain twin's, in the same run, is the TLS cost per message.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench import procs, replay, report, workload
from ingestd.sim.certs import make_certs

CACHE: Final = procs.ROOT / "bench" / ".cache"
RESULTS: Final = procs.ROOT / "bench" / "results"
ALL_KINDS: Final = tuple(workload.STREAM_SUFFIX)
CF_KINDS: Final = ("depth", "aggTrade")
CONTENDERS: Final = (
    "ceiling", "ceiling-picows", "ceiling-wss", "ingestd", "ingestd-nostorage", "ingestd-nostorage-wss",
    "ingestd-cf", "cryptofeed", "ingestd-wproc",
)  # fmt: skip
TLS_CONTENDERS: Final = ("ceiling-wss", "ingestd-nostorage-wss")
"""Contenders that read the TLS sim (``wss://``, ``https://``)."""
SIDE_VENVS: Final = {"cryptofeed": ("cryptofeed", "uvloop"), "ceiling-picows": ("picows", "orjson", "uvloop")}
"""Contenders that run in their own virtualenv under bench/.cache, and what pip installs there."""

INGESTD_ENV: Final = {
    # No drops anywhere: the counting hook waits like storage does (default: drop_oldest).
    "INGESTD_HOOKS__POLICY": "block",
    # Books sync within ~3 s instead of a minute: 50 snapshots at the sim's full REST budget.
    "INGESTD_SNAPSHOTS__WEIGHT_HEADROOM": "1",
    # The queue in front of the Parquet writer holds 20 k records instead of 200 k: the rate at
    # the hook is then the rate at which records reach storage (200 k would be a ~10 s head
    # start in a 20 s run), and 200 k records of 50-level diffs are ~1 GB of RAM.
    "INGESTD_STORAGE__QUEUE_SIZE": "20000",
}
SNAPSHOT_LIMIT: Final = "50"


@dataclass
class Run:
    """One contender run, as measured."""

    contender: str
    ok: bool
    msgs: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    rss_mb: float = 0.0
    sim_cpu: float = 0.0
    """Share of a core the sim used during the run (near 1.0: the sim was the bottleneck)."""
    detail: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def rate(self) -> float:
        return self.msgs / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.msgs * 1e6 if self.msgs else 0.0


@dataclass
class Ctx:
    """Everything a contender needs to run."""

    wl: workload.Workload
    sim: procs.Sim
    cpu: int
    work: Path
    side: dict[str, Path | None]
    """Interpreters of the side virtualenvs (``cryptofeed``, ``picows``); ``None``: unavailable."""
    max_seconds: float
    latency: bool = False
    latency_seconds: float = 0.0
    tls_sim: procs.Sim | None = None
    """The same workload served over TLS (only when a TLS contender runs)."""
    ca: Path | None = None
    """The CA that signed ``tls_sim``'s certificate."""

    def sim_for(self, name: str) -> procs.Sim:
        """The sim contender ``name`` reads: the TLS one for the ``-wss`` contenders."""
        if name in TLS_CONTENDERS:
            assert self.tls_sim is not None, f"{name} needs the TLS sim"
            return self.tls_sim
        return self.sim


def _result(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _wait(proc: Any, out: Path, deadline: float, progress: Callable[[], None] | None = None) -> bool:
    """Wait for the process to exit (its result written) or the deadline."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return True
        if progress is not None:
            progress()
        time.sleep(0.05)
    return proc.poll() is not None and out.exists()


def _finish(name: str, doc: dict[str, Any] | None, sim_cpu: float, log: Path) -> Run:
    """Rate over first → last message handled; CPU over first message → the process's end, so
    work left at the end (the final Parquet files) is charged to the messages that caused it."""
    if doc is None or not doc.get("count"):
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        return Run(name, ok=False, error=f"no result; log tail:\n{tail}")
    n = int(doc["count"])
    seconds = (int(doc["last_ns"]) - int(doc["first_ns"])) / 1e9
    cpu = (int(doc["end_cpu_ns"]) - int(doc["first_cpu_ns"])) / 1e9
    doc["flush_s"] = round((int(doc["end_ns"]) - int(doc["last_ns"])) / 1e9, 2)
    return Run(
        name, ok=True, msgs=n, seconds=seconds, cpu_s=cpu, rss_mb=int(doc["maxrss_kb"]) / 1024,
        sim_cpu=sim_cpu / seconds if seconds else 0.0, detail=doc,
    )  # fmt: skip


def run_ceiling(ctx: Ctx, name: str = "ceiling") -> Run:
    module, py = "bench.contenders.ceiling", Path(sys.executable)
    sim = ctx.sim_for(name)
    # The ceiling verifies the TLS sim with aiohttp's default context, which reads SSL_CERT_FILE.
    env = {"SSL_CERT_FILE": str(ctx.ca)} if name in TLS_CONTENDERS else None
    if name == "ceiling-picows":
        module, side = "bench.contenders.picows_ceiling", ctx.side.get("picows")
        if side is None:
            return Run(name, ok=False, error="unavailable")
        py = side
    out, log = ctx.work / f"{name}.json", ctx.work / f"{name}.log"
    streams = ctx.work / "streams.json"
    streams.write_text(json.dumps(ctx.wl.stream_names()))
    argv = [str(py), "-m", module, "--ws", sim.ws, "--streams", str(streams), "--expect",
            str(ctx.wl.frames), "--out", str(out), "--max-seconds", str(ctx.max_seconds)]  # fmt: skip
    sim0 = sim.cpu_s()
    proc = procs.spawn(argv, cpu=ctx.cpu, env=env, log=log)
    _wait(proc, out, time.monotonic() + ctx.max_seconds + 30)
    procs.stop(proc)
    return _finish(name, _result(out), sim.cpu_s() - sim0, log)


def run_ingestd(ctx: Ctx, name: str) -> Run:
    storage = name not in ("ingestd-nostorage", "ingestd-nostorage-wss")
    wproc = name == "ingestd-wproc"
    kinds = CF_KINDS if name == "ingestd-cf" else ALL_KINDS
    sim = ctx.sim_for(name)
    out, log = ctx.work / f"{name}.json", ctx.work / f"{name}.log"
    data = ctx.work / f"data-{name}"
    shutil.rmtree(data, ignore_errors=True)
    port = procs.free_port()
    channels = ",".join(workload.CHANNEL[k] for k in kinds)
    argv = [sys.executable, "-m", "ingestd", "--rest-url", sim.rest, "--ws-url", sim.ws,
            "--channels", channels, "--hook", "bench.contenders.hook:on_record", "--health-port", str(port),
            "--log-level", "WARNING", "--depth-limit", SNAPSHOT_LIMIT]  # fmt: skip
    argv += ["--data-dir", str(data)] if storage else ["--no-storage"]
    if name in TLS_CONTENDERS:
        argv += ["--ca-file", str(ctx.ca)]
    expect = ctx.wl.count(kinds)
    env = {**INGESTD_ENV, "BENCH_OUT": str(out), "BENCH_EXPECT": "0" if ctx.latency else str(expect)}
    if ctx.latency:
        env["BENCH_LATENCY"] = "1"
    if wproc:
        env["INGESTD_STORAGE__WRITER"] = "process"
    sim0 = sim.cpu_s()
    started = time.monotonic()
    proc = procs.spawn(argv, cpu=ctx.cpu, env=env, log=log)
    status: dict[str, Any] = {}
    moved: set[int] = set()
    last_poll = [0.0, 0.0, -1.0]  # poll time, progress time, frames

    def progress() -> None:
        now = time.monotonic()
        if now - last_poll[0] < 1.0:
            return
        last_poll[0] = now
        if wproc:
            # The writer child inherits the daemon's core; on this 2-core rig the only other one
            # is the sim's (the child's CPU is still counted in the daemon's µs/msg).
            moved.update(procs.move_children(proc.pid, procs.cpus()[0], moved))
        doc = procs.get_json(f"http://127.0.0.1:{port}/status")
        if doc is None:
            return
        status.clear()
        status.update(doc)
        frames = float(doc.get("streams", {}).get("frames", 0))
        if frames != last_poll[2]:
            last_poll[1], last_poll[2] = now, frames
        elif frames and now - last_poll[1] > 10 and not ctx.latency:
            procs.stop(proc, timeout=60)  # no progress for 10 s: stop with what it has

    # A run ends when the hook has seen every record (it stops the daemon itself) or at the time
    # cap (SIGTERM from here: an orderly shutdown, Parquet files closed, then the hook's result).
    limit = ctx.latency_seconds if ctx.latency else ctx.max_seconds
    while time.monotonic() < started + limit and proc.poll() is None:
        progress()
        time.sleep(0.05)
    capped = proc.poll() is None
    procs.stop(proc, timeout=120)
    run = _finish(name, _result(out), sim.cpu_s() - sim0, log)
    run.detail["capped"] = capped
    if not capped and run.ok and run.msgs < expect:
        run.error = f"only {run.msgs} of {expect} records reached the hook"
    run.detail["status"] = _status_summary(status)
    if storage and run.ok and not ctx.latency:
        run.detail["parquet"] = report.parquet_rows(data)
    shutil.rmtree(data, ignore_errors=True)
    return run


def _status_summary(doc: dict[str, Any]) -> dict[str, Any]:
    if not doc:
        return {}
    streams = doc.get("streams", {})
    consumers = doc.get("bus", {}).get("consumers", {})
    return {
        "frames": streams.get("frames"),
        "reconnects": streams.get("reconnects"),
        "duplicates": streams.get("duplicates"),
        "parse_errors": streams.get("parse_errors"),
        "dropped": {k: v.get("dropped") for k, v in consumers.items()},
        "books": {k: doc.get("books", {}).get("totals", {}).get(k) for k in ("synced", "resyncs", "gaps")},
    }


def run_cryptofeed(ctx: Ctx) -> Run:
    py = ctx.side.get("cryptofeed")
    if py is None:
        return Run("cryptofeed", ok=False, error="unavailable")
    out, log = ctx.work / "cryptofeed.json", ctx.work / "cryptofeed.log"
    expect = ctx.wl.count(CF_KINDS) + len(ctx.wl.symbols)  # + one snapshot callback per book
    limit = ctx.latency_seconds if ctx.latency else ctx.max_seconds
    argv = [str(py), "-m", "bench.contenders.cryptofeed_feed", "--ws", ctx.sim.ws,
            "--rest", ctx.sim.rest, "--symbols", ",".join(ctx.wl.symbols),
            "--expect", str(10**12 if ctx.latency else expect), "--out", str(out),
            "--log", str(ctx.work / "cryptofeed-feedhandler.log"), "--max-seconds", str(limit)]  # fmt: skip
    if ctx.latency:
        argv.append("--latency")
    sim0 = ctx.sim.cpu_s()
    proc = procs.spawn(argv, cpu=ctx.cpu, log=log)
    _wait(proc, out, time.monotonic() + limit + 60)
    procs.stop(proc)
    return _finish("cryptofeed", _result(out), ctx.sim.cpu_s() - sim0, log)


RUNNERS: Final[dict[str, Callable[[Ctx], Run]]] = {
    "ceiling": run_ceiling,
    "ceiling-picows": lambda ctx: run_ceiling(ctx, "ceiling-picows"),
    "ceiling-wss": lambda ctx: run_ceiling(ctx, "ceiling-wss"),
    "ingestd": lambda ctx: run_ingestd(ctx, "ingestd"),
    "ingestd-nostorage": lambda ctx: run_ingestd(ctx, "ingestd-nostorage"),
    "ingestd-nostorage-wss": lambda ctx: run_ingestd(ctx, "ingestd-nostorage-wss"),
    "ingestd-cf": lambda ctx: run_ingestd(ctx, "ingestd-cf"),
    "ingestd-wproc": lambda ctx: run_ingestd(ctx, "ingestd-wproc"),
    "cryptofeed": run_cryptofeed,
}
LATENCY: Final = ("ingestd", "ingestd-wproc", "ingestd-nostorage", "cryptofeed")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a ~1 minute smoke run (smaller capture, 1 round)")
    p.add_argument("--runs", type=int, help="rounds of throughput runs (default 3; --quick 1)")
    p.add_argument("--frames", type=int, help="frames in the workload (default 1,000,000; --quick 300,000)")
    p.add_argument("--symbols", type=int, default=50)
    p.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma list of {','.join(CONTENDERS)}")
    p.add_argument("--latency-seconds", type=float, help="per latency run (default 15; --quick 6)")
    p.add_argument("--max-seconds", type=float, help="cap per throughput run (default 20; --quick 10)")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--no-replay", action="store_true", help="skip the replay throughput rows")
    p.add_argument(
        "--replay-frames",
        type=int,
        default=300_000,
        help="frames of the workload stored for the replay rows (default 300,000)",
    )
    p.add_argument(
        "--no-readme",
        action="store_true",
        help="do not rewrite bench/README.md nor the README's Performance quote",
    )
    args = p.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.frames = args.frames or (300_000 if args.quick else 1_000_000)
    args.latency_seconds = args.latency_seconds or (6.0 if args.quick else 15.0)
    args.max_seconds = args.max_seconds or (10.0 if args.quick else 20.0)
    bad = [c for c in args.contenders.split(",") if c not in CONTENDERS]
    if bad:
        p.error(f"unknown contender(s) {', '.join(bad)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 when every contender produced a result."""
    args = _parse(argv)
    names = [c for c in CONTENDERS if c in args.contenders.split(",")]
    work = CACHE / "runs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sim_cpu, client_cpu = procs.cpus()
    info = procs.machine()
    print(f"machine: {info['nproc']} x {info['cpu']}, Python {info['python']}, uvloop {info['uvloop']}")
    t0 = time.monotonic()
    wl = workload.ensure(CACHE, frames=args.frames, symbols=args.symbols)
    print(f"workload: {wl.frames:,} frames, {len(wl.symbols)} symbols, {wl.bytes / wl.frames:.0f} B/frame, "
          f"{wl.levels / wl.count(('depth',)):.1f} levels/diff ({time.monotonic() - t0:.0f} s)")  # fmt: skip
    side: dict[str, Path | None] = {}
    for name, packages in SIDE_VENVS.items():
        if name in names:
            key = packages[0]
            py, note = procs.side_python(CACHE, key, packages, work / f"{key}-install.log")
            side[key] = py
            info[key] = note if py else f"unavailable: {note}"
            print(f"{key}: {note if py else 'UNAVAILABLE: ' + note}")
    runs: dict[str, list[Run]] = {n: [] for n in names}
    lat_runs: dict[str, Run] = {}
    sim = procs.start_sim(wl.path, speed=0, cpu=sim_cpu, log=work / "sim-speed0.log")
    tls_sim: procs.Sim | None = None
    try:
        ctx = Ctx(wl, sim, client_cpu, work, side, args.max_seconds)
        if any(n in TLS_CONTENDERS for n in names):
            # Same workload, same core, over TLS; idle while the plain contenders run.
            certs = make_certs(CACHE / "tls")
            tls_sim = procs.start_sim(
                wl.path, speed=0, cpu=sim_cpu, log=work / "sim-tls-speed0.log", tls=(certs.cert, certs.key)
            )
            ctx.tls_sim, ctx.ca = tls_sim, certs.ca
        for r in range(args.runs):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                run = RUNNERS[name](ctx)
                runs[name].append(run)
                print(report.progress_line(r + 1, run))
                time.sleep(1.0)
    finally:
        sim.close()
        if tls_sim is not None:
            tls_sim.close()
    if not args.no_latency:
        lat_names = [n for n in LATENCY if n in names]
        sim = procs.start_sim(wl.path, speed=1, cpu=sim_cpu, log=work / "sim-speed1.log")
        try:
            ctx = Ctx(wl, sim, client_cpu, work, side, args.max_seconds, True, args.latency_seconds)
            for name in lat_names:
                run = RUNNERS[name](ctx)
                run.detail["latency"] = report.latency(work / f"{name}.json", run.detail)
                lat_runs[name] = run
                print(report.latency_line(run))
                time.sleep(1.0)
        finally:
            sim.close()
    replay_doc: dict[str, Any] | None = None
    if not args.no_replay:
        replay_doc = run_replay(args.replay_frames, args.runs, client_cpu)
    summary = report.summarize(runs, lat_runs, wl, info, args, time.monotonic() - t0)
    if replay_doc is not None:
        summary["replay"] = replay_doc
    table = report.table(summary)
    print()
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(summary, indent=1, default=str))
    if not args.no_readme:
        report.update_readme(procs.ROOT / "bench" / "README.md", table, summary)
        if not args.quick:
            readme = procs.ROOT / "README.md"
            report.update_readme(readme, table, summary, begin=report.PERF_BEGIN, end=report.PERF_END)
    print(f"\nresults: {RESULTS / 'latest.json'}")
    # A side contender that could not be installed is reported as unavailable, not a failure.
    failed = [n for n, rs in runs.items() if not any(r.ok for r in rs) and rs[0].error != "unavailable"]
    return 1 if failed or (replay_doc is not None and "error" in replay_doc) else 0


def run_replay(frames: int, runs: int, cpu: int) -> dict[str, Any]:
    """The replay rows (:mod:`bench.replay`) on the stored ``frames``-frame workload, or the error."""
    try:
        rwl, data = replay.prepare(CACHE, frames)
        print(f"replay throughput on {data} ({runs} round(s), pinned to CPU {cpu}):")
        rows = replay.measure(data, runs, cpu=cpu)
    except Exception as exc:  # the main table is still worth printing
        print(f"  replay FAILED: {exc!r}")
        return {"frames": frames, "runs": runs, "error": repr(exc)}
    return {"frames": rwl.frames, "symbols": len(rwl.symbols), "runs": runs, "rows": rows}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


if __name__ == "__main__":
    sys.exit(main())
