"""REST pollers: premium index, funding history, open interest, long/short and taker ratios.

Each enabled endpoint (``PollerSettings``: an interval in seconds, 0 = off; all off by default)
gets one task that polls every contract of the run in turn, then sleeps out its interval. The
bodies become records (:mod:`ingestd.producers.poller_records`) sent through ``emit``, the
daemon's data path, so they reach Parquet, NDJSON, NATS and hooks like stream records.

Budgets: every request takes its weight from the host's shared
:class:`~ingestd.producers.budget.WeightBudget` (at a priority below depth snapshots), and the
endpoints that carry no IP weight also respect their own per-IP buckets (docs/binance.md §5):
``fundingRate`` 500 and ``/futures/data/*`` 1000 requests per 5 minutes, of which the pollers
use half. Settings that could never fit a bucket are refused up front (``ConfigError``).

History endpoints return overlapping rows poll after poll: a row is emitted only when its time
is newer than the last one emitted for that endpoint and contract, so storage holds each once
(per process: the first poll after a restart emits its whole window again).

A failed poll is counted and logged once per failure episode; the next poll tries again. During
a 418 ban or a 429 pause the poller waits for the host. USDⓈ-M only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ingestd.errors import BannedError, ConfigError, IngestError, RateLimitedError
from ingestd.producers.inflight import EmitGuard, run_workers
from ingestd.producers.poller_records import (
    RatioKind,
    parse_funding_rates,
    parse_long_short,
    parse_open_interest,
    parse_premium_index,
    parse_taker_volume,
)

if TYPE_CHECKING:
    from ingestd.producers.events import Emit
    from ingestd.producers.rest import RestClient
    from ingestd.records import Record
    from ingestd.venues.binance.endpoints import VenueSpec
    from ingestd.venues.binance.symbols import Contract, ContractSet

log = logging.getLogger("ingestd.pollers")

POLL_PRIORITY: Final = -1
"""Budget priority of a poll: after depth snapshots (0 routine, 10 urgent)."""
BUCKET_SHARE: Final = 0.5
"""Share of a per-IP request bucket the pollers may use (other processes share the IP)."""
BUCKET_WINDOW_S: Final = 300.0

Interval = Annotated[float, Field(ge=0)]
Period = Literal["5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d"]


class PollerSettings(BaseModel):
    """Which REST endpoints the daemon polls, and how often (seconds; 0 = off, the default)."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    premium_index_s: Interval = 0.0
    """``/fapi/v1/premiumIndex``: mark/index price, last funding rate (channel ``premium_index``)."""
    funding_rate_s: Interval = 0.0
    """``/fapi/v1/fundingRate``: settled funding history (channel ``funding_rate``)."""
    open_interest_s: Interval = 0.0
    """``/fapi/v1/openInterest``: current open interest (channel ``open_interest``)."""
    open_interest_hist_s: Interval = 0.0
    """``/futures/data/openInterestHist`` per ``period`` (channel ``open_interest``)."""
    top_long_short_position_s: Interval = 0.0
    """``/futures/data/topLongShortPositionRatio`` (channel ``long_short_ratio``)."""
    top_long_short_account_s: Interval = 0.0
    """``/futures/data/topLongShortAccountRatio`` (channel ``long_short_ratio``)."""
    global_long_short_account_s: Interval = 0.0
    """``/futures/data/globalLongShortAccountRatio`` (channel ``long_short_ratio``)."""
    taker_volume_s: Interval = 0.0
    """``/futures/data/takerlongshortRatio`` (channel ``taker_volume``)."""
    period: Period = "5m"
    """Period of the ``/futures/data`` series."""
    history_limit: Annotated[int, Field(ge=1, le=500)] = 30
    """Rows per ``/futures/data`` request (the newest ones)."""
    funding_limit: Annotated[int, Field(ge=1, le=1000)] = 100
    """Rows per ``fundingRate`` request."""

    @field_validator(
        "premium_index_s", "funding_rate_s", "open_interest_s", "open_interest_hist_s",
        "top_long_short_position_s", "top_long_short_account_s", "global_long_short_account_s",
        "taker_volume_s",
    )  # fmt: skip
    @classmethod
    def _off_or_sane(cls, v: float) -> float:
        if 0 < v < 1:
            raise ValueError(f"{v:g} s is too short: use 0 (off) or at least 1 s")
        return v

    @property
    def enabled(self) -> dict[str, float]:
        """Enabled endpoints: settings key → interval in seconds."""
        return {p.key: getattr(self, p.key) for p in POLLS if getattr(self, p.key) > 0}


Parser = Callable[[str, "Contract", Any, int, PollerSettings], Sequence["Record"]]


