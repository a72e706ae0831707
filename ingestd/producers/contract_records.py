"""Contract definitions as records (channel ``contract``), and the pure diff that makes them.

One :class:`ContractRecord` per contract of the run is written at start-up, and again whenever a
contract's definition or status changes (a listing refresh calls :func:`contract_records` with
the previous and the new :class:`~ingestd.venues.binance.symbols.ContractSet`). Replay builds its
hook context and the nautilus instruments from these rows: tick sizes change over time, so a
backtest needs the definition valid at each moment.

Decimals (``tick_size``, ``step_size``, ``min_qty``, ``min_notional``) are the exact strings
exchangeInfo wrote (``"0.10"``): a tick size must not drift through float. ``exchange_ts`` is
``None`` (exchangeInfo's ``serverTime`` is not the time the definition took effect);
``recv_ts`` is when the document was read. The ``date`` partition is therefore the UTC day of
``recv_ts``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar, Final

from ingestd.records import Record, register
from ingestd.venues.binance.endpoints import VENUES
from ingestd.venues.binance.symbols import Contract, ContractDefinition, ContractSet, contract_from_definition

UNLISTED: Final = "UNLISTED"
"""``status`` of a row for a contract that left the run's trading set while exchangeInfo no
longer lists it (not a Binance value). A contract still listed with another status (USDⓈ-M
``SETTLING``, spot ``BREAK`` …) gets that status instead, when the caller passes the statuses."""


class ContractRecord(Record, frozen=True, kw_only=True, gc=False):
    """One contract definition (channel ``contract``); see the module docstring.

    ``price_precision`` / ``qty_precision`` are the venue's ``pricePrecision`` /
    ``quantityPrecision`` (USDⓈ-M only); ``onboard_ts`` / ``delivery_ts`` are ns (USDⓈ-M only);
    ``contract_type`` and ``margin_asset`` are ``None`` on spot. ``None`` wherever the venue
    gives nothing.
    """

    channel: ClassVar[str] = "contract"

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


register(ContractRecord)

DEFINITION_FIELDS: Final = tuple(f.name for f in dataclasses.fields(ContractDefinition))
"""The columns a row shares with :class:`ContractDefinition`: the one list both are built from."""
_missing = set(DEFINITION_FIELDS) - set(ContractRecord.__struct_fields__)
if _missing:  # the two classes drifted apart: fail at import, not on the first row
    raise TypeError(f"ContractRecord lacks the ContractDefinition fields {sorted(_missing)}")


def _definition(c: Contract) -> ContractDefinition:
    """A contract's definition; one built by hand (no exchangeInfo) is described from its fields."""
    if c.definition is not None:
        return c.definition
    return ContractDefinition(
        status="TRADING",
        contract_type=c.contract_type,
        base_asset=c.base,
        quote_asset=c.quote,
        margin_asset=None,
        tick_size=repr(c.tick_size),
        step_size=repr(c.step_size),
        min_qty=repr(c.min_qty),
        min_notional=None,
        price_precision=None,
        qty_precision=None,
        onboard_ts=None,
        delivery_ts=None,
    )


def contract_record(c: Contract, recv_ts: int, *, status: str | None = None) -> ContractRecord:
    """The row describing ``c`` as read at ``recv_ts`` (``status`` overrides its status)."""
    d = _definition(c)
    if status:
        d = dataclasses.replace(d, status=status)
    return ContractRecord(
        venue=c.venue,
        symbol=c.symbol,
        native=c.native,
        exchange_ts=None,
        recv_ts=recv_ts,
        **{name: getattr(d, name) for name in DEFINITION_FIELDS},
    )


def contract_records(
    old: ContractSet | None,
    new: ContractSet,
    recv_ts: int,
    *,
    statuses: Mapping[str, str] | None = None,
) -> list[ContractRecord]:
    """The rows to write when the contract set goes from ``old`` to ``new`` (pure).

    ``old`` ``None`` (start-up): one row per contract of ``new``. Otherwise one row per contract
    that is new or whose definition changed, and one row per contract of ``old`` that ``new`` no
    longer holds, carrying its last definition and the status exchangeInfo gives it now
    (``statuses``: native → status, e.g. ``SETTLING``), or :data:`UNLISTED` when it is not
    listed at all (or still listed as ``TRADING``: it left the run for another reason). Rows
    come in ``new``'s order, then the removed ones in ``old``'s order.
    """
    if old is None:
        return [contract_record(c, recv_ts) for c in new]
    before = old.by_native()
    out = [
        contract_record(c, recv_ts)
        for c in new
        if (prev := before.get(c.native)) is None or _definition(prev) != _definition(c)
    ]
    now = statuses or {}
    for c in old:
        if c.native not in new:
            status = now.get(c.native)
            gone = status if status and status != "TRADING" else UNLISTED
            out.append(contract_record(c, recv_ts, status=gone))
    return out


def definition_of(rec: ContractRecord) -> ContractDefinition:
    """The definition a stored row carries."""
    return ContractDefinition(**{name: getattr(rec, name) for name in DEFINITION_FIELDS})


def contract_from_record(rec: ContractRecord) -> Contract:
    """The :class:`Contract` a stored row describes, derived exactly as discovery derives it."""
    return contract_from_definition(VENUES[rec.venue], rec.native, definition_of(rec))
