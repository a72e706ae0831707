"""Contract definitions (channel ``contract``): parsed from real exchangeInfo bodies, diffed when
the set changes, stored exactly at start-up by a daemon run against the sim."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from ingestd.app import Daemon
from ingestd.consumers.schema import open_dataset
from ingestd.producers.contract_records import (
    DEFINITION_FIELDS,
    UNLISTED,
    ContractRecord,
    contract_from_record,
    contract_records,
)
from ingestd.records import Record
from ingestd.sim import SimVenue
from ingestd.venues.binance.symbols import ContractSet, parse_exchange_info
from tests.e2e import run_until, settings_for

DATA = Path(__file__).parent / "data"
INFO = DATA / "nautilus_trader"
SPOT_TRADES = DATA / "spot_btcusdt_20240808_trades.gz"
NS = 1_000_000


def _body(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((INFO / name).read_text())
    return body


def _usdm() -> ContractSet:
    return parse_exchange_info("binance-usdm", _body("http_futures_market_exchange_info.json"))


def test_usdm_definition_keeps_exchange_info_exactly() -> None:
    body = _body("http_futures_market_exchange_info.json")
    raw = {s["symbol"]: s for s in body["symbols"]}
    contracts = _usdm()
    assert contracts.natives == ["BTCUSDT", "ETHUSDT"]  # BTCUSDT_220325 is not perpetual
    for c in contracts:
        sym = raw[c.native]
        filt = {f["filterType"]: f for f in sym["filters"]}
        d = c.definition
        assert d is not None
        assert d.status == sym["status"] == "TRADING"
        assert d.contract_type == sym["contractType"] == "PERPETUAL"
        assert (d.base_asset, d.quote_asset, d.margin_asset) == (
            sym["baseAsset"],
            sym["quoteAsset"],
            sym["marginAsset"],
        )
        assert d.tick_size == filt["PRICE_FILTER"]["tickSize"]
        assert d.step_size == filt["LOT_SIZE"]["stepSize"]
        assert d.min_qty == filt["LOT_SIZE"]["minQty"]
        assert d.min_notional == filt["MIN_NOTIONAL"]["notional"]
        assert d.price_precision == sym["pricePrecision"]
        assert d.qty_precision == sym["quantityPrecision"]
        assert d.onboard_ts == sym["onboardDate"] * NS
        assert d.delivery_ts == sym["deliveryDate"] * NS
    btc = contracts.get("BTCUSDT")
    assert btc is not None
    # Derived exactly as before the definition was kept: decimals of the tick, not pricePrecision.
    assert (btc.tick_size, btc.price_precision, btc.step_size, btc.min_qty) == (0.1, 1, 0.001, 0.001)
    assert btc.definition is not None
    assert (btc.definition.tick_size, btc.definition.price_precision) == ("0.10", 2)


def test_spot_definition_has_nulls_where_binance_gives_nothing() -> None:
    body = _body("http_spot_market_exchange_info.json")
    contracts = parse_exchange_info("binance-spot", body)
    btc = contracts.get("BTCUSDT")
    assert btc is not None
    d = btc.definition
    assert d is not None
    assert (d.tick_size, d.step_size, d.min_qty) == ("0.01000000", "0.00001000", "0.00001000")
    assert d.min_notional == "10.00000000"  # spot's MIN_NOTIONAL.minNotional
    assert (d.contract_type, d.margin_asset, d.price_precision, d.qty_precision) == (None, None, None, None)
    assert (d.onboard_ts, d.delivery_ts) == (None, None)
    assert btc.price_precision == 2


def test_contract_records_diff() -> None:
    old = _usdm()
    start = contract_records(None, old, 7)
    assert [r.native for r in start] == ["BTCUSDT", "ETHUSDT"]
    assert all(r.recv_ts == 7 and r.exchange_ts is None and r.channel == "contract" for r in start)
    assert contract_records(old, old, 8) == []

    btc, eth = old.contracts
    assert btc.definition is not None
    finer = dataclasses.replace(btc.definition, tick_size="0.01")
    halted = dataclasses.replace(btc.definition, status="SETTLING")
    new = ContractSet("binance-usdm", (dataclasses.replace(btc, definition=finer), eth))
    (row,) = contract_records(old, new, 9)
    assert (row.native, row.tick_size, row.status, row.recv_ts) == ("BTCUSDT", "0.01", "TRADING", 9)
    settling = ContractSet("binance-usdm", (dataclasses.replace(btc, definition=halted), eth))
    (row,) = contract_records(old, settling, 9)
    assert row.status == "SETTLING"

    gone = contract_records(old, ContractSet("binance-usdm", (eth,)), 10)
    assert [(r.native, r.status, r.tick_size) for r in gone] == [("BTCUSDT", UNLISTED, "0.10")]
    listed = contract_records(ContractSet("binance-usdm", (eth,)), old, 11)
    assert [r.native for r in listed] == ["BTCUSDT"]


def test_contract_from_record_round_trips() -> None:
    for c in _usdm():
        (row,) = contract_records(None, ContractSet("binance-usdm", (c,)), 1)
        assert contract_from_record(row) == c


async def _stored_contracts(capture: Path, venue: str, tmp_path: Path) -> list[dict[str, Any]]:
    data = tmp_path / "data"
    async with SimVenue([capture], speed=0) as sim:
        settings = settings_for(
            sim.rest_url, sim.ws_url, data, venue=venue, symbols="BTCUSDT", channels="trade"
        )
        daemon = Daemon(settings)
        # The contract row is published before any stream starts.
        code = await run_until(daemon, lambda: daemon.bus.published >= 2, timeout=60)
    assert code == 0
    rows: list[dict[str, Any]] = open_dataset(data, "contract").to_table().to_pylist()
    return rows


@pytest.mark.asyncio
async def test_daemon_stores_the_sim_usdm_definition_at_start(bundled_capture: Path, tmp_path: Path) -> None:
    (row,) = await _stored_contracts(bundled_capture, "binance-usdm", tmp_path)
    assert row["venue"] == "binance-usdm"
    assert (row["symbol"], row["native"]) == ("BTC-USDT-PERP", "BTCUSDT")
    assert row["exchange_ts"] is None
    assert row["recv_ts"] > 0
    # The sim infers tick/step from the capture's strings (fapi BTCUSDT writes 61800.20 / 0.014).
    sizes = (row["tick_size"], row["step_size"], row["min_qty"], row["min_notional"])
    assert sizes == ("0.10", "0.001", "0.001", "5")
    assert (row["status"], row["contract_type"]) == ("TRADING", "PERPETUAL")
    assert (row["base_asset"], row["quote_asset"], row["margin_asset"]) == ("BTC", "USDT", "USDT")
    assert (row["price_precision"], row["qty_precision"]) == (2, 3)
    assert row["onboard_ts"] == 1569398400000 * NS
    assert row["delivery_ts"] == 4133404800000 * NS
    rec = ContractRecord(**{k: v for k, v in row.items() if k not in ("channel", "date")})
    c = contract_from_record(rec)
    assert (c.tick_size, c.price_precision, c.step_size) == (0.1, 1, 0.001)


@pytest.mark.asyncio
async def test_daemon_stores_the_sim_spot_definition_at_start(tmp_path: Path) -> None:
    (row,) = await _stored_contracts(SPOT_TRADES, "binance-spot", tmp_path)
    assert (row["venue"], row["symbol"]) == ("binance-spot", "BTC-USDT")
    assert (row["tick_size"], row["step_size"]) == ("0.01000000", "0.00001000")  # spot writes 8 decimals
    assert row["min_notional"] == "5.00000000"
    assert (row["contract_type"], row["margin_asset"], row["price_precision"], row["onboard_ts"]) == (
        None,
        None,
        None,
        None,
    )


def test_a_row_is_the_record_header_plus_the_definition_fields() -> None:
    """ContractRecord and ContractDefinition are built from one field list; neither has a field
    the other lacks (a column added to one only would be silently dropped)."""
    header = Record.__struct_fields__
    assert ContractRecord.__struct_fields__ == header + DEFINITION_FIELDS
