"""Hostile soak: ingestd against a sim that misbehaves on a schedule, storage checked record by record.

    python -m bench.soak_hostile --minutes 10     # make soak-hostile
    python -m bench.soak_hostile --minutes 2      # while developing

The sim runs in this process (``ingestd.sim.SimVenue``: the bundled real USDⓈ-M BTCUSDT capture,
looped with fresh ids per pass, ``resume="continue"``, aggTrades derived from its trades), so the
check knows exactly what the venue sent: per stream, the first N frames of the looped capture
(N = the sim's own count), plus every copy of a real frame it was told to resend. The daemon runs
with storage, books, the trade backfill and a slow hook. Every cycle (``--cycle-s``, default 60 s)
the venue:

* sends malformed frames (bad JSON, wrong types, unknown streams) and copies of recent real
  frames with a NaN or infinite price or quantity (they must be skipped, not stored: a stored copy
  would also make its real twin a duplicate and drop it);
* resends a real frame from about 1,000 frames back on the public streams (an id regression: the
  daemon must store it again, behind an ``id_reset`` gap record);
* drops the public connection (TCP abort, refused for 2 s) and, later, the market connection;

and once per run: answers a depth snapshot with HTTP 418 (a 20 s ban) just before a public drop,
so the book waits for the ban to end; and fails every Parquet write with ENOSPC for 30 s.

At the end the venue is paused, the daemon reads what is in flight and stops, and storage is read
back: per stream, every stored row equals the venue's payload field by field (REST-filled trades:
their REST fields), no record is stored twice except a resent one, and every record the venue
sent that is missing lies in a run the gap log accounts for (a ``disconnect`` between its stored
neighbours for book data; an ``unfilled`` id range for trades). Exit 0 when every
check passes. ``--json FILE`` writes the figures (docs/soak.md quotes them).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import errno
import json
import math
import random
import shutil
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ingestd.app import Daemon
from ingestd.config import load_settings
from ingestd.consumers.parquet import ParquetWriter
from ingestd.consumers.schema import open_dataset
from ingestd.loop import loop_factory, tune_gc
from ingestd.observe.logging import setup_logging
from ingestd.records import Record
from ingestd.sim import SimVenue
from ingestd.sim.captures import Timeline
from ingestd.sim.shift import LoopShift
from ingestd.sim.venue import BUNDLED_CAPTURE

MS = 1_000_000
CHANNEL = {"depth": "depth_diff", "bookTicker": "book_ticker", "aggTrade": "agg_trade"}
"""Stream kind of the capture → the channel ingestd stores it in (the run's channels)."""
KEY = {"depth_diff": "u", "book_ticker": "u", "agg_trade": "a"}
ROW_KEY = {"depth_diff": "final_update_id", "book_ticker": "update_id", "agg_trade": "agg_id"}
PUBLIC, MARKET = "/public", "/market"
PROBLEMS = ("mismatched", "duplicated", "extra", "unaccounted")

MALFORMED = (
    b'{"stream":"btcusdt@bookTicker","data":{"u":"not a number"}}',
    b'{"stream":"btcusdt@depth@0ms","data":{"e":"depthUpdate","E":1}}',
    b'{"stream":"btcusdt@bookTicker","data":',
    b'{"stream":"nosuch@bookTicker","data":{}}',
    b"[1,2,3]",
)


# --------------------------------------------------------------------------- what the venue sent


@dataclass
class Stream:
    """One capture stream as the venue sent it: pass after pass of its frames."""

    name: str
    channel: str
    native: str
    route: str
    positions: list[int]
    """Timeline indices of its frames, in order (one pass)."""
    keys: array[int] = field(default_factory=lambda: array("q"))
    """Key of each frame sent, in order (n = pass * len(positions) + i)."""
    resent: Counter[int] = field(default_factory=Counter)
    """n → extra copies of frame n the venue was told to send (id regressions)."""

    def frame(self, tl: Timeline, shift: LoopShift, n: int) -> bytes:
        k, i = divmod(n, len(self.positions))
        raw = tl.frames[self.positions[i]]
        return shift.frame(raw, k) if k else raw

    def extend(self, tl: Timeline, shift: LoopShift, sent: int) -> None:
        key = KEY[self.channel]
        for n in range(len(self.keys), sent):
            self.keys.append(int(orjson.loads(self.frame(tl, shift, n))["data"][key]))

    def index(self, key: int) -> int | None:
        """n of the frame with ``key`` (keys grow along a stream, pass after pass)."""
        n = bisect.bisect_left(self.keys, key)
        return n if n < len(self.keys) and self.keys[n] == key else None


def streams_of(tl: Timeline) -> dict[str, Stream]:
    out: dict[str, Stream] = {}
    for s in tl.streams:
        channel = CHANNEL.get(s.kind.split("@")[0])
        if channel is None or s.symbol is None:
            continue
        route = PUBLIC if channel in ("depth_diff", "book_ticker") else MARKET
        out[s.name] = Stream(s.name, channel, s.symbol.upper(), route, [])
    for i, sid in enumerate(tl.sid):
        st = out.get(tl.streams[sid].name)
        if st is not None:
            st.positions.append(i)
    return out


# --------------------------------------------------------------------------- faults


def _broken(frame: bytes, bad: str) -> bytes:
    """``frame`` with its first price (or a level's price) replaced by ``bad``."""
    msg = orjson.loads(frame)
    data = msg["data"]
    if data.get("b"):
        if isinstance(data["b"], list):
            data["b"][0][0] = bad
        else:
            data["b"] = bad
    elif "p" in data:
        data["p"] = bad
    elif data.get("a"):
        data["a"][0][1] = bad
    return orjson.dumps(msg)


class Hostile:
    """The fault schedule, and what it did."""

    def __init__(self, sim: SimVenue, streams: dict[str, Stream], shift: LoopShift, seed: int) -> None:
        self.sim = sim
        self.streams = streams
        self.shift = shift
        self.rng = random.Random(seed)
        self.disk_full = False
        self.counts: Counter[str] = Counter()
        self.injected: dict[int, list[tuple[str, int] | None]] = {}
        """Connection id → what was injected on it, in order: ``(stream, n)`` for a resent real
        frame, ``None`` for a bad one. The sim sends a connection's injections in order, so the
        first ``ConnectionStats.injected`` of them reached the socket (the rest died with it)."""

    def _sent(self) -> dict[str, int]:
        return self.sim.stats().frames_sent

    def _inject(self, route: str, frames: list[tuple[bytes, tuple[str, int] | None]]) -> None:
        for c in self.sim.stats().connections:
            if (
                c.open
                and c.route == route
                and self.sim.faults.inject([f for f, _ in frames], connection=c.id)
            ):
                self.injected.setdefault(c.id, []).extend(tag for _, tag in frames)

    def delivered(self) -> tuple[int, Counter[tuple[str, int]]]:
        """(bad frames the sim sent, resent real frames it sent) after the run."""
        bad = 0
        resent: Counter[tuple[str, int]] = Counter()
        for c in self.sim.stats().connections:
            for tag in self.injected.get(c.id, [])[: c.injected]:
                if tag is None:
                    bad += 1
                else:
                    resent[tag] += 1
        return bad, resent

    def garbage(self) -> None:
        tl = self.sim.timeline
        assert tl is not None
        sent = self._sent()
        for route in (PUBLIC, MARKET):
            frames: list[tuple[bytes, tuple[str, int] | None]] = [(f, None) for f in MALFORMED]
            for st in self.streams.values():
                # A frame not sent yet: had its broken copy been taken, the real one would be
                # dropped as its duplicate and storage would differ from what the venue sent.
                n = sent.get(st.name, 0) + 300
                if st.route == route and sent.get(st.name, 0) > 0:
                    real = st.frame(tl, self.shift, n)
                    frames.append((_broken(real, self.rng.choice(("NaN", "inf", "-Infinity"))), None))
            self._inject(route, frames)

    def regression(self) -> None:
        """Resend a real frame from ~1,000 back on each public stream (ids go back)."""
        tl = self.sim.timeline
        assert tl is not None
        sent = self._sent()
        for st in self.streams.values():
            n = sent.get(st.name, 0) - 1000
            if st.route == PUBLIC and n >= 0:
                self._inject(PUBLIC, [(st.frame(tl, self.shift, n), (st.name, n))])

    def drop(self, route: str) -> None:
        if self.sim.faults.drop(2.0, route=route):
            self.counts[f"drops {route}"] += 1

    def ban(self) -> None:
        self.sim.faults.rest_error("/fapi/v1/depth", 418, retry_after=20.0)
        self.counts["418 bans"] += 1


def full_disk(state: Hostile) -> None:
    """Every Parquet write fails with ENOSPC while ``state.disk_full`` (the fault-matrix way)."""
    real = ParquetWriter._write_chunk

    def write(self: ParquetWriter, chunk: Any) -> Any:
        if state.disk_full:
            raise OSError(errno.ENOSPC, "No space left on device", str(chunk.directory))
        return real(self, chunk)

    ParquetWriter._write_chunk = write  # type: ignore[method-assign]


async def schedule(h: Hostile, cycle_s: float, duration_s: float) -> None:
    started = time.monotonic()
    ban_at = min(120.0, duration_s * 0.3)
    disk_at = min(240.0, duration_s * 0.55)
    done_ban = done_disk = False
    c = 0
    while time.monotonic() - started < duration_s - 15:
        base = c * cycle_s
        for at, act in ((0.10, h.garbage), (0.25, h.regression), (0.45, lambda: h.drop(PUBLIC)),
                        (0.60, h.garbage), (0.75, lambda: h.drop(MARKET))):  # fmt: skip
            await _until(started + base + at * cycle_s)
            if time.monotonic() - started >= duration_s - 15:
                return
            act()
            t = time.monotonic() - started
            if not done_ban and t >= ban_at:
                done_ban = True
                h.ban()
                await asyncio.sleep(0.5)
                h.drop(PUBLIC)  # the book needs a snapshot now: it waits out the ban
            if not done_disk and t >= disk_at:
                done_disk = True
                h.disk_full = True
                h.counts["full disk s"] += 30
                await asyncio.sleep(30.0)
                h.disk_full = False
        c += 1


async def _until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


# --------------------------------------------------------------------------- the check


def expected(channel: str, d: dict[str, Any]) -> dict[str, Any]:
    """The stored columns a payload must produce."""
    if channel == "depth_diff":
        return {"exchange_ts": d["E"] * MS, "transaction_ts": d["T"] * MS, "first_update_id": d["U"],
                "final_update_id": d["u"], "prev_final_update_id": d["pu"],
                "bids": [(float(p), float(q)) for p, q in d["b"]],
                "asks": [(float(p), float(q)) for p, q in d["a"]]}  # fmt: skip
    if channel == "book_ticker":
        return {"exchange_ts": d["E"] * MS, "update_id": d["u"], "bid_price": float(d["b"]),
                "bid_qty": float(d["B"]), "ask_price": float(d["a"]), "ask_qty": float(d["A"])}  # fmt: skip
    return {"transaction_ts": d["T"] * MS, "agg_id": d["a"], "first_trade_id": d["f"],
            "last_trade_id": d["l"], "price": float(d["p"]), "qty": float(d["q"]),
            "is_buyer_maker": d["m"]}  # fmt: skip


def stored_row(row: dict[str, Any], want: dict[str, Any]) -> dict[str, Any]:
    got = {k: row[k] for k in want}
    for side in ("bids", "asks"):
        if side in got:
            got[side] = [(lv["price"], lv["qty"]) for lv in got[side]]
    return got


def rows(data_dir: Path, channel: str) -> Iterator[dict[str, Any]]:
    if not any(data_dir.glob(f"venue=*/channel={channel}")):
        return
    for batch in open_dataset(data_dir, channel).to_batches():
        yield from batch.to_pylist()


@dataclass
class Verdict:
    stored: Counter[str] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)
    missing: Counter[str] = field(default_factory=Counter)
    unaccounted: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    rest_filled: int = 0


