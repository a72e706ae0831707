"""Binance venue parsers against real recorded payloads, field by field.

Every record is compared with one computed here straight from the JSON (``orjson`` dicts and
``float(text)``), an oracle written independently of the msgspec wire structs it checks. The
slices in ``tests/data/parse_*.ndjson`` are real frames, and the whole-file tests read the full
captures in ``tests/data`` (conftest's ``realdata`` fixture); origins in ``tests/data/PROVENANCE.md``.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from ingestd.errors import ParseError
from ingestd.records import (
    AggTrade,
    BookTicker,
    DepthDiff,
    DepthSnapshot,
    Kline,
    Liquidation,
    MarkPrice,
    MiniTicker,
    PartialDepth,
    Record,
    Ticker,
    Trade,
)
from ingestd.venues.binance.endpoints import stream_kind
from ingestd.venues.binance.parse import FrameParser, parse_depth_snapshot
from ingestd.venues.binance.symbols import Contract, ContractSet, parse_exchange_info

DATA = Path(__file__).resolve().parent / "data"
RECV = 1_723_161_255_000_000_000
"""recv_ts for sources that recorded none (crypto-msg-parser, nautilus, tiagosiebler)."""

VENUE = {"spot": "binance-spot", "usdm": "binance-usdm", "coinm": "binance-usdm"}
"""ingestd has no COIN-M venue: COIN-M payloads exercise the futures shapes under binance-usdm."""

ALL_MARKET = {
    "!ticker@arr": "ticker",
    "!miniTicker@arr": "miniTicker",
    "!markPrice@arr": "markPrice",
    "!bookTicker": "bookTicker",
    "!forceOrder@arr": "forceOrder",
}
QUOTES = ("USDT", "USD", "BTC", "ETH", "EUR")


def contract(venue: str, native: str) -> Contract:
    """A hand-made contract: ``BTCUSDT`` → ``BTC-USDT-PERP`` (USDⓈ-M) / ``BTC-USDT`` (spot)."""
    pair, _, tail = native.partition("_")
    quote = next(q for q in QUOTES if pair.endswith(q))
    base = pair[: -len(quote)]
    suffix = f"-{tail}" if tail and tail != "PERP" else ("-PERP" if venue == "binance-usdm" else "")
    return Contract(
        venue=venue,
        native=native,
        symbol=f"{base}-{quote}{suffix}",
        base=base,
        quote=quote,
        tick_size=0.01,
        price_precision=2,
        min_qty=0.001,
        step_size=0.001,
    )


def contract_set(venue: str, natives: set[str]) -> ContractSet:
    return ContractSet(venue, tuple(contract(venue, n) for n in sorted(natives)))


# -- the oracle: records computed directly from the JSON ------------------------------------


def ns(ms: int) -> int:
    return ms * 1_000_000


def opt_ns(d: dict[str, Any], key: str) -> int | None:
    return d[key] * 1_000_000 if key in d else None


def opt_f(d: dict[str, Any], key: str) -> float | None:
    return float(d[key]) if key in d else None


def levels(side: list[list[str]]) -> list[tuple[float, float]]:
    return [(float(p), float(q)) for p, q in side]


def expect_one(kind: str, venue: str, c: Contract, d: dict[str, Any], recv_ts: int) -> Record:
    """One record from one payload object, every field taken from ``d`` by hand."""
    base: dict[str, Any] = {"venue": venue, "symbol": c.symbol, "native": c.native, "recv_ts": recv_ts}
    if kind == "trade":
        return Trade(
            **base, exchange_ts=ns(d["E"]), transaction_ts=ns(d["T"]), trade_id=d["t"], price=float(d["p"]),
            qty=float(d["q"]), is_buyer_maker=d["m"], trade_type=d.get("X"),
        )  # fmt: skip
    if kind == "aggTrade":
        return AggTrade(
            **base, exchange_ts=ns(d["E"]), transaction_ts=ns(d["T"]), agg_id=d["a"],
            first_trade_id=d["f"], last_trade_id=d["l"], price=float(d["p"]), qty=float(d["q"]),
            is_buyer_maker=d["m"], normal_qty=opt_f(d, "nq"),
        )  # fmt: skip
    if kind == "bookTicker":
        return BookTicker(
            **base, exchange_ts=opt_ns(d, "E"), transaction_ts=opt_ns(d, "T"), update_id=d["u"],
            bid_price=float(d["b"]), bid_qty=float(d["B"]), ask_price=float(d["a"]), ask_qty=float(d["A"]),
        )  # fmt: skip
    if kind == "depth":
        return DepthDiff(
            **base, exchange_ts=ns(d["E"]), transaction_ts=opt_ns(d, "T"), first_update_id=d["U"],
            final_update_id=d["u"], prev_final_update_id=d.get("pu"), bids=levels(d["b"]),
            asks=levels(d["a"]),
        )  # fmt: skip
    if kind in ("depth5", "depth10", "depth20"):
        n = int(kind[5:])
        if "lastUpdateId" in d:  # spot shape
            return PartialDepth(
                **base, exchange_ts=None, depth=n, first_update_id=None, final_update_id=d["lastUpdateId"],
                prev_final_update_id=None, bids=levels(d["bids"]), asks=levels(d["asks"]),
            )  # fmt: skip
        return PartialDepth(
            **base, exchange_ts=ns(d["E"]), transaction_ts=opt_ns(d, "T"), depth=n, first_update_id=d["U"],
            final_update_id=d["u"], prev_final_update_id=d["pu"], bids=levels(d["b"]), asks=levels(d["a"]),
        )  # fmt: skip
    if kind.startswith("kline_"):
        k = d["k"]
        return Kline(
            **base, exchange_ts=ns(d["E"]), interval=k["i"], open_time=ns(k["t"]), close_time=ns(k["T"]),
            open=float(k["o"]), high=float(k["h"]), low=float(k["l"]), close=float(k["c"]),
            volume=float(k["v"]), quote_volume=float(k["q"]), trades=k["n"],
            taker_buy_volume=float(k["V"]), taker_buy_quote_volume=float(k["Q"]), closed=k["x"],
        )  # fmt: skip
    if kind == "markPrice":
        return MarkPrice(
            **base, exchange_ts=ns(d["E"]), mark_price=float(d["p"]), index_price=opt_f(d, "i"),
            estimated_settle_price=opt_f(d, "P"), funding_rate=opt_f(d, "r"),
            next_funding_time=ns(d["T"]) if d.get("T") else None, mark_price_avg=opt_f(d, "ap"),
        )  # fmt: skip
    if kind == "forceOrder":
        o = d["o"]
        return Liquidation(
            **base, exchange_ts=ns(d["E"]), transaction_ts=ns(o["T"]), side=o["S"], order_type=o["o"],
            time_in_force=o["f"], qty=float(o["q"]), price=float(o["p"]), avg_price=float(o["ap"]),
            status=o["X"], last_filled_qty=float(o["l"]), filled_qty=float(o["z"]),
        )  # fmt: skip
    if kind == "ticker":
        return Ticker(
            **base, exchange_ts=ns(d["E"]), price_change=float(d["p"]), price_change_pct=float(d["P"]),
            weighted_avg_price=float(d["w"]), last_price=float(d["c"]), last_qty=float(d["Q"]),
            open=float(d["o"]), high=float(d["h"]), low=float(d["l"]), volume=float(d["v"]),
            quote_volume=float(d["q"]), open_time=ns(d["O"]), close_time=ns(d["C"]),
            first_trade_id=d["F"], last_trade_id=d["L"], trades=d["n"], prev_close=opt_f(d, "x"),
            bid_price=opt_f(d, "b"), bid_qty=opt_f(d, "B"), ask_price=opt_f(d, "a"), ask_qty=opt_f(d, "A"),
        )  # fmt: skip
    if kind == "miniTicker":
        return MiniTicker(
            **base, exchange_ts=ns(d["E"]), close=float(d["c"]), open=float(d["o"]), high=float(d["h"]),
            low=float(d["l"]), volume=float(d["v"]), quote_volume=float(d["q"]),
        )  # fmt: skip
    raise AssertionError(f"oracle has no channel {kind}")


def expected(venue: str, cset: ContractSet, frame: dict[str, Any], recv_ts: int) -> list[Record]:
    stream, data = frame["stream"], frame["data"]
    if stream.startswith("!"):
        kind = ALL_MARKET[stream_kind(stream)]
        out = []
        for d in data if isinstance(data, list) else [data]:
            c = cset.get(d["o"]["s"] if kind == "forceOrder" else d["s"])
            if c is not None:
                out.append(expect_one(kind, venue, c, d, recv_ts))
        return out
    c = cset.get(stream.partition("@")[0].upper())
    assert c is not None
    return [expect_one(stream_kind(stream), venue, c, data, recv_ts)]


def assert_same(got: list[Record], want: list[Record]) -> None:
    assert [type(r) for r in got] == [type(r) for r in want]
    for g, w in zip(got, want, strict=True):
        assert msgspec.structs.asdict(g) == msgspec.structs.asdict(w)


# -- the real slices -------------------------------------------------------------------------


@functools.cache
def slices() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / "parse_frames.ndjson").read_text().splitlines()]


def natives_of(frame: dict[str, Any]) -> set[str]:
    stream, data = frame["stream"], frame["data"]
    if not stream.startswith("!"):
        return {stream.partition("@")[0].upper()}
    items = data if isinstance(data, list) else [data]
    return {d["o"]["s"] if d.get("e") == "forceOrder" else d["s"] for d in items}


@functools.cache
def parser_for(market: str) -> FrameParser:
    """One parser per market over every symbol the slices hold for it (as if all subscribed)."""
    natives: set[str] = set()
    for s in slices():
        if s["market"] == market:
            natives |= natives_of(orjson.loads(s["frame"]))
    venue = VENUE[market]
    return FrameParser(venue, contract_set(venue, natives))


def real(src: str, line: int | None) -> tuple[dict[str, Any], bytes, int]:
    """(decoded frame, exact bytes, recv_ts) of one slice."""
    for s in slices():
        if src in s["src"] and s["line"] == line:
            raw = s["frame"].encode()
            return orjson.loads(raw), raw, s["recv_ts"] or RECV
    raise LookupError(f"{src}:{line} not in parse_frames.ndjson")


IN_SCOPE = [s for s in slices() if s["market"] != "option"]  # options: test_unknown_stream_kind


@pytest.mark.parametrize("item", IN_SCOPE, ids=[f"{s['src'].split('/')[-1]}:{s['line']}" for s in IN_SCOPE])
def test_every_real_slice_field_by_field(item: dict[str, Any]) -> None:
    frame = orjson.loads(item["frame"])
    recv_ts = item["recv_ts"] or RECV
    p = parser_for(item["market"])
    for _ in range(2):  # first frame: slow path (envelope + Raw); second: cached one-pass route
        name, recs = p.parse(item["frame"].encode(), recv_ts)
        assert name == frame["stream"]
        assert_same(recs, expected(p.venue, p.contracts, frame, recv_ts))
    assert recs, "every slice names a contract in the set"


def test_channels_and_markets_covered() -> None:
    """The slices hold every channel in every market shape that exists in the corpus."""
    seen = {
        (s["market"], stream_kind(orjson.loads(s["frame"])["stream"]).lstrip("!").split("@")[0])
        for s in slices()
    }
    for market in ("spot", "usdm", "coinm"):
        for kind in ("trade", "aggTrade", "bookTicker", "depth", "depth20", "kline_1m", "ticker"):
            assert (market, kind) in seen
    for market in ("usdm", "coinm"):
        assert (market, "markPrice") in seen
    assert ("usdm", "forceOrder") in seen


# -- market quirks (docs/binance.md §8.3), spelled out -------------------------------------------------


def one(market: str, src: str, line: int | None) -> tuple[dict[str, Any], Record]:
    frame, raw, recv_ts = real(src, line)
    _, recs = parser_for(market).parse(raw, recv_ts)
    assert len(recs) == 1
    return frame["data"], recs[0]


def test_usdm_depth_diff_fields() -> None:
    d, r = one("usdm", "usdm_btcusdt", 1)
    assert isinstance(r, DepthDiff)
    assert (r.venue, r.symbol, r.native) == ("binance-usdm", "BTC-USDT-PERP", "BTCUSDT")
    assert r.exchange_ts == d["E"] * 1_000_000
    assert r.transaction_ts == d["T"] * 1_000_000
    assert r.recv_ts == 1723161255030314667
    assert (r.first_update_id, r.final_update_id, r.prev_final_update_id) == (d["U"], d["u"], d["pu"])
    assert r.bids == [(float(p), float(q)) for p, q in d["b"]]
    assert r.asks == [(float(p), float(q)) for p, q in d["a"]]
    assert (61510.9, 0.0) in r.bids  # "0.000" deletes the level


def test_spot_depth_diff_has_no_pu_nor_t() -> None:
    d, r = one("spot", "spot_btcusdt", 1)
    assert isinstance(r, DepthDiff)
    assert "pu" not in d
    assert "T" not in d
    assert r.prev_final_update_id is None
    assert r.transaction_ts is None
    assert r.exchange_ts == d["E"] * 1_000_000
    assert r.bids[0] == (float(d["b"][0][0]), float(d["b"][0][1]))


def test_spot_book_ticker_has_no_event_time() -> None:
    d, r = one("spot", "spot_btcusdt", 3)
    assert isinstance(r, BookTicker)
    assert set(d) == {"u", "s", "b", "B", "a", "A"}
    assert r.exchange_ts is None
    assert r.transaction_ts is None
    assert (r.update_id, r.bid_price, r.bid_qty) == (d["u"], float(d["b"]), float(d["B"]))
    assert (r.ask_price, r.ask_qty) == (float(d["a"]), float(d["A"]))


def test_coinm_book_ticker_key_order_and_ps() -> None:
    d, r = one("coinm", "cm_btcusd_perp", 4)
    assert next(iter(d)) == "u"
    assert d["ps"] == "BTCUSD"
    assert isinstance(r, BookTicker)
    assert r.exchange_ts == d["E"] * 1_000_000
    assert r.transaction_ts == d["T"] * 1_000_000
    assert r.native == "BTCUSD_PERP"
    assert r.symbol == "BTC-USD-PERP"


def test_trade_type_and_spot_order_ids() -> None:
    d, usdm = one("usdm", "usdm_btcusdt", 3)
    assert isinstance(usdm, Trade)
    assert usdm.trade_type == d["X"] == "MARKET"
    assert usdm.transaction_ts == d["T"] * 1_000_000
    d, spot = one("spot", "spot_btcusdt", 4)
    assert isinstance(spot, Trade)
    assert spot.trade_type is None
    assert d["M"] is True
    assert (spot.trade_id, spot.price, spot.qty, spot.is_buyer_maker) == (
        d["t"],
        float(d["p"]),
        float(d["q"]),
        d["m"],
    )
    d, old = one("spot", "ws_spot_trade.json", None)  # 2021: still has buyer/seller order ids b/a
    assert "b" in d
    assert "a" in d
    assert isinstance(old, Trade)
    assert old.trade_id == d["t"] == 705291099
    assert old.price == float(d["p"])


def test_partial_depth_spot_shape_takes_symbol_from_stream() -> None:
    d, r = one("spot", "crypto-msg-parser", 16)
    assert isinstance(r, PartialDepth)
    assert set(d) == {"lastUpdateId", "bids", "asks"}
    assert (r.native, r.depth, r.final_update_id) == ("ETHUSDT", 20, d["lastUpdateId"])
    assert r.first_update_id is None
    assert r.prev_final_update_id is None
    assert r.exchange_ts is None
    assert r.bids == [(float(p), float(q)) for p, q in d["bids"]]


def test_partial_depth_futures_pu_minus_one_and_empty_side() -> None:
    d, r = one("coinm", "crypto-msg-parser", 20)
    assert isinstance(r, PartialDepth)
    assert (r.depth, r.prev_final_update_id, r.bids) == (5, -1, [])
    assert r.first_update_id == r.final_update_id == d["u"]
    assert r.asks == [(8.44, 2.0)]


def test_mark_price_usdm_has_index_coinm_has_not() -> None:
    d, r = one("usdm", "crypto-msg-parser", 9)
    assert isinstance(r, MarkPrice)
    assert r.index_price == float(d["i"])
    assert r.estimated_settle_price == float(d["P"])
    assert r.funding_rate == float(d["r"])
    assert r.next_funding_time == d["T"] * 1_000_000
    assert r.transaction_ts is None  # markPrice T is the next funding time, not a trade time
    d, r = one("coinm", "crypto-msg-parser", 7)
    assert isinstance(r, MarkPrice)
    assert "i" not in d
    assert r.index_price is None
    assert r.mark_price == float(d["p"])


def test_ticker_spot_extras_absent_on_futures() -> None:
    d, spot = one("spot", "crypto-msg-parser", 27)
    assert isinstance(spot, Ticker)
    assert (spot.prev_close, spot.bid_price, spot.bid_qty) == (float(d["x"]), float(d["b"]), float(d["B"]))
    assert (spot.ask_price, spot.ask_qty) == (float(d["a"]), float(d["A"]))
    assert (spot.open_time, spot.close_time) == (d["O"] * 1_000_000, d["C"] * 1_000_000)
    assert (spot.first_trade_id, spot.last_trade_id, spot.trades) == (d["F"], d["L"], d["n"])
    _, fut = one("usdm", "crypto-msg-parser", 35)
    assert isinstance(fut, Ticker)
    assert (fut.prev_close, fut.bid_price, fut.bid_qty, fut.ask_price, fut.ask_qty) == (None,) * 5


def test_kline_month_and_minute_intervals() -> None:
    d, r = one("usdm", "crypto-msg-parser", 42)
    assert isinstance(r, Kline)
    assert r.interval == "1M"
    assert r.open_time == d["k"]["t"] * 1_000_000
    assert r.close_time == d["k"]["T"] * 1_000_000
    assert r.closed is False
    assert r.trades == d["k"]["n"]
    _, r = one("spot", "crypto-msg-parser", 38)
    assert isinstance(r, Kline)
    assert r.interval == "1m"


def test_liquidation_transaction_time_from_order() -> None:
    frame, raw, _ = real("tiagosiebler", 6)
    name, recs = parser_for("usdm").parse(raw, RECV)
    assert name == "!forceOrder@arr"  # one object per message, not an array
    (r,) = recs
    o = frame["data"]["o"]
    assert isinstance(r, Liquidation)
    assert (r.native, r.side, r.order_type, r.time_in_force, r.status) == (
        "IOTXUSDT",
        "SELL",
        "LIMIT",
        "IOC",
        "FILLED",
    )
    assert (r.qty, r.price, r.avg_price) == (float(o["q"]), float(o["p"]), float(o["ap"]))
    assert (r.last_filled_qty, r.filled_qty) == (float(o["l"]), float(o["z"]))
    assert r.transaction_ts == o["T"] * 1_000_000
    assert r.exchange_ts == frame["data"]["E"] * 1_000_000


def test_mini_ticker_from_real_ticker_values() -> None:
    """No miniTicker capture exists: its keys are projected out of a real spot 24hrTicker."""
    frame, _, _ = real("crypto-msg-parser", 27)
    t = frame["data"]
    mini = {"e": "24hrMiniTicker", **{k: t[k] for k in ("E", "s", "c", "o", "h", "l", "v", "q")}}
    wrapped = {"stream": "ethusdt@miniTicker", "data": mini}
    p = parser_for("spot")
    _, recs = p.parse(orjson.dumps(wrapped), RECV)
    assert_same(recs, expected(p.venue, p.contracts, wrapped, RECV))
    arr = {"stream": "!miniTicker@arr", "data": [mini, {**mini, "s": "NOTLISTED"}]}
    _, recs = p.parse(orjson.dumps(arr), RECV)
    assert_same(recs, expected(p.venue, p.contracts, wrapped, RECV))


def test_all_market_arrays_filter_symbols_outside_the_set() -> None:
    frame, raw, _ = real("crypto-msg-parser", 10)  # USD-M !markPrice@arr: BTCUSDT, ETHUSDT
    only_btc = FrameParser("binance-usdm", contract_set("binance-usdm", {"BTCUSDT"}))
    name, recs = only_btc.parse(raw, RECV)
    assert name == "!markPrice@arr"
    assert [r.native for r in recs] == ["BTCUSDT"]
    assert_same(recs, expected(only_btc.venue, only_btc.contracts, frame, RECV))
    _, coinm_raw, _ = real("crypto-msg-parser", 8)  # COIN-M elements on a USD-M set: all dropped
    assert only_btc.parse(coinm_raw, RECV) == ("!markPrice@arr", [])


def test_tolerates_unknown_keys_key_order_and_f_above_l() -> None:
    frame, _, _ = real("cryptofeed/2021-10_head/BINANCE_FUTURES", 22)  # CTKUSDT aggTrade
    d = frame["data"]
    shuffled = dict(reversed(list(d.items())))
    shuffled |= {"nq": "7", "st": 1, "zz": {"deep": [1, [2]]}, "f": d["l"] + 1}  # f > l happens live
    wrapped = {"stream": frame["stream"], "data": shuffled}
    p = parser_for("usdm")
    _, (r,) = p.parse(orjson.dumps(wrapped), RECV)
    assert isinstance(r, AggTrade)
    assert (r.normal_qty, r.first_trade_id, r.last_trade_id) == (7.0, d["l"] + 1, d["l"])
    assert_same([r], expected(p.venue, p.contracts, wrapped, RECV))


def test_str_frames_parse_like_bytes() -> None:
    _, raw, recv_ts = real("usdm_btcusdt", 2)
    p = parser_for("usdm")
    assert p.parse(raw.decode(), recv_ts) == p.parse(raw, recv_ts)


# -- control frames and errors -------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        b'{"result":null,"id":1}',
        b'{"result":["btcusdt@aggTrade","btcusdt@depth"],"id":3}',
        '{"result":true,"id":2}',
    ],
)
def test_control_replies(frame: bytes | str) -> None:
    assert parser_for("usdm").parse(frame, RECV) == ("", [])


@pytest.mark.parametrize(
    "frame",
    [
        b'{"e":"serverShutdown","E":1723161256299}',
        b'{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1723161256299}}',
    ],
)
def test_server_shutdown(frame: bytes) -> None:
    assert parser_for("spot").parse(frame, RECV) == ("!serverShutdown", [])


@pytest.mark.parametrize(
    "frame",
    [
        b'{"code":2,"msg":"Invalid request: unknown method","id":1}',
        b'{"error":{"code":2,"msg":"Invalid request: request ID must be an unsigned integer"},"id":null}',
    ],
)
def test_error_replies_raise(frame: bytes) -> None:
    with pytest.raises(ParseError, match="code=2") as err:
        parser_for("spot").parse(frame, RECV)
    assert err.value.stream is None


def mutated(src: str, line: int, change: Any) -> tuple[str, bytes]:
    """A real frame whose data is replaced by ``change(data)``."""
    frame, _, _ = real(src, line)
    return frame["stream"], orjson.dumps({"stream": frame["stream"], "data": change(frame["data"])})


def without(key: str) -> Any:
    return lambda d: {k: v for k, v in d.items() if k != key}


def replaced(**kv: Any) -> Any:
    return lambda d: {**d, **kv}


BROKEN = {
    "non-object data": (("usdm_btcusdt", 3, lambda d: [d]), r"Expected `object`, got `array`"),
    "missing s": (("usdm_btcusdt", 3, without("s")), r"missing required field `s`"),
    "missing E": (("usdm_btcusdt", 1, without("E")), r"missing required field `E`"),
    "missing b levels": (("usdm_btcusdt", 1, without("b")), r"missing required field `b`"),
    "missing pu (futures)": (("usdm_btcusdt", 1, without("pu")), r"missing required field `pu`"),
    "price as list": (("usdm_btcusdt", 3, replaced(p=["61800.30"])), r"Expected `float`, got `array`"),
    "price not a number": (("usdm_btcusdt", 2, replaced(b="61800.2x")), r"\$\.data\.b"),
    "level of 3 items": (
        ("spot_btcusdt", 1, lambda d: {**d, "b": [[*d["b"][0], "1"]]}),
        r"\$\.data\.b\[0\]",
    ),
    "id as float": (("usdm_btcusdt", 3, replaced(t=1.5)), r"Expected `int`"),
    "symbol mismatch": (("usdm_btcusdt", 3, replaced(s="ETHUSDT")), r"'ETHUSDT' does not match"),
    "spot partial depth without bids": (("crypto-msg-parser", 16, without("bids")), r"field `bids`"),
}


@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_malformed_payloads_raise_naming_the_stream(case: str) -> None:
    (src, line, change), message = BROKEN[case]
    stream, frame = mutated(src, line, change)
    market = next(s["market"] for s in slices() if src in s["src"] and s["line"] == line)
    _, good, _ = real(src, line)
    p = FrameParser(VENUE[market], parser_for(market).contracts)
    for warm in (False, True):  # the stream's first frame (slow path), then its cached route
        if warm:
            assert p.parse(good, RECV)[1]
        with pytest.raises(ParseError, match=message) as err:
            p.parse(frame, RECV)
        assert err.value.stream == stream
        assert str(err.value).startswith(f"{stream}: ")


def test_invalid_json_names_the_stream_when_it_can() -> None:
    _, raw, _ = real("usdm_btcusdt", 3)
    cut = raw[:-7]
    p = FrameParser("binance-usdm", parser_for("usdm").contracts)
    for warm in (False, True):
        if warm:
            assert p.parse(raw, RECV)[1]
        with pytest.raises(ParseError, match=r"malformed|truncated") as err:
            p.parse(cut, RECV)
        assert err.value.stream == "btcusdt@trade"
    for junk in (b"", b"not json", b"[1,2]", b'"x"', b"{}", b'{"stream":"btcusdt@trade"}', b'{"id":1}'):
        with pytest.raises(ParseError):
            parser_for("usdm").parse(junk, RECV)


@pytest.mark.parametrize(
    ("market", "src", "line", "stream"),
    [
        ("usdm", "crypto-msg-parser", 6, "BTCUSDT_C@TRADE_ALL"),  # real European-options frame
        ("spot", "crypto-msg-parser", 37, "BTCUSDT@TICKER_ALL"),
        ("spot", "crypto-msg-parser", 9, "btcusdt@markPrice"),  # a futures-only stream on spot
        ("usdm", "crypto-msg-parser", 42, "btcusdt@kline_7m"),  # no such interval
        ("usdm", "usdm_btcusdt", 1, "btcusdt@rpiDepth@500ms"),
        ("usdm", "usdm_btcusdt", 1, "!contractInfo"),
    ],
)
def test_unknown_stream_kind(market: str, src: str, line: int, stream: str) -> None:
    frame, _, _ = real(src, line)
    raw = orjson.dumps({"stream": stream, "data": frame["data"]})
    with pytest.raises(ParseError, match="unknown") as err:
        parser_for(market).parse(raw, RECV)
    assert err.value.stream == stream


def test_unknown_symbol_on_a_per_symbol_stream() -> None:
    _, raw, _ = real("usdm_ethusdt", 1)
    only_btc = FrameParser("binance-usdm", contract_set("binance-usdm", {"BTCUSDT"}))
    with pytest.raises(ParseError, match="'ETHUSDT' is not in the contract set") as err:
        only_btc.parse(raw, RECV)
    assert err.value.stream == "ethusdt@depth@0ms"


def test_unknown_venue_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown venue"):
        FrameParser("binance-coinm", contract_set("binance-usdm", {"BTCUSDT"}))


# -- REST depth snapshots ---------------------------------------------------------------------


def expect_snapshot(venue: str, c: Contract, d: dict[str, Any], recv_ts: int) -> DepthSnapshot:
    return DepthSnapshot(
        venue=venue, symbol=c.symbol, native=c.native, exchange_ts=opt_ns(d, "E"), recv_ts=recv_ts,
        transaction_ts=opt_ns(d, "T"), last_update_id=d["lastUpdateId"], bids=levels(d["bids"]),
        asks=levels(d["asks"]),
    )  # fmt: skip


SNAPSHOTS = [json.loads(line) for line in (DATA / "parse_snapshots.ndjson").read_text().splitlines()]


@pytest.mark.parametrize("item", SNAPSHOTS, ids=[f"{s['market']}:{s['native']}" for s in SNAPSHOTS])
def test_depth_snapshot_field_by_field(item: dict[str, Any]) -> None:
    venue = VENUE[item["market"]]
    c = contract(venue, item["native"])
    recv_ts = item["recv_ts"] or RECV
    got = parse_depth_snapshot(venue, c, item["body"], recv_ts)
    d = orjson.loads(item["body"])
    assert_same([got], [expect_snapshot(venue, c, d, recv_ts)])
    if item["market"] == "spot":
        assert got.exchange_ts is None
        assert got.transaction_ts is None
    else:
        assert got.exchange_ts == d["E"] * 1_000_000
        assert got.transaction_ts == d["T"] * 1_000_000


def test_depth_snapshot_errors() -> None:
    c = contract("binance-usdm", "BTCUSDT")
    with pytest.raises(ParseError, match="code=-1121") as err:
        parse_depth_snapshot("binance-usdm", c, b'{"code":-1121,"msg":"Invalid symbol."}', RECV)
    assert err.value.stream == "/fapi/v1/depth?symbol=BTCUSDT"
    cm = next(s for s in SNAPSHOTS if s["native"] == "BCHUSD_210924")
    with pytest.raises(ParseError, match="'BCHUSD_210924', not BTCUSDT"):
        parse_depth_snapshot("binance-usdm", c, cm["body"], RECV)
    body = orjson.loads(cm["body"])
    del body["asks"]
    with pytest.raises(ParseError, match="asks"):
        parse_depth_snapshot(
            "binance-usdm", contract("binance-usdm", "BCHUSD_210924"), orjson.dumps(body), RECV
        )


# -- whole recorded files (tests/data) ---------------------------------------------------------

HFT_COUNTS = {  # tests/data/PROVENANCE.md §1: diffs, bookTickers, trades
    "usdm_btcusdt": ("binance-usdm", "BTCUSDT", 6_551, 66_089, 21_313),
    "usdm_ethusdt": ("binance-usdm", "ETHUSDT", 6_586, 53_992, 14_076),
    "spot_btcusdt": ("binance-spot", "BTCUSDT", 3_451, 28_040, 9_757),
    "spot_ethusdt": ("binance-spot", "ETHUSDT", 3_434, 24_077, 6_106),
    "cm_btcusd_perp": ("binance-usdm", "BTCUSD_PERP", 26_847, 19_136, 2_286),
}


@pytest.mark.parametrize("name", list(HFT_COUNTS))
def test_whole_hftbacktest_file(realdata: Path, name: str) -> None:
    """Every line parses; counts match tests/data/PROVENANCE.md; every record equals the oracle's."""
    venue, native, n_depth, n_book, n_trade = HFT_COUNTS[name]
    c = contract(venue, native)
    p = FrameParser(venue, ContractSet(venue, (c,)))
    counts: Counter[str] = Counter()
    snapshots = 0
    with gzip.open(realdata / "hftbacktest" / f"{name}_20240808.gz", "rb") as f:
        for line in f:
            ts, _, body = line.rstrip(b"\n").partition(b" ")
            recv_ts = int(ts)
            if body.startswith(b'{"lastUpdateId"'):
                snap = parse_depth_snapshot(venue, c, body, recv_ts)
                assert_same([snap], [expect_snapshot(venue, c, orjson.loads(body), recv_ts)])
                snapshots += 1
                continue
            stream, recs = p.parse(body, recv_ts)
            counts[stream_kind(stream)] += len(recs)
            assert_same(recs, expected(venue, p.contracts, orjson.loads(body), recv_ts))
    assert snapshots == 1
    assert counts == {"depth": n_depth, "bookTicker": n_book, "trade": n_trade}


