"""Clock offset against a sim whose clock is deliberately skewed.

The daemon must measure the skew within a few ms, warn once per episode past
``clock.warn_offset_ms`` (and say when it is back), store one ``clock`` record per estimate, and
correct the exchange→receive latency histogram by the offset: frames stamped by the skewed venue
clock at send time must land in the low buckets, not 800 ms up.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingestd.app import Daemon
from ingestd.observe.records import CLOCK_SYMBOL, ClockSample
from ingestd.records import RECORD_TYPES
from ingestd.sim import Capture, SimVenue, load_capture
from tests.e2e import read_channel, settings_for, wait_for
from tests.ops import free_port, running, scrape, value

SKEW_MS = -800
"""The venue's clock is 800 ms behind ours (past the 500 ms warning threshold)."""
TOLERANCE_MS = 5.0
"""A few ms; more only if the machine is so loaded that even the fastest round trip was slow."""


def _bound(rtt_ms: float) -> float:
    # The midpoint estimate is exact to within half the round trip, plus the server's ms truncation.
    return max(TOLERANCE_MS, rtt_ms / 2 + 1.0)


# A real USD-M aggTrade payload (tests/data/cryptofeed/2021-10_head/BINANCE_FUTURES.ws.1.0,
# CTKUSDT; this product includes software developed by Bryant Moscon), moved to BTCUSDT; E and T
# are set to the skewed venue clock at the moment of sending.
_AGG: dict[str, Any] = {"e": "aggTrade", "E": 0, "a": 16599292, "s": "BTCUSDT", "p": "1.01100", "q": "10",
        "f": 23961322, "l": 23961322, "T": 0, "m": False}  # fmt: skip


def _agg_frame(i: int, skew_ms: int) -> bytes:
    venue_now = time.time_ns() // 1_000_000 + skew_ms
    data = {
        **_AGG,
        "a": _AGG["a"] + i,
        "f": _AGG["f"] + i,
        "l": _AGG["l"] + i,
        "E": venue_now,
        "T": venue_now,
    }
    return orjson.dumps({"stream": "btcusdt@aggTrade", "data": data})


def without_trades(path: Path) -> Capture:
    """The capture minus its recorded trades, so the sim derives no aggTrade stream from them."""
    cap = load_capture(path)
    trade = cap.streams.index("btcusdt@trade")
    keep = [k for k, s in enumerate(cap.sid) if s != trade]
    return Capture(
        cap.name,
        cap.format,
        cap.market,
        streams=cap.streams,
        ts=[cap.ts[k] for k in keep],
        sid=[cap.sid[k] for k in keep],
        frames=[cap.frames[k] for k in keep],
        snapshots=cap.snapshots,
    )


@pytest.mark.asyncio
async def test_skewed_venue_clock_is_measured_stored_and_corrected(
    bundled_capture: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ingestd.app")
    port = free_port()
    data = tmp_path / "data"
    assert RECORD_TYPES["clock"] is ClockSample
    async with SimVenue([bundled_capture], speed=0, derive_agg_trades=False) as sim:
        sim.faults.clock_skew_ms = SKEW_MS
        settings = settings_for(
            sim.rest_url,
            sim.ws_url,
            data,
            symbols="BTCUSDT",
            channels="agg_trade",  # no aggTrade derived from the trades: only the frames injected below
            clock={"interval_s": 0.2, "samples": 3, "warn_offset_ms": 500},
            health={"port": port},
        )
        daemon = Daemon(settings)
        async with running(daemon) as task:
            await wait_for(lambda: daemon.clock is not None and daemon.clock.measurements >= 3, 10)
            clock = daemon.clock
            assert clock is not None
            assert clock.offset_ms is not None
            assert clock.rtt_ms is not None
            assert abs(clock.offset_ms - SKEW_MS) < _bound(clock.rtt_ms), clock.stats()

            # Frames stamped with the venue's (skewed) clock as they are sent.
            await wait_for(
                lambda: daemon.streams is not None and daemon.streams.stats()["connections"] != {}, 5
            )
            await wait_for(
                lambda: sim.faults.inject([_agg_frame(0, SKEW_MS)], stream="btcusdt@aggTrade") == 1, 5
            )
            for i in range(1, 5):
                sim.faults.inject([_agg_frame(i, SKEW_MS)], stream="btcusdt@aggTrade")
            await wait_for(
                lambda: (
                    "agg_trade" in daemon.metrics.latency and daemon.metrics.latency["agg_trade"].count == 5
                ),
                5,
            )
            fams = await scrape(f"http://127.0.0.1:{port}")
            assert value(fams, "ingestd_clock_offset_seconds") == pytest.approx(
                SKEW_MS / 1e3, abs=_bound(clock.rtt_ms) / 1e3
            )
            # Corrected: recv - E + offset is the transit time (ms on 127.0.0.1; bounds leave room
            # for a loaded machine). Uncorrected, each frame would show 800 ms and more.
            assert value(fams, "ingestd_exchange_latency_seconds_bucket", channel="agg_trade", le="0.25") == 5
            assert value(fams, "ingestd_exchange_latency_seconds_count", channel="agg_trade") == 5
            assert value(fams, "ingestd_exchange_latency_seconds_sum", channel="agg_trade") < 0.5
            assert value(fams, "ingestd_clock_measurements_total") >= 3

            # The venue's clock is fixed: the episode ends, a new estimate says so.
            skewed = clock.measurements
            sim.faults.clock_skew_ms = 0
            await wait_for(lambda: clock.measurements >= skewed + 2, 10)
            assert clock.offset_ms is not None
            assert clock.rtt_ms is not None
            assert abs(clock.offset_ms) < _bound(clock.rtt_ms)
        assert task.result() == 0
        measurements = clock.measurements

    warnings = [r.getMessage() for r in caplog.records if "venue clock" in r.getMessage()]
    assert len(warnings) == 2, warnings  # one warning for the episode, one line when it ends
    match = re.match(r"venue clock is (-?[\d.]+) ms off ours", warnings[0])
    assert match is not None, warnings[0]
    assert abs(float(match.group(1)) + 800) < 5  # the sim's -800 ms skew, within a few ms
    assert "limit 500 ms" in warnings[0]
    assert warnings[1].startswith("venue clock offset back within 500 ms: ")

    rows = sorted(read_channel(data, "clock").to_pylist(), key=lambda r: r["recv_ts"])
    assert len(rows) == measurements  # one record per estimate, none lost at shutdown
    host = sim.rest_url.removeprefix("http://")
    for row in rows:
        assert row["symbol"] == row["native"] == CLOCK_SYMBOL
        assert row["venue"] == "binance-usdm"
        assert row["host"] == host
        assert row["samples"] == 3
        assert 0 < row["rtt_ms"] < 1_000
        assert row["local_mid_ts"] < row["recv_ts"] <= row["local_mid_ts"] + row["rtt_ms"] * 1e6
        # offset = serverTime - local midpoint, as stored.
        assert (row["exchange_ts"] - row["local_mid_ts"]) / 1e6 == pytest.approx(row["offset_ms"], abs=1e-3)
    assert all(abs(r["offset_ms"] - SKEW_MS) < _bound(r["rtt_ms"]) for r in rows[:skewed])
    assert abs(rows[-1]["offset_ms"]) < _bound(rows[-1]["rtt_ms"])
