"""A batch reaches every consumer or is counted lost for each (issue 13, first edge).

A publisher stuck behind a full blocking queue (storage) has already handed its batch to the
non-blocking consumers (hooks, NATS) and, through the book manager, to the books. Cancelling it
there (a producer's ``close()``, the shutdown deadline) must neither leave storage without the
batch silently nor cut a producer's batch in half: producers finish their in-flight emit on
close, and a publish cut anyway is either completed or counted for each consumer that missed it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ingestd.app import Daemon
from ingestd.bus import Bus, OverflowPolicy
from ingestd.consumers.parquet import ParquetWriter
from ingestd.observe.records import clock_sample
from ingestd.producers.clock import ClockEstimate, ClockSync
from ingestd.producers.discovery import discover
from ingestd.producers.pollers import POLLS, PollerSet, PollerSettings
from ingestd.producers.rest import RestClient
from ingestd.producers.snapshots import SnapshotProducer
from ingestd.records import AnyRecord, DepthSnapshot, Record, Trade
from ingestd.sim import SimVenue
from ingestd.venues.binance.endpoints import USDM
from ingestd.venues.binance.symbols import ContractSet, parse_exchange_info
from tests.faults_util import CF_FUTURES, fault_settings, read_rows, real_capture, running, until
from tests.test_bus import Collect, trade
from tests.test_rest import FakeBinance, big_budget, cryptofeed_bodies
from tests.test_snapshots import CRYPTOFEED_SYMBOLS, futures_depth_bodies

pytestmark = pytest.mark.asyncio


class Stuck(Collect):
    """A blocking consumer (storage) that takes one batch and then waits for ``release``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.release = asyncio.Event()

    async def consume(self, batch: list[AnyRecord]) -> None:
        await self.release.wait()
        await super().consume(batch)


def ids(c: Collect) -> list[int]:
    return [r.trade_id for r in c.got if isinstance(r, Trade)]


async def test_a_publish_cancelled_behind_full_storage_still_reaches_storage() -> None:
    """The hook got batch 2 while storage was full; the publisher is then cancelled (a producer
    closed at the deadline). Storage must still get batch 2, or count it lost: never neither."""
    bus = Bus()
    storage, hook = Stuck("storage"), Collect("hook")
    bus.attach(storage, maxsize=1, policy=OverflowPolicy.BLOCK)
    bus.attach(hook, maxsize=100, policy=OverflowPolicy.DROP_OLDEST)
    await bus.start()
    await bus.publish([trade(0)])
    await until(lambda: bus.stats()["consumers"]["storage"]["inflight"] == 1, what="storage busy")
    await bus.publish([trade(1)])  # storage's queue is full now
    blocked = asyncio.ensure_future(bus.publish([trade(2)]))
    await until(lambda: ids(hook) == [0, 1, 2], what="the hook has batch 2")
    assert not blocked.done()
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    storage.release.set()
    await bus.close()
    lost = bus.stats()["consumers"]["storage"]["lost_at_close"]
    assert ids(hook) == [0, 1, 2]
    assert (ids(storage), lost) == ([0, 1, 2], 0), f"storage got {ids(storage)}, {lost} counted lost"


async def test_a_publish_refused_by_closed_queues_is_counted_for_each_consumer_that_missed_it() -> None:
    """A late publisher (a gap record published from a background task) meets queues that the
    bus's close already shut: the batch is counted lost for every consumer it did not reach."""
    bus = Bus()
    first, second, hook = Stuck("first"), Collect("second"), Collect("hook")
    bus.attach(first, maxsize=1, policy=OverflowPolicy.BLOCK)
    bus.attach(second, maxsize=100, policy=OverflowPolicy.BLOCK)
    bus.attach(hook, maxsize=100, policy=OverflowPolicy.DROP_OLDEST)
    await bus.start()
    await bus.publish([trade(0)])
    await until(lambda: bus.stats()["consumers"]["first"]["inflight"] == 1, what="first busy")
    await bus.publish([trade(1)])
    late = asyncio.ensure_future(bus.publish([trade(2), trade(3)]))
    await until(lambda: ids(hook) == [0, 1, 2, 3], what="the hook has the late batch")
    closing = asyncio.ensure_future(bus.close())
    with pytest.raises(Exception, match="closed"):
        await late
    first.release.set()
    await closing
    consumers = bus.stats()["consumers"]
    assert ids(first) == [0, 1]
    assert ids(second) == [0, 1]
    # "first" refused it (closed while blocked), "second" was never offered it: 2 records each.
    assert (consumers["first"]["lost_at_close"], consumers["second"]["lost_at_close"]) == (2, 2)
    assert consumers["hook"]["lost_at_close"] == 0


