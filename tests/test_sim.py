"""ingestd.sim against a plain aiohttp client: routing, exact replay, end of capture, resume modes,
every fault, REST endpoints and headers, and the ``ingestd sim`` command line.

Ground truth is the real capture bundled with the package (hftbacktest USDⓈ-M BTCUSDT, 2024-08-08)
and the other real captures in tests/data.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from ingestd.errors import ConfigError
from ingestd.sim import ABORT, BUNDLED_CAPTURE, Capture, CaptureError, SimVenue, load_capture
from ingestd.sim.cli import main as sim_main
from ingestd.venues.binance.symbols import parse_exchange_info
from tests.realdata import DATA, need

DEPTH, TICKER, TRADE = "btcusdt@depth@0ms", "btcusdt@bookTicker", "btcusdt@trade"
PUBLIC = "/public/stream?streams=btcusdt@depth@100ms/btcusdt@bookTicker"


@pytest.fixture(scope="module")
def cap() -> Capture:
    return load_capture(BUNDLED_CAPTURE)


def frames_of(cap: Capture, *names: str) -> list[bytes]:
    """The capture's frames of ``names``, in capture order."""
    wanted = {cap.streams.index(n) for n in names}
    return [f for s, f in zip(cap.sid, cap.frames, strict=True) if s in wanted]


def real(*parts: str) -> Path:
    return need(DATA.joinpath(*parts))


@asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def read(ws: aiohttp.ClientWebSocketResponse, n: int, timeout: float = 10.0) -> list[bytes]:
    out: list[bytes] = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, msg.data, len(out))
            out.append(msg.data.encode())
    return out


async def silent(ws: aiohttp.ClientWebSocketResponse, seconds: float = 0.2) -> None:
    """Nothing arrives for ``seconds`` and the connection is still open."""
    try:
        msg = await ws.receive(timeout=seconds)
    except TimeoutError:
        assert not ws.closed
        return
    pytest.fail(f"expected silence, got {msg.type} {str(msg.data)[:80]}")


async def control(ws: aiohttp.ClientWebSocketResponse, body: dict[str, Any]) -> Any:
    """Send a control message; the reply (data frames still streaming are passed over)."""
    await ws.send_str(orjson.dumps(body).decode())
    async with asyncio.timeout(5):
        while True:
            reply = orjson.loads((await ws.receive()).data)
            if isinstance(reply, dict) and "id" in reply:
                return reply


# --------------------------------------------------------------------------- captures


def test_bundled_capture_matches_provenance(cap: Capture) -> None:
    assert cap.format == "hftbacktest"
    assert cap.market == "futures"
    assert cap.stream_counts() == {DEPTH: 6551, TICKER: 66089, TRADE: 21313}
    (snap,) = cap.snapshots
    body = orjson.loads(snap.body)
    assert (snap.symbol, body["lastUpdateId"], len(body["bids"]), len(body["asks"])) == (
        "BTCUSDT", 5123107852948, 1000, 1000
    )  # fmt: skip
    assert cap.symbols() == ["BTCUSDT"]
    # frames are the recorded bytes: the first line of the file, minus its timestamp
    with gzip.open(BUNDLED_CAPTURE, "rb") as fh:
        ts, _, body0 = fh.readline().rstrip(b"\n").partition(b" ")
    assert cap.ts[0] == int(ts)
    assert cap.frames[0] == body0


@pytest.mark.parametrize(
    ("name", "market", "symbol"),
    [
        ("spot_btcusdt_20240808.gz", "spot", "BTCUSDT"),
        ("cm_btcusd_perp_20240808.gz", "futures", "BTCUSD_PERP"),
    ],
)
def test_market_detection_on_real_captures(name: str, market: str, symbol: str) -> None:
    cap = load_capture(real("hftbacktest", name))
    assert cap.market == market
    assert [s.symbol for s in cap.snapshots] == [symbol]


def test_cryptofeed_capture_brings_its_snapshots() -> None:
    cap = load_capture(real("cryptofeed", "2021-10_head", "BINANCE_FUTURES.ws.1.0"))
    assert cap.format == "cryptofeed"
    assert cap.market == "futures"
    assert sorted(s.symbol for s in cap.snapshots) == ["AKROUSDT", "CTKUSDT", "KEEPUSDT", "SUSHIUSDT"]
    counts = cap.stream_counts()
    assert sum(n for k, n in counts.items() if k.endswith("@depth@100ms")) == 764
    assert sum(n for k, n in counts.items() if k.endswith("@bookTicker")) == 613
    spot = load_capture(real("cryptofeed", "2021-10_head", "BINANCE.ws.1.0"))
    assert spot.market == "spot"
    assert spot.symbols() == ["BLZETH", "LRCBTC", "NKNUSDT", "RUNEEUR"]


