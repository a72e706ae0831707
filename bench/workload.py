"""The benchmark workload: a generated USDⓈ-M capture with realistic shapes, written once.

Every contender reads the same bytes: the sim (``ingestd.sim``) replays one file in the
hftbacktest line format (``<recv_ns> <combined-stream frame>`` per line, REST depth bodies on
their own line) that this module writes into ``bench/.cache`` and reuses while its parameters
are unchanged.

Mix (per frame): 45 % depth diffs (10-40 levels per side), 25 % aggTrade, 20 % bookTicker, 4 %
markPrice, 3 % kline, 3 % 24hrTicker, over ``symbols`` real USDⓈ-M perpetuals (their tick and
step decimals are from the real fapi exchangeInfo
``tests/data/cryptofeed/2021-10_head/BINANCE_FUTURES.0``). Activity is Zipf-like (BTCUSDT
busiest), like the real market.

Shapes: every payload keeps the key order and value formats of a real frame of its kind (the
templates below name theirs: hftbacktest ``usdm_btcusdt_20240808`` for depthUpdate/bookTicker,
crypto-msg-parser for aggTrade/markPrice/24hrTicker, cryptofeed ``BINANCE_FUTURES.ws.1.0`` for
kline). Values evolve plausibly and consistently:

* each symbol keeps a true order book (integer ticks); a diff changes 10-40 levels per side near
  the top, sometimes moves the touch by one tick, and never crosses the book. Update ids are one
  global sequence (futures ids are global), and every diff's ``pu`` is the previous diff's ``u``;
* a bookTicker shows the true top; about a third repeat the ``u`` of the symbol's last diff (so
  ingestd's book audit checks them), the others take a fresh id between diffs, like Binance;
* trades happen at the touch with growing agg/trade ids; klines and tickers accumulate them;
* a REST depth snapshot of the true book (``lastUpdateId`` = a diff's ``u``) is written after
  the 3rd diff of each symbol and then after its first diff once :data:`SNAPSHOT_EVERY` frames
  went by, so the sim, which answers ``/depth`` with the latest recorded snapshot at the replay
  position, always has a fresh one for every symbol, busy or not (the best
  :data:`SNAPSHOT_LEVELS` levels a side). The bodies carry ``symbol`` (as COIN-M's do) because
  one file holds many symbols.

Timing: events arrive at ``rate`` per second of capture time (``--speed 1`` replays at that
rate); a frame's receive time is its event time ``E`` plus a constant, so the sim's pacing
clock maps every ``E`` exactly (the latency run uses that to measure exchange→hook).
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from ingestd.venues.binance.channels import USDM_CHANNELS, stream_name

VERSION: Final = 5
"""Bumped whenever the generator's output changes: the cache key includes it."""

SNAPSHOT_EVERY: Final = 8000
"""A REST snapshot line per symbol at most every this many frames (of all symbols)."""
SNAPSHOT_LEVELS: Final = 200
"""Levels per side in a recorded snapshot (ingestd asks for 50 in the benchmark)."""

RECV_DELAY_NS: Final = 2_000_000
"""Capture receive time = event time + this (a constant, so pacing follows ``E`` exactly)."""

MIX: Final = (
    ("depth", 45),
    ("aggTrade", 25),
    ("bookTicker", 20),
    ("markPrice", 4),
    ("kline", 3),
    ("ticker", 3),
)
"""Percent of frames per stream kind."""

CHANNEL: Final = {
    "depth": "depth_diff",
    "aggTrade": "agg_trade",
    "bookTicker": "book_ticker",
    "markPrice": "mark_price",
    "kline": "kline",
    "ticker": "ticker",
}
"""Stream kind → ingestd channel."""

STREAM_SUFFIX: Final = {
    k: stream_name(USDM_CHANNELS[ch], "", interval="1m", levels=20) for k, ch in CHANNEL.items()
}
"""Exactly the names ingestd subscribes (the channel table's templates), without the symbol."""

ROUTE: Final = {k: USDM_CHANNELS[ch].route or "" for k, ch in CHANNEL.items()}

