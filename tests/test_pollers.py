"""REST pollers against the sim: records field by field against the sim's answers and the real
capture behind them, deduplication of re-polled history, failures, bucket limits, Parquet."""

from __future__ import annotations

import asyncio
import gzip
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import ValidationError

from ingestd.bus import Bus, OverflowPolicy
from ingestd.config import StorageSettings
from ingestd.consumers.parquet import ParquetWriter
from ingestd.consumers.schema import open_dataset
from ingestd.errors import ConfigError, ParseError
from ingestd.producers.budget import WeightBudget
from ingestd.producers.discovery import discover
from ingestd.producers.poller_records import (
    FundingRate,
    LongShortRatio,
    OpenInterest,
    PremiumIndex,
    TakerVolume,
    parse_long_short,
    parse_open_interest,
    parse_premium_index,
)
from ingestd.producers.pollers import POLLS, PollerSet, PollerSettings
from ingestd.producers.rest import RestClient
from ingestd.records import RECORD_TYPES, AnyRecord, Record
from ingestd.sim import Capture, SimVenue, load_capture
from ingestd.venues.binance.endpoints import SPOT, USDM
from ingestd.venues.binance.symbols import Contract, ContractSet
from tests.ops import wait_for

MS = 1_000_000
ALL_ON = {p.key: 60.0 for p in POLLS}
BTC = Contract("binance-usdm", "BTCUSDT", "BTC-USDT-PERP", "BTC", "USDT", 0.1, 1, 0.001, 0.001, "PERPETUAL")


@pytest.fixture(scope="module")
def capture(bundled_capture: Path) -> Capture:
    return load_capture(bundled_capture)


@pytest.fixture(scope="module")
def last_trade(bundled_capture: Path) -> dict[str, Any]:
    with gzip.open(bundled_capture, "rb") as fh:
        trades = [orjson.loads(line.partition(b" ")[2])["data"] for line in fh if b"@trade" in line[:60]]
    return max(trades, key=lambda d: (d["T"], d["t"]))


class Collect:
    """An ``Emit`` that keeps every batch."""

    def __init__(self) -> None:
        self.batches: list[list[AnyRecord]] = []

    async def __call__(self, batch: Sequence[AnyRecord]) -> None:
        self.batches.append(list(batch))

    @property
    def records(self) -> list[AnyRecord]:
        return [r for b in self.batches for r in b]


async def _sim_body(sim: SimVenue, path: str, params: dict[str, Any]) -> Any:
    async with aiohttp.ClientSession() as http, http.get(sim.rest_url + path, params=params) as resp:
        return await resp.json()