def test_ingestd_raw_dump_round_trip(cap: Capture, tmp_path: Path) -> None:
    """A --raw dump (`<ns> <source> <frame>`, gzip) of real frames loads back byte for byte."""
    trade = cap.streams.index(TRADE)
    lines = []
    for i in range(300):
        source = "/public/stream"
        frame = cap.frames[i]
        if cap.sid[i] == trade:  # as a raw /ws/<name> connection records it: the bare payload
            source, frame = f"/market/ws/{TRADE}", orjson.dumps(orjson.loads(frame)["data"])
        lines.append(b"%d %s %s" % (cap.ts[i], source.encode(), frame))
    snap = cap.snapshots[0]
    lines.insert(55, b"%d /fapi/v1/depth?symbol=BTCUSDT&limit=1000 %s" % (snap.recv_ns, snap.body))
    lines.insert(0, b'%d /public/stream {"result":null,"id":1}' % (cap.ts[0] - 1))
    path = tmp_path / "raw.ndjson.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    raw = load_capture(path)
    assert raw.format == "ingestd-raw"
    assert raw.market == "futures"
    assert raw.skipped_lines == 1
    assert raw.frames == cap.frames[:300]
    assert raw.ts == cap.ts[:300]
    assert [(s.symbol, s.body, s.source) for s in raw.snapshots] == [
        ("BTCUSDT", snap.body, "/fapi/v1/depth?symbol=BTCUSDT&limit=1000")
    ]


def test_bad_captures_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="not found"):
        load_capture(tmp_path / "missing.gz")
    junk = tmp_path / "junk.txt"
    junk.write_text("hello world\n")
    with pytest.raises(CaptureError, match="unknown capture format"):
        load_capture(junk)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(b"1 {}\n")[:12])
    with pytest.raises(CaptureError, match="unreadable"):
        load_capture(broken)


# --------------------------------------------------------------------------- websocket replay


@pytest.mark.asyncio
async def test_routed_replay_is_exact_and_complete(cap: Capture) -> None:
    """Each route gets its streams' frames, byte-identical, in capture order, all of them;
    the capture's @depth@0ms serves a request for @depth@100ms."""
    want_public = frames_of(cap, DEPTH, TICKER)
    want_market = frames_of(cap, TRADE)
    async with SimVenue([cap]) as sim, client() as http:
        async with (
            http.ws_connect(sim.ws_url + PUBLIC) as public,
            http.ws_connect(sim.ws_url + "/market/stream?streams=btcusdt@trade") as market,
        ):
            got_public, got_market = await asyncio.gather(
                read(public, len(want_public)), read(market, len(want_market))
            )
            assert got_public == want_public
            assert got_market == want_market
            # end of capture: open and silent
            await silent(public)
            await silent(market, 0.05)
        stats = sim.stats()
    # The derived btcusdt@aggTrade stream (ingestd.sim.agg_trades) exists, and nobody asked for it.
    assert stats.frames_sent == {DEPTH: 6551, TICKER: 66089, TRADE: 21313, "btcusdt@aggTrade": 0}
    assert stats.connections_total == 2
    by_route = {c.route: c for c in stats.connections}
    assert by_route["/public"].frames_sent == {DEPTH: 6551, TICKER: 66089}
    assert by_route["/public"].first == {DEPTH: 0, TICKER: 0}
    assert by_route["/public"].last == {DEPTH: 6550, TICKER: 66088}
    assert by_route["/market"].frames_sent == {TRADE: 21313}


@pytest.mark.asyncio
async def test_wrong_route_and_unrouted_market_streams_are_silent(cap: Capture) -> None:
    async with SimVenue([cap]) as sim, client() as http:
        async with http.ws_connect(sim.ws_url + "/public/stream?streams=btcusdt@trade") as ws:
            await silent(ws)
            assert await control(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 7}) == {
                "result": ["btcusdt@trade"], "id": 7
            }  # fmt: skip
        async with http.ws_connect(sim.ws_url + "/market/stream?streams=btcusdt@depth@100ms") as ws:
            await silent(ws)
        # No spot capture: an unrouted /stream behaves like /public (depth yes, trade never).
        async with http.ws_connect(sim.ws_url + "/stream?streams=btcusdt@trade/btcusdt@depth") as ws:
            assert await read(ws, 50) == frames_of(cap, DEPTH)[:50]
        assert sim.stats().frames_sent[TRADE] == 0


@pytest.mark.asyncio
async def test_raw_ws_path_sends_bare_payloads(cap: Capture) -> None:
    want = [orjson.dumps(orjson.loads(f)["data"]) for f in frames_of(cap, TRADE)[:20]]
    async with (
        SimVenue([cap]) as sim,
        client() as http,
        http.ws_connect(sim.ws_url + "/market/ws/btcusdt@trade") as ws,
    ):
        assert await read(ws, 20) == want
        reply = await control(ws, {"method": "GET_PROPERTY", "params": ["combined"], "id": 1})
        assert reply == {"result": False, "id": 1}


