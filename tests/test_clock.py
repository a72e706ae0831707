"""ClockSync against a local venue whose clock is deliberately offset from ours."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from ingestd.errors import BannedError, ParseError, RestError
from ingestd.producers.clock import ClockEstimate, ClockSync, parse_server_time
from ingestd.producers.rest import RestClient
from ingestd.venues.binance.endpoints import USDM
from tests.ops import wait_for
from tests.test_rest import FakeBinance, Reply, big_budget, nautilus

OFFSET_MS = 2_500


@pytest_asyncio.fixture
async def venue() -> AsyncIterator[FakeBinance]:
    fake = FakeBinance(USDM, time_offset_ms=OFFSET_MS)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest_asyncio.fixture
async def client(venue: FakeBinance) -> AsyncIterator[RestClient]:
    c = RestClient(venue.url, USDM, budget=big_budget(), max_retries=0)
    try:
        yield c
    finally:
        await c.close()


def test_parse_real_time_body() -> None:
    assert parse_server_time(nautilus("http_spot_market_time.json")) == 1633835466289
    with pytest.raises(ParseError):
        parse_server_time(b'{"serverTime":"1633835466289"}')
    with pytest.raises(ParseError):
        parse_server_time(b"<html>")
    with pytest.raises(ParseError):
        parse_server_time(b'{"code":-1000,"msg":"x"}')


@pytest.mark.asyncio
async def test_offset_from_the_fastest_round_trip(venue: FakeBinance, client: RestClient) -> None:
    # The first two samples are slow (queued 0.3 s before the server stamps its time).
    venue.script.extend([Reply(delay_s=0.3), Reply(delay_s=0.3)])
    clock = ClockSync(client, USDM, samples=5, sample_gap_s=0.0)
    assert clock.stats()["offset_ms"] is None
    est = await clock.measure()
    assert isinstance(est, ClockEstimate)
    assert est.samples == 5
    assert est.rtt_ms < 100  # a fast sample won, not a 300 ms one
    # Exact to within half the round trip, plus the server's ms truncation.
    assert abs(est.offset_ms - OFFSET_MS) <= est.rtt_ms / 2 + 1.0
    assert clock.offset_ms == est.offset_ms
    assert clock.rtt_ms == est.rtt_ms
    assert clock.last_estimate is est
    assert abs(est.server_time_ms * 1_000_000 - est.local_mid_ns - OFFSET_MS * 1_000_000) < 50_000_000
    assert len(venue.requests_to(USDM.time_path)) == 5
    assert clock.stats()["measurements"] == 1


@pytest.mark.asyncio
async def test_a_slow_server_stamp_bounds_the_error(venue: FakeBinance, client: RestClient) -> None:
    # One sample only, stamped after 0.2 s: the midpoint estimate is off by ~0.1 s, and the
    # reported round trip says so.
    venue.script.append(Reply(delay_s=0.2))
    est = await ClockSync(client, USDM, samples=1).measure()
    assert est.rtt_ms >= 200
    assert abs(est.offset_ms - OFFSET_MS) <= est.rtt_ms / 2 + 1.0


@pytest.mark.asyncio
async def test_failures_and_periodic_refresh(
    venue: FakeBinance, client: RestClient, caplog: pytest.LogCaptureFixture
) -> None:
    venue.script.extend(Reply(status=500, body=b"") for _ in range(4))
    caplog.set_level(logging.INFO, logger="ingestd.clock")
    clock = ClockSync(client, USDM, samples=2, interval_s=0.05, sample_gap_s=0.0)
    clock.start()
    clock.start()  # idempotent
    try:
        await wait_for(lambda: clock.stats()["measurements"] >= 3, what="three measurements")
    finally:
        await clock.close()
        await clock.close()
    stats = clock.stats()
    assert stats["failures"] == 2  # two rounds of two failed samples
    assert "HTTP 500" in str(stats["last_error"])
    assert abs(stats["offset_ms"] - OFFSET_MS) <= stats["rtt_ms"] / 2 + 1.0
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("clock estimate failing" in m for m in msgs) == 1
    assert sum("recovered after 2 failure" in m for m in msgs) == 1
    assert clock._task is None


@pytest.mark.asyncio
async def test_all_samples_failing_raises(venue: FakeBinance, client: RestClient) -> None:
    venue.script.extend([Reply(body=b"not json"), Reply(status=503, body=b"")])
    with pytest.raises(RestError, match="HTTP 503"):
        await ClockSync(client, USDM, samples=2, sample_gap_s=0.0).measure()


@pytest.mark.asyncio
async def test_ban_stops_measuring(venue: FakeBinance, client: RestClient) -> None:
    venue.script.append(Reply(status=418, headers={"Retry-After": "60"}, body=b""))
    clock = ClockSync(client, USDM, samples=3)
    with pytest.raises(BannedError):
        await clock.measure()
    assert len(venue.seen) == 1
    assert clock.last_estimate is None
    assert client.banned_until > time.time() + 55
    # The refresh task waits for the ban to end instead of polling a banned host.
    clock.interval_s = 0.01
    clock.start()
    await wait_for(lambda: clock.stats()["failures"] == 1, what="the refresh task's first (local) refusal")
    # An absence check: polling every 10 ms would show within this window (on a loaded machine
    # fewer rounds fit in it, which can only let a regression pass, never fail this test).
    await asyncio.sleep(0.2)
    await clock.close()
    assert len(venue.seen) == 1
    assert clock.stats()["failures"] == 1
