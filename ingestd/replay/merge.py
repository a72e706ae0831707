"""One stream from many: a k-way merge of stored parts by ``recv_ts`` (pure, no I/O of its own).

Order: by ``recv_ts`` (the local receive time, read once per websocket frame or REST answer),
ties broken by :func:`merge_rank` of the channel, then symbol, then date, then the part's place
in the sorted listing: the same tree always replays in the same order. Each part keeps its
stored order whatever its times do (a heap only ever takes a part's head), so:

* records of one channel and symbol come in the order the live consumers got them: the writer
  appended them in that order, and the parts of two dates are interleaved by ``recv_ts``,
  which is the arrival order;
* records of one connection keep their live order across channels and symbols: each frame got
  its own ``recv_ts`` from a clock read after the previous frame was handled, so their
  ``recv_ts`` order is their arrival order. The records of one frame of an all-market array
  stream (``!markPrice@arr``) share a ``recv_ts`` and come by symbol instead of payload order;
  the frame's position is not stored, and nothing depends on it;
* a record the book stage derived from another one (a gap record, a ``book`` view) has that
  record's ``recv_ts`` and ranks after it, as it was published after it;
* a wall clock stepped back (NTP) delays nothing and reorders no part; it only interleaves the
  parts of that moment by the clock they saw.

Parts wait outside the heap's data until their first row could be due: each enters with a lower
bound of its first ``recv_ts`` taken from footer statistics, and is opened only when that bound
comes up, so a month of parts does not hold a month of row groups.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from typing import Final

from ingestd.records import CHANNELS, Record
from ingestd.replay.source import PartReader

_FIRST: Final = ("contract", "depth_snapshot", "depth_diff")
_LAST: Final = ("gap", "book")
_RANKS: Final[dict[str, int]] = {ch: i for i, ch in enumerate(dict.fromkeys((*_FIRST, *CHANNELS)))}
_UNRANKED: Final = len(_RANKS)


def merge_rank(channel: str) -> int:
    """Tie-break between channels at one ``recv_ts``: definitions first (a contract row precedes
    the data it defines), then book data, the market channels, other stages' channels, and
    last the records derived from another one (gap log, book views).

    The one place the merge's channel order is decided (a channel table can take it over).
    """
    if channel in _LAST:
        return _UNRANKED + 1 + _LAST.index(channel)
    return _RANKS.get(channel, _UNRANKED)


_PENDING: Final = 0
_ACTIVE: Final = 1


class _Cursor:
    __slots__ = ("batches", "buf", "i", "reader")

    def __init__(self, reader: PartReader) -> None:
        self.reader = reader
        self.batches: Iterator[list[Record]] | None = None
        self.buf: list[Record] = []
        self.i = 0

    def head(self) -> Record | None:
        """The next record (loading the next batch when needed), ``None`` at the end."""
        if self.i < len(self.buf):
            return self.buf[self.i]
        if self.batches is None:
            self.batches = self.reader.batches()
        for batch in self.batches:
            if batch:
                self.buf, self.i = batch, 0
                return batch[0]
        self.buf, self.i = [], 0
        return None


def merge(readers: Sequence[PartReader]) -> Iterator[Record]:
    """Every record of ``readers``, merged as the module docstring says."""
    cursors = [_Cursor(r) for r in readers]
    heap: list[tuple[int, int, str, str, int, int]] = []
    for idx, c in enumerate(cursors):
        part = c.reader.part
        bound = c.reader.first_recv_ts()
        if bound is not None:
            heap.append((bound, merge_rank(part.channel), part.symbol, part.date, idx, _PENDING))
    heapq.heapify(heap)
    while heap:
        _, rank, symbol, date, idx, state = heap[0]
        c = cursors[idx]
        if state == _PENDING:
            rec = c.head()
            if rec is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (rec.recv_ts, rank, symbol, date, idx, _ACTIVE))
            continue
        rec = c.buf[c.i]
        c.i += 1
        yield rec
        nxt = c.head()
        if nxt is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (nxt.recv_ts, rank, symbol, date, idx, _ACTIVE))