@pytest.mark.asyncio
async def test_live_control_messages(cap: Capture) -> None:
    async with SimVenue([cap]) as sim, client() as http:
        async with http.ws_connect(sim.ws_url + "/public/stream") as ws:
            await silent(ws, 0.1)
            assert await control(ws, {"method": "SUBSCRIBE", "params": ["btcusdt@depth@500ms"], "id": 1}) == {
                "result": None, "id": 1
            }  # fmt: skip
            assert await read(ws, 100) == frames_of(cap, DEPTH)[:100]
        async with http.ws_connect(sim.ws_url + "/public/ws") as ws:
            await ws.send_str("{not json")
            assert orjson.loads((await ws.receive(timeout=5)).data) == {
                "code": 3, "msg": "Invalid JSON: not a JSON document", "id": None
            }  # fmt: skip
            assert (await control(ws, {"method": "NOPE", "id": 2}))["code"] == 2
            assert (await control(ws, {"method": "SET_PROPERTY", "params": ["x", 1], "id": 3}))["code"] == 0
            assert await control(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 4}) == {"result": [], "id": 4}


@pytest.mark.asyncio
async def test_control_message_rate_limit_disconnects(cap: Capture) -> None:
    async with SimVenue([cap]) as sim, client() as http, http.ws_connect(sim.ws_url + "/public/ws") as ws:
        for i in range(11):  # USDⓈ-M allows 10 incoming messages per second
            await ws.send_str(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}).decode())
        async with asyncio.timeout(5):
            while (msg := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                pass
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == 1008


@pytest.mark.asyncio
async def test_loop_starts_again(cap: Capture) -> None:
    want = frames_of(cap, DEPTH)
    async with SimVenue([cap], loop=True) as sim, client() as http:
        async with http.ws_connect(sim.ws_url + "/public/stream?streams=btcusdt@depth") as ws:
            got = await read(ws, len(want) + 10)
        assert got == want + want[:10]
        assert sim.stats().connections[0].loops == 1


@pytest.mark.asyncio
async def test_restart_mode_replays_from_the_start(cap: Capture) -> None:
    want = frames_of(cap, DEPTH)
    async with SimVenue([cap]) as sim, client() as http:
        for _ in range(2):
            async with http.ws_connect(sim.ws_url + "/public/stream?streams=btcusdt@depth") as ws:
                assert await read(ws, 30) == want[:30]


@pytest.mark.asyncio
async def test_continue_mode_loses_and_repeats_nothing(cap: Capture) -> None:
    """Connection 1 is closed (1001) after 1000 frames; connection 2 continues right after them."""
    want = frames_of(cap, DEPTH)
    async with SimVenue([cap], resume="continue") as sim, client() as http:
        sim.faults.close(1001, after_frames=1000, sticky=True)
        async with http.ws_connect(sim.ws_url + "/public/stream?streams=btcusdt@depth@100ms") as ws:
            first = await read(ws, 1000)
            msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
        sim.faults.clear()
        async with http.ws_connect(sim.ws_url + "/public/stream?streams=btcusdt@depth@100ms") as ws:
            rest = await read(ws, len(want) - 1000)
            await silent(ws, 0.1)
        stats = sim.stats()
    assert first + rest == want
    c1, c2 = stats.connections
    assert (c1.first[DEPTH], c1.last[DEPTH], c1.close_code) == (0, 999, 1001)
    assert (c2.first[DEPTH], c2.last[DEPTH]) == (1000, 6550)


@pytest.mark.asyncio
async def test_two_captures_merge_by_receive_time() -> None:
    """Simultaneous real captures (USDⓈ-M BTCUSDT and ETHUSDT) play as one venue, interleaved by
    receive time; each stream keeps its own order and all of its frames."""
    btc = load_capture(real("hftbacktest", "usdm_btcusdt_20240808.gz"))
    eth = load_capture(real("hftbacktest", "usdm_ethusdt_20240808.gz"))
    want_btc, want_eth = frames_of(btc, DEPTH), frames_of(eth, "ethusdt@depth@0ms")
    async with SimVenue([btc, eth]) as sim, client() as http:
        async with http.get(sim.rest_url + "/fapi/v1/exchangeInfo") as r:
            assert parse_exchange_info("binance-usdm", await r.json()).natives == ["BTCUSDT", "ETHUSDT"]
        async with http.get(
            sim.rest_url + "/fapi/v1/depth", params={"symbol": "ETHUSDT", "limit": "1000"}
        ) as r:
            assert await r.read() == eth.snapshots[0].body
        url = sim.ws_url + "/public/stream?streams=btcusdt@depth@100ms/ethusdt@depth@100ms"
        async with http.ws_connect(url) as ws:
            got = await read(ws, len(want_btc) + len(want_eth))
    assert [g for g in got if g.startswith(b'{"stream":"btc')] == want_btc
    assert [g for g in got if g.startswith(b'{"stream":"eth')] == want_eth
    times = {f: t for c in (btc, eth) for f, t in zip(c.frames, c.ts, strict=True)}
    assert [times[g] for g in got] == sorted(times[g] for g in got)


@pytest.mark.asyncio
async def test_venue_close_says_going_away(cap: Capture) -> None:
    async with client() as http:
        sim = SimVenue([cap], speed=1)
        await sim.start()
        async with http.ws_connect(sim.ws_url + PUBLIC) as ws:
            await read(ws, 1)
            await sim.close()
            await sim.close()  # idempotent
            msg = await ws.receive(timeout=5)
            while msg.type is aiohttp.WSMsgType.TEXT:
                msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)


