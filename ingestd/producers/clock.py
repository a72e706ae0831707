"""Server-clock estimate: how far the venue's clock is from the local wall clock.

Each sample is one ``GET <time_path>`` (weight 1). The server stamped ``serverTime`` somewhere
between sending and receiving, so it is compared with the local wall clock at the round trip's
midpoint; the error of one sample is at most half its round trip. Of ``samples`` tries the one
with the smallest round trip wins (the least queueing, hence the tightest bound). The round trip
is measured on the monotonic clock so a wall-clock step during a sample cannot distort it.

``offset_ms`` > 0 means the server is ahead: ``server ≈ local + offset``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ingestd.errors import BannedError, IngestError, ParseError
from ingestd.producers.inflight import EmitGuard
from ingestd.producers.rest import RestClient
from ingestd.venues.binance.endpoints import TIME_WEIGHT, VenueSpec

log = logging.getLogger("ingestd.clock")


def parse_server_time(body: bytes) -> int:
    """``{"serverTime": 1633835466289}`` → 1633835466289 (ms epoch). Pure."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"time: body is not JSON ({exc})", stream="time") from exc
    value = data.get("serverTime") if isinstance(data, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ParseError(f"time: no integer serverTime in {body[:80]!r}", stream="time")
    return value


@dataclass(frozen=True, slots=True)
class ClockEstimate:
    """One estimate: the best of ``samples`` round trips."""

    offset_ms: float
    """Server clock minus local wall clock, ms (positive: the server is ahead)."""
    rtt_ms: float
    """Round trip of the chosen sample; the offset is exact to within half of it."""
    server_time_ms: int
    """``serverTime`` of the chosen sample."""
    local_mid_ns: int
    """Local wall clock (ns) at the chosen sample's midpoint."""
    measured_at: int
    """ns wall clock when the estimate was made."""
    samples: int
    """Successful samples it was chosen from."""


class ClockSync:
    """Estimates the venue clock offset now and then every ``interval_s`` (task owned here)."""

    def __init__(
        self,
        client: RestClient,
        venue: VenueSpec,
        *,
        samples: int = 5,
        interval_s: float = 300.0,
        sample_gap_s: float = 0.05,
        on_estimate: Callable[[ClockEstimate], Awaitable[None]] | None = None,
    ) -> None:
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.client = client
        self.venue = venue
        self.samples = samples
        self.interval_s = interval_s
        self.sample_gap_s = sample_gap_s
        self.on_estimate = on_estimate
        """Awaited with each estimate the refresh task makes (the daemon stores and checks it)."""
        self.last_estimate: ClockEstimate | None = None
        self._task: asyncio.Task[None] | None = None
        self._guard = EmitGuard()
        self._closed = False
        self._failing = 0
        self.measurements = 0
        self.failures = 0
        self.last_error: str | None = None

    @property
    def offset_ms(self) -> float | None:
        """Latest offset (server - local, ms); ``None`` before the first estimate."""
        return None if self.last_estimate is None else self.last_estimate.offset_ms

    @property
    def rtt_ms(self) -> float | None:
        """Round trip of the latest estimate's sample, ms."""
        return None if self.last_estimate is None else self.last_estimate.rtt_ms

    async def measure(self) -> ClockEstimate:
        """Take ``samples`` round trips, keep the fastest, store and return it.

        Raises the last error when no sample succeeded (a ban is raised at once).
        """
        best: tuple[int, int, int] | None = None  # (rtt_ns, server_ms, local_mid_ns)
        ok = 0
        last_exc: IngestError | None = None
        for i in range(self.samples):
            if i and self.sample_gap_s > 0:
                await asyncio.sleep(self.sample_gap_s)
            try:
                resp = await self.client.get(self.venue.time_path, None, weight=TIME_WEIGHT, priority=5)
                server_ms = parse_server_time(resp.body)
            except BannedError:
                raise
            except IngestError as exc:
                last_exc = exc
                continue
            # elapsed_s is monotonic from send to body read (any budget wait is before it);
            # recv_ts is the wall clock at that read, so the midpoint is recv_ts - rtt/2.
            rtt = int(resp.elapsed_s * 1e9)
            mid = resp.recv_ts - rtt // 2
            ok += 1
            if best is None or rtt < best[0]:
                best = (rtt, server_ms, mid)
        if best is None:
            assert last_exc is not None
            raise last_exc
        rtt_ns, server_ms, mid_ns = best
        est = ClockEstimate(
            offset_ms=(server_ms * 1_000_000 - mid_ns) / 1e6,
            rtt_ms=rtt_ns / 1e6,
            server_time_ms=server_ms,
            local_mid_ns=mid_ns,
            measured_at=time.time_ns(),
            samples=ok,
        )
        self.last_estimate = est
        self.measurements += 1
        return est

    async def _loop(self) -> None:
        while True:
            delay = self.interval_s
            try:
                est = await self.measure()
            except BannedError as exc:
                self._fail(exc)
                delay = max(delay, exc.until - time.time())
            except IngestError as exc:
                self._fail(exc)
            else:
                if self._failing:
                    log.info("clock estimate recovered after %d failure(s)", self._failing)
                    self._failing = 0
                log.debug("clock offset %.1f ms (rtt %.1f ms)", est.offset_ms, est.rtt_ms)
                if self.on_estimate is not None:
                    try:
                        # Guarded: close() lets the sample being emitted finish.
                        await self._guard.run(self.on_estimate, est)
                    except Exception:
                        # A handler bug must not end the refresh task (metrics keep the offset).
                        log.exception("clock estimate handler failed")
            await asyncio.sleep(delay)

    def _fail(self, exc: IngestError) -> None:
        self.failures += 1
        self.last_error = str(exc)
        if not self._failing:
            log.warning("clock estimate failing: %s", exc)
        self._failing += 1

    def start(self) -> None:
        """Start the refresh task (first estimate at once). Idempotent."""
        if self._closed or self._task is not None:
            return
        self._task = asyncio.create_task(self._loop(), name=f"clock:{self.venue.name}")

    async def close(self) -> None:
        """Stop the refresh task and wait for it. Idempotent. A sample already handed to
        ``on_estimate`` is finished first (the caller's deadline bounds the wait)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            await self._guard.stop([task])

    def stats(self) -> dict[str, Any]:
        """Counters and the latest estimate."""
        est = self.last_estimate
        return {
            "measurements": self.measurements,
            "failures": self.failures,
            "offset_ms": None if est is None else round(est.offset_ms, 3),
            "rtt_ms": None if est is None else round(est.rtt_ms, 3),
            "samples": None if est is None else est.samples,
            "measured_at": None if est is None else est.measured_at,
            "last_error": self.last_error,
        }
