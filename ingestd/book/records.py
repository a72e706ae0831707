"""Records the book stage adds to the data flow: the gap log and top-of-book views.

Both are registered in :data:`ingestd.records.RECORD_TYPES` on import, so every consumer (Parquet,
NDJSON, NATS, hooks) handles them like market records.

How to mask unreliable book data per symbol: every gap writes one :class:`Gap` record when it
starts (``kind`` says why, ``ended_ts`` is ``None``) and, once the book is exact again, one record
of kind ``resync`` carrying the same ``started_ts`` and the ``ended_ts`` at which the book was
synced. Mask ``[started_ts, ended_ts]`` of every ``resync`` record (and ``[started_ts, end of
data]`` of a start record with no ``resync`` after it). Several start records may precede one
``resync`` (a disconnect, then a stale snapshot); the ``resync`` record spans all of them.
``silent_stream`` and ``id_reset`` records are notices: they open no episode and no ``resync``
follows them (ids restarting on depth data also break the diffs' continuity, so the book writes
its own ``desync`` and ``resync``). On an ``id_reset`` record ``last_update_id`` is the stream's
last key before the restart and ``first_update_id`` the first key after it (the channel's
ordering key: update id, trade id, or event time in ns; ``None`` when that key is not one
integer); ``reason`` names the stream.

Trade holes (``data_channel`` ``agg_trade`` or ``trade``) are delimited by ids, not by time: a
``trade_gap`` record names the ids the stream skipped (``first_update_id`` … ``final_update_id``,
``count`` of them, ``last_update_id`` the id before the hole) and ``started_ts`` / ``ended_ts``,
the receive times of the records on either side. A ``backfill`` record with the same
``started_ts`` says the ids were fetched from REST and stored (``count`` of them, marked
``source="rest"``); an ``unfilled`` record says why ``count`` of them could not be. A contract
listed during the run whose history could not be fetched at all gets an ``unfilled`` record
without ``first_update_id`` or ``count`` (where its history starts is unknown): the ids up to
``final_update_id`` are missing.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from ingestd.records import Level, Record, register


class GapKind(enum.StrEnum):
    """Why a book's data is unreliable (the ``kind`` column of the gap log)."""

    DESYNC = "desync"
    """A diff did not continue the sequence (spot ``U != prev_u + 1``, futures ``pu != prev_u``)."""
    RESYNC = "resync"
    """The end of a gap: the book is exact again (``ended_ts`` set)."""
    DISCONNECT = "disconnect"
    """The connection carrying the symbol's depth stream dropped."""
    CROSSED = "crossed"
    """Best bid >= best ask after applying a diff."""
    AUDIT_MISMATCH = "audit_mismatch"
    """A bookTicker with the book's exact update id disagreed with the book's top."""
    STALE_SNAPSHOT = "stale_snapshot"
    """The REST snapshot is older than the first diff we hold; another one was requested."""
    BUFFER_OVERFLOW = "buffer_overflow"
    """Too many diffs buffered while waiting for a snapshot; the oldest were dropped."""
    MEMORY_BOUND = "memory_bound"
    """The diffs and bookTickers buffered across all symbols passed ``books.max_buffered_mb``:
    this symbol had waited longest for its snapshot; its buffer was dropped and its sync restarted
    (the snapshot it asked for bridges from the diffs after it)."""
    BAN = "ban"
    """Snapshots cannot be fetched (HTTP 418/429 on the REST host)."""
    SILENT_STREAM = "silent_stream"
    """A subscribed stream delivered no first frame within its deadline (a notice)."""
    QUIET_STREAM = "quiet_stream"
    """A stream that had delivered sent nothing past its freshness limit (a notice; a second
    record with ``ended_ts`` when it delivers again; ``data_channel`` names its channel)."""
    ID_RESET = "id_reset"
    """A stream's ids restarted below what was already emitted (venue maintenance, a looping
    replay): the records after it are a new sequence, kept, not duplicates (a notice, written by
    the duplicate filter for any channel, right before the first record of the new sequence)."""
    TRADE_GAP = "trade_gap"
    """Trade or aggregate ids the stream skipped (a reconnect, a restart): a hole to backfill."""
    BACKFILL = "backfill"
    """A ``trade_gap`` filled from REST (``count`` records stored with ``source="rest"``)."""
    UNFILLED = "unfilled"
    """Ids of a ``trade_gap`` that could not be filled (``count``; ``reason`` says why)."""


class Gap(Record, frozen=True, kw_only=True, gc=False):
    """One entry of the gap log (channel ``gap``), per symbol.

    ``last_update_id`` is the last update id applied to a good book before the gap (``None``
    when the book had never synced). ``first_update_id`` / ``final_update_id`` /
    ``prev_final_update_id`` are the offending diff's ``U`` / ``u`` / ``pu`` for ``desync`` and
    ``crossed``, the bookTicker's ``u`` (in both) for ``audit_mismatch`` and the snapshot's
    ``lastUpdateId`` (in ``final_update_id``) for ``stale_snapshot``. On a ``resync`` record
    ``first_update_id`` is the snapshot's ``lastUpdateId`` the book was rebuilt from and
    ``final_update_id`` the update id the book was at when it became exact again.
    ``started_ts`` / ``ended_ts`` are ns wall clock (receive times of the records that started
    and ended the gap).
    """

    channel: ClassVar[str] = "gap"

    kind: str
    reason: str
    last_update_id: int | None
    first_update_id: int | None
    final_update_id: int | None
    started_ts: int
    ended_ts: int | None = None
    prev_final_update_id: int | None = None
    count: int | None = None
    """Trade holes: ids missing (``trade_gap``), stored (``backfill``), given up (``unfilled``)."""
    data_channel: str | None = None
    """The channel a trade-hole entry is about (``agg_trade``, ``trade``); ``None``: the book."""


class BookTop(Record, frozen=True, kw_only=True, gc=False):
    """The top ``depth`` levels of an exact local book (channel ``book``).

    ``bids`` highest first, ``asks`` lowest first; ``last_update_id`` is the final id of the
    last diff applied. Timestamps are those of that diff.
    """

    channel: ClassVar[str] = "book"

    bids: list[Level]
    asks: list[Level]
    last_update_id: int
    depth: int


register(Gap)
register(BookTop)
