"""Contracts: exchangeInfo → the fixed set of instruments a run ingests (pure, no I/O).

USDⓈ-M keeps ``status == TRADING`` and ``contractType == PERPETUAL``; spot keeps ``TRADING``.
Symbols from the exchange are validated before they name a file or a NATS subject: only
upper-case ASCII letters, digits and ``_`` are accepted (Binance also lists non-ASCII test
symbols; they are skipped and counted, never written to disk).

Each :class:`Contract` also keeps its :class:`ContractDefinition`: the exchangeInfo fields a
backtest needs (status, assets, tick/step/min sizes as the exact decimal strings Binance wrote,
precisions, onboard and delivery times). They are stored as the ``contract`` channel
(:mod:`ingestd.producers.contract_records`) so replay and exports know the definition valid at
each moment; a tick size kept as a string never drifts through float.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from ingestd.errors import ParseError, StartupError
from ingestd.venues.binance.endpoints import VENUES, VenueSpec

SAFE_NATIVE = re.compile(r"^[A-Z0-9_]{2,40}$")
"""What a native symbol may look like before it becomes a path or a subject."""


@dataclass(frozen=True, slots=True)
class ContractDefinition:
    """One contract as exchangeInfo defines it, decimals kept as the exact strings it wrote.

    ``price_precision`` / ``qty_precision`` are the venue's own ``pricePrecision`` /
    ``quantityPrecision`` (USDⓈ-M only; ``None`` on spot, which sends none): Binance says not to
    use them as tick or step sizes, so :attr:`Contract.price_precision` is derived from
    ``tick_size`` instead. ``min_notional`` is USDⓈ-M ``MIN_NOTIONAL.notional`` or spot
    ``NOTIONAL``/``MIN_NOTIONAL.minNotional``; ``onboard_ts`` / ``delivery_ts`` are ns (USDⓈ-M
    only). ``None`` wherever the venue gives nothing (see docs/binance.md, exchangeInfo).
    """

    status: str
    contract_type: str | None
    base_asset: str
    quote_asset: str
    margin_asset: str | None
    tick_size: str
    step_size: str
    min_qty: str
    min_notional: str | None
    price_precision: int | None
    qty_precision: int | None
    onboard_ts: int | None
    delivery_ts: int | None


@dataclass(frozen=True, slots=True)
class Contract:
    """One instrument. ``price_precision`` is the number of decimals of ``tick_size``.

    ``definition`` is what exchangeInfo said about it (``None`` for contracts built by hand).
    """

    venue: str
    native: str
    symbol: str
    base: str
    quote: str
    tick_size: float
    price_precision: int
    min_qty: float
    step_size: float
    contract_type: str | None = None
    definition: ContractDefinition | None = None


@dataclass(frozen=True, slots=True)
class ContractSet:
    """The run's instruments, fixed at start. Reconnects resubscribe exactly these."""

    venue: str
    contracts: tuple[Contract, ...]
    skipped_unsafe: tuple[str, ...] = ()
    _by_native: dict[str, Contract] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_native", {c.native: c for c in self.contracts})

    def __len__(self) -> int:
        return len(self.contracts)

    def __iter__(self) -> Iterator[Contract]:
        return iter(self.contracts)

    def __contains__(self, native: object) -> bool:
        return native in self._by_native

    def get(self, native: str) -> Contract | None:
        return self._by_native.get(native)

    def by_native(self) -> Mapping[str, Contract]:
        return self._by_native

    @property
    def natives(self) -> list[str]:
        return [c.native for c in self.contracts]

    def price_precision(self) -> dict[str, int]:
        """Normalized symbol → number of price decimals (for hooks)."""
        return {c.symbol: c.price_precision for c in self.contracts}

    def min_qty(self) -> dict[str, float]:
        """Normalized symbol → minimum order quantity (for hooks)."""
        return {c.symbol: c.min_qty for c in self.contracts}

    def select(self, natives: Iterable[str]) -> ContractSet:
        """Keep only ``natives``; a name not in the set is a :class:`StartupError` naming it."""
        wanted = [n.strip().upper() for n in natives if n.strip()]
        missing = [n for n in wanted if n not in self._by_native]
        if missing:
            raise StartupError(
                f"{self.venue}: not listed as trading: {', '.join(missing)} "
                f"({len(self.contracts)} trading symbols discovered)"
            )
        seen: dict[str, Contract] = {}
        for n in wanted:
            seen.setdefault(n, self._by_native[n])
        return ContractSet(self.venue, tuple(seen.values()))


def decimals(text: str) -> int:
    """Decimals needed to write a step like ``"0.01000000"`` → 2, ``"1"`` → 0, ``"1e-05"`` → 5."""
    try:
        d = Decimal(text).normalize()
    except InvalidOperation as exc:
        raise ParseError(f"not a decimal: {text!r}") from exc
    exp = d.as_tuple().exponent
    assert isinstance(exp, int)
    return max(0, -exp)


def normalize(venue: VenueSpec, base: str, quote: str) -> str:
    """``BTC``, ``USDT`` → ``BTC-USDT-PERP`` on USDⓈ-M, ``BTC-USDT`` on spot."""
    return f"{base}-{quote}{venue.perpetual_suffix}"