class Gate:
    """An ``emit`` that holds each batch until ``release`` (a full storage queue behind it)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.delivered: list[AnyRecord] = []
        self.cancelled = 0

    async def __call__(self, batch: Sequence[AnyRecord]) -> None:
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.delivered.extend(batch)


async def _close_while_emitting(owner: Any, gate: Gate) -> None:
    """Close ``owner`` while its emit is held; the close must wait for the batch, not cut it."""
    await asyncio.wait_for(gate.entered.wait(), 10)
    closing = asyncio.ensure_future(owner.close())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not closing.done(), "close() returned with a batch still in emit"
    gate.release.set()
    await asyncio.wait_for(closing, 10)
    assert gate.cancelled == 0, "close() cancelled the producer in the middle of its emit"


@pytest.fixture
def usdm_contracts() -> ContractSet:
    info = cryptofeed_bodies("BINANCE_FUTURES.0")["https://fapi.binance.com/fapi/v1/exchangeInfo"]
    return parse_exchange_info("binance-usdm", json.loads(info)).select(["BTCUSDT", *CRYPTOFEED_SYMBOLS])


async def test_snapshot_producer_close_finishes_the_snapshot_in_emit(usdm_contracts: ContractSet) -> None:
    fake = FakeBinance(USDM, depth=futures_depth_bodies())
    await fake.start()
    try:
        async with RestClient(fake.url, USDM, budget=big_budget(), max_retries=0) as client:
            gate = Gate()
            producer = SnapshotProducer(client, USDM, usdm_contracts, gate, limit=1000, concurrency=1)
            run = asyncio.ensure_future(producer.run())
            producer.request("BTCUSDT")
            await _close_while_emitting(producer, gate)
            await asyncio.wait_for(run, 10)
    finally:
        await fake.close()
    assert [r.native for r in gate.delivered if isinstance(r, DepthSnapshot)] == ["BTCUSDT"]
    assert producer.stats()["emitted"] == 1


async def test_snapshot_close_cut_by_the_deadline_leaves_no_task(usdm_contracts: ContractSet) -> None:
    fake = FakeBinance(USDM, depth=futures_depth_bodies())
    await fake.start()
    try:
        async with RestClient(fake.url, USDM, budget=big_budget(), max_retries=0) as client:
            gate = Gate()
            producer = SnapshotProducer(client, USDM, usdm_contracts, gate, limit=1000, concurrency=2)
            before = asyncio.all_tasks()
            run = asyncio.ensure_future(producer.run())
            producer.request("BTCUSDT")
            await asyncio.wait_for(gate.entered.wait(), 10)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await producer.close()  # the emit never finishes: the deadline cuts it
            await asyncio.wait_for(run, 10)
            assert gate.cancelled == 1
            left = [t.get_name() for t in asyncio.all_tasks() - before if t.get_name().startswith("snap")]
            assert left == []
    finally:
        await fake.close()


async def test_pollers_close_finishes_the_batch_in_emit(bundled_capture: Path) -> None:
    gate = Gate()
    async with SimVenue([bundled_capture]) as sim, RestClient(sim.rest_url, USDM) as client:
        contracts = await discover(client, USDM)
        pollers = PollerSet(client, USDM, contracts, gate, PollerSettings(premium_index_s=60))
        run = asyncio.ensure_future(pollers.run())
        await _close_while_emitting(pollers, gate)
        await asyncio.wait_for(run, 10)
    assert [type(r).__name__ for r in gate.delivered] == ["PremiumIndex"]
    assert {p.key for p in POLLS} >= {"premium_index_s"}


async def test_clock_close_finishes_the_sample_in_emit() -> None:
    fake = FakeBinance(USDM)
    await fake.start()
    try:
        async with RestClient(fake.url, USDM, budget=big_budget(), max_retries=0) as client:
            gate = Gate()

            async def on_estimate(est: ClockEstimate) -> None:
                await gate([_sample(est)])

            clock = ClockSync(client, USDM, samples=1, on_estimate=on_estimate)
            clock.start()
            await _close_while_emitting(clock, gate)
    finally:
        await fake.close()
    assert len(gate.delivered) == 1


def _sample(est: ClockEstimate) -> Record:
    return clock_sample("binance-usdm", "127.0.0.1", est)


async def test_snapshots_behind_full_storage_at_shutdown_are_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scenario of the issue: at shutdown, snapshots wait behind a full storage queue, already
    applied to the books and handed to the hooks. Every snapshot a hook saw is in Parquet."""
    release = asyncio.Event()
    consume = ParquetWriter.consume

    async def held(self: ParquetWriter, batch: list[AnyRecord]) -> None:
        await release.wait()
        await consume(self, batch)

    monkeypatch.setattr(ParquetWriter, "consume", held)
    seen: list[DepthSnapshot] = []

    async def hook(record: Record) -> None:
        assert isinstance(record, DepthSnapshot)
        seen.append(record)

    data = tmp_path / "data"
    async with SimVenue([real_capture(CF_FUTURES)], speed=0) as sim:
        settings = fault_settings(
            sim, data, channels="depth_snapshot", storage={"queue_size": 1}, shutdown_timeout_s=20
        )
        daemon = Daemon(settings)
        daemon.add_hook(hook, channels=["depth_snapshot"], name="snapshots")
        async with running(daemon):
            await until(lambda: daemon.snapshots is not None, what="snapshots started")
            assert daemon.snapshots is not None
            assert len(daemon.contracts or ()) >= 4
            snaps = daemon.snapshots

            def both_workers_stuck() -> bool:
                # Storage is full (one batch in consume, one queued): each of the two workers
                # waits in emit with a snapshot the hook already has.
                return len(seen) >= 3 and snaps.stats()["emitted"] == len(seen) - 2

            await until(both_workers_stuck, what="two snapshots stuck behind storage")
            close = daemon.snapshots.close

            async def close_then_release() -> None:
                # Storage moves again only once the producer is being closed: a producer that
                # cancels its workers here loses the snapshots they are emitting.
                release.set()
                await close()

            monkeypatch.setattr(daemon.snapshots, "close", close_then_release)
    stored = {(r["native"], r["last_update_id"]) for r in read_rows(data, "depth_snapshot")}
    assert stored == {(s.native, s.last_update_id) for s in seen}, f"{len(stored)} of {len(seen)} stored"
    lost = {k: c["lost_at_close"] for k, c in daemon.bus.stats()["consumers"].items()}
    assert set(lost.values()) == {0}, lost
