"""The compiled speed-ups against their pure-Python twins (ingestd/speedups.py).

The differential tests replay every real capture that ships with the repository (``tests/data``
and the sim's bundled ``ingestd/sim/data``) through the real parser into two book managers, one on
the compiled order book and one on the pure-Python one, and require the same records out (gaps and
``BookTop`` views of 10 levels after every diff), the same tops after every diff, the same full
books every 64 diffs and at the end, and the same statistics.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingestd import speedups
from ingestd.book import book as book_mod
from ingestd.book import sync as sync_mod
from ingestd.book.book import PyOrderBook
from ingestd.book.manager import BookManager
from ingestd.records import AnyRecord, DepthDiff, Record
from ingestd.sim.captures import Capture, CaptureError, load_capture
from ingestd.venues.binance.parse import FrameParser, parse_depth_snapshot
from ingestd.venues.binance.symbols import Contract, ContractSet

ROOT = Path(__file__).resolve().parents[1]
CAPTURE_DIRS = (ROOT / "tests" / "data", ROOT / "ingestd" / "sim" / "data")
_NOT_CAPTURES = (".md", ".ndjson", ".json", ".py")

cbook = speedups.load("ingestd.book._cbook")
needs_cbook = pytest.mark.skipif(cbook is None, reason="compiled order book not built (or disabled)")


_NO_BOOK: dict[str, str] = {
    "BINANCE.0": "cryptofeed's recorder configuration, not a capture",
    "BINANCE_FUTURES.0": "cryptofeed's recorder configuration, not a capture",
    "cryptofeed_usdm_klines.ws": "the kline capture, loaded without its snapshot sibling",
    "spot_btcusdt_20240808_trades.gz": "a slice of trades and bookTickers, no depth diffs",
    "usdm_btcusdt_ws_head400.txt": "the first 400 frames, before the snapshot line",
}
"""Files of the data folders no book can sync on, and why (checked by a test below)."""


def _data_files() -> list[Path]:
    return [
        p
        for d in CAPTURE_DIRS
        if d.is_dir()
        for p in sorted(d.rglob("*"))
        if p.is_file() and not p.name.endswith(_NOT_CAPTURES)
    ]


def capture_files() -> list[Path]:
    """Every real capture a book can be rebuilt from."""
    return [p for p in _data_files() if p.name not in _NO_BOOK]


def test_the_files_left_out_hold_no_book() -> None:
    left_out = [p for p in _data_files() if p.name in _NO_BOOK]
    assert sorted({p.name for p in left_out}) == sorted(_NO_BOOK)
    for p in left_out:
        try:
            cap = load_capture(p)
        except CaptureError:
            continue
        assert not (any("@depth" in s for s in cap.streams) and cap.snapshots), f"{p} holds a book"


def test_extensions_are_built_unless_disabled() -> None:
    """A silent build failure (``optional = true`` in pyproject.toml) must not go unnoticed."""
    if speedups.NO_EXTENSIONS:
        assert book_mod.OrderBook is PyOrderBook
        assert speedups.active()["ingestd.book._cbook"] == "python"
        return
    assert cbook is not None, "ingestd.book._cbook was not built: is gcc installed? (pip install -e .)"
    assert book_mod.OrderBook is cbook.OrderBook
    assert speedups.active()["ingestd.book._cbook"] == "compiled"


# -- the book alone, on generated operations -------------------------------------------------


def _state(b: Any) -> tuple[Any, ...]:
    return (
        b.bids, b.asks, b.best_bid(), b.best_ask(), b.best_bid_price(), b.best_ask_price(), b.crossed(),
        len(b), b.levels(0), b.levels(1), b.levels(7), b.levels(10_000), b.last_update_id, repr(b),
    )  # fmt: skip


@needs_cbook
def test_compiled_book_equals_python_book_on_random_operations() -> None:
    assert cbook is not None
    rng = random.Random(15)
    py, c = PyOrderBook(), cbook.OrderBook()
    assert _state(py) == _state(c)
    ticks = [round(100 + i * 0.1, 1) for i in range(400)]
    for step in range(4000):
        op = rng.random()
        if op < 0.01:
            levels = [(rng.choice(ticks), float(rng.randint(0, 3))) for _ in range(rng.randint(0, 300))]
            py.load_snapshot(levels[::2], levels[1::2], step)
            c.load_snapshot(levels[::2], levels[1::2], step)
        elif op < 0.012:
            py.clear()
            c.clear()
        else:
            mid = rng.randint(100, 300)
            bids = [(ticks[max(0, mid - rng.randint(0, 60))], float(rng.randint(0, 2))) for _ in range(30)]
            asks = [(ticks[min(399, mid + rng.randint(0, 60))], float(rng.randint(0, 2))) for _ in range(30)]
            uid = step if rng.random() < 0.9 else None
            py.apply(bids, asks, uid)
            c.apply(bids, asks, uid)
        assert _state(py) == _state(c), step


@needs_cbook
def test_compiled_book_edge_cases() -> None:
    assert cbook is not None
    for b in (PyOrderBook(), cbook.OrderBook()):
        # A NaN price is never a key; -0.0 and 0.0 are one key; ints are numbers; any iterable works.
        b.load_snapshot([(math.nan, 1.0), (2, 3), (1.0, 0.0)], iter([(5.0, 1.0)]), 7)
        assert (b.bids, b.asks, b.last_update_id) == ({2.0: 3.0}, {5.0: 1.0}, 7)
        b.apply([(math.nan, 2.0), (-0.0, 1.0)], [[5.0, 0.0]])
        assert b.bids == {2.0: 3.0, 0.0: 1.0}
        assert b.best_bid() == (2.0, 3.0)
        assert b.best_ask() is None
        b.apply([(0.0, 0.0)], ())
        assert b.bids == {2.0: 3.0}
        with pytest.raises((TypeError, ValueError)):
            b.apply([(1.0,)], [])
        with pytest.raises(TypeError):
            b.apply([("x", 1.0)], [])
    with pytest.raises(TypeError):
        cbook.OrderBook(1)  # type: ignore[call-arg]


@needs_cbook
def test_compiled_book_grows_and_shrinks_and_keeps_tops() -> None:
    """Thousands of levels (table resizes, deletion chains), the best deleted level by level."""
    assert cbook is not None
    py, c = PyOrderBook(), cbook.OrderBook()
    prices = [i * 0.5 for i in range(1, 6001)]
    random.Random(3).shuffle(prices)
    for b in (py, c):
        b.apply([(p, 1.0) for p in prices], [(p + 5000.0, 2.0) for p in prices])
    assert _state(py) == _state(c)
    for p in heapq.nlargest(3000, prices):
        for b in (py, c):
            b.apply([(p, 0.0)], [(p + 5000.0, 0.0)])
        assert py.best_bid() == c.best_bid()
        assert py.best_ask() == c.best_ask()
    assert _state(py) == _state(c)


# -- every real capture through the whole book stage ----------------------------------------


def _records(cap: Capture, contracts: ContractSet, venue: str) -> Iterator[list[AnyRecord]]:
    """The capture's frames (parsed) and snapshots (at their recorded time), one batch each."""
    parser = FrameParser(venue, contracts)
    snaps = sorted(cap.snapshots, key=lambda s: s.recv_ns)
    k = 0
    for ts, frame in zip(cap.ts, cap.frames, strict=True):
        while k < len(snaps) and snaps[k].recv_ns <= ts:
            s = snaps[k]
            k += 1
            c = contracts.get(s.symbol)
            if c is not None:
                yield [parse_depth_snapshot(venue, c, s.body, s.recv_ns)]
        try:
            _, recs = parser.parse(frame, ts)
        except Exception:
            continue
        if recs:
            yield list(recs)


