"""``ingestd collect`` against the sim: every endpoint's file, its metadata, metrics.json, Parquet,
and the rolling-window ticker stream, compared with the real captures the sim replays.

The sim holds the bundled USDⓈ-M BTCUSDT capture and the spot BTCUSDT trades of the same five
minutes (tests/data/spot_btcusdt_20240808_trades.gz), so trades, klines, depth and best bid/ask in
the collected files can be checked field by field against the recorded payloads.
"""

from __future__ import annotations

import argparse
import gzip
import io
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pyarrow.parquet as pq
import pytest

from ingestd.collect.cli import add_arguments, run
from ingestd.collect.endpoints import ENDPOINTS, KLINE_COLUMNS, endpoint, request_weight
from ingestd.collect.output import CallResult, count_items, payload_table, records_table
from ingestd.collect.runner import CollectOptions, Progress
from ingestd.sim import Capture, SimVenue, load_capture

ROOT = Path(__file__).resolve().parents[1]
SPOT_SLICE = ROOT / "tests" / "data" / "spot_btcusdt_20240808_trades.gz"
DOC_KEYS = {"retrieved_at", "endpoint", "params", "elapsed_s", "used_weight", "payload"}


def _payloads(path: Path, kind: str) -> list[dict[str, Any]]:
    """``data`` of every ``btcusdt@<kind>`` line, or the REST snapshot bodies (``snapshot``)."""
    out = []
    marker = b'"stream":"btcusdt@' + kind.encode() + b'"'
    with gzip.open(path, "rb") as fh:
        for line in fh:
            body = line.partition(b" ")[2]
            if kind == "snapshot" and body.startswith(b'{"lastUpdateId"'):
                out.append(orjson.loads(body))
            elif marker in body[:60]:
                out.append(orjson.loads(body)["data"])
    return out


@pytest.fixture(scope="module")
def captures(bundled_capture: Path) -> list[Capture]:
    return [load_capture(bundled_capture), load_capture(SPOT_SLICE)]


