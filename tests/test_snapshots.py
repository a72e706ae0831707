"""SnapshotProducer against a local venue serving real recorded depth snapshots."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import pytest_asyncio

from ingestd.errors import ConfigError
from ingestd.producers.budget import WeightBudget
from ingestd.producers.rest import RestClient
from ingestd.producers.snapshots import SnapshotProducer, validate_limit
from ingestd.records import AnyRecord, DepthSnapshot, RawFrame
from ingestd.venues.binance.endpoints import SPOT, USDM
from ingestd.venues.binance.symbols import ContractSet, parse_exchange_info
from tests.ops import wait_for as until
from tests.test_rest import FakeBinance, Reply, big_budget, cryptofeed_bodies, hftbacktest_snapshot, nautilus

CRYPTOFEED_SYMBOLS = ("SUSHIUSDT", "AKROUSDT", "KEEPUSDT", "CTKUSDT")


class Sink:
    """The ``emit`` callable: keeps every batch."""

    def __init__(self) -> None:
        self.batches: list[list[AnyRecord]] = []
        self.arrived = asyncio.Event()

    async def __call__(self, batch: Sequence[AnyRecord]) -> None:
        self.batches.append(list(batch))
        self.arrived.set()

    def snapshots(self) -> list[DepthSnapshot]:
        return [r for b in self.batches for r in b if isinstance(r, DepthSnapshot)]

    async def wait_for(self, n: int, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.snapshots()) < n:
                self.arrived.clear()
                await self.arrived.wait()


def futures_depth_bodies() -> dict[str, bytes]:
    """Real ``/fapi/v1/depth?limit=1000`` bodies: 4 from cryptofeed (2021), BTCUSDT from
    hftbacktest (2024)."""
    out: dict[str, bytes] = {}
    for url, body in cryptofeed_bodies("BINANCE_FUTURES.http.0.0").items():
        out[url.split("symbol=")[1].split("&")[0]] = body
    out["BTCUSDT"] = hftbacktest_snapshot("usdm_btcusdt_20240808.gz")
    return out


@pytest.fixture(scope="module")
def usdm_contracts() -> ContractSet:
    info = cryptofeed_bodies("BINANCE_FUTURES.0")["https://fapi.binance.com/fapi/v1/exchangeInfo"]
    return parse_exchange_info("binance-usdm", json.loads(info)).select(["BTCUSDT", *CRYPTOFEED_SYMBOLS])


@pytest_asyncio.fixture
async def venue() -> AsyncIterator[FakeBinance]:
    fake = FakeBinance(USDM, depth=futures_depth_bodies())
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest_asyncio.fixture
async def client(venue: FakeBinance) -> AsyncIterator[RestClient]:
    c = RestClient(venue.url, USDM, budget=big_budget(), max_retries=0)
    try:
        yield c
    finally:
        await c.close()


def levels(side: list[list[str]]) -> list[tuple[float, float]]:
    return [(float(p), float(q)) for p, q in side]


async def run_until(producer: SnapshotProducer, sink: Sink, n: int) -> None:
    task = asyncio.create_task(producer.run())
    try:
        await sink.wait_for(n)
    finally:
        await producer.close()
        await task


@pytest.mark.asyncio
async def test_snapshots_equal_the_served_bodies(
    venue: FakeBinance, client: RestClient, usdm_contracts: ContractSet
) -> None:
    sink = Sink()
    producer = SnapshotProducer(client, USDM, usdm_contracts, sink, limit=1000, raw=True)
    before = time.time_ns()
    for native in usdm_contracts.natives:
        producer.request(native)
    await run_until(producer, sink, len(usdm_contracts))
    after = time.time_ns()

    assert len(sink.batches) == 5
    for batch in sink.batches:
        raw, snap = batch
        assert isinstance(raw, RawFrame)
        assert isinstance(snap, DepthSnapshot)
        body = venue.depth[snap.native]
        assert raw.data == body
        assert raw.source == f"/fapi/v1/depth?symbol={snap.native}&limit=1000"
        assert raw.venue == "binance-usdm"
        assert raw.recv_ts == snap.recv_ts
        assert before <= snap.recv_ts <= after
        served = json.loads(body)
        contract = usdm_contracts.get(snap.native)
        assert contract is not None
        assert snap.venue == "binance-usdm"
        assert snap.symbol == contract.symbol
        assert snap.last_update_id == served["lastUpdateId"]
        assert snap.exchange_ts == served["E"] * 1_000_000
        assert snap.transaction_ts == served["T"] * 1_000_000
        assert snap.bids == levels(served["bids"])
        assert snap.asks == levels(served["asks"])
    btc = next(s for s in sink.snapshots() if s.native == "BTCUSDT")
    assert btc.symbol == "BTC-USDT-PERP"
    assert btc.last_update_id == 5123107852948
    assert btc.bids[0] == (61800.2, 2.909)
    assert len(btc.bids) == len(btc.asks) == 1000
    for seen in venue.seen:
        assert seen.path == "/fapi/v1/depth"
        assert seen.query["limit"] == "1000"
    stats = producer.stats()
    assert (stats["requested"], stats["fetched"], stats["failed"], stats["pending"]) == (5, 5, 0, 0)
    assert stats["weight"] == 20
    assert stats["last_latency_s"] is not None
    assert client.stats()["used_weight"] == 100  # five weight-20 snapshots, as the venue counts


@pytest.mark.asyncio
async def test_spot_snapshot_without_event_times() -> None:
    body = nautilus("http_spot_market_depth.json")
    contracts = parse_exchange_info(
        "binance-spot", json.loads(nautilus("http_spot_market_exchange_info.json"))
    )
    fake = FakeBinance(SPOT, depth={"BTCUSDT": body})
    await fake.start()
    client = RestClient(fake.url, SPOT, budget=big_budget())
    sink = Sink()
    producer = SnapshotProducer(client, SPOT, contracts, sink, limit=100)
    try:
        producer.request("BTCUSDT")
        await run_until(producer, sink, 1)
    finally:
        await client.close()
        await fake.close()
    (snap,) = sink.snapshots()
    served = json.loads(body)
    assert len(sink.batches[0]) == 1  # no raw frame unless asked
    assert snap.symbol == "BTC-USDT"
    assert snap.last_update_id == served["lastUpdateId"] == 14527958487
    assert snap.exchange_ts is None
    assert snap.transaction_ts is None
    assert snap.bids == levels(served["bids"])
    assert snap.asks == levels(served["asks"])
    assert fake.seen[0].query == {"symbol": "BTCUSDT", "limit": "100"}


@pytest.mark.asyncio
async def test_urgent_first_and_duplicates_coalesced(
    venue: FakeBinance, client: RestClient, usdm_contracts: ContractSet
) -> None:
    sink = Sink()
    producer = SnapshotProducer(client, USDM, usdm_contracts, sink, limit=1000, concurrency=1)
    producer.request("SUSHIUSDT")
    producer.request("AKROUSDT")
    producer.request("KEEPUSDT")
    producer.request("SUSHIUSDT")  # already pending: coalesced
    producer.request("KEEPUSDT", urgent=True)  # moves ahead
    producer.request("CTKUSDT", urgent=True)
    producer.request("CTKUSDT", urgent=True)  # coalesced
    assert producer.stats()["pending"] == 4
    assert producer.stats()["urgent_pending"] == 2
    await run_until(producer, sink, 4)
    assert [s.query["symbol"] for s in venue.seen] == ["KEEPUSDT", "CTKUSDT", "SUSHIUSDT", "AKROUSDT"]
    assert [s.native for s in sink.snapshots()] == ["KEEPUSDT", "CTKUSDT", "SUSHIUSDT", "AKROUSDT"]
    stats = producer.stats()
    assert stats["requested"] == 7
    assert stats["coalesced"] == 3
    assert stats["fetched"] == 4


@pytest.mark.asyncio
async def test_urgent_request_overtakes_routine_ones(venue: FakeBinance, usdm_contracts: ContractSet) -> None:
    # 160 weight/s, 40 per 0.25 s window: two weight-20 snapshots at once, then one per 0.125 s.
    client = RestClient(venue.url, USDM, budget=WeightBudget(40, window_s=0.25))
    sink = Sink()
    producer = SnapshotProducer(client, USDM, usdm_contracts, sink, limit=1000, concurrency=1)
    try:
        for native in ("SUSHIUSDT", "AKROUSDT", "KEEPUSDT", "CTKUSDT"):
            producer.request(native)
        task = asyncio.create_task(producer.run())
        await sink.wait_for(2)  # KEEPUSDT is now waiting for budget, CTKUSDT queued
        producer.request("BTCUSDT", urgent=True)
        await sink.wait_for(5)
        await producer.close()
        await task
    finally:
        await client.close()
    # BTCUSDT was requested last but is fetched before the routine one still queued.
    assert [s.query["symbol"] for s in venue.seen] == [
        "SUSHIUSDT",
        "AKROUSDT",
        "KEEPUSDT",
        "BTCUSDT",
        "CTKUSDT",
    ]


@pytest.mark.asyncio
async def test_failed_fetch_is_retried_and_logged_once(
    venue: FakeBinance, client: RestClient, usdm_contracts: ContractSet, caplog: pytest.LogCaptureFixture
) -> None:
    venue.by_symbol["AKROUSDT"] = deque(
        [
            Reply(status=500, body=b'{"code":-1000,"msg":"unknown error"}'),
            Reply(status=200, body=b'{"code":-1121,"msg":"Invalid symbol."}'),
            Reply(status=200, body=b"<html>"),
        ]
    )
    caplog.set_level(logging.INFO, logger="ingestd.snapshots")
    sink = Sink()
    producer = SnapshotProducer(
        client, USDM, usdm_contracts, sink, limit=500, retry_initial_s=0.02, retry_max_s=0.05
    )
    producer.request("AKROUSDT")
    producer.request("SUSHIUSDT")
    await run_until(producer, sink, 2)
    akro = [s for s in venue.seen if s.query["symbol"] == "AKROUSDT"]
    assert len(akro) == 4  # three failures, then the real body
    assert {s.native for s in sink.snapshots()} == {"AKROUSDT", "SUSHIUSDT"}
    stats = producer.stats()
    assert stats["failed"] == 3
    assert stats["fetched"] == 2
    assert stats["requested"] == 2  # retries are not new requests
    assert "AKROUSDT" in str(stats["last_error"])
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("snapshot fetch failing" in m for m in msgs) == 1
    assert sum("recovered after 3 failed" in m for m in msgs) == 1


@pytest.mark.asyncio
async def test_request_during_scheduled_retry_joins_it(
    venue: FakeBinance, client: RestClient, usdm_contracts: ContractSet
) -> None:
    venue.by_symbol["CTKUSDT"] = deque([Reply(status=503, body=b"")])
    sink = Sink()
    producer = SnapshotProducer(client, USDM, usdm_contracts, sink, limit=1000, retry_initial_s=0.3)
    producer.request("CTKUSDT")
    task = asyncio.create_task(producer.run())
    try:
        await until(lambda: producer.stats()["failed"] > 0, what="the first failure")
        producer.request("CTKUSDT", urgent=True)
        producer.request("CTKUSDT")
        assert producer.stats()["pending"] == 1
        await sink.wait_for(1)
    finally:
        await producer.close()
        await task
    assert len(venue.seen) == 2


@pytest.mark.asyncio
async def test_ban_pauses_the_producer_without_crashing(
    venue: FakeBinance, client: RestClient, usdm_contracts: ContractSet
) -> None:
    venue.script.append(Reply(status=418, headers={"Retry-After": "1"}, body=b""))
    sink = Sink()
    producer = SnapshotProducer(client, USDM, usdm_contracts, sink, limit=1000, concurrency=1)
    producer.request("SUSHIUSDT")
    producer.request("KEEPUSDT")
    started = time.monotonic()
    await run_until(producer, sink, 2)
    assert time.monotonic() - started >= 1.0
    # One request hit the ban; nothing reached the venue until it was over.
    first, *rest = venue.seen
    assert len(rest) == 2
    assert all(s.at - first.at >= 1.0 for s in rest)
    assert {s.native for s in sink.snapshots()} == {"SUSHIUSDT", "KEEPUSDT"}
    assert producer.stats()["failed"] >= 1


@pytest.mark.asyncio
async def test_periodic_polling(venue: FakeBinance, client: RestClient, usdm_contracts: ContractSet) -> None:
    sink = Sink()
    two = usdm_contracts.select(["SUSHIUSDT", "CTKUSDT"])
    producer = SnapshotProducer(client, USDM, two, sink, limit=1000, poll_interval_s=0.1)
    await run_until(producer, sink, 6)
    counts = {n: sum(1 for s in venue.seen if s.query["symbol"] == n) for n in two.natives}
    assert all(c >= 3 for c in counts.values())


@pytest.mark.asyncio
async def test_close_is_idempotent_and_leaves_no_task(
    client: RestClient, usdm_contracts: ContractSet
) -> None:
    producer = SnapshotProducer(client, USDM, usdm_contracts, Sink(), limit=None, poll_interval_s=30)
    assert producer.limit == 1000
    before = asyncio.all_tasks()
    task = asyncio.create_task(producer.run())
    await asyncio.sleep(0)  # one loop step: run() is under way (close must work at any point)
    await producer.close()
    await producer.close()
    await asyncio.wait_for(task, 30)
    assert asyncio.all_tasks() == before
    producer.request("BTCUSDT")  # ignored once closed
    assert producer.stats()["pending"] == 0


def test_limit_is_validated(usdm_contracts: ContractSet) -> None:
    assert validate_limit(USDM, None) == 1000
    assert validate_limit(USDM, 500) == 500
    assert validate_limit(SPOT, None) == 5000
    assert validate_limit(SPOT, 1234) == 1234
    with pytest.raises(ConfigError, match=r"allowed: 5, 10, 20, 50, 100, 500, 1000") as info:
        validate_limit(USDM, 200)
    assert info.value.key == "snapshots.limit"
    with pytest.raises(ConfigError, match=r"allowed: 1\.\.5000"):
        validate_limit(SPOT, 5001)


@pytest.mark.asyncio
async def test_unknown_symbol_and_bad_limit_rejected(client: RestClient, usdm_contracts: ContractSet) -> None:
    sink: Any = Sink()
    with pytest.raises(ConfigError):
        SnapshotProducer(client, USDM, usdm_contracts, sink, limit=7)
    producer = SnapshotProducer(client, USDM, usdm_contracts, sink, limit=5)
    assert producer.weight == 2
    with pytest.raises(ValueError, match="ETHUSDT"):
        producer.request("ETHUSDT")
    await producer.close()
