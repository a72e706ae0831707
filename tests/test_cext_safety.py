"""Memory safety of the compiled speed-ups (ingestd/book/_cbook.c, ingestd/consumers/_ccolumns.c).

Input the parser never builds, but that the C code must survive: numbers whose ``__float__`` runs
Python code that mutates (or empties) the very list the C code is reading, calls back into the
same object, or allocations that fail half-way. Each case runs in a child interpreter under
``PYTHONMALLOC=debug`` (freed memory is overwritten, so a use-after-free reads garbage and
crashes instead of passing by luck); a child killed by a signal fails the test, and the child's
printed result is compared field by field with what the pure-Python implementation gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ingestd import speedups

ROOT = Path(__file__).resolve().parents[1]

needs_cbook = pytest.mark.skipif(
    speedups.load("ingestd.book._cbook") is None, reason="compiled order book not built (or disabled)"
)
needs_ccolumns = pytest.mark.skipif(
    speedups.load("ingestd.consumers._ccolumns") is None,
    reason="compiled column builder not built (or disabled)",
)


def run_child(body: str) -> Any:
    """Run ``body`` in a fresh interpreter; it prints one JSON value as its last line."""
    env = {k: v for k, v in os.environ.items() if k != "INGESTD_NO_EXTENSIONS"}
    env["PYTHONMALLOC"] = "debug"
    env["PYTHONFAULTHANDLER"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert proc.returncode == 0, (
        f"child exited with {proc.returncode} (negative: killed by that signal)\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- order book ---------------------------------------------------------------------------------

_BOOK_PRELUDE = """
import json
from ingestd.book._cbook import OrderBook

def state(b):
    return {"bids": sorted(b.bids.items()), "asks": sorted(b.asks.items()),
            "levels": [list(map(list, side)) for side in b.levels(100)],
            "best": [b.best_bid(), b.best_ask()], "n": len(b)}
"""


@needs_cbook
@pytest.mark.parametrize("method", ["apply", "load_snapshot"])
def test_book_survives_a_float_that_empties_the_levels_list(method: str) -> None:
    # The list of levels is read by index: emptied under the loop, the old code read item 1 of a
    # list with no items (a freed / NULL array) and crashed.
    got = run_child(
        _BOOK_PRELUDE
        + f"""
levels = []
class Price:
    def __float__(self):
        levels.clear()
        return 101.0
levels.extend([(Price(), 1.5), (102.0, 2.5), (103.0, 3.5)])
b = OrderBook()
args = (levels, [(200.0, 1.0)], 7) if {method!r} == "load_snapshot" else (levels, [(200.0, 1.0)])
b.{method}(*args)
print(json.dumps(state(b)))
"""
    )
    # As `for p, q in levels` does: the loop ends where the list now ends.
    assert got == {
        "bids": [[101.0, 1.5]],
        "asks": [[200.0, 1.0]],
        "levels": [[[101.0, 1.5]], [[200.0, 1.0]]],
        "best": [[101.0, 1.5], [200.0, 1.0]],
        "n": 2,
    }


@needs_cbook
@pytest.mark.parametrize("method", ["apply", "load_snapshot"])
def test_book_survives_a_float_that_empties_its_own_level(method: str) -> None:
    # A level given as a list [price, qty] whose price's __float__ clears that list: the old code
    # then read the qty from the emptied list (NULL) and crashed.
    got = run_child(
        _BOOK_PRELUDE
        + f"""
class Price:
    def __float__(self):
        level.clear()
        return 101.0
level = [Price(), int("7" * 3)]
b = OrderBook()
args = ([level, (99.0, 2.0)], [], 7) if {method!r} == "load_snapshot" else ([level, (99.0, 2.0)], [])
b.{method}(*args)
print(json.dumps(state(b)))
"""
    )
    # As `p, q = level` does: both items are taken before either is converted.
    assert got["bids"] == [[99.0, 2.0], [101.0, 777.0]]
    assert got["best"] == [[101.0, 777.0], None]
    assert got["levels"] == [[[101.0, 777.0], [99.0, 2.0]], []]


@needs_cbook
def test_book_survives_a_float_that_rebuilds_the_book_under_apply() -> None:
    # Re-entrancy: a quantity's __float__ reloads the very book apply() is writing.
    got = run_child(
        _BOOK_PRELUDE
        + """
