"""End to end: `ingestd sim` replaying a real capture → the daemon → Parquet.

Every trade, book_ticker and depth_diff message of the capture must be in Parquet exactly once,
compared field by field with the capture's payloads, and the REST depth snapshot too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestd.app import Daemon
from ingestd.sim import SimVenue
from tests.e2e import capture_frames, read_channel, run_until, settings_for, stored_counts

MS = 1_000_000


@pytest.mark.asyncio
async def test_offline_demo_stores_every_message_exactly_once(bundled_capture: Path, tmp_path: Path) -> None:
    frames = capture_frames(bundled_capture)
    expected = {
        "trade": len(frames["trade"]),
        "book_ticker": len(frames["bookTicker"]),
        "depth_diff": len(frames["depth"]),
        "depth_snapshot": 1,
    }
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
    counts = stored_counts(data)
    for channel, n in expected.items():
        assert counts[channel] == n, (channel, counts)

    trades = read_channel(data, "trade").sort_by("trade_id").to_pylist()
    want = sorted(frames["trade"], key=lambda d: d["t"])
    assert len(trades) == len(want)
    for row, d in zip(trades, want, strict=True):
        assert row["trade_id"] == d["t"]
        assert row["price"] == float(d["p"])
        assert row["qty"] == float(d["q"])
        assert row["is_buyer_maker"] is d["m"]
        assert row["exchange_ts"] == d["E"] * MS
        assert row["transaction_ts"] == d["T"] * MS
        assert row["trade_type"] == d["X"]
        assert row["symbol"] == "BTC-USDT-PERP"
        assert row["native"] == "BTCUSDT"
        assert row["venue"] == "binance-usdm"

    tickers = read_channel(data, "book_ticker").sort_by("update_id").to_pylist()
    want = sorted(frames["bookTicker"], key=lambda d: d["u"])
    for row, d in zip(tickers, want, strict=True):
        assert (row["update_id"], row["bid_price"], row["bid_qty"], row["ask_price"], row["ask_qty"]) == (
            d["u"],
            float(d["b"]),
            float(d["B"]),
            float(d["a"]),
            float(d["A"]),
        )
        assert row["exchange_ts"] == d["E"] * MS

    diffs = read_channel(data, "depth_diff").sort_by("final_update_id").to_pylist()
    want = sorted(frames["depth"], key=lambda d: d["u"])
    for row, d in zip(diffs, want, strict=True):
        assert row["first_update_id"] == d["U"]
        assert row["final_update_id"] == d["u"]
        assert row["prev_final_update_id"] == d["pu"]
        assert [(lv["price"], lv["qty"]) for lv in row["bids"]] == [(float(p), float(q)) for p, q in d["b"]]
        assert [(lv["price"], lv["qty"]) for lv in row["asks"]] == [(float(p), float(q)) for p, q in d["a"]]

    (snap,) = read_channel(data, "depth_snapshot").to_pylist()
    body = frames["snapshot"][0]
    assert snap["last_update_id"] == body["lastUpdateId"]
    assert len(snap["bids"]) == len(body["bids"])
    assert [(lv["price"], lv["qty"]) for lv in snap["asks"]] == [
        (float(p), float(q)) for p, q in body["asks"]
    ]
    assert snap["exchange_ts"] == body["E"] * MS
