"""NATS JetStream publisher and ``ingestd tail``, against a real local nats-server.

Records are built here, independently of the venue parser, from real recorded Binance payloads
(hftbacktest USDⓈ-M BTCUSDT: trades, bookTickers, depth diffs and the REST snapshot; cryptofeed
USDⓈ-M: aggTrades and klines), published through :class:`NatsPublisher`, read back from
JetStream and compared field by field with the payload values. Each test uses its own stream and
subject prefix and deletes the stream afterwards. The outage test runs its own nats-server on a
free port and stops it mid-run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import pytest_asyncio
from pydantic import ValidationError

from ingestd import tail
from ingestd.book.records import Gap
from ingestd.bus import Bus, Consumer, OverflowPolicy
from ingestd.consumers.nats import (
    MSG_ID_HEADER,
    NatsPublisher,
    NatsSettings,
    decode_message,
    decode_record,
    encode_record,
    message_id,
    subject_for,
)
from ingestd.errors import ConfigError, ParseError, StartupError
from ingestd.producers.poller_records import LongShortRatio, OpenInterest
from ingestd.records import AggTrade, BookTicker, DepthDiff, DepthSnapshot, Kline, MarkPrice, Record, Trade
from tests.ops import completes_at_once, wait_for

nats = pytest.importorskip("nats", reason="nats-py (ingestd[nats]) is not installed")

NATS_HOST, NATS_PORT = "127.0.0.1", 4222
NATS_SERVER_BIN = shutil.which("nats-server") or "/usr/sbin/nats-server"
HFT_FILE = "hftbacktest/usdm_btcusdt_20240808.gz"
CF_FILE = "cryptofeed/2021-10_head/BINANCE_FUTURES.ws.1.0"
HFT_LINES = 1800


# --- real records, built from the payloads ------------------------------------------------------


def _levels(raw: list[list[str]]) -> list[tuple[float, float]]:
    return [(float(p), float(q)) for p, q in raw]


def _ns(ms: int) -> int:
    return ms * 1_000_000


def _hft_fields(local_ns: int, msg: dict[str, Any]) -> tuple[type[Record], dict[str, Any]] | None:
    """One hftbacktest line → (record type, expected field values straight from the payload)."""
    base = {"venue": "binance-usdm", "symbol": "BTC-USDT-PERP", "native": "BTCUSDT", "recv_ts": local_ns}
    if "lastUpdateId" in msg:  # the bare REST /fapi/v1/depth body
        return DepthSnapshot, {
            **base, "exchange_ts": _ns(msg["E"]), "transaction_ts": _ns(msg["T"]),
            "last_update_id": msg["lastUpdateId"], "bids": _levels(msg["bids"]), "asks": _levels(msg["asks"]),
        }  # fmt: skip
    d = msg["data"]
    base |= {"exchange_ts": _ns(d["E"]), "transaction_ts": _ns(d["T"])}
    if d["e"] == "trade":
        return Trade, {
            **base, "trade_id": d["t"], "price": float(d["p"]), "qty": float(d["q"]),
            "is_buyer_maker": d["m"], "trade_type": d["X"],
        }  # fmt: skip
    if d["e"] == "bookTicker":
        return BookTicker, {
            **base, "update_id": d["u"], "bid_price": float(d["b"]), "bid_qty": float(d["B"]),
            "ask_price": float(d["a"]), "ask_qty": float(d["A"]),
        }  # fmt: skip
    if d["e"] == "depthUpdate":
        return DepthDiff, {
            **base, "first_update_id": d["U"], "final_update_id": d["u"], "prev_final_update_id": d["pu"],
            "bids": _levels(d["b"]), "asks": _levels(d["a"]),
        }  # fmt: skip
    return None


def _cf_fields(recv_s: str, msg: dict[str, Any]) -> tuple[type[Record], dict[str, Any]] | None:
    """One cryptofeed USDⓈ-M line → aggTrade / kline fields (other kinds come from hftbacktest)."""
    d = msg["data"]
    native = d["s"]
    base = {
        "venue": "binance-usdm", "symbol": f"{native.removesuffix('USDT')}-USDT-PERP", "native": native,
        "exchange_ts": _ns(d["E"]), "recv_ts": int(float(recv_s) * 1e9),
    }  # fmt: skip
    if d["e"] == "aggTrade":
        return AggTrade, {
            **base, "transaction_ts": _ns(d["T"]), "agg_id": d["a"], "first_trade_id": d["f"],
            "last_trade_id": d["l"], "price": float(d["p"]), "qty": float(d["q"]), "is_buyer_maker": d["m"],
        }  # fmt: skip
    if d["e"] == "kline":
        k = d["k"]
        return Kline, {
            **base, "interval": k["i"], "open_time": _ns(k["t"]), "close_time": _ns(k["T"]),
            "open": float(k["o"]), "high": float(k["h"]), "low": float(k["l"]), "close": float(k["c"]),
            "volume": float(k["v"]), "quote_volume": float(k["q"]), "trades": k["n"],
            "taker_buy_volume": float(k["V"]), "taker_buy_quote_volume": float(k["Q"]), "closed": k["x"],
        }  # fmt: skip
    return None


class Real:
    """Records and, beside each, the field values read from its payload."""

    def __init__(self, pairs: list[tuple[Record, dict[str, Any]]]) -> None:
        self.records = [r for r, _ in pairs]
        self.fields = {message_id(r): f for r, f in pairs}


@pytest.fixture(scope="module")
def real(realdata: Path) -> Real:
    pairs: list[tuple[Record, dict[str, Any]]] = []
    with gzip.open(realdata / HFT_FILE, "rb") as fh:
        for i, line in enumerate(fh):
            if i >= HFT_LINES:
                break
            ts, _, body = line.partition(b" ")
            got = _hft_fields(int(ts), orjson.loads(body))
            if got is not None:
                pairs.append((got[0](**got[1]), got[1]))
    with (realdata / CF_FILE).open("rb") as fh:
        next(fh)  # the "<url> <-> <ts>" header line
        for line in fh:
            ts, _, body = line.partition(b": ")
            got = _cf_fields(ts.decode(), orjson.loads(body))
            if got is not None:
                pairs.append((got[0](**got[1]), got[1]))
    kinds = {type(r) for r, _ in pairs}
    assert kinds == {Trade, BookTicker, DepthDiff, DepthSnapshot, AggTrade, Kline}
    assert len({message_id(r) for r, _ in pairs}) == len(pairs), "real records must have distinct ids"
    return Real(pairs)


def assert_matches(rec: Record, expected: dict[str, Any]) -> None:
    got = msgspec.structs.asdict(rec)
    for name, value in expected.items():
        assert got[name] == value, f"{type(rec).__name__}.{name}: {got[name]!r} != {value!r}"
        assert type(got[name]) is type(value) or isinstance(value, list), name
    # Fields the payload does not set keep their defaults on both sides.
    assert set(got) >= set(expected)


# --- pure codec ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_codec_round_trip_is_exact(real: Real, fmt: str) -> None:
    for rec in real.records:
        payload = encode_record(rec, fmt)  # type: ignore[arg-type]
        back = decode_record(rec.channel, payload)
        assert back == rec
        assert type(back) is type(rec)
        assert decode_message(payload) == rec
        assert_matches(back, real.fields[message_id(rec)])


def test_json_payload_shape(real: Real) -> None:
    snap = next(r for r in real.records if isinstance(r, DepthSnapshot))
    doc = orjson.loads(encode_record(snap))
    assert next(iter(doc)) == "channel"
    assert doc["channel"] == "depth_snapshot"
    assert doc["last_update_id"] == 5123107852948
    assert doc["bids"][0] == list(snap.bids[0])
    assert len(doc["bids"]) == len(snap.bids) == 1000
    assert decode_record("depth_snapshot", doc) == snap  # a mapping decodes too


def test_message_ids_use_the_exchange_identity(real: Real) -> None:
    seen = {}
    for rec in real.records:
        mid = message_id(rec)
        venue, channel, native, key = mid.split(":", 3)
        assert (venue, channel, native) == (rec.venue, rec.channel, rec.native)
        f = real.fields[mid]
        expected = {
            "trade": f.get("trade_id"),
            "book_ticker": f.get("update_id"),
            "depth_diff": f.get("final_update_id"),
            "depth_snapshot": f.get("last_update_id"),
            "agg_trade": f.get("agg_id"),
            "kline": f"{f.get('open_time')}:{f['exchange_ts']}",
        }[channel]
        assert key == str(expected)
        seen[channel] = mid
    assert seen["depth_snapshot"] == "binance-usdm:depth_snapshot:BTCUSDT:5123107852948"


def _gap(kind: str, **kw: Any) -> Gap:
    base: dict[str, Any] = {"venue": "binance-usdm", "symbol": "BTC-USDT-PERP", "native": "BTCUSDT",
                            "exchange_ts": None, "recv_ts": 1_723_161_256_000_000_000, "reason": "r",
                            "last_update_id": 5123107837557, "first_update_id": None, "final_update_id": None,
                            "started_ts": 1_723_161_256_000_000_000}  # fmt: skip
    base.update(kw)
    return Gap(kind=kind, **base)


def _mark(mark_price: float, recv_ts: int = 1) -> MarkPrice:
    return MarkPrice(
        venue="binance-usdm", symbol="BTC-USDT-PERP", native="BTCUSDT", exchange_ts=1_617_308_820_003_000_000,
        recv_ts=recv_ts, mark_price=mark_price, index_price=58857.26693664, estimated_settle_price=None,
        funding_rate=0.00058455, next_funding_time=1_617_321_600_000_000_000,
    )  # fmt: skip


def test_a_gap_message_id_includes_its_kind() -> None:
    """A desync and the resync that ends it share ``started_ts`` (and may share every time):
    with the same id JetStream would keep one and drop the other as a duplicate."""
    desync, resync = _gap("desync"), _gap("resync", ended_ts=1_723_161_257_000_000_000)
    assert message_id(desync) != message_id(resync)
    assert message_id(desync).startswith("binance-usdm:gap:BTCUSDT:desync:1723161256000000000:")
    assert message_id(resync).startswith("binance-usdm:gap:BTCUSDT:resync:1723161256000000000:")
    assert message_id(_gap("disconnect")) != message_id(_gap("disconnect", reason="another connection"))
    assert message_id(desync) == message_id(_gap("desync"))  # a retry keeps its id


def test_records_sharing_a_millisecond_get_distinct_ids_unless_they_say_the_same() -> None:
    """Mark price, tickers and liquidations are keyed on their event time: their identity is
    their content, so two different events of one millisecond are two messages."""
    one, other = _mark(58940.14924532), _mark(58940.2)
    assert message_id(one) != message_id(other)
    assert message_id(one) == message_id(_mark(58940.14924532, recv_ts=2))  # the same event, heard twice
    assert message_id(one).startswith("binance-usdm:mark_price:BTCUSDT:1617308820003000000:")


def test_poller_rows_of_one_time_get_distinct_ids() -> None:
    """Three long/short ratios (and the current vs. historical open interest) share a channel and
    a timestamp; each is its own record."""
    base: dict[str, Any] = {"venue": "binance-usdm", "symbol": "BTC-USDT-PERP", "native": "BTCUSDT",
                            "exchange_ts": 1_583_139_600_000_000_000, "recv_ts": 1, "period": "5m",
                            "long_short_ratio": 1.4342, "long_share": 0.5891,
                            "short_share": 0.4108}  # fmt: skip
    ratios = [LongShortRatio(**base, kind=k) for k in ("top_position", "top_account", "global_account")]
    assert len({message_id(r) for r in ratios}) == 3
    oi: dict[str, Any] = {"venue": "binance-usdm", "symbol": "BTC-USDT-PERP", "native": "BTCUSDT",
                          "exchange_ts": 1_583_127_900_000_000_000, "recv_ts": 1,
                          "open_interest": 20403.637}  # fmt: skip
    assert message_id(OpenInterest(**oi)) != message_id(OpenInterest(**oi, period="5m"))


@pytest.mark.nats
@pytest.mark.asyncio
async def test_distinct_records_sharing_a_time_are_all_stored(nats_url: str, js_admin: Any) -> None:
    """Through JetStream: nothing distinct is lost to the duplicate window, copies still are."""
    s = _settings(nats_url, js_admin)
    pub = NatsPublisher(s)
    await pub.start()
    try:
        distinct: list[Record] = [_gap("desync"), _gap("resync", ended_ts=2), _mark(1.0), _mark(2.0)]
        await pub.consume([*distinct, _mark(1.0, recv_ts=5), _gap("desync")])
        await wait_for(lambda: pub.stats()["acked"] == 6, what="acks")
        stored = [decode_message(m.data) for m in await _stored(js_admin, s.stream)]
        assert stored == distinct
        assert pub.stats()["duplicates"] == 2
    finally:
        await pub.close()


def test_subject_safety() -> None:
    base: dict[str, Any] = {"venue": "binance-usdm", "symbol": "X", "exchange_ts": 1, "recv_ts": 1}
    ok = Trade(**base, native="BTCUSDT", trade_id=1, price=1.0, qty=1.0, is_buyer_maker=True)
    assert subject_for("a.b", ok) == "a.b.binance-usdm.trade.BTCUSDT"
    for bad in ("BTC.USDT", "BTC*", "BTC>", "BTC USDT", "", "BTC\tX", "币安"):
        rec = Trade(**base, native=bad, trade_id=1, price=1.0, qty=1.0, is_buyer_maker=True)
        assert subject_for("ingestd", rec) is None, bad


def test_decode_errors_are_parse_errors() -> None:
    with pytest.raises(ParseError, match="unknown channel"):
        decode_record("nope", b"{}")
    with pytest.raises(ParseError):
        decode_record("trade", b'{"channel":"trade","venue":"x"}')
    with pytest.raises(ParseError):
        decode_message(b"not json")
    with pytest.raises(ParseError, match="channel"):
        decode_message(b'{"venue":"x"}')


def test_settings_validation() -> None:
    assert NatsSettings().url is None
    s = NatsSettings(url="nats://a:4222,nats://b:4222", stream="S-1", subject_prefix="md.binance")
    assert s.servers == ["nats://a:4222", "nats://b:4222"]
    for bad in (
        {"url": "http://x:4222"},
        {"url": "nats://x y"},
        {"stream": "A.B"},
        {"subject_prefix": "a.*"},
        {"subject_prefix": "a..b"},
        {"max_inflight": 0},
        {"format": "xml"},
        {"duplicate_window_s": 600, "max_age_s": 60},
        {"unknown": 1},
    ):
        with pytest.raises(ValidationError):
            NatsSettings.model_validate(bad)
    with pytest.raises(ConfigError, match=r"nats\.url"):
        NatsPublisher(NatsSettings())


# --- against nats-server --------------------------------------------------------------------------


def _answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


@pytest.fixture(scope="module")
def nats_url() -> str:
    if not _answers(NATS_HOST, NATS_PORT):
        pytest.skip(f"no nats-server with JetStream answers on {NATS_HOST}:{NATS_PORT}")
    return f"nats://{NATS_HOST}:{NATS_PORT}"


class Admin:
    """A plain JetStream context for checking what the publisher wrote, plus the streams to delete."""

    def __init__(self, js: Any) -> None:
        self.js = js
        self.created: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.js, name)


@pytest_asyncio.fixture
async def js_admin(nats_url: str) -> AsyncIterator[Admin]:
    nc = await nats.connect(nats_url)
    admin = Admin(nc.jetstream())
    try:
        yield admin
    finally:
        for name in admin.created:
            with contextlib.suppress(Exception):
                await admin.js.delete_stream(name)
        await nc.close()


def _settings(url: str, js: Any, **kw: Any) -> NatsSettings:
    tag = uuid.uuid4().hex[:10]
    stream = f"T_{tag}"
    js.created.append(stream)
    return NatsSettings(url=url, stream=stream, subject_prefix=f"t{tag}", **kw)


async def _stored(js: Any, stream: str) -> list[Any]:
    info = await js.stream_info(stream)
    return [await js.get_msg(stream, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]


async def _publish_all(pub: NatsPublisher, records: list[Record], batch: int = 200) -> None:
    for i in range(0, len(records), batch):
        await pub.consume(list(records[i : i + batch]))


@pytest.mark.nats
@pytest.mark.asyncio
async def test_publish_read_back_and_deduplicate(nats_url: str, js_admin: Any, real: Real) -> None:
    s = _settings(nats_url, js_admin, max_inflight=64, max_age_s=3600, max_bytes=64 * 1024 * 1024)
    pub = NatsPublisher(s)
    await pub.start()
    try:
        n = len(real.records)
        await _publish_all(pub, real.records)
        await wait_for(lambda: pub.stats()["acked"] == n, what="all acks")
        assert pub.stats()["buffer_high_water"] <= n
        stored = await _stored(js_admin, s.stream)
        assert len(stored) == n
        for msg, rec in zip(stored, real.records, strict=True):  # one publisher: stream order = bus order
            assert msg.subject == f"{s.subject_prefix}.{rec.venue}.{rec.channel}.{rec.native}"
            assert msg.headers[MSG_ID_HEADER] == message_id(rec)
            back = decode_message(msg.data)
            assert back == rec
            assert_matches(back, real.fields[message_id(rec)])

        # The same records again (a reconnect or rotation replaying them): JetStream drops them all.
        await _publish_all(pub, real.records)
        await wait_for(lambda: pub.stats()["acked"] == 2 * n, what="second round of acks")
        assert pub.stats()["duplicates"] == n
        info = await js_admin.stream_info(s.stream)
        assert info.state.messages == n
        assert info.config.duplicate_window == 120.0
        assert info.config.max_age == 3600.0
        assert info.config.max_bytes == 64 * 1024 * 1024
        assert info.config.subjects == [f"{s.subject_prefix}.>"]
    finally:
        await pub.close()
    st = pub.stats()
    assert st["status"] == "closed"
    assert st["unpublished_at_close"] == 0
    assert st["buffer_dropped"] == st["failed"] == st["refused_unsafe"] == 0


@pytest.mark.nats
@pytest.mark.asyncio
async def test_through_the_bus(nats_url: str, js_admin: Any, real: Real) -> None:
    """As the daemon runs it: attached to the bus, closed by the bus's ordered shutdown."""
    s = _settings(nats_url, js_admin)
    pub = NatsPublisher(s)
    assert isinstance(pub, Consumer)
    bus = Bus()
    bus.attach(pub, maxsize=s.buffer_records, policy=OverflowPolicy.DROP_OLDEST)
    await bus.start()
    records = real.records[:500]
    for i in range(0, len(records), 50):
        await bus.publish(records[i : i + 50])
    await bus.close()  # drains the queue, then close() publishes what is buffered
    st = bus.stats()["consumers"]["nats"]
    assert st["status"] == "closed"
    assert st["acked"] == len(records)
    assert st["unpublished_at_close"] == 0
    assert st["dropped"] == 0  # the bus queue's own counter is not shadowed
    assert [decode_message(m.data) for m in await _stored(js_admin, s.stream)] == records