@pytest.mark.asyncio
async def test_every_poller_emits_records_once(capture: Capture, last_trade: dict[str, Any]) -> None:
    settings = PollerSettings.model_validate({**ALL_ON, "history_limit": 12, "funding_limit": 5})
    emit = Collect()
    async with SimVenue([capture]) as sim, RestClient(sim.rest_url, USDM) as client:
        contracts = await discover(client, USDM)
        pollers = PollerSet(client, USDM, contracts, emit, settings)
        (btc,) = contracts
        first = {p.key: await pollers.poll_once(p, btc) for p in POLLS}
        again = {p.key: await pollers.poll_once(p, btc) for p in POLLS}
        bodies = {p.key: await _sim_body(sim, p.path, p.params(btc, settings)) for p in POLLS}
        await pollers.close()
        await pollers.close()  # idempotent
    hist = {k: 12 for k in ALL_ON if "hist" in k or "long_short" in k or "taker" in k}
    assert first == {"premium_index_s": 1, "funding_rate_s": 5, "open_interest_s": 1} | hist
    # The sim's answers end at the capture's end, so a second poll brings nothing new.
    assert again == dict.fromkeys(ALL_ON, 0)
    stats = pollers.stats()
    assert (stats["polls"], stats["records"], stats["failed"]) == (16, sum(first.values()), 0)
    assert stats["duplicates"] == sum(first.values())
    by_type: dict[type, list[Any]] = {}
    for r in emit.records:
        assert isinstance(r, Record)
        by_type.setdefault(type(r), []).append(r)
        assert (r.venue, r.symbol, r.native) == ("binance-usdm", "BTC-USDT-PERP", "BTCUSDT")

    (pi,) = by_type[PremiumIndex]
    body = bodies["premium_index_s"]
    assert (
        pi.mark_price == float(body["markPrice"]) == float(last_trade["p"])
    )  # the sim's mark: the last trade
    assert (pi.index_price, pi.interest_rate, pi.last_funding_rate) == (
        float(body["indexPrice"]),
        float(body["interestRate"]),
        float(body["lastFundingRate"]),
    )
    assert pi.exchange_ts == body["time"] * MS == last_trade["E"] * MS
    assert pi.next_funding_time == body["nextFundingTime"] * MS
    funding = by_type[FundingRate]
    assert [(f.exchange_ts, f.funding_rate, f.mark_price, f.rate_type) for f in funding] == [
        (b["fundingTime"] * MS, float(b["fundingRate"]), float(b["markPrice"]), b["rateType"])
        for b in bodies["funding_rate_s"]
    ]
    assert all(f.exchange_ts % (8 * 3600 * 1000 * MS) == 0 for f in funding)
    oi = by_type[OpenInterest]
    current = [o for o in oi if o.period is None]
    assert [(o.open_interest, o.exchange_ts) for o in current] == [
        (float(bodies["open_interest_s"]["openInterest"]), bodies["open_interest_s"]["time"] * MS)
    ]
    history = [o for o in oi if o.period == "5m"]
    assert [
        (o.exchange_ts, o.open_interest, o.open_interest_value, o.circulating_supply) for o in history
    ] == [
        (
            b["timestamp"] * MS,
            float(b["sumOpenInterest"]),
            float(b["sumOpenInterestValue"]),
            float(b["CMCCirculatingSupply"]),
        )
        for b in bodies["open_interest_hist_s"]
    ]
    ratios = by_type[LongShortRatio]
    for kind, key in (
        ("top_position", "top_long_short_position_s"),
        ("top_account", "top_long_short_account_s"),
        ("global_account", "global_long_short_account_s"),
    ):
        rows = [r for r in ratios if r.kind == kind]
        assert [(r.exchange_ts, r.long_short_ratio, r.long_share, r.short_share, r.period) for r in rows] == [
            (
                b["timestamp"] * MS,
                float(b["longShortRatio"]),
                float(b["longAccount"]),
                float(b["shortAccount"]),
                "5m",
            )
            for b in bodies[key]
        ]
    taker = by_type[TakerVolume]
    assert [(t.exchange_ts, t.buy_volume, t.sell_volume, t.buy_sell_ratio) for t in taker] == [
        (b["timestamp"] * MS, float(b["buyVol"]), float(b["sellVol"]), float(b["buySellRatio"]))
        for b in bodies["taker_volume_s"]
    ]
    # The last 5-minute period lies inside the capture: its taker volumes are the recorded trades'.
    assert taker[-1].buy_volume + taker[-1].sell_volume > 0


