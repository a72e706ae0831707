"""Connection planning: routing, caps, symbol grouping, determinism, URLs (pure, no I/O)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import orjson
import pytest

from ingestd.config import StreamSettings
from ingestd.errors import ConfigError
from ingestd.producers.plan import ConnectionPlan, plan_connections
from ingestd.producers.streams import plan_connections as reexported
from ingestd.venues.binance.channels import route_for
from ingestd.venues.binance.endpoints import SPOT, USDM, stream_symbol
from ingestd.venues.binance.symbols import Contract, ContractSet, parse_exchange_info

ALL_USDM = ("trade", "agg_trade", "kline", "book_ticker", "depth_diff", "partial_depth", "mark_price",
            "liquidation", "ticker", "mini_ticker", "depth_snapshot")  # fmt: skip


def contracts(venue: str, natives: list[str]) -> ContractSet:
    suffix = "-PERP" if venue == USDM.name else ""
    return ContractSet(
        venue,
        tuple(
            Contract(venue, n, f"{n[:-4]}-USDT{suffix}", n[:-4], "USDT", 0.1, 1, 0.001, 0.001)
            for n in natives
        ),
    )


def settings(**kw: object) -> StreamSettings:
    return StreamSettings.model_validate(kw)


def test_usdm_routes_book_streams_to_public_and_the_rest_to_market() -> None:
    plans = plan_connections(USDM, contracts(USDM.name, ["BTCUSDT"]), ALL_USDM, settings())
    by_route = {p.route: p for p in plans}
    assert set(by_route) == {"/public", "/market"}
    assert by_route["/public"].streams == (
        "btcusdt@bookTicker",
        "btcusdt@depth@100ms",
        "btcusdt@depth20@100ms",
    )
    assert by_route["/market"].streams == (
        "btcusdt@trade", "btcusdt@aggTrade", "btcusdt@kline_1m", "btcusdt@markPrice@1s",
        "btcusdt@forceOrder", "btcusdt@ticker", "btcusdt@miniTicker",
    )  # fmt: skip
    assert [p.name for p in plans] == ["binance-usdm/market#0", "binance-usdm/public#0"]
    assert all(p.natives == ("BTCUSDT",) for p in plans)


def test_kline_interval_and_partial_depth_levels_come_from_settings() -> None:
    s = settings(kline_interval="5m", partial_depth_levels=5)
    plans = plan_connections(USDM, contracts(USDM.name, ["ETHUSDT"]), ["kline", "partial_depth"], s)
    streams = {st for p in plans for st in p.streams}
    assert streams == {"ethusdt@kline_5m", "ethusdt@depth5@100ms"}


def test_depth_snapshot_is_rest_only() -> None:
    assert plan_connections(USDM, contracts(USDM.name, ["BTCUSDT"]), ["depth_snapshot"], settings()) == []


def test_never_mixes_routes_and_respects_the_cap() -> None:
    natives = [f"S{i:03d}USDT" for i in range(57)]
    s = settings(max_streams_per_connection=10)
    plans = plan_connections(USDM, contracts(USDM.name, natives), ALL_USDM, s)
    seen: list[str] = []
    for p in plans:
        assert 1 <= len(p.streams) <= 10
        assert {route_for(st) for st in p.streams} == {p.route}
        seen.extend(p.streams)
    assert len(seen) == len(set(seen)) == 57 * 10  # 3 public + 7 market streams per symbol
    # Every symbol's streams of one route ride on one connection.
    for route in ("/public", "/market"):
        owner: dict[str, str] = {}
        for p in plans:
            if p.route != route:
                continue
            for st in p.streams:
                sym = stream_symbol(st)
                assert sym is not None
                assert owner.setdefault(sym, p.name) == p.name
            assert set(p.natives) == {(stream_symbol(st) or "").upper() for st in p.streams}


def test_symbols_are_spread_evenly_over_the_fewest_connections() -> None:
    natives = [f"S{i:02d}USDT" for i in range(7)]
    s = settings(max_streams_per_connection=6)
    plans = plan_connections(USDM, contracts(USDM.name, natives), ["book_ticker", "depth_diff"], s)
    # 2 streams per symbol, 3 symbols per connection -> 3 connections holding 3, 2, 2 symbols.
    assert [len(p.natives) for p in plans] == [3, 2, 2]
    assert [p.name for p in plans] == [f"binance-usdm/public#{i}" for i in range(3)]
    assert [n for p in plans for n in p.natives] == sorted(natives)


def test_a_symbol_with_more_streams_than_the_cap_is_split() -> None:
    s = settings(max_streams_per_connection=2)
    plans = plan_connections(USDM, contracts(USDM.name, ["BTCUSDT"]), ["trade", "agg_trade", "kline"], s)
    assert [p.streams for p in plans] == [("btcusdt@trade", "btcusdt@aggTrade"), ("btcusdt@kline_1m",)]


def test_deterministic_whatever_the_discovery_order() -> None:
    natives = [f"S{i:03d}USDT" for i in range(40)]
    s = settings(max_streams_per_connection=7)
    first = plan_connections(USDM, contracts(USDM.name, natives), ALL_USDM, s)
    for seed in range(5):
        shuffled = natives[:]
        random.Random(seed).shuffle(shuffled)
        assert plan_connections(USDM, contracts(USDM.name, shuffled), ALL_USDM, s) == first
    assert reexported is plan_connections


def test_spot_uses_plain_stream_path() -> None:
    plans = plan_connections(
        SPOT, contracts(SPOT.name, ["BTCUSDT", "ETHUSDT"]), ["trade", "book_ticker"], settings()
    )
    assert len(plans) == 1
    p = plans[0]
    assert (p.name, p.route, p.path) == ("binance-spot/stream#0", "", "/stream")
    assert p.url(SPOT.ws_url) == (
        "wss://stream.binance.com:9443/stream?streams="
        "btcusdt@trade/btcusdt@bookTicker/ethusdt@trade/ethusdt@bookTicker"
    )
    assert p.source(SPOT.ws_url) == "/stream"


def test_usdm_urls_carry_the_route() -> None:
    plans = plan_connections(USDM, contracts(USDM.name, ["BTCUSDT"]), ["trade", "depth_diff"], settings())
    urls = sorted(p.url(USDM.ws_url) for p in plans)
    assert urls == [
        "wss://fstream.binance.com/market/stream?streams=btcusdt@trade",
        "wss://fstream.binance.com/public/stream?streams=btcusdt@depth@100ms",
    ]
    public = next(p for p in plans if p.route == "/public")
    assert public.source("ws://127.0.0.1:8080/") == "/public/stream"
    assert public.source("ws://127.0.0.1:8080/venue") == "/venue/public/stream"
    assert (
        public.url("ws://127.0.0.1:8080/") == "ws://127.0.0.1:8080/public/stream?streams=btcusdt@depth@100ms"
    )


@pytest.mark.parametrize(("venue", "channel"), [(SPOT, "mark_price"), (SPOT, "liquidation"), (USDM, "nope")])
def test_channels_without_a_stream_are_config_errors(venue: object, channel: str) -> None:
    assert venue in (SPOT, USDM)
    spec = SPOT if venue is SPOT else USDM
    with pytest.raises(ConfigError, match=channel):
        plan_connections(spec, contracts(spec.name, ["BTCUSDT"]), ["trade", channel], settings())


def test_plan_is_a_frozen_value() -> None:
    p = ConnectionPlan("binance-usdm/public#0", "/public", ("btcusdt@bookTicker",), ("BTCUSDT",))
    with pytest.raises(AttributeError):
        p.name = "x"  # type: ignore[misc]


def test_real_exchange_info_is_planned_completely(realdata: Path) -> None:
    """Every perpetual of a real USDⓈ-M exchangeInfo (cryptofeed capture) gets its streams."""
    text = (realdata / "cryptofeed" / "2021-10_head" / "BINANCE_FUTURES.0").read_text(encoding="utf-8")
    matches = [m for line in text.splitlines() if (m := re.match(r"^(\S+) -> ([\d.]+): (.*)$", line))]
    assert len(matches) == 1
    match = matches[0]
    cs = parse_exchange_info(USDM.name, orjson.loads(match.group(3)))
    assert len(cs) == 119  # tests/data/PROVENANCE.md: 119 PERPETUAL (all TRADING in this capture)
    chans = ["trade", "agg_trade", "book_ticker", "depth_diff", "depth_snapshot"]
    plans = plan_connections(USDM, cs, chans, settings())
    public = [p for p in plans if p.route == "/public"]
    market = [p for p in plans if p.route == "/market"]
    # 119 symbols x 2 streams per route, 200 per connection -> 100 symbols fit -> 2 connections each.
    assert [len(p.natives) for p in public] == [60, 59]
    assert [len(p.natives) for p in market] == [60, 59]
    planned = {st for p in plans for st in p.streams}
    expected = {
        f"{c.native.lower()}@{k}" for c in cs for k in ("trade", "aggTrade", "bookTicker", "depth@100ms")
    }
    assert planned == expected
    assert "btcusdt@bookTicker" in public[0].streams