b = OrderBook()
b.load_snapshot([(float(p), 1.0) for p in range(1, 200)], [(300.0, 1.0)], 1)
class Qty:
    def __float__(self):
        b.load_snapshot([(50.5, 9.0)], [(60.5, 9.0)], 2)
        return 4.0
b.apply([(500.0, 1.0), (400.0, Qty()), (450.0, 2.0)], [(60.5, 0.0), (70.0, 1.0)])
print(json.dumps(state(b)))
"""
    )
    assert got == {
        "bids": [[50.5, 9.0], [400.0, 4.0], [450.0, 2.0]],
        "asks": [[70.0, 1.0]],
        "levels": [[[450.0, 2.0], [400.0, 4.0], [50.5, 9.0]], [[70.0, 1.0]]],
        "best": [[450.0, 2.0], [70.0, 1.0]],
        "n": 4,
    }


@needs_cbook
def test_book_stays_consistent_when_an_allocation_fails() -> None:
    # Every allocation of apply() + levels() made to fail in turn: the MemoryError leaves a book
    # whose tops, levels and size agree with its own price -> qty maps (levels before the failure
    # applied, as the pure-Python loop would leave them). This held before the memory-safety fixes
    # too; it guards the rehash and copy-out paths they touched.
    got = run_child(
        _BOOK_PRELUDE
        + """
import _testcapi
snap_b = [(float(p), 1.0) for p in range(1000, 1100)]
snap_a = [(float(p), 1.0) for p in range(1100, 1200)]
diff_b = [(p + 0.5, 2.0) for p in range(900, 1000)] + [(1099.0, 0.0)]
failed = 0
for start in range(1, 2000):
    b = OrderBook()
    b.load_snapshot(snap_b, snap_a, 1)
    _testcapi.set_nomemory(start, 0)
    try:
        b.apply(diff_b, [(1100.0, 0.0)], 2)
        top = b.levels(80)
    except MemoryError:
        top = None
    finally:
        _testcapi.remove_mem_hooks()
    bids, asks = b.bids, b.asks
    assert b.best_bid_price() == max(bids) and b.best_ask_price() == min(asks), start
    assert b.levels(300) == (
        [(p, bids[p]) for p in sorted(bids, reverse=True)[:300]],
        [(p, asks[p]) for p in sorted(asks)[:300]],
    ), start
    assert len(b) == len(bids) + len(asks), start
    if top is not None:
        assert top == b.levels(80)
        break
    failed += 1
print(json.dumps({"failed": failed, "start": start, "state": state(b)}))
"""
    )
    assert got["failed"] >= 3
    assert got["failed"] == got["start"] - 1
    assert got["state"]["n"] == 100 + 100 - 1 + 100 - 1
    assert got["state"]["best"] == [[1098.0, 1.0], [1101.0, 1.0]]


# -- column builder -----------------------------------------------------------------------------

_COLUMNS_PRELUDE = """
import json
import msgspec
from ingestd.consumers._ccolumns import Columns
from ingestd.consumers.columns import PyColumns, plan_for, to_table
from ingestd.records import DepthDiff, RECORD_TYPES
from tests.test_columns import generated

def table(impl_parts, record_type=DepthDiff):
    return to_table(record_type, impl_parts).to_pylist()

def both(records, record_type=DepthDiff):
    out = []
    for impl in (Columns, PyColumns):
        c = impl(plan_for(record_type))
        for r in records():
            c.append(r)
        out.append(table(c.finish(), record_type))
    return out

template = generated(DepthDiff, 1, seed=3)[0]
"""


@needs_ccolumns
def test_columns_survive_a_float_that_empties_the_levels_list() -> None:
    got = run_child(
        _COLUMNS_PRELUDE
        + """
def records():
    bids = []
    class Price:
        def __float__(self):
            bids.clear()
            return 101.0
    bids.extend([(Price(), 1.5), (102.0, 2.5), (103.0, 3.5)])
    return [msgspec.structs.replace(template, bids=bids, asks=[(200.0, 1.0)])]