def check(data_dir: Path, tl: Timeline, shift: LoopShift, streams: dict[str, Stream]) -> Verdict:
    v = Verdict()
    gaps = list(rows(data_dir, "gap"))
    for st in streams.values():
        v.sent[st.channel] += len(st.keys) + sum(st.resent.values())
        seen: Counter[int] = Counter()
        recv: dict[int, int] = {}
        for row in rows(data_dir, st.channel):
            if row["native"] != st.native:
                continue
            v.stored[st.channel] += 1
            key = int(row[ROW_KEY[st.channel]])
            n = st.index(key)
            if n is None:
                v.extra.append(f"{st.name} {key}")
                continue
            seen[n] += 1
            recv[n] = int(row["recv_ts"])
            want = expected(st.channel, orjson.loads(st.frame(tl, shift, n))["data"])
            if row.get("source") == "rest":
                v.rest_filled += 1
                want.pop("exchange_ts", None)
            if stored_row(row, want) != want:
                v.mismatched.append(f"{st.name} {key}")
        for n, c in seen.items():
            if c > 1 + st.resent.get(n, 0):
                v.duplicated.append(f"{st.name} {st.keys[n]} x{c}")
        missing = [n for n in range(len(st.keys)) if n not in seen]
        v.missing[st.channel] += len(missing)
        for run in _runs(missing):
            if not _accounted(st, run, recv, gaps):
                v.unaccounted.append(f"{st.name} {len(run)} frame(s) from key {st.keys[run[0]]}")
    return v


