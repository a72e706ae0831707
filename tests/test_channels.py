"""The channel table: one spec per channel per venue, and every stage reads it (pure, no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

import ingestd.catalog
from ingestd.channels import Cadence, ChannelSpec, Source, content_digest, content_of
from ingestd.config import StreamSettings, load_settings
from ingestd.errors import ConfigError, ParseError
from ingestd.producers.connstate import stale_deadline
from ingestd.producers.plan import plan_connections
from ingestd.records import CHANNELS, MarkPrice, Trade
from ingestd.venues.binance.channels import (
    MARKET_ROUTE,
    PUBLIC_ROUTE,
    SELECTABLE,
    SPOT_CHANNELS,
    TABLES,
    USDM_CHANNELS,
    cadence_of,
    match_stream,
    route_for,
    stream_name,
)
from ingestd.venues.binance.endpoints import SPOT, USDM
from ingestd.venues.binance.symbols import Contract, ContractSet

BOOK_CHANNELS = {"book_ticker", "depth_diff", "partial_depth"}


def test_every_stored_channel_has_an_identity_on_every_venue_that_makes_it() -> None:
    """Gap, book, clock and poller records go to storage and NATS too: each needs an identity."""
    every = set(ingestd.catalog.RECORD_TYPES)
    assert set(USDM_CHANNELS) == every
    assert set(SPOT_CHANNELS) == every - {"mark_price", "liquidation"} - {
        s.channel for s in USDM_CHANNELS.values() if s.source is Source.POLL
    }
    for table in TABLES.values():
        for channel, spec in table.items():
            assert spec.record is ingestd.catalog.RECORD_TYPES[channel]
            assert spec.identity


def test_the_channels_a_user_may_ask_for_are_the_market_channels() -> None:
    assert set(SELECTABLE) == set(CHANNELS)
    assert set(USDM_CHANNELS.selectable) == set(CHANNELS)
    assert set(SPOT_CHANNELS.selectable) == set(CHANNELS) - {"mark_price", "liquidation"}


def test_routes_book_streams_to_public_and_the_rest_to_market() -> None:
    for spec in USDM_CHANNELS.streamed:
        assert spec.route == (PUBLIC_ROUTE if spec.channel in BOOK_CHANNELS else MARKET_ROUTE), spec.channel
    assert {spec.route for spec in SPOT_CHANNELS.streamed} == {""}
    assert route_for("btcusdt@depth@0ms") == route_for("!bookTicker") == PUBLIC_ROUTE
    assert route_for("btcusdt@kline_1h") == route_for("!markPrice@arr@1s") == MARKET_ROUTE
    # A stream the table lacks is not book data: Binance puts everything else on /market.
    assert route_for("btcusdt@compositeIndex") == MARKET_ROUTE
    assert route_for("btcusdt@depth@100ms", SPOT.name) == ""


def test_cadence_classes() -> None:
    cadence = {s.channel: s.cadence for s in USDM_CHANNELS.streamed}
    assert cadence == {
        "trade": Cadence.TRADE, "agg_trade": Cadence.TRADE, "kline": Cadence.TRADE,
        "ticker": Cadence.TRADE, "mini_ticker": Cadence.TRADE,
        "book_ticker": Cadence.BOOK, "depth_diff": Cadence.BOOK, "partial_depth": Cadence.BOOK,
        "mark_price": Cadence.BOOK, "liquidation": Cadence.EVENT,
    }  # fmt: skip
    assert all(s.cadence is None for s in USDM_CHANNELS.values() if s.source is not Source.STREAM)
    # All-market streams have their channel's cadence (readiness once matched by substring and
    # called `!bookTicker` quiet while the stale watchdog called it steady).
    assert cadence_of(USDM.name, "!bookTicker") is Cadence.BOOK
    assert cadence_of(USDM.name, "!markPrice@arr@1s") is Cadence.BOOK
    assert cadence_of(USDM.name, "!forceOrder@arr") is Cadence.EVENT
    assert cadence_of(USDM.name, "btcusdt@compositeIndex") is Cadence.TRADE  # unknown: quiet
    st = StreamSettings(stale_after_s=60.0)
    assert stale_deadline(("!bookTicker", "!ticker@arr"), st, USDM.name) == 60.0
    assert stale_deadline(("!ticker@arr",), st, USDM.name) == 600.0


def test_undocumented_streams_are_flagged() -> None:
    """Binance documents no ``@trade`` on USDⓈ-M (docs/binance.md); start-up can warn about it."""
    assert [s.channel for s in USDM_CHANNELS.values() if not s.documented] == ["trade"]
    assert all(s.documented for s in SPOT_CHANNELS.values())


@pytest.mark.parametrize("venue", [USDM.name, SPOT.name])
def test_every_template_resolves_back_to_its_spec(venue: str) -> None:
    for spec in TABLES[venue].streamed:
        name = stream_name(spec, "BTCUSDT", interval="4h", levels=10)
        match = match_stream(venue, name)
        assert match.spec is spec
        assert match.param == {"kline": "4h", "partial_depth": "10"}.get(spec.channel)
        assert match.depth == (10 if spec.channel == "partial_depth" else 0)
        if spec.all_market is not None:
            assert match_stream(venue, spec.all_market + "@1s").spec is spec


def test_unknown_stream_kinds_and_parameters() -> None:
    for name, message in (
        ("btcusdt@kline_2m", "unknown kline interval '2m'"),
        ("btcusdt@depth15@100ms", "unknown partial_depth levels '15'"),
        ("btcusdt@compositeIndex", "unknown stream kind 'compositeIndex' on binance-usdm"),
        ("!contractInfo", "unknown stream kind '!contractInfo' on binance-usdm"),
    ):
        with pytest.raises(ParseError, match=message) as err:
            match_stream(USDM.name, name)
        assert err.value.stream == name
    with pytest.raises(ParseError, match="'markPrice' on binance-spot"):
        match_stream(SPOT.name, "btcusdt@markPrice@1s")


def test_spot_specs_differ_where_the_payloads_do() -> None:
    assert USDM_CHANNELS["book_ticker"].event_time
    assert not SPOT_CHANNELS["book_ticker"].event_time
    assert not SPOT_CHANNELS["depth_snapshot"].event_time
    assert SPOT_CHANNELS["partial_depth"].symbol_of is None  # spot depth<N> names no symbol
    assert USDM_CHANNELS["partial_depth"].wire is not SPOT_CHANNELS["partial_depth"].wire
    for channel in ("trade", "agg_trade", "kline", "ticker"):
        assert USDM_CHANNELS[channel].wire is SPOT_CHANNELS[channel].wire


def test_config_and_planner_read_the_table() -> None:
    with pytest.raises(ConfigError, match="mark_price does not exist on binance-spot"):
        load_settings(environ={}, cli={"venue": "binance-spot", "channels": "trade,mark_price"})
    with pytest.raises(ConfigError, match="unknown channel 'gap'"):
        load_settings(environ={}, cli={"channels": "trade,gap"})  # stored, but not asked for
    with pytest.raises(ConfigError, match="pollers are USDⓈ-M only"):
        load_settings(environ={}, cli={"venue": "binance-spot", "pollers": {"open_interest_s": 60}})
    c = Contract(USDM.name, "BTCUSDT", "BTC-USDT-PERP", "BTC", "USDT", 0.1, 1, 0.001, 0.001)
    plans = plan_connections(USDM, ContractSet(USDM.name, (c,)), list(CHANNELS), StreamSettings())
    planned = {s for p in plans for s in p.streams}
    assert planned == {stream_name(s, "BTCUSDT", interval="1m", levels=20) for s in USDM_CHANNELS.streamed}
    for p in plans:
        assert {route_for(s) for s in p.streams} == {p.route}


def _trade(**kw: Any) -> Trade:
    base: dict[str, Any] = {"venue": USDM.name, "symbol": "BTC-USDT-PERP", "native": "BTCUSDT",
                            "exchange_ts": 5_000_000, "recv_ts": 1, "trade_id": 7, "price": 1.5, "qty": 2.0,
                            "is_buyer_maker": False}  # fmt: skip
    base.update(kw)
    return Trade(**base)


def test_content_is_everything_but_the_receive_time() -> None:
    a, b = _trade(), _trade(recv_ts=99)
    assert content_of(a) == content_of(b)
    assert content_digest(a) == content_digest(b)
    assert len(content_digest(a)) == 16
    assert content_digest(_trade(price=1.25)) != content_digest(a)
    assert len(content_of(a)) == len(Trade.__struct_fields__) - 1
    assert 1 not in content_of(a)  # recv_ts=1 is the only field with that value


def test_identity_keys() -> None:
    spec = USDM_CHANNELS["trade"]
    assert spec.message_key(_trade()) == "7"
    assert spec.order_key(_trade()) == 7
    assert spec.same(_trade(), _trade(recv_ts=5, price=9.0))  # trade id is the identity
    kline = USDM_CHANNELS["kline"]
    assert kline.identity == ("open_time", "exchange_ts")
    mp = USDM_CHANNELS["mark_price"]
    base: dict[str, Any] = {"venue": USDM.name, "symbol": "X", "native": "BTCUSDT", "exchange_ts": 5,
                            "recv_ts": 0, "mark_price": 1.0, "index_price": None, "funding_rate": None,
                            "estimated_settle_price": None, "next_funding_time": None}  # fmt: skip
    one, other = MarkPrice(**base), MarkPrice(**{**base, "mark_price": 2.0})
    assert mp.order_key(one) == mp.order_key(other) == 5
    assert not mp.same(one, other)
    assert mp.same(one, MarkPrice(**{**base, "recv_ts": 8}))
    assert mp.message_key(one).startswith("5:")
    assert mp.message_key(one) != mp.message_key(other)


def test_a_spec_is_checked_when_built() -> None:
    with pytest.raises(ValueError, match="has no field 'nope'"):
        ChannelSpec(channel="trade", record=Trade, source=Source.DERIVED, identity=("nope",))
    with pytest.raises(ValueError, match="is of 'trade'"):
        ChannelSpec(channel="trades", record=Trade, source=Source.DERIVED, identity=("trade_id",))
    with pytest.raises(ValueError, match="a stream has a template"):
        ChannelSpec(channel="trade", record=Trade, source=Source.STREAM, identity=("trade_id",))
