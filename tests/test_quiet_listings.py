"""The quiet-stream watch follows the contract set: streams of a contract listed at runtime get
their quiet periods in the gap log, and a retired stream's open period is dropped (never reported
quiet for ever)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ingestd.book.records import Gap
from ingestd.config import HealthSettings
from ingestd.observe.quiet import QuietStreams
from tests.e2e import settings_for
from tests.test_parse import contract_set

NOW = 1_000 * 10**9


def st(age: float) -> dict[str, Any]:
    return {"connection": "c#0", "cadence": "book", "last_frame_age_s": age, "first_frame_seen": True}


def test_a_retired_streams_quiet_period_is_dropped() -> None:
    quiet = QuietStreams("binance-usdm", contract_set("binance-usdm", {"BTCUSDT", "ETHUSDT"}),
                         HealthSettings(freshness_s=2.0, quiet_freshness_s=10.0))  # fmt: skip
    began = quiet.scan({"btcusdt@bookTicker": st(0.1), "ethusdt@bookTicker": st(3.0)}, NOW)
    assert [g.native for g in began if isinstance(g, Gap)] == ["ETHUSDT"]
    assert quiet.stats()["quiet_streams"] == ["ethusdt@bookTicker"]
    # ETHUSDT delisted: its stream leaves the streams producer's stats.
    assert quiet.scan({"btcusdt@bookTicker": st(0.1)}, NOW + 10**9) == []
    assert quiet.stats() == {"quiet_streams": [], "episodes": 1}


@pytest.mark.asyncio
async def test_a_listed_contracts_quiet_stream_is_in_the_gap_log(tmp_path: Path) -> None:
    from ingestd.app import Daemon  # noqa: PLC0415 - local to the test

    daemon = Daemon(settings_for("http://127.0.0.1:1", "ws://127.0.0.1:1", tmp_path))
    daemon.contracts = contract_set("binance-usdm", {"BTCUSDT"})
    snap = {"btcusdt@bookTicker": st(0.1), "newusdt@bookTicker": st(3600.0)}

    class Streams:
        def stats(self) -> dict[str, Any]:
            return {"streams": snap}

    daemon._watch_quiet(Streams())  # type: ignore[arg-type]
    assert daemon.quiet is not None
    try:
        # What the listing watcher's on_change tells the daemon when NEWUSDT is listed.
        daemon._contracts_changed(contract_set("binance-usdm", {"BTCUSDT", "NEWUSDT"}))
        found = daemon.quiet.quiet.scan(snap, NOW)
    finally:
        await daemon.quiet.close()
    assert [(g.kind, g.native, g.data_channel) for g in found if isinstance(g, Gap)] == [
        ("quiet_stream", "NEWUSDT", "book_ticker")
    ]