@pytest.mark.nats
@pytest.mark.asyncio
async def test_stream_is_updated_not_recreated(nats_url: str, js_admin: Any, real: Real) -> None:
    s = _settings(nats_url, js_admin, max_age_s=600)
    pub = NatsPublisher(s)
    await pub.start()
    await _publish_all(pub, real.records[:50])
    await wait_for(lambda: pub.stats()["acked"] == 50)
    await pub.close()
    again = NatsPublisher(s.model_copy(update={"max_age_s": 1200.0, "duplicate_window_s": 30.0}))
    await again.start()
    await again.close()
    info = await js_admin.stream_info(s.stream)
    assert info.state.messages == 50  # kept across the restart
    assert info.config.max_age == 1200.0
    assert info.config.duplicate_window == 30.0


@pytest.mark.nats
@pytest.mark.asyncio
async def test_unsafe_symbols_are_refused_and_counted(nats_url: str, js_admin: Any, real: Real) -> None:
    s = _settings(nats_url, js_admin)
    pub = NatsPublisher(s)
    await pub.start()
    good = real.records[:20]
    trade = next(r for r in real.records if isinstance(r, Trade))
    bad = [msgspec.structs.replace(trade, native=n) for n in ("BTC.USDT", "BTC*", "BTC>", "BTC USDT")]
    try:
        await pub.consume([*good[:10], *bad, *good[10:]])
        await wait_for(lambda: pub.stats()["acked"] == 20)
        assert pub.stats()["refused_unsafe"] == 4
        assert pub.stats()["buffered_total"] == 20
        stored = await _stored(js_admin, s.stream)
        assert [decode_message(m.data) for m in stored] == good
    finally:
        await pub.close()


