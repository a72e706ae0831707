"""The duplicate filter never drops a distinct record silently (pure, no I/O).

Records keyed on their millisecond event time are told apart by their content.
"""

from __future__ import annotations

from ingestd.producers.dedupe import Handover, HighWaterMarks, key_for
from ingestd.records import MarkPrice, Record

E0 = 1_723_161_256_322_000_000
RECV = 1_723_161_255_088_176_367


def mark(ms: int, price: float, recv_ts: int = RECV) -> MarkPrice:
    return MarkPrice(
        venue="binance-usdm", symbol="BTC-USDT-PERP", native="BTCUSDT", exchange_ts=E0 + ms * 1_000_000,
        recv_ts=recv_ts, mark_price=price, index_price=58857.26693664, estimated_settle_price=None,
        funding_rate=0.00058455, next_funding_time=None,
    )  # fmt: skip


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
