"""Replay real recorded Binance captures through BookManager: every book syncs, no gap, and the
book's top equals every bookTicker that carries the same update id (docs/binance.md §8.2).

The records are built here from the JSON (``float`` of each decimal string, ids as ints), the way
the parser must build them, so these tests check the book stage alone. One test at the end runs a
capture through the real parser too.

Sources (tests/data, see tests/data/PROVENANCE.md): hftbacktest examples (nkaz001/hftbacktest, MIT) and
cryptofeed sample data (bmoscon/cryptofeed; "This product includes software developed by Bryant
Moscon").
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingestd.book.manager import BookManager
from ingestd.book.records import Gap
from ingestd.book.sync import Market
from ingestd.records import AnyRecord, BookTicker, DepthDiff, DepthSnapshot, Level, Record
from ingestd.venues.binance.symbols import Contract, ContractSet
from tests.realdata import CF, HFT

USDM = "binance-usdm"
SPOT = "binance-spot"


# -- building records from the real JSON ------------------------------------------------------


def contract(native: str, venue: str) -> Contract:
    """A contract for ``native``; the normalized name only has to be unique for these tests."""
    suffix = "-PERP" if venue == USDM else ""
    return Contract(
        venue=venue,
        native=native,
        symbol=f"{native}{suffix}",
        base=native,
        quote="",
        tick_size=0.01,
        price_precision=2,
        min_qty=0.001,
        step_size=0.001,
    )


def levels(rows: list[list[str]]) -> list[Level]:
    return [(float(p), float(q)) for p, q in rows]


def diff_record(venue: str, d: dict[str, Any], recv_ts: int) -> DepthDiff:
    t = d.get("T")
    return DepthDiff(
        venue=venue,
        symbol=d["s"],
        native=d["s"],
        exchange_ts=d["E"] * 1_000_000,
        recv_ts=recv_ts,
        transaction_ts=None if t is None else t * 1_000_000,
        first_update_id=d["U"],
        final_update_id=d["u"],
        prev_final_update_id=d.get("pu"),
        bids=levels(d["b"]),
        asks=levels(d["a"]),
    )


def ticker_record(venue: str, d: dict[str, Any], recv_ts: int) -> BookTicker:
    e = d.get("E")
    return BookTicker(
        venue=venue,
        symbol=d["s"],
        native=d["s"],
        exchange_ts=None if e is None else e * 1_000_000,
        recv_ts=recv_ts,
        update_id=d["u"],
        bid_price=float(d["b"]),
        bid_qty=float(d["B"]),
        ask_price=float(d["a"]),
        ask_qty=float(d["A"]),
    )


def snapshot_record(venue: str, native: str, body: dict[str, Any], recv_ts: int) -> DepthSnapshot:
    e = body.get("E")
    return DepthSnapshot(
        venue=venue,
        symbol=native,
        native=native,
        exchange_ts=None if e is None else e * 1_000_000,
        recv_ts=recv_ts,
        last_update_id=body["lastUpdateId"],
        bids=levels(body["bids"]),
        asks=levels(body["asks"]),
    )


def stream_record(venue: str, msg: dict[str, Any], recv_ts: int) -> Record | None:
    stream: str = msg["stream"]
    if "@depth" in stream:
        return diff_record(venue, msg["data"], recv_ts)
    if stream.endswith("@bookTicker"):
        return ticker_record(venue, msg["data"], recv_ts)
    return None


def read_hft(path: Path, venue: str, native: str) -> Iterator[Record]:
    """An hftbacktest capture's depth diffs, bookTickers and its one snapshot, in file order."""
    with gzip.open(path, "rb") as fh:
        for line in fh:
            if b"@trade" in line:
                continue
            ts, _, body = line.partition(b" ")
            msg = orjson.loads(body)
            if "lastUpdateId" in msg:
                yield snapshot_record(venue, native, msg, int(ts))
                continue
            rec = stream_record(venue, msg, int(ts))
            if rec is not None:
                yield rec


