"""The Parquet writer: layout, schemas, read-back with pyarrow and DuckDB, rotation, crash safety,
disk errors.

Records come from real recorded Binance traffic (``tests/data``) through the venue parser:
the hftbacktest USDⓈ-M BTCUSDT capture (trades, bookTickers, depth diffs, the REST snapshot; it
crosses midnight UTC, so two date partitions) and crypto-msg-parser's single messages (aggTrade,
markPrice, depth20, tickers, kline). No genuine miniTicker or forceOrder capture exists: the
miniTicker is projected out of a real 24hrTicker, the forceOrder is the real IOTXUSDT one quoted in
tiagosiebler/binance (kept in ``tests/data/parse_frames.ndjson``, see ``tests/data/PROVENANCE.md``).
"""

from __future__ import annotations

import asyncio
import enum
import errno
import functools
import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from ingestd.config import StorageSettings
from ingestd.consumers.parquet import ParquetWriter
from ingestd.consumers.schema import (
    LEVEL_TYPE,
    LEVELS_TYPE,
    PARTITIONING,
    columns_for,
    open_dataset,
    schema_for,
)
from ingestd.records import (
    CHANNELS,
    RECORD_TYPES,
    AnyRecord,
    DepthDiff,
    Level,
    Record,
    Trade,
    register,
)
from ingestd.venues.binance.parse import FrameParser, parse_depth_snapshot
from ingestd.venues.binance.symbols import Contract, ContractSet
from tests.ops import wait_for as until

VENUE = "binance-usdm"
DATA = Path(__file__).resolve().parent / "data"
RECV = 1_723_161_255_000_000_000
"""recv_ts for single messages whose source recorded none."""


# -- real records ------------------------------------------------------------------------------


def _contract(native: str, base: str) -> Contract:
    return Contract(
        venue=VENUE,
        native=native,
        symbol=f"{base}-USDT-PERP",
        base=base,
        quote="USDT",
        tick_size=0.1,
        price_precision=1,
        min_qty=0.001,
        step_size=0.001,
        contract_type="PERPETUAL",
    )


CONTRACTS = ContractSet(
    VENUE, (_contract("BTCUSDT", "BTC"), _contract("ETHUSDT", "ETH"), _contract("IOTXUSDT", "IOTX"))
)


@functools.cache
def hft_lines(realdata: Path) -> tuple[tuple[int, bytes], ...]:
    """(recv_ns, frame) of the first 3,000 and last 500 lines (the tail crosses 00:00 UTC)."""
    with gzip.open(realdata / "hftbacktest" / "usdm_btcusdt_20240808.gz", "rb") as f:
        lines = f.read().splitlines()
    out = []
    for line in lines[:3000] + lines[-500:]:
        ts, _, frame = line.partition(b" ")
        out.append((int(ts), frame))
    return tuple(out)


def hft_records(realdata: Path) -> list[Record]:
    parser = FrameParser(VENUE, CONTRACTS)
    btc = CONTRACTS.get("BTCUSDT")
    assert btc is not None
    out: list[Record] = []
    for ts, frame in hft_lines(realdata):
        if frame.startswith(b'{"lastUpdateId"'):
            out.append(parse_depth_snapshot(VENUE, btc, frame, ts))
        else:
            out.extend(parser.parse(frame, ts)[1])
    return out


