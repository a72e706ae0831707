"""Prometheus metric families built from each component's ``stats()`` snapshot.

Pure functions: a stats mapping in, metric families out. Counter names get ``_total`` from
``prometheus_client``'s encoder. A family is yielded even when it has no samples, so dashboards
see every name from the first scrape.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


def _counter(name: str, doc: str, *labels: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def _gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def streams(st: Mapping[str, Any]) -> Iterator[Metric]:
    """Per stream: frames, records, parse errors, duplicates, id restarts, age; per connection:
    state, reconnects by reason, bytes, frames."""
    frames = _counter("ingestd_stream_frames", "Frames received per stream", "stream")
    records = _counter("ingestd_stream_records", "Records parsed per stream", "stream")
    errors = _counter("ingestd_stream_parse_errors", "Malformed frames per stream", "stream")
    dups = _counter("ingestd_stream_duplicates", "Duplicates dropped by id per stream", "stream")
    resets = _counter("ingestd_stream_id_resets", "Times a stream's ids restarted lower", "stream")
    age = _gauge("ingestd_stream_age_seconds", "Seconds since the stream's last frame", "stream")
    for name, v in (st.get("streams") or {}).items():
        frames.add_metric([name], v.get("frames", 0))
        records.add_metric([name], v.get("records", 0))
        errors.add_metric([name], v.get("parse_errors", 0))
        dups.add_metric([name], v.get("duplicates", 0))
        resets.add_metric([name], v.get("id_resets", 0))
        if v.get("last_frame_age_s") is not None:
            age.add_metric([name], float(v["last_frame_age_s"]))
    state = _gauge("ingestd_connection_state", "1 for the connection's current state", "connection", "state")
    rec = _counter("ingestd_reconnects", "Reconnects per connection and reason", "connection", "reason")
    cbytes = _counter("ingestd_connection_bytes", "Bytes received per connection", "connection")
    cframes = _counter("ingestd_connection_frames", "Frames received per connection", "connection")
    failures = _counter("ingestd_connect_failures", "Failed connection attempts", "connection")
    silent = _gauge(
        "ingestd_stream_silent", "1 for a stream that sent no first frame within its deadline", "stream"
    )
    for name, c in (st.get("connections") or {}).items():
        for stream in c.get("silent_streams") or ():
            silent.add_metric([str(stream)], 1.0)
        state.add_metric([name, str(c.get("state", "unknown"))], 1.0)
        for reason, n in (c.get("reconnect_reasons") or {}).items():
            rec.add_metric([name, str(reason)], n)
        cbytes.add_metric([name], c.get("bytes", 0))
        cframes.add_metric([name], c.get("frames", 0))
        failures.add_metric([name], c.get("connect_failures", 0))
    yield from (frames, records, errors, dups, resets, age, silent, state, rec, cbytes, cframes, failures)


def bus(bus_stats: Mapping[str, Any]) -> Iterator[Metric]:
    """Per consumer queue: depth, capacity, high-water mark, drops, blocked time, errors; hook
    calls/errors/timeouts/latency; Parquet files/rows/bytes per channel and write failures."""
    published = _counter("ingestd_bus_published", "Records offered to the consumers")
    published.add_metric([], bus_stats.get("published", 0))
    depth = _gauge("ingestd_queue_depth", "Records queued per consumer", "consumer")
    size = _gauge("ingestd_queue_capacity", "Queue bound in records", "consumer")
    high = _gauge("ingestd_queue_high_water", "Most records ever queued", "consumer")
    drops = _counter("ingestd_queue_dropped", "Records dropped by the overflow policy", "consumer")
    blocked = _counter("ingestd_queue_blocked_seconds", "Time producers waited on a full queue", "consumer")
    cerr = _counter("ingestd_consumer_errors", "Batches a consumer failed on", "consumer")
    hook_calls = _counter("ingestd_hook_calls", "Hook calls", "hook")
    hook_err = _counter("ingestd_hook_errors", "Hook calls that raised", "hook")
    hook_to = _counter("ingestd_hook_timeouts", "Hook calls over their time limit", "hook")
    hook_lat = _gauge(
        "ingestd_hook_latency_seconds", "Hook call latency over a recent window", "hook", "quantile"
    )
    pq_files = _counter("ingestd_parquet_files", "Parquet files written", "channel")
    pq_rows = _counter("ingestd_parquet_rows", "Parquet rows written", "channel")
    pq_bytes = _counter("ingestd_parquet_bytes", "Parquet bytes written", "channel")
    pq_err = _counter("ingestd_parquet_write_errors", "Failed Parquet writes")
    pq_drop = _counter("ingestd_parquet_dropped_rows", "Rows dropped after the disk failed too long")
    pq_pending = _gauge("ingestd_parquet_pending_rows", "Rows buffered, not yet in a file")
    pq_wdied = _counter("ingestd_parquet_writer_process_restarts", "Parquet writer processes that died")
    for name, c in (bus_stats.get("consumers") or {}).items():
        depth.add_metric([name], c.get("depth", 0))
        size.add_metric([name], c.get("maxsize", 0))
        high.add_metric([name], c.get("high_water", 0))
        drops.add_metric([name], c.get("dropped", 0))
        blocked.add_metric([name], float(c.get("blocked_seconds", 0.0)))
        cerr.add_metric([name], c.get("errors", 0))
        if name.startswith("hook:"):
            hook_calls.add_metric([name], c.get("calls", 0))
            hook_err.add_metric([name], c.get("call_errors", 0))
            hook_to.add_metric([name], c.get("timeouts", 0))
            for q, key in (("0.5", "latency_p50_ms"), ("0.99", "latency_p99_ms"), ("1", "latency_max_ms")):
                hook_lat.add_metric([name, q], float(c.get(key, 0.0)) / 1e3)
        if "per_channel" in c:  # the Parquet writer
            for ch, v in c["per_channel"].items():
                pq_files.add_metric([ch], v.get("files", 0))
                pq_rows.add_metric([ch], v.get("rows", 0))
                pq_bytes.add_metric([ch], v.get("bytes", 0))
            pq_err.add_metric([], c.get("write_errors", 0))
            pq_drop.add_metric([], c.get("dropped_rows", 0))
            pq_pending.add_metric([], c.get("pending_rows", 0))
            pq_wdied.add_metric([], c.get("writer_process_restarts", 0))
    yield from (published, depth, size, high, drops, blocked, cerr, hook_calls, hook_err, hook_to, hook_lat)
    yield from (pq_files, pq_rows, pq_bytes, pq_err, pq_drop, pq_pending, pq_wdied)


def rest(rest_stats: Mapping[str, Any], snaps: Mapping[str, Any]) -> Iterator[Metric]:
    """REST requests, retries, errors by kind, 429/418 answers, used weight, ban; snapshots."""
    req = _counter("ingestd_rest_requests", "REST requests sent", "host")
    retries = _counter("ingestd_rest_retries", "REST requests retried", "host")
    errors = _counter("ingestd_rest_errors", "REST failures by kind", "host", "kind")
    r429 = _counter("ingestd_rest_429", "HTTP 429 (rate limited) answers", "host")
    r418 = _counter("ingestd_rest_418", "HTTP 418 (IP banned) answers", "host")
    weight = _gauge("ingestd_rest_used_weight", "Last X-MBX-USED-WEIGHT-1M the venue reported", "host")
    banned = _gauge("ingestd_rest_banned_until", "Epoch seconds a 418 ban ends (0: none)", "host")
    waited = _counter("ingestd_rest_budget_waited_seconds", "Time requests waited for weight budget", "host")
    if rest_stats:
        host = str(rest_stats.get("host", ""))
        req.add_metric([host], rest_stats.get("requests", 0))
        retries.add_metric([host], rest_stats.get("retries", 0))
        for kind, n in (rest_stats.get("errors") or {}).items():
            errors.add_metric([host, str(kind)], n)
        r429.add_metric([host], rest_stats.get("status_429", 0))
        r418.add_metric([host], rest_stats.get("status_418", 0))
        weight.add_metric([host], rest_stats.get("used_weight") or 0)
        banned.add_metric([host], rest_stats.get("banned_until") or 0)
        waited.add_metric([host], float(rest_stats.get("waited_s") or 0.0))
    snap = _counter("ingestd_snapshots", "Depth snapshots by outcome", "outcome")
    for k in ("requested", "coalesced", "fetched", "failed", "emitted"):
        if k in snaps:
            snap.add_metric([k], snaps[k])
    pending = _gauge("ingestd_snapshots_pending", "Depth snapshots waiting to be fetched")
    if snaps:
        pending.add_metric([], snaps.get("pending", 0))
    yield from (req, retries, errors, r429, r418, weight, banned, waited, snap, pending)


def books(book_stats: Mapping[str, Any]) -> Iterator[Metric]:
    """Per symbol (normalized): synced, syncs, resyncs, applied diffs, buffered diffs, audit
    checks and mismatches, gaps by kind (keys of :meth:`BookManager.stats`)."""
    synced = _gauge("ingestd_book_synced", "1 when the symbol's local book is exact", "symbol")
    syncs = _counter("ingestd_book_syncs", "Times the book became exact", "symbol")
    resyncs = _counter("ingestd_book_resyncs", "Times the book had to be rebuilt", "symbol")
    applied = _counter("ingestd_book_applied_diffs", "Depth diffs applied to an exact book", "symbol")
    buffered = _gauge("ingestd_book_buffered_diffs", "Diffs held while waiting for a snapshot", "symbol")
    checks = _counter("ingestd_book_audit_checks", "bookTickers compared with the book", "symbol")
    mismatches = _counter(
        "ingestd_book_audit_mismatches", "bookTickers that disagreed with the book", "symbol"
    )
    gaps = _counter("ingestd_book_gaps", "Gap log entries by kind", "symbol", "kind")
    for native, b in (book_stats.get("symbols") or {}).items():
        sym = str(b.get("symbol") or native)
        synced.add_metric([sym], 1.0 if b.get("state") == "synced" else 0.0)
        syncs.add_metric([sym], b.get("syncs", 0))
        resyncs.add_metric([sym], b.get("resyncs", 0))
        applied.add_metric([sym], b.get("applied", 0))
        buffered.add_metric([sym], b.get("buffered", 0))
        checks.add_metric([sym], b.get("audit_checks", 0))
        mismatches.add_metric([sym], b.get("audit_mismatches", 0))
        for kind, n in (b.get("gaps") or {}).items():
            gaps.add_metric([sym, str(kind)], n)
    yield from (synced, syncs, resyncs, applied, buffered, checks, mismatches, gaps)


def clock(clock_stats: Mapping[str, Any]) -> Iterator[Metric]:
    """The latest server-clock estimate and how many were made or failed."""
    offset = _gauge("ingestd_clock_offset_seconds", "Venue clock minus local clock (positive: venue ahead)")
    rtt = _gauge("ingestd_clock_rtt_seconds", "Round trip of the sample the offset came from")
    measured = _counter("ingestd_clock_measurements", "Clock estimates made")
    failures = _counter("ingestd_clock_failures", "Clock estimates that failed")
    if clock_stats:
        if clock_stats.get("offset_ms") is not None:
            offset.add_metric([], float(clock_stats["offset_ms"]) / 1e3)
        if clock_stats.get("rtt_ms") is not None:
            rtt.add_metric([], float(clock_stats["rtt_ms"]) / 1e3)
        measured.add_metric([], clock_stats.get("measurements", 0))
        failures.add_metric([], clock_stats.get("failures", 0))
    yield from (offset, rtt, measured, failures)


def backfill(bf: Mapping[str, Any]) -> Iterator[Metric]:
    """Trade holes found, records filled from REST, ids given up, holes waiting."""
    holes = _counter("ingestd_backfill_holes", "Trade holes found (stream id jumps, restarts, listings)")
    rows = _counter("ingestd_backfill_rows", "Records fetched from REST into trade holes")
    unfilled = _counter("ingestd_backfill_unfilled_ids", "Trade ids given up (too old, no key, refused)")
    failures = _counter("ingestd_backfill_failures", "Backfill requests that failed (retried)")
    pending = _gauge("ingestd_backfill_pending", "Trade holes waiting to be fetched")
    if bf:
        holes.add_metric([], bf.get("holes", 0))
        rows.add_metric([], bf.get("rows", 0))
        unfilled.add_metric([], bf.get("unfilled_ids", 0))
        failures.add_metric([], bf.get("failures", 0))
        pending.add_metric([], bf.get("pending", 0) + bf.get("active", 0))
    yield from (holes, rows, unfilled, failures, pending)


def listings(ls: Mapping[str, Any], contracts: int) -> Iterator[Metric]:
    """The contracts ingested now; with ``--follow-listings``, its refreshes and the changes."""
    current = _gauge("ingestd_contracts", "Contracts the run ingests now")
    current.add_metric([], contracts)
    yield current
    if not ls:
        return
    refreshes = _counter("ingestd_listing_refreshes", "exchangeInfo reads applied (--follow-listings)")
    failures = _counter("ingestd_listing_refresh_failures", "exchangeInfo reads that failed (retried)")
    changes = _counter("ingestd_listing_changes", "Contracts listed, delisted or redefined", "kind")
    refreshes.add_metric([], ls.get("refreshes", 0))
    failures.add_metric([], ls.get("failures", 0))
    for kind in ("listed", "delisted", "changed"):
        changes.add_metric([kind], ls.get(kind, 0))
    yield from (refreshes, failures, changes)
