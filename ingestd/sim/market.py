"""The sim's market-data REST endpoints beyond depth/exchangeInfo/time/ping (pure: no I/O, no clock).

Every endpoint ``ingestd collect`` fetches (docs/binance.md §4) is answered here, with Binance's
shapes, types and error bodies (``-1102`` missing parameter, ``-1121`` unknown symbol, ``-1120``
bad interval, ``-2014`` missing API key …). Trades, aggregated trades, klines, tickers, average
price and best bid/ask come from the capture's own trades and bookTickers; the rest is generated
(see :mod:`ingestd.sim.tape`). Aggregated trades are answered by the venue from the aggTrade
stream (:mod:`ingestd.sim.agg_trades`). Weights are the documented ones, from
:func:`ingestd.collect.endpoints.request_weight`.

:meth:`MarketData.answer` returns ``(status, weight, body)`` like the venue's other handlers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from ingestd.collect.endpoints import INTERVALS, PERIODS, request_weight
from ingestd.sim.captures import Market, Timeline
from ingestd.sim.tape import (
    DAY_MS,
    HOUR_MS,
    INTERVAL_MS,
    MINUTE_MS,
    Tape,
    build_tape,
    fmt,
    last_book_ticker,
    noise,
    period_grid,
    wave,
)

Query = Mapping[str, str]
Answer = tuple[int, bytes]

FUNDING_MS: Final = 8 * HOUR_MS
COMPOSITE_INDEX: Final = "DEFIUSDT"
"""The one composite index the sim lists (``/fapi/v1/indexInfo``)."""
_COMPOSITE_PARTS: Final = ("AAVE", "UNI", "LINK", "MKR", "COMP", "SNX", "CRV", "SUSHI", "YFI", "1INCH")
_CONSTITUENT_VENUES: Final = ("binance", "okex", "coinbase", "gateio", "kucoin", "bybit", "bitget")
_INDEX_BASIS: Final = 0.0002
"""Without a spot capture of the pair, the index is the futures price less 2 bp (generated)."""
_OI_NOTIONAL: Final = 2.5e9
_SUPPLY: Final = {"BTC": 19_733_925.0, "ETH": 120_280_000.0}
_WINDOW = re.compile(r"^(\d{1,2})([mhd])$")
_WINDOW_LIMITS: Final = {"m": (1, 59, MINUTE_MS), "h": (1, 23, HOUR_MS), "d": (1, 7, DAY_MS)}
_API_KEY_HEADER: Final = "X-MBX-APIKEY"


class _Reject(Exception):  # noqa: N818 - control flow inside this module, never escapes
    """An error answer: Binance's status and body."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.status, self.body = status, orjson.dumps({"code": code, "msg": msg})


def _int(q: Query, key: str, default: int | None, *, lo: int = 1) -> int | None:
    raw = q.get(key)
    if raw is None or raw == "":
        return default
    if not raw.lstrip("-").isdigit():
        raise _Reject(
            -1100, f"Illegal characters found in parameter '{key}'; legal range is '^[0-9]{{1,20}}$'."
        )
    value = int(raw)
    if value < lo:
        raise _Reject(-1130, f"Invalid data sent for a parameter: {key}={raw}.")
    return value


def _limit(q: Query, default: int, hi: int) -> int:
    """``limit``, its default when absent; larger than the maximum means the maximum."""
    value = _int(q, "limit", default)
    assert value is not None
    return min(value, hi)


