"""USDⓈ-M defaults match the live venue: the default channels use ``agg_trade`` (Binance documents
no ``<symbol>@trade`` on the USDⓈ-M websocket), asking for ``trade`` there warns once, and the sim
serves ``<symbol>@aggTrade`` aggregated from a capture that recorded only ``@trade``.

Ground truth: the bundled hftbacktest USDⓈ-M BTCUSDT capture (21,313 recorded trades) and the
spot slice of tests/data; every aggregate is checked against the recorded trades it covers."""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingestd.app import Daemon
from ingestd.config import DEFAULT_CHANNELS, Settings, load_settings
from ingestd.sim import BUNDLED_CAPTURE, SimVenue, Timeline, load_capture
from ingestd.sim.agg_trades import AggTradeIndex, with_agg_trades
from tests.e2e import read_channel, run_until, settings_for
from tests.realdata import CF, DATA

MS = 1_000_000
TRADE, AGG = "btcusdt@trade", "btcusdt@aggTrade"
SPOT_SLICE = DATA / "spot_btcusdt_20240808_trades.gz"


def payloads(frames: list[bytes]) -> list[dict[str, Any]]:
    return [orjson.loads(f)["data"] for f in frames]


def stream_frames(cap: Any, name: str) -> list[bytes]:
    sid = cap.streams.index(name)
    return [f for s, f in zip(cap.sid, cap.frames, strict=True) if s == sid]


# -- settings ---------------------------------------------------------------------------------


def test_default_channels_are_per_venue() -> None:
    assert Settings().channels == DEFAULT_CHANNELS["binance-usdm"]
    assert "trade" not in Settings().channels
    assert "agg_trade" in Settings().channels
    spot = load_settings(environ={}, cli={"venue": "binance-spot"})
    assert spot.channels == DEFAULT_CHANNELS["binance-spot"]
    assert "trade" in spot.channels  # spot publishes <symbol>@trade
    # null in a file or a layer means the venue's default; a given list is kept as given.
    assert load_settings(environ={"INGESTD_VENUE": "binance-spot"}, cli={"channels": None}) == spot
    asked = load_settings(environ={}, cli={"channels": "trade,depth_diff"})
    assert asked.channels == ("trade", "depth_diff")


# -- the sim's aggregated stream ----------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled() -> tuple[Any, Any]:
    cap = load_capture(BUNDLED_CAPTURE)
    return cap, with_agg_trades(cap)


def test_every_recorded_trade_is_in_exactly_one_aggregate(bundled: tuple[Any, Any]) -> None:
    cap, merged = bundled
    assert AGG not in cap.streams
    trades = payloads(stream_frames(cap, TRADE))
    aggs = payloads(stream_frames(merged, AGG))
    assert len(trades) == 21313
    by_id = {t["t"]: t for t in trades}
    covered = [tid for a in aggs for tid in range(a["f"], a["l"] + 1)]
    assert covered == [t["t"] for t in trades]  # in order, each once, none missing
    for prev, a in zip([None, *aggs], aggs, strict=False):
        run = [by_id[tid] for tid in range(a["f"], a["l"] + 1)]
        assert {(t["T"], t["p"], t["m"]) for t in run} == {(a["T"], a["p"], a["m"])}
        assert Decimal(a["q"]) == sum(Decimal(t["q"]) for t in run)
        assert a["q"] == a["nq"]
        assert (a["e"], a["s"], a["E"]) == ("aggTrade", "BTCUSDT", run[-1]["E"])
        if prev is not None:  # aggregates are maximal: the next trade starts a new (T, p, m)
            assert (prev["T"], prev["p"], prev["m"]) != (a["T"], a["p"], a["m"])
            assert a["a"] == prev["a"] + 1
    assert len(aggs) == 10447


def test_recorded_frames_keep_their_order_and_aggregates_follow_their_last_trade(
    bundled: tuple[Any, Any],
) -> None:
    cap, merged = bundled
    agg_sid = merged.streams.index(AGG)
    assert merged.streams[:agg_sid] == cap.streams
    kept = [(t, s, f) for t, s, f in zip(merged.ts, merged.sid, merged.frames, strict=True) if s != agg_sid]
    assert kept == list(zip(cap.ts, cap.sid, cap.frames, strict=True))
    seen: set[int] = set()
    trade_sid = merged.streams.index(TRADE)
    for s, f in zip(merged.sid, merged.frames, strict=True):
        d = orjson.loads(f)["data"]
        if s == trade_sid:
            seen.add(d["t"])
        elif s == agg_sid:
            assert d["l"] in seen, "an aggregate was served before its last trade"


