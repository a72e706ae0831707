"""The duplicate filter never drops a distinct record silently (pure, no I/O).

Ids that restart lower are a new sequence (an ``id_reset`` gap record, then a new mark), not
duplicates; records keyed on their millisecond event time are told apart by their content.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ingestd.book.records import Gap
from ingestd.producers import dedupe
from ingestd.producers.dedupe import Handover, HighWaterMarks, key_for
from ingestd.records import MarkPrice, Record, Trade

E0 = 1_723_161_256_322_000_000
RECV = 1_723_161_255_088_176_367


def trade(trade_id: int, recv_ts: int = RECV) -> Trade:
    return Trade(
        venue="binance-usdm", symbol="BTC-USDT-PERP", native="BTCUSDT", exchange_ts=E0 + trade_id,
        recv_ts=recv_ts, trade_id=trade_id, price=61800.3, qty=0.006, is_buyer_maker=False,
    )  # fmt: skip


def mark(ms: int, price: float, recv_ts: int = RECV) -> MarkPrice:
    return MarkPrice(
        venue="binance-usdm", symbol="BTC-USDT-PERP", native="BTCUSDT", exchange_ts=E0 + ms * 1_000_000,
        recv_ts=recv_ts, mark_price=price, index_price=58857.26693664, estimated_settle_price=None,
        funding_rate=0.00058455, next_funding_time=None,
    )  # fmt: skip


def ids(records: list[Record]) -> list[Any]:
    return [r.trade_id if isinstance(r, Trade) else r.kind if isinstance(r, Gap) else r for r in records]


# -- ids that restart lower ----------------------------------------------------------------------


def test_an_id_regression_writes_an_id_reset_gap_and_starts_a_new_mark() -> None:
    """A venue's ids restart lower (maintenance, a looping replay): the new sequence is kept,
    behind one ``id_reset`` gap record, and later replays of it are duplicates again."""
    m = HighWaterMarks()
    spec = key_for("trade")
    first = [trade(i) for i in range(1, 201)]
    assert m.admit("btcusdt@trade", first, spec) == (first, 0)
    again = [trade(i, recv_ts=RECV + 10**9) for i in (1, 2, 3)]
    kept, dropped = m.admit("btcusdt@trade", again, spec)
    assert (ids(kept), dropped) == (["id_reset", 1, 2, 3], 0)
    gap = kept[0]
    assert isinstance(gap, Gap)
    assert (gap.venue, gap.symbol, gap.native) == ("binance-usdm", "BTC-USDT-PERP", "BTCUSDT")
    assert (gap.last_update_id, gap.first_update_id, gap.final_update_id) == (200, 1, None)
    assert (gap.started_ts, gap.recv_ts, gap.exchange_ts) == (again[0].recv_ts, again[0].recv_ts, E0 + 1)
    assert gap.ended_ts is None  # a notice, like silent_stream: no resync follows it
    assert gap.reason == "btcusdt@trade: trade_id restarted at 1 after 200; a new sequence starts"
    assert m.get("btcusdt@trade", "BTCUSDT") == 3
    assert m.resets == 1
    # The new sequence is deduplicated like the old one was.
    kept, dropped = m.admit("btcusdt@trade", [trade(3), trade(4)], spec)
    assert (ids(kept), dropped) == ([4], 1)


def test_a_replay_of_the_last_few_ids_after_a_reconnect_is_dropped() -> None:
    """A fresh connection that replays what was just emitted adds nothing and writes no gap."""
    m = HighWaterMarks()
    spec = key_for("trade")
    m.admit("s", [trade(i) for i in range(1, 1001)], spec)
    kept, dropped = m.admit("s", [trade(i) for i in range(991, 1011)], spec)
    assert (ids(kept), dropped) == (list(range(1001, 1011)), 10)


def test_a_drop_below_the_replay_window_is_a_regression_even_mid_replay() -> None:
    """Ids further back than the last ``REPLAY_WINDOW`` emitted ones are not an overlap."""
    window: int = dedupe.REPLAY_WINDOW
    m = HighWaterMarks()
    spec = key_for("trade")
    m.admit("s", [trade(i) for i in range(1, 1001)], spec)
    kept, dropped = m.admit("s", [trade(1001 - window)], spec)
    assert (ids(kept), dropped) == ([], 1)  # the oldest id still in the window: a copy
    kept, _ = m.admit("s", [trade(1000 - window)], spec)
    assert ids(kept) == ["id_reset", 1000 - window]


def test_a_rotation_overlap_is_never_a_regression() -> None:
    """During a make-before-break rotation one socket may lag the other by far more than the
    replay window: its records are the other's copies, whatever their distance to the mark."""
    m = HighWaterMarks()
    spec = key_for("trade")
    h = Handover()
    m.admit("s", [trade(i) for i in range(1, 2001)], spec, rival=h)
    kept, dropped = m.admit("s", [trade(i) for i in range(100, 2003)], spec, candidate=h)
    assert (ids(kept), dropped) == ([2001, 2002], 1901)
    kept, dropped = m.admit("s", [trade(i) for i in range(1500, 2004)], spec, rival=h)
    assert (ids(kept), dropped) == ([2003], 503)