def _manager(contracts: ContractSet, venue: str, market: Any, requests: list[str]) -> BookManager:
    return BookManager(
        venue, contracts, market=market, request_snapshot=lambda n, u: requests.append(n),
        book_depth=10, book_every=1,
    )  # fmt: skip


@needs_cbook
@pytest.mark.parametrize("path", capture_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_compiled_and_python_books_agree_on_real_capture(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cbook is not None
    cap = load_capture(path)
    assert any("@depth" in s for s in cap.streams)
    assert cap.snapshots
    venue = "binance-spot" if cap.market == "spot" else "binance-usdm"
    market = "spot" if cap.market == "spot" else "futures"
    suffix = "" if market == "spot" else "-PERP"
    contracts = ContractSet(venue, tuple(
        Contract(venue=venue, native=n, symbol=f"{n}{suffix}", base=n, quote="", tick_size=0.01,
                 price_precision=2, min_qty=0.001, step_size=0.001)
        for n in cap.symbols()
    ))  # fmt: skip
    req_py: list[str] = []
    req_c: list[str] = []
    monkeypatch.setattr(sync_mod, "OrderBook", PyOrderBook)
    m_py = _manager(contracts, venue, market, req_py)
    monkeypatch.setattr(sync_mod, "OrderBook", cbook.OrderBook)
    m_c = _manager(contracts, venue, market, req_c)
    diffs = 0
    for batch in _records(cap, contracts, venue):
        out_py: list[Record] = m_py.process(batch)
        out_c: list[Record] = m_c.process(batch)
        assert out_py == out_c
        for rec in batch:
            if type(rec) is DepthDiff:
                diffs += 1
                a = m_py._by_native[rec.native].sync.book
                b = m_c._by_native[rec.native].sync.book
                assert isinstance(a, PyOrderBook)
                assert isinstance(b, cbook.OrderBook)
                assert (a.best_bid(), a.best_ask(), a.last_update_id) == (
                    b.best_bid(),
                    b.best_ask(),
                    b.last_update_id,
                ), rec
                if diffs % 64 == 0:
                    assert (a.bids, a.asks) == (b.bids, b.asks)
    assert diffs > 0
    assert req_py == req_c
    assert m_py.stats() == m_c.stats()
    synced = 0
    for native, sym in m_py._by_native.items():
        a, b = sym.sync.book, m_c._by_native[native].sync.book
        assert (a.bids, a.asks, len(a)) == (b.bids, b.asks, len(b))
        synced += sym.sync.is_synced
    assert synced > 0, "no book synced: the comparison would be of empty books"
