"""BookManager on real sequences with one scripted fault each: exactly the hit symbol resyncs,
the gap log says what happened with the right ids, and everything else is untouched.

Faults are derived from real captures (tests/data: hftbacktest, nkaz001/hftbacktest, MIT;
cryptofeed, bmoscon/cryptofeed: "This product includes software developed by Bryant Moscon"): a
diff removed, a level or a bookTicker tampered, a snapshot withheld or made too old. A later
"REST snapshot" is the exact book after a real diff, rebuilt from the untouched sequence.
"""

from __future__ import annotations

import msgspec
import pytest

from ingestd.book import sync as sync_module
from ingestd.book.manager import BookManager
from ingestd.book.records import BookTop, Gap, GapKind
from ingestd.book.sync import BookSync, Market, SyncState
from ingestd.producers.events import ConnectionEvent, ConnectionEventKind
from ingestd.records import BookTicker, DepthDiff, DepthSnapshot, Record, Trade
from ingestd.venues.binance.symbols import ContractSet
from tests.realdata import need
from tests.test_sync_realdata import (
    CF,
    HFT,
    SPOT,
    USDM,
    Replay,
    read_cryptofeed,
    read_hft,
    replay,
)

FUT_NATIVES = ["SUSHIUSDT", "AKROUSDT", "KEEPUSDT", "CTKUSDT"]
SPOT_NATIVES = ["XMRBTC", "FTMUSDT", "SXPBTC", "BADGERBTC"]


@pytest.fixture(scope="module")
def fut() -> list[Record]:
    return read_cryptofeed(
        CF / "2021-10_head/BINANCE_FUTURES.http.0.0", CF / "2021-10_head/BINANCE_FUTURES.ws.1.0", USDM
    )


@pytest.fixture(scope="module")
def spot() -> list[Record]:
    return read_cryptofeed(CF / "2021-08-14/BINANCE.http.0.0", CF / "2021-08-14/BINANCE.ws.1.0", SPOT)


def hft(name: str, venue: str, native: str) -> list[Record]:
    return list(read_hft(need(HFT / name), venue, native))


def snapshot_after(records: list[Record], native: str, market: Market, u: int, recv_ts: int) -> DepthSnapshot:
    """The exact book of ``native`` right after its diff ending at ``u``, as a REST body."""
    s = BookSync(market, 1_000_000)
    for r in records:
        if r.native != native:
            continue
        if isinstance(r, DepthSnapshot):
            s.on_snapshot(r)
        elif isinstance(r, DepthDiff):
            s.on_diff(r)
            if r.final_update_id == u:
                break
    assert s.is_synced
    assert s.last_update_id == u
    return DepthSnapshot(
        venue=records[0].venue,
        symbol=native,
        native=native,
        exchange_ts=None,
        recv_ts=recv_ts,
        last_update_id=u,
        bids=sorted(s.book.bids.items(), reverse=True),
        asks=sorted(s.book.asks.items()),
    )


def index_of_diff(records: list[Record], native: str, nth_after_sync: int) -> int:
    """Position of ``native``'s n-th diff after its snapshot line."""
    seen_snapshot = False
    n = 0
    for i, r in enumerate(records):
        if r.native != native:
            continue
        if isinstance(r, DepthSnapshot):
            seen_snapshot = True
        elif isinstance(r, DepthDiff) and seen_snapshot:
            n += 1
            if n == nth_after_sync:
                return i
    raise AssertionError(f"{native} has fewer than {nth_after_sync} diffs after its snapshot")


def next_diff(records: list[Record], native: str, start: int) -> int:
    return next(
        i
        for i in range(start, len(records))
        if isinstance(records[i], DepthDiff) and records[i].native == native
    )


def only_gaps(records: list[Record]) -> list[Gap]:
    """The records, which must all be gap records (typed as such)."""
    assert all(isinstance(g, Gap) for g in records)
    return [g for g in records if isinstance(g, Gap)]


def books_equal(a: BookManager, b: BookManager, native: str) -> bool:
    va, vb = a.get(native), b.get(native)
    assert va is not None
    assert vb is not None
    return va.levels(100_000) == vb.levels(100_000) and va.last_update_id == vb.last_update_id


