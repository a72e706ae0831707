"""The soak's venue: a looping replay whose passes carry fresh ids (``SimVenue(loop_shift=True)``),
so a daemon that drops repeated ids stores every pass. A short in-process soak checks the
accounting ``bench/soak.py`` relies on: frames sent == records stored, pass after pass."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from ingestd.app import Daemon
from ingestd.sim import SimVenue
from ingestd.sim.captures import load_capture
from ingestd.sim.shift import LoopShift
from tests.faults_util import (
    CF_FUTURES,
    admitted,
    fault_settings,
    read_rows,
    real_capture,
    row_key,
    running,
    until,
)


def test_every_id_and_time_of_a_later_pass_is_past_the_whole_capture() -> None:
    cap = load_capture(real_capture(CF_FUTURES))
    shift = LoopShift.measure(cap.frames, [s.body for s in cap.snapshots], cap.ts[-1] - cap.ts[0])
    assert shift.time_ms % 60_000 == 0
    assert shift.time_ms > (cap.ts[-1] - cap.ts[0]) // 1_000_000
    first = [orjson.loads(f)["data"] for f in cap.frames]
    second = [orjson.loads(shift.frame(f, 1))["data"] for f in cap.frames]
    third = [orjson.loads(shift.frame(f, 2))["data"] for f in cap.frames]

    def ids(frames: list[dict[str, object]], key: str) -> list[int]:
        return [int(d[key]) for d in frames if key in d and isinstance(d[key], int)]  # type: ignore[call-overload]

    for key in ("u", "U", "E", "T"):
        if ids(first, key):
            assert min(ids(second, key)) > max(ids(first, key)), key
            assert [b - a for a, b in zip(ids(first, key), ids(second, key), strict=True)] == [
                c - b for b, c in zip(ids(second, key), ids(third, key), strict=True)
            ]
    # Aggregate and trade ids are numbered per symbol: each symbol's next pass continues it.
    for native in {str(d["s"]) for d in first if d.get("e") == "aggTrade"}:
        for key in ("a", "f", "l"):
            one = [int(d[key]) for d in first if d.get("e") == "aggTrade" and d["s"] == native]
            two = [int(d[key]) for d in second if d.get("e") == "aggTrade" and d["s"] == native]
            assert min(two) > max(one), (native, key)
        a_one = [int(d["a"]) for d in first if d.get("e") == "aggTrade" and d["s"] == native]
        a_two = [int(d["a"]) for d in second if d.get("e") == "aggTrade" and d["s"] == native]
        assert a_two[0] == a_one[-1] + 1, native  # contiguous across the pass boundary
    for a, b in zip(first, second, strict=True):
        # Everything but ids and times is the real payload, unchanged.
        assert {k: v for k, v in a.items() if k not in ("E", "T", "U", "u", "pu", "a", "f", "l", "k")} == {
            k: v for k, v in b.items() if k not in ("E", "T", "U", "u", "pu", "a", "f", "l", "k")
        }
        if a.get("e") == "kline":
            assert (b["k"]["t"] - a["k"]["t"]) % 60_000 == 0
            assert b["k"]["o"] == a["k"]["o"]
    snap = cap.snapshots[0]
    body0, body1 = orjson.loads(snap.body), orjson.loads(shift.snapshot(snap.body, 1))
    assert body1["lastUpdateId"] == body0["lastUpdateId"] + shift.update_ids
    assert body1["bids"] == body0["bids"]
    assert shift.frame(cap.frames[0], 0) is cap.frames[0]


@pytest.mark.asyncio
async def test_a_looped_replay_is_stored_pass_after_pass(tmp_path: Path) -> None:
    """Three passes of the real capture as fast as they go: every frame sent is stored once, in
    order of ids, and nothing is taken for a duplicate."""
    data = tmp_path / "data"
    cap = load_capture(real_capture(CF_FUTURES))
    passes = 3
    async with SimVenue([CF_FUTURES], speed=0, loop=True, loop_shift=True, resume="continue") as sim:
        sim.faults.stall(sticky=True)
        daemon = Daemon(fault_settings(sim, data, snapshots={"limit": 100, "weight_headroom": 1.0}))
        async with running(daemon):
            await until(lambda: sim.stats().connections_open == 2, what="connected")
            sim.faults.resume()
            await until(lambda: admitted(daemon) >= passes * len(cap), timeout=30, what="three passes")
            sim.faults.stall()
            await until(lambda: admitted(daemon) == sum(sim.stats().frames_sent.values()), what="caught up")
            sent = sim.stats().frames_sent
            stats = daemon.stats()
    assert stats["streams"]["duplicates"] == 0
    assert stats["streams"]["parse_errors"] == 0
    kinds = {
        "depth_diff": "@depth",
        "book_ticker": "@bookTicker",
        "agg_trade": "@aggTrade",
        "kline": "@kline",
    }
    for channel, marker in kinds.items():
        rows = read_rows(data, channel)
        keys = [(r["native"], row_key(channel, r)) for r in rows]
        assert len(keys) == len(set(keys)), channel
        assert len(rows) == sum(n for name, n in sent.items() if marker in name), channel
        assert len(rows) >= passes * sum(n for name, n in cap.stream_counts().items() if marker in name) - 50
    # A book only ever sees the ids jump between passes (a desync), never anything else.
    for native, row in stats["books"]["symbols"].items():
        assert set(row["gaps"]) <= {"desync"}, (native, row)
    assert len(read_rows(data, "depth_snapshot")) == daemon.stats()["snapshots"]["emitted"] >= 4
