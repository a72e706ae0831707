"""A stored tree recorded live from the sim, with every record a live hook saw (for replay tests)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingestd.app import Daemon
from ingestd.records import Record
from ingestd.sim import SimVenue
from tests.e2e import capture_frames, run_until, settings_for

BOOK_KINDS = {"trade": "trade", "bookTicker": "book_ticker", "depth": "depth_diff", "aggTrade": "agg_trade"}


@dataclass
class Recorded:
    """What a live run stored and what its hook was called with, in call order."""

    data: Path
    live: list[Record]
    books: list[tuple[str, int | None, Any, Any]]
    """Per depth_diff the live hook saw: (symbol, book u, best bid, best ask) read from ctx.books."""
    expected: dict[str, int]
    """Records per channel in the capture (plus the REST snapshot)."""


def record(
    capture: Path,
    data: Path,
    *,
    venue: str = "binance-usdm",
    channels: str,
    symbols: str = "BTCUSDT",
    expected: dict[str, int] | None = None,
) -> Recorded:
    """Run the sim (speed 0) on ``capture`` into ``data`` with a hook recording every record,
    until the hook saw ``expected`` records per channel (default: counted from an hftbacktest
    capture) and the contract rows."""
    wanted = set(channels.split(","))
    if expected is None:
        frames = capture_frames(capture)
        expected = {ch: len(frames.get(kind, ())) for kind, ch in BOOK_KINDS.items() if ch in wanted}
        if "depth_diff" in wanted:
            expected["depth_snapshot"] = len(frames.get("snapshot", ()))
    live: list[Record] = []
    books: list[tuple[str, int | None, Any, Any]] = []

    async def hook(rec: Record, ctx: Any) -> None:
        live.append(rec)
        if rec.channel == "depth_diff" and ctx.books is not None:
            view = ctx.books.get(rec.symbol)
            if view is not None:
                books.append((rec.symbol, view.last_update_id, view.best_bid(), view.best_ask()))

    async def run() -> None:
        async with SimVenue([capture], speed=0) as sim:
            settings = settings_for(
                sim.rest_url,
                sim.ws_url,
                data,
                venue=venue,
                symbols=symbols,
                channels=channels,
                hooks={"policy": "block", "queue_size": 1_000_000},
                snapshots={"max_buffered_diffs": 100_000},
            )
            daemon = Daemon(settings)
            daemon.add_hook(hook)
            total = sum(expected.values()) + len(symbols.split(","))  # + the contract rows
            code = await run_until(
                daemon, lambda: daemon.bus.published >= total and len(live) >= total, timeout=120
            )
            assert code == 0

    asyncio.run(run())
    return Recorded(data, live, books, expected)