def _filters(sym: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for f in sym.get("filters") or ():
        if isinstance(f, Mapping) and isinstance(f.get("filterType"), str):
            out[f["filterType"]] = f
    return out


def _text(value: Any, default: str | None) -> str | None:
    """A decimal field as the exact string Binance wrote (numbers are written back as given)."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return default


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _ms_to_ns(value: Any) -> int | None:
    ms = _int(value)
    return None if ms is None else ms * 1_000_000


def parse_definition(
    sym: Mapping[str, Any], base: str, quote: str, status: str, contract_type: Any
) -> ContractDefinition:
    """One exchangeInfo ``symbols[]`` entry → its :class:`ContractDefinition` (pure).

    Trimmed real USDⓈ-M entry (nautilus_trader's recorded ``/fapi/v1/exchangeInfo``)::

        {"symbol":"BTCUSDT","pair":"BTCUSDT","contractType":"PERPETUAL",
         "deliveryDate":4133404802000,"onboardDate":1569398400000,"status":"TRADING",
         "baseAsset":"BTC","quoteAsset":"USDT","marginAsset":"USDT","pricePrecision":2,
         "quantityPrecision":3,"filters":[{"minPrice":"402","maxPrice":"1246396.60",
         "filterType":"PRICE_FILTER","tickSize":"0.10"},{"stepSize":"0.001",
         "filterType":"LOT_SIZE","maxQty":"1000","minQty":"0.001"},
         {"notional":"10","filterType":"MIN_NOTIONAL"}, ...]}

    Spot writes ``"tickSize":"0.01000000"`` and ``{"filterType":"MIN_NOTIONAL",
    "minNotional":"10.00000000",...}`` (``NOTIONAL`` in newer documents), with no precisions,
    margin asset or dates.
    """
    filt = _filters(sym)
    price_f = filt.get("PRICE_FILTER", {})
    lot_f = filt.get("LOT_SIZE", {})
    notional = _text(filt.get("MIN_NOTIONAL", {}).get("notional"), None)  # USDⓈ-M spelling
    if notional is None:
        notional_f = filt.get("NOTIONAL") or filt.get("MIN_NOTIONAL") or {}
        notional = _text(notional_f.get("minNotional"), None)  # spot spelling
    margin = sym.get("marginAsset")
    return ContractDefinition(
        status=status,
        contract_type=contract_type if isinstance(contract_type, str) and contract_type else None,
        base_asset=base,
        quote_asset=quote,
        margin_asset=margin if isinstance(margin, str) and margin else None,
        tick_size=_text(price_f.get("tickSize"), "0") or "0",
        step_size=_text(lot_f.get("stepSize"), "0") or "0",
        min_qty=_text(lot_f.get("minQty"), "0") or "0",
        min_notional=notional,
        price_precision=_int(sym.get("pricePrecision")),
        qty_precision=_int(sym.get("quantityPrecision")),
        onboard_ts=_ms_to_ns(sym.get("onboardDate")),
        delivery_ts=_ms_to_ns(sym.get("deliveryDate")),
    )


def contract_from_definition(venue: VenueSpec, native: str, definition: ContractDefinition) -> Contract:
    """The run's :class:`Contract` of ``native`` from its definition: the one derivation used
    at discovery and when replay rebuilds contracts from stored ``contract`` rows."""
    tick = float(definition.tick_size)
    fallback = definition.price_precision if definition.price_precision is not None else 8
    return Contract(
        venue=venue.name,
        native=native,
        symbol=normalize(venue, definition.base_asset, definition.quote_asset),
        base=definition.base_asset,
        quote=definition.quote_asset,
        tick_size=tick,
        price_precision=decimals(definition.tick_size) if tick > 0 else fallback,
        min_qty=float(definition.min_qty),
        step_size=float(definition.step_size),
        contract_type=definition.contract_type,
        definition=definition,
    )


def parse_exchange_info(venue_name: str, body: Any) -> ContractSet:
    """exchangeInfo body → the trading contracts of ``venue_name``.

    Raises :class:`ParseError` when the body is not an exchangeInfo document. Symbols that are not
    trading (or not perpetual on USDⓈ-M) are left out; unsafe names are left out and listed in
    ``skipped_unsafe``.
    """
    venue = VENUES[venue_name]
    if not isinstance(body, Mapping) or not isinstance(body.get("symbols"), list):
        raise ParseError("exchangeInfo: no 'symbols' list in the body", stream="exchangeInfo")
    contracts: list[Contract] = []
    unsafe: list[str] = []
    for sym in body["symbols"]:
        if not isinstance(sym, Mapping):
            continue
        status = sym.get("status", sym.get("contractStatus"))
        if status != "TRADING":
            continue
        ctype = sym.get("contractType")
        if venue.routed and ctype != "PERPETUAL":
            continue
        native = sym.get("symbol")
        if not isinstance(native, str):
            continue
        if not SAFE_NATIVE.match(native):
            unsafe.append(native)
            continue
        base, quote = sym.get("baseAsset"), sym.get("quoteAsset")
        if not isinstance(base, str) or not isinstance(quote, str):
            raise ParseError(f"exchangeInfo: {native} lacks baseAsset/quoteAsset", stream="exchangeInfo")
        definition = parse_definition(sym, base, quote, status, ctype)
        contracts.append(contract_from_definition(venue, native, definition))
    return ContractSet(venue.name, tuple(contracts), tuple(unsafe))