def _runs(ns: list[int]) -> Iterator[list[int]]:
    run: list[int] = []
    for n in ns:
        if run and n != run[-1] + 1:
            yield run
            run = []
        run.append(n)
    if run:
        yield run


def _accounted(st: Stream, run: list[int], recv: dict[int, int], gaps: list[dict[str, Any]]) -> bool:
    lo = recv.get(run[0] - 1, 0)
    hi = recv.get(run[-1] + 1, 2**63)
    first, last = st.keys[run[0]], st.keys[run[-1]]
    for g in gaps:
        if g["native"] != st.native:
            continue
        if st.channel == "agg_trade":
            ids = g.get("first_update_id"), g.get("final_update_id")
            if g["kind"] == "unfilled" and None not in ids and ids[0] <= first and last <= ids[1]:
                return True
        elif g["kind"] == "disconnect" and lo <= g["recv_ts"] <= hi:
            return True
    return False


# --------------------------------------------------------------------------- the run


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return math.nan


async def run(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    duration = args.minutes * 60.0
    async with SimVenue(
        [BUNDLED_CAPTURE], speed=args.speed, loop=True, loop_shift=True, resume="continue"
    ) as sim:
        tl = sim.timeline
        assert tl is not None
        snaps = [s.body for lst in tl.snapshots.values() for s in lst]
        shift = LoopShift.measure(tl.frames, snaps, tl.ts[-1] - tl.ts[0])  # as the sim measures it
        streams = streams_of(tl)
        h = Hostile(sim, streams, shift, args.seed)
        full_disk(h)
        settings = load_settings(environ={}, cli={
            "rest_url": sim.rest_url, "ws_url": sim.ws_url, "symbols": "BTCUSDT",
            "storage": {"data_dir": str(data_dir), "rotate_seconds": 5},
            "console": {"enabled": False}, "health": {"port": 0}, "shutdown_timeout_s": 120,
            "streams": {"backoff_initial_s": 0.2, "backoff_max_s": 2.0},
            "hooks": {"timeout_s": 0.05, "queue_size": 2000, "policy": "drop_oldest"},
        })  # fmt: skip
        daemon = Daemon(settings)
        slow_calls = Counter[str]()

        async def slow(record: Record) -> None:
            slow_calls[record.channel] += 1
            await asyncio.sleep(0.2 if slow_calls.total() % 500 == 0 else 0.002)  # some time out

        daemon.add_hook(slow, name="slow")
        started = time.monotonic()
        task = asyncio.create_task(daemon.run(), name="hostile:daemon")
        peak_rss = 0.0
        faults = asyncio.create_task(schedule(h, args.cycle_s, duration))
        while time.monotonic() - started < duration and not task.done():
            await asyncio.sleep(1.0)
            peak_rss = max(peak_rss, rss_mb())
        faults.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await faults
        if task.done():
            raise RuntimeError(f"the daemon stopped early: {task.result()}")
        h.disk_full = False
        sim.faults.stall()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            sent = sum(sim.stats().frames_sent.values()) + sim.stats().injected
            frames = daemon.streams.stats()["frames"] if daemon.streams is not None else 0
            if frames >= sent:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(3.0)  # backfill requests in flight finish
        sim_stats = sim.stats()
        bad_sent, resent = h.delivered()
        stats = daemon.stats()
        daemon.request_stop("hostile soak done")
        code = await asyncio.wait_for(task, 240)
    h.counts["malformed_or_non_finite"] = bad_sent
    h.counts["id_regressions"] = resent.total()
    for (name, n), c in resent.items():
        streams[name].resent[n] += c
    for st in streams.values():
        st.extend(tl, shift, sim_stats.frames_sent.get(st.name, 0))
    verdict = check(data_dir, tl, shift, streams)
    gap_kinds = Counter(g["kind"] for g in rows(data_dir, "gap"))
    pq = stats["bus"]["consumers"].get("parquet", {})
    hook = stats["bus"]["consumers"].get("hook:slow#0", {})
    injected_bad = h.counts["malformed_or_non_finite"]
    checks = {
        "exit code 0": code == 0,
        "every stored row equals what the venue sent": not verdict.mismatched and not verdict.extra,
        "no record stored twice (but the resent ones)": not verdict.duplicated,
        "every record missing is accounted for by the gap log": not verdict.unaccounted,
        "malformed and non-finite frames counted, never stored": stats["streams"]["parse_errors"]
        == injected_bad,
        "nothing dropped by storage (full disk kept in memory)": pq.get("dropped", 0) == 0
        and pq.get("dropped_rows", 0) == 0,
        "the ban was met and waited out": stats["rest"].get("status_418", 0) >= 1,
        "each id regression stored behind an id_reset gap": gap_kinds.get("id_reset", 0)
        == h.counts["id_regressions"]
        > 0,
    }
    return {
        "settings": {
            "minutes": args.minutes,
            "speed": args.speed,
            "cycle_s": args.cycle_s,
            "seed": args.seed,
        },
        "faults": dict(h.counts),
        "sent": dict(verdict.sent),
        "stored": dict(verdict.stored),
        "missing": dict(verdict.missing),
        "rest_filled": verdict.rest_filled,
        "gap_kinds": dict(gap_kinds),
        "parse_errors": stats["streams"]["parse_errors"],
        "duplicates_dropped": stats["streams"]["duplicates"],
        "id_resets": stats["streams"]["id_resets"],
        "reconnects": stats["streams"]["reconnects"],
        "snapshots": {k: stats["snapshots"][k] for k in ("requested", "coalesced", "fetched", "failed")},
        "rest": {k: stats["rest"].get(k) for k in ("requests", "status_418", "status_429")},
        "books": {k: stats["books"]["totals"][k] for k in ("syncs", "resyncs", "shed", "buffered_bytes")},
        "parquet": {k: pq.get(k) for k in ("files", "rows", "write_errors", "dropped_rows")},
        "slow_hook": {k: hook.get(k) for k in ("calls", "timeouts", "dropped", "call_errors")},
        "frames_read": stats["streams"]["frames"],
        "sim_frames_sent": sum(sim_stats.frames_sent.values()),
        "sim_injected": sim_stats.injected,
        "peak_rss_mb": round(peak_rss, 1),
        "problems": {
            k: getattr(verdict, k)[:10] for k in ("mismatched", "duplicated", "extra", "unaccounted")
        },
        "checks": checks,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak_hostile", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    p.add_argument("--speed", type=float, default=10.0, help="sim speed, x the capture's pace (default 10)")
    p.add_argument("--cycle-s", type=float, default=60.0, help="seconds per fault cycle (default 60)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--data-dir", type=Path, help="Parquet root (default: a temporary dir, removed)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    setup_logging("text", "WARNING")
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.mkdtemp(prefix="ingestd-hostile-")
        args.data_dir = Path(tmp)
    try:
        with asyncio.Runner(loop_factory=loop_factory(True)) as runner:
            tune_gc()
            result = runner.run(run(args, args.data_dir))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    for key, value in result.items():
        if key != "checks":
            print(f"{key}: {value}")
    ok = True
    for name, passed in result["checks"].items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")
        ok = ok and passed
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