@pytest.mark.asyncio
async def test_paced_replay_follows_capture_time(cap: Capture) -> None:
    """speed 20: frames spanning 4 s of capture time are not sent faster than in 0.2 s.

    The first frame is sent at the earliest once the test started its clock, and the last of
    them no earlier than 1/20 of their capture span later: a lower bound that holds on any
    machine. (How much later, on a loaded one, is not the sim's business and not asserted.)
    """
    depth = cap.streams.index(DEPTH)
    idx = [i for i, s in enumerate(cap.sid) if s == depth]
    span_ns = 4_000_000_000
    within = [i for i in idx if cap.ts[i] - cap.ts[idx[0]] <= span_ns]
    paced_s = (cap.ts[within[-1]] - cap.ts[within[0]]) / 20 / 1e9
    assert paced_s > 0.15
    async with SimVenue([cap], speed=20) as sim, client() as http:
        start = time.monotonic()
        async with http.ws_connect(sim.ws_url + "/public/stream?streams=btcusdt@depth") as ws:
            got = await read(ws, len(within))
            elapsed = time.monotonic() - start
    assert got == frames_of(cap, DEPTH)[: len(within)]
    assert elapsed >= paced_s, (elapsed, paced_s)


# --------------------------------------------------------------------------- websocket faults


@pytest.mark.asyncio
@pytest.mark.parametrize("code", [1000, 1001, 1011])
async def test_close_after_n_frames_with_code(cap: Capture, code: int) -> None:
    async with SimVenue([cap]) as sim, client() as http:
        assert sim.faults.close(code, after_frames=30, route="/public", sticky=True) == 0
        async with http.ws_connect(sim.ws_url + PUBLIC) as ws:
            assert await read(ws, 30) == frames_of(cap, DEPTH, TICKER)[:30]
            msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, code)
        conn = sim.stats().connections[0]
    assert sum(conn.frames_sent.values()) == 30
    assert conn.close_code == code


@pytest.mark.asyncio
async def test_abort_drops_tcp_without_close_frame(cap: Capture) -> None:
    async with SimVenue([cap]) as sim, client() as http:
        async with http.ws_connect(sim.ws_url + PUBLIC) as ws:
            await read(ws, 3)
            sim.faults.stall()  # so that "after 7 frames" counts from a known point
            in_flight = [m async for m in _drain_now(ws)]
            assert sim.faults.close(ABORT, after_frames=7) == 1
            sim.faults.resume()
            await read(ws, 7)
            msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            assert ws.close_code == 1006
        conn = sim.stats().connections[0]
    assert conn.close_code == ABORT
    assert sum(conn.frames_sent.values()) == 3 + len(in_flight) + 7


@pytest.mark.asyncio
async def test_close_matches_route_and_stream(cap: Capture) -> None:
    async with (
        SimVenue([cap]) as sim,
        client() as http,
        http.ws_connect(sim.ws_url + PUBLIC) as public,
        http.ws_connect(sim.ws_url + "/market/stream?streams=btcusdt@trade") as market,
    ):
        await read(public, 1)
        await read(market, 1)
        assert sim.faults.close(1001, stream=TRADE) == 1
        assert sim.faults.close(1001, route="/nowhere") == 0
        msg = await market.receive(timeout=5)
        while msg.type is aiohttp.WSMsgType.TEXT:
            msg = await market.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
        assert not public.closed