c, py = both(records)
print(json.dumps({"c": c, "py": py}))
"""
    )
    assert got["c"] == got["py"]
    assert [r["bids"] for r in got["c"]] == [[{"price": 101.0, "qty": 1.5}]]


@needs_ccolumns
def test_columns_survive_a_float_that_empties_its_own_level() -> None:
    # The qty is a big int made at run time: freed with the emptied level, the old code converted
    # freed memory (garbage under PYTHONMALLOC=debug) and crashed.
    got = run_child(
        _COLUMNS_PRELUDE
        + """
def records():
    class Price:
        def __float__(self):
            level.clear()
            return 101.0
    level = [Price(), int("9" * 40)]
    return [msgspec.structs.replace(template, bids=[level, (99.0, 2.0)], asks=[])]
c, py = both(records)
print(json.dumps({"c": c, "py": py}))
"""
    )
    assert got["c"] == got["py"]
    assert [r["bids"] for r in got["c"]] == [
        [{"price": 101.0, "qty": float("9" * 40)}, {"price": 99.0, "qty": 2.0}]
    ]


@needs_ccolumns
@pytest.mark.parametrize("reentry", ["finish", "append"])
def test_columns_refuse_a_reentrant_call_and_keep_their_rows(reentry: str) -> None:
    # A price's __float__ calls finish() (or append()) on the builder that is appending: the old
    # code wrote into buffers finish() had freed, and counted a row whose columns were gone.
    got = run_child(
        _COLUMNS_PRELUDE
        + f"""
good = generated(DepthDiff, 3, seed=5)
c = Columns(plan_for(DepthDiff))
c.append(good[0])
c.append(good[1])
errors = []
class Price:
    def __float__(self):
        try:
            c.{reentry}(*([] if {reentry!r} == "finish" else [good[2]]))
        except RuntimeError as exc:
            errors.append(str(exc))
        return 5.0
c.append(msgspec.structs.replace(template, bids=[(Price(), 1.0)], asks=[]))
c.append(good[2])
py = PyColumns(plan_for(DepthDiff))
for r in (good[0], good[1], msgspec.structs.replace(template, bids=[(5.0, 1.0)], asks=[]), good[2]):
    py.append(r)
print(json.dumps({{"errors": errors, "rows": c.rows, "c": table(c.finish()), "py": table(py.finish())}}))
"""
    )
    assert len(got["errors"]) == 1, got["errors"]
    assert "re-entrant" in got["errors"][0]
    assert got["rows"] == 4
    assert got["c"] == got["py"]


@needs_ccolumns
@pytest.mark.parametrize("channel", ["depth_diff", "agg_trade"])
def test_a_finish_that_runs_out_of_memory_loses_no_row(channel: str) -> None:
    # Every allocation of finish() made to fail in turn (CPython's _testcapi.set_nomemory): a
    # finish that raises MemoryError must leave every row in the builder, so that the next finish
    # gives them all. The old code reset the columns it had already copied and lost their rows.
    got = run_child(
        _COLUMNS_PRELUDE
        + f"""
import _testcapi
record_type = RECORD_TYPES[{channel!r}]
records = generated(record_type, 40, seed=11)
py = PyColumns(plan_for(record_type))
for r in records:
    py.append(r)
want = table(py.finish(), record_type)
failed = 0
for start in range(1, 400):
    c = Columns(plan_for(record_type))
    for r in records:
        c.append(r)
    _testcapi.set_nomemory(start, 0)
    try:
        parts = c.finish()
    except MemoryError:
        parts = None
    finally:
        _testcapi.remove_mem_hooks()
    if parts is None:
        failed += 1
        assert c.rows == len(records), (start, c.rows)
        parts = c.finish()
    assert c.rows == 0
    assert table(parts, record_type) == want, start
    c.append(records[0])
    assert table(c.finish(), record_type) == want[:1], start
    if failed < start:
        break
print(json.dumps({{"failed": failed, "start": start}}))
"""
    )
    # finish() was made to fail at each of its allocations before one run got through.
    assert got["failed"] >= 3
    assert got["failed"] == got["start"] - 1
