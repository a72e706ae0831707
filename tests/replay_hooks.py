"""Hooks that ``ingestd replay --hook tests.replay_hooks:…`` loads in the replay tests."""

from __future__ import annotations

import asyncio
from typing import Any

from ingestd.records import Record

SEEN: list[Record] = []
"""Every record :func:`record` was called with, in call order."""
TOPS: list[tuple[Record, int | None, Any, Any]] = []
"""Per depth diff and bookTicker: (record, book update id, best bid, best ask) from ctx.books."""
CALLED_AT: list[tuple[int, float]] = []
"""(recv_ts, loop time) of each call of :func:`paced`."""


def reset() -> None:
    SEEN.clear()
    TOPS.clear()
    CALLED_AT.clear()


async def record(rec: Record, ctx: Any) -> None:
    """Keep the record, and the book as of it."""
    SEEN.append(rec)
    if rec.channel in ("depth_diff", "book_ticker") and ctx.books is not None:
        view = ctx.books.get(rec.symbol)
        if view is None:
            TOPS.append((rec, None, None, None))
        else:
            TOPS.append((rec, view.last_update_id, view.best_bid(), view.best_ask()))


async def paced(rec: Record) -> None:
    CALLED_AT.append((rec.recv_ts, asyncio.get_running_loop().time()))


async def failing(rec: Record) -> None:
    raise RuntimeError(f"hook refuses {rec.channel}")
