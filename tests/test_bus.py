"""The bus: bounded queues, overflow policies, drop counting, ordered drain on close."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ingestd.bus import CLOSE_GRACE_S, BoundedQueue, Bus, OverflowPolicy, QueueClosedError
from ingestd.records import AnyRecord, RawFrame, Trade
from tests.ops import wait_for


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
    await asyncio.sleep(0)  # one loop step: the put runs until it waits for room
    assert not blocked.done()
    assert len(await q.get()) == 2
    await asyncio.wait_for(blocked, 30)
    assert q.dropped == 0
    assert [r.trade_id for r in await q.get() if isinstance(r, Trade)] == [3]


@pytest.mark.asyncio
async def test_oversized_batch_enters_an_empty_queue() -> None:
    q = BoundedQueue("s", 2, OverflowPolicy.BLOCK)
    await asyncio.wait_for(q.put([trade(i) for i in range(5)]), 30)
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
    # Publishing 500 batches never waited for the 50 ms hook (that would take 25 s): its queue
    # of 10 dropped the oldest records and counted them, while storage gets every one.
    assert q.dropped > 0
    await wait_for(lambda: len(storage.got) == 500, what="storage has all 500")
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
async def test_a_drain_cut_at_the_deadline_counts_what_was_queued_and_closes_every_consumer(
    caplog: pytest.LogCaptureFixture,
) -> None:
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

    def held() -> bool:
        c = bus.stats()["consumers"]
        return c["stuck"]["inflight"] == 1 and c["stuck"]["depth"] == 9 and len(fine.got) == 10

    await wait_for(held, what='"stuck" holding one record in consume, nine queued')
    drain = asyncio.ensure_future(bus.close())
    done, _ = await asyncio.wait({drain}, timeout=0.1)
    assert not done  # it cannot be: "stuck" never returns
    drain.cancel()
    with pytest.raises(asyncio.CancelledError):
        await drain
    # Each close after the cut is bounded: the slow one was given up after CLOSE_GRACE_S (it
    # would sleep 30 s), and said so.
    slow_cut = f"consumer slow did not close within {CLOSE_GRACE_S:.1f} s after the deadline"
    assert [r.getMessage() for r in caplog.records].count(slow_cut) == 1
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
    await wait_for(lambda: bus.stats()["consumers"]["storage"]["inflight"] == 1, what="storage stuck")
    await bus.publish([trade(1)])  # fills storage's queue
    blocked = asyncio.ensure_future(bus.publish([trade(2)]))
    # The hook gets every batch, the third one while the publisher still waits for storage.
    await wait_for(lambda: [r.trade_id for r in hook.got if isinstance(r, Trade)] == [0, 1, 2])
    assert not blocked.done()  # the publisher waits for storage ... (it cannot be done: stuck)
    storage.release.set()
    await blocked
    await bus.close()
    assert [r.trade_id for r in storage.got if isinstance(r, Trade)] == [0, 1, 2]
