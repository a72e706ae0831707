"""OrderBook and BookSync unit tests: the book's arithmetic and Binance's sync rules, in isolation.

Levels and ids come from real payloads (tests/data/hftbacktest, nkaz001/hftbacktest, MIT;
tests/data/cryptofeed, bmoscon/cryptofeed: "This product includes software developed by
Bryant Moscon") wherever a rule is about what the real data looks like.
"""

from __future__ import annotations

import gzip
import random
from decimal import Decimal

import orjson
import pytest

from ingestd.book.book import OrderBook
from ingestd.book.records import BookTop, Gap, GapKind
from ingestd.book.sync import APPLIED, NOTHING, BookSync, SyncState
from ingestd.records import RECORD_TYPES, DepthDiff, DepthSnapshot, Level
from tests.realdata import HFT, need


def lv(rows: list[list[str]]) -> list[Level]:
    return [(float(p), float(q)) for p, q in rows]


# -- OrderBook ------------------------------------------------------------------------------


def test_zero_quantity_deletes_whatever_its_text() -> None:
    """USD-M writes "0.000", COIN-M "0", spot "0.00000000" (docs/binance.md §8.2): all delete."""
    book = OrderBook()
    book.load_snapshot(
        lv([["2681.13", "4.298"], ["61804.7", "35"], ["0.33983000", "1500.00000000"]]),
        lv([["2681.64", "0.170"], ["61804.8", "1645"], ["0.34008000", "12.00000000"]]),
        100,
    )
    assert book.last_update_id == 100
    book.apply(lv([["2681.13", "0.000"], ["61804.7", "0"]]), lv([["0.34008000", "0.00000000"]]), 101)
    assert book.bids == {0.33983: 1500.0}
    assert book.asks == {2681.64: 0.17, 61804.8: 1645.0}
    assert book.last_update_id == 101


def test_deleting_an_absent_level_is_normal() -> None:
    book = OrderBook()
    book.load_snapshot([(10.0, 1.0)], [(11.0, 1.0)], 1)
    book.apply([(9.5, 0.0)], [(12.0, 0.0)])
    assert book.bids == {10.0: 1.0}
    assert book.asks == {11.0: 1.0}
    assert book.last_update_id == 1
    assert (book.best_bid(), book.best_ask()) == ((10.0, 1.0), (11.0, 1.0))


def test_snapshot_skips_zero_levels_and_replaces_the_book() -> None:
    book = OrderBook()
    book.load_snapshot([(1.0, 1.0), (2.0, 2.0)], [(3.0, 1.0)], 5)
    book.load_snapshot([(1.5, 0.0), (1.0, 4.0)], [(3.5, 1.0)], 6)
    assert book.bids == {1.0: 4.0}
    assert book.asks == {3.5: 1.0}
    assert book.best_bid() == (1.0, 4.0)
    assert book.best_ask() == (3.5, 1.0)


def test_best_and_levels_follow_inserts_and_deletes_of_the_top() -> None:
    book = OrderBook()
    assert book.best_bid() is None
    assert book.best_ask() is None
    assert book.levels(3) == ([], [])
    assert not book.crossed()
    book.load_snapshot([(100.0, 1.0), (99.0, 2.0), (98.0, 3.0)], [(101.0, 1.0), (102.0, 2.0)], 1)
    assert book.levels(2) == ([(100.0, 1.0), (99.0, 2.0)], [(101.0, 1.0), (102.0, 2.0)])
    book.apply([(100.5, 7.0)], [(100.9, 8.0)])  # better prices become the top
    assert (book.best_bid(), book.best_ask()) == ((100.5, 7.0), (100.9, 8.0))
    book.apply([(100.5, 0.0), (100.0, 0.0)], [(100.9, 0.0)])  # delete the tops
    assert (book.best_bid(), book.best_ask()) == ((99.0, 2.0), (101.0, 1.0))
    book.apply([(99.0, 5.0)], [])  # a new quantity at the top
    assert book.best_bid() == (99.0, 5.0)
    assert book.levels(10) == ([(99.0, 5.0), (98.0, 3.0)], [(101.0, 1.0), (102.0, 2.0)])
    assert book.levels(1) == ([(99.0, 5.0)], [(101.0, 1.0)])
    assert book.levels(0) == ([], [])
    book.apply([(99.0, 0.0), (98.0, 0.0)], [])
    assert book.best_bid() is None
    assert book.levels(2) == ([], [(101.0, 1.0), (102.0, 2.0)])
    assert len(book) == 2
    book.clear()
    assert (len(book), book.last_update_id, book.best_ask()) == (0, None, None)


