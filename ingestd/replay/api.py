"""The notebook API: stored data as records (with books) or as one channel's table.

::

    from ingestd.replay import records, frame

    stream = records("data", symbols=["BTCUSDT"], channels=["trade", "book_ticker"], books=True)
    for rec in stream:
        book = stream.books.get(rec.symbol)          # the book as of this record, or None
        if rec.channel == "trade" and book is not None:
            print(rec.price - book.best_bid()[0])

    trades = frame("data", "trade", symbols=["BTCUSDT"], start="2024-08-08", end="2024-08-09")
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ingestd.errors import ConfigError
from ingestd.replay.engine import Replay, TimeLike


def records(
    data: str | Path,
    *,
    symbols: Iterable[str] | None = None,
    channels: Iterable[str] | None = None,
    start: TimeLike = None,
    end: TimeLike = None,
    venue: str | None = None,
    books: bool = False,
) -> Replay:
    """An iterator of the stored records, merged by ``recv_ts`` (see :class:`Replay`).

    With ``books=True`` its ``.books`` (``.books.get(symbol)``: ``best_bid()``, ``best_ask()``,
    ``levels(n)``, ``is_synced``) is the order book as of the record just yielded, rebuilt from
    the stored snapshots and diffs by the daemon's own sync code; its ``.context`` is the hook
    context (contracts valid at that moment). Iterate it once.
    """
    return Replay(data, venue=venue, symbols=symbols, channels=channels, start=start, end=end, books=books)


def frame(
    data: str | Path,
    channel: str,
    *,
    symbols: Iterable[str] | None = None,
    start: TimeLike = None,
    end: TimeLike = None,
    venue: str | None = None,
    polars: bool = False,
) -> Any:
    """One channel as a pyarrow ``Table`` (``polars=True``: a polars ``DataFrame``), rows in
    ``recv_ts`` order (stable: stored order among equal times), with ``venue``, ``channel``,
    ``symbol`` and ``date`` columns from the paths. Same selection rules as :func:`records`."""
    if polars and importlib.util.find_spec("polars") is None:
        raise ConfigError("frame(polars=True) needs polars: pip install polars")
    replay = Replay(data, venue=venue, symbols=symbols, channels=[channel], start=start, end=end, books=False)
    tables: list[pa.Table] = []
    for reader in replay.part_readers(channel):
        part = reader.part
        for stored in reader.tables():
            n = stored.num_rows
            if not n:
                continue
            table = stored.replace_schema_metadata(None)
            for name in ("venue", "channel", "symbol", "date"):
                table = table.append_column(name, pa.array([getattr(part, name)] * n, pa.string()))
            tables.append(table)
    if not tables:
        return _empty(channel, polars=polars)
    table = pa.concat_tables(tables, promote_options="permissive")
    table = table.take(pc.sort_indices(table, sort_keys=[("recv_ts", "ascending")]))
    if polars:
        import polars as pl  # noqa: PLC0415 - optional

        return pl.from_arrow(table)
    return table


def _empty(channel: str, *, polars: bool) -> Any:
    from ingestd.consumers.schema import schema_for  # noqa: PLC0415
    from ingestd.records import RECORD_TYPES  # noqa: PLC0415

    schema = schema_for(RECORD_TYPES[channel]).remove_metadata()
    for name in ("venue", "channel", "symbol", "date"):
        schema = schema.append(pa.field(name, pa.string()))
    table = schema.empty_table()
    if polars:
        import polars as pl  # noqa: PLC0415 - optional

        return pl.from_arrow(table)
    return table
