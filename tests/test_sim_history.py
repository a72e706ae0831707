"""The sim's trade history and venue clock: aggTrade streams (recorded or derived from the real
trades), REST ``aggTrades`` answering exactly what the stream published, the ``live`` replay that
goes on while a client is away, the ``drop`` outage fault, and listings that change during a run.

Ground truth is the real capture bundled with the package (hftbacktest USDⓈ-M BTCUSDT,
2024-08-08: 21,313 trades), the spot trades of the same minutes (tests/data) and the real
cryptofeed aggTrade frames in tests/data/parse_frames.ndjson.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from ingestd.errors import ConfigError
from ingestd.sim import BUNDLED_CAPTURE, SimVenue, load_capture
from ingestd.sim.agg_trades import rest_row, with_agg_trades
from ingestd.sim.cli import main as sim_main
from ingestd.sim.schedule import ListingChange, parse_change
from ingestd.venues.binance.symbols import parse_exchange_info
from tests.e2e import capture_frames, capture_lines
from tests.ops import wait_for

DATA = Path(__file__).resolve().parent / "data"
SPOT_TRADES = DATA / "spot_btcusdt_20240808_trades.gz"
AGG = "/market/stream?streams=btcusdt@aggTrade"


@asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def frames(ws: aiohttp.ClientWebSocketResponse, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """The next ``n`` data payloads."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, msg.data)
            out.append(orjson.loads(msg.data)["data"])
    return out


async def get(http: aiohttp.ClientSession, url: str, **params: Any) -> tuple[int, Any, dict[str, str]]:
    async with http.get(url, params={k: str(v) for k, v in params.items()}) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def until(cond: Any, what: str, timeout: float = 30.0) -> None:
    """Wait for an async condition (polled; a generous overall timeout, not a timing window)."""
    await wait_for(cond, timeout, what)


def derived(path: Path, stream: str) -> list[tuple[int, dict[str, Any]]]:
    """``(recv_ns, payload)`` of the derived ``stream`` of the capture at ``path``."""
    cap = with_agg_trades(load_capture(path))
    sid = cap.streams.index(stream)
    return [
        (ts, orjson.loads(f)["data"])
        for ts, s, f in zip(cap.ts, cap.sid, cap.frames, strict=True)
        if s == sid
    ]


# --------------------------------------------------------------------------- derived streams


@pytest.mark.parametrize(
    ("path", "stream", "market"),
    [(BUNDLED_CAPTURE, "btcusdt@aggTrade", "futures"), (SPOT_TRADES, "btcusdt@aggTrade", "spot")],
)
def test_derived_agg_trades_are_the_real_trades_aggregated(path: Path, stream: str, market: str) -> None:
    trades = {t["t"]: t for t in capture_frames(path)["trade"]}
    recv_of = {}
    for ts, msg in capture_lines(path):
        if msg.get("stream", "").endswith("@trade"):
            recv_of[msg["data"]["t"]] = ts
    aggs = derived(path, stream)
    assert aggs, "no aggTrade derived"
    covered: list[int] = []
    for k, (recv, a) in enumerate(aggs):
        keys = ["e", "E", "a", "s", "p", "q", "nq", "f", "l", "T", "m"]
        if market == "spot":
            keys = ["e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"]
        assert list(a) == keys
        assert a["a"] == aggs[0][1]["a"] + k  # aggregate ids are contiguous
        fills = [trades[t] for t in range(a["f"], a["l"] + 1)]
        assert {(f["T"], f["p"], f["m"]) for f in fills} == {(a["T"], a["p"], a["m"])}
        assert Decimal(a["q"]) == sum(Decimal(f["q"]) for f in fills)
        assert a["E"] == fills[-1]["E"]
        assert recv == recv_of[a["l"]]  # sent when its last fill was received
        if k:
            prev = aggs[k - 1][1]
            nxt = trades[a["f"]]
            # Maximal: the previous aggregate could not have taken this trade.
            assert (prev["T"], prev["p"], prev["m"]) != (nxt["T"], nxt["p"], nxt["m"])
        covered.extend(range(a["f"], a["l"] + 1))
    assert covered == sorted(trades)  # every real trade exactly once (all are MARKET fills)


def test_recorded_agg_trade_streams_are_kept(tmp_path: Path) -> None:
    lines = [orjson.loads(x) for x in (DATA / "parse_frames.ndjson").read_bytes().splitlines()]
    real = [x for x in lines if x["market"] == "usdm" and "@aggTrade" in x["frame"] and x["recv_ts"]]
    assert len(real) >= 2
    dump = tmp_path / "agg.raw"
    dump.write_text("".join(f"{x['recv_ts']} /market/stream {x['frame']}\n" for x in real))
    cap = load_capture(dump)
    assert with_agg_trades(cap) is cap  # nothing to derive: the real stream is replayed