@pytest.fixture(scope="module")
def recorded(bundled_capture: Path) -> dict[str, Any]:
    by_time = lambda d: (d["T"], d["t"])  # noqa: E731 - a sort key, named for reuse
    return {
        "futures_trades": sorted(_payloads(bundled_capture, "trade"), key=by_time),
        "spot_trades": sorted(_payloads(SPOT_SLICE, "trade"), key=by_time),
        "futures_book": _payloads(bundled_capture, "bookTicker")[-1],
        "spot_book": _payloads(SPOT_SLICE, "bookTicker")[-1],
        "futures_snapshot": _payloads(bundled_capture, "snapshot")[0],
        "spot_snapshot": _payloads(SPOT_SLICE, "snapshot")[0],
    }


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def _doc(out: Path, market: str, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads((out / market / f"{name}.json").read_bytes())
    return doc


def _minute_bars(trades: list[dict[str, Any]]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    bars: dict[int, list[dict[str, Any]]] = {}
    for t in trades:
        bars.setdefault(t["T"] // 60_000 * 60_000, []).append(t)
    yield from sorted(bars.items())


def _check_trades(payload: list[dict[str, Any]], trades: list[dict[str, Any]], spot: bool) -> None:
    assert len(payload) == 500
    for row, t in zip(payload, trades[-500:], strict=True):
        assert (row["id"], row["price"], row["qty"], row["time"], row["isBuyerMaker"]) == (
            t["t"],
            t["p"],
            t["q"],
            t["T"],
            t["m"],
        )
        assert float(row["quoteQty"]) == pytest.approx(float(t["p"]) * float(t["q"]), rel=1e-12)
        assert row["isBestMatch" if spot else "isRPITrade"] is spot


def _check_klines(payload: list[list[Any]], trades: list[dict[str, Any]]) -> None:
    bars = list(_minute_bars(trades))
    assert [r[0] for r in payload] == [t for t, _ in bars]
    for row, (opens, group) in zip(payload, bars, strict=True):
        prices = [float(t["p"]) for t in group]
        assert row[6] == opens + 59_999
        assert (float(row[1]), float(row[2]), float(row[3]), float(row[4])) == (
            prices[0],
            max(prices),
            min(prices),
            prices[-1],
        )
        assert float(row[5]) == pytest.approx(sum(float(t["q"]) for t in group), abs=1e-6)
        assert row[8] == len(group)
        taker_buy = sum(float(t["q"]) for t in group if not t["m"])
        assert float(row[9]) == pytest.approx(taker_buy, abs=1e-6)


@pytest.mark.asyncio
async def test_collect_writes_every_endpoint_and_the_ticker_stream(
    captures: list[Capture],
    recorded: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("INGESTD_API_KEY", raising=False)
    out = tmp_path / "collect"
    async with SimVenue(captures) as sim:
        code = await run(
            _args("--out", str(out), "--rest-url", sim.rest_url, "--ws-url", sim.ws_url, "--ws-seconds", "3")
        )
        rest = sim.rest_url
    printed = capsys.readouterr().out
    assert code == 0, printed
    values = CollectOptions().values()
    metrics = orjson.loads((out / "metrics.json").read_bytes())
    calls = metrics["calls"]
    assert [(c["market"], c["name"]) for c in calls] == [(e.market, e.name) for e in ENDPOINTS]
    used: dict[str, int] = {"spot": 0, "futures": 0}
    lines = printed.splitlines()
    for i, (ep, call) in enumerate(zip(ENDPOINTS, calls, strict=True), 1):
        query = ep.query(values)
        assert call["params"] == query
        assert call["endpoint"] == rest + ep.path
        assert call["weight"] == ep.weight_of(query)
        assert any(
            line.startswith(f"[{i:>2}/{len(ENDPOINTS)}]") and f"{ep.market}/{ep.name}" in line
            for line in lines
        )
        if ep.auth == "required":  # futures historicalTrades: no INGESTD_API_KEY here
            assert call["status"] == "skipped"
            assert not call["ok"]
            assert "INGESTD_API_KEY" in call["error"]
            assert not (out / ep.market / f"{ep.name}.json").exists()
            continue
        assert (call["status"], call["ok"]) == ("ok", True), call
        doc = _doc(out, ep.market, ep.name)
        assert set(doc) == DOC_KEYS
        assert doc["endpoint"] == rest + ep.path
        assert doc["params"] == query
        assert datetime.fromisoformat(doc["retrieved_at"]).year >= 2024
        assert doc["elapsed_s"] > 0
        assert call["latency_s"] == pytest.approx(doc["elapsed_s"], abs=1e-6)
        # The sim meters spot and futures weight apart, like Binance's two hosts: the header is the
        # running sum of the documented weights of this run's calls.
        used[ep.market] += call["weight"]
        assert doc["used_weight"] == call["used_weight"] == used[ep.market], ep.name
        assert call["bytes"] == len(orjson.dumps(doc["payload"]))
        assert call["items"] == count_items(doc["payload"])
        assert call["file"] == f"{ep.market}/{ep.name}.json"
        if ep.table is None:
            assert call["parquet"] is None
            continue
        table = pq.read_table(out / call["parquet"])
        rows = doc["payload"] if isinstance(doc["payload"], list) else [doc["payload"]]
        assert table.num_rows == call["rows"] == len(rows) > 0, ep.name
        if ep.table == "klines":
            assert table.column_names == [n for n, _ in KLINE_COLUMNS]
            assert table.column("close").to_pylist() == [float(r[4]) for r in rows]
            assert table.column("open_time").to_pylist() == [r[0] for r in rows]

    payload = {
        (e.market, e.name): _doc(out, e.market, e.name)["payload"] for e in ENDPOINTS if e.auth != "required"
    }
    # Real data, field by field: trades, klines, depth, best bid/ask, last price.
    _check_trades(payload["futures", "trades"], recorded["futures_trades"], spot=False)
    _check_trades(payload["spot", "trades"], recorded["spot_trades"], spot=True)
    _check_klines(payload["futures", "klines"], recorded["futures_trades"])
    _check_klines(payload["spot", "klines"], recorded["spot_trades"])
    assert payload["spot", "uiKlines"] == payload["spot", "klines"]
    assert payload["futures", "continuousKlines"] == payload["futures", "klines"]
    for market in ("spot", "futures"):
        snap = recorded[f"{market}_snapshot"]
        depth = payload[market, "depth"]
        assert depth["lastUpdateId"] == snap["lastUpdateId"]
        assert (depth["bids"], depth["asks"]) == (snap["bids"][:100], snap["asks"][:100])
        book = recorded[f"{market}_book"]
        bt = payload[market, "ticker_bookTicker"]
        assert (bt["bidPrice"], bt["bidQty"], bt["askPrice"], bt["askQty"]) == (
            book["b"],
            book["B"],
            book["a"],
            book["A"],
        )
        assert payload[market, "ticker_price"]["price"] == recorded[f"{market}_trades"][-1]["p"]
    assert payload["futures", "ticker_bookTicker"]["lastUpdateId"] == recorded["futures_book"]["u"]
    agg = pq.read_table(out / "spot" / "aggTrades.parquet").to_pylist()
    spot_ids = {t["t"]: t for t in recorded["spot_trades"]}
    for row in agg:
        first = spot_ids[row["first_trade_id"]]
        assert (row["price"], row["time"], row["is_buyer_maker"]) == (
            float(first["p"]),
            first["T"],
            first["m"],
        )
        span = range(row["first_trade_id"], row["last_trade_id"] + 1)
        assert row["qty"] == pytest.approx(sum(float(spot_ids[t]["q"]) for t in span), abs=1e-9)
    funding = pq.read_table(out / "futures" / "fundingRate.parquet")
    assert funding.schema.field("fundingTime").type == "int64"
    assert funding.column("fundingRate").to_pylist() == [
        float(r["fundingRate"]) for r in payload["futures", "fundingRate"]
    ]

    # The rolling-window ticker stream: every frame checked against the trades it summarises.
    ws = metrics["ws"]
    assert ws["ok"]
    assert ws["stream"] == "btcusdt@ticker_1h"
    assert ws["seconds"] == 3.0
    doc = orjson.loads((out / "spot" / "ws_ticker_1h.json").read_bytes())
    assert set(doc) == DOC_KEYS
    assert doc["endpoint"] == sim.ws_url + "/stream?streams=btcusdt@ticker_1h"
    frames = doc["payload"]
    assert len(frames) == ws["frames"] > 0
    trades = recorded["spot_trades"]
    for f in frames:
        d = f["data"]
        assert f["latency_ms"] == pytest.approx(f["recv_ts"] / 1e6 - d["E"], abs=1e-3)
        assert (d["e"], d["s"], d["C"]) == ("1hTicker", "BTCUSDT", d["E"])
        assert d["O"] == (d["E"] - 3_600_000) // 60_000 * 60_000
        inside = [t for t in trades if d["O"] <= t["T"] <= d["E"]]
        assert (d["n"], d["F"], d["L"]) == (len(inside), inside[0]["t"], inside[-1]["t"])
        assert (float(d["o"]), float(d["c"])) == (float(inside[0]["p"]), float(inside[-1]["p"]))
        assert float(d["h"]) == max(float(t["p"]) for t in inside)
        assert float(d["v"]) == pytest.approx(sum(float(t["q"]) for t in inside), abs=1e-6)
    stream_table = pq.read_table(out / "spot" / "ws_ticker_1h.parquet")
    assert stream_table.num_rows == len(frames)
    assert stream_table.column("last_price").to_pylist() == [float(f["data"]["c"]) for f in frames]
    assert stream_table.column("event_time").to_pylist() == [f["data"]["E"] for f in frames]
    assert metrics["summary"] == {"ok": len(ENDPOINTS) - 1, "failed": 0, "skipped": 1, "ws_ok": True}
    assert printed.rstrip().endswith(f"{len(ENDPOINTS)} ok, 0 failed, 1 skipped")


@pytest.mark.asyncio
async def test_failing_endpoints_are_recorded_and_the_run_goes_on(
    captures: list[Capture],
    recorded: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INGESTD_API_KEY", "test-key")
    out = tmp_path / "collect"
    async with SimVenue(captures) as sim:
        sim.faults.rest_error("/fapi/v1/fundingInfo", 500, count=None)
        sim.faults.rest_bad_json("/api/v3/avgPrice")
        code = await run(
            _args(
                "--out",
                str(out),
                "--rest-url",
                sim.rest_url,
                "--ws-url",
                sim.ws_url,
                "--retries",
                "1",
                "--composite-index",
                "BTCUSDT",
            )
        )
        requests = sim.stats().rest_requests
        async with aiohttp.ClientSession() as http:
            # Without a key the sim answers historicalTrades like Binance does.
            async with http.get(
                sim.rest_url + "/fapi/v1/historicalTrades", params={"symbol": "BTCUSDT"}
            ) as r:
                assert (r.status, await r.json()) == (401, {"code": -2014, "msg": "API-key format invalid."})
            async with http.get(
                sim.rest_url + "/fapi/v1/klines", params={"symbol": "BTCUSDT", "interval": "1s"}
            ) as r:
                assert (r.status, (await r.json())["code"]) == (400, -1120)
            async with http.get(sim.rest_url + "/api/v3/trades", params={"symbol": "ETHUSDT"}) as r:
                assert (r.status, (await r.json())["code"]) == (400, -1121)
    printed = capsys.readouterr().out
    assert code == 1
    assert requests["/fapi/v1/fundingInfo"] == 2  # first try + one retry, then recorded as failed
    metrics = orjson.loads((out / "metrics.json").read_bytes())
    by_name = {(c["market"], c["name"]): c for c in metrics["calls"]}
    failed = {k for k, c in by_name.items() if c["status"] != "ok"}
    assert failed == {("futures", "fundingInfo"), ("spot", "avgPrice")}
    info = by_name["futures", "fundingInfo"]
    assert (info["ok"], info["http_status"], info["file"]) == (False, 500, None)
    assert "HTTP 500" in info["error"]
    assert "-1000" in info["error"]
    avg = by_name["spot", "avgPrice"]
    assert (avg["ok"], avg["http_status"]) == (False, 200)
    assert avg["error"].startswith("bad JSON")
    assert not (out / "futures" / "fundingInfo.json").exists()
    assert not (out / "spot" / "avgPrice.json").exists()
    assert "FAIL  futures/fundingInfo" in printed
    assert "FAIL  spot/avgPrice" in printed
    assert metrics["summary"] == {"ok": len(ENDPOINTS) - 2, "failed": 2, "skipped": 0, "ws_ok": None}
    # Everything after the failures was still fetched; the API key opened historicalTrades.
    hist = _doc(out, "futures", "historicalTrades")["payload"]
    _check_trades(hist, recorded["futures_trades"], spot=False)
    index = by_name["futures", "indexInfo"]
    assert index["ok"]
    assert index["params"] == {}
    assert "BTCUSDT rejected" in index["note"]
    assert [e["symbol"] for e in _doc(out, "futures", "indexInfo")["payload"]] == ["DEFIUSDT"]


def test_request_weights_follow_binance_md() -> None:
    assert request_weight("/api/v3/depth", {"symbol": "X", "limit": "5000"}) == 250
    assert request_weight("/api/v3/depth", {"symbol": "X", "limit": "101"}) == 25
    assert request_weight("/fapi/v1/depth", {"symbol": "X", "limit": "1000"}) == 20
    assert request_weight("/fapi/v1/depth", {"symbol": "X"}) == 10
    assert [request_weight("/fapi/v1/klines", {"limit": str(n)}) for n in (99, 100, 500, 1000, 1001)] == [
        1,
        2,
        5,
        5,
        10,
    ]
    assert request_weight("/api/v3/ticker/24hr", {}) == 80
    assert request_weight("/api/v3/ticker/24hr", {"symbol": "BTCUSDT"}) == 2
    assert request_weight("/api/v3/ticker", {"symbols": '["A","B","C"]'}) == 12
    assert request_weight("/fapi/v1/premiumIndex", {}) == 10
    assert request_weight("/fapi/v1/assetIndex", {}) == 10
    assert request_weight("/futures/data/openInterestHist", {"symbol": "X"}) == 0
    assert request_weight("/api/v3/exchangeInfo", {}) == 20
    assert endpoint("futures", "historicalTrades").auth == "required"
    assert {e.auth for e in ENDPOINTS if "topLongShort" in e.name} == {"optional"}
    names = [(e.market, e.name) for e in ENDPOINTS]
    assert len(names) == len(set(names)) == 42


def test_parquet_tables_from_real_payloads(realdata: Path) -> None:
    nautilus = realdata / "nautilus_trader"
    klines = orjson.loads((nautilus / "http_spot_market_klines.json").read_bytes())
    table = payload_table("klines", klines)
    assert table is not None
    assert table.num_rows == len(klines)
    for row, k in zip(table.to_pylist(), klines, strict=True):
        assert (row["open_time"], row["close_time"], row["trades"]) == (k[0], k[6], k[8])
        assert (row["open"], row["high"], row["low"], row["close"], row["volume"]) == tuple(
            map(float, k[1:6])
        )
        assert (row["quote_volume"], row["taker_buy_volume"], row["taker_buy_quote_volume"]) == tuple(
            map(float, (k[7], k[9], k[10]))
        )
    aggs = orjson.loads((nautilus / "http_spot_market_agg_trades.json").read_bytes())
    table = payload_table("records", aggs, name="aggTrades")
    assert table is not None
    assert table.column_names == [
        "agg_id",
        "price",
        "qty",
        "first_trade_id",
        "last_trade_id",
        "time",
        "is_buyer_maker",
        "is_best_match",
    ]
    for row, a in zip(table.to_pylist(), aggs, strict=True):
        assert row == {
            "agg_id": a["a"],
            "price": float(a["p"]),
            "qty": float(a["q"]),
            "first_trade_id": a["f"],
            "last_trade_id": a["l"],
            "time": a["T"],
            "is_buyer_maker": a["m"],
            "is_best_match": a["M"],
        }
    trades = orjson.loads((nautilus / "http_spot_market_trades.json").read_bytes())
    table = payload_table("records", trades)
    assert table is not None
    assert table.schema.field("time").type == "int64"
    assert table.schema.field("price").type == "double"
    assert table.column("id").to_pylist() == [t["id"] for t in trades]
    # /futures/data timestamps come as strings in Binance's doc examples and as numbers live.
    mixed = records_table(
        [
            {"timestamp": "1583127900000", "sumOpenInterest": "20403.637"},
            {"timestamp": 1583128200000, "sumOpenInterest": "20401.36"},
        ]
    )
    assert mixed is not None
    assert mixed.column("timestamp").to_pylist() == [1583127900000, 1583128200000]
    assert mixed.column("sumOpenInterest").to_pylist() == [20403.637, 20401.36]
    assert payload_table("records", {"code": -1121, "msg": "Invalid symbol."}) is not None
    assert payload_table("klines", {"code": -1121}) is None
    assert payload_table("records", []) is None


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    ok = CallResult(
        "spot", "ping", "u", {}, "ok", ok=True, http_status=200, latency_s=0.002, items=1, bytes=2
    )
    bad = CallResult("futures", "fundingInfo", "u", {}, "error", error="GET u: HTTP 500")
    tty, plain = Tty(), io.StringIO()
    for stream in (tty, plain):
        p = Progress(stream, 2)
        for r in (ok, bad):
            p.start(f"{r.market}/{r.name}")
            p.finish(r)
    assert "\r[" in tty.getvalue()
    assert "2/2" in tty.getvalue()
    assert "FAIL  futures/fundingInfo" in tty.getvalue()
    assert plain.getvalue().splitlines() == [
        "[ 1/2] ok    spot/ping                            200     2.0 ms  used     -  1 items  2 B",
        "[ 2/2] FAIL  futures/fundingInfo                  GET u: HTTP 500",
    ]
