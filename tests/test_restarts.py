"""Fewer wasted restarts and requests (issue 13).

* A snapshot request for a symbol whose fetch is already in flight joins that fetch: the
  request weight is not spent twice. A request made while the fetched snapshot is being
  emitted (a book finding it stale) is a new request, never swallowed.
* The Parquet flusher restarts with a growing delay when it keeps dying, instead of spinning.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import pytest

from ingestd.config import StorageSettings
from ingestd.consumers.parquet import FLUSHER_RESTART_MIN_S, ParquetWriter
from ingestd.producers.rest import RestClient
from ingestd.producers.snapshots import SnapshotProducer
from ingestd.records import AnyRecord, DepthSnapshot
from ingestd.venues.binance.endpoints import USDM
from ingestd.venues.binance.symbols import ContractSet, parse_exchange_info
from tests.faults_util import until
from tests.test_rest import FakeBinance, Reply, big_budget, cryptofeed_bodies
from tests.test_snapshots import CRYPTOFEED_SYMBOLS, futures_depth_bodies

pytestmark = pytest.mark.asyncio


@pytest.fixture
def usdm_contracts() -> ContractSet:
    info = cryptofeed_bodies("BINANCE_FUTURES.0")["https://fapi.binance.com/fapi/v1/exchangeInfo"]
    return parse_exchange_info("binance-usdm", json.loads(info)).select(["BTCUSDT", *CRYPTOFEED_SYMBOLS])


class Sink:
    def __init__(self) -> None:
        self.snapshots: list[DepthSnapshot] = []

    async def __call__(self, batch: Sequence[AnyRecord]) -> None:
        self.snapshots.extend(r for r in batch if isinstance(r, DepthSnapshot))


async def test_a_request_for_a_snapshot_in_flight_joins_it(usdm_contracts: ContractSet) -> None:
    fake = FakeBinance(USDM, depth=futures_depth_bodies())
    # The venue takes its time over SUSHIUSDT: the book asks again (urgently) meanwhile.
    fake.by_symbol["SUSHIUSDT"] = deque([Reply(delay_s=0.5)])
    await fake.start()
    try:
        async with RestClient(fake.url, USDM, budget=big_budget(), max_retries=0) as client:
            sink = Sink()
            producer = SnapshotProducer(client, USDM, usdm_contracts, sink, limit=1000, concurrency=2)
            run = asyncio.ensure_future(producer.run())
            producer.request("SUSHIUSDT")
            await until(lambda: producer.stats()["in_flight"] == 1 and len(fake.seen) == 1, what="in flight")
            producer.request("SUSHIUSDT", urgent=True)
            producer.request("SUSHIUSDT")
            await until(lambda: len(sink.snapshots) == 1, what="the snapshot")
            stats = producer.stats()
            await producer.close()
            await run
    finally:
        await fake.close()
    sent = [s.query["symbol"] for s in fake.seen]
    assert sent == ["SUSHIUSDT"], f"{len(sent)} requests for one snapshot"
    assert (stats["requested"], stats["coalesced"], stats["fetched"], stats["pending"]) == (3, 2, 1, 0)


async def test_a_request_made_while_the_snapshot_is_emitted_is_a_new_one(usdm_contracts: ContractSet) -> None:
    """The book gets the snapshot inside ``emit``; finding it stale, it asks again there. That
    request must lead to a new fetch (the old one is over), not join the one that answered."""
    fake = FakeBinance(USDM, depth=futures_depth_bodies())
    await fake.start()
    try:
        async with RestClient(fake.url, USDM, budget=big_budget(), max_retries=0) as client:
            got: list[DepthSnapshot] = []

            async def stale_once(batch: Sequence[AnyRecord]) -> None:
                got.extend(r for r in batch if isinstance(r, DepthSnapshot))
                if len(got) == 1:
                    producer.request("KEEPUSDT", urgent=True)

            producer = SnapshotProducer(client, USDM, usdm_contracts, stale_once, limit=1000)
            run = asyncio.ensure_future(producer.run())
            producer.request("KEEPUSDT")
            await until(lambda: len(got) == 2, what="a second snapshot")
            await producer.close()
            await run
    finally:
        await fake.close()
    assert [s.query["symbol"] for s in fake.seen] == ["KEEPUSDT", "KEEPUSDT"]


async def test_a_flusher_that_keeps_dying_is_restarted_with_a_growing_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deterministic flusher failure (here: sealing raises) must not restart the flusher at the
    pace of its own tick: each restart waits longer than the one before."""
    restarts: list[float] = []
    loop = asyncio.get_running_loop()

    def broken(self: ParquetWriter, now: float) -> None:
        raise RuntimeError("a bug in the flusher")

    monkeypatch.setattr(ParquetWriter, "_seal_aged", broken)
    # A tick of 10 ms: without a backoff the flusher would die and restart 100 times a second.
    writer = ParquetWriter(StorageSettings(data_dir=tmp_path, rotate_seconds=0.04), retry_interval_s=0.01)
    start = ParquetWriter._start_flusher

    def counted(self: ParquetWriter) -> None:
        restarts.append(loop.time())
        start(self)

    monkeypatch.setattr(ParquetWriter, "_start_flusher", counted)
    await writer.start()
    await until(lambda: len(restarts) >= 5, timeout=20, what="four restarts")
    await writer.close()
    gaps = [b - a for a, b in itertools.pairwise(restarts)][:4]
    shown = [round(g, 3) for g in gaps]
    # The first restart comes at once; then each waits at least the minimum, doubling.
    assert gaps[1] >= FLUSHER_RESTART_MIN_S, f"restarts {shown} s apart"
    assert gaps[2] >= 2 * FLUSHER_RESTART_MIN_S, f"restarts {shown} s apart"
    assert gaps[3] >= 4 * FLUSHER_RESTART_MIN_S, f"restarts {shown} s apart"
    assert writer.stats()["flusher_restarts"] == writer.flusher_restarts >= 4
