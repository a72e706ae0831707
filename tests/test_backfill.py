"""The backfill engine against the sim: holes found by id, filled from REST page by page, the gap
log, failures (429, refusals, 5xx), the age limit, trades and the API key, listings, and the
restart that reads the last stored ids from Parquet footers.

Ground truth: the aggregated trades the sim serves for the bundled capture (hftbacktest USDⓈ-M
BTCUSDT, 2024-08-08), derived from its 21,313 real trades, and the real spot trades of the same
minutes in tests/data. Records are compared field by field with those payloads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingestd.book.records import Gap, GapKind
from ingestd.config import StorageSettings, StreamSettings
from ingestd.consumers.parquet import ParquetWriter
from ingestd.errors import ParseError
from ingestd.producers.backfill import Backfiller, BackfillSettings
from ingestd.producers.discovery import discover
from ingestd.producers.listings import Followers, ListingWatcher
from ingestd.producers.rest import RestClient
from ingestd.producers.stored import stored_tails
from ingestd.records import AggTrade, AnyRecord, Record, Trade
from ingestd.sim import BUNDLED_CAPTURE, SimVenue, load_capture
from ingestd.sim.agg_trades import with_agg_trades
from ingestd.sim.schedule import ListingChange
from ingestd.venues.binance.endpoints import SPOT, USDM, VenueSpec
from ingestd.venues.binance.history import parse_agg_trades, parse_historical_trades
from ingestd.venues.binance.symbols import Contract, ContractSet
from tests.e2e import capture_lines
from tests.ops import wait_for

SPOT_TRADES = Path(__file__).resolve().parent / "data" / "spot_btcusdt_20240808_trades.gz"
MS = 1_000_000
BTC = Contract("binance-usdm", "BTCUSDT", "BTC-USDT-PERP", "BTC", "USDT", 0.1, 1, 0.001, 0.001)
FAST = BackfillSettings(retry_initial_s=0.05, retry_max_s=0.2)


def agg_payloads(path: Path = BUNDLED_CAPTURE) -> list[tuple[int, dict[str, Any]]]:
    """``(recv_ns, payload)`` of the aggTrade stream the sim serves for ``path``."""
    cap = with_agg_trades(load_capture(path))
    sid = cap.streams.index("btcusdt@aggTrade")
    rows = zip(cap.ts, cap.sid, cap.frames, strict=True)
    return [(ts, orjson.loads(f)["data"]) for ts, s, f in rows if s == sid]


@pytest.fixture(scope="module")
def aggs() -> list[tuple[int, dict[str, Any]]]:
    return agg_payloads()


def ws_agg(c: Contract, recv: int, p: dict[str, Any]) -> AggTrade:
    """The record the stream delivers for payload ``p``."""
    return AggTrade(
        venue=c.venue, symbol=c.symbol, native=c.native, exchange_ts=p["E"] * MS, recv_ts=recv,
        transaction_ts=p["T"] * MS, agg_id=p["a"], first_trade_id=p["f"], last_trade_id=p["l"],
        price=float(p["p"]), qty=float(p["q"]), is_buyer_maker=p["m"], normal_qty=float(p["nq"]),
    )  # fmt: skip


def ws_trade(c: Contract, recv: int, p: dict[str, Any]) -> Trade:
    return Trade(
        venue=c.venue, symbol=c.symbol, native=c.native, exchange_ts=p["E"] * MS, recv_ts=recv,
        transaction_ts=p["T"] * MS, trade_id=p["t"], price=float(p["p"]), qty=float(p["q"]),
        is_buyer_maker=p["m"],
    )  # fmt: skip


def assert_rest_aggs(rows: Sequence[Record], want: Sequence[dict[str, Any]]) -> None:
    """REST-filled records equal the stream payloads field by field, marked as REST rows."""
    assert [r.agg_id for r in rows if isinstance(r, AggTrade)] == [p["a"] for p in want]
    for r, p in zip(rows, want, strict=True):
        assert isinstance(r, AggTrade)
        got = (r.first_trade_id, r.last_trade_id, r.price, r.qty, r.is_buyer_maker, r.normal_qty)
        assert got == (p["f"], p["l"], float(p["p"]), float(p["q"]), p["m"], float(p["nq"]))
        assert (r.transaction_ts, r.exchange_ts, r.source) == (p["T"] * MS, None, "rest")
        assert (r.native, r.symbol) == ("BTCUSDT", "BTC-USDT-PERP")


@dataclass
class Rig:
    sim: SimVenue
    client: RestClient
    contract: Contract
    engine: Backfiller
    emitted: list[AnyRecord] = field(default_factory=list)

    def rows(self) -> list[Record]:
        return [r for r in self.emitted if isinstance(r, AggTrade | Trade)]

    def gaps(self, kind: str | None = None) -> list[Gap]:
        return [r for r in self.emitted if isinstance(r, Gap) and kind in (None, r.kind)]

    async def until(self, cond: Callable[[], bool], timeout: float = 30.0) -> None:
        await wait_for(cond, timeout)

    async def settled(self) -> None:
        """Every queued hole is done (filled, or given up)."""
        await self.until(lambda: (s := self.engine.stats())["pending"] == 0 and s["active"] == 0)


@asynccontextmanager
async def rig(
    capture: Path = BUNDLED_CAPTURE,
    venue: VenueSpec = USDM,
    *,
    settings: BackfillSettings = FAST,
    channels: tuple[str, ...] = ("agg_trade",),
    api_key: str | None = None,
    **sim_args: Any,
) -> AsyncIterator[Rig]:
    async with SimVenue([capture], **sim_args) as sim:
        client = RestClient(sim.rest_url, venue, retry_initial_s=0.01, retry_max_s=0.05)
        try:
            contracts = await discover(client, venue)
            if not len(contracts):  # a listing still pending: the contract as it will be listed
                contracts = ContractSet(venue.name, (BTC,))
            emitted: list[AnyRecord] = []

            async def emit(batch: Sequence[AnyRecord]) -> None:
                emitted.extend(batch)

            engine = Backfiller(client, venue.name, contracts, emit, settings, channels, api_key=api_key)
            task = asyncio.create_task(engine.run())
            try:
                (contract,) = contracts
                yield Rig(sim, client, contract, engine, emitted)
            finally:
                await engine.close()
                await task
        finally:
            await client.close()


# --------------------------------------------------------------------------- holes and fills


@pytest.mark.asyncio
async def test_a_contiguous_stream_has_no_hole(aggs: list[tuple[int, dict[str, Any]]]) -> None:
    async with rig() as r:
        c = r.contract
        assert r.engine.observe([ws_agg(c, t, p) for t, p in aggs[:300]]) is None
        # An id at or below the last (a venue that restarted its sequence) is no hole either.
        assert r.engine.observe([ws_agg(c, t, p) for t, p in aggs[10:20]]) is None
        assert r.engine.stats()["holes"] == 0


@pytest.mark.asyncio
async def test_a_late_copy_does_not_move_the_last_id_back(aggs: list[tuple[int, dict[str, Any]]]) -> None:
    """One stale aggTrade resent behind newer ones is no reason to think ids after it are missing
    (they were stored): the next live record follows the newest one seen."""
    async with rig() as r:
        c = r.contract
        assert r.engine.observe([ws_agg(c, t, p) for t, p in aggs[:300]]) is None
        assert r.engine.observe([ws_agg(c, *aggs[5])]) is None  # the late copy
        assert r.engine.observe([ws_agg(c, t, p) for t, p in aggs[300:310]]) is None
        assert r.engine.stats()["holes"] == 0


@pytest.mark.asyncio
async def test_ids_that_restart_after_an_id_reset_are_a_new_sequence(
    aggs: list[tuple[int, dict[str, Any]]],
) -> None:
    """After the duplicate filter's ``id_reset`` notice, the lower ids start a new sequence: the
    next record is measured from them, and a jump within the new sequence is a hole again."""
    async with rig() as r:
        c = r.contract
        assert r.engine.observe([ws_agg(c, t, p) for t, p in aggs[:300]]) is None
        first = ws_agg(c, *aggs[0])
        reset = Gap(
            venue=c.venue, symbol=c.symbol, native=c.native, exchange_ts=None, recv_ts=first.recv_ts,
            kind=GapKind.ID_RESET.value, reason="btcusdt@aggTrade: agg_id restarted",
            last_update_id=aggs[299][1]["a"], first_update_id=aggs[0][1]["a"], final_update_id=None,
            started_ts=first.recv_ts, data_channel="agg_trade",
        )  # fmt: skip
        assert r.engine.observe([reset, *(ws_agg(c, t, p) for t, p in aggs[:100])]) is None
        assert r.engine.stats()["holes"] == 0
        gaps = r.engine.observe([ws_agg(c, *aggs[150])])  # 100..149 skipped in the new sequence
        assert gaps is not None
        assert [(g.kind, g.first_update_id, g.final_update_id) for g in gaps if isinstance(g, Gap)] == [
            ("trade_gap", aggs[100][1]["a"], aggs[149][1]["a"])
        ]


@pytest.mark.asyncio
async def test_a_hole_is_filled_from_rest_page_by_page(aggs: list[tuple[int, dict[str, Any]]]) -> None:
    async with rig() as r:
        c = r.contract
        assert r.engine.observe([ws_agg(c, t, p) for t, p in aggs[:10]]) is None
        (t_after, after) = aggs[2510]
        gaps = r.engine.observe([ws_agg(c, t_after, after)])
        assert gaps is not None
        (opened,) = gaps
        assert isinstance(opened, Gap)
        first, last = aggs[10][1]["a"], aggs[2509][1]["a"]
        assert (opened.kind, opened.data_channel, opened.count) == ("trade_gap", "agg_trade", 2500)
        assert (opened.first_update_id, opened.final_update_id, opened.last_update_id) == (
            first,
            last,
            first - 1,
        )
        assert (opened.started_ts, opened.ended_ts) == (aggs[9][0], t_after)
        await r.settled()
        assert_rest_aggs(r.rows(), [p for _, p in aggs[10:2510]])
        (done,) = r.gaps("backfill")
        assert (done.count, done.first_update_id, done.final_update_id) == (2500, first, last)
        assert (done.started_ts, done.ended_ts) == (opened.started_ts, opened.ended_ts)
        assert done.reason == "2500 of 2500 ids from REST in 3 request(s)"
        assert r.gaps("unfilled") == []
        assert r.sim.stats().rest_requests["/fapi/v1/aggTrades"] == 3
        assert r.client.budget.acquired_weight == 1 + 3 * 20  # exchangeInfo, then three pages of 20
        assert r.engine.stats()["rows"] == 2500


@pytest.mark.asyncio
async def test_a_429_is_honoured_and_the_hole_still_fills(aggs: list[tuple[int, dict[str, Any]]]) -> None:
    async with rig() as r:
        r.sim.faults.rest_error("/fapi/v1/aggTrades", 429, count=1, retry_after=1)
        c = r.contract
        r.engine.observe([ws_agg(c, t, p) for t, p in aggs[:5]])
        r.engine.observe([ws_agg(c, *aggs[300])])
        await r.until(lambda: r.engine.filled_holes == 1)
        assert_rest_aggs(r.rows(), [p for _, p in aggs[5:300]])
        assert r.client.count_429 == 1
        assert r.sim.stats().rest_requests["/fapi/v1/aggTrades"] == 2  # refused once, then served
        assert r.client.budget.waited_s >= 0.9  # the host was paused for Retry-After


@pytest.mark.asyncio
async def test_5xx_past_the_clients_retries_is_retried_here(aggs: list[tuple[int, dict[str, Any]]]) -> None:
    async with rig() as r:
        r.sim.faults.rest_error("/fapi/v1/aggTrades", 503, count=6)  # > the client's 3 retries
        c = r.contract
        r.engine.observe([ws_agg(c, t, p) for t, p in aggs[:5]])
        r.engine.observe([ws_agg(c, *aggs[50])])
        await r.until(lambda: r.engine.filled_holes == 1)
        assert_rest_aggs(r.rows(), [p for _, p in aggs[5:50]])
        assert r.engine.failures >= 1
        assert "503" in (r.engine.last_error or "")


@pytest.mark.asyncio
async def test_a_refused_hole_stays_unfilled(aggs: list[tuple[int, dict[str, Any]]]) -> None:
    async with rig() as r:
        r.sim.faults.rest_error("/fapi/v1/aggTrades", 400, body='{"code":-1121,"msg":"Invalid symbol."}')
        c = r.contract
        r.engine.observe([ws_agg(c, t, p) for t, p in aggs[:5]])
        r.engine.observe([ws_agg(c, *aggs[50])])
        await r.until(lambda: bool(r.gaps("unfilled")))
        await r.settled()
        (unfilled,) = r.gaps("unfilled")
        assert unfilled.count == 45
        assert "REST refused" in unfilled.reason
        assert "-1121" in unfilled.reason
        assert r.rows() == []
        assert r.gaps("backfill") == []


@pytest.mark.asyncio
async def test_a_hole_older_than_max_age_is_only_logged(
    aggs: list[tuple[int, dict[str, Any]]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ingestd.backfill")
    async with rig(settings=BackfillSettings(max_age_s=5.0)) as r:
        c = r.contract
        r.engine.observe([ws_agg(c, *aggs[0])])
        far = aggs[-1]
        assert far[1]["T"] - aggs[0][1]["T"] > 60_000
        gaps = r.engine.observe([ws_agg(c, *far)])
        assert gaps is not None
        opened, unfilled = gaps
        assert isinstance(opened, Gap)
        assert isinstance(unfilled, Gap)
        assert (opened.kind, unfilled.kind, unfilled.count) == ("trade_gap", "unfilled", opened.count)
        assert "max_age_s" in unfilled.reason
        await r.settled()
        assert "/fapi/v1/aggTrades" not in r.sim.stats().rest_requests
        assert "not fetched" in caplog.text


# --------------------------------------------------------------------------- trades and the key


def spot_trades() -> list[tuple[int, dict[str, Any]]]:
    return [(ts, m["data"]) for ts, m in capture_lines(SPOT_TRADES) if m.get("stream", "").endswith("@trade")]


@pytest.mark.asyncio
async def test_spot_trades_without_a_key_are_unfilled_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ingestd.backfill")
    trades = spot_trades()
    async with rig(SPOT_TRADES, SPOT, channels=("trade", "agg_trade")) as r:
        c = r.contract
        for a, b in ((0, 10), (20, 30)):
            r.engine.observe([ws_trade(c, *trades[a])])
            gaps = r.engine.observe([ws_trade(c, *trades[b])])
            assert gaps is not None
            assert [g.kind for g in gaps if isinstance(g, Gap)] == ["trade_gap", "unfilled"]
            assert isinstance(gaps[1], Gap)
            assert gaps[1].count == b - a - 1
            assert "INGESTD_API_KEY" in gaps[1].reason
        assert caplog.text.count("cannot be backfilled without an API key") == 1
        await r.settled()
        assert "/api/v3/historicalTrades" not in r.sim.stats().rest_requests


@pytest.mark.asyncio
async def test_spot_trades_with_a_key_come_from_historical_trades() -> None:
    trades = spot_trades()
    async with rig(SPOT_TRADES, SPOT, channels=("trade",), api_key="test-key") as r:
        c = r.contract
        r.engine.observe([ws_trade(c, *trades[0])])
        r.engine.observe([ws_trade(c, *trades[1500])])
        await r.until(lambda: r.engine.filled_holes == 1)
        rows = r.rows()
        want = [p for _, p in trades[1:1500]]
        assert [x.trade_id for x in rows if isinstance(x, Trade)] == [p["t"] for p in want]
        for x, p in zip(rows, want, strict=True):
            assert isinstance(x, Trade)
            assert (x.price, x.qty, x.is_buyer_maker) == (float(p["p"]), float(p["q"]), p["m"])
            assert (x.transaction_ts, x.exchange_ts, x.source) == (p["T"] * MS, None, "rest")
        assert r.sim.stats().rest_requests["/api/v3/historicalTrades"] == 2  # 1000 + 499


# --------------------------------------------------------------------------- listings


@pytest.mark.asyncio
async def test_a_listed_contract_is_backfilled_from_its_first_trade(
    aggs: list[tuple[int, dict[str, Any]]],
) -> None:
    listing = [ListingChange(60.0, "BTCUSDT", listed=True)]
    # Not live: the sim's REST serves the listed window of the whole capture (from the listing on).
    async with rig(listings=listing) as r:
        assert r.sim.timeline is not None
        listed_at = r.sim.timeline.ts[0] + 60_000_000_000
        first = next(k for k, (t, _) in enumerate(aggs) if t >= listed_at)
        r.engine.listed(r.contract)
        k = first + 1700
        assert r.engine.observe([ws_agg(r.contract, *aggs[k])]) is None  # the start is looked up first
        await r.until(lambda: r.engine.filled_holes == 1)
        await r.settled()
        assert_rest_aggs(r.rows(), [p for _, p in aggs[first:k]])
        (opened,) = r.gaps("trade_gap")
        assert (opened.first_update_id, opened.final_update_id, opened.count) == (
            aggs[first][1]["a"],
            aggs[k - 1][1]["a"],
            1700,
        )
        assert opened.reason == "listed during the run"


@pytest.mark.asyncio
async def test_a_listing_is_backfilled_only_within_max_age(aggs: list[tuple[int, dict[str, Any]]]) -> None:
    async with rig(settings=BackfillSettings(max_age_s=10.0, retry_initial_s=0.05)) as r:
        r.engine.listed(r.contract)
        k = 4000
        bound = aggs[k][1]["T"] - 10_000
        r.engine.observe([ws_agg(r.contract, *aggs[k])])
        await r.until(lambda: r.engine.filled_holes == 1)
        await r.settled()
        want = [p for _, p in aggs[:k] if p["T"] >= bound]
        assert len(want) < k
        assert_rest_aggs(r.rows(), want)


# --------------------------------------------------------------------------- restart


async def store(data: Path, records: Sequence[AnyRecord]) -> None:
    writer = ParquetWriter(StorageSettings(data_dir=data, rotate_rows=150))
    await writer.start()
    await writer.consume(list(records))
    await writer.close()


@pytest.mark.asyncio
async def test_a_restart_fills_from_the_last_stored_id_and_the_holes_in_storage(
    aggs: list[tuple[int, dict[str, Any]]], tmp_path: Path
) -> None:
    async with rig() as r:
        c = r.contract
        data = tmp_path / "data"
        kept = aggs[:100] + aggs[150:400]
        await store(data, [ws_agg(c, t, p) for t, p in kept])
        (tail,) = stored_tails(data, c.venue, [(c.native, c.symbol)], ["agg_trade", "trade"], 3600)
        assert (tail.channel, tail.last_id, tail.files) == ("agg_trade", aggs[399][1]["a"], 3)
        assert tail.last_ts == aggs[399][1]["T"] * MS
        assert tail.last_recv == aggs[399][0]
        ((hole),) = tail.holes
        assert (hole.first, hole.last) == (aggs[100][1]["a"], aggs[149][1]["a"])
        assert (hole.before_recv, hole.after_recv) == (aggs[99][0], aggs[150][0])

        r.engine.restore([tail])
        gaps = r.engine.observe([ws_agg(c, *aggs[700])])
        assert gaps is not None
        opened = [g for g in gaps if isinstance(g, Gap)]
        assert [(g.first_update_id, g.final_update_id, g.reason) for g in opened] == [
            (aggs[100][1]["a"], aggs[149][1]["a"], "missing in storage"),
            (aggs[400][1]["a"], aggs[699][1]["a"], "since the last run stored"),
        ]
        await r.until(lambda: r.engine.filled_holes == 2)
        rows = sorted(r.rows(), key=lambda x: x.agg_id if isinstance(x, AggTrade) else 0)
        assert_rest_aggs(rows, [p for _, p in aggs[100:150] + aggs[400:700]])


def test_a_complete_store_reads_only_footers(aggs: list[tuple[int, dict[str, Any]]], tmp_path: Path) -> None:
    contract = BTC
    data = tmp_path / "data"
    asyncio.run(store(data, [ws_agg(contract, t, p) for t, p in aggs[:1000]]))
    (tail,) = stored_tails(data, "binance-usdm", [("BTCUSDT", "BTC-USDT-PERP")], ["agg_trade"], 3600)
    assert (tail.last_id, tail.holes, tail.files) == (aggs[999][1]["a"], (), 7)
    # Nothing older than max_age_s before the newest stored record is looked at.
    span_s = (aggs[999][0] - aggs[0][0]) / 1e9
    (short,) = stored_tails(data, "binance-usdm", [("BTCUSDT", "BTC-USDT-PERP")], ["agg_trade"], span_s / 3)
    assert short.files < tail.files
    assert stored_tails(data, "binance-usdm", [("ETHUSDT", "ETH-USDT-PERP")], ["agg_trade"], 3600) == []


def test_rest_rows_parse_to_records(aggs: list[tuple[int, dict[str, Any]]]) -> None:
    contract = BTC
    body = orjson.dumps([{k: p[k] for k in ("a", "p", "q", "f", "l", "T", "m", "nq")} for _, p in aggs[:3]])
    assert_rest_aggs(parse_agg_trades("binance-usdm", contract, body, 7), [p for _, p in aggs[:3]])
    with pytest.raises(ParseError, match="-1121"):
        parse_agg_trades("binance-usdm", contract, b'{"code":-1121,"msg":"Invalid symbol."}', 7)
    with pytest.raises(ParseError, match="aggTrades"):
        parse_agg_trades("binance-usdm", contract, b'[{"a":1}]', 7)


def test_real_rest_bodies_parse_field_by_field(realdata: Path) -> None:
    """Real spot REST bodies (nautilus_trader, BTCUSDT 2021-10-22) → REST records."""
    spot_btc = Contract("binance-spot", "BTCUSDT", "BTC-USDT", "BTC", "USDT", 0.01, 2, 0.00001, 0.00001)
    folder = realdata / "nautilus_trader"
    body = (folder / "http_spot_market_agg_trades.json").read_bytes()
    records = parse_agg_trades("binance-spot", spot_btc, body, 11)
    rows = orjson.loads(body)
    assert len(records) == len(rows) > 0
    for r, p in zip(records, rows, strict=True):
        assert (r.agg_id, r.first_trade_id, r.last_trade_id, r.is_buyer_maker) == (
            p["a"],
            p["f"],
            p["l"],
            p["m"],
        )
        assert (r.price, r.qty, r.transaction_ts) == (float(p["p"]), float(p["q"]), p["T"] * MS)
        assert (r.exchange_ts, r.recv_ts, r.source, r.normal_qty) == (None, 11, "rest", None)
    body = (folder / "http_spot_market_historical_trades.json").read_bytes()
    trades = parse_historical_trades("binance-spot", spot_btc, body, 12)
    rows = orjson.loads(body)
    assert len(trades) == len(rows) > 0
    for t, p in zip(trades, rows, strict=True):
        assert (t.trade_id, t.price, t.qty) == (p["id"], float(p["price"]), float(p["qty"]))
        assert (t.is_buyer_maker, t.transaction_ts, t.exchange_ts, t.source) == (
            p["isBuyerMaker"],
            p["time"] * MS,
            None,
            "rest",
        )


def test_overlapping_stored_files_do_not_hide_a_hole(
    aggs: list[tuple[int, dict[str, Any]]], tmp_path: Path
) -> None:
    """Two runs stored the same ids (a backfill re-stored them): the footers' row count then
    matches the id span although ids are missing; the hole is still found."""
    data = tmp_path / "data"
    asyncio.run(store(data, [ws_agg(BTC, t, p) for t, p in aggs[:100] + aggs[150:400]]))
    asyncio.run(store(data, [ws_agg(BTC, t, p) for t, p in aggs[50:100]]))  # 50 ids stored twice
    (tail,) = stored_tails(data, "binance-usdm", [("BTCUSDT", "BTC-USDT-PERP")], ["agg_trade"], 3600)
    assert tail.last_id == aggs[399][1]["a"]
    assert [(h.first, h.last) for h in tail.holes] == [(aggs[100][1]["a"], aggs[149][1]["a"])]
    assert (tail.holes[0].before_recv, tail.holes[0].after_recv) == (aggs[99][0], aggs[150][0])


@pytest.mark.asyncio
async def test_close_lets_a_batch_being_emitted_finish(aggs: list[tuple[int, dict[str, Any]]]) -> None:
    """Shutdown while a page of the backfill is inside ``emit`` (its consumers part-way through
    it): close() waits for that batch instead of cancelling it half-emitted, and starts none after."""
    async with SimVenue([BUNDLED_CAPTURE]) as sim:
        client = RestClient(sim.rest_url, USDM, retry_initial_s=0.01, retry_max_s=0.05)
        try:
            contracts = await discover(client, USDM)
            (c,) = contracts
            entered, release = asyncio.Event(), asyncio.Event()
            done: list[list[AnyRecord]] = []

            async def emit(batch: Sequence[AnyRecord]) -> None:
                if any(isinstance(x, AggTrade) for x in batch):
                    entered.set()
                    await release.wait()  # a slow consumer; the batch must not be cut here
                done.append(list(batch))

            engine = Backfiller(client, USDM.name, contracts, emit, FAST, ("agg_trade",))
            task = asyncio.create_task(engine.run())
            engine.observe([ws_agg(c, *aggs[0])])
            engine.observe([ws_agg(c, *aggs[2001])])
            await entered.wait()
            closing = asyncio.create_task(engine.close())
            await wait_for(lambda: engine.stats()["active"] == 1 and not closing.done())
            release.set()
            await closing
            await task
        finally:
            await client.close()
    pages = [b for b in done if any(isinstance(x, AggTrade) for x in b)]
    assert len(pages) == 1  # the first page, whole; no page started after close()
    assert_rest_aggs(pages[0], [p for _, p in aggs[1 : 1 + len(pages[0])]])


@pytest.mark.asyncio
async def test_a_listing_whose_history_fetch_fails_is_written_unfilled(
    aggs: list[tuple[int, dict[str, Any]]],
) -> None:
    """The venue refuses the listed contract's history: the ids before its first stream record
    are not fetched, and the gap log says so (an ``unfilled`` record up to that record), not
    only a log line."""
    async with rig() as r:
        r.sim.faults.rest_error("/fapi/v1/aggTrades", 400, body='{"code":-1121,"msg":"Invalid symbol."}')
        r.engine.listed(r.contract)
        k = 1700
        assert r.engine.observe([ws_agg(r.contract, *aggs[k])]) is None
        await r.until(lambda: bool(r.gaps("unfilled")))
        await r.settled()
        (unfilled,) = r.gaps("unfilled")
        assert (unfilled.data_channel, unfilled.native) == ("agg_trade", "BTCUSDT")
        assert (unfilled.first_update_id, unfilled.final_update_id) == (None, aggs[k - 1][1]["a"])
        assert unfilled.ended_ts == aggs[k][0]
        assert "REST refused" in unfilled.reason
        assert "-1121" in unfilled.reason
        assert r.rows() == []
        assert r.engine.stats()["unfilled_holes"] == 1


@pytest.mark.asyncio
async def test_a_contract_listed_at_runtime_resumes_from_what_the_data_dir_stored(
    aggs: list[tuple[int, dict[str, Any]]], tmp_path: Path
) -> None:
    """A contract not traded at start-up but stored by an earlier run (listed again since): its
    listing resumes from the stored tail, so only the ids after it are fetched (not its whole
    history again) and the holes stored within max_age_s are filled."""
    async with rig() as r:
        c = r.contract
        data = tmp_path / "data"
        await r.engine.resume_from_storage(data)  # start-up: nothing stored of it then
        # Stored since (by the earlier run, as far as this listing can tell): read at the listing.
        await store(data, [ws_agg(c, t, p) for t, p in aggs[:100] + aggs[150:400]])
        emitted: list[AnyRecord] = []

        async def emit(batch: Sequence[AnyRecord]) -> None:
            emitted.extend(batch)

        none = ContractSet(c.venue, ())
        followers = Followers((), StreamSettings(), backfill=r.engine)
        watcher = ListingWatcher(
            r.client, USDM, none, followers, emit, refresh_s=3600, narrow=lambda found: found
        )
        change = await watcher.apply(ContractSet(c.venue, (c,)))
        assert [x.native for x in change.listed] == [c.native]
        gaps = r.engine.observe([ws_agg(c, *aggs[700])])
        assert gaps is not None
        opened = [g for g in gaps if isinstance(g, Gap)]
        assert [(g.first_update_id, g.final_update_id, g.reason) for g in opened] == [
            (aggs[100][1]["a"], aggs[149][1]["a"], "missing in storage"),
            (aggs[400][1]["a"], aggs[699][1]["a"], "since the last run stored"),
        ]
        await r.until(lambda: r.engine.filled_holes == 2)
        await r.settled()
        rows = sorted(r.rows(), key=lambda x: x.agg_id if isinstance(x, AggTrade) else 0)
        assert_rest_aggs(rows, [p for _, p in aggs[100:150] + aggs[400:700]])
