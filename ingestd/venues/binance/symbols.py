"""Contracts: exchangeInfo → the fixed set of instruments a run ingests (pure, no I/O).

USDⓈ-M keeps ``status == TRADING`` and ``contractType == PERPETUAL``; spot keeps ``TRADING``.
Symbols from the exchange are validated before they name a file or a NATS subject: only
upper-case ASCII letters, digits and ``_`` are accepted (Binance also lists non-ASCII test
symbols; they are skipped and counted, never written to disk).
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
class Contract:
    """One instrument. ``price_precision`` is the number of decimals of ``tick_size``."""

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
        filt = _filters(sym)
        price_f = filt.get("PRICE_FILTER", {})
        lot_f = filt.get("LOT_SIZE", {})
        tick = str(price_f.get("tickSize", "0") or "0")
        contracts.append(
            Contract(
                venue=venue.name,
                native=native,
                symbol=normalize(venue, base, quote),
                base=base,
                quote=quote,
                tick_size=float(tick),
                price_precision=decimals(tick) if float(tick) > 0 else int(sym.get("pricePrecision", 8)),
                min_qty=float(lot_f.get("minQty", 0) or 0),
                step_size=float(lot_f.get("stepSize", 0) or 0),
                contract_type=ctype if isinstance(ctype, str) else None,
            )
        )
    return ContractSet(venue.name, tuple(contracts), tuple(unsafe))
