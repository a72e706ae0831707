"""Order books end to end: `ingestd sim` replaying real captures → the daemon's books.

Done-when of the order-book issue: every capture syncs with no false gap and the bookTicker audit
count equals the figure proven offline (docs/binance.md §8.2); a skipped diff resyncs only its symbol and
is in the gap log; a book rebuilt offline from stored Parquet equals the live book; 429/418 are
honoured and a ban survives a restart.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from ingestd.app import Daemon
from ingestd.book.book import OrderBook
from ingestd.book.sync import BookSync
from ingestd.records import DepthDiff, DepthSnapshot
from ingestd.sim import SimVenue
from tests.e2e import read_channel, run_until, settings_for, wait_for

HFT = {
    # file: (venue, native, audit checks proven offline in docs/binance.md §8.2)
    "usdm_btcusdt_20240808.gz": ("binance-usdm", "BTCUSDT", 629),
    "usdm_ethusdt_20240808.gz": ("binance-usdm", "ETHUSDT", 551),
    "spot_btcusdt_20240808.gz": ("binance-spot", "BTCUSDT", 564),
    "spot_ethusdt_20240808.gz": ("binance-spot", "ETHUSDT", 577),
    "cm_btcusd_perp_20240808.gz": ("binance-usdm", "BTCUSD_PERP", 1124),
}
BOOK_CHANNELS = "book_ticker,depth_diff"


def _books(daemon: Daemon) -> dict[str, Any]:
    assert daemon.books is not None
    return daemon.books.stats()


def _all_sent(sim: SimVenue, daemon: Daemon) -> bool:
    """The sim has sent every book frame of its captures and the daemon received them all."""
    st = daemon.streams.stats() if daemon.streams is not None else {"frames": 0}
    stats = sim.stats()
    sent = sum(stats.frames_sent.values())
    skipped = sum(stats.frames_skipped.values())
    return sent > 0 and st["frames"] >= sent and sent + skipped >= sum(_book_stream_counts(sim).values())


@pytest.mark.parametrize("name", sorted(HFT))
@pytest.mark.asyncio
async def test_each_hftbacktest_capture_syncs_with_exact_audit(
    realdata: Path, tmp_path: Path, name: str
) -> None:
    venue, native, audits = HFT[name]
    capture = realdata / "hftbacktest" / name
    async with SimVenue([capture], speed=0) as sim:
        # At speed 0 the whole capture can arrive before the first snapshot does (the REST budget
        # paces it): hold enough diffs and tickers that the audit still sees every pair.
        settings = settings_for(
            sim.rest_url,
            sim.ws_url,
            tmp_path,
            venue=venue,
            symbols=native,
            channels=BOOK_CHANNELS,
            storage={"enabled": False},
            snapshots={"max_buffered_diffs": 100_000},
        )
        daemon = Daemon(settings)
        code = await run_until(
            daemon,
            lambda: _all_sent(sim, daemon) and _books(daemon)["totals"]["synced"] == 1,
            timeout=90,
        )
    assert code == 0
    stats = _books(daemon)
    row = stats["symbols"][native]
    assert row["state"] == "synced"
    assert row["syncs"] == 1
    assert row["resyncs"] == 0
    assert row["gaps"] == {}
    assert row["audit_mismatches"] == 0
    assert row["audit_checks"] == audits


def _book_stream_counts(sim: SimVenue) -> dict[str, int]:
    """Frames of the book streams (depth, bookTicker) the capture holds."""
    counts: dict[str, int] = {}
    for cap in sim.timeline.captures:
        for stream, n in cap.stream_counts().items():
            if "@depth" in stream or "@bookTicker" in stream:
                counts[stream] = counts.get(stream, 0) + n
    return counts


CRYPTOFEED = [
    ("2021-10_head", "BINANCE_FUTURES", "ws.1.0", "http.0.0", "binance-usdm"),
    ("2021-04-17", "BINANCE_FUTURES", "ws.5.0", "http.4.0", "binance-usdm"),
    ("2021-10_head", "BINANCE", "ws.1.0", "http.0.0", "binance-spot"),
    ("2021-08-14", "BINANCE", "ws.1.0", "http.0.0", "binance-spot"),
]


@pytest.mark.parametrize(("folder", "prefix", "ws", "http", "venue"), CRYPTOFEED)
@pytest.mark.asyncio
async def test_cryptofeed_multi_symbol_captures_sync(
    realdata: Path, tmp_path: Path, folder: str, prefix: str, ws: str, http: str, venue: str
) -> None:
    capture = realdata / "cryptofeed" / folder / f"{prefix}.{ws}"
    async with SimVenue([capture], speed=0) as sim:
        natives = sorted(s.upper() for s in {k.partition("@")[0] for k in _book_stream_counts(sim)})
        settings = settings_for(
            sim.rest_url,
            sim.ws_url,
            tmp_path,
            venue=venue,
            symbols=",".join(natives),
            channels=BOOK_CHANNELS,
            storage={"enabled": False},
        )
        daemon = Daemon(settings)

        def done() -> bool:
            # Snapshots are paced by the REST weight budget (USDⓈ-M: about one a second).
            snaps = daemon.snapshots.stats()["fetched"] if daemon.snapshots is not None else 0
            return _all_sent(sim, daemon) and snaps >= len(natives)

        await run_until(daemon, done, timeout=60)
    stats = _books(daemon)
    assert set(stats["symbols"]) == set(natives)
    for native, row in stats["symbols"].items():
        # A symbol with no diff after its snapshot (RUNEEUR-like quiet books) may still be bridging.
        assert row["gaps"] == {}, (native, row)
        assert row["resyncs"] == 0, (native, row)
        assert row["audit_mismatches"] == 0, (native, row)
    assert stats["totals"]["synced"] >= len(natives) - 1
    assert stats["totals"]["audit_checks"] > 0


@pytest.mark.asyncio
async def test_skipped_diff_resyncs_only_that_symbol_and_is_logged(realdata: Path, tmp_path: Path) -> None:
    """Two real captures merged (USDⓈ-M BTCUSDT + ETHUSDT); the sim never sends one ETH diff."""
    caps = [
        realdata / "hftbacktest" / "usdm_btcusdt_20240808.gz",
        realdata / "hftbacktest" / "usdm_ethusdt_20240808.gz",
    ]
    data = tmp_path / "data"
    # Paced (50x: the 6-minute capture in ~7 s) so the books are synced when the skipped diff is
    # due; "continue" serves live-like snapshots so the resync can bridge the stream again.
    async with SimVenue(caps, speed=50, resume="continue") as sim:
        sim.faults.skip_depth_diff("ETHUSDT", index=5000)
        settings = settings_for(
            sim.rest_url, sim.ws_url, data, symbols="BTCUSDT,ETHUSDT", channels=BOOK_CHANNELS
        )
        daemon = Daemon(settings)

        def healed() -> bool:
            if daemon.books is None:
                return False
            rows = _books(daemon)["symbols"]
            return (
                _all_sent(sim, daemon)
                and rows["ETHUSDT"]["resyncs"] >= 1
                and rows["ETHUSDT"]["state"] == "synced"
            )

        await run_until(daemon, healed, timeout=90)
        assert sim.stats().frames_skipped
    rows = _books(daemon)["symbols"]
    assert rows["ETHUSDT"]["gaps"].get("desync") == 1
    assert rows["ETHUSDT"]["resyncs"] == 1
    assert rows["BTCUSDT"]["gaps"] == {}
    assert rows["BTCUSDT"]["syncs"] == 1

    snaps = read_channel(data, "depth_snapshot").to_pylist()
    per_symbol: dict[str, int] = {}
    for s in snaps:
        per_symbol[s["native"]] = per_symbol.get(s["native"], 0) + 1
    assert per_symbol == {"BTCUSDT": 1, "ETHUSDT": 2}  # BTC never re-snapshotted

    gaps = read_channel(data, "gap").to_pylist()
    assert {g["native"] for g in gaps} == {"ETHUSDT"}
    kinds = [g["kind"] for g in sorted(gaps, key=lambda g: g["recv_ts"])]
    assert kinds == ["desync", "resync"]
    start, end = sorted(gaps, key=lambda g: g["recv_ts"])
    assert start["last_update_id"] is not None
    assert start["first_update_id"] > start["last_update_id"]  # the offending diff skipped ids
    assert end["ended_ts"] is not None
    assert end["ended_ts"] >= end["started_ts"]


def _levels(rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return [(lv["price"], lv["qty"]) for lv in rows]


@pytest.mark.asyncio
async def test_book_rebuilt_from_parquet_equals_the_live_book(bundled_capture: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with SimVenue([bundled_capture], speed=0) as sim:
        settings = settings_for(sim.rest_url, sim.ws_url, data, symbols="BTCUSDT", channels=BOOK_CHANNELS)
        daemon = Daemon(settings)
        await run_until(daemon, lambda: _all_sent(sim, daemon), timeout=60)
    assert daemon.books is not None
    live = daemon.books.get("BTC-USDT-PERP")
    # The book is only readable while synced; the view stays valid after stop (nothing resets it).
    assert live is not None
    assert live.is_synced
    live_bids, live_asks = live.levels(100_000)

    snap_row = read_channel(data, "depth_snapshot").to_pylist()[0]
    diffs = read_channel(data, "depth_diff").sort_by("recv_ts").to_pylist()
    sync = BookSync("futures", max_buffered=100_000)
    common = {"venue": "binance-usdm", "symbol": "BTC-USDT-PERP", "native": "BTCUSDT", "exchange_ts": None}
    snapshot = DepthSnapshot(
        **common,
        recv_ts=snap_row["recv_ts"],
        last_update_id=snap_row["last_update_id"],
        bids=_levels(snap_row["bids"]),
        asks=_levels(snap_row["asks"]),
    )
    fed_snapshot = False
    for d in diffs:
        if not fed_snapshot and d["recv_ts"] > snap_row["recv_ts"]:
            sync.on_snapshot(snapshot)
            fed_snapshot = True
        res = sync.on_diff(
            DepthDiff(
                **common,
                recv_ts=d["recv_ts"],
                first_update_id=d["first_update_id"],
                final_update_id=d["final_update_id"],
                prev_final_update_id=d["prev_final_update_id"],
                bids=_levels(d["bids"]),
                asks=_levels(d["asks"]),
            )
        )
        assert res.gap is None
    assert sync.is_synced
    book: OrderBook = sync.book
    bids, asks = book.levels(100_000)
    assert sync.last_update_id == live.last_update_id
    assert bids == live_bids
    assert asks == live_asks
    assert len(bids) > 500
    assert len(asks) > 500


@pytest.mark.asyncio
async def test_429_then_418_are_honoured_and_the_ban_survives_a_restart(
    bundled_capture: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    state = tmp_path / "state.json"
    async with SimVenue([bundled_capture], speed=0) as sim:
        sim.faults.rest_error("/fapi/v1/depth", 429, count=1, retry_after=1)
        settings = settings_for(
            sim.rest_url,
            sim.ws_url,
            data,
            symbols="BTCUSDT",
            channels=BOOK_CHANNELS,
            snapshots={"state_file": str(state)},
        )
        daemon = Daemon(settings)
        t0 = time.monotonic()
        await run_until(
            daemon, lambda: daemon.books is not None and _books(daemon)["totals"]["synced"] == 1, timeout=30
        )
        waited = time.monotonic() - t0
        assert daemon.rest is not None
        rest = daemon.rest.stats()
        assert rest["errors"].get("429", rest["errors"].get(429)) == 1
        assert waited >= 1.0  # Retry-After: 1 was honoured before the snapshot came

        # Now a 418 with a 5 s ban: the snapshot producer stops asking, the ban is persisted.
        sim.faults.rest_error("/fapi/v1/depth", 418, count=1, retry_after=5)
        daemon2 = Daemon(settings)
        await run_until(daemon2, lambda: bool(daemon2.rest and daemon2.rest.banned_until), timeout=30)
        assert state.is_file()
        ban_end = daemon2.rest.banned_until if daemon2.rest else 0
        assert ban_end > time.time()

        # A restarted daemon must not touch the host until the ban ends: it waits, then starts.
        # Checked at every look while it says it is waiting (it sends nothing before it stops
        # waiting), and it stops waiting only once the ban is over.
        before = dict(sim.stats().rest_requests)
        daemon3 = Daemon(settings)
        task = asyncio.create_task(daemon3.run())
        looks: list[tuple[str, bool]] = []

        def waited_out() -> bool:
            phase = daemon3.stats()["phase"]
            looks.append((phase, sim.stats().rest_requests == before))
            return not phase.startswith("waiting out a REST ban")

        await wait_for(lambda: daemon3.stats()["phase"].startswith("waiting out a REST ban"), what="waiting")
        await wait_for(waited_out, what="the end of the ban")
        assert time.time() >= ban_end
        assert all(same for phase, same in looks if phase.startswith("waiting"))  # nothing sent meanwhile
        await wait_for(lambda: bool(daemon3.books and _books(daemon3)["totals"]["synced"]), what="synced")
        assert daemon3.books is not None
        assert _books(daemon3)["totals"]["synced"] == 1
        daemon3.request_stop("test")
        assert await asyncio.wait_for(task, 30) == 0

    gaps = read_channel(data, "gap").to_pylist()
    assert "ban" in {g["kind"] for g in gaps}
