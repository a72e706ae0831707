"""Column builders (ingestd/consumers/columns.py): compiled and pure Python give the tables that
``schema.build_table`` gives for the same records.

Records: every real frame of ``tests/data/parse_frames.ndjson`` and every real capture shipped with
the repository, through the real parser and book manager (gaps, ``BookTop`` views), plus generated
records of every registered type with each nullable field both set and ``None``.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pyarrow as pa
import pytest

import ingestd.book.records
import ingestd.observe.records
import ingestd.producers.poller_records
from ingestd import speedups
from ingestd.book.manager import BookManager
from ingestd.consumers import columns as cols_mod
from ingestd.consumers.columns import PyColumns, plan_for, to_table
from ingestd.consumers.schema import build_table
from ingestd.records import RECORD_TYPES, AnyRecord, DepthDiff, Record
from ingestd.sim.captures import load_capture
from ingestd.venues.binance.parse import FrameParser, parse_depth_snapshot
from ingestd.venues.binance.symbols import Contract, ContractSet

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
BUNDLED = ROOT / "ingestd" / "sim" / "data" / "usdm_btcusdt_20240808.gz"

ccolumns = speedups.load("ingestd.consumers._ccolumns")
IMPLS: list[Any] = [PyColumns] + ([ccolumns.Columns] if ccolumns is not None else [])
_ = ingestd.book.records, ingestd.observe.records, ingestd.producers.poller_records  # registered types


def contracts(venue: str, natives: set[str]) -> ContractSet:
    suffix = "" if venue == "binance-spot" else "-PERP"
    return ContractSet(venue, tuple(
        Contract(venue=venue, native=n, symbol=f"{n}{suffix}", base=n, quote="", tick_size=0.01,
                 price_precision=2, min_qty=0.001, step_size=0.001)
        for n in sorted(natives)
    ))  # fmt: skip


def real_records() -> dict[type[Record], list[Record]]:
    """Records of the real slices and of the bundled capture (with the book stage's own)."""
    by_type: dict[type[Record], list[Record]] = defaultdict(list)
    for line in (DATA / "parse_frames.ndjson").read_text().splitlines():
        s = json.loads(line)
        if s["market"] == "option":
            continue
        frame = json.loads(s["frame"])
        stream, data = frame["stream"], frame["data"]
        items = data if isinstance(data, list) else [data]
        natives = (
            {stream.partition("@")[0].upper()}
            if not stream.startswith("!")
            else {d["o"]["s"] if d.get("e") == "forceOrder" else d["s"] for d in items}
        )
        venue = "binance-spot" if s["market"] == "spot" else "binance-usdm"
        parser = FrameParser(venue, contracts(venue, natives))
        for r in parser.parse(s["frame"].encode(), s["recv_ts"] or 1)[1]:
            by_type[type(r)].append(r)
    cap = load_capture(BUNDLED)
    cs = contracts("binance-usdm", set(cap.symbols()))
    parser = FrameParser("binance-usdm", cs)
    manager = BookManager("binance-usdm", cs, market="futures", request_snapshot=lambda n, u: None,
                          book_depth=20, book_every=50)  # fmt: skip
    snap = cap.snapshots[0]
    pending = True
    for ts, frame in zip(cap.ts, cap.frames, strict=True):
        batch: list[AnyRecord] = list(parser.parse(frame, ts)[1])
        if pending and ts >= snap.recv_ns:
            pending = False
            c = cs.get(snap.symbol)
            assert c is not None
            batch.insert(0, parse_depth_snapshot("binance-usdm", c, snap.body, snap.recv_ns))
        for r in [*batch, *manager.process(batch)]:
            assert isinstance(r, Record)
            by_type[type(r)].append(r)
    return by_type


def _value(t: mi.Type, rng: random.Random) -> Any:
    if isinstance(t, mi.UnionType):
        rest = [u for u in t.types if not isinstance(u, mi.NoneType)]
        return None if rng.random() < 0.4 else _value(rest[0], rng)
    if isinstance(t, mi.IntType):
        return rng.randint(-(2**62), 2**62)
    if isinstance(t, mi.FloatType):
        return rng.choice([rng.uniform(-1e6, 1e6), 0.0, -0.0, math.inf, 1e-300])
    if isinstance(t, mi.BoolType):
        return rng.random() < 0.5
    if isinstance(t, mi.StrType):
        return rng.choice(["", "BTCUSDT", "ü ✓", "x" * 50])
    if isinstance(t, mi.LiteralType):
        return rng.choice(t.values)
    if isinstance(t, mi.EnumType):
        return rng.choice(list(t.cls))
    if isinstance(t, mi.ListType | mi.VarTupleType):
        return [_value(t.item_type, rng) for _ in range(rng.randint(0, 5))]
    if isinstance(t, mi.TupleType):
        return tuple(_value(i, rng) for i in t.item_types)
    if isinstance(t, mi.BytesType):
        return rng.randbytes(rng.randint(0, 8))
    raise AssertionError(f"no generator for {t!r}")


def generated(record_type: type[Record], n: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    info = mi.type_info(record_type)
    assert isinstance(info, mi.StructType)
    return [record_type(**{f.name: _value(f.type, rng) for f in info.fields}) for _ in range(n)]


def built(impl: Any, record_type: type[Record], records: list[Record]) -> pa.Table:
    c = impl(plan_for(record_type))
    for r in records:
        c.append(r)
    assert c.rows == len(records)
    assert c.nbytes >= 0
    table = to_table(record_type, c.finish())
    assert c.rows == 0
    return table


def test_compiled_builder_is_built_unless_disabled() -> None:
    if speedups.NO_EXTENSIONS:
        assert cols_mod.Columns is PyColumns
    else:
        assert ccolumns is not None, "ingestd.consumers._ccolumns was not built (pip install -e .)"
        assert cols_mod.Columns is ccolumns.Columns


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.__module__)
def test_tables_equal_build_table_on_real_records(impl: Any) -> None:
    by_type = real_records()
    assert {DepthDiff, ingestd.book.records.BookTop} <= set(by_type)
    for record_type, records in by_type.items():
        want = build_table(record_type, records)
        got = built(impl, record_type, records)
        assert got.schema == want.schema
        assert got.equals(want), record_type


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.__module__)
@pytest.mark.parametrize("channel", sorted(RECORD_TYPES))
def test_tables_equal_build_table_on_generated_records(impl: Any, channel: str) -> None:
    record_type = RECORD_TYPES[channel]
    records = generated(record_type, 300, seed=len(channel))
    got = built(impl, record_type, records)
    want = build_table(record_type, records)
    # NaN-free values: equals() is exact, including -0.0 against 0.0 through the raw buffers.
    assert got.equals(want)
    assert got.to_pylist() == want.to_pylist()
    # A builder can be reused after finish().
    again = built(impl, record_type, records[:7])
    assert again.equals(want.slice(0, 7))


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.__module__)
def test_a_bad_record_is_refused_whole(impl: Any) -> None:
    good = generated(RECORD_TYPES["depth_diff"], 3, seed=1)
    c = impl(plan_for(DepthDiff))
    c.append(good[0])
    bad_levels = msgspec.structs.replace(good[1], asks=[(1.0, 2.0), (3.0,)])
    bad_type = msgspec.structs.replace(good[1], final_update_id="nope")
    bad_none = msgspec.structs.replace(good[1], first_update_id=None)
    for bad in (bad_levels, bad_type, bad_none):
        with pytest.raises((TypeError, ValueError)):
            c.append(bad)
        assert c.rows == 1
    c.append(good[2])
    got = to_table(DepthDiff, c.finish())
    assert got.equals(build_table(DepthDiff, [good[0], good[2]]))


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.__module__)
def test_an_empty_builder_gives_an_empty_table(impl: Any) -> None:
    for record_type in RECORD_TYPES.values():
        got = to_table(record_type, impl(plan_for(record_type)).finish())
        assert got.num_rows == 0
        assert got.schema == build_table(record_type, []).schema
