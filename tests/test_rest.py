"""RestClient and WeightBudget against a scripted local REST venue serving real recorded bodies.

The fake venue (:class:`FakeBinance`, also used by the discovery, snapshot and clock tests)
counts every request it receives, so a test can prove that a request was *not* sent (during a
ban), and stamps each one with the monotonic time so pacing and Retry-After are measured on
the server side.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web

from ingestd.errors import BannedError, ParseError, RateLimitedError, RestError
from ingestd.producers.budget import BANS_KEY, WeightBudget, load_ban, save_ban
from ingestd.producers.rest import RestClient, ban_end, retry_after, used_weight
from ingestd.venues.binance.endpoints import SPOT, USDM, VenueSpec
from tests.ops import completes_at_once
from tests.ops import wait_for as until
from tests.realdata import CF, DATA, HFT, need

CAPTURE_LINE = re.compile(r"^(\S+) -> ([\d.]+): (.*)$")


def cryptofeed_bodies(name: str) -> dict[str, bytes]:
    """``<url> -> <ts>: <body>`` lines of a cryptofeed capture → {url: body bytes}."""
    out: dict[str, bytes] = {}
    for line in (need(CF / "2021-10_head" / name)).read_text().splitlines():
        m = CAPTURE_LINE.match(line)
        if m:
            out[m.group(1)] = m.group(3).encode()
    return out


def hftbacktest_snapshot(name: str) -> bytes:
    """The one bare REST depth body in an hftbacktest capture (``<ns> <json>`` lines)."""
    with gzip.open(need(HFT / name), "rt") as fh:
        for line in fh:
            _, _, body = line.partition(" ")
            if body.startswith('{"lastUpdateId"'):
                return body.rstrip("\n").encode()
    raise AssertionError(f"no snapshot line in {name}")


def nautilus(name: str) -> bytes:
    return (need(DATA / "nautilus_trader" / name)).read_bytes()


# -- the fake venue ---------------------------------------------------------------------------------


@dataclass
class Reply:
    """One scripted answer. ``body`` None → the venue's normal answer with this status."""

    status: int = 200
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Seen:
    at: float
    path: str
    query: dict[str, str]