def single_message_records(realdata: Path) -> list[Record]:
    parser = FrameParser(VENUE, CONTRACTS)
    lines = (realdata / "crypto-msg-parser" / "binance_raw_messages.ndjson").read_bytes().splitlines()
    out: list[Record] = []
    # USD-M lines: aggTrade, markPrice, !markPrice@arr, depth20, !ticker@arr, ticker, kline_1M.
    for n in (5, 9, 10, 21, 32, 35, 42):
        out.extend(parser.parse(lines[n - 1], RECV + n)[1])
    t = json.loads(lines[34])["data"]
    mini = {"e": "24hrMiniTicker", **{k: t[k] for k in ("E", "s", "c", "o", "h", "l", "v", "q")}}
    out.extend(
        parser.parse(json.dumps({"stream": "ethusdt@miniTicker", "data": mini}).encode(), RECV + 100)[1]
    )
    frames = [json.loads(line)["frame"] for line in (DATA / "parse_frames.ndjson").read_text().splitlines()]
    force = [f for f in frames if '"e":"forceOrder"' in f]
    assert force, "the real forceOrder sample is missing from tests/data/parse_frames.ndjson"
    out.extend(parser.parse(force[0].encode(), RECV + 200)[1])
    return out


def all_records(realdata: Path) -> list[Record]:
    recs = hft_records(realdata) + single_message_records(realdata)
    assert {r.channel for r in recs} == set(CHANNELS), "every market channel must be covered"
    return recs


@functools.cache
def _stream_records(realdata: Path, marker: bytes) -> tuple[Record, ...]:
    """Every record of the whole capture from frames whose stream name ends with ``marker``."""
    parser = FrameParser(VENUE, CONTRACTS)
    out: list[Record] = []
    with gzip.open(realdata / "hftbacktest" / "usdm_btcusdt_20240808.gz", "rb") as f:
        for line in f:
            if marker + b'"' in line:
                ts, _, frame = line.partition(b" ")
                out.extend(parser.parse(frame.rstrip(b"\n"), int(ts))[1])
    return tuple(out)


def trades(realdata: Path, n: int) -> list[Record]:
    """The first ``n`` real BTCUSDT trades of the capture (21,313 in all)."""
    out = list(_stream_records(realdata, b"@trade")[:n])
    assert len(out) == n
    return out


# -- helpers -----------------------------------------------------------------------------------


def settings(root: Path, **kw: Any) -> StorageSettings:
    return StorageSettings(data_dir=root, **kw)


def utc_date(r: Record) -> str:
    ts = r.exchange_ts if r.exchange_ts is not None else r.recv_ts
    return datetime.fromtimestamp(ts / 1e9, UTC).strftime("%Y-%m-%d")


def rows_to_records(rows: list[dict[str, Any]]) -> list[Record]:
    """Rebuild records from read-back rows (partition columns from the path), checking dates."""
    out: list[Record] = []
    for row in rows:
        cls = RECORD_TYPES[row["channel"]]
        fields: dict[str, Any] = {}
        for col in columns_for(cls):
            v = row[col.name]
            if col.type == LEVELS_TYPE and v is not None:
                v = [(lv["price"], lv["qty"]) for lv in v]
            fields[col.name] = v
        rec = cls(venue=row["venue"], symbol=row["symbol"], **fields)
        assert str(row["date"]) == utc_date(rec)
        out.append(rec)
    return out


def duck_rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def ordered(recs: list[Record]) -> list[Record]:
    return sorted(recs, key=lambda r: (r.channel, msgspec.json.encode(r)))


def assert_same(got: list[Record], want: list[Record]) -> None:
    assert len(got) == len(want)
    for g, w in zip(ordered(got), ordered(want), strict=True):
        assert g == w, (g, w)


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def tmp_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.tmp"))


async def write_all(root: Path, recs: list[Record], batch: int = 256, **kw: Any) -> ParquetWriter:
    w = ParquetWriter(settings(root, **kw))
    await w.start()
    for i in range(0, len(recs), batch):
        await w.consume(list[AnyRecord](recs[i : i + batch]))
    await w.close()
    return w