def test_after_a_rotation_the_new_socket_may_still_lag_but_its_own_restart_is_seen() -> None:
    """The switch happens once overlap is proven, possibly with the new socket still far behind
    the mark the old one set: it catches up through copies. Its own ids going back is a restart."""
    m = HighWaterMarks()
    spec = key_for("trade")
    old, new = object(), object()
    h = Handover(new)
    m.admit("s", [trade(i) for i in range(1, 2001)], spec, source=old, rival=h)
    assert m.admit("s", [trade(100)], spec, source=new, candidate=h) == ([], 1)  # behind: proven
    assert m.release(h, {"s": spec}) == ([], {})
    kept, dropped = m.admit("s", [trade(i) for i in range(101, 2002)], spec, source=new)
    assert (ids(kept), dropped) == ([2001], 1900)
    kept, _ = m.admit("s", [trade(5)], spec, source=new)
    assert ids(kept) == ["id_reset", 5]
    # Lagging when the restart comes: its sequence going back is seen too.
    m2 = HighWaterMarks()
    h2 = Handover(new)
    m2.admit("s", [trade(i) for i in range(1, 2001)], spec, source=old, rival=h2)
    m2.admit("s", [trade(100)], spec, source=new, candidate=h2)
    m2.release(h2, {"s": spec})
    assert m2.admit("s", [trade(150)], spec, source=new) == ([], 1)
    kept, _ = m2.admit("s", [trade(3)], spec, source=new)
    assert ids(kept) == ["id_reset", 3]


def test_a_restart_on_one_socket_is_seen_even_within_the_window() -> None:
    """A short looping replay restarts its ids a few records back: on the socket that set the
    mark, its own sequence going back is a restart, whatever the window says."""
    m = HighWaterMarks()
    spec = key_for("trade")
    sock = object()
    m.admit("s", [trade(i) for i in range(1, 11)], spec, source=sock)
    kept, dropped = m.admit("s", [trade(i) for i in range(1, 4)], spec, source=sock)
    assert (ids(kept), dropped) == (["id_reset", 1, 2, 3], 0)
    # The same replay from another (new) socket is an overlap: copies.
    assert m.admit("s", [trade(2), trade(3)], spec, source=object()) == ([], 2)


# -- event-time keyed channels: identity is content ----------------------------------------------


def test_records_sharing_a_millisecond_are_all_kept_and_only_copies_dropped() -> None:
    m = HighWaterMarks()
    spec = key_for("mark_price")
    a, b = mark(0, 58940.14924532), mark(0, 58940.2)
    kept, dropped = m.admit("btcusdt@markPrice@1s", [a, b, mark(0, 58940.14924532, recv_ts=RECV + 1)], spec)
    assert (kept, dropped) == ([a, b], 1)
    c = mark(0, 58940.3)  # a later frame, still the same millisecond
    kept, dropped = m.admit("btcusdt@markPrice@1s", [mark(0, 58940.2, recv_ts=RECV + 2), c], spec)
    assert (kept, dropped) == ([c], 1)
    d = mark(1, 58941.0)
    assert m.admit("btcusdt@markPrice@1s", [d], spec) == ([d], 0)
    # A reconnect replaying the last few: all copies.
    assert m.admit("btcusdt@markPrice@1s", [a, b, c, d], spec) == ([], 4)


def test_a_rotation_loses_no_record_sharing_a_millisecond() -> None:
    """The new socket is ahead within one millisecond: a record at the mark's time that the old
    socket has not emitted yet proves nothing, so it is held, not dropped as a copy."""
    m = HighWaterMarks()
    spec = key_for("mark_price")
    h = Handover()
    a, b, c = mark(0, 1.0), mark(0, 2.0), mark(1, 3.0)
    emitted: list[Record] = []
    kept, _ = m.admit("m", [a], spec, rival=h)  # the old socket emitted a
    emitted += kept
    kept, _ = m.admit("m", [b, c], spec, candidate=h)  # the new socket already has b, c
    emitted += kept
    kept, _ = m.admit("m", [b, c], spec, rival=h)  # the old socket catches up
    emitted += kept
    kept, _ = m.admit("m", [mark(2, 4.0)], spec, candidate=h)
    emitted += kept
    assert emitted == [a, b, c, mark(2, 4.0)]
    assert h.ready()


def test_a_new_socket_whose_ids_restarted_is_not_taken_for_a_lagging_one() -> None:
    """The venue restarted its ids just as a rotation switched sockets: the new socket's first
    record was below the old one's mark, so it counted as behind. Its records after the switch
    are still below that mark, but they are not copies: their event time is later than anything
    the old socket emitted (a copy has the event time of its original). That is an id restart,
    not lag: an ``id_reset`` record and the new sequence kept, not dropped until it passes the
    old mark."""
    m = HighWaterMarks()
    spec = key_for("trade")
    old, new = object(), object()
    h = Handover(new)
    m.admit("s", [trade(i) for i in range(1, 2001)], spec, source=old, rival=h)
    assert m.admit("s", [trade(100)], spec, source=new, candidate=h) == ([], 1)  # looks behind
    assert m.release(h, {"s": spec}) == ([], {})
    later = E0 + 10**9  # a second after the old socket's last event
    restarted = [msgspec.structs.replace(trade(i), exchange_ts=later + i) for i in range(101, 111)]
    kept, dropped = m.admit("s", restarted, spec, source=new)
    assert (ids(kept), dropped) == (["id_reset", *range(101, 111)], 0)
    # A real lagger (copies: the event times of the originals) is still dropped.
    m2 = HighWaterMarks()
    h2 = Handover(new)
    m2.admit("s", [trade(i) for i in range(1, 2001)], spec, source=old, rival=h2)
    m2.admit("s", [trade(100)], spec, source=new, candidate=h2)
    m2.release(h2, {"s": spec})
    assert m2.admit("s", [trade(i) for i in range(101, 111)], spec, source=new) == ([], 10)
