"""The stored Parquet tree as streams of records: listing, pruning, reading row group by row group.

The tree is ``venue=V/channel=C/symbol=S/date=D/<file>.parquet`` (:mod:`ingestd.consumers.parquet`).
One :class:`Part` is the files of one ``(venue, channel, symbol, date)``; a :class:`PartReader`
yields its records in stored order. Within a part the writer appended rows in arrival order and
wrote files one after the other, so files are read in name order (UTC write time, pid,
sequence) and rows in row order. Parts of one channel and symbol on two dates overlap in time
around midnight (the date is the day of ``exchange_ts``): the merge interleaves them by
``recv_ts``, which restores the arrival order.

Pruning: venue, channel and symbol by path; dates by path too, because the ``date`` partition is
the UTC day of the same *event time* the window selects on (``exchange_ts``, or ``recv_ts`` when
the venue sends none); then row groups by their ``exchange_ts`` / ``recv_ts`` statistics, and
rows by a filter on what is left. A file is opened only when the merge reaches it, and one row
group is held at a time per part, so memory does not grow with the length of the replay.

A file that cannot be read (truncated, not Parquet, a broken row group) is reported by name
through :class:`Losses`, skipped, and counted (its rows when its footer says how many), and the
reader goes on with the next file.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ingestd.records import TRADE_TIME_CHANNELS, Record
from ingestd.replay.rows import builder_for

log = logging.getLogger("ingestd.replay")

BATCH_ROWS: Final = 4096
"""Rows turned into records at a time (the records of one batch per part are held)."""
NS_PER_DAY: Final = 86_400 * 1_000_000_000

_ERRORS: Final = (OSError, pa.ArrowException, ValueError)
"""What pyarrow raises on a truncated or corrupt file (ArrowInvalid is a ValueError too)."""


@dataclass(slots=True)
class Losses:
    """Files that could not be read: reported by name, counted, never fatal."""

    files: list[tuple[Path, str]] = field(default_factory=list)
    """``(path, why)`` of every file skipped (whole or from a broken row group on)."""
    rows: int = 0
    """Rows lost, where the footer told how many (a file without a footer counts in ``bytes``)."""
    bytes: int = 0
    """Size of the files whose footer could not be read."""

    def report(self, path: Path, why: str, *, rows: int | None) -> None:
        """Count one unreadable file (``rows``: rows lost, ``None`` when unknown)."""
        self.files.append((path, why))
        if rows is None:
            with contextlib.suppress(OSError):
                self.bytes += path.stat().st_size
        else:
            self.rows += rows
        lost = f"{rows} rows lost" if rows is not None else "rows unknown (no footer)"
        log.warning("replay: skipping unreadable file %s: %s (%s)", path, why, lost)


@dataclass(frozen=True, slots=True)
class Part:
    """The files of one ``(venue, channel, symbol, date)``, in write order."""

    venue: str
    channel: str
    symbol: str
    date: str
    files: tuple[Path, ...]


def day_start_ns(date: str) -> int | None:
    """ns at 00:00 UTC of a ``YYYY-MM-DD`` partition name (``None`` if it is not a date)."""
    try:
        day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(day.timestamp()) * 1_000_000_000


def _value(part_dir: Path, key: str) -> str | None:
    name = part_dir.name
    prefix = f"{key}="
    return name[len(prefix) :] if name.startswith(prefix) else None


def list_parts(
    root: Path,
    *,
    venues: frozenset[str] | None,
    channels: frozenset[str],
    symbols: frozenset[str] | None,
    lo: int | None,
    hi: int | None,
) -> list[Part]:
    """The parts under ``root`` selected by venue, channel, symbol and the event-time window
    ``[lo, hi)`` (a date partition outside it is never opened). Sorted, so runs are repeatable."""
    parts: list[Part] = []
    for vdir in sorted(root.glob("venue=*")):
        venue = _value(vdir, "venue")
        if venue is None or (venues is not None and venue not in venues):
            continue
        for cdir in sorted(vdir.glob("channel=*")):
            channel = _value(cdir, "channel")
            if channel is None or channel not in channels:
                continue
            for sdir in sorted(cdir.glob("symbol=*")):
                symbol = _value(sdir, "symbol")
                if symbol is None or (symbols is not None and symbol not in symbols):
                    continue
                for ddir in sorted(sdir.glob("date=*")):
                    date = _value(ddir, "date") or ""
                    start = day_start_ns(date)
                    if start is not None and (
                        (hi is not None and start >= hi) or (lo is not None and start + NS_PER_DAY <= lo)
                    ):
                        continue
                    # Temp files of a writer at work are ".<name>.tmp": never data.
                    files = tuple(sorted(f for f in ddir.glob("*.parquet") if not f.name.startswith(".")))
                    if files:
                        parts.append(Part(venue, channel, symbol, date, files))
    return parts


def latest_event_before(parts: list[Part], before: int) -> int | None:
    """The latest event time (``exchange_ts``, else ``recv_ts``) before ``before`` in ``parts``,
    reading only the two time columns. An unreadable file is passed over here (the replay
    reports it if it reads it)."""
    best: int | None = None
    for part in parts:
        for path in part.files:
            cols = ["exchange_ts", "recv_ts"]
            if part.channel in TRADE_TIME_CHANNELS:
                cols.insert(1, "transaction_ts")
            try:
                table = pq.read_table(path, columns=cols)
            except _ERRORS:
                continue
            ts = pc.coalesce(*(table.column(c) for c in cols))
            top = pc.max(ts.filter(pc.less(ts, before))).as_py()
            if top is not None and (best is None or top > best):
                best = top
    return best


def _stat_range(meta: pq.RowGroupMetaData, index: int | None) -> tuple[int, int, int] | None:
    """``(min, max, nulls)`` of an int column in a row group, when the writer kept statistics."""
    if index is None:
        return None
    st = meta.column(index).statistics
    if st is None or not st.has_null_count:
        return None
    if not st.has_min_max:
        return (0, 0, st.null_count) if st.null_count == meta.num_rows else None
    return int(st.min), int(st.max), st.null_count


class PartReader:
    """The records of one :class:`Part` whose event time is in ``[lo, hi)``, in stored order."""

    def __init__(self, part: Part, losses: Losses, *, lo: int | None, hi: int | None) -> None:
        self.part = part
        self.lo = lo
        self.hi = hi
        self._losses = losses
        self._build = builder_for(part.channel)
        self._trade_time = part.channel in TRADE_TIME_CHANNELS
        """REST rows of this channel are timed by ``transaction_ts`` (no ``exchange_ts``)."""
        self._tx: int | None = None
        self.rows_read = 0

    def first_recv_ts(self) -> int | None:
        """A lower bound of the first record's ``recv_ts`` (the first useful row group's
        statistics), read from footers only; ``None`` when nothing in the part is selected."""
        for path in self.part.files:
            pf = self._open(path)
            if pf is None:
                continue
            exch, recv = self._indices(pf)
            for i in range(pf.metadata.num_row_groups):
                rg = pf.metadata.row_group(i)
                if rg.num_rows and self._wanted(rg, exch, recv) is not False:
                    r = _stat_range(rg, recv)
                    return r[0] if r is not None and r[2] == 0 else -(2**63)
        return None

    def tables(self) -> Iterator[pa.Table]:
        """The selected rows of each row group (one row group in memory at a time)."""
        for path in self.part.files:
            pf = self._open(path)
            if pf is None:
                continue
            exch, recv = self._indices(pf)
            meta = pf.metadata
            for i in range(meta.num_row_groups):
                rg = meta.row_group(i)
                wanted = self._wanted(rg, exch, recv) if rg.num_rows else False
                if wanted is False:
                    continue
                try:
                    table = pf.read_row_group(i)
                except _ERRORS as exc:
                    left = sum(meta.row_group(j).num_rows for j in range(i, meta.num_row_groups))
                    self._losses.report(path, f"row group {i}: {exc}", rows=left)
                    break
                yield table if wanted else self._filter(table)

    def batches(self) -> Iterator[list[Record]]:
        """Lists of at most :data:`BATCH_ROWS` records, in stored order."""
        build, venue, symbol = self._build, self.part.venue, self.part.symbol
        for table in self.tables():
            for batch in table.to_batches(max_chunksize=BATCH_ROWS):
                if batch.num_rows:
                    self.rows_read += batch.num_rows
                    yield build(batch, venue, symbol)

    # -- internals --------------------------------------------------------------------------

    def _open(self, path: Path) -> pq.ParquetFile | None:
        try:
            return pq.ParquetFile(path)
        except _ERRORS as exc:
            self._losses.report(path, str(exc) or type(exc).__name__, rows=None)
            return None

    def _indices(self, pf: pq.ParquetFile) -> tuple[int | None, int | None]:
        """Column indices of ``exchange_ts`` and ``recv_ts``; for a trade channel, also notes
        that of ``transaction_ts`` (the event time of its REST rows)."""
        paths = [pf.metadata.schema.column(i).path for i in range(pf.metadata.num_columns)]
        exch = paths.index("exchange_ts") if "exchange_ts" in paths else None
        recv = paths.index("recv_ts") if "recv_ts" in paths else None
        self._tx = paths.index("transaction_ts") if self._trade_time and "transaction_ts" in paths else None
        return exch, recv

    def _wanted(self, rg: pq.RowGroupMetaData, exch: int | None, recv: int | None) -> bool | None:
        """``True``: every row is in the window; ``False``: none is; ``None``: filter the rows."""
        lo, hi = self.lo, self.hi
        if lo is None and hi is None:
            return True
        e = _stat_range(rg, exch)
        r = _stat_range(rg, recv)
        n = rg.num_rows
        if self._trade_time and (e is None or e[2]):
            # Some rows (REST trades) are timed by transaction_ts: bound by it and exchange_ts.
            t = _stat_range(rg, self._tx)
            if t is None or t[2]:
                return None
            low, high = (t[0], t[1]) if e is None or e[2] == n else (min(e[0], t[0]), max(e[1], t[1]))
            if (hi is not None and low >= hi) or (lo is not None and high < lo):
                return False
            if (lo is None or low >= lo) and (hi is None or high < hi):
                return True
            return None
        # The event time is exchange_ts where set, recv_ts where not: bound it by the columns
        # that can supply it.
        if e is not None and e[2] == 0:
            low, high = e[0], e[1]
        elif (e is not None and e[2] == n) or exch is None:
            if r is None:
                return None
            low, high = r[0], r[1]
        elif e is not None and r is not None:
            low, high = min(e[0], r[0]), max(e[1], r[1])
        else:
            return None
        if (hi is not None and low >= hi) or (lo is not None and high < lo):
            return False
        if (lo is None or low >= lo) and (hi is None or high < hi):
            return True
        return None

    def _filter(self, table: pa.Table) -> pa.Table:
        names = table.column_names
        recv = table.column("recv_ts")
        cols = [table.column(c) for c in ("exchange_ts", "transaction_ts") if c in names and (
            c == "exchange_ts" or self._trade_time)]  # fmt: skip
        ts = pc.coalesce(*cols, recv) if cols else recv
        mask = None
        if self.lo is not None:
            mask = pc.greater_equal(ts, self.lo)
        if self.hi is not None:
            upper = pc.less(ts, self.hi)
            mask = upper if mask is None else pc.and_(mask, upper)
        return table if mask is None else table.filter(mask)
