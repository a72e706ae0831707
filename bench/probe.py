"""What every contender process measures about itself, written as one JSON file at its end.

Standard library only: the cryptofeed contender imports it from its own virtualenv.

Clocks: ``*_ns`` are wall-clock ``time.time_ns()`` (comparable with a record's ``recv_ts``);
``*_cpu_ns`` are this process's CPU time (all threads, user + system) at the same moments.
The throughput window starts at ``first`` (the first message seen) or, for ingestd, at ``warm``
(every order book synced: the steady state a long-running daemon lives in) and ends at ``last``
(the last message handled) or ``end`` (the process finished its work, Parquet files closed).

Latency samples (optional) are three int64 per message, in ns: handler time minus the frame's
receive time, handler time minus exchange time ``E`` (ms precision), receive time minus ``E``;
plus a route flag per message (0 ``/public``, 1 ``/market``). They go to ``<out>.lat`` as raw
native-endian arrays; :func:`read_latency` reads them back.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from array import array
from pathlib import Path
from typing import Any

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _maxrss_kb() -> int:
    """Peak RSS of this process plus the largest peak of its reaped children (the Parquet
    writer process, ``storage.writer: process``): an upper bound of what the two held at once."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(own + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def _live_children_cpu_ns() -> int:
    """CPU of this process's live children (utime + stime from /proc), in ns."""
    me = str(os.getpid())
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) * 1_000_000_000 // _CLK_TCK
    return total


def cpu_ns() -> int:
    """CPU time of this process (every thread) and of its children, live or reaped, in ns: the
    Parquet writer process's work is part of what a message costs."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped = int((kids.ru_utime + kids.ru_stime) * 1e9)
    return time.process_time_ns() + reaped + _live_children_cpu_ns()


class Probe:
    """Counters and marks of one contender run. ``mark_*`` methods are cheap; call them inline."""

    __slots__ = (
        "count",
        "ex_lat",
        "extra",
        "first_cpu_ns",
        "first_ns",
        "last_ns",
        "latency",
        "recv_ex",
        "recv_lat",
        "route",
        "warm_count",
        "warm_cpu_ns",
        "warm_ns",
    )

    def __init__(self, *, latency: bool = False) -> None:
        self.count = 0
        self.first_ns = 0
        self.first_cpu_ns = 0
        self.last_ns = 0
        self.warm_ns = 0
        self.warm_cpu_ns = 0
        self.warm_count = 0
        self.latency = latency
        self.recv_lat = array("q")
        self.ex_lat = array("q")
        self.recv_ex = array("q")
        self.route = array("b")
        self.extra: dict[str, Any] = {}

    def mark_first(self, recv_ns: int) -> None:
        """The first message: ``recv_ns`` is when its frame arrived."""
        self.first_ns = recv_ns
        self.first_cpu_ns = cpu_ns()

    def mark_warm(self) -> None:
        """Steady state reached (ingestd: every book synced)."""
        self.warm_ns = time.time_ns()
        self.warm_cpu_ns = cpu_ns()
        self.warm_count = self.count

    def sample(self, now_ns: int, recv_ns: int, exchange_ns: int | None, route: int) -> None:
        """One latency sample (call only when ``latency`` is on)."""
        self.recv_lat.append(now_ns - recv_ns)
        if exchange_ns is None:
            self.ex_lat.append(-1)
            self.recv_ex.append(-1)
        else:
            self.ex_lat.append(now_ns - exchange_ns)
            self.recv_ex.append(recv_ns - exchange_ns)
        self.route.append(route)

    def write(self, out: str | Path) -> None:
        """Write the result JSON (and the latency arrays when sampled)."""
        out = Path(out)
        doc = {
            "count": self.count,
            "first_ns": self.first_ns,
            "first_cpu_ns": self.first_cpu_ns,
            "warm_ns": self.warm_ns,
            "warm_cpu_ns": self.warm_cpu_ns,
            "warm_count": self.warm_count,
            "last_ns": self.last_ns,
            "end_ns": time.time_ns(),
            "end_cpu_ns": cpu_ns(),
            "maxrss_kb": _maxrss_kb(),
            "latency_samples": len(self.recv_lat),
            **self.extra,
        }
        if self.recv_lat:
            with Path(f"{out}.lat").open("wb") as f:
                for arr in (self.recv_lat, self.ex_lat, self.recv_ex):
                    arr.tofile(f)
                self.route.tofile(f)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(out)


def read_latency(out: str | Path, n: int) -> tuple[array[int], array[int], array[int], array[int]]:
    """``(recv_lat, ex_lat, recv_ex, route)`` of ``n`` samples written by :meth:`Probe.write`."""
    data = Path(f"{out}.lat").read_bytes()
    arrays = []
    pos = 0
    for code, size in (("q", 8), ("q", 8), ("q", 8), ("b", 1)):
        a = array(code)
        a.frombytes(data[pos : pos + n * size])
        pos += n * size
        arrays.append(a)
    return arrays[0], arrays[1], arrays[2], arrays[3]


def ceiling_args(prog: str) -> argparse.Namespace:
    """The command line both ceiling contenders take: ``--ws URL --streams FILE --expect N
    --out FILE [--max-seconds S]``; ``streams`` is a JSON file mapping route -> stream names."""
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--ws", required=True)
    p.add_argument("--streams", required=True, help="JSON file: route -> stream names")
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-seconds", type=float, default=120.0)
    return p.parse_args()