def _ratio(kind: RatioKind) -> Parser:
    return lambda venue, c, body, ts, s: parse_long_short(venue, c, body, ts, kind=kind, period=s.period)


@dataclass(frozen=True, slots=True)
class Poll:
    """One pollable endpoint (data): settings key, path, weight, IP bucket, query, parser."""

    key: str
    path: str
    weight: int
    bucket: Literal["funding", "data"] | None
    params: Callable[[Contract, PollerSettings], dict[str, str | int]]
    parse: Parser


def _hist_params(c: Contract, s: PollerSettings) -> dict[str, str | int]:
    return {"symbol": c.native, "period": s.period, "limit": s.history_limit}


POLLS: Final[tuple[Poll, ...]] = (
    Poll("premium_index_s", "/fapi/v1/premiumIndex", 1, None, lambda c, _s: {"symbol": c.native},
         lambda v, c, b, t, _s: parse_premium_index(v, c, b, t)),
    Poll("funding_rate_s", "/fapi/v1/fundingRate", 0, "funding",
         lambda c, s: {"symbol": c.native, "limit": s.funding_limit},
         lambda v, c, b, t, _s: parse_funding_rates(v, c, b, t)),
    Poll("open_interest_s", "/fapi/v1/openInterest", 1, None, lambda c, _s: {"symbol": c.native},
         lambda v, c, b, t, _s: parse_open_interest(v, c, b, t)),
    Poll("open_interest_hist_s", "/futures/data/openInterestHist", 0, "data", _hist_params,
         lambda v, c, b, t, s: parse_open_interest(v, c, b, t, s.period)),
    Poll("top_long_short_position_s", "/futures/data/topLongShortPositionRatio", 0, "data", _hist_params,
         _ratio("top_position")),
    Poll("top_long_short_account_s", "/futures/data/topLongShortAccountRatio", 0, "data", _hist_params,
         _ratio("top_account")),
    Poll("global_long_short_account_s", "/futures/data/globalLongShortAccountRatio", 0, "data", _hist_params,
         _ratio("global_account")),
    Poll("taker_volume_s", "/futures/data/takerlongshortRatio", 0, "data", _hist_params,
         lambda v, c, b, t, s: parse_taker_volume(v, c, b, t, s.period)),
)  # fmt: skip

BUCKET_LIMITS: Final = {"funding": 500, "data": 1000}
"""Requests per IP per 5 minutes (docs/binance.md §4.3, §5)."""


class RequestBucket:
    """At most ``limit`` requests per rolling ``window_s`` (a per-IP bucket that carries no weight)."""

    def __init__(self, name: str, limit: int, window_s: float = BUCKET_WINDOW_S) -> None:
        self.name = name
        self.limit = max(1, limit)
        self.window_s = window_s
        self._sent: deque[float] = deque()
        self._lock = asyncio.Lock()
        self.waited_s = 0.0

    async def acquire(self) -> None:
        # One waiter at a time checks and sleeps, so the order of polls is kept.
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._sent and now - self._sent[0] >= self.window_s:
                    self._sent.popleft()
                if len(self._sent) < self.limit:
                    self._sent.append(now)
                    return
                wait = self._sent[0] + self.window_s - now
                self.waited_s += wait
                await asyncio.sleep(wait)


@dataclass(slots=True)
class _Counters:
    polls: int = 0
    records: int = 0
    duplicates: int = 0
    failed: int = 0


