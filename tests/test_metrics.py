"""/metrics: Prometheus text that parses with prometheus_client's parser, every family the issue
lists, and values that match the capture, the stored Parquet files and each component's stats().

One daemon run replays the real BTCUSDT capture (21,313 trades, 66,089 bookTickers, 6,551 depth
diffs) with a forced reconnect, a 429 at discovery, and a hook that fails and times
out on purpose. The validation counters and the latency correction are also tested on crafted
records without an event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ingestd.app import Daemon
from ingestd.observe.metrics import LATENCY_BUCKETS_S, MetricsTap, render
from ingestd.records import BookTicker, Record, Trade
from ingestd.sim import SimVenue
from tests.e2e import capture_frames, settings_for, stored_counts, wait_for
from tests.ops import consumers_idle, free_port, parse_metrics, running, scrape, value

VENUE, SYMBOL = "binance-usdm", "BTC-USDT-PERP"

FAMILIES = (
    # records per venue/channel/symbol, stream age, per-connection bytes and reconnect reasons
    "ingestd_records", "ingestd_stream_frames", "ingestd_stream_age_seconds", "ingestd_connection_bytes",
    "ingestd_connection_state", "ingestd_reconnects", "ingestd_stream_parse_errors",
    "ingestd_stream_duplicates", "ingestd_stream_id_resets",
    # queues per consumer
    "ingestd_queue_depth", "ingestd_queue_high_water", "ingestd_queue_dropped", "ingestd_queue_capacity",
    # hooks
    "ingestd_hook_calls", "ingestd_hook_errors", "ingestd_hook_timeouts", "ingestd_hook_latency_seconds",
    # REST
    "ingestd_rest_requests", "ingestd_rest_used_weight", "ingestd_rest_429", "ingestd_rest_418",
    "ingestd_rest_errors", "ingestd_snapshots",
    # books
    "ingestd_book_synced", "ingestd_book_syncs", "ingestd_book_resyncs", "ingestd_book_audit_checks",
    "ingestd_book_audit_mismatches", "ingestd_book_gaps",
    # Parquet
    "ingestd_parquet_files", "ingestd_parquet_rows", "ingestd_parquet_bytes",
    # latency, clock, validation
    "ingestd_exchange_latency_seconds", "ingestd_clock_offset_seconds", "ingestd_invalid_records",
    "ingestd_uptime_seconds",
)  # fmt: skip


class _Hook:
    """Counts trades; every 1,000th call raises, the 5,000th outlives the 50 ms hook timeout."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, record: Record) -> None:
        self.calls += 1
        if self.calls == 5_000:
            await asyncio.sleep(0.2)
        elif self.calls % 1_000 == 0:
            raise RuntimeError(f"hook failure {self.calls}")


def _disk(data: Path) -> dict[str, tuple[int, int, int]]:
    """Per channel: completed Parquet files, their rows and bytes, read from disk."""
    out: dict[str, tuple[int, int, int]] = {}
    for f in data.rglob("*.parquet"):
        channel = next(p.split("=", 1)[1] for p in f.parts if p.startswith("channel="))
        files, rows, size = out.get(channel, (0, 0, 0))
        out[channel] = (files + 1, rows + pq.read_metadata(f).num_rows, size + f.stat().st_size)
    return out


