"""What the sim's market-data REST answers are built from: each symbol's trades, klines from them,
the last best bid/ask, and deterministic generated series (pure: no I/O, no clock).

"Now" for these answers is the end of the capture: trades, klines and tickers are the capture's
own; series no capture holds (funding history, open interest, long/short ratios, index
constituents …) are generated on their period grids ending there, anchored at the capture's
prices. Generated values are a function of (symbol, series, timestamp) only, so two queries of
overlapping ranges agree row for row, as they would on Binance.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from ingestd.sim.captures import Market, Timeline
from ingestd.sim.window_tickers import decimals_written

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS
INTERVAL_MS: Final = {
    "1s": 1000,
    "1m": MINUTE_MS,
    "3m": 3 * MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS,
    "1h": HOUR_MS,
    "2h": 2 * HOUR_MS,
    "4h": 4 * HOUR_MS,
    "6h": 6 * HOUR_MS,
    "8h": 8 * HOUR_MS,
    "12h": 12 * HOUR_MS,
    "1d": DAY_MS,
    "3d": 3 * DAY_MS,
    "1w": 7 * DAY_MS,
    "1M": 31 * DAY_MS,
}
"""Kline intervals; ``1M`` buckets are calendar months (the value is only an upper bound)."""
_WEEK_OFFSET_MS: Final = 3 * DAY_MS
"""Binance weeks start on Monday; 1970-01-01 was a Thursday."""


def bucket_start(t: int, interval: str) -> int:
    """Open time of the ``interval`` bar holding ``t`` (ms, UTC)."""
    if interval == "1M":
        d = datetime.fromtimestamp(t / 1000, tz=UTC)
        return int(datetime(d.year, d.month, 1, tzinfo=UTC).timestamp() * 1000)
    size = INTERVAL_MS[interval]
    if interval == "1w":
        return (t + _WEEK_OFFSET_MS) // size * size - _WEEK_OFFSET_MS
    return t // size * size


def bucket_end(open_ms: int, interval: str) -> int:
    """Close time of the bar opening at ``open_ms`` (its last ms)."""
    if interval == "1M":
        d = datetime.fromtimestamp(open_ms / 1000, tz=UTC)
        nxt = datetime(d.year + d.month // 12, d.month % 12 + 1, 1, tzinfo=UTC)
        return int(nxt.timestamp() * 1000) - 1
    return open_ms + INTERVAL_MS[interval] - 1


def noise(key: str, t: int) -> float:
    """A deterministic value in [-1, 1) for ``(key, t)`` (hash based, not a random stream)."""
    digest = hashlib.blake2b(f"{key}:{t}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**63 - 1.0


def wave(t: int, period_ms: int, phase: float = 0.0) -> float:
    return math.sin(2.0 * math.pi * t / period_ms + phase)


def fmt(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


@dataclass(slots=True)
class Tape:
    """One symbol's trades, ordered by trade time (ms)."""

    market: Market
    native: str
    time: list[int]
    event: list[int]
    ids: list[int]
    prices: list[float]
    qtys: list[float]
    buyer_maker: list[bool]
    price_dp: int
    qty_dp: int
    _klines: dict[str, list[list[Any]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.time)

    @property
    def end(self) -> int:
        """The capture's "now" for this symbol: the last trade's event time."""
        return self.event[-1]

    @property
    def last_price(self) -> float:
        return self.prices[-1]

    def price_at(self, t: int) -> float:
        """The last trade price at ``t``; before the capture, a generated path that joins it."""
        if t >= self.time[0]:
            k = bisect.bisect_right(self.time, t) - 1
            return self.prices[k]
        drift = 0.01 * (wave(t, 3 * DAY_MS) - wave(self.time[0], 3 * DAY_MS))
        return self.prices[0] * (1.0 + drift + 0.001 * noise(f"{self.native}:px", t))

    def since(self, start: int, end: int | None = None) -> range:
        """Indices of trades with ``start <= time <= end``."""
        lo = bisect.bisect_left(self.time, start)
        hi = len(self.time) if end is None else bisect.bisect_right(self.time, end)
        return range(lo, max(lo, hi))

    def klines(self, interval: str) -> list[list[Any]]:
        """Every bar of the tape as Binance kline rows (prices/volumes as strings)."""
        found = self._klines.get(interval)
        if found is not None:
            return found
        rows: list[list[Any]] = []
        pdp, qdp = self.price_dp, self.qty_dp
        qvdp = min(8, pdp + qdp)
        k, n = 0, len(self.time)
        while k < n:
            opens = bucket_start(self.time[k], interval)
            closes = bucket_end(opens, interval)
            o = h = lo = self.prices[k]
            vol = quote = buy = buy_quote = 0.0
            count = 0
            while k < n and self.time[k] <= closes:
                p, q = self.prices[k], self.qtys[k]
                h, lo = max(h, p), min(lo, p)
                vol += q
                quote += p * q
                if not self.buyer_maker[k]:
                    buy += q
                    buy_quote += p * q
                count += 1
                k += 1
            c = self.prices[k - 1]
            rows.append(
                [
                    opens,
                    fmt(o, pdp),
                    fmt(h, pdp),
                    fmt(lo, pdp),
                    fmt(c, pdp),
                    fmt(vol, qdp),
                    closes,
                    fmt(quote, qvdp),
                    count,
                    fmt(buy, qdp),
                    fmt(buy_quote, qvdp),
                    "0",
                ]
            )
        self._klines[interval] = rows
        return rows

    def window_stats(self, start: int, end: int) -> dict[str, Any] | None:
        """Rolling-window ticker figures over trades in ``[start, end]`` (``None``: no trade)."""
        idx = self.since(start, end)
        if not idx:
            return None
        pdp, qdp = self.price_dp, self.qty_dp
        prices = self.prices[idx.start : idx.stop]
        vol = sum(self.qtys[idx.start : idx.stop])
        quote = sum(p * q for p, q in zip(prices, self.qtys[idx.start : idx.stop], strict=True))
        o, c = prices[0], prices[-1]
        return {
            "priceChange": fmt(c - o, pdp),
            "priceChangePercent": f"{(c - o) / o * 100:.3f}",
            "weightedAvgPrice": fmt(quote / vol if vol else c, pdp),
            "openPrice": fmt(o, pdp),
            "highPrice": fmt(max(prices), pdp),
            "lowPrice": fmt(min(prices), pdp),
            "lastPrice": fmt(c, pdp),
            "lastQty": fmt(self.qtys[idx.stop - 1], qdp),
            "volume": fmt(vol, qdp),
            "quoteVolume": fmt(quote, min(8, pdp + qdp)),
            "openTime": start,
            "closeTime": end,
            "firstId": self.ids[idx.start],
            "lastId": self.ids[idx.stop - 1],
            "count": len(idx),
        }


def _trade_fields(data: Any) -> tuple[int, int, int, str, str, bool] | None:
    if not isinstance(data, dict) or not isinstance(data.get("p"), str):
        return None
    tid = data.get("t", data.get("a"))
    t = data.get("T", data.get("E"))
    if not isinstance(tid, int) or not isinstance(t, int):
        return None
    return tid, t, int(data.get("E", t)), data["p"], str(data.get("q", "0")), bool(data.get("m"))


def build_tape(timeline: Timeline, market: Market, native: str) -> Tape | None:
    """The trades of ``native`` on ``market`` (``@trade``, else ``@aggTrade``); ``None``: none."""
    sids = timeline.symbol_sids(market, native)
    by_kind = {timeline.streams[s].kind: s for s in sids}
    sid = by_kind.get("trade", by_kind.get("aggTrade"))
    if sid is None:
        return None
    rows: list[tuple[int, int, int, str, str, bool]] = []
    for i, s in enumerate(timeline.sid):
        if s == sid and (f := _trade_fields(timeline.parsed(i))) is not None:
            rows.append(f)
    if not rows:
        return None
    rows.sort(key=lambda r: (r[1], r[0]))
    return Tape(
        market=market,
        native=native,
        time=[r[1] for r in rows],
        event=[r[2] for r in rows],
        ids=[r[0] for r in rows],
        prices=[float(r[3]) for r in rows],
        qtys=[float(r[4]) for r in rows],
        buyer_maker=[r[5] for r in rows],
        price_dp=decimals_written(rows[0][3]),
        qty_dp=decimals_written(rows[0][4]),
    )


def last_book_ticker(timeline: Timeline, market: Market, native: str) -> dict[str, Any] | None:
    """The capture's last bookTicker payload of ``native``, else the top of its recorded snapshot
    (as ``{"b","B","a","A","u"}``); ``None`` when it has neither."""
    sids = {s for s in timeline.symbol_sids(market, native) if timeline.streams[s].kind == "bookTicker"}
    if sids:
        for i in range(len(timeline.sid) - 1, -1, -1):
            if timeline.sid[i] in sids:
                data = timeline.parsed(i)
                if isinstance(data, dict):
                    return data
    snaps = timeline.snapshots.get((market, native))
    if snaps:
        body = orjson.loads(snaps[-1].body)
        if isinstance(body, dict) and body.get("bids") and body.get("asks"):
            (b, bq), (a, aq) = body["bids"][0][:2], body["asks"][0][:2]
            return {"u": body.get("lastUpdateId", 0), "b": b, "B": bq, "a": a, "A": aq}
    return None


def period_grid(end: int, period_ms: int, limit: int, start: int | None, stop: int | None) -> Iterator[int]:
    """Period starts (ascending) of a ``/futures/data`` or funding series ending at ``end``:
    the ``limit`` latest in ``[start, stop]``, or the first ``limit`` from ``start``."""
    last = end // period_ms * period_ms
    if stop is not None:
        last = min(last, stop // period_ms * period_ms)
    if start is not None:
        first = -(-start // period_ms) * period_ms
        count = min(limit, max(0, (last - first) // period_ms + 1))
        return iter(range(first, first + count * period_ms, period_ms))
    first = last - (limit - 1) * period_ms
    return iter(range(first, last + 1, period_ms))