# -- tests -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_every_channel_round_trips_through_pyarrow_and_duckdb(tmp_path: Path, realdata: Path) -> None:
    recs = all_records(realdata)
    w = await write_all(tmp_path, recs, rotate_rows=700)
    assert tmp_files(tmp_path) == []
    st = w.stats()
    assert st["rows"] == len(recs)
    assert st["pending_rows"] == 0
    assert st["dropped_rows"] == 0
    assert st["write_errors"] == 0
    per = st["per_channel"]
    assert {ch: v["rows"] for ch, v in per.items()} == dict(Counter(r.channel for r in recs))
    assert st["files"] == len(parquet_files(tmp_path)) == sum(v["files"] for v in per.values())
    assert st["bytes"] == sum(p.stat().st_size for p in parquet_files(tmp_path))

    # Layout: venue/channel/symbol/date, dates from exchange_ts (the capture crosses midnight UTC).
    dirs = {p.parent.relative_to(tmp_path).as_posix() for p in parquet_files(tmp_path)}
    assert "venue=binance-usdm/channel=trade/symbol=BTC-USDT-PERP/date=2024-08-08" in dirs
    assert "venue=binance-usdm/channel=book_ticker/symbol=BTC-USDT-PERP/date=2024-08-09" in dirs
    assert "venue=binance-usdm/channel=liquidation/symbol=IOTX-USDT-PERP/date=2021-10-19" in dirs
    # Rotation by rows: the 2024-08-08 BTC book tickers fill full files of 700 rows.
    n_bt = sum(1 for r in recs if r.channel == "book_ticker" and utc_date(r) == "2024-08-08")
    bt_dir = tmp_path / "venue=binance-usdm/channel=book_ticker/symbol=BTC-USDT-PERP/date=2024-08-08"
    sizes = [pq.read_metadata(p).num_rows for p in sorted(bt_dir.glob("*.parquet"))]
    assert sum(sizes) == n_bt
    assert sizes[:-1] == [700] * (len(sizes) - 1)

    # Each file: the channel's schema, partition columns left out, native kept.
    for p in parquet_files(tmp_path):
        channel = p.parent.parent.parent.name.removeprefix("channel=")
        schema = pq.read_schema(p)
        assert schema.remove_metadata().equals(schema_for(RECORD_TYPES[channel]).remove_metadata())
        assert "native" in schema.names
        assert not {"venue", "channel", "symbol"} & set(schema.names)

    # pyarrow: the whole tree as one hive dataset, with the channels' columns unified.
    table = open_dataset(tmp_path).to_table()
    assert table.num_rows == len(recs)
    assert_same(rows_to_records(table.to_pylist()), recs)
    # ... and one channel at a time.
    for ch in CHANNELS:
        one_ch = open_dataset(tmp_path, ch).to_table()
        assert set(one_ch.column_names) == {c.name for c in columns_for(RECORD_TYPES[ch])} | {
            "venue", "channel", "symbol", "date",
        }  # fmt: skip
        assert_same(rows_to_records(one_ch.to_pylist()), [r for r in recs if r.channel == ch])
    # The plain pyarrow call also works, given the unified schema.
    unified = pa.unify_schemas([schema_for(RECORD_TYPES[c]) for c in CHANNELS])
    fields = [f.with_nullable(True) for f in unified] + list(PARTITIONING)
    plain = ds.dataset(tmp_path, format="parquet", partitioning="hive", schema=pa.schema(fields)).to_table()
    assert_same(rows_to_records(plain.to_pylist()), recs)

    # DuckDB: the whole tree (channels have different columns: union_by_name), and per channel.
    con = duckdb.connect()
    whole = duck_rows(
        con,
        f"select * from read_parquet('{tmp_path}/**/*.parquet', hive_partitioning=true, union_by_name=true)",
    )
    assert_same(rows_to_records(whole), recs)
    for ch in CHANNELS:
        glob = f"{tmp_path}/venue=*/channel={ch}/**/*.parquet"
        one = duck_rows(con, f"select * from read_parquet('{glob}', hive_partitioning=true)")
        assert_same(rows_to_records(one), [r for r in recs if r.channel == ch])
    con.close()


