"""What a data dir already holds of a trade channel: the last stored id per symbol, and holes.

A daemon restarted on an existing data dir backfills from where the last run stopped storing.
That point is read cheaply from the Parquet files' footers (row-group statistics of the id,
``transaction_ts`` and ``recv_ts`` columns, and row counts), newest file first, going back only
as far as ``max_age_s`` before the newest stored record: a few footers per symbol, no data pages.

The footers also show whether the recent window is complete: ids are contiguous per symbol, so
``rows == max_id - min_id + 1`` over the window, with no two files' id ranges overlapping, means
no hole (the common case). Otherwise (a run killed while it was still filling a hole, ids stored
twice, a venue that skipped ids) the id column of those
files is read and the holes are listed. Blocking file I/O: call it in a worker thread.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pyarrow.parquet as pq

log = logging.getLogger("ingestd.backfill")

ID_COLUMN: Final = {"agg_trade": "agg_id", "trade": "trade_id"}
_DATE_DIRS: Final = 3
"""Newest date partitions looked at (a window of an hour can span midnight)."""


@dataclass(frozen=True, slots=True)
class StoredHole:
    """Ids ``first..last`` missing between two stored records."""

    first: int
    last: int
    before_ts: int | None
    """``transaction_ts`` (venue clock, ns) of the record before the hole."""
    before_recv: int
    after_recv: int


@dataclass(frozen=True, slots=True)
class StoredTail:
    """The newest stored record of one symbol's trade channel, and the holes behind it."""

    channel: str
    native: str
    symbol: str
    last_id: int
    last_ts: int | None
    """Its ``transaction_ts`` (venue clock, ns): the age of a hole after it is measured from here."""
    last_recv: int
    files: int
    holes: tuple[StoredHole, ...] = ()


@dataclass(slots=True)
class _FileStats:
    path: Path
    rows: int
    min_id: int
    max_id: int
    max_ts: int | None
    max_recv: int


def _stat(meta: pq.FileMetaData, column: str) -> tuple[int, int] | None:
    """``(min, max)`` of an int column over every row group; ``None`` when a group lacks them."""
    names = meta.schema.names
    if column not in names:
        return None
    i = names.index(column)
    lo: int | None = None
    hi: int | None = None
    for g in range(meta.num_row_groups):
        st = meta.row_group(g).column(i).statistics
        if st is None or not st.has_min_max:
            return None
        lo = st.min if lo is None else min(lo, st.min)
        hi = st.max if hi is None else max(hi, st.max)
    return None if lo is None or hi is None else (int(lo), int(hi))


def _file_stats(path: Path, id_column: str) -> _FileStats | None:
    try:
        meta = pq.read_metadata(path)
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) on a bad file
        log.warning("cannot read the footer of %s (%s): skipped", path, exc)
        return None
    if meta.num_rows == 0:
        return None
    ids, recv, ts = _stat(meta, id_column), _stat(meta, "recv_ts"), _stat(meta, "transaction_ts")
    if ids is None or recv is None:
        try:
            table = pq.read_table(path, columns=[id_column, "recv_ts"])
        except (OSError, ValueError, KeyError) as exc:
            log.warning("cannot read %s (%s): skipped", path, exc)
            return None
        col, rcol = table.column(id_column).to_pylist(), table.column("recv_ts").to_pylist()
        ids, recv = (min(col), max(col)), (min(rcol), max(rcol))
    return _FileStats(path, meta.num_rows, ids[0], ids[1], ts[1] if ts else None, recv[1])


def _newest_files(symbol_dir: Path) -> Iterator[Path]:
    """Parquet files of one symbol, newest first (date partitions, then the time in the name)."""
    dates = sorted((d for d in symbol_dir.glob("date=*") if d.is_dir()), reverse=True)[:_DATE_DIRS]
    for d in dates:
        yield from sorted(d.glob("*.parquet"), key=lambda p: p.name, reverse=True)


def _disjoint(files: list[_FileStats]) -> bool:
    """No two files' id ranges overlap. Only then does a row count equal to the id span prove
    the span complete: ids stored twice (a backfill that re-stored them, two runs on one dir)
    would otherwise make up for ids that are missing."""
    ranges = sorted((f.min_id, f.max_id) for f in files)
    return all(b[0] > a[1] for a, b in itertools.pairwise(ranges))


def _holes(files: list[_FileStats], id_column: str) -> tuple[StoredHole, ...]:
    """Read the id column of ``files`` and list the ranges missing between their rows."""
    rows: dict[int, tuple[int | None, int]] = {}
    for f in files:
        try:
            cols = [id_column, "recv_ts"] + (["transaction_ts"] if f.max_ts is not None else [])
            table = pq.read_table(f.path, columns=cols)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("cannot read %s (%s): its holes are not checked", f.path, exc)
            continue
        ids = table.column(id_column).to_pylist()
        recvs = table.column("recv_ts").to_pylist()
        tss = table.column("transaction_ts").to_pylist() if f.max_ts is not None else [None] * len(ids)
        for i, r, t in zip(ids, recvs, tss, strict=True):
            rows.setdefault(i, (t, r))
    order = sorted(rows)
    out: list[StoredHole] = []
    for a, b in itertools.pairwise(order):
        if b > a + 1:
            out.append(StoredHole(a + 1, b - 1, rows[a][0], rows[a][1], rows[b][1]))
    return tuple(out)


def stored_tails(
    data_dir: Path, venue: str, symbols: Iterable[tuple[str, str]], channels: Iterable[str], max_age_s: float
) -> list[StoredTail]:
    """The newest stored record of every ``(native, normalized symbol)`` in ``channels``
    (``agg_trade``, ``trade``), and the holes in the ``max_age_s`` before it."""
    out: list[StoredTail] = []
    max_age_ns = int(max_age_s * 1e9)
    wanted = [c for c in channels if c in ID_COLUMN]
    for native, symbol in symbols:
        for channel in wanted:
            sdir = data_dir / f"venue={venue}" / f"channel={channel}" / f"symbol={symbol}"
            if not sdir.is_dir():
                continue
            id_column = ID_COLUMN[channel]
            window: list[_FileStats] = []
            newest_recv: int | None = None
            for path in _newest_files(sdir):
                st = _file_stats(path, id_column)
                if st is None:
                    continue
                if newest_recv is None:
                    newest_recv = st.max_recv
                elif st.max_recv < newest_recv - max_age_ns:
                    break  # older than the window: nothing there is backfilled any more
                window.append(st)
            if not window:
                continue
            top = max(window, key=lambda f: f.max_id)
            lo = min(f.min_id for f in window)
            complete = _disjoint(window) and sum(f.rows for f in window) == top.max_id - lo + 1
            out.append(
                StoredTail(
                    channel=channel,
                    native=native,
                    symbol=symbol,
                    last_id=top.max_id,
                    last_ts=top.max_ts,
                    last_recv=max(f.max_recv for f in window),
                    files=len(window),
                    holes=() if complete else _holes(window, id_column),
                )
            )
    return out
