"""An exact local order book: two ``price -> qty`` maps with lazily cached tops.

Prices are float64 parsed from the exchange's decimal strings. The same string always parses to
the same float, so levels are keyed by the float itself and compare exactly; no rounding is ever
applied. Quantities are absolute; a quantity that is numerically zero (``"0"``, ``"0.000"``,
``"0.00000000"`` all parse to ``0.0``) deletes the level, and deleting an absent level is normal.

Why cached tops instead of sorted price lists: the sync state machine asks for the best bid and
ask after every diff (crossed-book check, bookTicker audit). Three designs were measured on the
real hftbacktest captures (apply every diff after the snapshot, then read both tops; Python 3.11,
2 cores, µs per diff, best of interleaved runs; the machine drifts ±25 %):

- USDⓈ-M BTCUSDT depth@0ms, ~5,000 levels a side, 68 level rows per diff: sorted price lists
  kept with ``bisect`` 29-42; cached tops (this class) 15-18; a cached top-32 candidate list
  (``heapq.nlargest`` on a miss, ``bisect`` inside it) 16-31.
- spot BTCUSDT depth@100ms, ~1,200 / 2,200 levels: sorted lists 15; cached tops 7-14; top-32 10-27.
- COIN-M BTCUSD_PERP depth@0ms, ~1,100 levels: sorted lists 4.5; cached tops 2.3-2.5; top-32 3-5.

A top is only recomputed (one ``max``/``min`` over the keys) when the current best level is
deleted, about once per 14 diffs on USDⓈ-M BTCUSDT; an insert better than the cached top just
replaces it. ``levels(n)`` is a partial sort (``heapq``), cheap for the small ``n`` a ``BookTop``
record carries.

Two implementations: :class:`PyOrderBook` here (the reference) and a compiled one
(``ingestd/book/_cbook.c``: hash tables of doubles, no Python object per level, and a cache of
the 64 best prices so that deleting the touch costs no pass over the side). :data:`OrderBook` is
the compiled one when it is built (see :mod:`ingestd.speedups`); its ``bids`` and ``asks`` are
read-only properties returning a new dict. Both skip a level whose price is NaN (it could never
be found again). ``bench/micro_book.py`` (the same replay as above, records parsed beforehand,
best of 7 alternating rounds, µs per diff): USDⓈ-M BTCUSDT 12.9 pure Python / 2.8 compiled, spot
BTCUSDT 5.2 / 1.7, COIN-M BTCUSD_PERP 1.8 / 0.65; in the whole pipeline (``bench/pipeline.py``,
no storage) the book stage went from 5.2 to 1.9 µs per frame.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ingestd import speedups
from ingestd.records import Level

__all__ = ["OrderBook", "PyOrderBook"]

_NO_BID = -math.inf
_NO_ASK = math.inf


class PyOrderBook:
    """Bids and asks of one symbol, and the update id they are at. Sequencing is ``sync``'s job.

    ``bids`` and ``asks`` are the live ``price -> qty`` maps; read them freely, but change the
    book only through :meth:`load_snapshot`, :meth:`apply` and :meth:`clear` so the cached tops
    stay right.
    """

    __slots__ = ("_ask_ok", "_best_ask", "_best_bid", "_bid_ok", "asks", "bids", "last_update_id")

    def __init__(self) -> None:
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.last_update_id: int | None = None
        """The update id the book is at: the snapshot's, then each applied diff's final id."""
        # Cached best prices; ``_*_ok`` False means "recompute on next read". -inf / +inf stand
        # for an empty side so that "new price beats the cached top" needs no None check.
        self._best_bid = _NO_BID
        self._best_ask = _NO_ASK
        self._bid_ok = True
        self._ask_ok = True

    def clear(self) -> None:
        """Forget every level."""
        self.bids.clear()
        self.asks.clear()
        self.last_update_id = None
        self._best_bid, self._best_ask = _NO_BID, _NO_ASK
        self._bid_ok = self._ask_ok = True

    def load_snapshot(self, bids: Iterable[Level], asks: Iterable[Level], last_update_id: int) -> None:
        """Replace the whole book with a REST snapshot (zero quantities are skipped)."""
        self.last_update_id = last_update_id
        # p == p: a NaN price is never a key (see the module docstring).
        self.bids = {p: q for p, q in bids if q != 0.0 and p == p}  # noqa: PLR0124 - NaN test, no call
        self.asks = {p: q for p, q in asks if q != 0.0 and p == p}  # noqa: PLR0124
        self._bid_ok = self._ask_ok = False

    def apply(self, bids: Iterable[Level], asks: Iterable[Level], final_update_id: int | None = None) -> None:
        """Apply one diff's absolute quantities: set each level, or delete it when qty is 0.

        ``final_update_id`` (the diff's ``u``) becomes :attr:`last_update_id` when given. The
        book does not check sequencing; :class:`ingestd.book.sync.BookSync` does.
        """
        if final_update_id is not None:
            self.last_update_id = final_update_id
        side = self.bids
        best = self._best_bid
        ok = self._bid_ok
        for p, q in bids:
            if q == 0.0:
                if side.pop(p, None) is not None and p == best:
                    ok = False
            elif p == p:  # noqa: PLR0124 - a NaN price is never a key (a call would cost more)
                side[p] = q
                if ok and p > best:
                    best = p
        self._best_bid, self._bid_ok = best, ok

        side = self.asks
        best = self._best_ask
        ok = self._ask_ok
        for p, q in asks:
            if q == 0.0:
                if side.pop(p, None) is not None and p == best:
                    ok = False
            elif p == p:  # noqa: PLR0124 - a NaN price is never a key (a call would cost more)
                side[p] = q
                if ok and p < best:
                    best = p
        self._best_ask, self._ask_ok = best, ok

    def best_bid_price(self) -> float | None:
        """Highest bid price, or ``None`` when there are no bids."""
        if not self._bid_ok:
            self._best_bid = max(self.bids) if self.bids else _NO_BID
            self._bid_ok = True
        best = self._best_bid
        return None if best == _NO_BID else best

    def best_ask_price(self) -> float | None:
        """Lowest ask price, or ``None`` when there are no asks."""
        if not self._ask_ok:
            self._best_ask = min(self.asks) if self.asks else _NO_ASK
            self._ask_ok = True
        best = self._best_ask
        return None if best == _NO_ASK else best

    def best_bid(self) -> Level | None:
        """``(price, qty)`` of the highest bid, or ``None``."""
        p = self.best_bid_price()
        return None if p is None else (p, self.bids[p])

    def best_ask(self) -> Level | None:
        """``(price, qty)`` of the lowest ask, or ``None``."""
        p = self.best_ask_price()
        return None if p is None else (p, self.asks[p])

    def crossed(self) -> bool:
        """True when the best bid is at or above the best ask (never valid on Binance)."""
        bid = self.best_bid_price()
        ask = self.best_ask_price()
        return bid is not None and ask is not None and bid >= ask

    def levels(self, n: int) -> tuple[list[Level], list[Level]]:
        """The top ``n`` levels: ``(bids, highest first; asks, lowest first)``."""
        if n <= 0:
            return [], []
        bids, asks = self.bids, self.asks
        if n == 1:
            bb, ba = self.best_bid(), self.best_ask()
            return ([bb] if bb else []), ([ba] if ba else [])
        return (
            [(p, bids[p]) for p in heapq.nlargest(n, bids)],
            [(p, asks[p]) for p in heapq.nsmallest(n, asks)],
        )

    def __len__(self) -> int:
        """Number of levels on both sides."""
        return len(self.bids) + len(self.asks)

    def __repr__(self) -> str:
        return (
            f"<OrderBook {len(self.bids)} bids / {len(self.asks)} asks, "
            f"top {self.best_bid()} / {self.best_ask()}>"
        )


_compiled = speedups.load("ingestd.book._cbook")
if TYPE_CHECKING or _compiled is None:  # noqa: SIM108 - mypy types the pure-Python class
    OrderBook = PyOrderBook
else:
    OrderBook = _compiled.OrderBook
