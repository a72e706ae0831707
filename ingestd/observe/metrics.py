"""Prometheus metrics, read from each component's ``stats()`` and from a tap on the bus.

:class:`MetricsTap` is a bus consumer (``drop_oldest``: metrics never slow data) that observes
the exchange→receive latency per channel (corrected by the measured clock offset) and runs the
validation counters (non-positive or non-finite prices
and sizes, crossed or locked book tickers, a missing event time where the venue always sends
one), warning once per episode. It does not count records: ``ingestd_records`` is the bus's one
count of what was published (:class:`ingestd.bus.RecordCounts`), so it holds even when the tap's
own queue drops. :func:`render` turns a daemon's stats plus the tap into the
Prometheus text format with ``prometheus_client``'s own encoder; the per-component families live
in :mod:`ingestd.observe.families`.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ingestd.bus import RecordCounts
from ingestd.channels import Source
from ingestd.observe import families
from ingestd.records import AnyRecord, BookTicker, Record
from ingestd.venues.binance.channels import channel_spec

log = logging.getLogger("ingestd.observe")

LATENCY_BUCKETS_S: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds (s) of the exchange→receive latency histogram; one more bucket holds the rest."""

_MARKET: Final = frozenset((Source.STREAM, Source.SNAPSHOT))
"""Latency is observed and records validated on market data only: gap, book and clock records
carry derived times, and pollers' rows their own period times."""

OffsetSource = Callable[[], int | None]
"""Server clock minus local clock in ns; ``None`` while unknown (latency is then not observed)."""


class LatencyHistogram:
    """Counts per bucket of :data:`LATENCY_BUCKETS_S` (the last one is ``+Inf``), sum and count."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS_S, v)] += 1
        self.count += 1
        self.sum += v

    def quantile_bound(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile ``q`` (``inf`` past the last bound)."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for bound, n in zip((*LATENCY_BUCKETS_S, math.inf), self.buckets, strict=True):
            seen += n
            if seen >= rank:
                return bound
        return math.inf


class _Checks:
    """What to check on records of one (venue, channel), from the channel table."""

    __slots__ = ("event_time", "market", "prices")

    def __init__(self, venue: str, cls: type[Record]) -> None:
        spec = channel_spec(venue, cls)
        self.market = spec.source in _MARKET
        self.prices = spec.prices
        self.event_time = spec.event_time


class MetricsTap:
    """Counts what flows on the bus; never writes anything. A bus consumer (``consume``)."""

    name = "metrics"
    channels: frozenset[str] | None = None

    def __init__(
        self, clock_offset_ns: OffsetSource = lambda: 0, *, counts: RecordCounts | None = None
    ) -> None:
        self._offset = clock_offset_ns
        self.counts = counts if counts is not None else RecordCounts()
        """Records published per (venue, channel, symbol): the bus's count (``Bus.counts``)."""
        self.latency: dict[str, LatencyHistogram] = {}
        self.latency_unobserved = 0
        """Records with an event time that arrived before the first clock estimate."""
        self.invalid: dict[tuple[str, str], int] = {}
        """(symbol, kind) → records that failed a validation check."""
        self.episodes = 0
        self._open: dict[tuple[str, str], dict[str, int]] = {}
        """(symbol, channel) → kinds failing now, with the count of the current episode."""
        self._checks: dict[tuple[str, type[Record]], _Checks] = {}

    async def start(self) -> None:
        return None

    @property
    def records(self) -> Mapping[tuple[str, str, str], int]:
        """(venue, channel, symbol) → records published (read from :attr:`counts`)."""
        return self.counts.by_key()

    async def consume(self, batch: list[AnyRecord]) -> None:
        offset = self._offset()
        for r in batch:
            if not isinstance(r, Record):
                continue
            channel = r.channel
            ck = (r.venue, type(r))
            checks = self._checks.get(ck)
            if checks is None:
                checks = self._checks[ck] = _Checks(r.venue, type(r))
            if not checks.market:
                continue
            if r.exchange_ts is not None:
                if offset is None:
                    self.latency_unobserved += 1
                else:
                    # recv - (exchange - offset): `offset` ns is how far the server clock is
                    # ahead of ours, so exchange - offset is the event time on our clock.
                    h = self.latency.get(channel)
                    if h is None:
                        h = self.latency[channel] = LatencyHistogram()
                    h.observe(max((r.recv_ts - r.exchange_ts + offset) / 1e9, 0.0))
            self._validate(r, checks)

    def _validate(self, r: Record, checks: _Checks) -> None:
        problems: list[str] = []
        for f in checks.prices:
            v = getattr(r, f)
            if v is None:
                continue
            if not math.isfinite(v):
                problems.append("non_finite_price")
            elif v <= 0:
                problems.append("non_positive_price")
        if isinstance(r, BookTicker):
            if not (r.bid_qty > 0 and r.ask_qty > 0):  # also catches NaN
                problems.append("non_positive_qty")
            if r.bid_price > r.ask_price:
                problems.append("crossed_spread")
            elif r.bid_price == r.ask_price:
                problems.append("locked_spread")
        # REST history rows (backfill, source "rest") have no event time by nature.
        if r.exchange_ts is None and checks.event_time and getattr(r, "source", "ws") == "ws":
            problems.append("missing_event_time")
        if problems:
            self._bad(r, problems)
        elif self._open:
            self._good(r)

    def _bad(self, r: Record, problems: list[str]) -> None:
        okey = (r.symbol, r.channel)
        current = self._open.setdefault(okey, {})
        for kind in dict.fromkeys(problems):
            ikey = (r.symbol, kind)
            self.invalid[ikey] = self.invalid.get(ikey, 0) + 1
            n = current.get(kind, 0)
            if n == 0:
                self.episodes += 1
                log.warning(
                    "%s %s: %s (counting until a valid record)", r.symbol, r.channel, kind.replace("_", " ")
                )
            current[kind] = n + 1
        for kind in [k for k in current if k not in problems]:
            self._end(okey, kind, current.pop(kind))
        if not current:
            del self._open[okey]

    def _good(self, r: Record) -> None:
        okey = (r.symbol, r.channel)
        current = self._open.pop(okey, None)
        if current:
            for kind, n in current.items():
                self._end(okey, kind, n)

    @staticmethod
    def _end(okey: tuple[str, str], kind: str, n: int) -> None:
        log.info("%s %s: valid again after %d record(s) with %s", okey[0], okey[1], n, kind.replace("_", " "))

    async def close(self) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        """Totals per channel, validation failures and latency quantile bounds (for ``/status``)."""
        per_channel = self.counts.per_channel()
        return {
            "records": sum(per_channel.values()),
            "records_per_channel": per_channel,
            "invalid": {f"{s}:{k}": n for (s, k), n in self.invalid.items()},
            "invalid_open": sorted(f"{s}:{c}:{k}" for (s, c), kinds in self._open.items() for k in kinds),
            "latency_s": {
                ch: {"count": h.count, "p50_le": h.quantile_bound(0.5), "p99_le": h.quantile_bound(0.99)}
                for ch, h in self.latency.items()
            },
            "latency_unobserved": self.latency_unobserved,
        }