def test_crossed_means_bid_at_or_above_ask() -> None:
    book = OrderBook()
    book.load_snapshot([(10.0, 1.0)], [(11.0, 1.0)], 1)
    assert not book.crossed()
    book.apply([(11.0, 1.0)], [])  # locked: bid == ask
    assert book.crossed()
    book.apply([(11.0, 0.0)], [(9.0, 1.0)])  # ask below bid
    assert book.crossed()
    book.apply([], [(9.0, 0.0)])
    assert not book.crossed()
    book.apply([(10.0, 0.0)], [])  # one side empty is not crossed
    assert not book.crossed()


def test_cached_tops_agree_with_a_full_scan_under_random_updates() -> None:
    rng = random.Random(20240808)
    book = OrderBook()
    book.load_snapshot(
        [(float(p), 1.0) for p in range(90, 100)], [(float(p), 1.0) for p in range(101, 111)], 0
    )
    for _ in range(5000):
        bids = [
            (float(rng.randint(80, 100)), rng.choice([0.0, 0.0, 1.5, 2.0])) for _ in range(rng.randint(0, 4))
        ]
        asks = [
            (float(rng.randint(101, 121)), rng.choice([0.0, 0.0, 1.5, 2.0])) for _ in range(rng.randint(0, 4))
        ]
        book.apply(bids, asks)
        want_bid = max(book.bids) if book.bids else None
        want_ask = min(book.asks) if book.asks else None
        assert book.best_bid_price() == want_bid
        assert book.best_ask_price() == want_ask
        got_bids, got_asks = book.levels(4)
        assert got_bids == sorted(book.bids.items(), reverse=True)[:4]
        assert got_asks == sorted(book.asks.items())[:4]


def test_float_keys_rebuild_the_same_book_as_decimals() -> None:
    """Real spot ETHUSDT: the float book equals a Decimal book level for level at the end."""
    path = need(HFT / "spot_ethusdt_20240808.gz")
    book = OrderBook()
    exact: dict[str, dict[Decimal, Decimal]] = {"b": {}, "a": {}}
    big_l = -1
    with gzip.open(path, "rb") as fh:
        for line in fh:
            if b"@depth" not in line and b"lastUpdateId" not in line:
                continue
            msg = orjson.loads(line.partition(b" ")[2])
            if "lastUpdateId" in msg:
                big_l = msg["lastUpdateId"]
                book.load_snapshot(lv(msg["bids"]), lv(msg["asks"]), big_l)
                exact = {
                    "b": {Decimal(p): Decimal(q) for p, q in msg["bids"]},
                    "a": {Decimal(p): Decimal(q) for p, q in msg["asks"]},
                }
                continue
            d = msg["data"]
            if big_l < 0 or d["u"] <= big_l:
                continue
            book.apply(lv(d["b"]), lv(d["a"]), d["u"])
            for side in ("b", "a"):
                for p, q in d[side]:
                    if Decimal(q) == 0:
                        exact[side].pop(Decimal(p), None)
                    else:
                        exact[side][Decimal(p)] = Decimal(q)
    assert book.bids == {float(p): float(q) for p, q in exact["b"].items()}
    assert book.asks == {float(p): float(q) for p, q in exact["a"].items()}
    assert book.best_bid() == (float(max(exact["b"])), float(exact["b"][max(exact["b"])]))
    assert book.best_ask() == (float(min(exact["a"])), float(exact["a"][min(exact["a"])]))


# -- records -------------------------------------------------------------------------------


def test_gap_and_book_records_are_registered() -> None:
    assert RECORD_TYPES["gap"] is Gap
    assert RECORD_TYPES["book"] is BookTop
    assert {k.value for k in GapKind} == {
        "desync",
        "resync",
        "disconnect",
        "crossed",
        "audit_mismatch",
        "stale_snapshot",
        "buffer_overflow",
        "memory_bound",
        "ban",
        "silent_stream",
        "quiet_stream",  # data quality notices (ingestd.observe.quiet)
        "id_reset",
        "trade_gap",  # trade holes (ingestd.producers.backfill)
        "backfill",
        "unfilled",
    }


# -- BookSync: Binance's rules on small sequences ---------------------------------------------