ROUTES: Final[dict[str, tuple[Market, str]]] = {
    "/api/v3/trades": ("spot", "_trades"),
    "/api/v3/historicalTrades": ("spot", "_historical"),
    "/api/v3/klines": ("spot", "_klines"),
    "/api/v3/uiKlines": ("spot", "_klines"),
    "/api/v3/avgPrice": ("spot", "_avg_price"),
    "/api/v3/ticker/24hr": ("spot", "_ticker_24hr"),
    "/api/v3/ticker/tradingDay": ("spot", "_trading_day"),
    "/api/v3/ticker": ("spot", "_rolling"),
    "/api/v3/ticker/price": ("spot", "_price"),
    "/api/v3/ticker/bookTicker": ("spot", "_book_ticker"),
    "/fapi/v1/trades": ("futures", "_trades"),
    "/fapi/v1/historicalTrades": ("futures", "_historical"),
    "/fapi/v1/klines": ("futures", "_klines"),
    "/fapi/v1/continuousKlines": ("futures", "_continuous"),
    "/fapi/v1/indexPriceKlines": ("futures", "_index_klines"),
    "/fapi/v1/markPriceKlines": ("futures", "_mark_klines"),
    "/fapi/v1/premiumIndexKlines": ("futures", "_premium_klines"),
    "/fapi/v1/premiumIndex": ("futures", "_premium_index"),
    "/fapi/v1/fundingRate": ("futures", "_funding_rate"),
    "/fapi/v1/fundingInfo": ("futures", "_funding_info"),
    "/fapi/v1/ticker/24hr": ("futures", "_ticker_24hr"),
    "/fapi/v1/ticker/price": ("futures", "_price"),
    "/fapi/v2/ticker/price": ("futures", "_price"),
    "/fapi/v1/ticker/bookTicker": ("futures", "_book_ticker"),
    "/futures/data/delivery-price": ("futures", "_delivery"),
    "/fapi/v1/openInterest": ("futures", "_open_interest"),
    "/futures/data/openInterestHist": ("futures", "_oi_hist"),
    "/futures/data/topLongShortPositionRatio": ("futures", "_ratio"),
    "/futures/data/topLongShortAccountRatio": ("futures", "_ratio"),
    "/futures/data/globalLongShortAccountRatio": ("futures", "_ratio"),
    "/futures/data/takerlongshortRatio": ("futures", "_taker"),
    "/fapi/v1/indexInfo": ("futures", "_index_info"),
    "/fapi/v1/assetIndex": ("futures", "_asset_index"),
    "/fapi/v1/constituents": ("futures", "_constituents"),
}
"""Path → (market, handler method of :class:`MarketData`)."""


