"""The counting hook loaded into ``python -m ingestd`` (``--hook bench.contenders.hook:on_record``).

Configured through the environment (the daemon imports this module by name):

* ``BENCH_OUT``: result JSON path (written at interpreter exit, after the daemon's shutdown
  has flushed and closed every Parquet file);
* ``BENCH_EXPECT``: stream records to wait for; once the hook has seen that many it asks the
  daemon to stop (SIGTERM to itself: the daemon's orderly shutdown, nothing killed);
* ``BENCH_LATENCY=1``: also sample receive→hook and exchange→hook for every record.

Steady state ("warm"): checked every 4,096 records until every order book is synced; the run's
throughput is measured from there (see :mod:`bench.probe`).
"""

from __future__ import annotations

import atexit
import os
import signal
import time
from typing import Any, Final

from bench.probe import Probe
from ingestd.venues.binance.channels import PUBLIC_ROUTE, USDM_CHANNELS

_STREAM_CHANNELS: Final = frozenset(s.channel for s in USDM_CHANNELS.streamed)
"""Records that come from a websocket frame (one per frame in this workload)."""
_PUBLIC: Final = frozenset(s.channel for s in USDM_CHANNELS.streamed if s.route == PUBLIC_ROUTE)

_OUT = os.environ.get("BENCH_OUT", "")
_EXPECT = int(os.environ.get("BENCH_EXPECT", "0") or 0)
_LATENCY = os.environ.get("BENCH_LATENCY") == "1"

probe = Probe(latency=_LATENCY)
"""``probe.count`` counts stream records only; ``extra["other_records"]`` the rest (snapshots, gaps)."""
_state = {"other": 0, "stopping": False, "next_warm_check": 4096}


def _all_synced(context: Any) -> bool:
    books, contracts = context.books, context.contracts
    if books is None or contracts is None:
        return True  # no depth channel: nothing to warm up
    return all(books.get(c.native) is not None for c in contracts)


def _finish() -> None:
    if _OUT:
        probe.extra["other_records"] = _state["other"]
        probe.write(_OUT)


atexit.register(_finish)


async def on_record(record: Any, context: Any) -> None:
    """Count (and optionally time) one record; stop the daemon after ``BENCH_EXPECT`` of them."""
    channel = record.channel
    if channel not in _STREAM_CHANNELS:
        _state["other"] += 1
        return
    probe.count += 1
    n = probe.count
    if n == 1:
        probe.mark_first(record.recv_ts)
    # The run may be cut at a time cap: the last record's time is always known.
    now = probe.last_ns = time.time_ns()
    if _LATENCY:
        probe.sample(now, record.recv_ts, record.exchange_ts, 0 if channel in _PUBLIC else 1)
    if not probe.warm_ns and n >= _state["next_warm_check"]:
        _state["next_warm_check"] = n + 4096
        if _all_synced(context):
            probe.mark_warm()
            probe.extra["warm_samples"] = len(probe.recv_lat)
    if n == _EXPECT and not _state["stopping"]:
        _state["stopping"] = True
        os.kill(os.getpid(), signal.SIGTERM)