@pytest.mark.asyncio
async def test_metrics_match_the_capture_storage_and_stats(bundled_capture: Path, tmp_path: Path) -> None:
    frames = capture_frames(bundled_capture)
    expected = {"trade": len(frames["trade"]), "book_ticker": len(frames["bookTicker"]),
                "depth_diff": len(frames["depth"])}  # fmt: skip
    port = free_port()
    data = tmp_path / "data"
    hook = _Hook()
    # REST depth answers the book at each /public connection's first diff: the book bridges on
    # it and applies every later diff of the connection, however far /market (trades) ran ahead
    # at speed 0. "now" would answer from /market's position and leave almost nothing to apply.
    async with SimVenue([bundled_capture], speed=0, resume="continue", snapshot_at="subscribed") as sim:
        # The /public socket (72,640 book frames) is closed once, after its 40,000th frame.
        sim.faults.close(
            1001, after_frames=40_000, stream="btcusdt@bookTicker", reason="going away", sticky=True
        )
        sim.faults.rest_error("/fapi/v1/exchangeInfo", 429, count=1, retry_after=1)  # discovery waits 1 s
        settings = settings_for(
            sim.rest_url,
            sim.ws_url,
            data,
            symbols="BTCUSDT",
            channels="trade,book_ticker,depth_diff",
            storage={"rotate_rows": 5_000},
            hooks={"timeout_s": 0.05, "policy": "block"},
            streams={"backoff_initial_s": 0.05, "backoff_max_s": 0.2},
            health={"port": port},
        )
        daemon = Daemon(settings)
        daemon.add_hook(hook, channels=["trade"], name="counter")
        tap = daemon.metrics

        def replayed() -> bool:
            seen = {ch: tap.records.get((VENUE, ch, SYMBOL), 0) for ch in expected}
            books = daemon.books.stats()["symbols"] if daemon.books is not None else {}
            return (
                seen == expected
                and books.get("BTCUSDT", {}).get("state") == "synced"
                and hook.calls == expected["trade"]
                and daemon.clock is not None
                and daemon.clock.offset_ms is not None
            )

        async with running(daemon) as task:
            await wait_for(replayed, 60)
            await wait_for(lambda: consumers_idle(daemon), 30)
            parquet = daemon.bus.stats()["consumers"]["parquet"]
            fams = await scrape(f"http://127.0.0.1:{port}")
            stats = daemon.stats()
            disk = _disk(data)
        assert task.result() == 0

    missing = [f for f in FAMILIES if f not in fams]
    assert not missing, missing

    # Records per venue/channel/symbol: exactly the capture, and exactly what was stored.
    for channel, n in expected.items():
        assert value(fams, "ingestd_records_total", venue=VENUE, channel=channel, symbol=SYMBOL) == n
    recorded = Counter({s.labels["channel"]: int(s.value) for s in fams["ingestd_records"]})
    assert recorded == stored_counts(data)  # snapshots, gap log and clock samples too
    assert recorded["depth_snapshot"] == stats["snapshots"]["emitted"] >= 1
    assert recorded["clock"] == stats["clock"]["measurements"] == 1

    # Reconnects with their reason, per connection, as the producer counted them.
    reasons = {(s.labels["connection"], s.labels["reason"]): s.value for s in fams["ingestd_reconnects"]}
    want = {
        (name, reason): n
        for name, c in stats["streams"]["connections"].items()
        for reason, n in c["reconnect_reasons"].items()
    }
    assert reasons == want
    assert sum(reasons.values()) == 1
    ((public, _),) = reasons
    assert public.endswith("public#0")
    for name, c in stats["streams"]["connections"].items():
        assert value(fams, "ingestd_connection_bytes_total", connection=name) == c["bytes"] > 0
        assert value(fams, "ingestd_connection_state", connection=name, state=c["state"]) == 1

    # Stream age and frames per stream.
    for name, st in stats["streams"]["streams"].items():
        assert 0 <= value(fams, "ingestd_stream_age_seconds", stream=name) < 30
        assert value(fams, "ingestd_stream_frames_total", stream=name) == st["frames"]
    assert sum(s.value for s in fams["ingestd_stream_frames"]) >= sum(expected.values())

    # Queues: depth, high-water mark and drops per consumer.
    consumers = stats["bus"]["consumers"]
    assert set(consumers) == {"parquet", "metrics", "hook:counter#0"}
    for name, c in consumers.items():
        assert value(fams, "ingestd_queue_depth", consumer=name) == 0
        assert value(fams, "ingestd_queue_high_water", consumer=name) == c["high_water"] > 0
        assert value(fams, "ingestd_queue_dropped_total", consumer=name) == c["dropped"] == 0
        assert value(fams, "ingestd_queue_capacity", consumer=name) == c["maxsize"]

    # Hooks: every trade called once; 21 failures and one timeout, as the hook itself knows.
    assert value(fams, "ingestd_hook_calls_total", hook="hook:counter#0") == expected["trade"]
    assert value(fams, "ingestd_hook_errors_total", hook="hook:counter#0") == expected["trade"] // 1_000 - 1
    assert value(fams, "ingestd_hook_timeouts_total", hook="hook:counter#0") == 1
    # The latency quantiles are the hook's own measure (how long calls take depends on the machine).
    hook_stats = consumers["hook:counter#0"]
    for q, key in (("0.5", "latency_p50_ms"), ("0.99", "latency_p99_ms"), ("1", "latency_max_ms")):
        quantile = value(fams, "ingestd_hook_latency_seconds", hook="hook:counter#0", quantile=q)
        assert quantile == pytest.approx(hook_stats[key] / 1e3)

    # REST: requests, the one 429, no 418, the weight the venue reported.
    rest = stats["rest"]
    host = rest["host"]
    assert value(fams, "ingestd_rest_requests_total", host=host) == rest["requests"] >= 8
    assert value(fams, "ingestd_rest_429_total", host=host) == 1
    assert value(fams, "ingestd_rest_418_total", host=host) == 0
    assert value(fams, "ingestd_rest_errors_total", host=host, kind="429") == 1
    assert value(fams, "ingestd_rest_used_weight", host=host) == rest["used_weight"] > 0

    # Books: the BookManager's own counters.
    book = stats["books"]["symbols"]["BTCUSDT"]
    assert value(fams, "ingestd_book_synced", symbol=SYMBOL) == 1
    assert value(fams, "ingestd_book_syncs_total", symbol=SYMBOL) == book["syncs"] >= 1
    assert value(fams, "ingestd_book_resyncs_total", symbol=SYMBOL) == book["resyncs"]
    # Both /public connections sync on their first diff, so the book applies (nearly) every diff
    # of the capture and checks the bookTickers that share a diff's id (629 pairs in the capture).
    assert value(fams, "ingestd_book_audit_checks_total", symbol=SYMBOL) == book["audit_checks"] >= 100
    assert value(fams, "ingestd_book_audit_mismatches_total", symbol=SYMBOL) == book["audit_mismatches"] == 0
    assert value(fams, "ingestd_book_applied_diffs_total", symbol=SYMBOL) == book["applied"]
    assert book["applied"] + book["already_in_snapshot"] == expected["depth_diff"]
    assert book["applied"] >= expected["depth_diff"] - 100
    gaps = {s.labels["kind"]: s.value for s in fams["ingestd_book_gaps"]}
    assert gaps == book["gaps"]
    assert recorded["gap"] == sum(gaps.values()) + book["resyncs"]  # gap starts + one "resync" end each

    # Parquet: files, rows and bytes per channel, as written and as found on disk.
    per_channel = parquet["per_channel"]
    assert set(disk) == set(per_channel)
    for channel, (files, rows, size) in disk.items():
        assert (
            value(fams, "ingestd_parquet_files_total", channel=channel)
            == per_channel[channel]["files"]
            == files
        )
        assert (
            value(fams, "ingestd_parquet_rows_total", channel=channel) == per_channel[channel]["rows"] == rows
        )
        assert (
            value(fams, "ingestd_parquet_bytes_total", channel=channel)
            == per_channel[channel]["bytes"]
            == size
        )
    assert disk["book_ticker"][0] >= 13  # 66,089 rows in files of 5,000

    # Latency: every market record with an event time was observed once (or counted as arriving
    # before the first clock estimate). The capture's event times are from 2024, so all of them
    # land past the last bound: the histogram keeps the sign and size of recv - exchange.
    counts = {
        s.labels["channel"]: s.value
        for s in fams["ingestd_exchange_latency_seconds"]
        if s.name.endswith("_count")
    }
    unobserved = value(fams, "ingestd_latency_unobserved_total")
    market = expected["trade"] + expected["book_ticker"] + expected["depth_diff"] + recorded["depth_snapshot"]
    assert sum(counts.values()) + unobserved == market
    for channel, observed in counts.items():
        last = value(
            fams, "ingestd_exchange_latency_seconds_bucket", channel=channel, le=str(LATENCY_BUCKETS_S[-1])
        )
        assert last == 0
        assert value(fams, "ingestd_exchange_latency_seconds_bucket", channel=channel, le="+Inf") == observed
    assert set(counts) <= {"trade", "book_ticker", "depth_diff", "depth_snapshot"}

    # Clock and validation: a local sim shares our clock, so the offset is zero within the
    # midpoint method's bound (half the round trip); real data has no invalid record.
    offset_s = value(fams, "ingestd_clock_offset_seconds")
    assert abs(offset_s) * 1e3 <= stats["clock"]["rtt_ms"] / 2 + 1.0
    assert fams["ingestd_invalid_records"] == []


