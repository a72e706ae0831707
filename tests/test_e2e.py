"""End to end: `ingestd sim` replaying a real capture → the daemon → Parquet.

Every trade, book_ticker and depth_diff message of the capture must be in Parquet exactly once,
compared field by field with the capture's payloads, and the REST depth snapshot too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestd.app import Daemon
from ingestd.sim import SimVenue
from tests.e2e import assert_stored_as_captured, capture_frames, demo_counts, run_until, settings_for


@pytest.mark.asyncio
async def test_offline_demo_stores_every_message_exactly_once(bundled_capture: Path, tmp_path: Path) -> None:
    frames = capture_frames(bundled_capture)
    expected = demo_counts(frames)
    assert expected["depth_diff"] == 6551  # tests/data/PROVENANCE.md's figures for this file
    assert expected["book_ticker"] == 66089
    assert expected["trade"] == 21313
    data = tmp_path / "data"
    async with SimVenue([bundled_capture], speed=0) as sim:
        settings = settings_for(
            sim.rest_url, sim.ws_url, data, symbols="BTCUSDT", channels="trade,book_ticker,depth_diff"
        )
        daemon = Daemon(settings)
        total = sum(expected.values())
        code = await run_until(daemon, lambda: daemon.bus.published >= total)
    assert code == 0
    assert_stored_as_captured(data, frames, expected)