def untouched(r: Replay, natives: list[str]) -> None:
    stats = r.manager.stats()["symbols"]
    for n in natives:
        assert stats[n]["state"] == "synced", n
        assert stats[n]["syncs"] == 1, n
        assert stats[n]["gaps"] == {}, n
        assert stats[n]["audit_mismatches"] == 0, n
    assert not [g for g in r.gaps if g.native in natives]


# -- a missing diff ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("market", "natives", "victim"),
    [("futures", FUT_NATIVES, "SUSHIUSDT"), ("spot", SPOT_NATIVES, "FTMUSDT")],
)
def test_dropped_diff_resyncs_exactly_that_symbol(
    fut: list[Record], spot: list[Record], market: Market, natives: list[str], victim: str
) -> None:
    records = fut if market == "futures" else spot
    venue = records[0].venue
    reference = replay(natives, venue, market)
    reference.feed(records)

    drop = index_of_diff(records, victim, 40)
    before = records[
        next(
            i
            for i in range(drop - 1, 0, -1)
            if isinstance(records[i], DepthDiff) and records[i].native == victim
        )
    ]
    offending = records[next_diff(records, victim, drop + 1)]
    bridge_at = next_diff(
        records, victim, next_diff(records, victim, next_diff(records, victim, drop + 1) + 1) + 1
    )
    bridge = records[bridge_at]
    assert isinstance(before, DepthDiff)
    assert isinstance(offending, DepthDiff)
    assert isinstance(bridge, DepthDiff)
    snap = snapshot_after(records, victim, market, bridge.final_update_id, bridge.recv_ts + 1)
    faulty = [*records[:drop], *records[drop + 1 : bridge_at + 1], snap, *records[bridge_at + 1 :]]

    r = replay(natives, venue, market)
    r.feed(faulty)

    assert sorted(r.requests) == sorted([*((n, False) for n in natives), (victim, True)])
    gaps = r.gaps
    assert [g.kind for g in gaps] == ["desync", "resync"]
    start, end = gaps
    assert (start.native, start.symbol, start.venue) == (
        victim,
        f"{victim}-PERP" if market == "futures" else victim,
        venue,
    )
    assert start.last_update_id == before.final_update_id
    assert (start.first_update_id, start.final_update_id, start.prev_final_update_id) == (
        offending.first_update_id,
        offending.final_update_id,
        offending.prev_final_update_id,
    )
    assert (start.started_ts, start.recv_ts, start.exchange_ts, start.ended_ts) == (
        offending.recv_ts,
        offending.recv_ts,
        offending.exchange_ts,
        None,
    )
    # Futures apply the diff with u == L from the buffer, so the snapshot itself ends the gap;
    # spot drops u <= L, so the next live diff (U == L + 1) ends it.
    synced_by = snap if market == "futures" else records[next_diff(records, victim, bridge_at + 1)]
    synced_u = bridge.final_update_id if market == "futures" else synced_by.final_update_id  # type: ignore[attr-defined]
    assert (end.started_ts, end.ended_ts, end.recv_ts) == (
        offending.recv_ts,
        synced_by.recv_ts,
        synced_by.recv_ts,
    )
    assert (end.last_update_id, end.first_update_id, end.final_update_id) == (
        before.final_update_id,
        bridge.final_update_id,
        synced_u,
    )
    st = r.manager.stats()
    assert st["symbols"][victim]["syncs"] == 2
    assert st["symbols"][victim]["resyncs"] == 1
    assert st["symbols"][victim]["gaps"] == {"desync": 1}
    assert st["totals"]["audit_mismatches"] == 0
    untouched(r, [n for n in natives if n != victim])
    # After the resync the book is exactly the book of the untouched replay.
    for n in natives:
        assert books_equal(r.manager, reference.manager, n), n


# -- crossed book, stale snapshot, overflow -------------------------------------------------


