"""A contract delisted and listed again: each of its streams is carried by exactly one connection."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from ingestd.producers.streams import ConnectionPlan
from ingestd.records import Trade
from tests.ops import wait_for as until
from tests.test_streams import Venue, fast, produce, sender, trade_frame


@pytest_asyncio.fixture
async def venue() -> AsyncIterator[Venue]:
    v = Venue()
    await v.start()
    yield v
    await v.stop()


SHARED = ConnectionPlan("binance-usdm/market#0", "/market", ("btcusdt@trade", "ethusdt@trade"),
                        ("BTCUSDT", "ETHUSDT"))  # fmt: skip


@pytest.mark.asyncio
async def test_a_relisted_contract_stays_on_the_connection_still_subscribed_to_it(venue: Venue) -> None:
    """ETHUSDT is delisted while BTCUSDT keeps the shared connection open (still subscribed to
    ethusdt@trade), then listed again: the shared connection expects it again and no second
    socket subscribes to it. SOLUSDT, new, gets a connection of its own."""
    venue.scripts = [sender(trade_frame("btcusdt@trade", 1))]
    async with produce(venue, fast(), [SHARED]) as h:
        await until(lambda: len(h.records) == 1, what="first trade")
        assert await h.producer.retire(["ETHUSDT"]) == []  # BTCUSDT still trades there
        eth = ConnectionPlan("binance-usdm/market#0", "/market", ("ethusdt@trade",), ("ETHUSDT",))
        sol = ConnectionPlan("binance-usdm/market#1", "/market", ("solusdt@trade",), ("SOLUSDT",))
        names = h.producer.add([eth, sol])
        assert names == [SHARED.name, "binance-usdm/market#1"]
        await until(lambda: len(venue.conns) == 2, what="SOLUSDT's connection")
        stats = h.producer.stats()
        assert stats["streams"]["ethusdt@trade"]["connection"] == SHARED.name
        assert stats["streams"]["solusdt@trade"]["connection"] == "binance-usdm/market#1"
        assert "ethusdt@trade" not in stats["retired_streams"]
        assert set(stats["connections"]) == {SHARED.name, "binance-usdm/market#1"}
    carriers = [c.streams for c in venue.conns if "ethusdt@trade" in c.streams]
    assert carriers == [SHARED.streams]
    assert venue.conns[1].streams == ("solusdt@trade",)
    trades = [r for r in h.records if isinstance(r, Trade)]
    assert [(t.native, t.trade_id) for t in trades] == [("BTCUSDT", 1)]