def _ticker(
    bid: float, ask: float, *, bid_qty: float = 1.0, exchange_ts: int | None = 2_000, u: int = 1
) -> BookTicker:
    return BookTicker(
        venue=VENUE, symbol=SYMBOL, native="BTCUSDT", exchange_ts=exchange_ts, recv_ts=3_000,
        update_id=u, bid_price=bid, bid_qty=bid_qty, ask_price=ask, ask_qty=2.0,
    )  # fmt: skip


@pytest.mark.asyncio
async def test_validation_counts_per_symbol_and_warns_once_per_episode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tap = MetricsTap()
    caplog.set_level(logging.INFO, logger="ingestd.observe")
    good = _ticker(100.0, 100.1)
    batch: list[BookTicker] = [
        good,
        _ticker(100.2, 100.1),  # crossed: episode 1 starts
        _ticker(100.3, 100.1),  # crossed again: counted, not logged
        good,  # episode 1 ends
        _ticker(100.2, 100.1),  # crossed: episode 2
        _ticker(100.1, 100.1),  # locked (crossed ends)
        _ticker(0.0, 100.1, bid_qty=0.0),  # non-positive price and size
        _ticker(float("nan"), 100.1),  # non-finite
        _ticker(100.0, 100.1, exchange_ts=None),  # futures always send E
        good,
    ]
    await tap.consume(list(batch))
    assert tap.invalid == {
        (SYMBOL, "crossed_spread"): 3,
        (SYMBOL, "locked_spread"): 1,
        (SYMBOL, "non_positive_price"): 1,
        (SYMBOL, "non_positive_qty"): 1,
        (SYMBOL, "non_finite_price"): 1,
        (SYMBOL, "missing_event_time"): 1,
    }
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"{SYMBOL} book_ticker: crossed spread (counting until a valid record)",
        f"{SYMBOL} book_ticker: crossed spread (counting until a valid record)",
        f"{SYMBOL} book_ticker: locked spread (counting until a valid record)",
        f"{SYMBOL} book_ticker: non positive price (counting until a valid record)",
        f"{SYMBOL} book_ticker: non positive qty (counting until a valid record)",
        f"{SYMBOL} book_ticker: non finite price (counting until a valid record)",
        f"{SYMBOL} book_ticker: missing event time (counting until a valid record)",
    ]
    ends = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert ends[0] == f"{SYMBOL} book_ticker: valid again after 2 record(s) with crossed spread"
    assert ends[-1] == f"{SYMBOL} book_ticker: valid again after 1 record(s) with missing event time"
    assert tap.episodes == 7
    assert tap.stats()["invalid_open"] == []
    fams = parse_metrics(render(dict, tap).decode())
    assert value(fams, "ingestd_invalid_records_total", symbol=SYMBOL, kind="crossed_spread") == 3
    assert value(fams, "ingestd_invalid_episodes_total") == 7