@pytest.mark.nats
@pytest.mark.asyncio
async def test_overlapping_stream_is_a_startup_error(nats_url: str, js_admin: Any) -> None:
    s = _settings(nats_url, js_admin)
    await js_admin.add_stream(name=s.stream, subjects=[f"{s.subject_prefix}.>"])
    other = s.model_copy(update={"stream": s.stream + "_B"})
    js_admin.created.append(other.stream)
    pub = NatsPublisher(other)
    with pytest.raises(StartupError, match=other.stream):
        await pub.start()
    await pub.close()
    assert pub.stats()["status"] == "closed"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((NATS_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class OwnServer:
    """A nats-server with JetStream that the test starts and stops."""

    def __init__(self, store: Path) -> None:
        self.port = _free_port()
        self.store = store
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{NATS_HOST}:{self.port}"

    def start(self) -> None:
        cmd = [NATS_SERVER_BIN, "-js", "-a", NATS_HOST, "-p", str(self.port), "-sd", str(self.store)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _answers(NATS_HOST, self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server on port {self.port} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def own_server(tmp_path: Path, nats_url: str) -> Iterator[OwnServer]:
    if not Path(NATS_SERVER_BIN).is_file():
        pytest.skip(f"nats-server binary not found at {NATS_SERVER_BIN}")
    server = OwnServer(tmp_path / "js")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.nats
@pytest.mark.asyncio
async def test_outage_buffers_drops_oldest_and_resumes(own_server: OwnServer, real: Real) -> None:
    before, during = real.records[:300], real.records[300:1500]
    cap = 500
    s = NatsSettings(url=own_server.url, stream="OUTAGE", subject_prefix="outage", buffer_records=cap,
                     reconnect_wait_s=0.1, ack_timeout_s=1.0)  # fmt: skip
    pub = NatsPublisher(s)
    await pub.start()
    try:
        await _publish_all(pub, before)
        await wait_for(lambda: pub.stats()["acked"] == len(before), what="acks before the outage")

        own_server.stop()
        await wait_for(lambda: not pub.stats()["connected"], what="the publisher to notice the outage")
        for i in range(0, len(during), 100):
            completes_at_once(pub.consume(list(during[i : i + 100])))  # never waits on NATS
            assert pub.stats()["buffered"] <= cap
        st = pub.stats()
        assert st["buffered"] == cap
        assert st["buffer_dropped"] == len(during) - cap
        assert st["status"] == "disconnected"

        own_server.start()
        await wait_for(
            lambda: pub.stats()["acked"] == len(before) + cap, timeout=20, what="acks after reconnect"
        )
        assert pub.stats()["reconnects"] == 1
    finally:
        await pub.close()
    assert pub.stats()["unpublished_at_close"] == 0

    nc = await nats.connect(own_server.url)
    try:
        js = nc.jetstream()
        stored = await _stored(js, "OUTAGE")
    finally:
        await nc.close()
    # Complete apart from the counted drops: everything before, and the newest `cap` of the outage.
    expected = before + during[-cap:]
    assert [m.headers[MSG_ID_HEADER] for m in stored] == [message_id(r) for r in expected]
    for msg, rec in zip(stored, expected, strict=True):
        back = decode_message(msg.data)
        assert back == rec
        assert_matches(back, real.fields[message_id(rec)])


@pytest.mark.nats
@pytest.mark.asyncio
async def test_server_stopped_mid_flight_stores_each_record_once(own_server: OwnServer, real: Real) -> None:
    """The server goes away while acks are outstanding: those messages are published again after
    the reconnect, and the Nats-Msg-Id window keeps the stream free of the copies."""
    records = real.records[:1500]
    s = NatsSettings(url=own_server.url, stream="MIDFLIGHT", subject_prefix="midflight", max_inflight=50,
                     reconnect_wait_s=0.1, ack_timeout_s=1.0)  # fmt: skip
    pub = NatsPublisher(s)
    await pub.start()
    loop = asyncio.get_running_loop()
    stopping: asyncio.Future[None] | None = None
    try:
        for i in range(0, len(records), 10):
            if i == 300:
                stopping = loop.run_in_executor(None, own_server.stop)  # while publishing goes on
            await pub.consume(list(records[i : i + 10]))
            await asyncio.sleep(0.002)
        assert stopping is not None
        await stopping
        await loop.run_in_executor(None, own_server.start)

        def settled() -> bool:
            st = pub.stats()
            return st["connected"] and not (st["buffered"] or st["awaiting_ack"] or st["retry_queued"])

        await wait_for(settled, what="everything acknowledged after the restart")
        st = pub.stats()
        assert st["disconnects"] == 1
        assert st["reconnects"] == 1
        assert st["buffer_dropped"] == st["failed"] == 0
        # Each message is acknowledged once: as new, or as a duplicate when the first ack was lost.
        assert st["acked"] == len(records)
    finally:
        await pub.close()
    nc = await nats.connect(own_server.url)
    try:
        stored = await _stored(nc.jetstream(), "MIDFLIGHT")
    finally:
        await nc.close()
    by_id = {message_id(r): r for r in records}
    ids = [m.headers[MSG_ID_HEADER] for m in stored]
    assert len(ids) == len(set(ids)) == len(records)
    for msg, mid in zip(stored, ids, strict=True):
        assert decode_message(msg.data) == by_id[mid]


@pytest.mark.asyncio
async def test_unreachable_server_never_blocks_and_close_reports(real: Real) -> None:
    s = NatsSettings(url=f"nats://{NATS_HOST}:{_free_port()}", buffer_records=100, connect_timeout_s=0.3,
                     reconnect_wait_s=0.1, close_timeout_s=0.5)  # fmt: skip
    pub = NatsPublisher(s)
    # Not fatal, and it does not wait for the server (which never comes): it buffers and retries.
    await asyncio.wait_for(pub.start(), 30)
    await _publish_all(pub, real.records[:250], batch=50)
    assert pub.stats()["buffered"] == 100
    assert pub.stats()["buffer_dropped"] == 150
    # Bounded by close_timeout_s (an unbounded close would wait for the server for ever).
    await asyncio.wait_for(pub.close(), 30)
    await pub.close()  # idempotent
    assert pub.stats()["unpublished_at_close"] == 100
    assert pub.stats()["status"] == "closed"


@pytest.mark.asyncio
async def test_a_publish_after_close_is_counted_lost(real: Real) -> None:
    """A batch that reaches the publisher after close() (a late producer) is never sent: it is
    counted as lost, not buffered where nothing will publish it."""
    s = NatsSettings(url=f"nats://{NATS_HOST}:{_free_port()}", buffer_records=100, connect_timeout_s=0.3,
                     reconnect_wait_s=0.1, close_timeout_s=0.5)  # fmt: skip
    pub = NatsPublisher(s)
    await asyncio.wait_for(pub.start(), 30)
    await _publish_all(pub, real.records[:10], batch=10)
    await asyncio.wait_for(pub.close(), 30)
    assert pub.stats()["unpublished_at_close"] == 10
    await _publish_all(pub, real.records[10:40], batch=10)
    st = pub.stats()
    assert (st["lost_after_close"], st["buffered"], st["buffered_total"]) == (30, 10, 10)
    assert st["unpublished_at_close"] == 10


# --- ingestd tail -----------------------------------------------------------------------------------

HOOKED: list[Record] = []


async def collect_hook(record: Record) -> None:
    """A strategy hook as a user would write it (loaded by ``--hook tests.test_nats:collect_hook``)."""
    HOOKED.append(record)


def _tail_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ingestd tail")
    tail.add_arguments(parser)
    return parser.parse_args(list(argv))


async def _published(url: str, js: Any, records: list[Record]) -> NatsSettings:
    s = _settings(url, js)
    pub = NatsPublisher(s)
    await pub.start()
    await _publish_all(pub, records)
    await wait_for(lambda: pub.stats()["acked"] == len(records))
    await pub.close()
    return s


def _ndjson(text: str) -> list[Record]:
    lines = text.splitlines()
    assert all(line.startswith('{"channel":') for line in lines)
    return [decode_record(orjson.loads(line)["channel"], line.encode()) for line in lines]


@pytest.mark.nats
@pytest.mark.asyncio
async def test_tail_prints_ndjson_from_first(
    nats_url: str, js_admin: Any, real: Real, capsys: pytest.CaptureFixture[str]
) -> None:
    records = real.records[:400]
    s = await _published(nats_url, js_admin, records)
    code = await tail.run(_tail_args("--nats-url", nats_url, f"{s.subject_prefix}.>", "--from", "first",
                                     "--count", str(len(records))))  # fmt: skip
    assert code == 0
    got = _ndjson(capsys.readouterr().out)
    assert got == records
    for rec in got:
        assert_matches(rec, real.fields[message_id(rec)])

    # A subject filter narrows to one channel; --count stops early.
    trades = [r for r in records if r.channel == "trade"]
    subject = f"{s.subject_prefix}.binance-usdm.trade.>"
    assert await tail.run(_tail_args("--nats-url", nats_url, subject, "--from", "first", "--count", "5")) == 0
    assert _ndjson(capsys.readouterr().out) == trades[:5]


@pytest.mark.nats
@pytest.mark.asyncio
async def test_msgpack_payloads_tail_as_the_same_ndjson(
    nats_url: str, js_admin: Any, real: Real, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [r for r in real.records if r.channel in ("depth_snapshot", "kline", "agg_trade")][:60]
    s = _settings(nats_url, js_admin, format="msgpack")
    pub = NatsPublisher(s)
    await pub.start()
    await pub.consume(list(records))
    await wait_for(lambda: pub.stats()["acked"] == len(records))
    await pub.close()
    stored = await _stored(js_admin, s.stream)
    assert all(m.data[:1] != b"{" for m in stored)  # really MessagePack on the wire
    code = await tail.run(_tail_args("--nats-url", nats_url, f"{s.subject_prefix}.>", "--from", "first",
                                     "--count", str(len(records))))  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.encode() for line in lines] == [encode_record(r, "json") for r in records]


@pytest.mark.nats
@pytest.mark.asyncio
async def test_tail_from_time_and_new(
    nats_url: str, js_admin: Any, real: Real, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second, third = real.records[:100], real.records[100:150], real.records[150:170]
    s = await _published(nats_url, js_admin, first)  # acknowledged: stored before the mark
    mark = datetime.now(UTC)
    # The second batch must be stored strictly after the mark (same host, same clock).
    await wait_for(lambda: datetime.now(UTC) > mark, what="the clock past the mark")
    pub = NatsPublisher(s)
    await pub.start()
    try:
        await pub.consume(list(second))
        await wait_for(lambda: pub.stats()["acked"] == len(second))
        subject = f"{s.subject_prefix}.>"
        code = await tail.run(_tail_args("--nats-url", nats_url, subject, "--from", mark.isoformat(),
                                         "--count", str(len(second))))  # fmt: skip
        assert code == 0
        assert _ndjson(capsys.readouterr().out) == second

        # --from new: only what is published after the subscription starts.
        consumers = (await js_admin.stream_info(s.stream)).state.consumer_count
        job = asyncio.create_task(tail.run(_tail_args("--nats-url", nats_url, subject, "--count", "20")))

        async def subscribed() -> bool:
            # tail's ephemeral consumer exists: from now on it sees what is published.
            return bool((await js_admin.stream_info(s.stream)).state.consumer_count > consumers)

        await wait_for(subscribed, what="tail's subscription")
        await pub.consume(list(third))
        assert await asyncio.wait_for(job, 30) == 0
        assert _ndjson(capsys.readouterr().out) == third
    finally:
        await pub.close()


@pytest.mark.nats
@pytest.mark.asyncio
async def test_tail_feeds_hooks(
    nats_url: str, js_admin: Any, real: Real, capsys: pytest.CaptureFixture[str]
) -> None:
    records = real.records[:120]
    s = await _published(nats_url, js_admin, records)
    HOOKED.clear()
    code = await tail.run(_tail_args("--nats-url", nats_url, f"{s.subject_prefix}.>", "--from", "first",
                                     "--count", "120", "--hook", "tests.test_nats:collect_hook"))  # fmt: skip
    assert code == 0
    assert records == HOOKED  # real Record objects, in order
    assert all(type(a) is type(b) for a, b in zip(HOOKED, records, strict=True))
    assert capsys.readouterr().out == ""  # hooks instead of NDJSON


@pytest.mark.asyncio
async def test_tail_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert await tail.run(_tail_args("a.>", "--from", "2024-08-08T23:55:00")) == 2
    assert "time zone" in capsys.readouterr().err
    assert await tail.run(_tail_args("a.>", "--from", "yesterday")) == 2
    assert await tail.run(_tail_args("a b")) == 2
    assert await tail.run(_tail_args("a.>", "--hook", "no_such_module_xyz:f")) == 2
    assert "no_such_module_xyz" in capsys.readouterr().err
    url = f"nats://{NATS_HOST}:{_free_port()}"
    assert await tail.run(_tail_args("a.>", "--nats-url", url, "--connect-timeout", "0.3")) == 3
    assert "did not answer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _tail_args("a.>", "--count", "0")


@pytest.mark.nats
@pytest.mark.asyncio
async def test_tail_without_stream_is_a_startup_error(
    nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    subject = f"nothing{uuid.uuid4().hex[:8]}.>"
    assert await tail.run(_tail_args("--nats-url", nats_url, subject)) == 3
    assert "no stream holds" in capsys.readouterr().err


def test_parse_start() -> None:
    assert tail.parse_start("new") == ("new", None)
    assert tail.parse_start("first") == ("all", None)
    assert tail.parse_start("2024-08-08T23:55:00Z") == (
        "by_start_time",
        datetime(2024, 8, 8, 23, 55, tzinfo=UTC),
    )
    policy, when = tail.parse_start("2024-08-09T01:55:00+02:00")
    assert when == datetime(2024, 8, 8, 23, 55, tzinfo=UTC)
    assert policy == "by_start_time"