@pytest.mark.asyncio
async def test_run_stores_poller_records_in_parquet(capture: Capture, tmp_path: Path) -> None:
    settings = PollerSettings(
        premium_index_s=1.0, open_interest_hist_s=30.0, taker_volume_s=30.0, history_limit=6
    )
    bus = Bus()
    bus.attach(
        ParquetWriter(StorageSettings(data_dir=tmp_path, rotate_seconds=3600)),
        maxsize=10_000,
        policy=OverflowPolicy.BLOCK,
    )
    await bus.start()
    async with SimVenue([capture]) as sim:
        # One budget for the host, shared with whatever else the daemon runs on it.
        budget = WeightBudget.for_limit(USDM.weight_limit_per_minute, 0.5, name="fapi")
        async with RestClient(sim.rest_url, USDM, budget=budget) as client:
            contracts = await discover(client, USDM)
            pollers = PollerSet(client, USDM, contracts, bus.publish, settings)
            task = asyncio.create_task(pollers.run())
            await wait_for(lambda: pollers.stats()["polls"] >= 3, what="three polls")

            def premium_again() -> bool:
                # The 1 s premium-index poller comes round again on the same data: a duplicate.
                premium = pollers.stats()["endpoints"]["premium_index_s"]
                return bool(premium["polls"] >= 2 and premium["duplicates"] >= 1)

            await wait_for(premium_again, what="a second premium-index poll, a duplicate")
            await pollers.close()
            await asyncio.wait_for(task, 30)
            served = sim.stats().rest_requests
    await bus.close()
    stats = pollers.stats()
    assert stats["endpoints"]["premium_index_s"]["polls"] >= 2
    assert stats["endpoints"]["premium_index_s"]["duplicates"] >= 1
    assert served["/fapi/v1/premiumIndex"] == stats["endpoints"]["premium_index_s"]["polls"]
    oi = open_dataset(tmp_path, "open_interest").to_table().to_pylist()
    assert len(oi) == 6
    assert {(r["period"], r["native"], r["symbol"], r["venue"]) for r in oi} == {
        ("5m", "BTCUSDT", "BTC-USDT-PERP", "binance-usdm")
    }
    stamps = sorted(r["exchange_ts"] for r in oi)
    assert [b - a for a, b in itertools.pairwise(stamps)] == [300_000 * MS] * 5
    assert len(open_dataset(tmp_path, "taker_volume").to_table()) == 6
    premium = open_dataset(tmp_path, "premium_index").to_table().to_pylist()
    assert len(premium) == 1  # polled at least twice, stored once
    assert premium[0]["mark_price"] > 0


@pytest.mark.asyncio
async def test_a_failing_poll_is_counted_and_the_next_one_recovers(capture: Capture) -> None:
    emit = Collect()
    async with SimVenue([capture]) as sim, RestClient(sim.rest_url, USDM, max_retries=0) as client:
        contracts = await discover(client, USDM)
        pollers = PollerSet(client, USDM, contracts, emit, PollerSettings(open_interest_s=5))
        (poll,) = [p for p in POLLS if p.key == "open_interest_s"]
        sim.faults.rest_error("/fapi/v1/openInterest", 400, body='{"code":-1121,"msg":"Invalid symbol."}')
        assert await pollers.poll_once(poll, contracts.contracts[0]) == 0
        assert pollers.stats()["failing"] == 1
        assert "Invalid symbol" in (pollers.last_error or "")
        sim.faults.rest_bad_json("/fapi/v1/openInterest")
        assert await pollers.poll_once(poll, contracts.contracts[0]) == 0
        assert await pollers.poll_once(poll, contracts.contracts[0]) == 1
    stats = pollers.stats()
    assert (stats["failed"], stats["failing"], stats["records"]) == (2, 0, 1)


