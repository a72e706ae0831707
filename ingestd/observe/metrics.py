"""Prometheus metrics, read from each component's ``stats()`` and from a tap on the bus.

:class:`MetricsTap` is a bus consumer (``drop_oldest``: metrics never slow data) that counts
records per venue/channel/symbol, observes the exchange→receive latency per channel (corrected by
the measured clock offset) and runs the validation counters (non-positive prices, crossed or
inverted book tickers). :func:`render` turns a daemon's stats plus the tap into the Prometheus
text format with ``prometheus_client``'s own encoder.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ingestd.records import AnyRecord, BookTicker, Record

log = logging.getLogger("ingestd.observe")

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_PRICE_FIELDS = ("price", "bid_price", "ask_price", "mark_price", "close", "last_price")


class _Histogram:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS_S, v)] += 1
        self.count += 1
        self.sum += v


class MetricsTap:
    """Counts what flows on the bus; never writes anything."""

    name = "metrics"
    channels: frozenset[str] | None = None

    def __init__(self, clock_offset_ns: Callable[[], int] = lambda: 0) -> None:
        self._offset = clock_offset_ns
        self.records: dict[tuple[str, str, str], int] = {}
        self.latency: dict[str, _Histogram] = {}
        self.invalid: dict[tuple[str, str], int] = {}
        self._warned: set[tuple[str, str]] = set()

    async def start(self) -> None:
        return None

    async def consume(self, batch: list[AnyRecord]) -> None:
        offset = self._offset()
        counts = self.records
        for r in batch:
            if not isinstance(r, Record):
                continue
            key = (r.venue, r.channel, r.symbol)
            counts[key] = counts.get(key, 0) + 1
            if r.exchange_ts is not None:
                # recv - (exchange + offset): the server clock is `offset` ahead of ours.
                lat = (r.recv_ts - r.exchange_ts + offset) / 1e9
                h = self.latency.get(r.channel)
                if h is None:
                    h = self.latency[r.channel] = _Histogram()
                h.observe(max(lat, 0.0))
            self._validate(r)

    def _validate(self, r: Record) -> None:
        problem = None
        for f in _PRICE_FIELDS:
            v = getattr(r, f, None)
            if v is not None and v <= 0:
                problem = "non_positive_price"
                break
        if problem is None and isinstance(r, BookTicker):
            if r.bid_price > r.ask_price:
                problem = "crossed_spread"
            elif r.bid_price == r.ask_price:
                problem = "locked_spread"
        if problem is None:
            return
        key = (r.symbol, problem)
        self.invalid[key] = self.invalid.get(key, 0) + 1
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s: %s (first of its kind for this symbol)", r.symbol, problem.replace("_", " "))

    async def close(self) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return {
            "records": sum(self.records.values()),
            "invalid": {f"{s}:{k}": n for (s, k), n in self.invalid.items()},
        }


class _DaemonCollector(Collector):
    def __init__(self, stats: Callable[[], dict[str, Any]], tap: MetricsTap | None) -> None:
        self._stats = stats
        self._tap = tap

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield from _stream_metrics(s.get("streams") or {})
        yield from _bus_metrics(s.get("bus") or {})
        yield from _rest_metrics(s.get("rest") or {}, s.get("snapshots") or {})
        yield from _book_metrics(s.get("books") or {})
        clock = s.get("clock") or {}
        if clock.get("offset_ms") is not None:
            g = GaugeMetricFamily("ingestd_clock_offset_seconds", "Server clock minus local clock")
            g.add_metric([], clock["offset_ms"] / 1e3)
            yield g
        up = GaugeMetricFamily("ingestd_uptime_seconds", "Seconds since start")
        up.add_metric([], float(s.get("uptime_s", 0.0)))
        yield up
        if self._tap is not None:
            yield from _tap_metrics(self._tap)


def _stream_metrics(st: dict[str, Any]) -> Iterator[Metric]:
    frames = CounterMetricFamily("ingestd_stream_frames", "Frames received per stream", labels=["stream"])
    errors = CounterMetricFamily("ingestd_stream_parse_errors", "Malformed frames per stream", labels=["stream"])
    dups = CounterMetricFamily("ingestd_stream_duplicates", "Duplicates dropped by id", labels=["stream"])
    age = GaugeMetricFamily("ingestd_stream_age_seconds", "Seconds since the stream's last frame", labels=["stream"])
    for name, v in (st.get("streams") or {}).items():
        frames.add_metric([name], v.get("frames", 0))
        errors.add_metric([name], v.get("parse_errors", 0))
        dups.add_metric([name], v.get("duplicates", 0))
        if v.get("last_frame_age_s") is not None:
            age.add_metric([name], v["last_frame_age_s"])
    rec = CounterMetricFamily(
        "ingestd_reconnects", "Reconnects per connection and reason", labels=["connection", "reason"]
    )
    cbytes = CounterMetricFamily("ingestd_connection_bytes", "Bytes received", labels=["connection"])
    for name, c in (st.get("connections") or {}).items():
        for reason, n in (c.get("reconnect_reasons") or {}).items():
            rec.add_metric([name, str(reason)], n)
        cbytes.add_metric([name], c.get("bytes", 0))
    yield from (frames, errors, dups, age, rec, cbytes)


def _bus_metrics(bus: dict[str, Any]) -> Iterator[Metric]:
    depth = GaugeMetricFamily("ingestd_queue_depth", "Records queued per consumer", labels=["consumer"])
    high = GaugeMetricFamily("ingestd_queue_high_water", "Queue high-water mark", labels=["consumer"])
    drops = CounterMetricFamily("ingestd_queue_dropped", "Records dropped by overflow policy", labels=["consumer"])
    hook_calls = CounterMetricFamily("ingestd_hook_calls", "Hook calls", labels=["hook"])
    hook_err = CounterMetricFamily("ingestd_hook_errors", "Hook calls that raised", labels=["hook"])
    hook_to = CounterMetricFamily("ingestd_hook_timeouts", "Hook calls over their time limit", labels=["hook"])
    hook_lat = GaugeMetricFamily("ingestd_hook_latency_p99_seconds", "Hook call latency p99", labels=["hook"])
    pq_files = CounterMetricFamily("ingestd_parquet_files", "Parquet files written", labels=["channel"])
    pq_rows = CounterMetricFamily("ingestd_parquet_rows", "Parquet rows written", labels=["channel"])
    pq_bytes = CounterMetricFamily("ingestd_parquet_bytes", "Parquet bytes written", labels=["channel"])
    pq_err = CounterMetricFamily("ingestd_parquet_write_errors", "Failed Parquet writes")
    pq_drop = CounterMetricFamily("ingestd_parquet_dropped_rows", "Rows dropped after the disk failed too long")
    for name, c in (bus.get("consumers") or {}).items():
        depth.add_metric([name], c.get("depth", 0))
        high.add_metric([name], c.get("high_water", 0))
        drops.add_metric([name], c.get("dropped", 0))
        if name.startswith("hook:"):
            hook_calls.add_metric([name], c.get("calls", 0))
            hook_err.add_metric([name], c.get("errors", 0))
            hook_to.add_metric([name], c.get("timeouts", 0))
            hook_lat.add_metric([name], float(c.get("latency_p99_ms", 0.0)) / 1e3)
        if "per_channel" in c:
            for ch, v in c["per_channel"].items():
                pq_files.add_metric([ch], v.get("files", 0))
                pq_rows.add_metric([ch], v.get("rows", 0))
                pq_bytes.add_metric([ch], v.get("bytes", 0))
            pq_err.add_metric([], c.get("write_errors", 0))
            pq_drop.add_metric([], c.get("dropped_rows", 0))
    yield from (depth, high, drops, hook_calls, hook_err, hook_to, hook_lat, pq_files, pq_rows, pq_bytes)
    yield from (pq_err, pq_drop)


def _rest_metrics(rest: dict[str, Any], snaps: dict[str, Any]) -> Iterator[Metric]:
    req = CounterMetricFamily("ingestd_rest_requests", "REST requests", labels=["host"])
    status = CounterMetricFamily("ingestd_rest_errors", "REST errors by status", labels=["host", "status"])
    weight = GaugeMetricFamily("ingestd_rest_used_weight", "Last X-MBX-USED-WEIGHT-1M", labels=["host"])
    banned = GaugeMetricFamily("ingestd_rest_banned_until", "Epoch seconds a 418 ban ends (0 = none)", labels=["host"])
    host = str(rest.get("host", ""))
    if rest:
        req.add_metric([host], rest.get("requests", 0))
        for code, n in (rest.get("errors") or {}).items():
            status.add_metric([host, str(code)], n)
        weight.add_metric([host], rest.get("used_weight") or 0)
        banned.add_metric([host], rest.get("banned_until") or 0)
    snap = CounterMetricFamily("ingestd_snapshots", "Depth snapshots by outcome", labels=["outcome"])
    for k in ("requested", "fetched", "failed"):
        if k in snaps:
            snap.add_metric([k], snaps[k])
    yield from (req, status, weight, banned, snap)


def _book_metrics(books: dict[str, Any]) -> Iterator[Metric]:
    synced = GaugeMetricFamily("ingestd_book_synced", "1 when the symbol's book is synced", labels=["symbol"])
    events = CounterMetricFamily("ingestd_book_events", "Book syncs, resyncs and audit results", labels=["kind"])
    for sym, b in (books.get("symbols") or {}).items():
        synced.add_metric([sym], 1.0 if b.get("synced") or b.get("state") == "synced" else 0.0)
    for k in ("syncs", "resyncs", "audit_checks", "audit_mismatches"):
        if k in books:
            events.add_metric([k], books[k])
    yield from (synced, events)


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
    inv = CounterMetricFamily("ingestd_invalid_records", "Validation failures", labels=["symbol", "kind"])
    for (symbol, kind), n in tap.invalid.items():
        inv.add_metric([symbol, kind], n)
    yield inv


def render(stats: Callable[[], dict[str, Any]], tap: MetricsTap | None) -> bytes:
    """The Prometheus text exposition of everything ``stats()`` and ``tap`` know."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DaemonCollector(stats, tap))
    return generate_latest(registry)
