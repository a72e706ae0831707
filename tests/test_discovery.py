"""Discovery against a local venue serving real exchangeInfo bodies, and its one-line errors."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio

from ingestd.errors import StartupError
from ingestd.producers.discovery import discover, request_weight_limit
from ingestd.producers.rest import RestClient
from ingestd.venues.binance.endpoints import SPOT, USDM, VenueSpec
from tests.test_rest import FakeBinance, Reply, big_budget, cryptofeed_bodies, nautilus


def client_for(fake: FakeBinance, **kw: Any) -> RestClient:
    kw.setdefault("budget", big_budget())
    kw.setdefault("retry_initial_s", 0.01)
    kw.setdefault("max_retries", 1)
    return RestClient(fake.url, fake.venue, **kw)


@pytest_asyncio.fixture
async def futures() -> AsyncIterator[FakeBinance]:
    fake = FakeBinance(USDM, exchange_info=nautilus("http_futures_market_exchange_info.json"))
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


def expected_contracts(body: bytes, venue: VenueSpec) -> dict[str, dict[str, Any]]:
    """What discovery must keep, computed straight from the raw body."""
    out = {}
    for s in json.loads(body)["symbols"]:
        if s["status"] != "TRADING" or (venue.routed and s["contractType"] != "PERPETUAL"):
            continue
        out[s["symbol"]] = s
    return out


def filt(sym: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(f for f in sym["filters"] if f["filterType"] == kind)


@pytest.mark.asyncio
async def test_futures_discovery_keeps_trading_perpetuals_only(futures: FakeBinance) -> None:
    body = nautilus("http_futures_market_exchange_info.json")
    async with client_for(futures, budget=None) as client:  # the venue's own budget
        contracts = await discover(client, USDM)
    # The body lists BTCUSDT and ETHUSDT perpetuals and the BTCUSDT_220325 quarterly.
    assert contracts.natives == ["BTCUSDT", "ETHUSDT"]
    assert "BTCUSDT_220325" not in contracts
    raw = expected_contracts(body, USDM)
    for c in contracts:
        sym = raw[c.native]
        assert c.venue == "binance-usdm"
        assert c.symbol == f"{sym['baseAsset']}-{sym['quoteAsset']}-PERP"
        assert (c.base, c.quote) == (sym["baseAsset"], sym["quoteAsset"])
        assert c.tick_size == float(filt(sym, "PRICE_FILTER")["tickSize"])
        assert c.min_qty == float(filt(sym, "LOT_SIZE")["minQty"])
        assert c.step_size == float(filt(sym, "LOT_SIZE")["stepSize"])
        assert c.contract_type == "PERPETUAL"
    assert [s.path for s in futures.seen] == [USDM.exchange_info_path]
    # The body advertises 6000/min, more than the table's 2400: the table is kept.
    assert client.budget.budget == 1200


@pytest.mark.asyncio
async def test_full_2021_futures_exchange_info() -> None:
    bodies = cryptofeed_bodies("BINANCE_FUTURES.0")
    body = bodies["https://fapi.binance.com/fapi/v1/exchangeInfo"]
    fake = FakeBinance(USDM, exchange_info=body)
    await fake.start()
    try:
        async with client_for(fake) as client:
            contracts = await discover(client, USDM)
    finally:
        await fake.close()
    raw = expected_contracts(body, USDM)
    assert len(raw) == 119
    assert contracts.natives == list(raw)
    # Quarterlies and the PENDING_TRADING symbol with an empty contractType are out.
    for gone in ("BTCUSDT_210924", "ETHUSDT_210924", "BTCSTUSDT"):
        assert gone not in contracts
    sushi = contracts.get("SUSHIUSDT")
    assert sushi is not None
    assert sushi.symbol == "SUSHI-USDT-PERP"
    assert sushi.tick_size == 0.001
    assert sushi.price_precision == 3  # "0.0010" → 3 decimals
    assert sushi.min_qty == 1.0
    assert request_weight_limit(json.loads(body)) == 2400


@pytest.mark.asyncio
async def test_spot_discovery_and_live_weight_limit() -> None:
    body = nautilus("http_spot_market_exchange_info.json")
    fake = FakeBinance(SPOT, exchange_info=body)
    await fake.start()
    try:
        client = RestClient(fake.url, SPOT, headroom=0.5)
        try:
            contracts = await discover(client, SPOT)
        finally:
            await client.close()
    finally:
        await fake.close()
    raw = expected_contracts(body, SPOT)
    assert contracts.natives == list(raw) == ["BTCUSDT", "ETHUSDT"]
    btc = contracts.get("BTCUSDT")
    assert btc is not None
    assert btc.symbol == "BTC-USDT"
    assert btc.tick_size == float(Decimal(filt(raw["BTCUSDT"], "PRICE_FILTER")["tickSize"]))
    # The body advertises REQUEST_WEIGHT 1200/min, below the table's 6000: it wins.
    assert client.budget.budget == 600
    # exchangeInfo costs 20 on spot; the venue's header reports it.
    assert client.stats()["used_weight"] == 20


@pytest.mark.asyncio
async def test_unreachable_url_is_named() -> None:
    fake = FakeBinance()
    url = await fake.start()
    await fake.close()
    client = RestClient(url, USDM, budget=big_budget(), max_retries=0)
    try:
        with pytest.raises(StartupError) as info:
            await discover(client, USDM)
    finally:
        await client.close()
    msg = str(info.value)
    assert msg.startswith(f"binance-usdm: cannot reach {url}{USDM.exchange_info_path}")
    assert "\n" not in msg


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("reply", "expect"),
    [
        (Reply(status=404, body=b"<html>Not Found</html>"), "HTTP 404"),
        (Reply(status=400, body=b'{"code":-1102,"msg":"Mandatory parameter was not sent."}'), "code -1102"),
        (Reply(status=503, body=b"Service Unavailable"), "HTTP 503"),
    ],
)
async def test_http_status_is_named(futures: FakeBinance, reply: Reply, expect: str) -> None:
    futures.script.extend([reply, reply])
    async with client_for(futures) as client:
        with pytest.raises(StartupError) as info:
            await discover(client, USDM)
    msg = str(info.value)
    assert msg.startswith("binance-usdm: exchangeInfo failed: GET ")
    assert expect in msg
    assert "\n" not in msg


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>captive portal</body></html>",
        b'{"serverTime": 1633835466289}',
        b'{"code":-1000,"msg":"An unknown error occured while processing the request."}',
    ],
)
async def test_not_an_exchange_info_body(futures: FakeBinance, body: bytes) -> None:
    futures.script.append(Reply(body=body))
    async with client_for(futures) as client:
        with pytest.raises(StartupError) as info:
            await discover(client, USDM)
    msg = str(info.value)
    assert "did not return an exchangeInfo body" in msg
    assert futures.url + USDM.exchange_info_path in msg
    assert "\n" not in msg


@pytest.mark.asyncio
async def test_banned_host_is_named(futures: FakeBinance) -> None:
    futures.script.append(Reply(status=418, headers={"Retry-After": "600"}, body=b""))
    async with client_for(futures) as client:
        with pytest.raises(StartupError, match=r"has banned this IP until \d{4}-\d\d-\d\dT") as info:
            await discover(client, USDM)
        # A second attempt (e.g. a restart with the same client state) sends nothing.
        with pytest.raises(StartupError):
            await discover(client, USDM)
    assert len(futures.seen) == 1
    assert "HTTP 418" in str(info.value)
    assert client.banned_until > time.time() + 590