class PollerSet:
    """Polls the enabled endpoints for every contract of the run; records go to ``emit``.

    Create, ``await run()`` (returns when closed), ``await close()`` (idempotent; waits for the
    tasks). ``stats()`` is a snapshot of the counters.
    """

    def __init__(
        self,
        client: RestClient,
        venue: VenueSpec,
        contracts: ContractSet,
        emit: Emit,
        settings: PollerSettings,
    ) -> None:
        enabled = settings.enabled
        if enabled and not venue.routed:
            raise ConfigError(
                f"pollers: {', '.join(enabled)} are USDⓈ-M endpoints; {venue.name} has none (turn them off)",
                key="pollers",
            )
        self.client = client
        self.venue = venue
        self.contracts = contracts
        self.settings = settings
        self._guard = EmitGuard(emit)
        self._polls = [p for p in POLLS if p.key in enabled]
        self._check_buckets(enabled, len(contracts))
        self._buckets = {
            name: RequestBucket(name, int(limit * BUCKET_SHARE)) for name, limit in BUCKET_LIMITS.items()
        }
        self._last: dict[tuple[str, str], int] = {}
        """(endpoint, native) → exchange_ts of the newest row emitted (the dedupe watermark)."""
        self._counters = {p.key: _Counters() for p in self._polls}
        self._failing: set[tuple[str, str]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.last_error: str | None = None

    @staticmethod
    def _check_buckets(enabled: dict[str, float], contracts: int) -> None:
        """Refuse settings whose requests could never fit a per-IP bucket."""
        demand: dict[str, float] = {}
        for p in POLLS:
            if p.bucket is not None and p.key in enabled:
                demand[p.bucket] = demand.get(p.bucket, 0.0) + contracts * BUCKET_WINDOW_S / enabled[p.key]
        for bucket, wanted in demand.items():
            allowed = BUCKET_LIMITS[bucket] * BUCKET_SHARE
            if wanted > allowed:
                keys = [p.key for p in POLLS if p.bucket == bucket and p.key in enabled]
                raise ConfigError(
                    f"pollers: {', '.join(keys)} for {contracts} contracts need {wanted:.0f} requests "
                    "per 5 min; "
                    f"the {bucket} bucket allows {allowed:.0f} (half of Binance's {BUCKET_LIMITS[bucket]}): "
                    "use longer intervals",
                    key=f"pollers.{keys[0]}",
                )

    # -- polling ---------------------------------------------------------------------------------

    async def poll_once(self, poll: Poll, contract: Contract) -> int:
        """Poll one endpoint for one contract; returns the records emitted (new rows only)."""
        counters = self._counters.setdefault(poll.key, _Counters())
        where = (poll.key, contract.native)
        try:
            if poll.bucket is not None:
                await self._buckets[poll.bucket].acquire()
            resp = await self.client.get(
                poll.path, poll.params(contract, self.settings), weight=poll.weight, priority=POLL_PRIORITY
            )
            records = poll.parse(self.venue.name, contract, resp.json(), resp.recv_ts, self.settings)
        except BannedError as exc:
            self._failed(where, counters, exc)
            # The whole host is closed: wait for the ban to end instead of failing poll after poll.
            await asyncio.sleep(max(0.0, exc.until - time.time()))
            return 0
        except RateLimitedError as exc:
            self._failed(where, counters, exc)
            await asyncio.sleep(exc.retry_after or 1.0)
            return 0
        except (IngestError, ValueError) as exc:
            self._failed(where, counters, exc)
            return 0
        counters.polls += 1
        if where in self._failing:
            self._failing.discard(where)
            if not self._failing:
                log.info("pollers recovered (%s %s ok again)", poll.path, contract.native)
        watermark = self._last.get(where, -1)
        fresh = [r for r in records if r.exchange_ts is not None and r.exchange_ts > watermark]
        counters.duplicates += len(records) - len(fresh)
        if not fresh:
            return 0
        if not await self._guard.emit(fresh):
            return 0  # closing: nothing emitted, the watermark stays
        self._last[where] = max(r.exchange_ts or 0 for r in fresh)
        counters.records += len(fresh)
        return len(fresh)

    def _failed(self, where: tuple[str, str], counters: _Counters, exc: Exception) -> None:
        counters.failed += 1
        self.last_error = f"{where[0]} {where[1]}: {exc}"
        if not self._failing:
            log.warning("poll failing (%s %s: %s); retrying at the next interval", where[0], where[1], exc)
        self._failing.add(where)

    async def _loop(self, poll: Poll) -> None:
        interval: float = getattr(self.settings, poll.key)
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            for contract in self.contracts:
                await self.poll_once(poll, contract)
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll until :meth:`close`. Returns normally when closed (or when nothing is enabled)."""
        if self._closed or self._tasks or not self._polls:
            return
        log.info(
            "polling %s for %d contracts",
            ", ".join(f"{p.path} every {getattr(self.settings, p.key):g} s" for p in self._polls),
            len(self.contracts),
        )
        self._tasks = [asyncio.create_task(self._loop(p), name=f"poll:{p.key}") for p in self._polls]
        await run_workers(self._tasks)

    async def close(self) -> None:
        """Stop polling; no task left when it returns. Idempotent. A batch already handed to
        ``emit`` is finished first (the caller's deadline bounds the wait)."""
        self._closed = True
        await self._guard.stop(self._tasks)

    def stats(self) -> dict[str, Any]:
        """Counters per endpoint and in total."""
        per = {k: {"polls": c.polls, "records": c.records, "duplicates": c.duplicates, "failed": c.failed}
               for k, c in self._counters.items()}  # fmt: skip
        return {
            "enabled": self.settings.enabled,
            "polls": sum(c.polls for c in self._counters.values()),
            "records": sum(c.records for c in self._counters.values()),
            "duplicates": sum(c.duplicates for c in self._counters.values()),
            "failed": sum(c.failed for c in self._counters.values()),
            "failing": len(self._failing),
            "last_error": self.last_error,
            "bucket_wait_s": {n: round(b.waited_s, 3) for n, b in self._buckets.items()},
            "endpoints": per,
        }
