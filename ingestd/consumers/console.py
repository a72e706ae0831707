"""The console reporter: one summary line every ``interval_s``, to stderr by default.

It reads the records published so far per channel from the ``counts`` callable (the bus's one
count, :class:`ingestd.bus.RecordCounts`: the reporter is not a bus consumer and counts nothing
itself) and writes one line such as::

    ingestd: 1234.5 rec/s | trade 120.0 agg_trade 300.2 depth_diff 14.2 | reconnects 1 (+1) | drops 0

Rates are records per second since the previous line, total first, then per channel (every
channel seen so far, in the order of :data:`ingestd.records.CHANNELS`, so a channel that went
quiet shows ``0.0``). ``reconnects`` and ``drops`` come from the ``stats`` callable.

The ``stats`` callable contract: it returns a mapping with ``reconnects: int`` (websocket
reconnects since start) and ``drops: int`` (records dropped by every bus queue since start); both
are cumulative totals, the line shows the total and, when it moved, the change since the last
line. A missing key counts as 0; a callable that raises is logged once and the line is written
without those figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, TextIO

from ingestd.records import CHANNELS

log = logging.getLogger("ingestd.console")

_ORDER: Final = {c: i for i, c in enumerate(CHANNELS)}

Counts = Callable[[], Mapping[str, int]]
"""Records published since start, per channel (cumulative)."""


class ConsoleReporter:
    """Prints one rate line per interval from the cumulative per-channel ``counts``."""

    name = "console"

    def __init__(
        self,
        interval_s: float,
        stats: Callable[[], dict[str, Any]] | None = None,
        out: TextIO | None = None,
        *,
        counts: Counts | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"console interval must be positive, got {interval_s}")
        self.interval_s = interval_s
        self._stats = stats
        self._out = out
        self._counts_of = counts
        self._clock = clock
        self._last_counts: dict[str, int] = {}
        self._seen: set[str] = set()
        self._last_at = clock()
        self._last_reconnects = 0
        self._last_drops = 0
        self._stats_failed = False
        self._write_failed = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.records = 0
        self.lines = 0

    async def start(self) -> None:
        """Start the reporting task; the first line comes one interval later."""
        self._last_at = self._clock()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="console:reporter")

    async def close(self) -> None:
        """Stop the reporting task. Idempotent."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.report()

    def report(self) -> str:
        """Write (and return) one line covering the time since the previous line."""
        now = self._clock()
        elapsed = max(now - self._last_at, 1e-9)
        self._last_at = now
        cumulative = dict(self._counts_of()) if self._counts_of is not None else {}
        counts = {c: n - self._last_counts.get(c, 0) for c, n in cumulative.items()}
        self._last_counts = cumulative
        self._seen.update(cumulative)
        total = sum(counts.values())
        self.records += total
        chans = sorted(self._seen, key=lambda c: (_ORDER.get(c, len(_ORDER)), c))
        parts = [f"ingestd: {total / elapsed:.1f} rec/s"]
        if chans:
            parts.append(" ".join(f"{c} {counts.get(c, 0) / elapsed:.1f}" for c in chans))
        parts.extend(self._health())
        line = " | ".join(parts)
        out = self._out if self._out is not None else sys.stderr
        try:
            out.write(line + "\n")
            out.flush()
        except (OSError, ValueError):
            # A closed or broken stderr must not take the reporter (or the daemon) down.
            if not self._write_failed:
                self._write_failed = True
                log.warning("console: cannot write the status line", exc_info=True)
        self.lines += 1
        return line

    def _health(self) -> list[str]:
        if self._stats is None:
            return []
        try:
            s = self._stats()
            reconnects = int(s.get("reconnects", 0))
            drops = int(s.get("drops", 0))
        except Exception:
            if not self._stats_failed:
                self._stats_failed = True
                log.exception("console: the stats callable failed; lines go on without it")
            return []
        out = []
        for label, value, last in (
            ("reconnects", reconnects, self._last_reconnects),
            ("drops", drops, self._last_drops),
        ):
            delta = value - last
            out.append(f"{label} {value}" + (f" (+{delta})" if delta > 0 else ""))
        self._last_reconnects = reconnects
        self._last_drops = drops
        return out

    def stats(self) -> dict[str, Any]:
        """Lines written and the records they covered (published since start, per the counts)."""
        pending = sum(self._counts_of().values()) - sum(self._last_counts.values()) if self._counts_of else 0
        return {"lines": self.lines, "records": self.records + pending}
