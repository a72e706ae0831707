"""Data quality: streams that went quiet past their freshness, named in the gap log and metrics.

A stream that delivered and then sends nothing for longer than its freshness limit (the limit
``/readyz`` applies: ``health.freshness_s`` for book-driven streams, ``health.quiet_freshness_s``
for trade-driven ones; event-driven streams such as liquidations are exempt) is *quiet*. When a
scan notices it, one ``quiet_stream`` gap record per symbol goes out (``started_ts``: its last
frame, ``ended_ts`` ``None``); when it delivers again, a second one closes the period
(``ended_ts``: the latest frame seen then, so ``[started_ts, ended_ts]`` covers the quiet
period). ``data_channel`` names the stream's channel. Like ``silent_stream`` (a stream that
never delivered), these are notices: the book is not touched and no ``resync`` follows.
``ingestd_stream_quiet{stream}`` is 1 while a stream is quiet. Neither ever affects liveness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ingestd.book.records import Gap, GapKind
from ingestd.channels import Cadence
from ingestd.config import HealthSettings
from ingestd.records import AnyRecord, Record
from ingestd.venues.binance.channels import channel_of
from ingestd.venues.binance.endpoints import stream_symbol
from ingestd.venues.binance.symbols import ContractSet

log = logging.getLogger("ingestd.observe")

NAMES_IN_LOG = 5
"""Stream names a log line lists before it says how many more."""


def freshness_limit(cadence: str, health: HealthSettings) -> float | None:
    """Seconds a stream of ``cadence`` may go without a frame (``None``: exempt), as /readyz."""
    if cadence == Cadence.EVENT:
        return None
    return health.freshness_s if cadence == Cadence.BOOK else health.quiet_freshness_s


def _names(names: Sequence[str]) -> str:
    more = f" (+{len(names) - NAMES_IN_LOG} more)" if len(names) > NAMES_IN_LOG else ""
    return ", ".join(names[:NAMES_IN_LOG]) + more


class QuietStreams:
    """Tracks quiet periods per stream; :meth:`scan` is pure (the time comes in as ``now_ns``).

    It follows the streams the producer reports (a retired stream's open period is dropped);
    ``contracts`` is replaced when listings change it (the gap records name the contract)."""

    def __init__(self, venue: str, contracts: ContractSet, health: HealthSettings) -> None:
        self.venue = venue
        self.contracts = contracts
        self.health = health
        self._open: dict[str, int] = {}
        """Quiet streams: the wall-clock ns of their last frame before the quiet began."""
        self.episodes = 0

    def scan(self, streams: Mapping[str, Mapping[str, Any]], now_ns: int) -> list[Record]:
        """``StreamsProducer.stats()["streams"]`` now: the gap records of what started or ended."""
        out: list[Record] = []
        began: list[str] = []
        ended: list[str] = []
        gone = [name for name in self._open if name not in streams]
        if gone:
            # Retired (their contract was delisted): no longer expected, so no longer quiet.
            for name in gone:
                del self._open[name]
            log.info("%d quiet stream(s) retired: %s", len(gone), _names(gone))
        for name, st in streams.items():
            limit = freshness_limit(str(st.get("cadence", Cadence.TRADE)), self.health)
            age = st.get("last_frame_age_s")
            # A stream with no frame yet is the first-frame deadline's business (silent_stream).
            if limit is None or age is None or not st.get("first_frame_seen"):
                continue
            last_ns = now_ns - int(float(age) * 1e9)
            started = self._open.get(name)
            if started is None and age > limit:
                self._open[name] = last_ns
                self.episodes += 1
                began.append(name)
                why = f"{st.get('connection')}: {name} sent nothing for {age:.0f} s (limit {limit:g} s)"
                out += self._gaps(name, why, last_ns, None, now_ns)
            elif started is not None and age <= limit:
                del self._open[name]
                ended.append(name)
                why = (
                    f"{st.get('connection')}: {name} delivered again after {(last_ns - started) / 1e9:.0f} s"
                )
                out += self._gaps(name, why, started, last_ns, now_ns)
        if began:
            log.warning("%d stream(s) quiet past their freshness: %s", len(began), _names(began))
        if ended:
            log.info("%d stream(s) deliver again: %s", len(ended), _names(ended))
        return out

    def _gaps(self, stream: str, reason: str, started: int, ended: int | None, now_ns: int) -> list[Record]:
        contract = self.contracts.get((stream_symbol(stream) or "").upper())
        if contract is None:
            return []  # an all-market stream (``!markPrice@arr``): named in the metrics only
        return [
            Gap(
                venue=self.venue,
                symbol=contract.symbol,
                native=contract.native,
                exchange_ts=None,
                recv_ts=now_ns,
                transaction_ts=None,
                kind=GapKind.QUIET_STREAM.value,
                reason=reason,
                last_update_id=None,
                first_update_id=None,
                final_update_id=None,
                started_ts=started,
                ended_ts=ended,
                data_channel=channel_of(self.venue, stream),
            )
        ]

    def stats(self) -> dict[str, Any]:
        """The quiet streams now, and how many quiet periods began."""
        return {"quiet_streams": sorted(self._open), "episodes": self.episodes}


class QuietWatch:
    """Owns the task that scans ``streams()`` every ``interval_s`` and publishes what it finds.

    ``start()`` on the running loop; ``close()`` is idempotent (the daemon stops it with the
    producers: it emits records).
    """

    def __init__(
        self,
        quiet: QuietStreams,
        streams: Callable[[], Mapping[str, Mapping[str, Any]]],
        publish: Callable[[Sequence[AnyRecord]], Awaitable[None]],
        interval_s: float,
    ) -> None:
        self.quiet = quiet
        self._streams = streams
        self._publish = publish
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(self._stop), name="quiet-streams")

    async def _run(self, stop: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
            if stop.is_set():
                return
            try:
                found = self.quiet.scan(self._streams(), time.time_ns())
            except Exception:
                # A bug in a stats() must not end the scans silently (logged, retried next time).
                log.exception("quiet-stream scan failed")
                continue
            if found:
                await self._publish(found)

    async def close(self) -> None:
        """Stop after the publish under way, if any (its records are not lost). Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            self._stop.set()
            await task