@pytest.mark.asyncio
async def test_stall_until_resumed_and_for_seconds(cap: Capture) -> None:
    want = frames_of(cap, DEPTH)
    async with (
        SimVenue([cap], speed=1) as sim,
        client() as http,
        http.ws_connect(sim.ws_url + "/public/stream?streams=btcusdt@depth") as ws,
    ):
        got = await read(ws, 1)
        sim.faults.stall()
        got += [m.data.encode() async for m in _drain_now(ws)]
        await silent(ws, 0.3)
        sim.faults.resume()
        got += await read(ws, 3)
        # frames due during the stall went out at once on resume (a venue catching up)
        assert sim.faults.stall(0.3) == 1
        started = time.perf_counter()
        got += [m.data.encode() async for m in _drain_now(ws)]
        got += await read(ws, 1)
        assert time.perf_counter() - started >= 0.25
    assert got == want[: len(got)]


async def _drain_now(ws: aiohttp.ClientWebSocketResponse) -> AsyncIterator[aiohttp.WSMessage]:
    """Frames already in flight when a stall began."""
    while True:
        try:
            yield await ws.receive(timeout=0.05)
        except TimeoutError:
            return


@pytest.mark.asyncio
async def test_skip_depth_diff_by_index_and_update_id(cap: Capture) -> None:
    want = frames_of(cap, DEPTH)
    tenth_u = orjson.loads(want[10])["data"]["u"]
    async with SimVenue([cap]) as sim, client() as http:
        sim.faults.skip_depth_diff("BTCUSDT", index=3)
        sim.faults.skip_depth_diff("btcusdt", update_id=tenth_u)
        async with http.ws_connect(sim.ws_url + "/public/stream?streams=btcusdt@depth") as ws:
            got = await read(ws, 20)
        stats = sim.stats()
    assert got == [f for k, f in enumerate(want[:22]) if k not in (3, 10)]
    assert stats.frames_skipped == {DEPTH: 2}


@pytest.mark.asyncio
async def test_silence_holds_back_one_stream_of_a_connection(cap: Capture) -> None:
    """A silenced stream is subscribed and acknowledged, then never sends; the other stream of
    the same connection arrives complete and in order."""
    want = frames_of(cap, DEPTH)
    async with SimVenue([cap]) as sim, client() as http:
        assert sim.faults.silence(TICKER) == 66_089
        with pytest.raises(ConfigError, match="no stream"):
            sim.faults.silence("ethusdt@bookTicker")
        async with http.ws_connect(sim.ws_url + PUBLIC) as ws:
            got = await read(ws, len(want))
            await silent(ws, 0.1)
            reply = await control(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 7})
        stats = sim.stats()
    assert reply == {"result": ["btcusdt@depth@100ms", "btcusdt@bookTicker"], "id": 7}
    assert got == want
    assert stats.frames_sent[DEPTH] == len(want)
    assert stats.frames_sent[TICKER] == 0
    assert sum(stats.frames_sent.values()) == len(want)  # nothing else was subscribed
    assert stats.frames_skipped == {TICKER: 66_089}


@pytest.mark.asyncio
async def test_inject_raw_frames_and_server_shutdown(cap: Capture) -> None:
    huge = (
        b'{"stream":"btcusdt@depth@0ms","data":{"e":"depthUpdate","b":['
        + b'["1.0","1.0"],' * 80_000
        + b"[]]}}"
    )
    junk = [
        b"{not json",
        b'{"stream":"btcusdt@depth@0ms","data":{"e":"depthUpdate","U":"x"}}',
        b'{"e":"wat"}',
        huge,
    ]
    async with SimVenue([cap], speed=1) as sim, client() as http:
        async with http.ws_connect(sim.ws_url + PUBLIC, max_msg_size=4 << 20) as ws:
            await read(ws, 1)
            sim.faults.stall()
            in_flight = [m async for m in _drain_now(ws)]
            assert sim.faults.inject(junk) == 1
            await silent(ws, 0.1)  # a stall holds injected frames too
            sim.faults.resume()
            got = await read(ws, 4 + len(in_flight))
            assert [g for g in got if g in junk] == junk
            assert sim.faults.server_shutdown() == 1
            for _ in range(1000):
                msg = orjson.loads(await ws.receive_str(timeout=5))
                if msg.get("stream") == "!serverShutdown":
                    break
            assert msg["data"]["e"] == "serverShutdown"
            assert abs(msg["data"]["E"] - time.time() * 1000) < 5000
        assert sim.stats().injected == 5


@pytest.mark.asyncio
async def test_refused_handshake(cap: Capture) -> None:
    async with SimVenue([cap]) as sim, client() as http:
        sim.faults.refuse_connections(503, count=1)
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(sim.ws_url + PUBLIC)
        assert err.value.status == 503
        async with http.ws_connect(sim.ws_url + PUBLIC) as ws:
            await read(ws, 1)


# --------------------------------------------------------------------------- REST