# --------------------------------------------------------------------------- REST aggTrades


@pytest.mark.asyncio
async def test_rest_agg_trades_page_exactly_the_stream() -> None:
    async with SimVenue([BUNDLED_CAPTURE], speed=0) as sim, client() as http:
        async with http.ws_connect(sim.ws_url + AGG) as ws:
            stream = await frames(ws, 2500)
        url = sim.rest_url + "/fapi/v1/aggTrades"
        got: list[dict[str, Any]] = []
        used = []
        from_id = stream[0]["a"]
        while len(got) < len(stream):
            status, rows, headers = await get(http, url, symbol="BTCUSDT", fromId=from_id, limit=1000)
            assert status == 200
            assert 0 < len(rows) <= 1000
            used.append(int(headers["X-MBX-USED-WEIGHT-1M"]))
            got += rows
            from_id = rows[-1]["a"] + 1
        assert got[: len(stream)] == [rest_row(p, "futures") for p in stream]  # field by field
        assert list(got[0]) == ["a", "p", "q", "f", "l", "T", "m", "nq"]
        assert [b - a for a, b in itertools.pairwise(used)] == [20] * (len(used) - 1)

        # Time windows, the default limit, and Binance's errors.
        t0, t1 = stream[10]["T"], stream[40]["T"]
        status, rows, _ = await get(http, url, symbol="BTCUSDT", startTime=t0, endTime=t1)
        assert status == 200
        assert rows == [rest_row(p, "futures") for p in stream if t0 <= p["T"] <= t1]
        status, rows, _ = await get(http, url, symbol="BTCUSDT")
        assert len(rows) == 500
        status, body, _ = await get(http, url, symbol="BTCUSDT", startTime=t0, endTime=t0 + 3_600_000)
        assert (status, body["code"]) == (400, -1127)
        status, body, _ = await get(http, url)
        assert (status, body["code"]) == (400, -1102)
        status, body, _ = await get(http, url, symbol="NOPEUSDT")
        assert (status, body["code"]) == (400, -1121)
        status, body, _ = await get(http, url, symbol="BTCUSDT", fromId="x1")
        assert (status, body["code"]) == (400, -1100)


@pytest.mark.asyncio
async def test_spot_rest_agg_trades() -> None:
    aggs = [p for _, p in derived(SPOT_TRADES, "btcusdt@aggTrade")]
    async with SimVenue([SPOT_TRADES], speed=0) as sim, client() as http:
        status, rows, headers = await get(
            http, sim.rest_url + "/api/v3/aggTrades", symbol="BTCUSDT", fromId=aggs[5]["a"], limit=3
        )
    assert status == 200
    assert headers["X-MBX-USED-WEIGHT-1M"] == "4"
    assert rows == [rest_row(p, "spot") for p in aggs[5:8]]
    assert list(rows[0]) == ["a", "p", "q", "f", "l", "T", "m", "M"]


# --------------------------------------------------------------------------- live replay, drop