class MarketData:
    """Answers market-data REST requests for one timeline (tapes built lazily, then cached)."""

    PATHS: Final = tuple(ROUTES)

    def __init__(self, timeline: Timeline) -> None:
        self._tl = timeline
        self._path = ""
        """The path being answered (handlers shared by several paths look at it)."""
        self._tapes: dict[tuple[Market, str], Tape | None] = {}

    def answer(self, path: str, query: Query, headers: Mapping[str, str]) -> tuple[int, int, bytes]:
        """``(status, weight, body)`` of ``GET path?query``."""
        market, name = ROUTES[path]
        handler: Callable[[Market, Query, Mapping[str, str]], Any] = getattr(self, name)
        weight = request_weight(path, query)
        try:
            self._path = path
            return 200, weight, orjson.dumps(handler(market, query, headers))
        except _Reject as exc:
            return exc.status, weight, exc.body

    # -- lookups -------------------------------------------------------------------------------

    def tape(self, market: Market, native: str) -> Tape | None:
        key = (market, native)
        if key not in self._tapes:
            self._tapes[key] = build_tape(self._tl, market, native)
        return self._tapes[key]

    def _natives(self, market: Market) -> list[str]:
        return [s for s in self._tl.symbols(market) if self.tape(market, s) is not None]

    def _need(self, market: Market, q: Query, key: str = "symbol") -> Tape:
        native = q.get(key, "")
        if not native:
            raise _Reject(-1102, f"Mandatory parameter '{key}' was not sent, was empty/null, or malformed.")
        tape = self.tape(market, native.upper()) if native.upper() in self._tl.symbols(market) else None
        if tape is None:
            raise _Reject(-1121, "Invalid symbol.")
        return tape

    def _one_or_all(self, market: Market, q: Query, one: Callable[[Tape], Any]) -> Any:
        if q.get("symbol"):
            return one(self._need(market, q))
        if q.get("symbols"):
            try:
                names = orjson.loads(q["symbols"])
            except orjson.JSONDecodeError:
                names = None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise _Reject(-1100, "Illegal characters found in parameter 'symbols'.")
            return [one(self._need(market, {"symbol": n})) for n in names]
        return [one(t) for n in self._natives(market) if (t := self.tape(market, n)) is not None]

    def _index_tape(self, pair: str) -> Tape | None:
        return self.tape("spot", pair) if pair in self._tl.symbols("spot") else None

    def _index_price(self, fut: Tape, t: int) -> float:
        spot = self._index_tape(fut.native)
        if spot is not None and t >= spot.time[0]:
            return spot.price_at(t)
        return fut.price_at(t) * (1.0 - _INDEX_BASIS)

    # -- trades --------------------------------------------------------------------------------

    def _trade_rows(self, tape: Tape, idx: range) -> list[dict[str, Any]]:
        pdp, qdp = tape.price_dp, tape.qty_dp
        rows = []
        for k in idx:
            p, q = tape.prices[k], tape.qtys[k]
            row: dict[str, Any] = {
                "id": tape.ids[k],
                "price": fmt(p, pdp),
                "qty": fmt(q, qdp),
                "quoteQty": fmt(p * q, min(8, pdp + qdp)),
                "time": tape.time[k],
                "isBuyerMaker": tape.buyer_maker[k],
            }
            row["isBestMatch" if tape.market == "spot" else "isRPITrade"] = tape.market == "spot"
            rows.append(row)
        return rows

    def _trades(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        tape = self._need(market, q)
        limit = _limit(q, 500, 1000)
        return self._trade_rows(tape, range(max(0, len(tape) - limit), len(tape)))

    def _historical(self, market: Market, q: Query, headers: Mapping[str, str]) -> Any:
        if market == "futures" and not headers.get(_API_KEY_HEADER):
            raise _Reject(-2014, "API-key format invalid.", status=401)
        tape = self._need(market, q)
        limit = _limit(q, 500 if market == "spot" else 100, 1000 if market == "spot" else 500)
        from_id = _int(q, "fromId", None, lo=0)
        if from_id is None:
            return self._trade_rows(tape, range(max(0, len(tape) - limit), len(tape)))
        first = next((k for k, i in enumerate(tape.ids) if i >= from_id), len(tape))
        return self._trade_rows(tape, range(first, min(len(tape), first + limit)))

    # -- klines --------------------------------------------------------------------------------

    def _bars(self, rows: list[list[Any]], q: Query) -> list[list[Any]]:
        limit = _limit(q, 500, 1500 if self._path.startswith("/fapi") else 1000)
        start, end = _int(q, "startTime", None, lo=0), _int(q, "endTime", None, lo=0)
        picked = [r for r in rows if (start is None or r[0] >= start) and (end is None or r[0] <= end)]
        return picked[:limit] if start is not None else picked[-limit:]

    def _interval(self, q: Query) -> str:
        interval = q.get("interval", "")
        if not interval:
            raise _Reject(-1102, "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.")
        if interval not in INTERVALS or (interval == "1s" and self._path.startswith("/fapi")):
            raise _Reject(-1120, "Invalid interval.")
        return interval

    def _klines(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        tape = self._need(market, q)
        return self._bars(tape.klines(self._interval(q)), q)

    def _continuous(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        tape = self._need(market, q, "pair")
        ctype = q.get("contractType", "")
        if not ctype:
            raise _Reject(
                -1102, "Mandatory parameter 'contractType' was not sent, was empty/null, or malformed."
            )
        interval = self._interval(q)
        # The capture holds the perpetual only: other contract types have no bars to show.
        return self._bars(tape.klines(interval), q) if ctype == "PERPETUAL" else []

    def _price_bars(self, tape: Tape, q: Query, price: Callable[[float, int], float]) -> list[list[Any]]:
        """Bars of a derived price (mark, index, premium): OHLC only, volume slots zero."""
        interval = self._interval(q)
        dp = 8
        rows = []
        for r in tape.klines(interval):
            o, h, lo, c = (price(float(x), r[0]) for x in r[1:5])
            rows.append(
                [r[0], fmt(o, dp), fmt(h, dp), fmt(lo, dp), fmt(c, dp), "0", r[6], "0", r[8], "0", "0", "0"]
            )
        return self._bars(rows, q)

    def _mark_klines(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        return self._price_bars(self._need(market, q), q, lambda p, _t: p)

    def _index_klines(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        fut = self._need(market, q, "pair")
        spot = self._index_tape(fut.native)
        if spot is not None:
            return self._price_bars(spot, q, lambda p, _t: p)
        return self._price_bars(fut, q, lambda p, _t: p * (1.0 - _INDEX_BASIS))

    def _premium_klines(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        fut = self._need(market, q)
        return self._price_bars(fut, q, lambda p, t: p / self._index_price(fut, t) - 1.0)

    # -- tickers -------------------------------------------------------------------------------

    def _ticker_24hr(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        def one(tape: Tape) -> dict[str, Any]:
            end = tape.end
            stats = tape.window_stats(end - DAY_MS, end) or {}
            out: dict[str, Any] = {"symbol": tape.native, **stats}
            if market == "spot":
                book = last_book_ticker(self._tl, market, tape.native) or {}
                start = tape.since(end - DAY_MS).start
                prev = tape.prices[start - 1] if start > 0 else tape.prices[0]
                out = {
                    "symbol": tape.native,
                    "priceChange": stats["priceChange"],
                    "priceChangePercent": stats["priceChangePercent"],
                    "weightedAvgPrice": stats["weightedAvgPrice"],
                    "prevClosePrice": fmt(prev, tape.price_dp),
                    "lastPrice": stats["lastPrice"],
                    "lastQty": stats["lastQty"],
                    "bidPrice": book.get("b", stats["lastPrice"]),
                    "bidQty": book.get("B", "0"),
                    "askPrice": book.get("a", stats["lastPrice"]),
                    "askQty": book.get("A", "0"),
                    **{
                        k: stats[k]
                        for k in (
                            "openPrice",
                            "highPrice",
                            "lowPrice",
                            "volume",
                            "quoteVolume",
                            "openTime",
                            "closeTime",
                            "firstId",
                            "lastId",
                            "count",
                        )
                    },
                }
            return out

        return self._one_or_all(market, q, one)

    def _windowed(self, tape: Tape, start: int) -> dict[str, Any]:
        stats = tape.window_stats(start, tape.end) or {}
        stats.pop("lastQty", None)
        return {"symbol": tape.native, **stats}

    def _trading_day(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        if not q.get("symbol") and not q.get("symbols"):
            raise _Reject(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        return self._one_or_all(market, q, lambda t: self._windowed(t, t.end // DAY_MS * DAY_MS))

    def _rolling(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        if not q.get("symbol") and not q.get("symbols"):
            raise _Reject(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        size = q.get("windowSize", "1d")
        m = _WINDOW.match(size)
        if m is None or not _WINDOW_LIMITS[m[2]][0] <= int(m[1]) <= _WINDOW_LIMITS[m[2]][1]:
            raise _Reject(-1100, f"Illegal characters found in parameter 'windowSize': {size!r}.")
        span = int(m[1]) * _WINDOW_LIMITS[m[2]][2]
        return self._one_or_all(market, q, lambda t: self._windowed(t, t.end - span))

    def _avg_price(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        tape = self._need(market, q)
        idx = tape.since(tape.end - 5 * MINUTE_MS)
        vol = sum(tape.qtys[idx.start : idx.stop])
        quote = sum(tape.prices[k] * tape.qtys[k] for k in idx)
        return {
            "mins": 5,
            "price": fmt(quote / vol if vol else tape.last_price, 8),
            "closeTime": tape.time[-1],
        }

    def _price(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        def one(tape: Tape) -> dict[str, Any]:
            out: dict[str, Any] = {"symbol": tape.native, "price": fmt(tape.last_price, tape.price_dp)}
            if market == "futures":
                out["time"] = tape.end
            return out

        return self._one_or_all(market, q, one)

    def _book_ticker(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        def one(tape: Tape) -> dict[str, Any]:
            last = fmt(tape.last_price, tape.price_dp)
            book = last_book_ticker(self._tl, market, tape.native) or {
                "b": last,
                "B": "0",
                "a": last,
                "A": "0",
            }
            out: dict[str, Any] = {
                "symbol": tape.native,
                "bidPrice": book["b"],
                "bidQty": book["B"],
                "askPrice": book["a"],
                "askQty": book["A"],
            }
            if market == "futures":
                out = {"lastUpdateId": book.get("u", 0), **out, "time": book.get("T", tape.end)}
            return out

        return self._one_or_all(market, q, one)

    # -- funding and mark price ----------------------------------------------------------------

    @staticmethod
    def _funding(native: str, t: int) -> float:
        return 0.0001 + 0.00005 * noise(f"{native}:funding", t)

    def _premium_index(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        def one(tape: Tape) -> dict[str, Any]:
            end = tape.end
            nxt = (end // FUNDING_MS + 1) * FUNDING_MS
            index = self._index_price(tape, end)
            return {
                "symbol": tape.native,
                "markPrice": fmt(tape.last_price, 8),
                "indexPrice": fmt(index, 8),
                "estimatedSettlePrice": fmt(index, 8),
                "lastFundingRate": fmt(self._funding(tape.native, nxt - FUNDING_MS), 8),
                "interestRate": "0.00010000",
                "nextFundingTime": nxt,
                "time": end,
            }

        return self._one_or_all(market, q, one)

    def _funding_rate(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        natives = [self._need(market, q).native] if q.get("symbol") else self._natives(market)
        limit = _limit(q, 100, 1000)
        start, end = _int(q, "startTime", None, lo=0), _int(q, "endTime", None, lo=0)
        rows: list[dict[str, Any]] = []
        for native in natives:
            tape = self.tape(market, native)
            assert tape is not None
            rows.extend(
                {
                    "symbol": native,
                    "fundingRate": fmt(self._funding(native, t), 8),
                    "fundingTime": t,
                    "markPrice": fmt(tape.price_at(t), 8),
                    "rateType": "Regular",
                }
                for t in period_grid(tape.end, FUNDING_MS, limit, start, end)
            )
        return rows

    def _funding_info(self, market: Market, _q: Query, _h: Mapping[str, str]) -> Any:
        return [
            {
                "symbol": n,
                "adjustedFundingRateCap": "0.02000000",
                "adjustedFundingRateFloor": "-0.02000000",
                "fundingIntervalHours": 8,
                "disclaimer": False,
            }
            for n in self._natives(market)
        ]

    def _delivery(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        tape = self._need(market, q, "pair")
        out = []
        year = _year(tape.end)
        for y in range(year - 3, year + 1):
            for month in (3, 6, 9, 12):
                t = _last_friday_8utc(y, month)
                if t <= tape.end:
                    out.append({"deliveryTime": t, "deliveryPrice": round(self._index_price(tape, t), 1)})
        return out

    # -- open interest and ratios (/futures/data) ----------------------------------------------

    def _oi(self, tape: Tape, t: int) -> float:
        base = _OI_NOTIONAL / tape.prices[0]
        return base * (1.0 + 0.03 * wave(t, DAY_MS) + 0.005 * noise(f"{tape.native}:oi", t))

    def _open_interest(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        tape = self._need(market, q)
        return {
            "openInterest": fmt(self._oi(tape, tape.end), tape.qty_dp),
            "symbol": tape.native,
            "time": tape.end,
        }

    def _grid(self, tape: Tape, q: Query) -> list[int]:
        period = q.get("period", "")
        if not period:
            raise _Reject(-1102, "Mandatory parameter 'period' was not sent, was empty/null, or malformed.")
        if period not in PERIODS:
            raise _Reject(-1130, "Invalid period.")
        limit = _limit(q, 30, 500)
        start, end = _int(q, "startTime", None, lo=0), _int(q, "endTime", None, lo=0)
        # The latest period is still open: Binance lists periods that have started (oldest first).
        return list(period_grid(tape.end, INTERVAL_MS[period], limit, start, end))

    def _oi_hist(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        tape = self._need(market, q)
        supply = _SUPPLY.get(tape.native.removesuffix("USDT"), 1e9)
        return [
            {
                "symbol": tape.native,
                "sumOpenInterest": fmt(self._oi(tape, t), 8),
                "sumOpenInterestValue": fmt(self._oi(tape, t) * tape.price_at(t), 8),
                "CMCCirculatingSupply": fmt(supply, 3),
                "timestamp": t,
            }
            for t in self._grid(tape, q)
        ]

    def _ratio(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        tape = self._need(market, q)
        kind = self._path.rsplit("/", 1)[-1]
        phase = {"topLongShortPositionRatio": 0.0, "topLongShortAccountRatio": 1.0}.get(kind, 2.0)
        rows = []
        for t in self._grid(tape, q):
            long = 0.5 + 0.08 * wave(t, 12 * HOUR_MS, phase) + 0.02 * noise(f"{tape.native}:{kind}", t)
            rows.append(
                {
                    "symbol": tape.native,
                    "longShortRatio": fmt(long / (1 - long), 4),
                    "longAccount": fmt(long, 4),
                    "shortAccount": fmt(1 - long, 4),
                    "timestamp": t,
                }
            )
        return rows

    def _taker(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        tape = self._need(market, q)
        size = INTERVAL_MS[q.get("period", "5m")] if q.get("period") in PERIODS else 0
        rows = []
        span = max(1, tape.time[-1] - tape.time[0])
        per_ms = sum(tape.qtys) / span
        for t in self._grid(tape, q):
            idx = tape.since(t, t + size - 1)
            if idx:
                # Periods the capture covers: its own taker flow.
                buy = sum(tape.qtys[k] for k in idx if not tape.buyer_maker[k])
                sell = sum(tape.qtys[k] for k in idx if tape.buyer_maker[k])
            else:
                total = per_ms * size * (1.0 + 0.3 * noise(f"{tape.native}:taker", t))
                share = 0.5 + 0.05 * wave(t, 6 * HOUR_MS) + 0.02 * noise(f"{tape.native}:taker-side", t)
                buy, sell = total * share, total * (1 - share)
            rows.append(
                {
                    "buySellRatio": fmt(buy / sell if sell else 0.0, 4),
                    "sellVol": fmt(sell, 4),
                    "buyVol": fmt(buy, 4),
                    "timestamp": t,
                }
            )
        return rows

    # -- indices -------------------------------------------------------------------------------

    def _index_info(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        symbol = q.get("symbol")
        if symbol and symbol != COMPOSITE_INDEX:
            raise _Reject(-1121, "Invalid symbol.")
        tapes = [t for n in self._natives(market) if (t := self.tape(market, n)) is not None]
        end = max((t.end for t in tapes), default=0)
        weights = [1.0 + 0.5 * noise(f"{COMPOSITE_INDEX}:{a}", 0) for a in _COMPOSITE_PARTS]
        total = sum(weights)
        entry = {
            "symbol": COMPOSITE_INDEX,
            "time": end,
            "component": "baseAsset",
            "baseAssetList": [
                {
                    "baseAsset": a,
                    "quoteAsset": "USDT",
                    "weightInQuantity": fmt(w, 8),
                    "weightInPercentage": fmt(w / total, 8),
                }
                for a, w in zip(_COMPOSITE_PARTS, weights, strict=True)
            ],
        }
        return entry if symbol else [entry]

    def _asset_index(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        entries = {}
        for native in self._natives(market):
            tape = self.tape(market, native)
            assert tape is not None
            if not native.endswith("USDT"):
                continue
            name = native.removesuffix("USDT") + "USD"
            px = self._index_price(tape, tape.end)
            entries[name] = {
                "symbol": name,
                "time": tape.end,
                "index": fmt(px, 8),
                "bidBuffer": "0.05000000",
                "askBuffer": "0.05000000",
                "bidRate": fmt(px * 0.95, 8),
                "askRate": fmt(px * 1.05, 8),
                "autoExchangeBidBuffer": "0.02500000",
                "autoExchangeAskBuffer": "0.02500000",
                "autoExchangeBidRate": fmt(px * 0.975, 8),
                "autoExchangeAskRate": fmt(px * 1.025, 8),
            }
        symbol = q.get("symbol")
        if symbol:
            if symbol not in entries:
                raise _Reject(-1121, "Invalid symbol.")
            return entries[symbol]
        return list(entries.values())

    def _constituents(self, market: Market, q: Query, _h: Mapping[str, str]) -> Any:
        tape = self._need(market, q)
        px = self._index_price(tape, tape.end)
        weights = [1.0 + 0.6 * noise(f"{tape.native}:{v}", 0) for v in _CONSTITUENT_VENUES]
        total = sum(weights)
        return {
            "symbol": tape.native,
            "time": tape.end,
            "constituents": [
                {
                    "exchange": v,
                    "symbol": tape.native,
                    "price": fmt(px * (1 + 0.0002 * noise(f"{tape.native}:{v}", tape.end)), 8),
                    "weight": fmt(w / total, 8),
                }
                for v, w in zip(_CONSTITUENT_VENUES, weights, strict=True)
            ],
        }


def _year(t: int) -> int:
    return datetime.fromtimestamp(t / 1000, tz=UTC).year


def _last_friday_8utc(year: int, month: int) -> int:
    """Quarterly delivery: the last Friday of the month, 08:00 UTC (ms)."""
    nxt = datetime(year + month // 12, month % 12 + 1, 1, 8, tzinfo=UTC)
    day = nxt - timedelta(days=1)
    day -= timedelta(days=(day.weekday() - 4) % 7)
    return int(day.timestamp() * 1000)