@pytest.mark.asyncio
async def test_exchange_info_lists_capture_symbols(cap: Capture) -> None:
    async with SimVenue([cap]) as sim, client() as http:
        async with http.get(sim.rest_url + "/fapi/v1/exchangeInfo") as resp:
            assert resp.status == 200
            assert resp.headers["X-MBX-USED-WEIGHT-1M"] == "1"
            body = await resp.json()
        async with http.get(sim.rest_url + "/api/v3/exchangeInfo") as resp:
            spot = await resp.json()
    contracts = parse_exchange_info("binance-usdm", body)
    (btc,) = contracts
    assert (btc.native, btc.symbol, btc.base, btc.quote) == ("BTCUSDT", "BTC-USDT-PERP", "BTC", "USDT")
    # fapi BTCUSDT writes prices with 2 decimals whose last is always 0, quantities with 3
    assert (btc.tick_size, btc.price_precision, btc.min_qty, btc.step_size) == (0.1, 1, 0.001, 0.001)
    assert btc.contract_type == "PERPETUAL"
    weight = {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400}
    assert body["rateLimits"][0] == weight
    assert abs(body["serverTime"] - time.time() * 1000) < 5000
    assert spot["symbols"] == []
    assert spot["rateLimits"][0]["limit"] == 6000


@pytest.mark.asyncio
async def test_spot_and_coin_m_exchange_info() -> None:
    spot_cap = real("hftbacktest", "spot_btcusdt_20240808.gz")
    cm_cap = real("cryptofeed", "2021-10_head", "BINANCE_DELIVERY.ws.1.0")
    async with SimVenue([spot_cap, cm_cap]) as sim, client() as http:
        async with http.get(sim.rest_url + "/api/v3/exchangeInfo") as resp:
            spot = parse_exchange_info("binance-spot", await resp.json())
        async with http.get(sim.rest_url + "/fapi/v1/exchangeInfo") as resp:
            fut = await resp.json()
        # with a spot capture held, unrouted /stream is spot
        async with http.ws_connect(sim.ws_url + "/stream?streams=btcusdt@depth@100ms") as ws:
            first = orjson.loads((await read(ws, 1))[0])
    assert first["data"]["e"] == "depthUpdate"
    assert "pu" not in first["data"]
    (btc,) = spot
    assert (btc.native, btc.symbol, btc.tick_size, btc.step_size) == ("BTCUSDT", "BTC-USDT", 0.01, 0.00001)
    types = {s["symbol"]: s["contractType"] for s in fut["symbols"]}
    assert len(types) == 10
    assert types["BCHUSD_PERP"] == "PERPETUAL"
    assert types["BTCUSD_211231"] == "CURRENT_QUARTER"
    perps = parse_exchange_info("binance-usdm", fut)
    assert sorted(perps.natives) == ["BCHUSD_PERP", "EOSUSD_PERP", "ETCUSD_PERP", "LINKUSD_PERP",
                                     "TRXUSD_PERP", "XRPUSD_PERP"]  # fmt: skip
    bch = perps.get("BCHUSD_PERP")
    assert bch is not None
    assert (bch.base, bch.quote, bch.symbol) == ("BCH", "USD", "BCH-USD-PERP")


@pytest.mark.asyncio
async def test_depth_endpoint(cap: Capture) -> None:
    recorded = orjson.loads(cap.snapshots[0].body)
    async with SimVenue([cap]) as sim, client() as http:
        async with http.get(
            sim.rest_url + "/fapi/v1/depth", params={"symbol": "BTCUSDT", "limit": "1000"}
        ) as r:
            assert r.status == 200
            assert await r.read() == cap.snapshots[0].body
            assert r.headers["X-MBX-USED-WEIGHT-1M"] == "20"
        async with http.get(sim.rest_url + "/fapi/v1/depth", params={"symbol": "BTCUSDT", "limit": "5"}) as r:
            five = await r.json()
            assert r.headers["X-MBX-USED-WEIGHT-1M"] == "22"
        async with http.get(sim.rest_url + "/fapi/v1/depth", params={"symbol": "BTCUSDT"}) as r:
            default = await r.json()
            assert r.headers["X-MBX-USED-WEIGHT-1M"] == "32"
        async with http.get(sim.rest_url + "/fapi/v1/depth", params={"symbol": "ETHUSDT"}) as r:
            assert (r.status, await r.json()) == (400, {"code": -1121, "msg": "Invalid symbol."})
        async with http.get(sim.rest_url + "/fapi/v1/depth") as r:
            assert (r.status, (await r.json())["code"]) == (400, -1102)
        async with http.get(sim.rest_url + "/api/v3/depth", params={"symbol": "BTCUSDT"}) as r:
            assert (r.status, (await r.json())["code"]) == (400, -1121)
            assert r.headers["X-MBX-USED-WEIGHT-1M"] == "5"  # spot counts on its own
    assert five == {**recorded, "bids": recorded["bids"][:5], "asks": recorded["asks"][:5]}
    assert len(default["bids"]) == len(default["asks"]) == 500


