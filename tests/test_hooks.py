"""Strategy hooks: loading, one- and two-argument hooks, isolation of errors and timeouts, and a
misbehaving hook on a real Bus beside a block-policy storage consumer."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ingestd.bus import Bus, OverflowPolicy
from ingestd.consumers.hooks import HookConsumer, HookContext, load_hook, wants_context
from ingestd.errors import ConfigError
from ingestd.records import AnyRecord, Record, Trade
from tests.ops import wait_for as until
from tests.test_parquet import CONTRACTS, trades


def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> str:
    """Write a uniquely named module on sys.path and return its name."""
    name = f"hookmod_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


# -- loading -----------------------------------------------------------------------------------


def test_load_hook_finds_async_functions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = make_module(
        tmp_path,
        monkeypatch,
        "async def one(record):\n    pass\n"
        "async def two(record, context):\n    pass\n"
        "class Strategy:\n    async def __call__(self, record):\n        pass\n"
        "strategy = Strategy()\n",
    )
    one = load_hook(f"{mod}:one")
    two = load_hook(f"{mod}:two")
    assert not wants_context(one)
    assert wants_context(two)
    assert not wants_context(load_hook(f"{mod}:strategy"))


@pytest.mark.parametrize(
    ("body", "attr", "message"),
    [
        ("def sync(record):\n    pass\n", "sync", "is not an async function"),
        ("x = 1\n", "x", "is not an async function"),
        ("async def f(record):\n    pass\n", "missing", "has no attribute 'missing'"),
        ("import not_a_real_dependency_xyz\n", "f", "needs module 'not_a_real_dependency_xyz'"),
        ("raise RuntimeError('boom at import')\n", "f", "RuntimeError: boom at import"),
    ],
)
def test_load_hook_errors_name_the_spec_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, attr: str, message: str
) -> None:
    mod = make_module(tmp_path, monkeypatch, body)
    spec = f"{mod}:{attr}"
    with pytest.raises(ConfigError) as info:
        load_hook(spec)
    assert spec in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_abc123:f", "module 'no_such_module_abc123' not found"),
        ("no_such_pkg_abc123.sub:f", "not found"),
        ("just_a_module", "expected MODULE:FUNCTION"),
        ("mod:not-an-identifier", "expected MODULE:FUNCTION"),
    ],
)
def test_load_hook_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_hook(spec)


# -- calling -----------------------------------------------------------------------------------


def context() -> HookContext:
    return HookContext(
        contracts=CONTRACTS, price_precision=CONTRACTS.price_precision(), min_qty=CONTRACTS.min_qty()
    )


@pytest.mark.asyncio
async def test_one_and_two_argument_hooks_get_every_record_in_order(realdata: Path) -> None:
    recs = trades(realdata, 50)
    ctx = context()
    seen1: list[Record] = []
    seen2: list[tuple[Record, HookContext]] = []

    async def one(record: Record) -> None:
        seen1.append(record)

    async def two(record: Record, context: HookContext) -> None:
        await asyncio.sleep(0)
        seen2.append((record, context))

    h1 = HookConsumer("one", one, channels=None, timeout_s=1.0, context=ctx)
    h2 = HookConsumer("two", two, channels=frozenset({"trade"}), timeout_s=1.0, context=ctx)
    for h in (h1, h2):
        await h.start()
        await h.consume(list[AnyRecord](recs[:20]))
        await h.consume(list[AnyRecord](recs[20:]))
        await h.close()
        await h.close()
    assert seen1 == recs
    assert [r for r, _ in seen2] == recs
    assert all(c is ctx for _, c in seen2)
    assert ctx.price_precision["BTC-USDT-PERP"] == 1
    assert ctx.min_qty["BTC-USDT-PERP"] == 0.001
    st = h2.stats()
    assert (st["calls"], st["call_errors"], st["timeouts"]) == (50, 0, 0)
    assert 0 < st["latency_p50_ms"] <= st["latency_p99_ms"] <= st["latency_max_ms"]


def test_context_defaults_and_book_source() -> None:
    class Books:
        def get(self, symbol: str) -> Any:
            return {"symbol": symbol}

    ctx = HookContext()
    assert (ctx.contracts, ctx.price_precision, ctx.min_qty, ctx.books) == (None, {}, {}, None)
    ctx.books = Books()
    assert ctx.books.get("BTC-USDT-PERP") == {"symbol": "BTC-USDT-PERP"}


def test_a_sync_function_is_refused() -> None:
    def sync(record: Record) -> None:
        return None

    with pytest.raises(TypeError, match="not an async function"):
        HookConsumer("s", sync, channels=None, timeout_s=1.0, context=HookContext())  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_exceptions_and_timeouts_are_counted_logged_once_per_episode_and_isolated(
    realdata: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recs = trades(realdata, 12)
    ids = [r.trade_id for r in recs if isinstance(r, Trade)]
    done: list[int] = []

    async def flaky(record: Record) -> None:
        assert isinstance(record, Trade)
        i = ids.index(record.trade_id)
        if i in (1, 2, 3):
            raise ValueError(f"bad record {i}")
        if i in (5, 6):
            await asyncio.sleep(10)  # far past the timeout
        if i == 8:
            raise TimeoutError("the hook's own timeout")
        if i == 10:
            raise ValueError("again")
        done.append(i)

    h = HookConsumer("flaky", flaky, channels=None, timeout_s=0.05, context=HookContext())
    with caplog.at_level(logging.INFO, logger="ingestd.hooks"):
        await h.consume(list[AnyRecord](recs))
    # The two 10 s sleeps were cut by their 0.05 s timeouts (counted below), not slept out.
    assert done == [0, 4, 7, 9, 11]  # every later call still happened, in order
    st = h.stats()
    assert (st["calls"], st["call_errors"], st["timeouts"]) == (12, 5, 2)
    assert st["last_error"] == "ValueError: again"
    failed = [r for r in caplog.records if "failed:" in r.getMessage()]
    # Episodes: 1-3, 5-6, 8, 10 -> four lines; a traceback only the first time each type is seen.
    assert len(failed) == 4
    assert [r.exc_info is not None for r in failed] == [True, False, True, False]
    assert "timed out after 0.05 s" in failed[1].getMessage()
    assert sum("recovered" in r.getMessage() for r in caplog.records) == 4


@pytest.mark.asyncio
async def test_a_hook_that_blocks_the_loop_is_reported(
    realdata: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def blocking(record: Record) -> None:
        time.sleep(0.03)  # the misbehaviour under test: blocking the event loop

    h = HookConsumer("blocking", blocking, channels=None, timeout_s=0.01, context=HookContext())
    with caplog.at_level(logging.WARNING, logger="ingestd.hooks"):
        await h.consume(list[AnyRecord](trades(realdata, 3)))
    assert h.stats()["overruns"] == 3
    assert sum("must not block" in r.getMessage() for r in caplog.records) == 1


# -- on the bus --------------------------------------------------------------------------------


class Counting:
    """A block-policy storage stand-in: counts what it receives and when."""

    def __init__(self) -> None:
        self.name = "storage"
        self.channels: frozenset[str] | None = None
        self.got = 0
        self.last_at = 0.0

    async def start(self) -> None:
        return None

    async def consume(self, batch: list[AnyRecord]) -> None:
        self.got += len(batch)
        self.last_at = time.monotonic()

    async def close(self) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return {"seen": self.got}


async def _raises(record: Record) -> None:
    raise RuntimeError("strategy bug")


async def _sleeps(record: Record) -> None:
    await asyncio.sleep(5)


async def _never_returns(record: Record, context: HookContext) -> None:
    await asyncio.Event().wait()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "hook", [_raises, _sleeps, _never_returns], ids=["raises", "sleeps", "never-returns"]
)
async def test_a_misbehaving_hook_does_not_slow_storage_on_the_bus(
    realdata: Path, hook: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    recs = trades(realdata, 2000)
    bus = Bus()
    storage = Counting()
    bus.attach(storage, maxsize=64, policy=OverflowPolicy.BLOCK)
    h = HookConsumer(f"hook:{hook.__name__}", hook, channels=None, timeout_s=0.02, context=context())
    hook_q = bus.attach(h, maxsize=16, policy=OverflowPolicy.DROP_OLDEST)
    await bus.start()
    with caplog.at_level(logging.ERROR, logger="ingestd.hooks"):
        for i in range(0, len(recs), 10):
            await bus.publish(recs[i : i + 10])
        await until(lambda: storage.got == len(recs))
        # Publishing never waited on the hook (that would take 2000 x 20 ms = 40 s): the hook's own
        # queue shed load instead, counted.
        assert hook_q.dropped > 0
        assert hook_q.dropped + h.stats()["calls"] + len(hook_q) <= len(recs)
        await bus.close()
    st = bus.stats()["consumers"]
    assert st["storage"]["dropped"] == 0
    assert st["storage"]["seen"] == len(recs)
    hs = st[f"hook:{hook.__name__}"]
    assert hs["calls"] > 0
    assert hs["call_errors"] + hs["timeouts"] == hs["calls"]  # every call failed, none propagated
    assert hs["errors"] == 0  # the bus saw no batch fail: the hook consumer caught each call
    assert hs["dropped"] + hs["calls"] == len(recs)
    assert len([r for r in caplog.records if "failed:" in r.getMessage()]) == 1  # one episode


@pytest.mark.asyncio
async def test_a_timeout_lands_on_the_slow_call_never_on_the_next(realdata: Path) -> None:
    """The loop is blocked (by something else) across a call's deadline, and the call's own
    wake-up is queued before the deadline's: the call returns late (an overrun) and the next
    call must run to its end, not inherit the expiry."""
    recs = trades(realdata, 3)
    done: list[int] = []

    async def hook(record: Record) -> None:
        i = recs.index(record)
        await asyncio.sleep(0.048 if i == 0 else 0.001)
        done.append(i)

    async def block_the_loop() -> None:
        await asyncio.sleep(0.02)
        time.sleep(0.06)  # from 0.02 to 0.08 s: past the 0.048 s wake-up and the 0.05 s deadline

    h = HookConsumer("h", hook, channels=None, timeout_s=0.05, context=HookContext())
    blocker = asyncio.create_task(block_the_loop())
    await h.consume(list[AnyRecord](recs))
    await blocker
    assert done[-2:] == [1, 2]  # record 0 may time out or overrun; 1 and 2 always complete
    st = h.stats()
    assert st["calls"] == 3
    assert st["timeouts"] + st["overruns"] <= 1
