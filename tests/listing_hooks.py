"""A hook module with an ``on_contract`` beside its record hook: ``ingestd replay --hook
tests.listing_hooks:on_record`` (tests/test_listings_e2e.py) calls both."""

from __future__ import annotations

from typing import Any

from ingestd.records import Record

ROWS: list[tuple[str, str, bool]] = []
"""Per contract row: (native, status, whether the context then held the contract)."""


async def on_record(rec: Record) -> None:
    """The record hook (the test reads what :func:`on_contract` saw)."""


async def on_contract(row: Any, ctx: Any) -> None:
    ROWS.append((row.native, row.status, ctx.contracts is not None and row.native in ctx.contracts))