@pytest.mark.asyncio
async def test_continue_mode_depth_is_rolled_forward_to_the_replay_position(cap: Capture) -> None:
    """After diff k was sent, /depth is the book at k: lastUpdateId == u_k, and its top equals the
    real bookTicker carrying the same update id (the capture's own oracle, docs/binance.md §8.2)."""
    diffs = [orjson.loads(f)["data"] for f in frames_of(cap, DEPTH)]
    tickers = {d["u"]: d for d in (orjson.loads(f)["data"] for f in frames_of(cap, TICKER))}
    snap_id = orjson.loads(cap.snapshots[0].body)["lastUpdateId"]
    k = next(k for k, d in enumerate(diffs) if d["u"] in tickers and d["u"] > snap_id and k > 100)
    top = tickers[diffs[k]["u"]]
    async with SimVenue([cap], resume="continue") as sim, client() as http:
        sim.faults.close(1000, after_frames=k + 1, sticky=True)
        async with http.ws_connect(sim.ws_url + "/public/stream?streams=btcusdt@depth") as ws:
            await read(ws, k + 1)
        async with http.get(sim.rest_url + "/fapi/v1/depth", params={"symbol": "BTCUSDT", "limit": "5"}) as r:
            book = await r.json()
    assert book["lastUpdateId"] == diffs[k]["u"]
    assert (book["E"], book["T"]) == (diffs[k]["E"], diffs[k]["T"])
    assert book["bids"][0] == [top["b"], top["B"]]
    assert book["asks"][0] == [top["a"], top["A"]]


@pytest.mark.asyncio
async def test_snapshot_at_subscribed_answers_each_connections_first_diff(cap: Capture) -> None:
    """``snapshot_at="subscribed"``: /depth is the book after the first diff the newest open
    connection sent, however far that connection (or another one) got since; a connection that
    continues mid-capture gets the book at its own first diff."""
    diffs = [orjson.loads(f)["data"] for f in frames_of(cap, DEPTH)]
    snap_id = orjson.loads(cap.snapshots[0].body)["lastUpdateId"]
    params = {"symbol": "BTCUSDT", "limit": "5"}
    async with SimVenue([cap], resume="continue", snapshot_at="subscribed") as sim, client() as http:
        sim_url = sim.ws_url + "/public/stream?streams=btcusdt@depth"
        sim.faults.close(1000, after_frames=3000, sticky=True)
        async with http.ws_connect(sim_url) as ws:
            await read(ws, 1000)
            # The capture's first diffs precede its recorded snapshot: that snapshot is the answer.
            async with http.get(sim.rest_url + "/fapi/v1/depth", params=params) as r:
                assert (await r.json())["lastUpdateId"] == snap_id
            await read(ws, 2000)
        async with http.ws_connect(sim_url) as ws:
            await read(ws, 10)
            async with http.get(sim.rest_url + "/fapi/v1/depth", params=params) as r:
                second = await r.json()
        with pytest.raises(ConfigError, match="snapshot_at"):
            SimVenue([cap], snapshot_at="later")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="loop"):
            SimVenue([cap], loop=True, snapshot_at="subscribed")
    assert diffs[0]["u"] < snap_id
    # Connection 2 continued at diff 3000: the book after it, whatever was sent since.
    assert (second["lastUpdateId"], second["E"]) == (diffs[3000]["u"], diffs[3000]["E"])


@pytest.mark.asyncio
async def test_time_ping_and_clock_skew(cap: Capture) -> None:
    async with SimVenue([cap]) as sim, client() as http:
        sim.faults.clock_skew_ms = -30_000
        async with http.get(sim.rest_url + "/fapi/v1/time") as r:
            server = (await r.json())["serverTime"]
        async with http.get(sim.rest_url + "/api/v3/ping") as r:
            assert (await r.json(), r.headers["X-MBX-USED-WEIGHT-1M"]) == ({}, "1")
        async with http.get(sim.rest_url + "/fapi/v1/ping") as r:
            assert r.headers["X-MBX-USED-WEIGHT-1M"] == "2"
    assert abs(server - (time.time() * 1000 - 30_000)) < 2000