def test_crossed_book_resyncs_that_symbol(fut: list[Record]) -> None:
    at = index_of_diff(fut, "CTKUSDT", 20)
    real = fut[at]
    assert isinstance(real, DepthDiff)
    # The real diff, plus one bid far above every ask.
    tampered = DepthDiff(
        **{f: getattr(real, f) for f in real.__struct_fields__ if f != "bids"},
        bids=[*real.bids, (1_000.0, 1.0)],
    )
    r = replay(FUT_NATIVES, USDM, "futures")
    r.feed([*fut[:at], tampered, *fut[at + 1 :]])
    [gap] = r.gaps
    assert (gap.kind, gap.native) == ("crossed", "CTKUSDT")
    assert (gap.first_update_id, gap.final_update_id, gap.prev_final_update_id) == (
        real.first_update_id,
        real.final_update_id,
        real.prev_final_update_id,
    )
    assert gap.last_update_id == real.prev_final_update_id  # futures: pu is the last good u
    assert "best bid (1000.0, 1.0)" in gap.reason
    assert r.requests[-1] == ("CTKUSDT", True)
    assert r.manager.get("CTKUSDT") is None
    later = sum(1 for x in fut[at + 1 :] if isinstance(x, DepthDiff) and x.native == "CTKUSDT")
    assert r.manager.stats()["symbols"]["CTKUSDT"]["buffered"] == later
    untouched(r, ["SUSHIUSDT", "AKROUSDT", "KEEPUSDT"])


def test_stale_snapshot_is_requested_again() -> None:
    """max_buffered=1 keeps only the last diff before the snapshot line, which is newer than it."""
    recs = hft("usdm_btcusdt_20240808.gz", USDM, "BTCUSDT")
    snap_at = next(i for i, x in enumerate(recs) if isinstance(x, DepthSnapshot))
    r = replay(["BTCUSDT"], USDM, "futures", max_buffered=1)
    r.feed(recs[: snap_at + 1])
    kinds = [g.kind for g in r.gaps]
    assert kinds == ["buffer_overflow", "stale_snapshot"]
    stale = r.gaps[1]
    assert stale.final_update_id == 5123107852948
    assert r.requests == [("BTCUSDT", False), ("BTCUSDT", True)]
    assert r.manager.state("BTCUSDT") is SyncState.BUFFERING
    # A newer snapshot (the exact book after the 10th diff past the line) syncs it.
    tenth = next_diff(recs, "BTCUSDT", snap_at)
    for _ in range(9):
        tenth = next_diff(recs, "BTCUSDT", tenth + 1)
    u = recs[tenth].final_update_id  # type: ignore[attr-defined]
    snap = snapshot_after(recs, "BTCUSDT", "futures", u, recs[tenth].recv_ts + 1)
    r.feed([*recs[snap_at + 1 : tenth + 1], snap, *recs[tenth + 1 :]])
    st = r.manager.stats()["symbols"]["BTCUSDT"]
    assert (st["state"], st["syncs"], st["audit_mismatches"]) == ("synced", 1, 0)
    assert st["audit_checks"] > 600
    assert [g.kind for g in r.gaps] == ["buffer_overflow", "stale_snapshot", "resync"]
    assert r.gaps[2].started_ts == r.gaps[0].started_ts


def test_snapshot_older_than_the_stream_start_is_requested_again() -> None:
    """The snapshot line delivered before any diff reached us: the first diff proves it stale."""
    recs = hft("usdm_btcusdt_20240808.gz", USDM, "BTCUSDT")
    snap_at = next(i for i, x in enumerate(recs) if isinstance(x, DepthSnapshot))
    r = replay(["BTCUSDT"], USDM, "futures")
    r.feed([recs[snap_at], *recs[snap_at + 1 : snap_at + 200]])
    [gap] = r.gaps
    first = next(x for x in recs[snap_at:] if isinstance(x, DepthDiff))
    assert (gap.kind, gap.first_update_id) == ("stale_snapshot", first.first_update_id)
    assert r.requests == [("BTCUSDT", True)]


