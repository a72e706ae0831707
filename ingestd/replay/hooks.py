"""Replay into hooks: the daemon's :class:`~ingestd.consumers.hooks.HookConsumer` per hook, fed
one record at a time in the merged order, after the books took it in.

Live, each hook has its own bounded queue and task, so a slow hook loses its oldest records and
its ``ctx.books`` may be ahead of the record it handles. In replay the replay waits for each
hook, so no record is dropped and ``ctx.books`` is the book as of each record.
Each call still runs under the hook's timeout, and its errors are counted and logged the same
way (``HookConsumer.stats()``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from ingestd.consumers.hooks import HookConsumer
from ingestd.records import AnyRecord
from ingestd.replay.engine import Replay

PACE_SLACK_S: Final = 0.001
"""At ``speed > 0``, a record less than this early is not waited for."""
BATCH: Final = 512
"""Records per call batch for a hook without the context parameter."""
PROGRESS_EVERY: Final = 1024
"""Records between two looks at the clock for the progress callback."""


@dataclass(frozen=True, slots=True)
class HookTarget:
    """A hook consumer and the normalized symbols it takes (``None``: all), as ``Daemon.add_hook``
    attaches it live."""

    consumer: HookConsumer
    symbols: frozenset[str] | None = None


async def run_hooks(
    replay: Replay,
    targets: Sequence[HookTarget],
    *,
    speed: float = 0.0,
    progress: Callable[[Replay], None] | None = None,
    progress_every_s: float = 0.5,
) -> None:
    """Hand every record of ``replay`` to every target whose channels and symbols match.

    ``speed`` 0 runs as fast as the hooks go; ``1`` at the recorded pace (``recv_ts`` gaps),
    ``10`` ten times faster. ``progress(replay)`` is called about every ``progress_every_s``.
    """
    if speed < 0:
        raise ValueError(f"speed must be >= 0, got {speed}")
    loop = asyncio.get_running_loop()
    first_ts: int | None = None
    started = 0.0
    next_progress = time.monotonic() + progress_every_s
    # A hook without the context parameter cannot read books, so the state of the books when
    # it runs does not matter: its records go in batches (one timeout scope per batch, as
    # live). A context hook gets each record alone, before the books take in the next one.
    pending: list[list[AnyRecord]] = [[] for _ in targets]

    async def flush() -> None:
        for t, batch in zip(targets, pending, strict=True):
            if batch:
                await t.consumer.consume(batch.copy())
                batch.clear()

    for n, rec in enumerate(replay, 1):
        if speed > 0:
            if first_ts is None:
                first_ts, started = rec.recv_ts, loop.time()
            else:
                wait = started + (rec.recv_ts - first_ts) / 1e9 / speed - loop.time()
                if wait > PACE_SLACK_S:
                    await flush()
                    await asyncio.sleep(wait)
        channel, symbol = rec.channel, rec.symbol
        for t, batch in zip(targets, pending, strict=True):
            c = t.consumer
            if (c.channels is None or channel in c.channels) and (t.symbols is None or symbol in t.symbols):
                if c.passes_context:
                    await c.consume([rec])
                else:
                    batch.append(rec)
                    if len(batch) >= BATCH:
                        await c.consume(batch.copy())
                        batch.clear()
        if progress is not None and n % PROGRESS_EVERY == 0 and time.monotonic() >= next_progress:
            next_progress = time.monotonic() + progress_every_s
            progress(replay)
    await flush()
    if progress is not None:
        progress(replay)
