"""exchangeInfo documents built from what a capture holds (pure: no I/O, no clock).

Each symbol of the capture is listed ``TRADING`` (``PERPETUAL`` on ``/fapi``; a dated COIN-M
symbol such as ``BTCUSD_211231`` is a ``CURRENT_QUARTER`` contract). Tick and step sizes are
inferred from the decimals of the price and quantity strings the capture carries: Binance writes
prices with the symbol's precision, and a column whose last decimal is always ``0`` means a
coarser tick (fapi BTCUSDT writes ``61800.20``: two decimals, tick ``0.10``). The shape follows
docs/binance.md §6 and the real responses in tests/data (nautilus_trader, cryptofeed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import orjson

from ingestd.sim.captures import Market, Timeline
from ingestd.venues.binance.endpoints import SPOT, USDM

QUOTE_ASSETS: Final = (
    "FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USDP", "BIDR", "IDRT", "BVND", "USD", "DAI",
    "BTC", "ETH", "BNB", "EUR", "TRY", "BRL", "GBP", "AUD", "RUB", "UAH", "NGN", "ZAR",
    "PLN", "RON", "ARS", "JPY", "MXN", "COP", "CZK", "XRP", "TRX", "DOGE", "DOT", "SOL",
)  # fmt: skip
"""Quote assets recognised as a symbol suffix; the longest match wins (``USDT`` before ``USD``)."""

PERPETUAL_DELIVERY_MS: Final = 4133404800000
"""Binance's delivery date for perpetuals (2100-12-25 08:00 UTC)."""
_ONBOARD_MS: Final = 1569398400000
_SAMPLE_FRAMES: Final = 400
"""Frames per symbol decoded to infer precisions (plus the whole recorded snapshot)."""