@pytest.mark.asyncio
async def test_depth_levels_equal_the_payload_text(tmp_path: Path, realdata: Path) -> None:
    """Independent of the parser: every stored level equals float() of the exchange's strings."""
    recs = hft_records(realdata)
    await write_all(tmp_path, recs)
    con = duckdb.connect()
    rows = con.execute(
        f"select first_update_id, final_update_id, prev_final_update_id, exchange_ts, transaction_ts, "
        f"recv_ts, bids, asks from read_parquet('{tmp_path}/venue=*/channel=depth_diff/**/*.parquet', "
        f"hive_partitioning=true)"
    ).fetchall()
    con.close()
    stored = {r[1]: r for r in rows}
    checked = 0
    for ts, frame in hft_lines(realdata):
        msg = json.loads(frame)
        if not msg.get("stream", "").endswith("@depth@0ms"):
            continue
        d = msg["data"]
        row = stored[d["u"]]
        assert row[:6] == (d["U"], d["u"], d["pu"], d["E"] * 1_000_000, d["T"] * 1_000_000, ts)
        assert [(lv["price"], lv["qty"]) for lv in row[6]] == [(float(p), float(q)) for p, q in d["b"]]
        assert [(lv["price"], lv["qty"]) for lv in row[7]] == [(float(p), float(q)) for p, q in d["a"]]
        checked += 1
    assert checked == len(stored) > 100


@pytest.mark.asyncio
async def test_rotation_by_rows_writes_before_close(tmp_path: Path, realdata: Path) -> None:
    recs = trades(realdata, 2500)
    w = ParquetWriter(settings(tmp_path, rotate_rows=1000, rotate_seconds=3600))
    await w.start()
    await w.consume(list[AnyRecord](recs))
    await until(lambda: w.stats()["files"] == 2)
    assert w.stats()["pending_rows"] == 500
    await w.close()
    files = parquet_files(tmp_path)
    assert [pq.read_metadata(p).num_rows for p in files] == [1000, 1000, 500]
    # Names sort in write order, so reading files in name order keeps the trade order.
    ids = [i for p in files for i in pq.read_table(p, columns=["trade_id"]).column(0).to_pylist()]
    assert ids == [r.trade_id for r in recs if isinstance(r, Trade)]
    name = files[0].name
    assert name.endswith(".parquet")
    assert f"-{os.getpid()}-" in name


@pytest.mark.asyncio
async def test_rotation_by_age_writes_a_quiet_buffer(tmp_path: Path, realdata: Path) -> None:
    recs = trades(realdata, 10)
    w = ParquetWriter(settings(tmp_path, rotate_rows=100_000, rotate_seconds=0.2))
    await w.start()
    started = time.monotonic()
    await w.consume(list[AnyRecord](recs))
    await until(lambda: w.stats()["files"] == 1)
    # Sealed for its age (10 rows are far from rotate_rows), and not before it: the buffer opened
    # after `started`. How much later the flusher got to it depends on the machine.
    assert time.monotonic() - started >= 0.2
    assert w.stats()["pending_rows"] == 0
    assert w.stats()["last_write_latency_s"] > 0
    assert pq.read_table(parquet_files(tmp_path)[0]).num_rows == 10
    await w.close()
    assert len(parquet_files(tmp_path)) == 1


@pytest.mark.asyncio
async def test_stale_tmp_removed_at_start_only_for_own_prefix(tmp_path: Path, realdata: Path) -> None:
    d = tmp_path / "venue=binance-usdm/channel=trade/symbol=BTC-USDT-PERP/date=2024-08-08"
    d.mkdir(parents=True)
    mine = d / ".s1-20240808T235959000Z-77-000003.parquet.tmp"
    other = d / ".s2-20240808T235959000Z-78-000001.parquet.tmp"
    mine.write_bytes(b"PAR1 half a file")
    other.write_bytes(b"PAR1 another shard's file in progress")
    w = ParquetWriter(settings(tmp_path), file_prefix="s1")
    await w.start()
    assert not mine.exists()
    assert other.exists()
    await w.consume(list[AnyRecord](trades(realdata, 5)))
    await w.close()
    (written,) = parquet_files(tmp_path)
    assert written.name.startswith("s1-")
    # An unprefixed (single-process) writer owns the whole tree.
    w2 = ParquetWriter(settings(tmp_path))
    await w2.start()
    await w2.close()
    assert tmp_files(tmp_path) == []


