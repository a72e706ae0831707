"""Following listings, end to end: the daemon with ``--follow-listings`` against a live sim whose
exchangeInfo changes during the run (``--list-at`` / ``--delist-at``).

Ground truth: a real 30 s USDⓈ-M capture of four perpetuals with their real aggTrade, bookTicker
and depth streams (cryptofeed ``2021-04-17/BINANCE_FUTURES.ws.5.0``, snapshots from its ``.http``
sibling; "This product includes software developed by Bryant Moscon"). DENTUSDT is listed 5 s
into the run, XMRUSDT delisted at 12 s. Checked:

* DENTUSDT's aggTrades are stored exactly once from its listing on: ids contiguous and unique,
  each row equal to the payload the sim published, the ones before its connection opened
  fetched from REST (``source="rest"``, a ``listed during the run`` hole closed by ``backfill``);
* no connection open before the listing was closed, re-subscribed or changed (the sim's own
  record of every connection and its subscriptions); DENTUSDT came on new connections only;
* its book syncs; XMRUSDT's streams are retired and its book dropped, so ``/readyz`` never names
  them and answers 200 long after they fell silent;
* both changes are ``contract`` rows (DENTUSDT ``TRADING``, XMRUSDT ``SETTLING``), and a hook's
  ``on_contract`` saw them with its context already updated;
* refreshes that fail (a broken exchangeInfo body) are counted, logged once, retried, and cost
  nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from ingestd.app import Daemon
from ingestd.cli import main
from ingestd.consumers.hooks import HookContext
from ingestd.producers.contract_records import ContractRecord
from ingestd.producers.discovery import DiscoverySettings
from ingestd.records import Record
from ingestd.sim import SimVenue, load_capture
from ingestd.sim.schedule import ListingChange
from tests import listing_hooks
from tests.e2e import settings_for
from tests.faults_util import read_rows
from tests.ops import free_port, scrape, value
from tests.realdata import CF, need

CAPTURE = CF / "2021-04-17" / "BINANCE_FUTURES.ws.5.0"
LISTED, DELISTED = "DENTUSDT", "XMRUSDT"
LIST_AT, DELIST_AT = 5.0, 12.0
FRESHNESS_S = 3.0
MS = 1_000_000
S = 1_000_000_000


def published_aggs(native: str, from_ns: int) -> list[dict[str, Any]]:
    """The aggTrade payloads of ``native`` the sim publishes from ``from_ns`` (capture clock) on."""
    cap = load_capture(need(CAPTURE))
    sid = cap.streams.index(f"{native.lower()}@aggTrade")
    return [
        orjson.loads(f)["data"]
        for ts, s, f in zip(cap.ts, cap.sid, cap.frames, strict=True)
        if s == sid and ts >= from_ns
    ]


def venue_s(sim: SimVenue) -> float:
    """Seconds of venue time since the capture's start (the live clock)."""
    assert sim.schedule is not None
    return (sim.schedule.now_ns(asyncio.get_running_loop().time()) - sim.schedule.t0_ns) / S


async def until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{what}: not reached in {timeout} s") from None


class ContractWatch:
    """A hook's ``on_contract``: every row it was given, and what its context said then."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, bool]] = []

    async def __call__(self, row: Record, ctx: HookContext) -> None:
        assert isinstance(row, ContractRecord)
        assert ctx.contracts is not None
        self.rows.append((row.native, row.status, row.native in ctx.contracts))


async def on_agg_trade(record: Record) -> None:
    """The hook's record callback (the test reads on_contract only)."""


def book_state(daemon: Daemon, native: str) -> str | None:
    if daemon.books is None:
        return None
    row = daemon.books.stats()["symbols"].get(native)
    return None if row is None else str(row["state"])


def stream_records(daemon: Daemon, stream: str) -> int:
    if daemon.streams is None:
        return 0
    return int(daemon.streams.stats()["streams"].get(stream, {}).get("records", 0))


def backfill_idle(daemon: Daemon) -> bool:
    bf = daemon.backfill
    return (
        bf is not None and bf.filled_holes >= 1 and bf.stats()["pending"] == 0 and bf.stats()["active"] == 0
    )