def test_settings_and_venue_checks() -> None:
    assert PollerSettings().enabled == {}
    assert PollerSettings(open_interest_s=60).enabled == {"open_interest_s": 60}
    with pytest.raises(ValidationError, match="too short"):
        PollerSettings(funding_rate_s=0.5)
    with pytest.raises(ValidationError, match="extra"):
        PollerSettings.model_validate({"open_interest": 5})
    with pytest.raises(ValidationError):
        PollerSettings(period="3m")  # type: ignore[arg-type]
    emit = Collect()
    client = RestClient("http://127.0.0.1:9", SPOT)
    spot = ContractSet(
        "binance-spot", (Contract("binance-spot", "BTCUSDT", "BTC-USDT", "BTC", "USDT", 0.01, 2, 1e-5, 1e-5),)
    )
    with pytest.raises(ConfigError, match="USDⓈ-M"):
        PollerSet(client, SPOT, spot, emit, PollerSettings(open_interest_s=10))
    PollerSet(client, SPOT, spot, emit, PollerSettings())  # nothing enabled: fine
    one = ContractSet("binance-usdm", (BTC,))
    many = ContractSet(
        "binance-usdm",
        tuple(
            Contract("binance-usdm", f"X{i}USDT", f"X{i}-USDT-PERP", f"X{i}", "USDT", 0.1, 1, 1, 1)
            for i in range(3)
        ),
    )
    PollerSet(client, USDM, one, emit, PollerSettings(open_interest_hist_s=1))  # 300 of 500 requests / 5 min
    with pytest.raises(ConfigError, match=r"open_interest_hist_s, taker_volume_s .* 1200 requests"):
        PollerSet(client, USDM, many, emit, PollerSettings(open_interest_hist_s=1.5, taker_volume_s=1.5))
    with pytest.raises(ConfigError, match="funding bucket"):
        PollerSet(client, USDM, many, emit, PollerSettings(funding_rate_s=2))
    for channel in ("premium_index", "funding_rate", "open_interest", "long_short_ratio", "taker_volume"):
        assert channel in RECORD_TYPES


def test_parsers_tolerate_binance_type_variants() -> None:
    # /futures/data timestamps: strings in the doc examples, numbers live.
    rows: list[dict[str, Any]] = [
        {
            "symbol": "BTCUSDT",
            "sumOpenInterest": "20403.63700000",
            "sumOpenInterestValue": "150570784.07809979",
            "CMCCirculatingSupply": "165880.538",
            "timestamp": "1583127900000",
        },
        {
            "symbol": "BTCUSDT",
            "sumOpenInterest": "20401.36700000",
            "sumOpenInterestValue": "149940752.14464448",
            "timestamp": 1583128200000,
        },
    ]
    got = parse_open_interest("binance-usdm", BTC, rows, 7, period="5m")
    assert [(r.exchange_ts, r.open_interest, r.circulating_supply, r.recv_ts) for r in got] == [
        (1583127900000 * MS, 20403.637, 165880.538, 7),
        (1583128200000 * MS, 20401.367, None, 7),
    ]
    coin_m = [
        {
            "pair": "BTCUSD",
            "longShortRatio": 1.2,
            "longPosition": 0.5455,
            "shortPosition": 0.4545,
            "timestamp": 1583139600000,
        }
    ]
    (r,) = parse_long_short("binance-usdm", BTC, coin_m, 1, kind="top_position", period="1h")
    assert (r.long_short_ratio, r.long_share, r.short_share, r.period) == (1.2, 0.5455, 0.4545, "1h")
    delivery: dict[str, Any] = {
        "symbol": "BTCUSDT",
        "markPrice": "1.0",
        "indexPrice": "1.0",
        "estimatedSettlePrice": "1.0",
        "lastFundingRate": "0.00000000",
        "interestRate": "0.00000000",
        "nextFundingTime": 0,
        "time": 5,
    }
    (p,) = parse_premium_index("binance-usdm", BTC, delivery, 1)
    assert (p.next_funding_time, p.exchange_ts, p.last_funding_rate) == (None, 5 * MS, 0.0)
    with pytest.raises(ParseError, match="-1121"):
        parse_premium_index("binance-usdm", BTC, {"code": -1121, "msg": "Invalid symbol."}, 1)
    with pytest.raises(ParseError, match="not BTCUSDT"):
        parse_premium_index("binance-usdm", BTC, dict(delivery, symbol="ETHUSDT"), 1)
    with pytest.raises(ParseError, match="timestamp"):
        parse_open_interest("binance-usdm", BTC, [dict(rows[0], timestamp="soon")], 1, period="5m")