def test_the_stream_and_the_rest_agg_trades_agree(bundled: tuple[Any, Any]) -> None:
    _, merged = bundled
    index = AggTradeIndex(Timeline([merged]))
    rest: list[dict[str, Any]] = []
    while page := index.answer(
        "futures", "BTCUSDT", from_id=rest[-1]["a"] + 1 if rest else 0, start_ms=None, end_ms=None, limit=1000
    ):
        rest.extend(page)
    ws = payloads(stream_frames(merged, AGG))
    assert len(rest) == len(ws) > 0
    keys = ("a", "p", "q", "f", "l", "T", "m")
    assert [tuple(r[k] for k in keys) for r in rest] == [tuple(w[k] for k in keys) for w in ws]


def test_recorded_agg_trades_are_left_alone_and_spot_trades_are_aggregated() -> None:
    futures = load_capture(CF / "2021-10_head" / "BINANCE_FUTURES.ws.1.0")  # recorded aggTrade
    assert with_agg_trades(futures) is futures
    spot = load_capture(SPOT_SLICE)  # trades only: spot publishes @aggTrade too, so one is derived
    derived = with_agg_trades(spot)
    assert "btcusdt@aggTrade" in derived.streams
    assert "btcusdt@trade" in derived.streams


# -- the daemon ---------------------------------------------------------------------------------


def received_all(sim: SimVenue, daemon: Daemon, stream: str, n: int) -> bool:
    """The sim sent ``n`` frames of ``stream`` and the daemon received every frame sent."""
    stats = sim.stats()
    got = daemon.streams.stats()["frames"] if daemon.streams is not None else 0
    return stats.frames_sent.get(stream, 0) >= n and got >= sum(stats.frames_sent.values())


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "ingestd.app" and r.levelno >= logging.WARNING
    ]


@pytest.mark.asyncio
async def test_default_usdm_run_subscribes_no_trade_stream_and_stores_the_aggregates(
    bundled_capture: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ingestd")
    want = payloads(stream_frames(with_agg_trades(load_capture(bundled_capture)), AGG))
    data = tmp_path / "data"
    async with SimVenue([bundled_capture], speed=0) as sim:
        daemon = Daemon(settings_for(sim.rest_url, sim.ws_url, data, symbols="BTCUSDT"))
        assert "trade" not in daemon.channels
        code = await run_until(daemon, lambda: received_all(sim, daemon, AGG, len(want)))
        subscribed = {s for c in sim.stats().connections for s in c.subscriptions}
    assert code == 0
    assert AGG in subscribed
    assert not {s for s in subscribed if s.endswith("@trade")}, subscribed
    assert not [m for m in _warnings(caplog) if "channel trade" in m]
    rows = read_channel(data, "agg_trade").sort_by("agg_id").to_pylist()
    assert len(rows) == len(want)
    for row, d in zip(rows, want, strict=True):
        assert (row["agg_id"], row["first_trade_id"], row["last_trade_id"]) == (d["a"], d["f"], d["l"])
        assert (row["price"], row["qty"], row["normal_qty"]) == (float(d["p"]), float(d["q"]), float(d["nq"]))
        assert row["is_buyer_maker"] is d["m"]
        assert (row["exchange_ts"], row["transaction_ts"]) == (d["E"] * MS, d["T"] * MS)
        assert (row["venue"], row["symbol"], row["native"]) == ("binance-usdm", "BTC-USDT-PERP", "BTCUSDT")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("venue", "capture", "warned"), [("binance-usdm", None, 1), ("binance-spot", SPOT_SLICE, 0)]
)
async def test_asking_for_trade_warns_once_on_usdm_only(
    venue: str,
    capture: Path | None,
    warned: int,
    bundled_capture: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ingestd")
    async with SimVenue([capture or bundled_capture], speed=0) as sim:
        daemon = Daemon(
            settings_for(
                sim.rest_url, sim.ws_url, tmp_path / "data", venue=venue, symbols="BTCUSDT", channels="trade"
            )
        )
        code = await run_until(daemon, lambda: received_all(sim, daemon, TRADE, 1))
    assert code == 0
    hits = [m for m in _warnings(caplog) if "channel trade" in m]
    assert len(hits) == warned, _warnings(caplog)
    if warned:
        assert hits[0] == (
            "channel trade on binance-usdm: Binance does not document this stream on the venue's "
            "websocket, it may stay silent; use agg_trade (docs/binance.md §2.3)"
        )