# (symbol, price decimals, tick in units of the last price decimal, qty decimals, typical price).
# Decimals and ticks: fapi exchangeInfo (tests/data/cryptofeed/2021-10_head/
# BINANCE_FUTURES.0); BTCUSDT's tick is today's 0.10 (hftbacktest 2024 writes "61800.20").
# Typical prices are round figures of the right magnitude, only used to start the walk.
SYMBOLS: Final = (
    ("BTCUSDT", 2, 10, 3, 61800.0), ("ETHUSDT", 2, 1, 3, 2610.0), ("BCHUSDT", 2, 1, 3, 330.0),
    ("XRPUSDT", 4, 1, 1, 0.56), ("EOSUSDT", 3, 1, 1, 0.52), ("LTCUSDT", 2, 1, 3, 62.0),
    ("TRXUSDT", 5, 1, 0, 0.125), ("ETCUSDT", 3, 1, 2, 19.4), ("LINKUSDT", 3, 1, 2, 10.3),
    ("XLMUSDT", 5, 1, 0, 0.093), ("ADAUSDT", 5, 10, 0, 0.34), ("XMRUSDT", 2, 1, 3, 160.0),
    ("DASHUSDT", 2, 1, 3, 23.0), ("ZECUSDT", 2, 1, 3, 28.0), ("XTZUSDT", 3, 1, 1, 0.66),
    ("BNBUSDT", 3, 10, 2, 510.0), ("ATOMUSDT", 3, 1, 2, 4.9), ("ONTUSDT", 4, 1, 1, 0.17),
    ("IOTAUSDT", 4, 1, 1, 0.13), ("BATUSDT", 4, 1, 1, 0.17), ("VETUSDT", 6, 10, 0, 0.022),
    ("NEOUSDT", 3, 1, 2, 9.1), ("QTUMUSDT", 3, 1, 1, 2.2), ("IOSTUSDT", 6, 1, 0, 0.0063),
    ("THETAUSDT", 4, 10, 1, 1.05), ("ALGOUSDT", 4, 1, 1, 0.12), ("ZILUSDT", 5, 1, 0, 0.0139),
    ("KNCUSDT", 5, 100, 0, 0.41), ("ZRXUSDT", 4, 1, 1, 0.29), ("COMPUSDT", 2, 1, 3, 44.0),
    ("OMGUSDT", 4, 1, 1, 0.31), ("DOGEUSDT", 6, 10, 0, 0.1012), ("SXPUSDT", 4, 1, 1, 0.21),
    ("KAVAUSDT", 4, 1, 1, 0.33), ("BANDUSDT", 4, 1, 1, 1.14), ("RLCUSDT", 4, 1, 1, 1.42),
    ("WAVESUSDT", 4, 10, 1, 1.01), ("MKRUSDT", 2, 10, 3, 1870.0), ("SNXUSDT", 3, 1, 1, 1.52),
    ("DOTUSDT", 3, 1, 1, 4.45), ("DEFIUSDT", 1, 1, 3, 720.0), ("YFIUSDT", 1, 10, 3, 5120.0),
    ("BALUSDT", 3, 1, 1, 1.88), ("CRVUSDT", 3, 1, 1, 0.265), ("TRBUSDT", 3, 10, 1, 48.0),
    ("RUNEUSDT", 4, 10, 0, 3.61), ("SUSHIUSDT", 4, 10, 0, 0.61), ("SOLUSDT", 4, 10, 0, 152.3),
    ("UNIUSDT", 4, 10, 0, 6.31), ("AVAXUSDT", 4, 10, 0, 21.07),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Workload:
    """A generated capture on disk and what it holds."""

    path: Path
    frames: int
    symbols: tuple[str, ...]
    rate: float
    """Frames per second of capture time (``--speed 1`` replays at this rate)."""
    streams: dict[str, int]
    """Frames per stream name."""
    snapshots: int
    bytes: int
    levels: int
    """Depth level rows over all diffs."""

    def count(self, kinds: tuple[str, ...] | None = None) -> int:
        """Frames of the given stream kinds (``None``: all)."""
        if kinds is None:
            return self.frames
        suffixes = tuple(STREAM_SUFFIX[k] for k in kinds)
        return sum(n for name, n in self.streams.items() if name.endswith(suffixes))

    def stream_names(self, kinds: tuple[str, ...] | None = None) -> dict[str, list[str]]:
        """Stream names per route, in the order ingestd subscribes them."""
        out: dict[str, list[str]] = {}
        for sym in self.symbols:
            for kind, suffix in STREAM_SUFFIX.items():
                if kinds is None or kind in kinds:
                    out.setdefault(ROUTE[kind], []).append(sym.lower() + suffix)
        return out


# -- number formatting -------------------------------------------------------------------------


def _fixed(units: int, decimals: int) -> str:
    """``units`` of ``10**-decimals`` as Binance writes it (``61800.20``, ``0.000``, ``5``)."""
    if decimals == 0:
        return str(units)
    whole, frac = divmod(units, 10**decimals)
    return f"{whole}.{frac:0{decimals}d}"


class _Side:
    """One side of a true book: ``tick -> qty units``, with sorted ticks for the touch."""

    __slots__ = ("levels", "ticks")

    def __init__(self) -> None:
        self.levels: dict[int, int] = {}
        self.ticks: list[int] = []

    def set(self, tick: int, qty: int) -> None:
        if qty:
            if tick not in self.levels:
                bisect.insort(self.ticks, tick)
            self.levels[tick] = qty
        elif self.levels.pop(tick, None) is not None:
            del self.ticks[bisect.bisect_left(self.ticks, tick)]


class _Symbol:
    """The evolving state of one symbol: book, ids, candle and 24 h ticker figures."""

    def __init__(self, spec: tuple[str, int, int, int, float], rng: random.Random, now_ms: int) -> None:
        native, pdec, tick_units, qdec, price = spec
        self.native = native
        self.lower = native.lower()
        self.pdec, self.qdec, self.tick_units = pdec, qdec, tick_units
        self.rng = rng
        tick_value = tick_units / 10**pdec
        mid = max(1000, round(price / tick_value))
        self.bids, self.asks = _Side(), _Side()
        self.depth = 400
        # Up to ~50 kUSDT notional per level, in qty units.
        self.max_qty = max(2, int(50_000 / price * 10**qdec))
        # Pools drawn once per symbol: the generator draws from them with getrandbits(12).
        self.qty_pool = [self._qty() for _ in range(4096)]
        self.dist_pool = [min(int(rng.expovariate(1 / 20.0)), self.depth - 1) for _ in range(4096)]
        self._qtys: dict[int, str] = {}
        for i in range(self.depth):
            if rng.random() < 0.9 or i == 0:
                self.bids.set(mid - 1 - i, self._qty())
            if rng.random() < 0.9 or i == 0:
                self.asks.set(mid + i, self._qty())
        self._prices: dict[int, str] = {}
        self.diffs = 0
        self.last_u = 0
        self.echoed = True
        self.last_periodic: dict[str, int] = {}
        self.snapshot_at = 0
        self.agg_id = rng.randrange(10**8, 10**9)
        self.trade_id = rng.randrange(10**9, 4 * 10**9)
        self.minute = now_ms // 60_000
        self.k_open = self.k_high = self.k_low = self.k_close = self.mid_units()
        self.k_first = self.trade_id + 1
        self.k_trades = 0
        self.k_vol = self.k_quote = self.k_taker = self.k_taker_quote = 0.0
        self.day_open = self.mid_units()
        self.day_high = self.day_open + 40 * tick_units
        self.day_low = self.day_open - 40 * tick_units
        self.day_vol = rng.uniform(1e5, 1e7) * 10**qdec / max(price, 1e-9)
        self.day_trades = rng.randrange(100_000, 3_000_000)

    def _qty(self) -> int:
        # Log-uniform: many small levels, a few large ones.
        return max(1, int(math.exp(self.rng.uniform(0.0, math.log(self.max_qty)))))

    def price(self, tick: int) -> str:
        s = self._prices.get(tick)
        if s is None:
            s = self._prices[tick] = _fixed(tick * self.tick_units, self.pdec)
        return s

    def qty(self, units: int) -> str:
        s = self._qtys.get(units)
        if s is None:
            s = self._qtys[units] = _fixed(units, self.qdec)
        return s

    def best_bid(self) -> int:
        return self.bids.ticks[-1]

    def best_ask(self) -> int:
        return self.asks.ticks[0]

    def mid_units(self) -> int:
        return (self.best_bid() + self.best_ask()) * self.tick_units // 2

    # -- depth ---------------------------------------------------------------------------------

    def diff_levels(self) -> tuple[dict[int, int], dict[int, int]]:
        """Apply one random diff to the true book; return the changed levels per side."""
        rng = self.rng
        bids: dict[int, int] = {}
        asks: dict[int, int] = {}
        b, a = self.best_bid(), self.best_ask()
        move = rng.random()
        top_b, top_a = b, a
        pick = self.qty_pool
        if move < 0.08 and len(self.asks.ticks) > 2:
            # The touch moves up: the best ask is taken, a bid appears where it was; the far
            # ends follow so each side keeps about ``depth`` ticks.
            top_b, top_a = a, self.asks.ticks[1]
            bids[a] = pick[rng.getrandbits(12)]
            asks[a] = 0
            asks[top_a] = pick[rng.getrandbits(12)]
            asks[a + self.depth] = pick[rng.getrandbits(12)]
            bids[b - self.depth] = 0
        elif move < 0.16 and len(self.bids.ticks) > 2:
            top_b, top_a = self.bids.ticks[-2], b
            asks[b] = pick[rng.getrandbits(12)]
            bids[b] = 0
            bids[top_b] = pick[rng.getrandbits(12)]
            bids[b - self.depth] = pick[rng.getrandbits(12)]
            asks[a + self.depth] = 0
        qty_pool, dist_pool, bits, rnd = self.qty_pool, self.dist_pool, rng.getrandbits, rng.random
        for side, out, top, sign in ((self.bids, bids, top_b, -1), (self.asks, asks, top_a, 1)):
            want = rng.randint(10, 40)
            levels = side.levels
            tries = 0
            while len(out) < want and tries < 400:
                tries += 1
                dist = dist_pool[bits(12)]
                tick = top + sign * dist
                if tick in out:
                    continue
                # Never delete the touch (that would move it: only the moves above do).
                if dist == 0 or rnd() >= 0.18 or tick not in levels:
                    out[tick] = qty_pool[bits(12)]
                else:
                    out[tick] = 0
        for tick, q in bids.items():
            self.bids.set(tick, q)
        for tick, q in asks.items():
            self.asks.set(tick, q)
        assert self.best_bid() < self.best_ask()
        return bids, asks

    def levels_json(self, changed: dict[int, int], reverse: bool) -> str:
        price, qty = self.price, self.qty
        return ",".join(f'["{price(t)}","{qty(changed[t])}"]' for t in sorted(changed, reverse=reverse))

    def snapshot_json(self, e_ms: int) -> str:
        """A fapi REST depth body of the true book (plus ``symbol``, see the module doc)."""
        price, qty = self.price, self.qty
        bids = ",".join(
            f'["{price(t)}","{qty(self.bids.levels[t])}"]'
            for t in reversed(self.bids.ticks[-SNAPSHOT_LEVELS:])
        )
        asks = ",".join(
            f'["{price(t)}","{qty(self.asks.levels[t])}"]' for t in self.asks.ticks[:SNAPSHOT_LEVELS]
        )
        return (
            f'{{"lastUpdateId":{self.last_u},"E":{e_ms},"T":{e_ms - 3},"symbol":"{self.native}",'
            f'"bids":[{bids}],"asks":[{asks}]}}'
        )

    # -- trades, candles, tickers --------------------------------------------------------------

    def trade(self, e_ms: int) -> tuple[int, int, bool]:
        """(price tick, qty units, buyer is maker) of one aggregated trade at the touch."""
        buyer_maker = self.rng.random() < 0.5
        tick = self.best_bid() if buyer_maker else self.best_ask()
        qty = max(1, self.qty_pool[self.rng.getrandbits(12)] // 4)
        n = 1 + int(self.rng.expovariate(0.7))
        self.agg_id += 1
        self.trade_id += n
        self._roll_minute(e_ms)
        units = tick * self.tick_units
        self.k_close = units
        self.k_high, self.k_low = max(self.k_high, units), min(self.k_low, units)
        self.day_high, self.day_low = max(self.day_high, units), min(self.day_low, units)
        self.k_trades += n
        self.day_trades += n
        q = qty / 10**self.qdec
        notional = q * units / 10**self.pdec
        self.k_vol += q
        self.k_quote += notional
        self.day_vol += qty
        if not buyer_maker:
            self.k_taker += q
            self.k_taker_quote += notional
        return tick, qty, buyer_maker

    def _roll_minute(self, e_ms: int) -> bool:
        minute = e_ms // 60_000
        if minute == self.minute:
            return False
        self.minute = minute
        self.k_open = self.k_high = self.k_low = self.k_close = self.mid_units()
        self.k_first = self.trade_id + 1
        self.k_trades = 0
        self.k_vol = self.k_quote = self.k_taker = self.k_taker_quote = 0.0
        return True


# -- frames (templates keep the real key order) ------------------------------------------------


def _depth(s: _Symbol, e_ms: int, first: int, final: int, prev: int, b: str, a: str) -> str:
    # hftbacktest usdm_btcusdt_20240808: {"e","E","T","s","U","u","pu","b","a"}
    return (
        f'{{"stream":"{s.lower}@depth@100ms","data":{{"e":"depthUpdate","E":{e_ms},"T":{e_ms - 1},'
        f'"s":"{s.native}","U":{first},"u":{final},"pu":{prev},"b":[{b}],"a":[{a}]}}}}'
    )


def _book_ticker(s: _Symbol, e_ms: int, u: int) -> str:
    # hftbacktest usdm_btcusdt_20240808: {"e","u","s","b","B","a","A","T","E"}
    b, a = s.best_bid(), s.best_ask()
    return (
        f'{{"stream":"{s.lower}@bookTicker","data":{{"e":"bookTicker","u":{u},"s":"{s.native}",'
        f'"b":"{s.price(b)}","B":"{s.qty(s.bids.levels[b])}","a":"{s.price(a)}",'
        f'"A":"{s.qty(s.asks.levels[a])}","T":{e_ms},"E":{e_ms}}}}}'
    )


def _agg_trade(s: _Symbol, e_ms: int) -> str:
    # crypto-msg-parser line 5 (USDⓈ-M): {"e","E","a","s","p","q","f","l","T","m"}
    n_before = s.trade_id
    tick, qty, maker = s.trade(e_ms)
    return (
        f'{{"stream":"{s.lower}@aggTrade","data":{{"e":"aggTrade","E":{e_ms},"a":{s.agg_id},'
        f'"s":"{s.native}","p":"{s.price(tick)}","q":"{s.qty(qty)}","f":{n_before + 1},'
        f'"l":{s.trade_id},"T":{e_ms - 1},"m":{"true" if maker else "false"}}}}}'
    )


def _mark_price(s: _Symbol, e_ms: int) -> str:
    # crypto-msg-parser line 9: {"e","E","s","p","P","i","r","T"}; 8 decimals, T = next funding.
    mid = s.mid_units() / 10**s.pdec
    rng = s.rng
    funding = (e_ms // 28_800_000 + 1) * 28_800_000
    return (
        f'{{"stream":"{s.lower}@markPrice@1s","data":{{"e":"markPriceUpdate","E":{e_ms},'
        f'"s":"{s.native}","p":"{mid * (1 + rng.uniform(-2e-4, 2e-4)):.8f}",'
        f'"P":"{mid * (1 + rng.uniform(-5e-4, 5e-4)):.8f}","i":"{mid * (1 + rng.uniform(-3e-4, 3e-4)):.8f}",'
        f'"r":"{rng.uniform(-1e-4, 3e-4):.8f}","T":{funding}}}}}'
    )


def _kline(s: _Symbol, e_ms: int) -> str:
    # cryptofeed 2021-10_head BINANCE_FUTURES.ws.1.0: {"e","E","s","k":{"t","T","s","i","f","L",
    # "o","c","h","l","v","n","x","q","V","Q","B"}}
    s._roll_minute(e_ms)
    start = s.minute * 60_000
    p, qd = s.pdec, s.qdec
    closed = "true" if e_ms - start >= 59_000 else "false"
    return (
        f'{{"stream":"{s.lower}@kline_1m","data":{{"e":"kline","E":{e_ms},"s":"{s.native}","k":{{'
        f'"t":{start},"T":{start + 59_999},"s":"{s.native}","i":"1m","f":{s.k_first},"L":{s.trade_id},'
        f'"o":"{_fixed(s.k_open, p)}","c":"{_fixed(s.k_close, p)}","h":"{_fixed(s.k_high, p)}",'
        f'"l":"{_fixed(s.k_low, p)}","v":"{s.k_vol:.{qd}f}","n":{s.k_trades},"x":{closed},'
        f'"q":"{s.k_quote:.5f}","V":"{s.k_taker:.{qd}f}","Q":"{s.k_taker_quote:.5f}","B":"0"}}}}}}'
    )


def _ticker(s: _Symbol, e_ms: int) -> str:
    # crypto-msg-parser line 35 (USDⓈ-M): {"e","E","s","p","P","w","c","Q","o","h","l","v","q",
    # "O","C","F","L","n"}
    p, qd = s.pdec, s.qdec
    last = s.k_close
    change = last - s.day_open
    vol = s.day_vol / 10**qd
    avg = (s.day_high + s.day_low) // 2
    return (
        f'{{"stream":"{s.lower}@ticker","data":{{"e":"24hrTicker","E":{e_ms},"s":"{s.native}",'
        f'"p":"{"-" if change < 0 else ""}{_fixed(abs(change), p)}","P":"{100 * change / s.day_open:.3f}",'
        f'"w":"{_fixed(avg, p)}","c":"{_fixed(last, p)}","Q":"{_fixed(1 + s.max_qty // 50, qd)}",'
        f'"o":"{_fixed(s.day_open, p)}","h":"{_fixed(s.day_high, p)}","l":"{_fixed(s.day_low, p)}",'
        f'"v":"{vol:.{qd}f}","q":"{vol * avg / 10**p:.2f}","O":{e_ms - 86_400_000},"C":{e_ms - 5},'
        f'"F":{s.trade_id - s.day_trades},"L":{s.trade_id},"n":{s.day_trades}}}}}'
    )


# -- the generator -----------------------------------------------------------------------------


def _lines(frames: int, n_symbols: int, rate: float, seed: int, stats: dict[str, int]) -> Iterator[str]:
    rng = random.Random(seed)
    start_ms = 1_723_161_600_000  # 2024-08-09 00:00 UTC, next to the hftbacktest captures
    syms = [_Symbol(spec, rng, start_ms) for spec in SYMBOLS[:n_symbols]]
    weights = [1.0 / (i + 1) ** 0.9 for i in range(len(syms))]
    busy = list(itertools.accumulate(weights))
    kinds = [k for k, _ in MIX]
    cum_mix = list(itertools.accumulate(w for _, w in MIX))
    gid = 5_123_107_852_948  # update ids: one global sequence, as on futures
    t_ns = 0
    mean_gap_ns = 1e9 / rate
    for i in range(frames):
        t_ns += int(rng.expovariate(1.0) * mean_gap_ns)
        e_ms = start_ms + t_ns // 1_000_000
        recv = e_ms * 1_000_000 + RECV_DELAY_NS
        kind = kinds[bisect.bisect_right(cum_mix, rng.random() * cum_mix[-1])]
        if kind in ("markPrice", "kline", "ticker"):
            # Periodic streams: every symbol alike, never twice in one millisecond (their
            # only ordering key is E, as on Binance where they come every 250-1000 ms).
            for _ in range(20):
                s = syms[rng.randrange(len(syms))]
                if s.last_periodic.get(kind, 0) < e_ms:
                    break
            else:
                kind = "aggTrade"
            s.last_periodic[kind] = e_ms
        else:
            s = syms[bisect.bisect_right(busy, rng.random() * busy[-1])]
        if kind == "depth":
            bids, asks = s.diff_levels()
            first = gid + 1
            gid += rng.randint(10, 3000)
            prev, s.last_u = s.last_u, gid
            s.diffs += 1
            s.echoed = False
            stats["levels"] += len(bids) + len(asks)
            line = _depth(
                s, e_ms, first, gid, prev or first - 7, s.levels_json(bids, True), s.levels_json(asks, False)
            )
            yield f"{recv} {line}\n"
            if s.diffs == 3 or (s.diffs > 3 and i - s.snapshot_at >= SNAPSHOT_EVERY):
                s.snapshot_at = i
                stats["snapshots"] += 1
                yield f"{recv + 1000} {s.snapshot_json(e_ms)}\n"
            continue
        if kind == "bookTicker":
            # Only the first ticker after a diff may repeat its u: ids never go back.
            if not s.echoed and rng.random() < 0.35:
                u = s.last_u  # the book after the symbol's last diff: auditable
            else:
                gid += rng.randint(1, 50)
                u = gid
            s.echoed = True
            line = _book_ticker(s, e_ms, u)
        elif kind == "aggTrade":
            line = _agg_trade(s, e_ms)
        elif kind == "markPrice":
            line = _mark_price(s, e_ms)
        elif kind == "kline":
            line = _kline(s, e_ms)
        else:
            line = _ticker(s, e_ms)
        yield f"{recv} {line}\n"


def _write(out: TextIO, frames: int, n_symbols: int, rate: float, seed: int) -> dict[str, int]:
    stats = {"levels": 0, "snapshots": 0}
    buf: list[str] = []
    for line in _lines(frames, n_symbols, rate, seed, stats):
        buf.append(line)
        if len(buf) >= 10_000:
            out.write("".join(buf))
            buf.clear()
    out.write("".join(buf))
    return stats


_KEYS: Final = {"depth": "u", "bookTicker": "u", "aggTrade": "a"}
"""The id ingestd deduplicates each kind by; the periodic kinds go by ``E``."""


def _check(path: Path) -> dict[str, int]:
    """Frames per stream, after checking what ingestd and the book rely on: ids strictly grow
    along every stream (else frames would be dropped as duplicates) and every diff's ``pu`` is
    the previous diff's ``u``."""
    import orjson  # noqa: PLC0415 - the generator itself needs only the standard library

    streams: dict[str, int] = {}
    last: dict[str, int] = {}
    last_u: dict[str, int] = {}
    with path.open("rb") as f:
        for no, line in enumerate(f, 1):
            body = line[line.index(b" ") + 1 :]
            if not body.startswith(b'{"stream":"'):
                continue
            msg = orjson.loads(body)
            name, data = msg["stream"], msg["data"]
            streams[name] = streams.get(name, 0) + 1
            kind = name.split("@")[1].split("_")[0]
            key = data[_KEYS.get(kind, "E")]
            if key <= last.get(name, -1):
                raise AssertionError(f"{path}:{no}: {name} key {key} does not grow")
            last[name] = key
            if kind == "depth":
                prev = last_u.get(name)
                if prev is not None and data["pu"] != prev:
                    raise AssertionError(f"{path}:{no}: {name} pu {data['pu']} != previous u {prev}")
                last_u[name] = data["u"]
    return streams


def ensure(
    cache_dir: Path, *, frames: int, symbols: int = 50, rate: float = 20_000.0, seed: int = 8
) -> Workload:
    """The workload file for these parameters, generated on first use and reused after."""
    if not 1 <= symbols <= len(SYMBOLS):
        raise ValueError(f"symbols must be 1..{len(SYMBOLS)}, got {symbols}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = f"workload-v{VERSION}-{frames}f-{symbols}s-{int(rate)}r-{seed}"
    path = cache_dir / f"{stem}.txt"
    meta_path = cache_dir / f"{stem}.json"
    if not (path.exists() and meta_path.exists()):
        started = time.monotonic()
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="ascii") as out:
            stats = _write(out, frames, symbols, rate, seed)
        streams = _check(tmp)
        meta = {
            "frames": frames,
            "symbols": [s[0] for s in SYMBOLS[:symbols]],
            "rate": rate,
            "streams": streams,
            "snapshots": stats["snapshots"],
            "levels": stats["levels"],
            "bytes": tmp.stat().st_size,
            "seconds_to_generate": round(time.monotonic() - started, 1),
        }
        os.replace(tmp, path)
        meta_path.write_text(json.dumps(meta, indent=1))
    meta = json.loads(meta_path.read_text())
    return Workload(
        path=path,
        frames=int(meta["frames"]),
        symbols=tuple(meta["symbols"]),
        rate=float(meta["rate"]),
        streams={str(k): int(v) for k, v in meta["streams"].items()},
        snapshots=int(meta["snapshots"]),
        bytes=int(meta["bytes"]),
        levels=int(meta["levels"]),
    )
