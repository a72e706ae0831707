"""Stats that cannot collide, and each record counted once (issue 13).

``Bus.stats`` used to merge each consumer's own counters into the bus's with ``**``: a hook's
``errors`` (calls that raised) overwrote the bus's ``errors`` (batches the consumer failed on), so
``ingestd_consumer_errors`` reported hook exceptions. The bus's figures are now a typed namespace
(:class:`~ingestd.bus.ConsumerStats`) that no consumer key can overwrite, and the records
published are counted once, by the bus; the metrics tap and the console line read that count
instead of counting every record again (the tap under-counted whenever its queue dropped).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from ingestd.app import Daemon
from ingestd.bus import Bus, ConsumerStats, OverflowPolicy, QueueStats
from ingestd.consumers.hooks import HookConsumer, HookContext
from ingestd.observe.metrics import render
from ingestd.records import Record
from tests.e2e import settings_for
from tests.ops import parse_metrics, value
from tests.test_bus import Collect, trade

pytestmark = pytest.mark.asyncio


async def failing(record: Record) -> None:
    raise ValueError(f"strategy bug on {record.symbol}")


async def test_a_hooks_own_errors_never_shadow_the_bus_counters() -> None:
    bus = Bus()
    hook = HookConsumer("hook:failing#0", failing, channels=None, timeout_s=1.0, context=HookContext())
    bus.attach(hook, maxsize=100, policy=OverflowPolicy.DROP_OLDEST)
    await bus.start()
    for i in range(3):
        await bus.publish([trade(i)])
    await bus.close()
    fams = parse_metrics(render(lambda: {"bus": bus.stats()}, None).decode())
    # The hook raised 3 times (caught by the hook consumer); the bus saw no batch fail.
    assert value(fams, "ingestd_hook_errors_total", hook="hook:failing#0") == 3
    assert value(fams, "ingestd_consumer_errors_total", consumer="hook:failing#0") == 0
    row = bus.stats()["consumers"]["hook:failing#0"]
    assert (row["errors"], row["call_errors"]) == (0, 3)


async def test_bus_stats_are_typed_namespaces() -> None:
    bus = Bus()
    sink = Collect("sink")
    bus.attach(sink, maxsize=10, policy=OverflowPolicy.DROP_OLDEST)
    await bus.start()
    for i in range(25):
        await bus.publish([trade(i)])  # the runner has no turn in between: 15 dropped
    await bus.close()
    snap = bus.snapshot()
    c = snap.consumers["sink"]
    assert isinstance(c, ConsumerStats)
    assert isinstance(c.queue, QueueStats)
    assert (c.queue.put, c.queue.dropped, c.queue.got, c.errors) == (25, 15, 10, 0)
    assert c.consumer == {"seen": 10}
    assert snap.published == 25
    # The JSON view (/status) keeps its flat names.
    assert bus.stats()["consumers"]["sink"] | {} == {
        "depth": 0, "maxsize": 10, "high_water": 10, "policy": "drop_oldest", "put": 25, "got": 10,
        "dropped": 15, "blocked_seconds": 0.0, "errors": 0, "lost_at_close": 0, "inflight": 0, "seen": 10,
    }  # fmt: skip


async def test_a_consumer_reporting_a_bus_counter_is_refused_at_attach() -> None:
    class Shadowing(Collect):
        def stats(self) -> dict[str, Any]:
            return {"dropped": 0, "seen": len(self.got)}

    with pytest.raises(ValueError, match="'dropped'"):
        Bus().attach(Shadowing("x"), maxsize=10, policy=OverflowPolicy.BLOCK)


async def test_records_are_counted_once_and_the_tap_and_console_read_that_count(tmp_path: Path) -> None:
    """120,000 trades published while the metrics tap never gets a turn: its queue (100,000,
    drop_oldest) drops 20,000, yet ``ingestd_records_total`` says 120,000, because it is the
    bus's count of what was published. The console line is made from the same count; it is not
    a bus consumer any more (no queue, no second pass over the records)."""
    settings = settings_for(
        "http://127.0.0.1:1", "ws://127.0.0.1:1", tmp_path, storage={"enabled": False}, health={"port": 1},
        console={"enabled": True, "interval_s": 3600},
    )  # fmt: skip
    daemon = Daemon(settings)
    daemon._attach_consumers()
    await daemon.bus.start()
    out = io.StringIO()
    assert daemon.console is not None
    daemon.console._out = out
    n = 120_000
    for i in range(0, n, 1000):
        await daemon._emit([trade(j) for j in range(i, i + 1000)])
    stats = daemon.bus.stats()["consumers"]
    assert stats["metrics"]["dropped"] == 20_000
    assert "console" not in stats
    fams = parse_metrics(render(daemon.stats, daemon.metrics).decode())
    assert value(fams, "ingestd_records_total", channel="trade", symbol="BTC-USDT-PERP") == n
    assert stats["metrics"]["records_per_channel"] == {"trade": n}
    line = daemon.console.report()
    assert " trade " in line
    assert daemon.console.stats()["records"] == n
    await daemon.bus.close()
    await daemon.console.close()