@pytest.mark.asyncio
async def test_live_replay_goes_on_while_the_client_is_away() -> None:
    everything = [p for _, p in derived(BUNDLED_CAPTURE, "btcusdt@aggTrade")]
    async with SimVenue([BUNDLED_CAPTURE], speed=4, resume="live") as sim, client() as http:
        url = sim.rest_url + "/fapi/v1/aggTrades"
        async with http.ws_connect(sim.ws_url + AGG) as ws:
            before = await frames(ws, 50)
            assert sim.faults.drop(1.0, route="/market") == 1
            async with asyncio.timeout(10):
                while (await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                    pass  # what was already written, then the abort
        # Refused while the outage lasts; the other route is up.
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(sim.ws_url + AGG)
        assert err.value.status == 503
        async with http.ws_connect(sim.ws_url + "/public/stream?streams=btcusdt@bookTicker") as pub:
            await frames(pub, 1)

        async def reconnects() -> bool:
            try:
                await (await http.ws_connect(sim.ws_url + AGG)).close()
            except aiohttp.WSServerHandshakeError:
                return False
            return True

        await until(reconnects, "the outage ends")
        async with http.ws_connect(sim.ws_url + AGG) as ws:
            (after,) = await frames(ws, 1)
        last = before[-1]["a"]
        assert after["a"] > last + 1  # the venue went on: a hole
        status, rows, _ = await get(http, url, symbol="BTCUSDT", fromId=last + 1, limit=1000)
        assert status == 200
        hole = [rest_row(p, "futures") for p in everything if last < p["a"] < after["a"]]
        assert rows[: len(hole)] == hole  # REST fills it exactly, field by field
        # Nothing the venue has not published yet.
        status, rows, _ = await get(http, url, symbol="BTCUSDT", fromId=everything[-20]["a"])
        assert (status, rows) == (200, [])


def test_live_replay_needs_a_speed() -> None:
    with pytest.raises(ConfigError, match="live replay"):
        SimVenue([BUNDLED_CAPTURE], speed=0, resume="live")


# --------------------------------------------------------------------------- listings


@pytest.mark.asyncio
async def test_listing_and_delisting_during_a_live_run() -> None:
    everything = [p for _, p in derived(BUNDLED_CAPTURE, "btcusdt@aggTrade")]
    listings = [ListingChange(3.0, "BTCUSDT", listed=True), ListingChange(6.0, "BTCUSDT", listed=False)]
    async with (
        SimVenue([BUNDLED_CAPTURE], speed=10, resume="live", listings=listings) as sim,
        client() as http,
    ):
        info_url = sim.rest_url + "/fapi/v1/exchangeInfo"

        async def entry() -> dict[str, Any]:
            _, body, _ = await get(http, info_url)
            (sym,) = body["symbols"]
            return dict(sym)

        pending = await entry()
        assert pending["status"] == "PENDING_TRADING"
        assert not parse_exchange_info("binance-usdm", {"symbols": [pending]})
        onboard = pending["onboardDate"]
        assert sim.timeline is not None
        assert onboard == (sim.timeline.ts[0] + 3_000_000_000) // 1_000_000
        async with http.ws_connect(sim.ws_url + AGG) as ws:  # starts the venue clock
            sent: list[dict[str, Any]] = []
            async with asyncio.timeout(30):
                while True:
                    try:
                        msg = await ws.receive(timeout=2.0)
                    except TimeoutError:
                        if sent and (await entry())["status"] == "SETTLING":
                            break
                        continue
                    sent.append(orjson.loads(msg.data)["data"])
        assert (await entry())["status"] == "SETTLING"  # a delisted perpetual stays listed
        assert sent, "nothing published between listing and delisting"
        assert sent[0]["T"] >= onboard
        _, rows, _ = await get(
            http, sim.rest_url + "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=0, limit=1000
        )
        # REST serves the listed window only: what the stream published from the listing on.
        first = next(k for k, p in enumerate(everything) if p["a"] == rows[0]["a"])
        window = everything[first : first + len(rows)]
        assert rows == [rest_row(p, "futures") for p in window]
        assert [p["a"] for p in sent] == [p["a"] for p in window[len(window) - len(sent) :]]
        assert rows[-1]["a"] == sent[-1]["a"]


@pytest.mark.asyncio
async def test_spot_pair_appears_at_listing_and_breaks_at_delisting() -> None:
    listings = [ListingChange(1.0, "BTCUSDT", listed=True), ListingChange(2.0, "BTCUSDT", listed=False)]
    async with SimVenue([SPOT_TRADES], speed=10, resume="live", listings=listings) as sim, client() as http:
        url = sim.rest_url + "/api/v3/exchangeInfo"
        _, body, _ = await get(http, url)
        assert body["symbols"] == []
        sim.start_clock()

        async def status_is(want: str) -> bool:
            _, doc, _ = await get(http, url)
            return [s["status"] for s in doc["symbols"]] == [want]

        await until(lambda: status_is("TRADING"), "listed")
        await until(lambda: status_is("BREAK"), "delisted")


def test_listing_flags_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_change("12.5:ethusdt", listed=True) == ListingChange(12.5, "ETHUSDT", True)
    for bad in ("ETHUSDT", "x:ETHUSDT", "-1:ETHUSDT", "5:"):
        with pytest.raises(ConfigError, match="SECONDS:SYMBOL"):
            parse_change(bad, listed=False)
    with pytest.raises(SystemExit) as exited:
        sim_main(["--list-at", "soon:BTCUSDT"])
    assert exited.value.code == 2
    assert "--list-at" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not in the capture"):
        asyncio.run(SimVenue([BUNDLED_CAPTURE], listings=[ListingChange(1, "ETHUSDT", True)]).start())
    changes = [ListingChange(5, "BTCUSDT", True), ListingChange(1, "BTCUSDT", False)]
    with pytest.raises(ConfigError, match="after its --list-at"):
        asyncio.run(SimVenue([BUNDLED_CAPTURE], listings=changes).start())