async def readyz(port: int) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as resp:
        return resp.status, await resp.json()


@pytest.mark.asyncio
async def test_a_listing_and_a_delisting_during_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ingestd")
    data = tmp_path / "data"
    port = free_port()
    changes = [ListingChange(LIST_AT, LISTED, listed=True), ListingChange(DELIST_AT, DELISTED, listed=False)]
    watch = ContractWatch()
    not_ready_seen: list[str] = []
    async with SimVenue([need(CAPTURE)], speed=1, resume="live", listings=changes) as sim:
        settings = settings_for(
            sim.rest_url, sim.ws_url, data, channels="agg_trade,book_ticker,depth_diff",
            discovery={"follow": True}, clock={"enabled": False},
            health={"port": port, "freshness_s": FRESHNESS_S},
            streams={"backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        )  # fmt: skip
        # Below the configurable minimum (10 s) on purpose: the sim's listings are seconds apart.
        fast = DiscoverySettings.model_construct(follow=True, refresh_s=0.25)
        settings = settings.model_copy(update={"discovery": fast})
        daemon = Daemon(settings)
        daemon.add_hook(on_agg_trade, channels=["agg_trade"], on_contract=watch)
        task = asyncio.create_task(daemon.run())
        try:
            # The three contracts trading at start, books synced, both connections flowing.
            await until(lambda: daemon.contracts is not None and len(daemon.contracts) == 3, "started")
            assert daemon.contracts is not None
            assert LISTED not in daemon.contracts
            await until(
                lambda: all(book_state(daemon, n) == "synced" for n in ("KSMUSDT", "XMRUSDT", "YFIUSDT")),
                "the first books synced",
            )
            before = {c.id: c.subscriptions for c in sim.stats().connections if c.open}
            assert len(before) == 2  # /market (aggTrade) and /public (bookTicker, depth)
            assert not any("dent" in s for subs in before.values() for s in subs)

            # exchangeInfo breaks for a while: refreshes fail, the set stays, nothing stops.
            sim.faults.rest_bad_json("/fapi/v1/exchangeInfo", count=None)
            assert daemon.listings is not None
            listings = daemon.listings
            await until(lambda: venue_s(sim) >= LIST_AT + 1.8 and listings.failures >= 2, "refreshes failing")
            assert LISTED not in daemon.contracts
            sim.faults.clear()

            # The listing, found by the next refresh, a couple of seconds after it happened.
            await until(lambda: daemon.contracts is not None and LISTED in daemon.contracts, "listed")
            await until(
                lambda: (
                    book_state(daemon, LISTED) == "synced"
                    and backfill_idle(daemon)
                    and stream_records(daemon, "dentusdt@aggTrade") >= 3
                ),
                "the listed contract's book synced, its trades backfilled and streaming",
            )

            # The delisting; then, long after its streams fell silent, /readyz is still fine.
            await until(lambda: daemon.contracts is not None and DELISTED not in daemon.contracts, "delisted")

            def ready() -> bool:
                ok, detail = daemon.readiness()
                not_ready_seen.extend(detail["not_ready"])
                return ok and venue_s(sim) >= DELIST_AT + 2 * FRESHNESS_S + 1

            await until(ready, "ready after the delisting")
            status, body = await readyz(port)
            assert (status, body["ready"]) == (200, True), body
            assert book_state(daemon, DELISTED) is None

            after = {c.id: c for c in sim.stats().connections}
            for cid, subs in before.items():
                assert after[cid].open, f"connection {cid} was closed"
                assert after[cid].subscriptions == subs, f"connection {cid} was re-subscribed"
            new = [c for c in after.values() if c.id not in before]
            assert len(new) == 2, new
            assert all(s.startswith("dentusdt@") for c in new for s in c.subscriptions)
            assert sim.stats().connections_total == 4
            conns = daemon.stats()["streams"]["connections"]
            assert [conns[n]["reconnects"] for n in sorted(conns)] == [0, 0, 0, 0]
            fams = await scrape(f"http://127.0.0.1:{port}")
            assert value(fams, "ingestd_listing_changes_total", kind="listed") == 1
            assert value(fams, "ingestd_listing_changes_total", kind="delisted") == 1
            assert value(fams, "ingestd_listing_changes_total", kind="changed") == 0
            assert value(fams, "ingestd_listing_refresh_failures_total") >= 2
            assert value(fams, "ingestd_contracts") == 3
        finally:
            daemon.request_stop("test done")
            assert await asyncio.wait_for(task, 30) == 0
        assert sim.schedule is not None
        listed_at = sim.schedule.listed_at[LISTED]

    assert not [n for n in not_ready_seen if "xmr" in n.lower()], not_ready_seen

    # DENTUSDT's aggTrades: exactly once, from its listing on, each one the venue's.
    rows = sorted(
        (r for r in read_rows(data, "agg_trade") if r["native"] == LISTED), key=lambda r: r["agg_id"]
    )
    want = published_aggs(LISTED, listed_at)
    assert [r["agg_id"] for r in rows] == [p["a"] for p in want[: len(rows)]]
    assert len(rows) >= 10
    for r, p in zip(rows, want, strict=False):
        got = (
            r["first_trade_id"],
            r["last_trade_id"],
            r["price"],
            r["qty"],
            r["is_buyer_maker"],
            r["transaction_ts"],
        )
        assert got == (p["f"], p["l"], float(p["p"]), float(p["q"]), p["m"], p["T"] * MS), r
        assert r["exchange_ts"] == (p["E"] * MS if r["source"] == "ws" else None)
    sources = [r["source"] for r in rows]
    assert "rest" in sources
    assert "ws" in sources
    assert sources == sorted(sources, key=lambda s: s == "ws"), "REST rows are the ones before the stream"
    gaps = [g for g in read_rows(data, "gap") if g["native"] == LISTED and g["data_channel"] == "agg_trade"]
    assert sorted(g["kind"] for g in gaps) == ["backfill", "trade_gap"]
    hole = next(g for g in gaps if g["kind"] == "trade_gap")
    assert hole["reason"] == "listed during the run"
    assert (hole["first_update_id"], hole["count"]) == (want[0]["a"], sources.count("rest"))

    # Both changes are contract rows, after the start-up ones; the hook saw them, context updated.
    contract_rows = sorted(read_rows(data, "contract"), key=lambda r: r["recv_ts"])
    assert [(r["native"], r["status"]) for r in contract_rows[3:]] == [
        (LISTED, "TRADING"),
        (DELISTED, "SETTLING"),
    ]
    assert sorted((r["native"], r["status"]) for r in contract_rows[:3]) == [
        ("KSMUSDT", "TRADING"), (DELISTED, "TRADING"), ("YFIUSDT", "TRADING"),
    ]  # fmt: skip
    assert watch.rows[3:] == [(LISTED, "TRADING", True), (DELISTED, "SETTLING", False)]
    assert sorted(watch.rows[:3]) == [
        ("KSMUSDT", "TRADING", True),
        (DELISTED, "TRADING", True),
        ("YFIUSDT", "TRADING", True),
    ]

    # The same hook module replayed on the stored data: its on_contract sees the same changes.
    listing_hooks.ROWS.clear()
    # (the CLI runs its own event loop: in a thread of its own here)
    replay = ["replay", "--data", str(data), "--hook", "tests.listing_hooks:on_record"]
    assert await asyncio.to_thread(main, replay) == 0
    assert listing_hooks.ROWS[3:] == [(LISTED, "TRADING", True), (DELISTED, "SETTLING", False)]
    assert len(listing_hooks.ROWS) == 5

    messages = [r.getMessage() for r in caplog.records if r.name == "ingestd.listings"]
    listed_line = next(m for m in messages if m.startswith(f"listed {LISTED}"))
    # New connections, named after the two already running.
    assert "binance-usdm/market#1" in listed_line, listed_line
    assert "binance-usdm/public#1" in listed_line, listed_line
    assert any(m.startswith(f"delisted {DELISTED} (XMR-USDT-PERP, SETTLING)") for m in messages), messages
    # The failing refreshes: one warning for the episode, one line when it ended.
    assert sum(m.startswith("listing refresh failed") for m in messages) == 1
    assert sum(m.startswith("listing refresh works again") for m in messages) == 1