def test_unsafe_prefix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsafe"):
        ParquetWriter(settings(tmp_path), file_prefix="../x")


@pytest.mark.asyncio
async def test_disk_errors_keep_rows_retry_then_drop_and_count(
    tmp_path: Path, realdata: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    recs = trades(realdata, 1200)
    real_write = pq.write_table
    attempts: list[Path] = []

    def full_disk(table: pa.Table, where: Path, **kw: Any) -> None:
        attempts.append(Path(where))
        Path(where).write_bytes(b"PAR1 torn")  # a partial temp file, as a real ENOSPC leaves
        raise OSError(errno.ENOSPC, "No space left on device", str(where))

    monkeypatch.setattr(pq, "write_table", full_disk)
    # pyarrow is patched in this process: the thread writer (the writer process's disk errors:
    # tests/test_writerproc.py, the shared retry logic: tests/test_faults_storage.py).
    w = ParquetWriter(
        settings(tmp_path, rotate_rows=100, max_pending_rows=1000, writer="thread"), retry_interval_s=0.05
    )
    await w.start()
    with caplog.at_level(logging.WARNING, logger="ingestd.parquet"):
        await w.consume(list[AnyRecord](recs[:300]))
        await until(lambda: len(attempts) >= 3)  # retried, not given up
        st = w.stats()
        assert st["files"] == 0
        assert st["failing"] is True
        assert st["write_errors"] >= 3
        assert st["pending_rows"] == 300
        assert tmp_files(tmp_path) == []  # the torn temp file was removed
        # Still streaming: accepted up to max_pending_rows, the rest dropped and counted.
        await asyncio.wait_for(w.consume(list[AnyRecord](recs[300:1200])), 1)
        assert w.stats()["pending_rows"] == 1000
        assert w.stats()["dropped_rows"] == 200
        failures = [r for r in caplog.records if "write failed" in r.getMessage()]
        assert len(failures) == 1  # once per episode, however many retries
        assert "errno 28" in failures[0].getMessage()
        assert "date=2024-08-08" in failures[0].getMessage()  # names the path
        monkeypatch.setattr(pq, "write_table", real_write)
        await until(lambda: w.stats()["pending_rows"] == 0)
        assert any("recovered" in r.getMessage() for r in caplog.records)
    st = w.stats()
    assert (st["files"], st["rows"], st["failing"]) == (10, 1000, False)
    await w.close()
    ids = sorted(i for p in parquet_files(tmp_path) for i in pq.read_table(p).column("trade_id").to_pylist())
    assert ids == [r.trade_id for r in recs[:1000] if isinstance(r, Trade)]
    assert tmp_files(tmp_path) == []


@pytest.mark.asyncio
async def test_close_flushes_is_idempotent_and_counts_loss_on_a_dead_disk(
    tmp_path: Path, realdata: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = ParquetWriter(settings(tmp_path))
    await w.start()
    await w.consume(list[AnyRecord](trades(realdata, 50)))
    await w.close()
    await w.close()
    assert w.stats()["rows"] == 50
    assert len(parquet_files(tmp_path)) == 1

    def dead(table: pa.Table, where: Path, **kw: Any) -> None:
        raise OSError(errno.EIO, "Input/output error", str(where))

    monkeypatch.setattr(pq, "write_table", dead)
    w2 = ParquetWriter(settings(tmp_path / "b", writer="thread"))  # pyarrow patched here: the thread writer
    await w2.start()
    await w2.consume(list[AnyRecord](trades(realdata, 30)))
    await w2.close()
    st = w2.stats()
    assert (st["rows"], st["dropped_rows"], st["pending_rows"]) == (0, 30, 0)
    # After close nothing is accepted silently either.
    await w2.consume(list[AnyRecord](trades(realdata, 3)))
    assert w2.stats()["dropped_rows"] == 33


@pytest.mark.asyncio
async def test_unsafe_symbol_is_rejected_not_written(tmp_path: Path, realdata: Path) -> None:
    good = trades(realdata, 2)
    bad = msgspec.structs.replace(good[0], symbol="../../etc")
    w = await write_all(tmp_path, [*good, bad])
    assert w.stats()["rejected_rows"] == 1
    assert w.stats()["rows"] == 2
    assert all(p.is_relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert not (tmp_path.parent / "etc").exists()


class Side(enum.Enum):
    BID = 1
    ASK = 2


class _Probe(Record, frozen=True, kw_only=True, gc=False):
    """A record type registered after start, with every kind of field the schema derives."""

    channel: ClassVar[str] = "test_probe"

    kind: str
    side: Side
    top: Level | None
    levels: list[Level] | None
    ids: list[int]
    extra: dict[str, int]
    blob: bytes


@pytest.mark.asyncio
async def test_a_later_registered_record_type_is_stored(tmp_path: Path) -> None:
    register(_Probe)
    try:
        sch = schema_for(_Probe)
        assert sch.field("side").type == pa.int64()
        assert sch.field("top").type == LEVEL_TYPE
        assert sch.field("top").nullable
        assert sch.field("levels").type == LEVELS_TYPE
        assert sch.field("ids").type == pa.list_(pa.int64())
        assert sch.field("extra").type == pa.string()  # JSON text
        assert not sch.field("kind").nullable
        recs: list[Record] = [
            _Probe(venue=VENUE, symbol="BTC-USDT-PERP", native="BTCUSDT", exchange_ts=None, recv_ts=RECV,
                   kind="a", side=Side.ASK, top=(61800.2, 2.909), levels=[(61800.2, 2.909), (61800.1, 0.696)],
                   ids=[1, 2], extra={"n": 3}, blob=b"\x00\x01"),
            _Probe(venue=VENUE, symbol="BTC-USDT-PERP", native="BTCUSDT", exchange_ts=RECV, recv_ts=RECV,
                   kind="b", side=Side.BID, top=None, levels=None, ids=[], extra={}, blob=b""),
        ]  # fmt: skip
        await write_all(tmp_path, recs)
        (f,) = parquet_files(tmp_path)
        assert "channel=test_probe" in f.as_posix()
        rows = pq.read_table(f).to_pylist()
        assert rows[0]["side"] == 2
        assert rows[1]["side"] == 1
        assert rows[0]["top"] == {"price": 61800.2, "qty": 2.909}
        assert rows[1]["top"] is None
        assert rows[0]["levels"] == [{"price": 61800.2, "qty": 2.909}, {"price": 61800.1, "qty": 0.696}]
        assert rows[1]["levels"] is None
        assert [r["ids"] for r in rows] == [[1, 2], []]
        assert [json.loads(r["extra"]) for r in rows] == [{"n": 3}, {}]
        assert [r["blob"] for r in rows] == [b"\x00\x01", b""]
        assert [r["exchange_ts"] for r in rows] == [None, RECV]
    finally:
        RECORD_TYPES.pop(_Probe.channel, None)


_KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from ingestd.config import StorageSettings
    from ingestd.consumers.parquet import ParquetWriter
    from ingestd.records import Trade

    async def main() -> None:
        w = ParquetWriter(StorageSettings(data_dir=sys.argv[1], rotate_rows=300, rotate_seconds=60))
        await w.start()
        i = 0
        while True:
            batch = [
                Trade(venue="binance-usdm", symbol="BTC-USDT-PERP", native="BTCUSDT",
                      exchange_ts=1723161256322000000 + j, recv_ts=1723161255030000000 + j,
                      trade_id=5266583935 + j, price=61800.3, qty=0.006, is_buyer_maker=False,
                      trade_type="MARKET")
                for j in range(i, i + 100)
            ]
            i += 100
            await w.consume(batch)
            await asyncio.sleep(0)

    asyncio.run(main())
    """
)


@pytest.mark.asyncio
async def test_kill_9_leaves_only_complete_files(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(tmp_path)])
    try:
        await until(lambda: len(parquet_files(tmp_path)) >= 8)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    files = parquet_files(tmp_path)
    for p in files:
        assert pq.read_table(p).num_rows == 300  # every visible file is whole
    # Temp files a crash may leave are hidden from readers (leading dot) and removed at start.
    assert all(t.name.startswith(".") for t in tmp_files(tmp_path))
    w = ParquetWriter(settings(tmp_path))
    await w.start()
    await w.close()
    assert tmp_files(tmp_path) == []
    con = duckdb.connect()
    row = con.execute(
        f"select count(*) from read_parquet('{tmp_path}/**/*.parquet', hive_partitioning=true)"
    ).fetchone()
    con.close()
    assert row is not None
    assert row[0] == 300 * len(files)


@pytest.mark.asyncio
async def test_writes_run_off_the_event_loop(
    tmp_path: Path, realdata: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a large depth file is built and compressed, the loop keeps ticking: the write runs
    in a worker thread and hands the GIL back (pyarrow releases it while it encodes and
    compresses). How often it does is a speed property, measured by the bench, not here."""
    many = [r for r in _stream_records(realdata, b"@depth@0ms") if utc_date(r) == "2024-08-08"]
    assert len(many) > 6000
    assert all(isinstance(r, DepthDiff) for r in many)
    many *= 4  # ~26 k rows of ~66 levels: a write of a few hundred ms
    w = ParquetWriter(settings(tmp_path, rotate_rows=len(many) + 1))
    writing = threading.Event()
    writers: list[int] = []
    original = w._write_chunk

    def spy(chunk: Any) -> Any:
        writers.append(threading.get_ident())
        writing.set()
        try:
            return original(chunk)
        finally:
            writing.clear()

    monkeypatch.setattr(w, "_write_chunk", spy)
    await w.start()
    await w.consume(list[AnyRecord](many))
    ticks_while_writing = 0
    closing = asyncio.create_task(w.close())
    while not closing.done():
        await asyncio.sleep(0.005)
        ticks_while_writing += writing.is_set()
    await closing
    assert w.stats()["rows"] == len(many)
    assert writers  # the one file was written ...
    assert threading.main_thread().ident not in writers  # ... by a worker thread
    assert ticks_while_writing >= 1  # and the loop ran while it did


@pytest.mark.asyncio
async def test_a_dead_flusher_is_restarted_at_once_and_loses_nothing(
    tmp_path: Path, realdata: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug that kills the flusher task is noticed when it happens (logged, restarted), not at
    shutdown: age-rotated files keep appearing and every row is written once."""
    recs = trades(realdata, 20)
    w = ParquetWriter(settings(tmp_path, rotate_rows=100_000, rotate_seconds=0.2))
    real = w._seal_aged
    calls = 0

    def failing_once(now: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("flusher bug")
        real(now)

    monkeypatch.setattr(w, "_seal_aged", failing_once)
    await w.start()
    await w.consume(list[AnyRecord](recs[:10]))
    await until(lambda: w.stats()["flusher_restarts"] == 1)
    await until(lambda: w.stats()["files"] == 1)  # written by the new flusher, before close
    await w.consume(list[AnyRecord](recs[10:]))
    await w.close()
    assert "parquet flusher died" in caplog.text
    got = pq.read_table(parquet_files(tmp_path)).column("trade_id").to_pylist()
    assert sorted(got) == sorted(r.trade_id for r in recs if isinstance(r, Trade))
    assert w.stats()["dropped_rows"] == 0
