"""Request-weight budget for one REST host, and the ban state that survives restarts.

Binance limits REST use per IP in *request weight* per minute (docs/binance.md §5: 2400 on USDⓈ-M,
6000 on spot). The budget keeps this process under ``limit x headroom`` with two rules that must
both hold before a request is sent:

* **pacing**: a token bucket refilled at ``budget / window`` per second, holding at most one
  second's worth. 300 depth snapshots of weight 20 at 1200 weight/min go out one per second
  over five minutes, never as a burst at start-up;
* **rolling window**: the weight spent in the last ``window_s`` plus the weight the server says
  someone else spent must leave room for the request.

The server's ``X-MBX-USED-WEIGHT-1M`` header is the truth (it counts every process on this IP),
so each response re-anchors the estimate: ``external = used - our weight sent up to that
request``. Nobody tells us *when* that external weight was spent, so it is assumed to age out
linearly over one window. Waiters are served by priority (books out of sync first), then in
arrival order. A 429 pauses the whole host (:meth:`WeightBudget.pause`).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("ingestd.rest")

MIN_SLEEP_S = 0.005
"""Shortest wait between two checks; keeps a waiter from spinning on float rounding."""


class _Waiter:
    """One pending :meth:`WeightBudget.acquire`; heap-ordered by (-priority, arrival)."""

    __slots__ = ("priority", "seq", "wake", "weight")

    def __init__(self, priority: int, seq: int, weight: int) -> None:
        self.priority = priority
        self.seq = seq
        self.weight = weight
        self.wake = asyncio.Event()

    def __lt__(self, other: _Waiter) -> bool:
        return (-self.priority, self.seq) < (-other.priority, other.seq)


class WeightBudget:
    """Request weight this process may spend on one host, per rolling ``window_s``.

    ``budget`` is already the share this process may use (venue limit x headroom; see
    :meth:`for_limit`). ``burst_s`` is how many seconds of refill the bucket holds: 1 s means
    requests start at the sustained rate, with no start-up burst.
    """

    def __init__(self, budget: int, *, window_s: float = 60.0, burst_s: float = 1.0, name: str = "") -> None:
        if budget <= 0:
            raise ValueError(f"weight budget must be positive, got {budget}")
        if window_s <= 0 or burst_s <= 0:
            raise ValueError("window_s and burst_s must be positive")
        self.name = name
        self.window_s = window_s
        self.burst_s = burst_s
        self._budget = budget
        self._rate = budget / window_s
        self._capacity = max(self._rate * burst_s, 1.0)
        now = time.monotonic()
        self._tokens = self._capacity
        self._stamp = now
        # Our own sends, oldest first: (monotonic send time, weight).
        self._spent: deque[tuple[float, int]] = deque()
        self._spent_sum = 0
        # Weight the server counted that is not in our history, as of _external_at.
        self._external = 0.0
        self._external_at = now
        self._observed_sent_at = -1.0
        self._paused_until = 0.0
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self.last_used: int | None = None
        self.acquired = 0
        self.acquired_weight = 0
        self.waited_s = 0.0
        self.max_wait_s = 0.0

    @classmethod
    def for_limit(cls, limit_per_minute: int, headroom: float, *, name: str = "") -> WeightBudget:
        """The budget for a host whose limit is ``limit_per_minute``, using ``headroom`` of it."""
        if not 0 < headroom <= 1:
            raise ValueError(f"headroom must be in (0, 1], got {headroom}")
        return cls(max(1, int(limit_per_minute * headroom)), name=name)

    # -- configuration --------------------------------------------------------------------

    @property
    def budget(self) -> int:
        """Weight this process may spend per window."""
        return self._budget

    @property
    def rate(self) -> float:
        """Sustained weight per second."""
        return self._rate

    def set_budget(self, budget: int) -> None:
        """Change the budget (e.g. after reading the live limit from exchangeInfo)."""
        if budget <= 0:
            raise ValueError(f"weight budget must be positive, got {budget}")
        now = time.monotonic()
        self._refill(now)
        self._budget = budget
        self._rate = budget / self.window_s
        self._capacity = max(self._rate * self.burst_s, 1.0)
        self._tokens = min(self._tokens, self._capacity)
        self._wake_head()

    # -- state ----------------------------------------------------------------------------

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        spent = self._spent
        while spent and spent[0][0] <= horizon:
            self._spent_sum -= spent.popleft()[1]

    def _external_now(self, now: float) -> float:
        age = now - self._external_at
        if age >= self.window_s:
            return 0.0
        return self._external * (1.0 - age / self.window_s)

    def used(self) -> float:
        """Estimated weight used on the host in the current window (ours + others')."""
        now = time.monotonic()
        self._expire(now)
        return max(0.0, self._spent_sum + self._external_now(now))

    @property
    def paused_for(self) -> float:
        """Seconds left of a 429 pause (0 when not paused)."""
        return max(0.0, self._paused_until - time.monotonic())

    @property
    def waiting(self) -> int:
        """Requests waiting for budget."""
        return len(self._waiters)

    def _delay(self, weight: int, now: float) -> float:
        """Seconds until ``weight`` may be spent; 0 when it may be spent now."""
        if self._paused_until > now:
            return self._paused_until - now
        if weight == 0:
            return 0.0  # free endpoints (fundingInfo) are not paced, only paused
        self._refill(now)
        self._expire(now)
        delay = 0.0
        # A request heavier than the bucket (spot depth 5000 = 250) waits for a full bucket and
        # leaves it in debt, so the long-run rate still holds.
        need = min(float(weight), self._capacity)
        if self._tokens < need:
            delay = (need - self._tokens) / self._rate
        fit = min(weight, self._budget)
        external = self._external_now(now)
        excess = max(0.0, self._spent_sum + external) + fit - self._budget
        if excess > 0:
            # Room appears when our oldest send leaves the window or the external weight ages;
            # take the sooner and re-check then (the estimate is piecewise, not worth solving).
            candidates: list[float] = []
            if self._spent:
                candidates.append(self._spent[0][0] + self.window_s - now)
            if external > 0:
                candidates.append(excess * self.window_s / self._external)
            window_delay = min(candidates) if candidates else self.window_s
            delay = max(delay, window_delay)
        return max(delay, MIN_SLEEP_S) if delay > 0 else 0.0

    def _consume(self, weight: int, now: float) -> None:
        self._tokens -= weight
        self._spent.append((now, weight))
        self._spent_sum += weight

    def _wake_head(self) -> None:
        if self._waiters:
            self._waiters[0].wake.set()

    # -- the API ----------------------------------------------------------------------------

    async def acquire(self, weight: int, *, priority: int = 0) -> float:
        """Wait until ``weight`` fits, spend it, and return the seconds waited.

        Higher ``priority`` is served first; equal priorities in arrival order. A cancelled
        waiter leaves the queue without spending anything.
        """
        if weight < 0:
            raise ValueError(f"negative request weight {weight}")
        start = time.monotonic()
        me = _Waiter(priority, next(self._seq), weight)
        heapq.heappush(self._waiters, me)
        try:
            while True:
                now = time.monotonic()
                if self._waiters[0] is me:
                    delay = self._delay(weight, now)
                    if delay <= 0:
                        heapq.heappop(self._waiters)
                        self._consume(weight, now)
                        break
                else:
                    # Not our turn: sleep until the head leaves and wakes us.
                    delay = None
                me.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await me.wake.wait()
        except BaseException:
            # Cancelled (or the loop is closing): leave the queue so the next waiter can go.
            if me in self._waiters:
                self._waiters.remove(me)
                heapq.heapify(self._waiters)
            self._wake_head()
            raise
        self._wake_head()
        waited = time.monotonic() - start
        self.acquired += 1
        self.acquired_weight += weight
        self.waited_s += waited
        self.max_wait_s = max(self.max_wait_s, waited)
        return waited

    def observe(self, used: int, *, sent_at: float) -> None:
        """Correct the estimate with the server's used weight, from a response to a request
        sent at monotonic ``sent_at``. Responses older than one already seen are ignored."""
        if sent_at < self._observed_sent_at:
            return
        self._observed_sent_at = sent_at
        self.last_used = used
        now = time.monotonic()
        self._expire(now)
        ours = sum(w for t, w in self._spent if t <= sent_at)
        # Negative when the server counts less than we do (its window moved on): believe it.
        self._external = float(used - ours)
        self._external_at = now
        self._wake_head()

    def pause(self, seconds: float) -> None:
        """Send nothing to this host for ``seconds`` (HTTP 429)."""
        self._paused_until = max(self._paused_until, time.monotonic() + max(0.0, seconds))

    def stats(self) -> dict[str, Any]:
        """Counters: budget, estimated use, waits."""
        return {
            "budget": self._budget,
            "window_s": self.window_s,
            "used_estimate": round(self.used(), 1),
            "last_used_header": self.last_used,
            "waiting": len(self._waiters),
            "acquired": self.acquired,
            "acquired_weight": self.acquired_weight,
            "waited_s": round(self.waited_s, 3),
            "max_wait_s": round(self.max_wait_s, 3),
            "paused_for_s": round(self.paused_for, 3),
        }


# -- ban state ---------------------------------------------------------------------------------

BANS_KEY = "rest_bans"
"""Key in the state file: ``{"rest_bans": {"<host[:port]>": <ban end, epoch seconds>}}``."""


def load_ban(path: Path, host: str) -> float:
    """Ban end (epoch seconds) recorded for ``host`` in ``path``; 0 when none or unreadable."""
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return 0.0
    except (OSError, orjson.JSONDecodeError) as exc:
        log.warning("state file %s unreadable (%s): ignoring it", path, exc)
        return 0.0
    bans = data.get(BANS_KEY) if isinstance(data, dict) else None
    until = bans.get(host) if isinstance(bans, dict) else None
    return float(until) if isinstance(until, (int, float)) and not isinstance(until, bool) else 0.0


def save_ban(path: Path, host: str, until: float) -> None:
    """Record (``until`` > 0) or clear (``until`` == 0) the ban of ``host``, atomically.

    Other keys of the file are kept. The new content goes to a temporary file in the same
    directory, is fsynced, and replaces the old file in one rename: a crash leaves either the
    old or the new state, never half of one.
    """
    data: dict[str, Any] = {}
    try:
        loaded = orjson.loads(path.read_bytes())
        if isinstance(loaded, dict):
            data = loaded
    except FileNotFoundError:
        pass
    except (OSError, orjson.JSONDecodeError) as exc:
        log.warning("state file %s unreadable (%s): rewriting it", path, exc)
    bans = data.get(BANS_KEY)
    if not isinstance(bans, dict):
        bans = {}
    if until > 0:
        bans[host] = until
    else:
        bans.pop(host, None)
    data[BANS_KEY] = bans
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