FUTURES_RATE_LIMITS: Final = (
    {
        "rateLimitType": "REQUEST_WEIGHT",
        "interval": "MINUTE",
        "intervalNum": 1,
        "limit": USDM.weight_limit_per_minute,
    },
    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
)
SPOT_RATE_LIMITS: Final = (
    {
        "rateLimitType": "REQUEST_WEIGHT",
        "interval": "MINUTE",
        "intervalNum": 1,
        "limit": SPOT.weight_limit_per_minute,
    },
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
    {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
    {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 300000},
)


@dataclass(frozen=True, slots=True)
class Precision:
    """Decimals written and decimals that ever carry a non-zero digit, for prices and quantities."""

    price_written: int
    price_used: int
    qty_written: int
    qty_used: int

    @property
    def tick_size(self) -> str:
        return _step(self.price_used, self.price_written)

    @property
    def step_size(self) -> str:
        return _step(self.qty_used, self.qty_written)


def _step(used: int, written: int) -> str:
    return f"{Decimal(1).scaleb(-used):.{written}f}"


def _fixed(value: str | int, written: int) -> str:
    return f"{Decimal(value):.{written}f}"


def split_symbol(native: str) -> tuple[str, str, str]:
    """``BTCUSDT`` → (``BTC``, ``USDT``, contract type).

    ``BTCUSD_PERP`` is a ``PERPETUAL``; a dated ``BTCUSD_211231`` a ``CURRENT_QUARTER``.
    """
    pair, _, suffix = native.partition("_")
    contract = "PERPETUAL" if suffix in ("", "PERP") else "CURRENT_QUARTER"
    for quote in sorted(QUOTE_ASSETS, key=len, reverse=True):
        if pair.endswith(quote) and len(pair) > len(quote):
            return pair[: -len(quote)], quote, contract
    half = max(1, len(pair) - 4)
    return pair[:half], pair[half:], contract


_TICKER_KEYS: Final = (("b", "p"), ("a", "p"), ("B", "q"), ("A", "q"))
_TRADE_KEYS: Final = (("p", "p"), ("q", "q"))


def _decimals(text: str) -> tuple[int, int]:
    _, dot, frac = text.partition(".")
    if not dot:
        return 0, 0
    return len(frac), len(frac.rstrip("0"))


def _numbers(data: Any) -> Iterator[tuple[str, str]]:
    """``("p", text)`` for prices and ``("q", text)`` for quantities in one payload."""
    if isinstance(data, list):
        for item in data:
            yield from _numbers(item)
        return
    if not isinstance(data, dict):
        return
    for key in ("b", "a", "bids", "asks"):
        levels = data.get(key)
        if isinstance(levels, list):
            for level in levels:
                if isinstance(level, list) and len(level) >= 2:
                    yield "p", str(level[0])
                    yield "q", str(level[1])
    # Top-level p/q are price/qty only on trades (markPrice's p has extra decimals, a ticker's q
    # is quote volume); b/a/B/A strings are bookTicker's best levels.
    pairs = _TRADE_KEYS if data.get("e") in ("trade", "aggTrade") else _TICKER_KEYS
    for key, kind in pairs:
        value = data.get(key)
        if isinstance(value, str):
            yield kind, value
    kline = data.get("k")
    if isinstance(kline, dict):
        for key in ("o", "h", "l", "c"):
            if isinstance(kline.get(key), str):
                yield "p", kline[key]


def infer_precision(samples: Iterable[Any]) -> Precision:
    """Decimals of the price/quantity strings found in decoded payloads (snapshots or ``data``)."""
    pw = pu = qw = qu = 0
    seen_p = seen_q = False
    for data in samples:
        for kind, text in _numbers(data):
            written, used = _decimals(text)
            if kind == "p":
                pw, pu, seen_p = max(pw, written), max(pu, used), True
            else:
                qw, qu, seen_q = max(qw, written), max(qu, used), True
    return Precision(pw if seen_p else 8, pu if seen_p else 8, qw if seen_q else 8, qu if seen_q else 8)


def _samples(timeline: Timeline, market: Market, symbol: str) -> Iterator[Any]:
    for snap in timeline.snapshots.get((market, symbol), ())[:1]:
        yield orjson.loads(snap.body)
    sids = set(timeline.symbol_sids(market, symbol))
    if not sids:
        return
    taken = 0
    for i, s in enumerate(timeline.sid):
        if s in sids:
            yield timeline.parsed(i)
            taken += 1
            if taken >= _SAMPLE_FRAMES:
                return


def _delivery_ms(native: str) -> int:
    _, _, suffix = native.partition("_")
    if len(suffix) == 6 and suffix.isdigit():
        when = datetime.strptime(suffix, "%y%m%d").replace(tzinfo=UTC, hour=8)
        return int(when.timestamp() * 1000)
    return PERPETUAL_DELIVERY_MS


def futures_symbol(native: str, prec: Precision) -> dict[str, Any]:
    """One ``/fapi/v1/exchangeInfo`` symbol entry."""
    base, quote, contract = split_symbol(native)
    coin_margined = "_" in native
    pw, qw = prec.price_written, prec.qty_written
    return {
        "symbol": native,
        "pair": native.partition("_")[0],
        "contractType": contract,
        "deliveryDate": _delivery_ms(native),
        "onboardDate": _ONBOARD_MS,
        "status": "TRADING",
        "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000",
        "baseAsset": base,
        "quoteAsset": quote,
        "marginAsset": base if coin_margined else quote,
        "pricePrecision": pw,
        "quantityPrecision": qw,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "underlyingSubType": [],
        "settlePlan": 0,
        "triggerProtect": "0.0500",
        "liquidationFee": "0.012500",
        "marketTakeBound": "0.05",
        "maxMoveOrderLimit": 10000,
        "filters": [
            {"minPrice": prec.tick_size, "maxPrice": _fixed(1_000_000, pw), "filterType": "PRICE_FILTER",
             "tickSize": prec.tick_size},
            {"stepSize": prec.step_size, "filterType": "LOT_SIZE", "maxQty": _fixed(1000, qw),
             "minQty": prec.step_size},
            {"stepSize": prec.step_size, "filterType": "MARKET_LOT_SIZE", "maxQty": _fixed(120, qw),
             "minQty": prec.step_size},
            {"limit": 200, "filterType": "MAX_NUM_ORDERS"},
            {"notional": "5", "filterType": "MIN_NOTIONAL"},
            {"multiplierDown": "0.9500", "multiplierUp": "1.0500", "multiplierDecimal": "4",
             "filterType": "PERCENT_PRICE"},
        ],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                       "TRAILING_STOP_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
        "permissionSets": [["GRID", "COPY"]],
    }  # fmt: skip


def spot_symbol(native: str, prec: Precision) -> dict[str, Any]:
    """One ``/api/v3/exchangeInfo`` symbol entry."""
    base, quote, _ = split_symbol(native)
    pw, qw = prec.price_written, prec.qty_written
    return {
        "symbol": native,
        "status": "TRADING",
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT",
                       "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "amendAllowed": True,
        "pegInstructionsAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": True,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": prec.tick_size, "maxPrice": _fixed(1_000_000, pw),
             "tickSize": prec.tick_size},
            {"filterType": "LOT_SIZE", "minQty": prec.step_size, "maxQty": _fixed(9000, qw),
             "stepSize": prec.step_size},
            {"filterType": "ICEBERG_PARTS", "limit": 10},
            {"filterType": "MARKET_LOT_SIZE", "minQty": _fixed(0, qw), "maxQty": _fixed(100, qw),
             "stepSize": _fixed(0, qw)},
            {"filterType": "TRAILING_DELTA", "minTrailingAboveDelta": 10, "maxTrailingAboveDelta": 2000,
             "minTrailingBelowDelta": 10, "maxTrailingBelowDelta": 2000},
            {"filterType": "PERCENT_PRICE_BY_SIDE", "bidMultiplierUp": "5", "bidMultiplierDown": "0.2",
             "askMultiplierUp": "5", "askMultiplierDown": "0.2", "avgPriceMins": 5},
            {"filterType": "NOTIONAL", "minNotional": _fixed(5, 8), "applyMinToMarket": True,
             "maxNotional": _fixed(9_000_000, 8), "applyMaxToMarket": False, "avgPriceMins": 5},
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
        ],
        "permissions": [],
        "permissionSets": [["SPOT", "MARGIN"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH", "DECREMENT"],
    }  # fmt: skip


def build_exchange_info(timeline: Timeline, market: Market) -> dict[str, Any]:
    """The exchangeInfo document of ``market`` for the timeline's symbols (``serverTime`` = 0;
    the venue stamps it per request)."""
    symbols = timeline.symbols(market)
    precisions = {s: infer_precision(_samples(timeline, market, s)) for s in symbols}
    if market == "spot":
        return {
            "timezone": "UTC",
            "serverTime": 0,
            "rateLimits": [dict(r) for r in SPOT_RATE_LIMITS],
            "exchangeFilters": [],
            "symbols": [spot_symbol(s, precisions[s]) for s in symbols],
        }
    entries = [futures_symbol(s, precisions[s]) for s in symbols]
    assets = sorted({e["marginAsset"] for e in entries} | {e["quoteAsset"] for e in entries})
    return {
        "timezone": "UTC",
        "serverTime": 0,
        "futuresType": "U_MARGINED",
        "rateLimits": [dict(r) for r in FUTURES_RATE_LIMITS],
        "exchangeFilters": [],
        "assets": [{"asset": a, "marginAvailable": True, "autoAssetExchange": "-10000"} for a in assets],
        "symbols": entries,
    }


def with_statuses(
    doc: dict[str, Any],
    status_of: Callable[[str], str | None],
    onboard_of: Callable[[str], int | None],
) -> dict[str, Any]:
    """``doc`` with each symbol's ``status`` from ``status_of(native)`` (``None``: left out of the
    list) and, where ``onboard_of(native)`` gives one, its ``onboardDate`` (futures)."""
    symbols: list[dict[str, Any]] = []
    for entry in doc["symbols"]:
        native = entry["symbol"]
        status = status_of(native)
        if status is None:
            continue
        onboard = onboard_of(native)
        if status == entry["status"] and (onboard is None or "onboardDate" not in entry):
            symbols.append(entry)
            continue
        changed = dict(entry, status=status)
        if onboard is not None and "onboardDate" in changed:
            changed["onboardDate"] = onboard
        symbols.append(changed)
    return dict(doc, symbols=symbols)