def test_buffer_overflow_still_syncs_when_the_snapshot_is_newer() -> None:
    recs = hft("usdm_btcusdt_20240808.gz", USDM, "BTCUSDT")
    r = replay(["BTCUSDT"], USDM, "futures", max_buffered=2)
    r.feed(recs)
    assert [g.kind for g in r.gaps] == ["buffer_overflow", "resync"]
    st = r.manager.stats()["symbols"]["BTCUSDT"]
    # 6 diffs before the snapshot, 2 kept: the dropped 4 were all inside the snapshot anyway.
    assert (st["overflow_dropped"], st["syncs"]) == (4, 1)
    assert (st["audit_checks"], st["audit_mismatches"]) == (629, 0)
    assert r.requests == [("BTCUSDT", False)]


# -- connection events ----------------------------------------------------------------------


def event(
    kind: ConnectionEventKind, name: str, natives: list[str], streams: list[str], ts: int
) -> ConnectionEvent:
    return ConnectionEvent(kind, name, tuple(streams), tuple(natives), ts, "close 1006")


def test_disconnect_resyncs_only_that_connections_books(fut: list[Record]) -> None:
    reference = replay(FUT_NATIVES, USDM, "futures")
    reference.feed(fut)
    half = len(fut) // 2
    r = replay(FUT_NATIVES, USDM, "futures")
    r.feed(fut[:half])
    last = {n: r.manager.get(n).last_update_id for n in FUT_NATIVES}  # type: ignore[union-attr]
    held = r.manager.get("SUSHIUSDT-PERP")
    assert held is not None
    conn0 = ["sushiusdt@depth@100ms", "akrousdt@depth@100ms", "sushiusdt@bookTicker", "akrousdt@bookTicker"]
    ts = fut[half].recv_ts
    ev = event(
        ConnectionEventKind.DISCONNECTED, "binance-usdm/public#0", ["SUSHIUSDT", "AKROUSDT"], conn0, ts
    )
    gaps = only_gaps(r.manager.on_connection_event(ev))
    assert [(g.kind, g.native, g.last_update_id, g.started_ts) for g in gaps] == [
        ("disconnect", "SUSHIUSDT", last["SUSHIUSDT"], ts),
        ("disconnect", "AKROUSDT", last["AKROUSDT"], ts),
    ]
    assert all(isinstance(g, Gap) and "binance-usdm/public#0" in g.reason for g in gaps)
    # A connection carrying only bookTickers costs no book.
    ev_bt = event(ConnectionEventKind.DISCONNECTED, "x#9", ["KEEPUSDT"], ["keepusdt@bookTicker"], ts)
    assert r.manager.on_connection_event(ev_bt) == []
    # Reconnect attempts that fail before any diff add nothing while the gap is open.
    assert r.manager.on_connection_event(ev) == []
    assert r.manager.get("SUSHIUSDT") is None
    assert (held.is_synced, held.best_bid(), held.last_update_id, held.levels(3)) == (
        False,
        None,
        None,
        ([], []),
    )
    assert r.manager.get("KEEPUSDT") is not None

    # The new connection's first diffs ask for urgent snapshots; derived snapshots resync.
    rest = fut[half:]
    extra_at = {}
    for n in ("SUSHIUSDT", "AKROUSDT"):
        i = next_diff(rest, n, next_diff(rest, n, 0) + 1)
        u = rest[i].final_update_id  # type: ignore[attr-defined]
        extra_at[i] = snapshot_after(fut, n, "futures", u, rest[i].recv_ts + 1)
    replayed: list[Record] = []
    for i, rec in enumerate(rest):
        replayed.append(rec)
        if i in extra_at:
            replayed.append(extra_at[i])
    r.feed(replayed)
    assert sorted(r.requests[4:]) == [("AKROUSDT", True), ("SUSHIUSDT", True)]
    resyncs = [g for g in r.gaps if g.kind == "resync"]
    assert sorted(g.native for g in resyncs) == ["AKROUSDT", "SUSHIUSDT"]
    assert all(g.started_ts == ts and g.ended_ts is not None and g.ended_ts > ts for g in resyncs)
    untouched(r, ["KEEPUSDT", "CTKUSDT"])
    for n in FUT_NATIVES:
        assert books_equal(r.manager, reference.manager, n), n
    totals = r.manager.stats()["totals"]
    assert (totals["gaps"], totals["resyncs"]) == ({"disconnect": 2}, 2)


