"""REST-sourced trades (backfill: ``source="rest"``, no event time) are partitioned and selected by
their trade time, so one traded before midnight and fetched after it is in that day's partition,
and a replay window around its trade time finds it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestd.config import StorageSettings
from ingestd.consumers.parquet import ParquetWriter
from ingestd.records import AggTrade, AnyRecord
from ingestd.replay import frame, records

NS = 1_000_000_000
MIDNIGHT = 1_723_161_600 * NS  # 2024-08-09 00:00:00 UTC


def agg(agg_id: int, traded: int, recv: int, *, rest: bool) -> AggTrade:
    return AggTrade(venue="binance-usdm", symbol="BTC-USDT-PERP", native="BTCUSDT",
                    exchange_ts=None if rest else traded + 5_000_000, recv_ts=recv, transaction_ts=traded,
                    agg_id=agg_id, first_trade_id=agg_id * 10, last_trade_id=agg_id * 10 + 1, price=61800.3,
                    qty=0.006, is_buyer_maker=False, source="rest" if rest else "ws")  # fmt: skip


async def _store(data: Path, batch: list[AnyRecord]) -> None:
    writer = ParquetWriter(StorageSettings(data_dir=data))
    await writer.start()
    await writer.consume(batch)
    await writer.close()


@pytest.mark.asyncio
async def test_a_backfilled_trade_from_before_midnight_is_in_its_days_partition(tmp_path: Path) -> None:
    data = tmp_path / "data"
    live = agg(1, MIDNIGHT - 3 * NS, MIDNIGHT - 3 * NS + 9_000_000, rest=False)
    # Traded two seconds before midnight, fetched from REST a minute after it.
    late = agg(2, MIDNIGHT - 2 * NS, MIDNIGHT + 60 * NS, rest=True)
    await _store(data, [live, late])
    sdir = data / "venue=binance-usdm" / "channel=agg_trade" / "symbol=BTC-USDT-PERP"
    assert sorted(p.name for p in sdir.iterdir()) == ["date=2024-08-08"]
    # A window on the day it traded finds both; one on the next day finds neither.
    day = list(records(data, channels=["agg_trade"], start=MIDNIGHT - 3600 * NS, end=MIDNIGHT))
    assert day == [live, late]
    assert list(records(data, channels=["agg_trade"], start=MIDNIGHT, end=MIDNIGHT + 3600 * NS)) == []
    table = frame(data, "agg_trade", start=MIDNIGHT - 2 * NS, end=MIDNIGHT - NS)
    assert table.column("agg_id").to_pylist() == [2]
    assert table.column("date").to_pylist() == ["2024-08-08"]