class _DaemonCollector(Collector):
    def __init__(
        self,
        stats: Callable[[], dict[str, Any]],
        tap: MetricsTap | None,
        ready: Callable[[], tuple[bool, dict[str, Any]]] | None,
        alive: Callable[[], tuple[bool, dict[str, Any]]] | None = None,
    ) -> None:
        self._stats = stats
        self._tap = tap
        self._ready = ready
        self._alive = alive

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield from families.streams(s.get("streams") or {})
        quiet = GaugeMetricFamily(
            "ingestd_stream_quiet",
            "1 for a stream that delivered, then nothing past its freshness",
            labels=["stream"],
        )
        for stream in (s.get("quiet") or {}).get("quiet_streams") or ():
            quiet.add_metric([str(stream)], 1.0)
        yield quiet
        yield from families.bus(s.get("bus") or {})
        yield from families.rest(s.get("rest") or {}, s.get("snapshots") or {})
        yield from families.books(s.get("books") or {})
        yield from families.clock(s.get("clock") or {})
        yield from families.backfill(s.get("backfill") or {})
        yield from families.listings(s.get("listings") or {}, int(s.get("contracts", 0)))
        up = GaugeMetricFamily("ingestd_uptime_seconds", "Seconds since the daemon started")
        up.add_metric([], float(s.get("uptime_s", 0.0)))
        yield up
        if self._ready is not None:
            ok, _ = self._ready()
            g = GaugeMetricFamily("ingestd_ready", "1 when /readyz answers 200")
            g.add_metric([], 1.0 if ok else 0.0)
            yield g
        if self._alive is not None:
            alive, _ = self._alive()
            a = GaugeMetricFamily("ingestd_alive", "1 when /healthz answers 200 (systemd watchdog pinged)")
            a.add_metric([], 1.0 if alive else 0.0)
            yield a
        if self._tap is not None:
            yield from _tap_metrics(self._tap)


def _tap_metrics(tap: MetricsTap) -> Iterator[Metric]:
    rec = CounterMetricFamily(
        "ingestd_records", "Records per venue, channel and symbol", labels=["venue", "channel", "symbol"]
    )
    for (venue, channel, symbol), n in tap.records.items():
        rec.add_metric([venue, channel, symbol], n)
    yield rec
    lat = HistogramMetricFamily(
        "ingestd_exchange_latency_seconds",
        "recv_ts - exchange_ts per channel, corrected by the clock offset",
        labels=["channel"],
    )
    for channel, h in tap.latency.items():
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, n in zip((*map(str, LATENCY_BUCKETS_S), "+Inf"), h.buckets, strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        lat.add_metric([channel], buckets, h.sum)
    yield lat
    unobserved = CounterMetricFamily(
        "ingestd_latency_unobserved", "Records received before the first clock estimate (no latency)"
    )
    unobserved.add_metric([], tap.latency_unobserved)
    yield unobserved
    inv = CounterMetricFamily("ingestd_invalid_records", "Validation failures", labels=["symbol", "kind"])
    for (symbol, kind), n in tap.invalid.items():
        inv.add_metric([symbol, kind], n)
    yield inv
    episodes = CounterMetricFamily(
        "ingestd_invalid_episodes", "Episodes of invalid records (one warning each)"
    )
    episodes.add_metric([], tap.episodes)
    yield episodes


def render(
    stats: Callable[[], dict[str, Any]],
    tap: MetricsTap | None,
    ready: Callable[[], tuple[bool, dict[str, Any]]] | None = None,
    alive: Callable[[], tuple[bool, dict[str, Any]]] | None = None,
) -> bytes:
    """The Prometheus text exposition of everything ``stats()``, ``tap``, ``ready`` and ``alive`` know."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DaemonCollector(stats, tap, ready, alive))
    return generate_latest(registry)
