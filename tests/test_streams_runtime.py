"""The websocket producer with a contract set that changes during the run: connections added for
new contracts leave the running ones untouched (never closed, re-subscribed or changed), and
retired streams are no longer expected (neither silent nor stale), a connection left with none
being closed for good. Against the sim replaying the bundled real capture (hftbacktest USDⓈ-M
BTCUSDT, 2024-08-08)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from ingestd.config import StreamSettings
from ingestd.producers.events import ConnectionEvent, ConnectionEventKind
from ingestd.producers.streams import ConnectionPlan, StreamsProducer
from ingestd.records import AggTrade, AnyRecord, BookTicker, Trade
from ingestd.sim import BUNDLED_CAPTURE, SimVenue
from ingestd.venues.binance.endpoints import USDM
from ingestd.venues.binance.parse import FrameParser
from ingestd.venues.binance.symbols import Contract, ContractSet
from tests.ops import wait_for

K = ConnectionEventKind
BTC = Contract("binance-usdm", "BTCUSDT", "BTC-USDT-PERP", "BTC", "USDT", 0.1, 1, 0.001, 0.001)
ETH = Contract("binance-usdm", "ETHUSDT", "ETH-USDT-PERP", "ETH", "USDT", 0.01, 2, 0.001, 0.001)


@dataclass
class Run:
    sim: SimVenue
    producer: StreamsProducer
    records: list[AnyRecord] = field(default_factory=list)
    events: list[ConnectionEvent] = field(default_factory=list)

    def count(self, cls: type) -> int:
        return sum(1 for r in self.records if isinstance(r, cls))


async def until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    await wait_for(cond, timeout)


@asynccontextmanager
async def running(plans: Sequence[ConnectionPlan], **settings: float) -> AsyncIterator[Run]:
    async with SimVenue([BUNDLED_CAPTURE], speed=1) as sim:
        records: list[AnyRecord] = []

        async def emit(batch: Sequence[AnyRecord]) -> None:
            records.extend(batch)

        events: list[ConnectionEvent] = []
        st = StreamSettings.model_validate(settings)
        parser = FrameParser(USDM.name, ContractSet(USDM.name, (BTC, ETH)))
        producer = StreamsProducer(USDM, sim.ws_url, plans, parser, emit, st, on_event=events.append)
        task = asyncio.create_task(producer.run())
        try:
            yield Run(sim, producer, records, events)
        finally:
            await producer.close()
            await task


MARKET = ConnectionPlan("binance-usdm/market#0", "/market", ("btcusdt@aggTrade",), ("BTCUSDT",))


@pytest.mark.asyncio
async def test_connections_added_at_runtime_leave_the_running_ones_untouched() -> None:
    async with running([MARKET]) as run:
        await until(lambda: run.count(AggTrade) >= 20)
        (first,) = run.sim.stats().connections
        names = run.producer.add(
            [
                ConnectionPlan("binance-usdm/public#0", "/public", ("btcusdt@bookTicker",), ("BTCUSDT",)),
                # Planned from scratch for the new contracts, so its index collides: renamed.
                ConnectionPlan("binance-usdm/market#0", "/market", ("btcusdt@trade",), ("BTCUSDT",)),
            ]
        )
        assert names == ["binance-usdm/public#0", "binance-usdm/market#1"]
        await until(lambda: run.count(BookTicker) >= 20 and run.count(Trade) >= 20)
        stats = run.producer.stats()
        assert set(stats["connections"]) == {
            "binance-usdm/market#0",
            "binance-usdm/public#0",
            "binance-usdm/market#1",
        }
        assert {"btcusdt@aggTrade", "btcusdt@bookTicker", "btcusdt@trade"} <= set(stats["streams"])
        conns = {c.id: c for c in run.sim.stats().connections}
        assert len(conns) == 3
        # The first connection: still the same socket, still open, the same subscription.
        assert conns[first.id].open
        assert conns[first.id].subscriptions == first.subscriptions == ("btcusdt@aggTrade",)
        assert stats["reconnects"] == 0
        assert [e.kind for e in run.events if e.connection == "binance-usdm/market#0"] == [
            K.CONNECTED,
            K.DATA_FLOWING,
        ]


@pytest.mark.asyncio
async def test_retired_streams_are_not_expected_and_an_empty_connection_closes() -> None:
    both = ConnectionPlan(
        "binance-usdm/market#0", "/market", ("btcusdt@aggTrade", "ethusdt@aggTrade"), ("BTCUSDT", "ETHUSDT")
    )
    only_eth = ConnectionPlan("binance-usdm/market#1", "/market", ("ethusdt@markPrice@1s",), ("ETHUSDT",))
    async with running([both, only_eth], first_frame_deadline_s=1.0) as run:
        await until(lambda: run.count(AggTrade) >= 5)
        # ETHUSDT stops trading (the capture has none of it: its streams are silent).
        closed = await run.producer.retire(["ETHUSDT"])
        assert closed == ["binance-usdm/market#1"]
        stats = run.producer.stats()
        assert set(stats["streams"]) == {"btcusdt@aggTrade"}
        assert stats["retired_streams"] == ["ethusdt@aggTrade", "ethusdt@markPrice@1s"]
        assert stats["retired_connections"] == ["binance-usdm/market#1"]
        assert list(stats["connections"]) == ["binance-usdm/market#0"]
        await until(lambda: sum(c.open for c in run.sim.stats().connections) == 1)
        # Past the first-frame deadline of the connection that stays: nothing reported silent.
        slot = run.producer._slots[0]
        await until(lambda: slot.primary is not None and slot.primary.silence_checked)
        n = run.count(AggTrade)
        await until(lambda: run.count(AggTrade) > n + 5)
        kinds = [e.kind for e in run.events]
        assert K.STREAM_SILENT not in kinds
        assert K.DISCONNECTED not in kinds  # retiring is not a disconnect: no book resyncs
        assert run.producer.stats()["reconnects"] == 0
        # The contract comes back: its streams are expected again, on a new connection.
        (name,) = run.producer.add([only_eth])
        assert name == "binance-usdm/market#2"
        assert "ethusdt@markPrice@1s" in run.producer.stats()["streams"]
        assert "ethusdt@markPrice@1s" not in run.producer.stats()["retired_streams"]
