"""Every public market-data REST endpoint ``ingestd collect`` fetches, as data (docs/binance.md §4).

One :class:`Endpoint` row per call: where it lives, which parameters it takes (named after the
collect options that fill them), its request weight as a function of those parameters, whether
its payload is a table (written as Parquet beside the JSON) and whether it needs an API key.

The weight functions are also what ``ingestd.sim`` charges, so the sim and the client agree on
the documented weights by construction: :func:`request_weight` looks a path up here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from ingestd.venues.binance.endpoints import SPOT, USDM

Market = Literal["spot", "futures"]
TableKind = Literal["klines", "records"]
"""``klines``: 12-element arrays (Binance's kline layout); ``records``: objects (one per row)."""
Auth = Literal["none", "required", "optional"]
"""``required``: skipped without an API key; ``optional``: the key is sent when there is one
(Binance's newer spec marks the top-trader ratios MARKET_DATA, its May 2026 docs do not)."""

Query = Mapping[str, str]
WeightFn = Callable[[Query], int]

KLINE_COLUMNS: Final = (
    ("open_time", "int"),
    ("open", "float"),
    ("high", "float"),
    ("low", "float"),
    ("close", "float"),
    ("volume", "float"),
    ("close_time", "int"),
    ("quote_volume", "float"),
    ("trades", "int"),
    ("taker_buy_volume", "float"),
    ("taker_buy_quote_volume", "float"),
)
"""Columns of a kline row (the 12th element is Binance's "ignore" and is dropped)."""

INTERVALS: Final = (
    "1s",
    "1m",
    "3m",
    "5m",
    "15m",
    "30m",
    "1h",
    "2h",
    "4h",
    "6h",
    "8h",
    "12h",
    "1d",
    "3d",
    "1w",
    "1M",
)
PERIODS: Final = ("5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d")
"""``/futures/data/*`` periods."""
WINDOWS: Final = ("1h", "4h", "1d")
"""Rolling-window ticker windows collect streams (``<symbol>@ticker_<window>``)."""
CONTRACT_TYPES: Final = ("PERPETUAL", "CURRENT_QUARTER", "NEXT_QUARTER", "TRADIFI_PERPETUAL")


# -- weights (docs/binance.md §4.2, §4.3) ------------------------------------------------------


def _limit(q: Query, default: int) -> int:
    raw = q.get("limit", "")
    return int(raw) if raw.isdigit() else default


def _spot_depth(q: Query) -> int:
    return SPOT.depth_weight(min(_limit(q, 100), 5000))


def _futures_depth(q: Query) -> int:
    return USDM.depth_weight(min(_limit(q, 500), 1000))


def _futures_klines(q: Query) -> int:
    """[1,100): 1; [100,500): 2; [500,1000]: 5; > 1000: 10 (default limit 500)."""
    limit = _limit(q, 500)
    if limit < 100:
        return 1
    if limit < 500:
        return 2
    if limit <= 1000:
        return 5
    return 10


def _symbols_count(q: Query) -> int | None:
    """Symbols named by ``symbol``/``symbols`` (``None``: all symbols)."""
    if q.get("symbol"):
        return 1
    raw = q.get("symbols", "").strip("[]")
    return len([s for s in raw.split(",") if s.strip()]) or None


def _spot_ticker_24hr(q: Query) -> int:
    n = _symbols_count(q)
    if n is None or n >= 101:
        return 80
    return 2 if n <= 20 else 40


def _per_symbol_4_cap_200(q: Query) -> int:
    n = _symbols_count(q)
    return 200 if n is None else min(200, 4 * n)


def _with_symbol(one: int, all_: int) -> WeightFn:
    return lambda q: one if q.get("symbol") else all_


# -- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One REST call of a collect run.

    ``params`` maps a query parameter to the collect option that fills it (an option whose value
    is ``None`` leaves the parameter out); a value starting with ``=`` is sent as written.
    ``weight`` is a number or a function of the query.
    """

    market: Market
    name: str
    """File stem under ``<out>/<market>/`` (unique per market)."""
    path: str
    params: tuple[tuple[str, str], ...] = ()
    weight: WeightFn | int = 1
    table: TableKind | None = None
    auth: Auth = "none"

    def query(self, options: Mapping[str, object]) -> dict[str, str]:
        """The query string for ``options`` (collect's resolved option values)."""
        out: dict[str, str] = {}
        for key, source in self.params:
            if source.startswith("="):
                out[key] = source[1:]
                continue
            value = options.get(source)
            if value is not None:
                out[key] = str(value)
        return out

    def weight_of(self, query: Query) -> int:
        """The request weight of this call with ``query``."""
        return self.weight if isinstance(self.weight, int) else self.weight(query)


def _spot(
    name: str, path: str, *params: tuple[str, str], weight: WeightFn | int = 1, table: TableKind | None = None
) -> Endpoint:
    return Endpoint("spot", name, path, params, weight, table)


def _fut(
    name: str,
    path: str,
    *params: tuple[str, str],
    weight: WeightFn | int = 1,
    table: TableKind | None = None,
    auth: Auth = "none",
) -> Endpoint:
    return Endpoint("futures", name, path, params, weight, table, auth)


_SPOT_SYM = ("symbol", "spot_symbol")
_FUT_SYM = ("symbol", "futures_symbol")
_PAIR = ("pair", "futures_pair")
_INTERVAL = ("interval", "interval")
_KLIMIT = ("limit", "kline_limit")
_TLIMIT = ("limit", "trade_limit")
_RATIO = (_FUT_SYM, ("period", "period"), ("limit", "metric_limit"))

ENDPOINTS: Final[tuple[Endpoint, ...]] = (
    # Spot /api/v3 (docs/binance.md §4.2)
    _spot("ping", "/api/v3/ping"),
    _spot("time", "/api/v3/time"),
    _spot("exchangeInfo", "/api/v3/exchangeInfo", _SPOT_SYM, weight=20),
    _spot("depth", "/api/v3/depth", _SPOT_SYM, ("limit", "depth_limit"), weight=_spot_depth),
    _spot("trades", "/api/v3/trades", _SPOT_SYM, _TLIMIT, weight=25, table="records"),
    _spot("historicalTrades", "/api/v3/historicalTrades", _SPOT_SYM, _TLIMIT, weight=25, table="records"),
    _spot("aggTrades", "/api/v3/aggTrades", _SPOT_SYM, _TLIMIT, weight=4, table="records"),
    _spot(
        "klines",
        "/api/v3/klines",
        _SPOT_SYM,
        _INTERVAL,
        ("limit", "spot_kline_limit"),
        weight=2,
        table="klines",
    ),
    _spot(
        "uiKlines",
        "/api/v3/uiKlines",
        _SPOT_SYM,
        _INTERVAL,
        ("limit", "spot_kline_limit"),
        weight=2,
        table="klines",
    ),
    _spot("avgPrice", "/api/v3/avgPrice", _SPOT_SYM, weight=2),
    _spot("ticker_24hr", "/api/v3/ticker/24hr", _SPOT_SYM, weight=_spot_ticker_24hr),
    _spot("ticker_tradingDay", "/api/v3/ticker/tradingDay", _SPOT_SYM, weight=_per_symbol_4_cap_200),
    _spot("ticker_price", "/api/v3/ticker/price", _SPOT_SYM, weight=_with_symbol(2, 4)),
    _spot("ticker_bookTicker", "/api/v3/ticker/bookTicker", _SPOT_SYM, weight=_with_symbol(2, 4)),
    _spot(
        "ticker_rolling", "/api/v3/ticker", _SPOT_SYM, ("windowSize", "window"), weight=_per_symbol_4_cap_200
    ),
    # USDⓈ-M /fapi and /futures/data (docs/binance.md §4.3)
    _fut("ping", "/fapi/v1/ping"),
    _fut("time", "/fapi/v1/time"),
    _fut("exchangeInfo", "/fapi/v1/exchangeInfo"),
    _fut("depth", "/fapi/v1/depth", _FUT_SYM, ("limit", "depth_limit"), weight=_futures_depth),
    _fut("trades", "/fapi/v1/trades", _FUT_SYM, _TLIMIT, weight=5, table="records"),
    _fut(
        "historicalTrades",
        "/fapi/v1/historicalTrades",
        _FUT_SYM,
        ("limit", "futures_historical_limit"),
        weight=20,
        table="records",
        auth="required",
    ),
    _fut("aggTrades", "/fapi/v1/aggTrades", _FUT_SYM, _TLIMIT, weight=20, table="records"),
    _fut("klines", "/fapi/v1/klines", _FUT_SYM, _INTERVAL, _KLIMIT, weight=_futures_klines, table="klines"),
    _fut(
        "continuousKlines",
        "/fapi/v1/continuousKlines",
        _PAIR,
        ("contractType", "contract_type"),
        _INTERVAL,
        _KLIMIT,
        weight=_futures_klines,
        table="klines",
    ),
    _fut(
        "indexPriceKlines",
        "/fapi/v1/indexPriceKlines",
        _PAIR,
        _INTERVAL,
        _KLIMIT,
        weight=_futures_klines,
        table="klines",
    ),
    _fut(
        "markPriceKlines",
        "/fapi/v1/markPriceKlines",
        _FUT_SYM,
        _INTERVAL,
        _KLIMIT,
        weight=_futures_klines,
        table="klines",
    ),
    _fut("premiumIndex", "/fapi/v1/premiumIndex", _FUT_SYM, weight=_with_symbol(1, 10), table="records"),
    # fundingRate/fundingInfo carry no IP weight: they share their own 500 requests / 5 min bucket.
    _fut(
        "fundingRate", "/fapi/v1/fundingRate", _FUT_SYM, ("limit", "funding_limit"), weight=0, table="records"
    ),
    _fut("fundingInfo", "/fapi/v1/fundingInfo", weight=0, table="records"),
    _fut("ticker_24hr", "/fapi/v1/ticker/24hr", _FUT_SYM, weight=_with_symbol(1, 40)),
    _fut("ticker_price", "/fapi/v2/ticker/price", _FUT_SYM, weight=_with_symbol(1, 2)),
    _fut("ticker_bookTicker", "/fapi/v1/ticker/bookTicker", _FUT_SYM, weight=_with_symbol(2, 5)),
    _fut("deliveryPrice", "/futures/data/delivery-price", _PAIR, weight=0, table="records"),
    _fut("openInterest", "/fapi/v1/openInterest", _FUT_SYM, table="records"),
    # /futures/data/* carry no IP weight: their own 1000 requests / 5 min bucket.
    _fut("openInterestHist", "/futures/data/openInterestHist", *_RATIO, weight=0, table="records"),
    _fut(
        "topLongShortPositionRatio",
        "/futures/data/topLongShortPositionRatio",
        *_RATIO,
        weight=0,
        table="records",
        auth="optional",
    ),
    _fut(
        "globalLongShortAccountRatio",
        "/futures/data/globalLongShortAccountRatio",
        *_RATIO,
        weight=0,
        table="records",
    ),
    _fut(
        "topLongShortAccountRatio",
        "/futures/data/topLongShortAccountRatio",
        *_RATIO,
        weight=0,
        table="records",
        auth="optional",
    ),
    _fut("takerlongshortRatio", "/futures/data/takerlongshortRatio", *_RATIO, weight=0, table="records"),
    _fut("indexInfo", "/fapi/v1/indexInfo", ("symbol", "composite_index")),
    _fut("assetIndex", "/fapi/v1/assetIndex", weight=_with_symbol(1, 10)),
    _fut("constituents", "/fapi/v1/constituents", _FUT_SYM, weight=2),
)

# Endpoints the sim also serves that collect does not fetch (kept here so weights live in one place).
EXTRA_WEIGHTS: Final[dict[str, WeightFn]] = {
    "/fapi/v1/ticker/price": _with_symbol(1, 2),
    "/fapi/v1/premiumIndexKlines": _futures_klines,
}

_BY_PATH: Final[dict[str, Endpoint]] = {e.path: e for e in ENDPOINTS}


def request_weight(path: str, query: Query) -> int:
    """The documented request weight of ``GET path?query``; 1 for a path not in the table."""
    found = _BY_PATH.get(path)
    if found is not None:
        return found.weight_of(query)
    extra = EXTRA_WEIGHTS.get(path)
    return extra(query) if extra is not None else 1


def endpoint(market: Market, name: str) -> Endpoint:
    """The row for ``market``/``name``; ``KeyError`` when there is none."""
    for e in ENDPOINTS:
        if e.market == market and e.name == name:
            return e
    raise KeyError(f"{market}/{name}")