_HTTP = re.compile(rb"^(\S+) -> ([\d.]+): (.*)$")
_WS = re.compile(rb"^([\d.]+): (.*)$")
_SYMBOL = re.compile(r"[?&]symbol=([A-Z0-9_]+)")


def read_cryptofeed(http: Path, ws: Path, venue: str) -> list[Record]:
    """A cryptofeed capture pair merged by receive time (snapshots land among the diffs)."""
    timed: list[tuple[int, int, Record]] = []
    for i, line in enumerate(http.read_bytes().splitlines()):
        if not line.strip():
            continue
        m = _HTTP.match(line)
        assert m, line[:80]
        sym = _SYMBOL.search(m[1].decode())
        assert sym
        recv = int(float(m[2]) * 1e9)
        timed.append((recv, i, snapshot_record(venue, sym[1], orjson.loads(m[3]), recv)))
    for i, line in enumerate(ws.read_bytes().splitlines()[1:]):
        if not line.strip():
            continue
        m = _WS.match(line)
        assert m, line[:80]
        recv = int(float(m[1]) * 1e9)
        rec = stream_record(venue, orjson.loads(m[2]), recv)
        if rec is not None:
            timed.append((recv, 1_000_000 + i, rec))
    timed.sort(key=lambda t: (t[0], t[1]))
    return [r for _, _, r in timed]


# -- replay ---------------------------------------------------------------------------------


@dataclass
class Replay:
    """A BookManager fed one record per batch, with everything it asked for recorded."""

    manager: BookManager
    requests: list[tuple[str, bool]] = field(default_factory=list)
    extra: list[Record] = field(default_factory=list)

    def feed(self, records: list[Record] | Iterator[Record]) -> None:
        for rec in records:
            batch: list[AnyRecord] = [rec]
            self.extra.extend(self.manager.process(batch))

    @property
    def gaps(self) -> list[Gap]:
        return [r for r in self.extra if isinstance(r, Gap)]


def replay(natives: list[str], venue: str, market: Market, **kw: Any) -> Replay:
    requests: list[tuple[str, bool]] = []
    cs = ContractSet(venue, tuple(contract(n, venue) for n in natives))
    manager = BookManager(
        venue, cs, market=market, request_snapshot=lambda n, u: requests.append((n, u)), **kw
    )
    return Replay(manager, requests)


# -- hftbacktest: one symbol each, exact audit counts from docs/binance.md §8.2 -------------

HFT_CASES = [
    # file, venue, native, market, snapshot L, audit checks (docs/binance.md §8.2), diffs applied
    ("usdm_btcusdt_20240808.gz", USDM, "BTCUSDT", "futures", 5123107852948, 629),
    ("usdm_ethusdt_20240808.gz", USDM, "ETHUSDT", "futures", 5123107856276, 551),
    ("cm_btcusd_perp_20240808.gz", USDM, "BTCUSD_PERP", "futures", 1007198635033, 1124),
    ("spot_btcusdt_20240808.gz", SPOT, "BTCUSDT", "spot", 50093239218, 564),
    ("spot_ethusdt_20240808.gz", SPOT, "ETHUSDT", "spot", 35346513512, 577),
]


