"""The bus: bounded queues, overflow policies, drop counting, ordered drain on close."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from ingestd.bus import CLOSE_GRACE_S, BoundedQueue, Bus, OverflowPolicy, QueueClosedError
from ingestd.records import AnyRecord, RawFrame, Trade


def trade(i: int, symbol: str = "BTC-USDT-PERP") -> Trade:
    return Trade(
        venue="binance-usdm",
        symbol=symbol,
        native="BTCUSDT",
        exchange_ts=i,
        recv_ts=i,
        trade_id=i,
        price=1.0,
        qty=1.0,
        is_buyer_maker=False,
    )


class Collect:
    def __init__(self, name: str, channels: frozenset[str] | None = None, delay: float = 0.0) -> None:
        self.name = name
        self.channels = channels
        self.delay = delay
        self.got: list[AnyRecord] = []
        self.closed = 0

    async def start(self) -> None:
        return None

    async def consume(self, batch: list[AnyRecord]) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.got.extend(batch)

    async def close(self) -> None:
        self.closed += 1

    def stats(self) -> dict[str, Any]:
        return {"seen": len(self.got)}


@pytest.mark.asyncio
async def test_drop_oldest_keeps_newest_and_counts() -> None:
    q = BoundedQueue("h", 5, OverflowPolicy.DROP_OLDEST)
    for i in range(4):
        await q.put([trade(2 * i), trade(2 * i + 1)])
    assert len(q) == 5
    assert q.dropped == 3
    got = await q.get()
    assert [r.trade_id for r in got if isinstance(r, Trade)] == [3, 4, 5, 6, 7]
    assert q.stats().high_water == 5


@pytest.mark.asyncio
async def test_drop_newest_refuses_incoming() -> None:
    q = BoundedQueue("h", 3, OverflowPolicy.DROP_NEWEST)
    await q.put([trade(1), trade(2)])
    await q.put([trade(3), trade(4)])
    assert q.dropped == 2
    assert [r.trade_id for r in await q.get() if isinstance(r, Trade)] == [1, 2]


@pytest.mark.asyncio
async def test_block_waits_for_room_and_never_drops() -> None:
    q = BoundedQueue("s", 2, OverflowPolicy.BLOCK)
    await q.put([trade(1), trade(2)])
    blocked = asyncio.create_task(q.put([trade(3)]))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    assert len(await q.get()) == 2
    await asyncio.wait_for(blocked, 1)
    assert q.dropped == 0
    assert [r.trade_id for r in await q.get() if isinstance(r, Trade)] == [3]


@pytest.mark.asyncio
async def test_oversized_batch_enters_an_empty_queue() -> None:
    q = BoundedQueue("s", 2, OverflowPolicy.BLOCK)
    await asyncio.wait_for(q.put([trade(i) for i in range(5)]), 1)
    assert len(await q.get()) == 5


@pytest.mark.asyncio
async def test_closed_queue_drains_then_ends() -> None:
    q = BoundedQueue("s", 10, OverflowPolicy.BLOCK)
    await q.put([trade(1)])
    q.close()
    with pytest.raises(QueueClosedError):
        await q.put([trade(2)])
    assert len(await q.get()) == 1
    assert await q.get() == []


@pytest.mark.asyncio
async def test_bus_filters_by_channel_and_symbol_and_keeps_raw_apart() -> None:
    bus = Bus()
    everything = Collect("all")
    raw = Collect("raw", channels=frozenset({"raw"}))
    eth = Collect("eth")
    bus.attach(everything, maxsize=100, policy=OverflowPolicy.BLOCK)
    bus.attach(raw, maxsize=100, policy=OverflowPolicy.BLOCK)
    bus.attach(eth, maxsize=100, policy=OverflowPolicy.BLOCK, symbols=frozenset({"ETH-USDT-PERP"}))
    await bus.start()
    frame = RawFrame(venue="binance-usdm", source="/market/stream", recv_ts=1, data=b"{}")
    await bus.publish([frame, trade(1), trade(2, "ETH-USDT-PERP")])
    await bus.close()
    assert [type(r) for r in everything.got] == [Trade, Trade]
    assert raw.got == [frame]
    assert [r.symbol for r in eth.got if isinstance(r, Trade)] == ["ETH-USDT-PERP"]
    assert everything.closed == raw.closed == eth.closed == 1
    await bus.close()  # idempotent
    assert everything.closed == 1


@pytest.mark.asyncio
async def test_slow_hook_with_drop_oldest_does_not_slow_blocking_storage() -> None:
    bus = Bus()
    storage = Collect("storage")
    hook = Collect("hook", delay=0.05)
    bus.attach(storage, maxsize=1000, policy=OverflowPolicy.BLOCK)
    q = bus.attach(hook, maxsize=10, policy=OverflowPolicy.DROP_OLDEST)
    await bus.start()
    for i in range(500):
        await bus.publish([trade(i)])
    await asyncio.sleep(0.01)
    # Storage has everything while the 50 ms hook has handled at most a couple of batches:
    # publishing never waited for it, its queue dropped the oldest records and counted them.
    assert len(storage.got) == 500
    assert len(hook.got) < 50
    assert q.dropped > 0
    await bus.close()
    assert len(storage.got) == 500
    assert len(hook.got) + q.dropped == 500


@pytest.mark.asyncio
async def test_consumer_error_is_counted_and_the_runner_goes_on() -> None:
    class Flaky(Collect):
        async def consume(self, batch: list[AnyRecord]) -> None:
            if any(isinstance(r, Trade) and r.trade_id == 1 for r in batch):
                raise RuntimeError("boom")
            await super().consume(batch)

    bus = Bus()
    flaky = Flaky("flaky")
    bus.attach(flaky, maxsize=10, policy=OverflowPolicy.BLOCK, max_batch=1)
    await bus.start()
    for i in range(3):
        await bus.publish([trade(i)])
    await bus.close()
    assert [r.trade_id for r in flaky.got if isinstance(r, Trade)] == [0, 2]
    assert bus.stats()["consumers"]["flaky"]["errors"] == 1


@pytest.mark.asyncio
async def test_a_drain_cut_at_the_deadline_counts_what_was_queued_and_closes_every_consumer() -> None:
    """The shutdown deadline cancels the drain: records still queued are counted per consumer
    (never silently gone), and every consumer is closed even if one close is itself cancelled or
    fails."""

    class Stuck(Collect):
        async def consume(self, batch: list[AnyRecord]) -> None:
            await asyncio.Event().wait()  # never returns

    class CancelledClose(Collect):
        async def close(self) -> None:
            self.closed += 1
            raise asyncio.CancelledError

    class FailingClose(Collect):
        async def close(self) -> None:
            self.closed += 1
            raise OSError("disk gone")

    class SlowClose(Collect):
        async def close(self) -> None:
            self.closed += 1
            await asyncio.sleep(30)  # past the deadline: cut after CLOSE_GRACE_S

    bus = Bus()
    stuck, cancelled, failing, fine = Stuck("stuck"), CancelledClose("cc"), FailingClose("fc"), Collect("ok")
    slow = SlowClose("slow")
    bus.attach(stuck, maxsize=100, policy=OverflowPolicy.BLOCK, max_batch=1)
    for c in (cancelled, failing, slow, fine):
        bus.attach(c, maxsize=100, policy=OverflowPolicy.BLOCK)
    await bus.start()
    for i in range(10):
        await bus.publish([trade(i)])
    await asyncio.sleep(0.01)  # "stuck" holds one record in consume, nine stay queued
    drain = asyncio.ensure_future(bus.close())
    done, _ = await asyncio.wait({drain}, timeout=0.1)
    assert not done
    drain.cancel()
    cut_at = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await drain
    # Each close after the cut is bounded: the slow one costs CLOSE_GRACE_S, not 30 s.
    assert time.monotonic() - cut_at < CLOSE_GRACE_S + 0.5
    assert [c.closed for c in (stuck, cancelled, failing, slow, fine)] == [1, 1, 1, 1, 1]
    consumers = bus.stats()["consumers"]
    assert consumers["stuck"]["lost_at_close"] == 9
    assert consumers["ok"]["lost_at_close"] == 0
    assert len(fine.got) == 10


@pytest.mark.asyncio
async def test_a_full_blocking_queue_does_not_delay_the_other_consumers() -> None:
    """Storage (block) attached first and stuck: a new batch still reaches the hook (drop_oldest)
    at once; only the publisher waits for storage."""

    class Stuck(Collect):
        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.release = asyncio.Event()

        async def consume(self, batch: list[AnyRecord]) -> None:
            await self.release.wait()
            await super().consume(batch)

    bus = Bus()
    storage, hook = Stuck("storage"), Collect("hook")
    bus.attach(storage, maxsize=1, policy=OverflowPolicy.BLOCK)
    bus.attach(hook, maxsize=100, policy=OverflowPolicy.DROP_OLDEST)
    await bus.start()
    await bus.publish([trade(0)])
    await asyncio.sleep(0.01)  # storage took it and is stuck in consume
    await bus.publish([trade(1)])  # fills storage's queue
    blocked = asyncio.ensure_future(bus.publish([trade(2)]))
    await asyncio.sleep(0.01)
    assert not blocked.done()  # the publisher waits for storage ...
    assert [r.trade_id for r in hook.got if isinstance(r, Trade)] == [0, 1, 2]  # ... the hook does not
    storage.release.set()
    await blocked
    await bus.close()
    assert [r.trade_id for r in storage.got if isinstance(r, Trade)] == [0, 1, 2]