def diff(big_u: int, u: int, pu: int | None = None, bids: list[Level] | None = None) -> DepthDiff:
    return DepthDiff(
        venue="binance-usdm" if pu is not None else "binance-spot",
        symbol="X",
        native="X",
        exchange_ts=1,
        recv_ts=1,
        first_update_id=big_u,
        final_update_id=u,
        prev_final_update_id=pu,
        bids=bids if bids is not None else [(10.0, float(u % 7 + 1))],
        asks=[(11.0, 1.0)],
    )


def snapshot(big_l: int) -> DepthSnapshot:
    return DepthSnapshot(
        venue="binance-usdm",
        symbol="X",
        native="X",
        exchange_ts=None,
        recv_ts=1,
        last_update_id=big_l,
        bids=[(10.0, 5.0), (9.0, 1.0)],
        asks=[(11.0, 5.0)],
    )


def test_spot_single_update_event_bridges_the_snapshot() -> None:
    """Spot BLZETH / BADGERBTC: the first event has U == u == L+1."""
    s = BookSync("spot", 100)
    assert s.on_diff(diff(49759185, 49759189)).need_snapshot
    assert s.on_snapshot(snapshot(49759189)).already_in_snapshot == 1
    assert s.state is SyncState.BRIDGING
    r = s.on_diff(diff(49759190, 49759190))
    assert (r.applied, r.synced) == (1, True)
    assert s.on_diff(diff(49759191, 49759195)) is APPLIED
    assert s.last_update_id == 49759195


def test_futures_rules_accept_u_equal_to_l_and_jumping_ids() -> None:
    """usdm_ethusdt: first valid event has u == L; futures U jumps, only pu links events."""
    s = BookSync("futures", 100)
    s.on_diff(diff(5123107853791, 5123107856276, 5123107853700))
    r = s.on_snapshot(snapshot(5123107856276))
    assert (r.applied, r.synced, s.state) == (1, True, SyncState.SYNCED)
    # SUSHIUSDT 2021: prev_u=600859604824, next U=600859605926: not prev_u + 1, yet continuous.
    s2 = BookSync("futures", 100)
    s2.on_snapshot(snapshot(600859604000))
    assert s2.on_diff(diff(600859603000, 600859604824, 600859602000)).synced
    assert s2.on_diff(diff(600859605926, 600859606000, 600859604824)) is APPLIED
    r = s2.on_diff(diff(600859606001, 600859606100, 600859605999))
    assert r.gap is not None
    assert r.gap.kind is GapKind.DESYNC
    assert (r.gap.last_update_id, r.gap.first_update_id, r.gap.final_update_id) == (
        600859606000,
        600859606001,
        600859606100,
    )
    assert r.gap.prev_final_update_id == 600859605999
    assert (r.need_snapshot, r.urgent, s2.state, s2.buffered) == (True, True, SyncState.BUFFERING, 1)


def test_futures_pu_minus_one_after_sync_is_a_desync() -> None:
    s = BookSync("futures", 10)
    s.on_snapshot(snapshot(100))
    assert s.on_diff(diff(90, 110, 80)).synced
    r = s.on_diff(diff(111, 120, -1))
    assert r.gap is not None
    assert r.gap.kind is GapKind.DESYNC


def test_spot_break_and_duplicate() -> None:
    s = BookSync("spot", 10)
    s.on_diff(diff(95, 100))
    s.on_snapshot(snapshot(99))
    assert s.is_synced
    assert s.on_diff(diff(96, 100)) is NOTHING  # already applied (rotation overlap)
    assert s.ignored_duplicates == 1
    r = s.on_diff(diff(102, 105))  # 101 is missing
    assert r.gap is not None
    assert (r.gap.kind, r.gap.last_update_id, r.gap.first_update_id) == (GapKind.DESYNC, 100, 102)
    assert s.book.bids == {}
    assert s.last_update_id is None


def test_stale_snapshot_is_rejected_and_the_buffer_kept() -> None:
    s = BookSync("futures", 10)
    s.on_diff(diff(200, 210, 190))
    s.on_diff(diff(211, 220, 210))
    r = s.on_snapshot(snapshot(199))  # L < first U
    assert r.gap is not None
    assert (r.gap.kind, r.gap.final_update_id, r.need_snapshot) == (GapKind.STALE_SNAPSHOT, 199, True)
    assert (s.state, s.buffered, s.stale_snapshots) == (SyncState.BUFFERING, 2, 1)
    r = s.on_snapshot(snapshot(215))
    assert (r.applied, r.synced, s.last_update_id) == (1, True, 220)
    # Spot: L + 1 == first U is not stale (an exact start).
    sp = BookSync("spot", 10)
    sp.on_diff(diff(200, 210))
    assert sp.on_snapshot(snapshot(199)).synced
    sp2 = BookSync("spot", 10)
    sp2.on_diff(diff(200, 210))
    gap = sp2.on_snapshot(snapshot(198)).gap
    assert gap is not None
    assert gap.kind is GapKind.STALE_SNAPSHOT