@pytest.mark.asyncio
async def test_latency_is_corrected_by_the_clock_offset() -> None:
    offset: dict[str, int | None] = {"ns": None}
    tap = MetricsTap(lambda: offset["ns"])

    def trade(i: int, exchange_ms: int, recv_ns: int) -> Trade:
        return Trade(
            venue=VENUE, symbol=SYMBOL, native="BTCUSDT", exchange_ts=exchange_ms * 1_000_000,
            recv_ts=recv_ns, trade_id=i, price=60_000.0, qty=0.001, is_buyer_maker=False,
        )  # fmt: skip

    recv = 1_723_161_256_322 * 1_000_000
    await tap.consume([trade(1, 1_723_161_256_000, recv)])  # before the first clock estimate
    assert tap.latency == {}
    assert tap.latency_unobserved == 1
    # The venue is 300 ms behind us: its E reads 300 ms early, so raw recv - E is 300 ms too much.
    offset["ns"] = -300_000_000
    await tap.consume(
        [trade(2, 1_723_161_256_322 - 300 - 7, recv), trade(3, 1_723_161_256_322 - 300 - 40, recv)]
    )
    h = tap.latency["trade"]
    assert h.count == 2
    assert h.sum == pytest.approx(0.047)
    assert h.buckets[LATENCY_BUCKETS_S.index(0.01)] == 1  # 7 ms
    assert h.buckets[LATENCY_BUCKETS_S.index(0.05)] == 1  # 40 ms
    fams = parse_metrics(render(dict, tap, ready=lambda: (True, {})).decode())
    assert value(fams, "ingestd_exchange_latency_seconds_bucket", channel="trade", le="0.005") == 0
    assert value(fams, "ingestd_exchange_latency_seconds_bucket", channel="trade", le="0.01") == 1
    assert value(fams, "ingestd_exchange_latency_seconds_bucket", channel="trade", le="0.05") == 2
    assert value(fams, "ingestd_exchange_latency_seconds_count", channel="trade") == 2
    assert value(fams, "ingestd_latency_unobserved_total") == 1
    assert value(fams, "ingestd_ready") == 1