@pytest.mark.parametrize(("name", "venue", "native", "market", "snap_id", "checks"), HFT_CASES)
def test_hftbacktest_capture_syncs_and_matches_every_book_ticker(
    name: str, venue: str, native: str, market: Market, snap_id: int, checks: int
) -> None:
    r = replay([native], venue, market)
    records = list(read_hft(HFT / name, venue, native))
    diffs = [x for x in records if isinstance(x, DepthDiff)]
    snap_at = next(i for i, x in enumerate(records) if isinstance(x, DepthSnapshot))

    r.feed(records[:snap_at])
    # Diffs before the snapshot are buffered, and the first one asked for a (non-urgent) snapshot.
    assert r.requests == [(native, False)]
    assert r.manager.get(native) is None
    st = r.manager.stats()["symbols"][native]
    assert st["state"] == "buffering"
    assert st["buffered"] == sum(isinstance(x, DepthDiff) for x in records[:snap_at]) > 0

    r.feed(records[snap_at:])
    st = r.manager.stats()["symbols"][native]
    assert r.gaps == []
    assert r.requests == [(native, False)]
    assert st["state"] == "synced"
    assert st["syncs"] == 1
    assert st["gaps"] == {}
    # docs/binance.md §8.2: every bookTicker whose u equals the last applied diff's u matched exactly.
    assert st["audit_checks"] == checks
    assert st["audit_mismatches"] == 0
    # Every diff after the ones contained in the snapshot was applied, and the book ends at the
    # final diff of the file, with the snapshot's id where the rules say.
    first = next(
        i
        for i, d in enumerate(diffs)
        if (d.final_update_id > snap_id if market == "spot" else d.final_update_id >= snap_id)
    )
    assert st["already_in_snapshot"] == first
    assert st["applied"] == len(diffs) - first
    view = r.manager.get(native)
    assert view is not None
    assert view.last_update_id == diffs[-1].final_update_id
    bids, asks = view.levels(5)
    assert bids == sorted(bids, reverse=True)
    assert asks == sorted(asks)
    assert bids[0][0] < asks[0][0]


def test_hftbacktest_first_applied_events_are_the_documented_edge_cases() -> None:
    """usdm_ethusdt's first valid event has u == L; spot_btcusdt's straddles L+1 (docs/binance.md §8.2)."""
    eth = [x for x in read_hft(HFT / "usdm_ethusdt_20240808.gz", USDM, "ETHUSDT") if isinstance(x, DepthDiff)]
    big_l = 5123107856276
    first = next(d for d in eth if d.final_update_id >= big_l)
    assert first.final_update_id == big_l
    assert first.first_update_id == 5123107853791

    r = replay(["ETHUSDT"], USDM, "futures")
    r.feed(read_hft(HFT / "usdm_ethusdt_20240808.gz", USDM, "ETHUSDT"))
    assert r.gaps == []
    # A rule written as ``u > L`` would have dropped it and then seen a false gap.
    assert r.manager.stats()["symbols"]["ETHUSDT"]["syncs"] == 1

    spot = [
        x for x in read_hft(HFT / "spot_btcusdt_20240808.gz", SPOT, "BTCUSDT") if isinstance(x, DepthDiff)
    ]
    big_l = 50093239218
    first = next(d for d in spot if d.final_update_id > big_l)
    assert (first.first_update_id, first.final_update_id) == (50093239208, 50093239224)


# -- cryptofeed: several symbols per connection, snapshots among the diffs ---------------------

CF_CASES = [
    # http file, ws file, venue, market, natives, docs/binance.md §8.2 ranges over the symbols:
    # (fewest, most) diffs applied and (fewest, most) bookTicker cross-checks
    (
        "2021-10_head/BINANCE_FUTURES.http.0.0",
        "2021-10_head/BINANCE_FUTURES.ws.1.0",
        USDM,
        "futures",
        ["SUSHIUSDT", "AKROUSDT", "KEEPUSDT", "CTKUSDT"],
        (132, 252),
        (7, 18),
    ),
    (
        "2021-04-17/BINANCE_FUTURES.http.4.0",
        "2021-04-17/BINANCE_FUTURES.ws.5.0",
        USDM,
        "futures",
        ["KSMUSDT", "YFIUSDT", "DENTUSDT", "XMRUSDT"],
        (233, 267),
        (12, 33),
    ),
    (
        "2021-10_head/BINANCE.http.0.0",
        "2021-10_head/BINANCE.ws.1.0",
        SPOT,
        "spot",
        ["NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR"],
        (1, 149),
        (0, 19),
    ),
    (
        "2021-08-14/BINANCE.http.0.0",
        "2021-08-14/BINANCE.ws.1.0",
        SPOT,
        "spot",
        ["XMRBTC", "FTMUSDT", "SXPBTC", "BADGERBTC"],
        (75, 222),
        (13, 34),
    ),
    (
        "2021-10_head/BINANCE_DELIVERY.http.0.0",
        "2021-10_head/BINANCE_DELIVERY.ws.1.0",
        USDM,
        "futures",
        [
            "BCHUSD_PERP",
            "LINKUSD_PERP",
            "BCHUSD_210924",
            "ETCUSD_PERP",
            "ETHUSD_210924",
            "XRPUSD_PERP",
            "BTCUSD_211231",
            "TRXUSD_PERP",
            "LINKUSD_211231",
            "EOSUSD_PERP",
        ],
        (101, 228),
        (8, 62),
    ),
]