CRYPTOFEED_WS = {
    "2021-10_head/BINANCE.ws.1.0": "binance-spot",
    "2021-08-14/BINANCE.ws.1.0": "binance-spot",
    "2021-10_head/BINANCE_FUTURES.ws.1.0": "binance-usdm",
    "2021-04-17/BINANCE_FUTURES.ws.5.0": "binance-usdm",
    "2021-10_head/BINANCE_DELIVERY.ws.1.0": "binance-usdm",
}


@pytest.mark.parametrize("path", list(CRYPTOFEED_WS))
def test_whole_cryptofeed_capture(realdata: Path, path: str) -> None:
    """The contract set is what the capture subscribed (its URL); every frame matches the oracle."""
    venue = CRYPTOFEED_WS[path]
    lines = (realdata / "cryptofeed" / path).read_text().splitlines()
    url = lines[0].split(" <-> ")[0]
    natives = {s.partition("@")[0].upper() for s in url.split("streams=")[1].split("/")}
    p = FrameParser(venue, contract_set(venue, natives))
    frames = records = 0
    for line in lines[1:]:
        m = re.match(r"^([\d.]+): (.*)$", line)
        if m is None:
            continue
        recv_ts = int(Decimal(m.group(1)) * 1_000_000_000)
        _stream, recs = p.parse(m.group(2).encode(), recv_ts)
        assert_same(recs, expected(venue, p.contracts, orjson.loads(m.group(2)), recv_ts))
        frames, records = frames + 1, records + len(recs)
    assert records == frames > 200  # per-symbol streams only: one record per frame


def test_contracts_from_real_exchange_info(realdata: Path) -> None:
    """A ContractSet discovered from the real 2021 fapi exchangeInfo parses that day's capture."""
    lines = (realdata / "cryptofeed/2021-10_head/BINANCE_FUTURES.0").read_text().splitlines()
    body = next(line for line in lines if line.startswith("https://")).split(": ", 1)[1]  # `<url> -> <ts>: `
    cset = parse_exchange_info("binance-usdm", orjson.loads(body))
    assert len(cset) > 100
    p = FrameParser("binance-usdm", cset)
    frame, raw, recv_ts = real("cryptofeed/2021-10_head/BINANCE_FUTURES", 16)  # CTKUSDT kline
    _, recs = p.parse(raw, recv_ts)
    assert recs[0].symbol == "CTK-USDT-PERP"
    assert_same(recs, expected("binance-usdm", cset, frame, recv_ts))