@pytest.mark.asyncio
async def test_rest_faults(cap: Capture) -> None:
    depth = "/fapi/v1/depth"
    url_params = {"symbol": "BTCUSDT", "limit": "5"}
    async with SimVenue([cap]) as sim, client() as http:
        sim.faults.rest_error(depth, 429, count=2, retry_after=3)
        for _ in range(2):
            async with http.get(sim.rest_url + depth, params=url_params) as r:
                assert (r.status, r.headers["Retry-After"], (await r.json())["code"]) == (429, "3", -1003)
                assert r.headers["X-MBX-USED-WEIGHT-1M"] == "0"
        async with http.get(sim.rest_url + depth, params=url_params) as r:
            assert r.status == 200
        sim.faults.rest_error("*", 418, retry_after=120)
        async with http.get(sim.rest_url + "/fapi/v1/time") as r:
            body = await r.json()
            assert (r.status, r.headers["Retry-After"], body["code"]) == (418, "120", -1003)
            assert "banned until" in body["msg"]
        sim.faults.rest_error(depth, 503)
        async with http.get(sim.rest_url + depth, params=url_params) as r:
            assert (r.status, (await r.json())["code"]) == (503, -1008)
        sim.faults.rest_bad_json(depth)
        async with http.get(sim.rest_url + depth, params=url_params) as r:
            assert r.status == 200
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(await r.read())
        sim.faults.rest_delay(depth, 0.4, count=2)
        with pytest.raises(TimeoutError):
            async with http.get(
                sim.rest_url + depth, params=url_params, timeout=aiohttp.ClientTimeout(total=0.1)
            ):
                pass
        started = time.perf_counter()
        async with http.get(sim.rest_url + depth, params=url_params) as r:
            assert r.status == 200
        assert time.perf_counter() - started >= 0.35
        assert sim.stats().rest_faults == {depth: 6, "/fapi/v1/time": 1}


@pytest.mark.asyncio
async def test_weight_limit_gives_429(cap: Capture) -> None:
    async with SimVenue([cap]) as sim, client() as http:
        sim.faults.weight_limits["fapi"] = 30
        async with http.get(
            sim.rest_url + "/fapi/v1/depth", params={"symbol": "BTCUSDT", "limit": "1000"}
        ) as r:
            assert (r.status, r.headers["X-MBX-USED-WEIGHT-1M"]) == (200, "20")
        async with http.get(
            sim.rest_url + "/fapi/v1/depth", params={"symbol": "BTCUSDT", "limit": "1000"}
        ) as r:
            assert r.status == 429
            assert r.headers["X-MBX-USED-WEIGHT-1M"] == "20"
            assert 55 <= int(r.headers["Retry-After"]) <= 60
        async with http.get(sim.rest_url + "/fapi/v1/ping") as r:
            assert (r.status, r.headers["X-MBX-USED-WEIGHT-1M"]) == (200, "21")
        assert sim.stats().used_weight == {"fapi": 21, "api": 0}


@pytest.mark.asyncio
async def test_control_endpoint_drives_faults(cap: Capture) -> None:
    async with SimVenue([cap]) as sim, client() as http:
        async with http.ws_connect(sim.ws_url + PUBLIC) as ws:
            await read(ws, 2)
            async with http.post(sim.rest_url + "/_sim/faults", json={"action": "close", "code": 1011}) as r:
                assert await r.json() == {"ok": True, "connections": 1}
            msg = await ws.receive(timeout=5)
            while msg.type is aiohttp.WSMsgType.TEXT:
                msg = await ws.receive(timeout=5)
            assert msg.data == 1011
        async with http.post(
            sim.rest_url + "/_sim/faults", json={"action": "rest_error", "path": "*", "status": 500}
        ):
            pass
        async with http.get(sim.rest_url + "/fapi/v1/time") as r:
            assert r.status == 500
        async with http.post(sim.rest_url + "/_sim/faults", json={"action": "explode"}) as r:
            assert r.status == 400
            assert not (await r.json())["ok"]
        async with http.get(sim.rest_url + "/_sim/stats") as r:
            stats = await r.json()
    assert stats["connections"][0]["close_code"] == 1011
    assert stats["rest_faults"] == {"/fapi/v1/time": 1}


# --------------------------------------------------------------------------- command line

READY = re.compile(r"^rest=http://127\.0\.0\.1:(\d+) ws=ws://127\.0\.0\.1:\1\n$")


@pytest.mark.asyncio
async def test_cli_prints_exactly_the_ready_line_and_stops_on_sigterm(cap: Capture) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ingestd.sim.cli", "--capture", str(BUNDLED_CAPTURE), "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        match = READY.match(line)
        assert match, line
        rest = line.split()[0].removeprefix("rest=")
        async with client() as http:
            async with http.get(rest + "/fapi/v1/exchangeInfo") as r:
                assert [s["symbol"] for s in (await r.json())["symbols"]] == ["BTCUSDT"]
            async with http.ws_connect(rest.replace("http", "ws") + PUBLIC) as ws:
                assert await read(ws, 10) == frames_of(cap, DEPTH, TICKER)[:10]
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    assert out == b""  # nothing after the ready line


def test_cli_missing_capture_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["--capture", str(tmp_path / "nope.gz")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert "capture not found" in err