def test_snapshot_before_any_diff_waits_for_a_spanning_diff() -> None:
    s = BookSync("spot", 10)
    assert s.on_snapshot(snapshot(100)) is NOTHING
    assert s.state is SyncState.BRIDGING
    assert s.on_snapshot(snapshot(90)) is NOTHING  # older answer: ignored
    assert s.snapshot_id == 100
    r = s.on_diff(diff(105, 110))  # U > L+1 and nothing seen since: the snapshot is too old
    assert r.gap is not None
    assert (r.gap.kind, r.need_snapshot, s.buffered) == (GapKind.STALE_SNAPSHOT, True, 1)
    # A diff contained in the snapshot, then one that skips ahead: a hole in the stream.
    s2 = BookSync("spot", 10)
    s2.on_snapshot(snapshot(100))
    assert s2.on_diff(diff(95, 100)).already_in_snapshot == 1
    r = s2.on_diff(diff(103, 104))
    assert r.gap is not None
    assert r.gap.kind is GapKind.DESYNC


def test_gap_inside_the_buffer_keeps_the_rest_buffered() -> None:
    s = BookSync("spot", 10)
    for big_u, u in ((1, 5), (6, 9), (12, 15), (16, 20)):  # 10..11 missing
        s.on_diff(diff(big_u, u))
    r = s.on_snapshot(snapshot(7))
    assert r.applied == 1  # (6, 9) bridges, (12, 15) breaks
    assert r.gap is not None
    assert (r.gap.kind, r.gap.last_update_id, r.gap.first_update_id) == (GapKind.DESYNC, 9, 12)
    assert r.already_in_snapshot == 1
    assert (s.state, s.buffered) == (SyncState.BUFFERING, 2)
    assert s.on_snapshot(snapshot(15)).synced
    assert s.last_update_id == 20


def test_buffer_overflow_drops_the_oldest_once_per_episode() -> None:
    s = BookSync("spot", 2)
    s.on_diff(diff(1, 5))
    s.on_diff(diff(6, 9))
    r = s.on_diff(diff(10, 12))
    assert r.gap is not None
    assert (r.gap.kind, r.gap.first_update_id) == (GapKind.BUFFER_OVERFLOW, 6)
    assert s.on_diff(diff(13, 14)) is NOTHING  # reported once
    assert (s.buffered, s.overflow_dropped) == (2, 2)
    assert s.on_snapshot(snapshot(8)).gap is not None  # older than what is left (U=10): stale
    r = s.on_snapshot(snapshot(11))
    assert (r.synced, r.applied, s.last_update_id) == (True, 2, 14)


def test_crossed_book_is_discarded() -> None:
    s = BookSync("spot", 10)
    s.on_snapshot(snapshot(1))
    assert s.on_diff(diff(2, 2)).synced
    r = s.on_diff(diff(3, 3, bids=[(11.5, 1.0)]))
    assert r.gap is not None
    assert (r.gap.kind, r.gap.last_update_id, r.gap.final_update_id, r.applied) == (GapKind.CROSSED, 2, 3, 1)
    assert (s.state, s.buffered, s.book.bids) == (SyncState.BUFFERING, 0, {})


def test_resync_request_and_ignored_snapshots() -> None:
    s = BookSync("futures", 10)
    s.on_snapshot(snapshot(100))
    s.on_diff(diff(90, 110, 1))
    assert s.on_snapshot(snapshot(120)) is NOTHING  # synced: polling snapshot ignored
    assert s.ignored_snapshots == 1
    r = s.resync(GapKind.DISCONNECT, "socket closed", stream_alive=False)
    assert (r.need_snapshot, s.state, s.last_update_id) == (False, SyncState.IDLE, None)
    assert r.gap is not None
    assert r.gap.last_update_id == 110
    first = s.on_diff(diff(130, 140, 125))
    assert (first.need_snapshot, first.urgent) == (True, True)
    r = s.resync(GapKind.AUDIT_MISMATCH, "tampered", stream_alive=True)
    assert (r.need_snapshot, r.urgent, s.state, s.buffered) == (True, True, SyncState.BUFFERING, 1)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="market"):
        BookSync("coin", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_buffered"):
        BookSync("spot", 0)