@pytest.mark.parametrize(("http", "ws", "venue", "market", "natives", "applied", "checks"), CF_CASES)
def test_cryptofeed_capture_syncs_every_symbol(
    http: str,
    ws: str,
    venue: str,
    market: Market,
    natives: list[str],
    applied: tuple[int, int],
    checks: tuple[int, int],
) -> None:
    records = read_cryptofeed(CF / http, CF / ws, venue)
    assert {r.native for r in records} == set(natives)
    r = replay(natives, venue, market)
    r.feed(records)
    stats = r.manager.stats()
    assert r.gaps == []
    assert stats["totals"]["synced"] == len(natives)
    assert stats["totals"]["audit_mismatches"] == 0
    assert stats["totals"]["audit_checks"] > 0
    # One snapshot asked for per symbol, on its first diff; never urgent (nothing was lost).
    assert sorted(r.requests) == sorted((n, False) for n in natives)
    for native in natives:
        st = stats["symbols"][native]
        assert st["syncs"] == 1, native
        assert st["applied"] >= 1, native
        view = r.manager.get(native)
        assert view is not None
        last = max(x.final_update_id for x in records if isinstance(x, DepthDiff) and x.native == native)
        assert view.last_update_id == last
    per_symbol = [stats["symbols"][n] for n in natives]
    # The spread over symbols is exactly what the independent Decimal rebuild found (docs/binance.md §8.2).
    assert (min(s["applied"] for s in per_symbol), max(s["applied"] for s in per_symbol)) == applied
    assert (min(s["audit_checks"] for s in per_symbol), max(s["audit_checks"] for s in per_symbol)) == checks


def test_cryptofeed_coin_m_discards_up_to_42_buffered_diffs() -> None:
    """docs/binance.md §8.2: up to 42 buffered diffs per symbol are already in the COIN-M snapshots."""
    http, ws, venue, _, natives, _, _ = CF_CASES[-1]
    r = replay(natives, venue, "futures")
    r.feed(read_cryptofeed(CF / http, CF / ws, venue))
    contained = {n: r.manager.stats()["symbols"][n]["already_in_snapshot"] for n in natives}
    assert max(contained.values()) == contained["EOSUSD_PERP"] == 42


def test_real_parser_feeds_the_book_manager() -> None:
    """The whole USDⓈ-M BTCUSDT capture through the real frame parser and snapshot parser."""
    parse = pytest.importorskip("ingestd.venues.binance.parse")
    cs = ContractSet(USDM, (contract("BTCUSDT", USDM),))
    parser = parse.FrameParser(USDM, cs)
    requests: list[tuple[str, bool]] = []
    manager = BookManager(USDM, cs, market="futures", request_snapshot=lambda n, u: requests.append((n, u)))
    extra: list[Record] = []
    with gzip.open(HFT / "usdm_btcusdt_20240808.gz", "rb") as fh:
        for line in fh:
            ts, _, body = line.partition(b" ")
            if body.startswith(b'{"lastUpdateId"'):
                batch: list[AnyRecord] = [parse.parse_depth_snapshot(USDM, cs.contracts[0], body, int(ts))]
            else:
                batch = list(parser.parse(body, int(ts))[1])
            extra.extend(manager.process(batch))
    st = manager.stats()["symbols"]["BTCUSDT"]
    assert extra == []
    assert requests == [("BTCUSDT", False)]
    assert (st["state"], st["syncs"], st["audit_checks"], st["audit_mismatches"]) == ("synced", 1, 629, 0)
