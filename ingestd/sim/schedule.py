"""The sim venue's clock and its listing schedule (pure: times are passed in).

**Venue time** is a point on the capture's own clock (ns of the recorded receive times). In a
``live`` replay it runs on the wall clock from the moment the venue's clock is started (its first
websocket connection), at the replay speed, whether anyone is connected or not: a new connection
starts at the venue's "now" (what was published before is history, served only by REST), so a
client that was disconnected for a while has a hole it can backfill. In the other replay modes
each connection replays at its own pace, and venue time is the furthest frame any connection
has been sent.

**Listings** (``--list-at SECONDS:SYMBOL``, ``--delist-at SECONDS:SYMBOL``): SECONDS are venue
time from the capture's start (at speed 1 in a ``live`` replay: seconds since the first
connection). A listed symbol's frames are published only from its listing on, a delisted one's
only until its delisting; REST answers (aggTrades) follow the same window. exchangeInfo follows
Binance (docs/binance.md, exchangeInfo): a USDⓈ-M contract waiting for its listing is
``PENDING_TRADING`` with its ``onboardDate``; a delisted perpetual stays in the list as
``SETTLING`` (Binance keeps settled contracts listed); a spot pair appears at its listing and
turns ``BREAK`` when delisted (Binance keeps those listed too).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from ingestd.errors import ConfigError
from ingestd.sim.captures import Market, Timeline

Status = Literal["TRADING", "PENDING_TRADING", "SETTLING", "BREAK"]

_NS: Final = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ListingChange:
    """One scheduled change: ``native`` is listed (or delisted) ``at_s`` seconds of venue time in."""

    at_s: float
    native: str
    listed: bool


def parse_change(text: str, *, listed: bool) -> ListingChange:
    """``"12.5:ETHUSDT"`` → a change; :class:`ConfigError` naming the flag when malformed."""
    flag = "--list-at" if listed else "--delist-at"
    secs, sep, native = text.partition(":")
    try:
        at = float(secs)
    except ValueError:
        at = -1.0
    if not sep or not native.strip() or not at >= 0 or at == float("inf"):
        raise ConfigError(f"{flag}: want SECONDS:SYMBOL with SECONDS >= 0, e.g. 30:ETHUSDT, not {text!r}")
    return ListingChange(at, native.strip().upper(), listed)


def _sorted(ts: Sequence[int]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(ts))


class Schedule:
    """Venue time and the listing windows of one timeline.

    ``furthest`` returns the timeline index of the furthest frame sent on any connection (``-1``
    before any): venue time outside a ``live`` replay.
    """

    def __init__(
        self,
        timeline: Timeline,
        changes: Sequence[ListingChange] = (),
        *,
        speed: float,
        live: bool,
        furthest: Callable[[], int],
    ) -> None:
        if live and not speed > 0:
            raise ConfigError("a live replay needs a speed > 0 (its clock runs with the wall clock)")
        self._tl = timeline
        self.speed = speed
        self.live = live
        self._furthest = furthest
        self._ts_sorted = _sorted(timeline.ts)
        self.t0_ns = timeline.ts[0] if len(timeline) else 0
        self.anchor: float | None = None
        """Loop time (s) at which venue time was ``t0_ns`` (live replays; ``None``: not started)."""
        known = {m: set(timeline.symbols(m)) for m in ("futures", "spot")}
        self.listed_at: dict[str, int] = {}
        self.delisted_at: dict[str, int] = {}
        for ch in changes:
            if not any(ch.native in syms for syms in known.values()):
                raise ConfigError(
                    f"{'--list-at' if ch.listed else '--delist-at'}: {ch.native} is not in the capture "
                    f"(symbols: {', '.join(sorted(known['futures'] | known['spot']))})"
                )
            table = self.listed_at if ch.listed else self.delisted_at
            if ch.native in table:
                raise ConfigError(f"{ch.native} is {'listed' if ch.listed else 'delisted'} twice")
            table[ch.native] = self.t0_ns + int(ch.at_s * _NS)
        for native, at in self.delisted_at.items():
            if self.listed_at.get(native, -1) >= at:
                raise ConfigError(f"{native}: --delist-at must come after its --list-at")
        n = len(timeline.streams)
        self.floor: list[int] = [-1] * n
        """Per stream: frames at or below this index are never published (not listed yet)."""
        self.ceil: list[int] | None = None
        """Per stream: frames at or above this index are never published (delisted); ``None``
        when nothing is delisted (the replay loop then skips the check)."""
        for st in timeline.streams:
            native = (st.symbol or "").upper()
            if native in self.listed_at:
                self.floor[st.sid] = self.index_at(self.listed_at[native]) - 1
            if native in self.delisted_at:
                if self.ceil is None:
                    self.ceil = [len(timeline)] * n
                self.ceil[st.sid] = self.index_at(self.delisted_at[native])

    # -- venue time ----------------------------------------------------------------------------

    def start(self, loop_now: float) -> None:
        """Start the live clock (idempotent): venue time begins at the capture's start now."""
        if self.live and self.anchor is None:
            self.anchor = loop_now

    def now_ns(self, loop_now: float) -> int:
        """Venue time on the capture clock (ns); before anything happened, just before the start."""
        if self.live:
            if self.anchor is None:
                return self.t0_ns - 1
            return self.t0_ns + int((loop_now - self.anchor) * self.speed * _NS)
        last = self._furthest()
        return self._tl.ts[last] if last >= 0 else self.t0_ns - 1

    def index_at(self, ns: int) -> int:
        """Index of the first frame at or after ``ns`` on the capture clock."""
        ts = self._tl.ts
        if self._ts_sorted:
            return bisect.bisect_left(ts, ns)
        return next((i for i, t in enumerate(ts) if t >= ns), len(ts))

    def position(self, loop_now: float) -> int:
        """Index of the last frame published by venue time ``loop_now`` (``-1``: none yet)."""
        if not self.live:
            return self._furthest()
        return self.index_at(self.now_ns(loop_now) + 1) - 1

    # -- listings ------------------------------------------------------------------------------

    def window(self, sid: int, loop_now: float) -> tuple[int, int]:
        """Timeline index range ``[lo, hi)`` of ``sid`` published so far (live: up to now)."""
        hi = len(self._tl) if self.ceil is None else self.ceil[sid]
        if self.live:
            hi = min(hi, self.position(loop_now) + 1)
        return self.floor[sid] + 1, hi

    def status(self, native: str, market: Market, now_ns: int) -> Status | None:
        """The symbol's exchangeInfo status at venue time ``now_ns``; ``None``: not listed at all."""
        listed = self.listed_at.get(native)
        if listed is not None and now_ns < listed:
            return "PENDING_TRADING" if market == "futures" else None
        delisted = self.delisted_at.get(native)
        if delisted is not None and now_ns >= delisted:
            return "SETTLING" if market == "futures" else "BREAK"
        return "TRADING"

    def onboard_ms(self, native: str) -> int | None:
        """The listing time of a scheduled listing (ms on the capture clock), else ``None``."""
        at = self.listed_at.get(native)
        return None if at is None else at // 1_000_000

    @property
    def changes(self) -> bool:
        """Any listing or delisting is scheduled."""
        return bool(self.listed_at or self.delisted_at)
