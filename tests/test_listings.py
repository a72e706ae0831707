"""The runtime paths of following listings, one part at a time, on real data.

* narrowing a grown exchangeInfo (the real 2021 USDⓈ-M document from cryptofeed's sample data,
  "This product includes software developed by Bryant Moscon"): every contract stays on its
  shard, a listing joins exactly the shard that owns it, ``--symbols`` picks up a name that
  lists later;
* the diff and the contract rows it writes (statuses read for the contracts that left);
* the order books: a book added at runtime syncs exactly like one kept from the start, one
  removed leaves stats, readiness and hooks (real cryptofeed USDⓈ-M capture, four symbols);
* the parser routes the streams of a new contract, and its all-market streams keep the new set
  (real frames from tests/data/parse_frames.ndjson);
* the snapshot queue cancels a leaver's queued, retried and in-flight requests;
* the watcher: one refresh applied to every follower, failures logged once per episode, its
  loop and idempotent close; hooks' ``on_contract``; readiness grace for a listed stream;
* the trade backfill of a relisted contract goes on from its last trade (the bundled real
  BTCUSDT capture's aggTrades), a new one's from its first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingestd.book.manager import BookManager
from ingestd.cli import build_parser, cli_overrides
from ingestd.config import StreamSettings, load_settings
from ingestd.consumers.hooks import HookConsumer, HookContext, load_contract_hook
from ingestd.errors import ConfigError, ParseError, StartupError
from ingestd.producers.backfill import Backfiller, BackfillSettings
from ingestd.producers.contract_records import UNLISTED, ContractRecord
from ingestd.producers.listings import Followers, ListingWatcher, diff, discover_run_contracts, narrow
from ingestd.producers.rest import RestClient
from ingestd.producers.snapshots import SnapshotProducer
from ingestd.records import AnyRecord, DepthDiff, DepthSnapshot, Record
from ingestd.shard import shard_of
from ingestd.venues.binance.endpoints import USDM
from ingestd.venues.binance.parse import FrameParser
from ingestd.venues.binance.symbols import ContractSet, parse_exchange_info
from tests.e2e import settings_for
from tests.realdata import CF
from tests.test_backfill import BTC, agg_payloads, ws_agg
from tests.test_parse import RECV, assert_same, contract_set, expected, slices
from tests.test_rest import FakeBinance, Reply, client_for, cryptofeed_bodies, nautilus
from tests.test_sync_realdata import USDM as USDM_NAME
from tests.test_sync_realdata import contract, read_cryptofeed, replay

# -- narrowing: shards and --symbols -------------------------------------------------------------


@pytest.fixture(scope="module")
def fapi() -> ContractSet:
    """The real /fapi/v1/exchangeInfo of 2021-10 (119 perpetuals, 2 quarterlies, one odd entry)."""
    (body,) = cryptofeed_bodies("BINANCE_FUTURES.0").values()
    contracts = parse_exchange_info("binance-usdm", orjson.loads(body))
    assert len(contracts) > 100
    return contracts


def test_a_grown_set_keeps_every_contract_on_its_shard(fapi: ContractSet) -> None:
    later = set(fapi.natives[::9])  # these "list" during the run
    before = ContractSet(fapi.venue, tuple(c for c in fapi if c.native not in later))
    for n in (2, 3, 5, 8):
        joined: list[str] = []
        for k in range(1, n + 1):
            old, new = narrow(before, (), (k, n)), narrow(fapi, (), (k, n))
            # Nothing moves: the shard's old contracts are all still its own.
            assert set(old.natives) <= set(new.natives)
            change = diff(old, new)
            assert change.delisted == change.changed == ()
            listed = [c.native for c in change.listed]
            assert listed == [x for x in new.natives if x in later]
            assert all(shard_of(x, n) == k for x in listed)
            joined += listed
        # Each listing joins exactly one shard.
        assert sorted(joined) == sorted(later)


def test_symbols_keep_their_names_and_pick_up_a_later_listing(fapi: ContractSet) -> None:
    natives = fapi.natives
    wanted = (natives[3], "NOTLISTEDYET", natives[1])
    before = narrow(fapi, wanted, None)
    assert before.natives == [natives[3], natives[1]]
    newcomer = dataclasses.replace(fapi.contracts[0], native="NOTLISTEDYET", symbol="NOTLISTEDYET-PERP")
    grown = ContractSet(fapi.venue, (*fapi.contracts, newcomer))
    after = narrow(grown, wanted, None)
    assert after.natives == [natives[3], "NOTLISTEDYET", natives[1]]
    assert [c.native for c in diff(before, after).listed] == ["NOTLISTEDYET"]
    # Symbols and a shard together: the shard of the named symbols only.
    sharded = narrow(grown, wanted, (shard_of("NOTLISTEDYET", 4), 4))
    assert "NOTLISTEDYET" in sharded
    assert all(shard_of(x, 4) == shard_of("NOTLISTEDYET", 4) for x in sharded.natives)


def test_diff_and_the_rows_it_writes() -> None:
    full = parse_exchange_info(
        "binance-usdm", orjson.loads(nautilus("http_futures_market_exchange_info.json"))
    )
    btc, eth = full.get("BTCUSDT"), full.get("ETHUSDT")
    assert btc is not None
    assert eth is not None
    assert btc.definition is not None
    retick = dataclasses.replace(btc, definition=dataclasses.replace(btc.definition, tick_size="0.01"))
    old = ContractSet(full.venue, (btc,))
    change = diff(old, ContractSet(full.venue, (retick, eth)))
    assert (change.listed, change.delisted, change.changed) == ((eth,), (), (retick,))
    assert not diff(old, ContractSet(full.venue, (btc,)))
    assert diff(full, old).delisted == (eth,)


# -- the books ---------------------------------------------------------------------------------------

FUT_NATIVES = ["AKROUSDT", "CTKUSDT", "KEEPUSDT", "SUSHIUSDT"]


@pytest.fixture(scope="module")
def fut() -> list[Record]:
    return read_cryptofeed(
        CF / "2021-10_head/BINANCE_FUTURES.http.0.0", CF / "2021-10_head/BINANCE_FUTURES.ws.1.0", USDM_NAME
    )


def test_a_book_added_at_runtime_syncs_like_one_kept_from_the_start(fut: list[Record]) -> None:
    control = replay(FUT_NATIVES, USDM_NAME, "futures")
    control.feed(fut)
    live = replay([n for n in FUT_NATIVES if n != "CTKUSDT"], USDM_NAME, "futures")
    first = next(i for i, r in enumerate(fut) if r.native == "CTKUSDT")
    live.feed(fut[:first])
    assert "CTKUSDT" not in live.manager.stats()["symbols"]
    assert live.manager.add(contract("CTKUSDT", USDM_NAME))
    assert not live.manager.add(contract("CTKUSDT", USDM_NAME))  # already kept
    live.feed(fut[first:])
    want, got = control.manager.stats()["symbols"], live.manager.stats()["symbols"]
    assert got == want
    assert got["CTKUSDT"]["state"] == "synced"
    assert got["CTKUSDT"]["audit_checks"] > 0
    assert got["CTKUSDT"]["gaps"] == {}
    assert [n for n, _ in live.requests] == [n for n, _ in control.requests]
    view, control_view = live.manager.get("CTKUSDT"), control.manager.get("CTKUSDT")
    assert view is not None
    assert control_view is not None
    assert view.levels(1000) == control_view.levels(1000)


def test_a_removed_book_leaves_stats_and_hooks_and_the_others_go_on(
    fut: list[Record], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ingestd.book")
    control = replay(FUT_NATIVES, USDM_NAME, "futures")
    control.feed(fut)
    live = replay(FUT_NATIVES, USDM_NAME, "futures")
    half = len(fut) // 2
    live.feed(fut[:half])
    assert live.manager.state("SUSHIUSDT") is not None
    assert live.manager.remove("SUSHIUSDT")
    assert not live.manager.remove("SUSHIUSDT")
    later = sum(1 for r in fut[half:] if r.native == "SUSHIUSDT" and isinstance(r, DepthDiff | DepthSnapshot))
    assert later > 0
    live.feed(fut[half:])
    stats = live.manager.stats()
    assert "SUSHIUSDT" not in stats["symbols"]
    assert stats["totals"]["symbols"] == 3
    assert stats["totals"]["unknown_symbols"] == later
    assert live.manager.get("SUSHIUSDT") is None
    assert live.manager.get("SUSHI-USDT-PERP") is None
    assert live.manager.state("SUSHIUSDT") is None
    for native in ("AKROUSDT", "CTKUSDT", "KEEPUSDT"):
        assert stats["symbols"][native] == control.manager.stats()["symbols"][native]
    # "all N books synced" counts the books kept: a book dropped before it synced is not waited for.
    caplog.clear()
    early = replay(FUT_NATIVES, USDM_NAME, "futures")
    assert early.manager.remove("KEEPUSDT")
    early.feed(fut)
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("all ")] == [
        "all 3 books synced"
    ]


# -- the parser ---------------------------------------------------------------------------------------


def frame_of(src: str, stream: str) -> tuple[dict[str, Any], bytes]:
    """The first USDⓈ-M frame of ``stream`` from ``src`` in parse_frames.ndjson."""
    for s in slices():
        if src in s["src"] and s["market"] == "usdm" and f'"stream":"{stream}"' in s["frame"]:
            raw = s["frame"].encode()
            return orjson.loads(raw), raw
    raise LookupError(f"no {stream} frame from {src}")


def test_the_parser_routes_a_new_contract_and_keeps_a_leavers_streams() -> None:
    btc_depth, btc_raw = frame_of("usdm_btcusdt", "btcusdt@depth@0ms")
    eth_depth, eth_raw = frame_of("usdm_ethusdt", "ethusdt@depth@0ms")
    marks, marks_raw = frame_of("crypto-msg-parser", "!markPrice@arr")  # BTCUSDT, ETHUSDT
    only_btc = contract_set("binance-usdm", {"BTCUSDT"})
    both = contract_set("binance-usdm", {"BTCUSDT", "ETHUSDT"})
    only_eth = contract_set("binance-usdm", {"ETHUSDT"})
    p = FrameParser("binance-usdm", only_btc)
    with pytest.raises(ParseError, match="not in the contract set"):
        p.parse(eth_raw, RECV)
    assert [r.native for r in p.parse(marks_raw, RECV)[1]] == ["BTCUSDT"]
    p.parse(btc_raw, RECV)

    p.set_contracts(both)
    _, recs = p.parse(eth_raw, RECV)
    assert_same(recs, expected("binance-usdm", both, eth_depth, RECV))
    _, recs = p.parse(marks_raw, RECV)
    assert_same(recs, expected("binance-usdm", both, marks, RECV))

    p.set_contracts(only_eth)
    _, recs = p.parse(marks_raw, RECV)
    assert [r.native for r in recs] == ["ETHUSDT"]
    # A stream we subscribed still parses after its contract left: a late frame is data.
    _, recs = p.parse(btc_raw, RECV)
    assert_same(recs, expected("binance-usdm", both, btc_depth, RECV))


# -- the snapshot queue ---------------------------------------------------------------------------------


async def wait_for(cond: Any, what: str, timeout: float = 20.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"{what}: not reached in {timeout} s") from None


@pytest.mark.asyncio
async def test_snapshot_requests_of_a_leaver_are_cancelled_queued_retried_and_in_flight() -> None:
    fake = FakeBinance(exchange_info=b"{}", depth={"BTCUSDT": b'{"lastUpdateId":1,"bids":[],"asks":[]}'})
    async with serving(fake, max_retries=0) as client:
        three = contract_set("binance-usdm", {"BTCUSDT", "ETHUSDT", "XRPUSDT"})
        out: list[AnyRecord] = []

        async def emit(batch: Any) -> None:
            out.extend(batch)

        snaps = SnapshotProducer(client, USDM, three, emit, limit=1000, concurrency=1, retry_initial_s=30)
        # XRPUSDT fails once (400): its retry waits 30 s. BTCUSDT is held in flight; ETHUSDT queues.
        fake.by_symbol["XRPUSDT"] = deque([Reply(status=400)])
        fake.by_symbol["BTCUSDT"] = deque([Reply(delay_s=0.5)])
        task = asyncio.create_task(snaps.run())
        snaps.request("XRPUSDT")
        await wait_for(lambda: snaps.failed == 1 and snaps.pending == 1, "XRPUSDT waiting for its retry")
        snaps.request("BTCUSDT")
        snaps.request("ETHUSDT")
        await wait_for(lambda: snaps.stats()["in_flight"] == 1, "BTCUSDT in flight")
        cancelled = snaps.set_contracts(contract_set("binance-usdm", set()))
        assert sorted(cancelled) == ["BTCUSDT", "ETHUSDT", "XRPUSDT"]
        await wait_for(lambda: snaps.fetched == 1, "the in-flight answer came")
        await asyncio.sleep(0)  # let the worker finish the fetch it was in
        assert out == []  # its answer was not emitted
        assert snaps.pending == 0
        assert [s.query["symbol"] for s in fake.requests_to(USDM.depth_path)] == ["XRPUSDT", "BTCUSDT"]
        with pytest.raises(ValueError, match="not a contract of this run"):
            snaps.request("ETHUSDT")
        assert snaps.stats()["cancelled"] == 3
        await snaps.close()
        await task


# -- the watcher ----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(fake: FakeBinance, **kw: Any) -> AsyncIterator[RestClient]:
    """``fake`` started, and a client of it; both closed at the end."""
    await fake.start()
    client = client_for(fake, **kw)
    try:
        yield client
    finally:
        await client.close()
        await fake.close()


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[AnyRecord]] = []

    async def __call__(self, batch: Any) -> None:
        self.batches.append(list(batch))

    def rows(self) -> list[ContractRecord]:
        return [r for b in self.batches for r in b if isinstance(r, ContractRecord)]


@pytest.mark.asyncio
async def test_one_refresh_reaches_every_follower(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ingestd.listings")
    body = nautilus("http_futures_market_exchange_info.json")  # BTCUSDT, ETHUSDT (+ a quarterly)
    fake = FakeBinance(exchange_info=body)
    async with serving(fake) as client:
        full = parse_exchange_info("binance-usdm", orjson.loads(body))
        start = ContractSet(full.venue, tuple(c for c in full if c.native == "BTCUSDT"))
        emit = Recorder()
        books = BookManager("binance-usdm", start, market="futures", request_snapshot=lambda n, u: None)
        snaps = SnapshotProducer(client, USDM, start, emit, limit=1000)
        backfill = Backfiller(client, "binance-usdm", start, emit, BackfillSettings(), ["agg_trade"])
        parser = FrameParser("binance-usdm", start)
        hooks = HookContext(contracts=start, price_precision=start.price_precision(), min_qty=start.min_qty())
        kept = hooks.price_precision
        seen: list[ContractSet] = []
        followers = Followers(
            ("book_ticker", "depth_diff"), StreamSettings(), parser=parser, books=books, snapshots=snaps,
            backfill=backfill, hooks=hooks,
        )  # fmt: skip
        watcher = ListingWatcher(
            client, USDM, start, followers, emit, refresh_s=3600,
            narrow=lambda found: narrow(found, (), None), on_change=seen.append,
        )  # fmt: skip

        # Two broken bodies: no change, one warning; then the real one lists ETHUSDT.
        fake.script.extend([Reply(body=b"<html>"), Reply(body=b'{"symbols":[]}')])
        assert await watcher.refresh() is None
        assert await watcher.refresh() is None
        change = await watcher.refresh()
        assert change is not None
        assert [c.native for c in change.listed] == ["ETHUSDT"]
        assert watcher.stats()["failures"] == 2
        assert not watcher.stats()["failing"]
        messages = [r.getMessage() for r in caplog.records]
        assert sum(m.startswith("listing refresh failed") for m in messages) == 1
        assert "listing refresh works again after 2 failed attempt(s)" in messages
        assert any(
            m.startswith("listed ETHUSDT (ETH-USDT-PERP): 0 stream(s); book syncing") for m in messages
        )

        eth = full.get("ETHUSDT")
        assert eth is not None
        assert books.state("ETHUSDT") is not None
        snaps.request("ETHUSDT")  # admitted now
        assert parser.contracts.natives == ["BTCUSDT", "ETHUSDT"]
        assert seen[-1] is watcher.contracts
        assert hooks.contracts is watcher.contracts
        assert hooks.price_precision is kept
        assert "ETH-USDT-PERP" in kept
        assert [(r.native, r.status) for r in emit.rows()] == [("ETHUSDT", "TRADING")]
        assert not await watcher.refresh()  # the same document again: nothing to do

        # ETHUSDT settles: its book goes, its queued snapshot is cancelled, the row says SETTLING.
        settled = orjson.loads(body)
        for sym in settled["symbols"]:
            if sym["symbol"] == "ETHUSDT":
                sym["status"] = "SETTLING"
        fake.exchange_info = orjson.dumps(settled)
        change = await watcher.refresh()
        assert change is not None
        assert [c.native for c in change.delisted] == ["ETHUSDT"]
        assert books.state("ETHUSDT") is None
        assert snaps.pending == 0
        assert "ETH-USDT-PERP" not in hooks.price_precision
        assert "ETH-USDT-PERP" not in hooks.min_qty
        assert [(r.native, r.status) for r in emit.rows()][1:] == [("ETHUSDT", "SETTLING")]
        line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("delisted"))
        assert (
            line == "delisted ETHUSDT (ETH-USDT-PERP, SETTLING): 0 stream(s) retired, book dropped, "
            "snapshot request cancelled"
        )

        # Gone from the document altogether after it was listed again: UNLISTED.
        fake.exchange_info = body
        await watcher.refresh()
        fake.exchange_info = orjson.dumps(
            {**settled, "symbols": [s for s in settled["symbols"] if s["symbol"] != "ETHUSDT"]}
        )
        await watcher.refresh()
        assert [r.status for r in emit.rows()][-2:] == ["TRADING", UNLISTED]
        assert watcher.stats() | {"last_refresh_age_s": 0} == {
            "refresh_s": 3600, "contracts": 1, "refreshes": 5, "failures": 2, "failing": False,
            "last_error": watcher.last_error, "last_refresh_age_s": 0, "listed": 2, "delisted": 2,
            "changed": 0,
        }  # fmt: skip
        await snaps.close()


@pytest.mark.asyncio
async def test_the_watcher_loop_refreshes_and_closes_idempotently() -> None:
    body = nautilus("http_futures_market_exchange_info.json")
    fake = FakeBinance(exchange_info=body)
    async with serving(fake) as client:
        start = parse_exchange_info("binance-usdm", orjson.loads(body))
        watcher = ListingWatcher(
            client, USDM, start, Followers((), StreamSettings()), Recorder(), refresh_s=0.05,
            narrow=lambda found: found,
        )  # fmt: skip
        task = asyncio.create_task(watcher.run())
        await wait_for(lambda: watcher.refreshes >= 3, "three refreshes")
        await watcher.close()
        await watcher.close()
        await asyncio.wait_for(task, 5)
        assert task.exception() is None
        n = len(fake.requests_to(USDM.exchange_info_path))
        await watcher.run()  # closed: returns at once
        assert len(fake.requests_to(USDM.exchange_info_path)) == n


# -- hooks -----------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_on_contract_is_called_in_order_with_the_records_around_it() -> None:
    full = parse_exchange_info(
        "binance-usdm", orjson.loads(nautilus("http_futures_market_exchange_info.json"))
    )
    from ingestd.producers.contract_records import contract_records  # noqa: PLC0415 - local to the test

    btc_row, eth_row = contract_records(None, full, time.time_ns())
    depth = frame_of("usdm_btcusdt", "btcusdt@depth@0ms")[1]
    (diff_rec,) = FrameParser("binance-usdm", full).parse(depth, RECV)[1]
    calls: list[tuple[str, str]] = []

    async def on_record(r: Record) -> None:
        calls.append(("record", r.channel))

    async def on_contract(r: Record, ctx: HookContext) -> None:
        assert isinstance(ctx, HookContext)
        calls.append(("contract", r.native))

    batch: list[AnyRecord] = [diff_rec, btc_row, diff_rec, eth_row]
    only_depth = HookConsumer(
        "h",
        on_record,
        channels=frozenset({"depth_diff"}),
        timeout_s=1,
        context=HookContext(),
        on_contract=on_contract,
    )
    assert only_depth.channels == frozenset({"depth_diff", "contract"})  # the bus offers it contract rows too
    await only_depth.consume(batch)
    assert calls == [
        ("record", "depth_diff"),
        ("contract", "BTCUSDT"),
        ("record", "depth_diff"),
        ("contract", "ETHUSDT"),
    ]
    assert only_depth.stats()["contract_calls"] == 2
    calls.clear()
    everything = HookConsumer(
        "h", on_record, channels=None, timeout_s=1, context=HookContext(), on_contract=on_contract
    )
    await everything.consume(batch)
    assert calls == [
        ("record", "depth_diff"), ("record", "contract"), ("contract", "BTCUSDT"),
        ("record", "depth_diff"), ("record", "contract"), ("contract", "ETHUSDT"),
    ]  # fmt: skip


def test_on_contract_is_found_next_to_the_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hooks_with.py").write_text("async def on_record(r): pass\nasync def on_contract(r): pass\n")
    (tmp_path / "hooks_without.py").write_text("async def on_record(r): pass\n")
    (tmp_path / "hooks_sync.py").write_text("async def on_record(r): pass\ndef on_contract(r): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        found = load_contract_hook("hooks_with:on_record")
        assert found is not None
        assert found.__name__ == "on_contract"
        assert load_contract_hook("hooks_without:on_record") is None
        with pytest.raises(ConfigError, match=r"hooks_sync.on_contract is not an async function"):
            load_contract_hook("hooks_sync:on_record")
    finally:
        for name in ("hooks_with", "hooks_without", "hooks_sync"):
            sys.modules.pop(name, None)


# -- readiness -----------------------------------------------------------------------------------------------


class _Streams:
    def __init__(self, expected_for_s: float) -> None:
        self.expected_for_s = expected_for_s

    def stats(self) -> dict[str, Any]:
        return {"streams": {"newusdt@aggTrade": {
            "cadence": "trade", "first_frame_seen": False, "last_frame_age_s": None,
            "expected_for_s": self.expected_for_s,
        }}}  # fmt: skip


@pytest.mark.asyncio
async def test_a_listed_quiet_stream_gets_its_grace_from_its_listing(tmp_path: Path) -> None:
    from ingestd.app import Daemon  # noqa: PLC0415 - local to the test

    daemon = Daemon(settings_for("http://127.0.0.1:1", "ws://127.0.0.1:1", tmp_path))
    daemon.contracts = contract_set("binance-usdm", {"NEWUSDT"})
    daemon._started_at = time.monotonic() - 10 * daemon.settings.health.quiet_freshness_s
    daemon.streams = _Streams(5.0)  # type: ignore[assignment]
    assert daemon.readiness() == (True, {"not_ready": []})
    daemon.streams = _Streams(daemon.settings.health.quiet_freshness_s + 1)  # type: ignore[assignment]
    assert daemon.readiness() == (False, {"not_ready": ["stream newusdt@aggTrade: no frame yet"]})


# -- backfill of a contract that comes back ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_relisted_contract_goes_on_from_its_last_trade_a_new_one_from_its_first() -> None:
    aggs = agg_payloads()  # the bundled BTCUSDT capture's aggTrades, derived from its real trades
    client = RestClient("http://127.0.0.1:1", USDM)
    try:
        engine = Backfiller(client, "binance-usdm", ContractSet("binance-usdm", (BTC,)), Recorder(),
                            BackfillSettings(), ["agg_trade"])  # fmt: skip
        assert engine.observe([ws_agg(BTC, *aggs[0]), ws_agg(BTC, *aggs[1])]) is None
        engine.retire("BTCUSDT")
        engine.listed(BTC)  # back to TRADING: its ids go on, nothing before them is fetched again
        assert engine.observe([ws_agg(BTC, *aggs[2])]) is None
        assert engine.stats()["holes"] == 0
        # Back after trades were missed: only those are a hole (ids after the last one seen).
        engine.retire("BTCUSDT")
        engine.listed(BTC)
        (gap,) = engine.observe([ws_agg(BTC, *aggs[10])]) or []
        assert (gap.kind, gap.first_update_id, gap.final_update_id) == (
            "trade_gap",
            aggs[3][1]["a"],
            aggs[9][1]["a"],
        )
        # A contract never seen in the run: its history before its first record is a listing hole.
        eth = dataclasses.replace(BTC, native="ETHUSDT", symbol="ETH-USDT-PERP")
        engine.listed(eth)
        assert engine.observe([ws_agg(eth, *aggs[20])]) is None
        assert engine.stats()["holes"] == 2
        assert engine.stats()["pending"] == 2
    finally:
        await client.close()


# -- start-up and the command line -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_named_symbol_not_trading_yet_is_followed_not_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeBinance(exchange_info=nautilus("http_futures_market_exchange_info.json"))
    async with serving(fake) as client:
        strict = load_settings(environ={}, cli={"symbols": "BTCUSDT,NEWUSDT"})
        with pytest.raises(StartupError, match=r"not listed as trading: NEWUSDT \(2 trading symbols"):
            await discover_run_contracts(client, USDM, strict)
        follow = load_settings(environ={}, cli={"symbols": "BTCUSDT,NEWUSDT", "discovery": {"follow": True}})
        assert (await discover_run_contracts(client, USDM, follow)).natives == ["BTCUSDT"]
        assert "not trading (yet): NEWUSDT; followed, ingested once listed" in caplog.messages
        nothing = load_settings(environ={}, cli={"symbols": "NEWUSDT", "discovery": {"follow": True}})
        with pytest.raises(StartupError, match="discovery found no trading contracts"):
            await discover_run_contracts(client, USDM, nothing)


def test_the_flag_and_the_settings() -> None:
    args = build_parser().parse_args(["run", "--follow-listings"])
    assert cli_overrides(args) == {"discovery": {"follow": True}}
    assert cli_overrides(build_parser().parse_args(["run"])) == {}
    s = load_settings(environ={"INGESTD_DISCOVERY__REFRESH_S": "60"}, cli=cli_overrides(args))
    assert (s.discovery.follow, s.discovery.refresh_s) == (True, 60.0)
    with pytest.raises(ConfigError, match=r"discovery.refresh_s"):
        load_settings(environ={}, cli={"discovery": {"refresh_s": 0}})