def test_silent_stream_is_a_notice_not_a_resync(fut: list[Record]) -> None:
    r = replay(FUT_NATIVES, USDM, "futures")
    r.feed(fut[: len(fut) // 2])
    ev = event(
        ConnectionEventKind.STREAM_SILENT, "binance-usdm/public#1", ["KEEPUSDT"], ["keepusdt@bookTicker"], 7
    )
    [gap] = only_gaps(r.manager.on_connection_event(ev))
    assert (gap.kind, gap.native, gap.started_ts, gap.ended_ts) == ("silent_stream", "KEEPUSDT", 7, None)
    assert "keepusdt@bookTicker" in gap.reason
    assert r.manager.get("KEEPUSDT") is not None
    st = r.manager.stats()["symbols"]["KEEPUSDT"]
    assert (st["gap_open_since"], st["gaps"]) == (None, {"silent_stream": 1})
    other = event(ConnectionEventKind.CONNECTED, "binance-usdm/public#1", ["KEEPUSDT"], [], 8)
    assert r.manager.on_connection_event(other) == []


# -- the bookTicker audit -------------------------------------------------------------------


@pytest.mark.parametrize("book_depth", [0, 2])
def test_audit_mismatch_resyncs_that_symbol(fut: list[Record], book_depth: int) -> None:
    keep_u = {
        x.final_update_id
        for x in fut[index_of_diff(fut, "KEEPUSDT", 5) :]
        if isinstance(x, DepthDiff) and x.native == "KEEPUSDT"
    }
    at = next(
        i
        for i, x in enumerate(fut)
        if isinstance(x, BookTicker) and x.native == "KEEPUSDT" and x.update_id in keep_u
    )
    real = fut[at]
    assert isinstance(real, BookTicker)
    tampered = BookTicker(
        **{f: getattr(real, f) for f in real.__struct_fields__ if f != "bid_qty"}, bid_qty=real.bid_qty + 1
    )
    r = replay(FUT_NATIVES, USDM, "futures", book_depth=book_depth, book_every=1)
    r.feed([*fut[:at], tampered, *fut[at + 1 :]])
    gap = r.gaps[0]
    # The ticker is checked against the book of the diff with the same id: that BookTop (when
    # asked for) was written before the mismatch discarded the book.
    tops = [x for x in r.extra if isinstance(x, BookTop) and x.native == "KEEPUSDT"]
    assert [t.last_update_id for t in tops if t.last_update_id == real.update_id] == (
        [real.update_id] if book_depth else []
    )
    assert (gap.kind, gap.native, gap.first_update_id, gap.final_update_id) == (
        "audit_mismatch",
        "KEEPUSDT",
        real.update_id,
        real.update_id,
    )
    assert gap.recv_ts == real.recv_ts
    assert {g.native for g in r.gaps} == {"KEEPUSDT"}
    assert ("KEEPUSDT", True) in r.requests
    st = r.manager.stats()["symbols"]["KEEPUSDT"]
    assert (st["audit_mismatches"], st["state"]) == (1, "buffering")
    assert r.manager.get("KEEPUSDT") is None
    untouched(r, ["SUSHIUSDT", "AKROUSDT", "CTKUSDT"])


# -- readiness and book views ----------------------------------------------------------------


def test_readiness_gate(spot: list[Record]) -> None:
    r = replay(SPOT_NATIVES, SPOT, "spot")
    assert r.manager.get("FTMUSDT") is None
    assert r.manager.get("NOPE") is None
    first_snap = next(i for i, x in enumerate(spot) if isinstance(x, DepthSnapshot) and x.native == "FTMUSDT")
    r.feed(spot[:first_snap])
    assert r.manager.get("FTMUSDT") is None
    assert r.manager.state("FTMUSDT") is SyncState.BUFFERING
    r.feed(spot[first_snap:])
    view = r.manager.get("FTMUSDT")
    assert view is not None
    assert r.manager.get("FTMUSDT") is view  # native and normalized names give the same view
    assert view.is_synced
    last_ticker = [x for x in spot if isinstance(x, BookTicker) and x.native == "FTMUSDT"][-1]
    if last_ticker.update_id == view.last_update_id:
        assert view.best_bid() == (last_ticker.bid_price, last_ticker.bid_qty)
    bids, asks = view.levels(3)
    assert bids[0] == view.best_bid()
    assert asks[0] == view.best_ask()
    assert "FTMUSDT" in repr(view)


def test_book_top_records_match_the_book_tickers_field_by_field() -> None:
    recs = hft("spot_ethusdt_20240808.gz", SPOT, "ETHUSDT")
    r = replay(["ETHUSDT"], SPOT, "spot", book_depth=3, book_every=1)
    r.feed(recs)
    tops = [x for x in r.extra if isinstance(x, BookTop)]
    st = r.manager.stats()["symbols"]["ETHUSDT"]
    # One when the snapshot line syncs the book (its first diff applied from the buffer), then
    # one per diff.
    assert len(tops) == st["applied"]
    diffs = {x.final_update_id: x for x in recs if isinstance(x, DepthDiff)}
    by_u = {t.last_update_id: t for t in tops}
    matched = 0
    for t in (x for x in recs if isinstance(x, BookTicker)):
        top = by_u.get(t.update_id)
        if top is None:
            continue
        matched += 1
        assert top.bids[0] == (t.bid_price, t.bid_qty)
        assert top.asks[0] == (t.ask_price, t.ask_qty)
    assert matched == st["audit_checks"] == 577
    for top in tops[1:]:
        d = diffs[top.last_update_id]
        assert (top.venue, top.symbol, top.native, top.depth) == (SPOT, "ETHUSDT", "ETHUSDT", 3)
        assert (top.exchange_ts, top.recv_ts, top.transaction_ts) == (d.exchange_ts, d.recv_ts, None)
        assert len(top.bids) == len(top.asks) == 3
        assert top.bids[0][0] > top.bids[1][0] > top.bids[2][0]
        assert top.asks[0][0] < top.asks[1][0] < top.asks[2][0]
        assert top.bids[0][0] < top.asks[0][0]

    sparse = replay(["ETHUSDT"], SPOT, "spot", book_depth=1, book_every=100)
    sparse.feed(recs)
    n = sum(isinstance(x, BookTop) for x in sparse.extra)
    assert n == 1 + (st["applied"] - 1) // 100


def test_other_records_ignored_and_stats_totals(fut: list[Record]) -> None:
    r = replay(FUT_NATIVES, USDM, "futures")
    trade = Trade(
        venue=USDM,
        symbol="SUSHIUSDT-PERP",
        native="SUSHIUSDT",
        exchange_ts=1,
        recv_ts=1,
        trade_id=1,
        price=7.6,
        qty=1.0,
        is_buyer_maker=True,
    )
    assert r.manager.process([trade]) == []
    r.feed(fut)
    unknown = next(x for x in fut if isinstance(x, DepthDiff))
    assert (
        r.manager.process(
            [
                DepthDiff(
                    **{f: getattr(unknown, f) for f in unknown.__struct_fields__ if f != "native"},
                    native="OTHER",
                )
            ]
        )
        == []
    )
    totals = r.manager.stats()["totals"]
    per = r.manager.stats()["symbols"]
    assert totals["symbols"] == totals["synced"] == totals["syncs"] == 4
    assert totals["applied"] == sum(s["applied"] for s in per.values())
    assert totals["audit_checks"] == sum(s["audit_checks"] for s in per.values()) > 0
    assert (totals["resyncs"], totals["gaps"], totals["unknown_symbols"], totals["snapshot_requests"]) == (
        0,
        {},
        1,
        4,
    )


def test_ban_gap_on_behalf_of_the_snapshot_producer(fut: list[Record]) -> None:
    r = replay(FUT_NATIVES, USDM, "futures")
    ctk_snapshot = next(
        i for i, x in enumerate(fut) if isinstance(x, DepthSnapshot) and x.native == "CTKUSDT"
    )
    r.feed(fut[:ctk_snapshot])
    [gap] = only_gaps(r.manager.record_gap("CTKUSDT", GapKind.BAN, "HTTP 418 until 12:00", 99))
    assert (gap.kind, gap.native, gap.started_ts, gap.reason) == (
        "ban",
        "CTKUSDT",
        99,
        "HTTP 418 until 12:00",
    )
    assert r.manager.record_gap("NOPE", GapKind.BAN, "x", 1) == []
    r.feed(fut[ctk_snapshot:])
    [end] = [g for g in r.gaps if g.native == "CTKUSDT"]
    assert (end.kind, end.started_ts) == ("resync", 99)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="book_depth"):
        BookManager(
            USDM, ContractSet(USDM, ()), market="futures", request_snapshot=lambda n, u: None, book_depth=-1
        )


# -- ids that restart lower -------------------------------------------------------------------


def _shifted(r: Record, by: int) -> Record:
    """``r`` with its update ids ``by`` lower (the venue restarted its id space)."""
    if isinstance(r, DepthDiff):
        return msgspec.structs.replace(
            r,
            first_update_id=r.first_update_id - by,
            final_update_id=r.final_update_id - by,
            prev_final_update_id=r.prev_final_update_id - by,
        )
    if isinstance(r, BookTicker):
        return msgspec.structs.replace(r, update_id=r.update_id - by)
    if isinstance(r, DepthSnapshot):
        return msgspec.structs.replace(r, last_update_id=r.last_update_id - by)
    return r


def test_an_id_reset_of_the_depth_stream_resyncs_the_book() -> None:
    """The duplicate filter saw the diffs' ids restart lower and wrote its ``id_reset`` record:
    the book is discarded at once (an ``id_reset`` gap, an urgent snapshot request), never fed
    diffs of another id space, and syncs again from a snapshot in the new one."""
    recs = hft("usdm_btcusdt_20240808.gz", USDM, "BTCUSDT")
    r = replay(["BTCUSDT"], USDM, "futures")
    cut = index_of_diff(recs, "BTCUSDT", 100)
    r.feed(recs[:cut])
    assert r.manager.state("BTCUSDT") is SyncState.SYNCED
    before = r.manager.get("BTCUSDT")
    assert before is not None
    prev = before.last_update_id
    by = 5_000_000_000_000
    first = recs[cut]
    assert isinstance(first, DepthDiff)
    notice = Gap(venue=first.venue, symbol=first.symbol, native="BTCUSDT", exchange_ts=first.exchange_ts,
                 recv_ts=first.recv_ts, kind=GapKind.ID_RESET.value, reason="btcusdt@depth: ids restarted",
                 last_update_id=prev,
                 first_update_id=first.first_update_id - by, final_update_id=None, started_ts=first.recv_ts,
                 data_channel="depth_diff")  # fmt: skip
    tenth = cut
    for _ in range(10):
        tenth = next_diff(recs, "BTCUSDT", tenth + 1)
    r.feed([notice, *(_shifted(x, by) for x in recs[cut : tenth + 1])])
    assert [(g.kind, g.last_update_id) for g in r.gaps] == [("id_reset", prev)]
    assert r.requests[-1] == ("BTCUSDT", True)
    assert r.manager.state("BTCUSDT") is SyncState.BUFFERING
    assert r.manager.get("BTCUSDT") is None
    u = recs[tenth].final_update_id  # type: ignore[attr-defined]
    snap = _shifted(snapshot_after(recs, "BTCUSDT", "futures", u, recs[tenth].recv_ts + 1), by)
    r.feed([snap, *(_shifted(x, by) for x in recs[tenth + 1 :])])
    st = r.manager.stats()["symbols"]["BTCUSDT"]
    assert (st["state"], st["syncs"], st["audit_mismatches"]) == ("synced", 2, 0)
    assert [g.kind for g in r.gaps] == ["id_reset", "resync"]
    view = r.manager.get("BTCUSDT")
    assert view is not None
    last = [x for x in recs if isinstance(x, DepthDiff)][-1]
    assert view.last_update_id == last.final_update_id - by


def test_a_long_run_of_diffs_below_the_book_resyncs_it() -> None:
    """Ids went back with no ``id_reset`` notice (no duplicate filter in front, or one that let
    them through): a few diffs at or below the book's id are stale copies and ignored, but a long
    run of them is a broken sequence: the book resyncs (``desync`` gap, urgent snapshot) instead
    of sitting on a book no diff updates any more."""
    recs = hft("usdm_btcusdt_20240808.gz", USDM, "BTCUSDT")
    r = replay(["BTCUSDT"], USDM, "futures")
    cut = index_of_diff(recs, "BTCUSDT", 100)
    r.feed(recs[:cut])
    assert r.manager.state("BTCUSDT") is SyncState.SYNCED
    by = 5_000_000_000_000
    lower = [_shifted(x, by) for x in recs[cut:] if isinstance(x, DepthDiff)]
    run: int = sync_module.DUPLICATE_RUN
    assert len(lower) > run
    r.feed(lower[:run])
    assert r.gaps == []  # a short run: stale copies
    assert r.manager.state("BTCUSDT") is SyncState.SYNCED
    r.feed(lower[run : run + 1])
    assert [g.kind for g in r.gaps] == ["desync"]
    assert r.requests[-1] == ("BTCUSDT", True)
    assert r.manager.state("BTCUSDT") is SyncState.BUFFERING


def test_a_snapshot_fetched_before_the_id_reset_is_refused() -> None:
    """A snapshot in flight when the ids restarted (old id space, stamped before the restart)
    would contain every new diff and the book would never sync on it: it is refused and asked for
    again; the next one, of the new id space, syncs the book."""
    recs = hft("usdm_btcusdt_20240808.gz", USDM, "BTCUSDT")
    r = replay(["BTCUSDT"], USDM, "futures")
    cut = index_of_diff(recs, "BTCUSDT", 100)
    r.feed(recs[:cut])
    before = r.manager.get("BTCUSDT")
    assert before is not None
    prev = before.last_update_id
    by = 5_000_000_000_000
    first = recs[cut]
    assert isinstance(first, DepthDiff)
    assert first.exchange_ts is not None
    notice = Gap(venue=first.venue, symbol=first.symbol, native="BTCUSDT", exchange_ts=first.exchange_ts,
                 recv_ts=first.recv_ts, kind=GapKind.ID_RESET.value, reason="btcusdt@depth: ids restarted",
                 last_update_id=prev, first_update_id=first.first_update_id - by, final_update_id=None,
                 started_ts=first.recv_ts, data_channel="depth_diff")  # fmt: skip
    tenth = cut
    for _ in range(10):
        tenth = next_diff(recs, "BTCUSDT", tenth + 1)
    r.feed([notice, *(_shifted(x, by) for x in recs[cut : tenth + 1])])
    asked = len(r.requests)
    assert prev is not None
    stale = msgspec.structs.replace(
        snapshot_after(recs, "BTCUSDT", "futures", prev, first.recv_ts),
        exchange_ts=first.exchange_ts - 1,
        transaction_ts=first.exchange_ts - 1,
    )
    r.feed([stale])
    assert r.manager.state("BTCUSDT") is SyncState.BUFFERING
    assert r.requests[asked:] == [("BTCUSDT", True)]
    u = recs[tenth].final_update_id  # type: ignore[attr-defined]
    fresh = _shifted(snapshot_after(recs, "BTCUSDT", "futures", u, recs[tenth].recv_ts + 1), by)
    r.feed([fresh, *(_shifted(x, by) for x in recs[tenth + 1 :])])
    st = r.manager.stats()["symbols"]["BTCUSDT"]
    assert (st["state"], st["syncs"], st["audit_mismatches"]) == ("synced", 2, 0)
    assert [g.kind for g in r.gaps] == ["id_reset", "resync"]
