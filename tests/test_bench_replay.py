"""The replay rows of the bench (bench/replay.py, in ``python -m bench.run``'s table and JSON) on
a small tree the daemon stored from the sim: every case runs, counts what the tree holds, and the
table shows each case with its median, min-max and ratio to the pyarrow read of the same run.
Nothing here depends on how fast anything ran."""

from __future__ import annotations

import argparse

import pyarrow.parquet as pq
import pytest

from bench import replay, report
from ingestd.replay import records
from tests.conftest import BUNDLED_CAPTURE
from tests.replay_data import Recorded, record


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    return record(BUNDLED_CAPTURE, tmp_path_factory.mktemp("bench") / "data", channels="trade,depth_diff")


def test_replay_rows_run_on_a_stored_tree(recorded: Recorded) -> None:
    data = recorded.data
    rows = replay.measure(data, 2)
    assert [r["case"] for r in rows] == list(replay.CASES)
    by_case = {r["case"]: r for r in rows}

    stored = sum(pq.read_metadata(f).num_rows for f in data.rglob("*.parquet"))
    assert by_case["pyarrow: read_table, every file"]["records"] == stored
    assert by_case["pyarrow: read_table + to_pylist"]["records"] == stored
    plain = sum(1 for _ in records(data, books=False))
    with_books = sum(1 for _ in records(data, books=True))
    assert plain > 0
    assert by_case["ingestd.replay.records, no books"]["records"] == plain
    assert by_case["ingestd.replay.records, books"]["records"] == with_books
    for label in (
        "ingestd replay --hook: books + one hook(rec, ctx)",
        "ingestd replay --hook: books + one hook(rec)",
    ):
        assert by_case[label]["records"] == with_books, label

    for r in rows:
        assert len(r["rates"]) == 2
        assert r["min"] <= r["records_per_s"] <= r["max"]
        assert r["min"] == min(r["rates"])
        assert r["max"] == max(r["rates"])
        assert r["x_pyarrow"] == pytest.approx(r["records_per_s"] / rows[0]["records_per_s"], rel=1e-2)
    assert rows[0]["x_pyarrow"] == 1.0


def test_replay_rows_are_in_the_bench_table() -> None:
    rates = {
        "pyarrow: read_table, every file": [400.0, 100.0, 200.0],
        "ingestd.replay.records, books": [50.0, 20.0, 10.0],
    }
    rows = replay.summarize(rates, dict.fromkeys(rates, 1000))
    assert rows == [
        {"case": "pyarrow: read_table, every file", "records": 1000, "records_per_s": 200, "min": 100,
         "max": 400, "rates": [400, 100, 200], "us_per_record": 5000.0, "x_pyarrow": 1.0},
        {"case": "ingestd.replay.records, books", "records": 1000, "records_per_s": 20, "min": 10,
         "max": 50, "rates": [50, 20, 10], "us_per_record": 50000.0, "x_pyarrow": 0.1},
    ]  # fmt: skip
    summary = {
        "machine": {"nproc": 2, "cpu": "x", "python": "3.11", "uvloop": "no", "os": "Linux"},
        "workload": {"frames": 10, "symbols": 1, "bytes_per_frame": 1, "levels_per_diff": 1.0},
        "settings": {"runs": 3},
        "when": "now",
        "contenders": {},
        "replay": {"frames": 300_000, "symbols": 50, "runs": 3, "rows": rows},
    }
    md = report.table(summary).splitlines()
    assert "| pyarrow: read_table, every file | 200 | 100-400 | 5000.00 | 1.000 |" in md
    assert "| ingestd.replay.records, books | 20 | 10-50 | 50000.00 | 0.100 |" in md
    failed = report.table({**summary, "replay": {"frames": 10, "runs": 1, "error": "OSError()"}})
    assert failed.splitlines()[-1] == "failed: OSError()"
    assert "Replay" not in report.table({k: v for k, v in summary.items() if k != "replay"})


def test_bench_run_has_the_replay_options() -> None:
    from bench.run import _parse  # noqa: PLC0415

    args: argparse.Namespace = _parse(["--quick"])
    assert (args.no_replay, args.replay_frames) == (False, 300_000)
    assert _parse(["--no-replay", "--replay-frames", "5000"]).replay_frames == 5000