class FakeBinance:
    """A local REST venue: real bodies by path, scripted faults, ``X-MBX-USED-WEIGHT-1M``."""

    def __init__(
        self,
        venue: VenueSpec = USDM,
        *,
        exchange_info: bytes = b"{}",
        depth: dict[str, bytes] | None = None,
        external_weight: int = 0,
        time_offset_ms: int = 0,
    ) -> None:
        self.venue = venue
        self.exchange_info = exchange_info
        self.depth = depth or {}
        self.external_weight = external_weight
        self.time_offset_ms = time_offset_ms
        self.script: deque[Reply] = deque()
        self.by_symbol: dict[str, deque[Reply]] = {}
        self.seen: list[Seen] = []
        self._spent: deque[tuple[float, int]] = deque()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def weight_of(self, path: str, query: dict[str, str]) -> int:
        if path == self.venue.depth_path:
            return self.venue.depth_weight(int(query.get("limit", self.venue.default_depth_limit)))
        if path == self.venue.exchange_info_path:
            return 20 if self.venue is SPOT else 1
        return 1

    def used(self, now: float) -> int:
        while self._spent and self._spent[0][0] <= now - 60:
            self._spent.popleft()
        return sum(w for _, w in self._spent) + self.external_weight

    def requests_to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        query = dict(request.query)
        self.seen.append(Seen(now, request.path, query))
        self._spent.append((now, self.weight_of(request.path, query)))
        reply = self._scripted(query.get("symbol"))
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        headers = {"X-MBX-USED-WEIGHT-1M": str(self.used(now)), **reply.headers}
        body = reply.body if reply.body is not None else self.default_body(request.path, query)
        status = reply.status
        if body is None:
            status, body = 400, b'{"code":-1121,"msg":"Invalid symbol."}'
        return web.Response(status=status, body=body, headers=headers, content_type="application/json")

    def _scripted(self, symbol: str | None) -> Reply:
        if self.script:
            return self.script.popleft()
        queue = self.by_symbol.get(symbol or "")
        if queue:
            return queue.popleft()
        return Reply()

    def default_body(self, path: str, query: dict[str, str]) -> bytes | None:
        if path == self.venue.exchange_info_path:
            return self.exchange_info
        if path == self.venue.depth_path:
            return self.depth.get(query.get("symbol", ""))
        if path == self.venue.time_path:
            return json.dumps({"serverTime": time.time_ns() // 1_000_000 + self.time_offset_ms}).encode()
        return None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self.handle)
        # handler_cancellation: a client that timed out must not leave a sleeping handler behind.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest_asyncio.fixture
async def venue() -> AsyncIterator[FakeBinance]:
    fake = FakeBinance(exchange_info=nautilus("http_futures_market_exchange_info.json"))
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


def big_budget() -> WeightBudget:
    """A budget that never makes a test wait (pacing is tested on its own)."""
    return WeightBudget(1_000_000)


def client_for(fake: FakeBinance, **kw: object) -> RestClient:
    kw.setdefault("budget", big_budget())
    kw.setdefault("retry_initial_s", 0.01)
    kw.setdefault("retry_max_s", 0.05)
    return RestClient(fake.url, fake.venue, **kw)  # type: ignore[arg-type]


# -- plain requests ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_get_returns_body_weight_header_and_json(venue: FakeBinance) -> None:
    served = nautilus("http_futures_market_exchange_info.json")
    async with client_for(venue) as client:
        before = time.time_ns()
        resp = await client.get(USDM.exchange_info_path, None, weight=1)
        after = time.time_ns()
    assert resp.status == 200
    assert resp.body == served
    assert resp.json() == json.loads(served)
    assert resp.used_weight == 1  # the fake venue counts weight 1 for exchangeInfo
    assert before <= resp.recv_ts <= after
    assert 0 < resp.elapsed_s <= (after - before) / 1e9 + 1e-3  # measured inside the call
    assert resp.url == venue.url + USDM.exchange_info_path
    stats = client.stats()
    assert stats["requests"] == 1
    assert stats["used_weight"] == 1
    assert stats["errors"] == {}
    assert stats["retries"] == 0


@pytest.mark.asyncio
async def test_query_params_are_sent(venue: FakeBinance) -> None:
    venue.depth["BTCUSDT"] = b'{"lastUpdateId":1,"E":2,"T":3,"bids":[],"asks":[]}'
    async with client_for(venue) as client:
        resp = await client.get(USDM.depth_path, {"symbol": "BTCUSDT", "limit": 1000}, weight=20)
    assert venue.seen[-1].query == {"symbol": "BTCUSDT", "limit": "1000"}
    assert resp.used_weight == 20
    assert resp.json()["lastUpdateId"] == 1


@pytest.mark.asyncio
async def test_bad_json_raises_parse_error(venue: FakeBinance) -> None:
    venue.script.append(Reply(body=b"<html>gateway</html>"))
    async with client_for(venue) as client:
        resp = await client.get(USDM.exchange_info_path, None, weight=1)
        with pytest.raises(ParseError, match="not JSON") as info:
            resp.json()
    assert isinstance(info.value, ValueError)
    assert USDM.exchange_info_path in str(info.value)


@pytest.mark.asyncio
async def test_client_error_is_not_retried_and_carries_binance_code(venue: FakeBinance) -> None:
    venue.script.append(Reply(status=400, body=b'{"code":-1121,"msg":"Invalid symbol."}'))
    async with client_for(venue) as client:
        with pytest.raises(RestError) as info:
            await client.get(USDM.depth_path, {"symbol": "NOPE", "limit": 5}, weight=2)
        assert client.stats()["errors"] == {"400": 1}
    err = info.value
    assert not err.retriable
    assert (err.status, err.code) == (400, -1121)
    assert "Invalid symbol." in str(err)
    assert "/fapi/v1/depth" in str(err)
    assert len(venue.seen) == 1


@pytest.mark.asyncio
async def test_server_errors_are_retried_then_succeed(venue: FakeBinance) -> None:
    venue.script.extend([Reply(status=503, body=b"Service Unavailable"), Reply(status=502, body=b"")])
    async with client_for(venue) as client:
        resp = await client.get(USDM.exchange_info_path, None, weight=1)
        stats = client.stats()
    assert resp.status == 200
    assert len(venue.seen) == 3
    assert stats["retries"] == 2
    assert stats["errors"] == {"503": 1, "502": 1}
    assert stats["requests"] == 3


@pytest.mark.asyncio
async def test_server_errors_are_bounded(venue: FakeBinance) -> None:
    body = b'{"code":-1000,"msg":"An unknown error occured while processing the request."}'
    venue.script.extend(Reply(status=500, body=body) for _ in range(10))
    async with client_for(venue, max_retries=2) as client:
        with pytest.raises(RestError) as info:
            await client.get(USDM.exchange_info_path, None, weight=1)
        assert client.stats()["retries"] == 2
    assert len(venue.seen) == 3
    err = info.value
    assert err.retriable
    assert err.status == 500
    assert err.code == -1000
    assert venue.url + USDM.exchange_info_path in str(err)
    assert "3 attempts" in str(err)


@pytest.mark.asyncio
async def test_timeouts_are_retried_then_raise(venue: FakeBinance) -> None:
    venue.script.extend(Reply(delay_s=2.0) for _ in range(2))
    async with client_for(venue, timeout_s=0.2, max_retries=1) as client:
        with pytest.raises(RestError, match="timed out") as info:
            await client.get(USDM.exchange_info_path, None, weight=1)
        # Both attempts were cut by the 0.2 s timeout (counted), not answered after 2 s.
        assert client.stats()["errors"] == {"timeout": 2}
    assert info.value.retriable
    assert info.value.status is None
    assert len(venue.seen) == 2


@pytest.mark.asyncio
async def test_timeout_then_success(venue: FakeBinance) -> None:
    venue.script.append(Reply(delay_s=2.0))
    async with client_for(venue, timeout_s=0.2) as client:
        resp = await client.get(USDM.exchange_info_path, None, weight=1)
        assert client.stats()["errors"] == {"timeout": 1}
    assert resp.status == 200


@pytest.mark.asyncio
async def test_unreachable_host_raises_retriable_error() -> None:
    fake = FakeBinance()
    url = await fake.start()
    await fake.close()  # nothing listens on that port any more
    client = RestClient(url, USDM, budget=big_budget(), max_retries=1, retry_initial_s=0.01)
    try:
        with pytest.raises(RestError) as info:
            await client.get(USDM.exchange_info_path, None, weight=1)
        assert client.stats()["errors"] == {"connection": 2}
    finally:
        await client.close()
    assert info.value.retriable
    assert url in str(info.value)


@pytest.mark.asyncio
async def test_closed_client_refuses_and_close_is_idempotent(venue: FakeBinance) -> None:
    client = client_for(venue)
    await client.get(USDM.exchange_info_path, None, weight=1)
    await client.close()
    await client.close()
    with pytest.raises(RestError, match="closed") as info:
        await client.get(USDM.exchange_info_path, None, weight=1)
    assert not info.value.retriable
    assert len(venue.seen) == 1


# -- 429 ---------------------------------------------------------------------------------------------


TOO_MANY = (
    b'{"code":-1003,"msg":"Too many requests; current limit of IP(127.0.0.1) is 2400 requests per '
    b'minute. Please use the websocket for live updates to avoid polling the API."}'
)


@pytest.mark.asyncio
async def test_429_waits_retry_after_then_retries(
    venue: FakeBinance, caplog: pytest.LogCaptureFixture
) -> None:
    venue.script.append(Reply(status=429, body=TOO_MANY, headers={"Retry-After": "1"}))
    caplog.set_level(logging.INFO, logger="ingestd.rest")
    async with client_for(venue) as client:
        started = time.monotonic()
        resp = await client.get(USDM.exchange_info_path, None, weight=1)
        waited = time.monotonic() - started
        stats = client.stats()
    assert resp.status == 200
    assert waited >= 1.0
    first, second = venue.seen
    assert second.at - first.at >= 1.0  # the server saw nothing during the pause
    assert stats["status_429"] == 1
    assert stats["retries"] == 1
    assert stats["errors"] == {"429": 1}
    assert not stats["rate_limited"]
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("rate-limited by" in m for m in msgs) == 1
    assert sum("rate limit on" in m and "over" in m for m in msgs) == 1


@pytest.mark.asyncio
async def test_429_pauses_every_caller_of_the_host(venue: FakeBinance) -> None:
    venue.script.append(Reply(status=429, body=TOO_MANY, headers={"Retry-After": "1"}))
    async with client_for(venue) as client:

        async def late() -> bool:
            # Starts once the host is paused (the 429 is in), as a caller that knows nothing of it.
            await until(lambda: bool(client.stats()["rate_limited"]), what="the pause")
            paused = bool(client.stats()["rate_limited"])
            await client.get(USDM.time_path, None, weight=1)
            return paused

        _, started_paused = await asyncio.gather(client.get(USDM.time_path, None, weight=1), late())
    assert started_paused
    # Three requests reached the server: the 429, then both callers only after the pause (the
    # server saw the 429's request before it answered, so this holds on any machine).
    first, *after = venue.seen
    assert len(after) == 2
    assert all(s.at - first.at >= 1.0 for s in after)


@pytest.mark.asyncio
async def test_429_without_retry_after_backs_off_exponentially(venue: FakeBinance) -> None:
    venue.script.extend([Reply(status=429, body=TOO_MANY), Reply(status=429, body=TOO_MANY)])
    async with client_for(venue, max_retries=1) as client:
        with pytest.raises(RateLimitedError) as info:
            await client.get(USDM.time_path, None, weight=1)
        assert client.budget.paused_for > 1.5  # the second pause is 2 s
    a, b = venue.seen
    assert b.at - a.at >= 1.0  # first fallback: 1 s
    assert info.value.retry_after == 2.0


@pytest.mark.asyncio
async def test_429_past_max_retries_raises_rate_limited(venue: FakeBinance) -> None:
    venue.script.extend(Reply(status=429, body=TOO_MANY, headers={"Retry-After": "0"}) for _ in range(3))
    async with client_for(venue, max_retries=1) as client:
        with pytest.raises(RateLimitedError) as info:
            await client.get(USDM.time_path, None, weight=1)
        assert client.stats()["status_429"] == 2
    assert info.value.retry_after == 0.0
    assert info.value.code == -1003
    assert info.value.status == 429
    assert len(venue.seen) == 2


# -- 418 and the persisted ban -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_418_raises_persists_ban_and_new_client_sends_nothing(
    venue: FakeBinance, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state" / "ingestd-state.json"
    venue.script.append(
        Reply(
            status=418,
            body=b'{"code":-1003,"msg":"Way too many requests; IP banned until 1000. '
            b'Please use the websocket for live updates to avoid bans."}',
            headers={"Retry-After": "120"},
        )
    )
    caplog.set_level(logging.INFO, logger="ingestd.rest")
    async with client_for(venue, state_file=state) as client:
        t0 = time.time()
        with pytest.raises(BannedError) as info:
            await client.get(USDM.time_path, None, weight=1)
        assert t0 + 119 <= info.value.until <= time.time() + 121
        assert info.value.status == 418
        # Every later call fails fast, without a request.
        with pytest.raises(BannedError, match="not sent"):
            await client.get(USDM.time_path, None, weight=1)
        assert client.stats()["status_418"] == 1
        assert client.stats()["banned_until"] == info.value.until
    assert len(venue.seen) == 1
    saved = json.loads(state.read_text())
    host = venue.url.removeprefix("http://")
    assert saved == {BANS_KEY: {host: info.value.until}}
    assert not list(state.parent.glob("*.tmp"))  # the atomic write left no temporary file
    assert sum("banned this IP until" in r.getMessage() for r in caplog.records) == 1

    # A restarted daemon reads the ban and does not touch the host.
    async with client_for(venue, state_file=state) as fresh:
        assert fresh.banned_until == info.value.until
        with pytest.raises(BannedError) as again:
            await fresh.get(USDM.exchange_info_path, None, weight=1)
    assert again.value.until == info.value.until
    assert len(venue.seen) == 1


@pytest.mark.asyncio
async def test_ban_end_taken_from_1003_message(venue: FakeBinance, tmp_path: Path) -> None:
    until_ms = (int(time.time()) + 300) * 1000 + 426
    msg = f"Way too many requests; IP banned until {until_ms}. Please use the websocket for live updates."
    venue.script.append(Reply(status=418, body=json.dumps({"code": -1003, "msg": msg}).encode()))
    state = tmp_path / "s.json"
    async with client_for(venue, state_file=state) as client:
        with pytest.raises(BannedError) as info:
            await client.get(USDM.time_path, None, weight=1)
    assert info.value.until == until_ms / 1000
    assert load_ban(state, venue.url.removeprefix("http://")) == until_ms / 1000


@pytest.mark.asyncio
async def test_ban_over_resumes_and_clears_state(
    venue: FakeBinance, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "s.json"
    state.write_text(json.dumps({"other": {"kept": True}}))
    venue.script.append(Reply(status=418, body=b"", headers={"Retry-After": "1"}))
    caplog.set_level(logging.INFO, logger="ingestd.rest")
    async with client_for(venue, state_file=state) as client:
        with pytest.raises(BannedError):
            await client.get(USDM.time_path, None, weight=1)
        assert json.loads(state.read_text())["other"] == {"kept": True}
        ends = client.banned_until
        assert ends > 0
        await until(lambda: time.time() > ends, what="the end of the 1 s ban")  # the scenario: it ends
        resp = await client.get(USDM.time_path, None, weight=1)
        assert resp.status == 200
        assert client.banned_until == 0
    assert json.loads(state.read_text()) == {"other": {"kept": True}, BANS_KEY: {}}
    assert sum("is over" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.asyncio
async def test_ban_that_ended_before_start_is_ignored(venue: FakeBinance, tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    save_ban(state, venue.url.removeprefix("http://"), time.time() - 5)
    async with client_for(venue, state_file=state) as client:
        assert client.banned_until == 0
        assert (await client.get(USDM.time_path, None, weight=1)).status == 200
    assert len(venue.seen) == 1


def test_state_file_round_trip_and_bad_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "s.json"
    assert load_ban(state, "h:1") == 0.0
    save_ban(state, "h:1", 123.5)
    save_ban(state, "h:2", 7.0)
    assert load_ban(state, "h:1") == 123.5
    save_ban(state, "h:1", 0.0)
    assert json.loads(state.read_text()) == {BANS_KEY: {"h:2": 7.0}}
    state.write_text("{not json")
    assert load_ban(state, "h:2") == 0.0
    assert "unreadable" in caplog.text


def test_header_helpers() -> None:
    now = time.time()
    assert used_weight({"X-MBX-USED-WEIGHT-1M": "57"}) == 57
    assert used_weight({"X-MBX-USED-WEIGHT": "9"}) == 9
    assert used_weight({"X-MBX-USED-WEIGHT-1M": "x"}) is None
    assert used_weight({}) is None
    assert retry_after({"Retry-After": "7"}, now) == 7.0
    assert retry_after({"Retry-After": formatdate(now + 30, usegmt=True)}, now) == pytest.approx(30, abs=1.5)
    assert retry_after({"Retry-After": "soon"}, now) is None
    assert ban_end({}, None, now) == now + 120
    assert ban_end({"Retry-After": "60"}, "IP banned until 1534231853426.", now) == now + 60
    assert ban_end({}, "IP banned until 1534231853426.", now) == 1534231853.426


# -- the budget -----------------------------------------------------------------------------------------


def tiny_venue(limit_per_minute: int) -> VenueSpec:
    return replace(USDM, weight_limit_per_minute=limit_per_minute)


@pytest.mark.asyncio
async def test_budget_paces_requests_at_the_sustained_rate(venue: FakeBinance) -> None:
    # 600/min x 0.5 = 300/min = 5 weight/s, one second of burst: 10 requests need >= 1 s.
    client = RestClient(venue.url, tiny_venue(600), headroom=0.5)
    try:
        started = time.monotonic()
        await asyncio.gather(*(client.get(USDM.time_path, None, weight=1) for _ in range(10)))
        elapsed = time.monotonic() - started
    finally:
        await client.close()
    assert elapsed >= 1.0 - 0.02
    # Never ahead of the budget: after the burst of 5, the k-th request (k = 6 … 10) reaches the
    # server no earlier than (k - 5) x 0.2 s after the start. (Gaps between two arrivals can be
    # shorter on a loaded machine, when one was late and the next caught up: that is allowed.)
    assert len(venue.seen) == 10
    for k, seen in enumerate(venue.seen[5:], start=6):
        assert seen.at - started >= (k - 5) * 0.2 - 0.02, k
    assert client.budget.budget == 300


@pytest.mark.asyncio
async def test_used_weight_header_slows_the_budget_further(venue: FakeBinance) -> None:
    # Someone else on this IP already spent 302 of the 300 this process may use per minute.
    venue.external_weight = 302
    client = RestClient(venue.url, tiny_venue(600), headroom=0.5)
    try:
        started = time.monotonic()
        for _ in range(3):
            await client.get(USDM.time_path, None, weight=1)
        elapsed = time.monotonic() - started
        assert client.stats()["used_weight"] == 305
    finally:
        await client.close()
    # Without the header the three would go at once (5 weight of burst). With it each waits
    # for the external weight to age: 1 + 302 (1 - t/60) <= 299 → t >= 0.79 s, then ~1 s.
    assert elapsed >= 1.6
    assert venue.seen[1].at - started >= 0.75


@pytest.mark.asyncio
async def test_budget_serves_higher_priority_first() -> None:
    budget = WeightBudget(40, window_s=1.0)  # 40 weight/s, bucket of 40
    await budget.acquire(40)  # empty the bucket
    order: list[str] = []

    async def take(name: str, priority: int) -> None:
        await budget.acquire(2, priority=priority)
        order.append(name)

    tasks = [asyncio.create_task(take(n, p)) for n, p in (("a", 0), ("b", 0), ("urgent", 5), ("c", 0))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(take("later-urgent", 5)))
    await asyncio.gather(*tasks)
    assert order == ["urgent", "later-urgent", "a", "b", "c"]
    assert budget.stats()["acquired"] == 6


@pytest.mark.asyncio
async def test_cancelled_waiter_leaves_the_queue() -> None:
    budget = WeightBudget(10, window_s=0.3)
    await budget.acquire(10)
    stuck = asyncio.create_task(budget.acquire(5, priority=9))
    await until(lambda: budget.waiting == 1, what="the waiter queued")
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    assert budget.waiting == 0
    # The next caller is served as soon as the budget allows (the window frees at 0.3 s),
    # not stuck behind the cancelled one.
    await asyncio.wait_for(budget.acquire(2), 30)
    assert budget.stats()["acquired"] == 2


@pytest.mark.asyncio
async def test_budget_rolling_window_and_observe() -> None:
    budget = WeightBudget(100, window_s=0.5, burst_s=0.5)
    t0 = time.monotonic()
    await budget.acquire(60)
    await budget.acquire(40)
    assert budget.used() == pytest.approx(100)
    # The window is full: the next weight fits only when the first sends leave it (0.5 s).
    await budget.acquire(10)
    assert time.monotonic() - t0 >= 0.48
    # The server says it counts less than we think (its window moved on): believe it.
    budget.observe(10, sent_at=time.monotonic())
    assert budget.used() <= 10.5
    assert budget.last_used == 10


@pytest.mark.asyncio
async def test_zero_weight_is_not_paced_but_is_paused() -> None:
    budget = WeightBudget(10, window_s=1.0)
    await budget.acquire(30)  # in debt for two seconds
    # Not paced: it completes at its first step, without waiting for anything.
    completes_at_once(budget.acquire(0))
    budget.pause(0.2)
    assert await budget.acquire(0) >= 0.19


def test_budget_validation() -> None:
    with pytest.raises(ValueError, match="positive"):
        WeightBudget(0)
    with pytest.raises(ValueError, match="headroom"):
        WeightBudget.for_limit(2400, 1.5)
    assert WeightBudget.for_limit(2400, 0.5).budget == 1200
    assert WeightBudget.for_limit(2400, 0.5).rate == 20.0
