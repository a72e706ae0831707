"""The console reporter: the line format, rates per channel from the bus's record counts, the
stats-callable contract, lifecycle."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from ingestd.bus import RecordCounts
from ingestd.consumers.console import ConsoleReporter
from ingestd.records import AnyRecord, Record
from tests.ops import wait_for
from tests.test_parquet import all_records

LINE = re.compile(
    r"^ingestd: (?P<total>\d+\.\d) rec/s"
    r"(?: \| (?P<chans>(?:[a-z_]+ \d+\.\d ?)+))?"
    r" \| reconnects (?P<rc>\d+)(?: \(\+(?P<rcd>\d+)\))?"
    r" \| drops (?P<dr>\d+)(?: \(\+(?P<drd>\d+)\))?$"
)


class FakeStats:
    def __init__(self) -> None:
        self.reconnects = 0
        self.drops = 0

    def __call__(self) -> dict[str, Any]:
        return {"reconnects": self.reconnects, "drops": self.drops, "other": "ignored"}


def by_channel(recs: list[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for r in recs:
        out.setdefault(r.channel, []).append(r)
    return out


@pytest.mark.asyncio
async def test_line_format_rates_and_health(realdata: Path) -> None:
    chans = by_channel(all_records(realdata))
    out = io.StringIO()
    stats = FakeStats()
    clock = [1000.0]
    counts = RecordCounts()  # the bus's count of what it published
    c = ConsoleReporter(60.0, stats=stats, out=out, counts=counts.per_channel, clock=lambda: clock[0])
    await c.start()
    counts.add(list[AnyRecord](chans["trade"][:40] + chans["depth_diff"][:10]))
    counts.add(list[AnyRecord](chans["book_ticker"][:50]))
    stats.reconnects, stats.drops = 2, 7
    clock[0] += 2.0
    line = c.report()
    assert line == (
        "ingestd: 50.0 rec/s | trade 20.0 book_ticker 25.0 depth_diff 5.0 | reconnects 2 (+2) | drops 7 (+7)"
    )
    # Next interval: trades only; channels seen before stay on the line at 0.0; no change in health.
    counts.add(list[AnyRecord](chans["trade"][40:70]))
    clock[0] += 3.0
    line2 = c.report()
    assert line2 == "ingestd: 10.0 rec/s | trade 10.0 book_ticker 0.0 depth_diff 0.0 | reconnects 2 | drops 7"
    assert out.getvalue() == f"{line}\n{line2}\n"  # exactly one line per report
    m = LINE.match(line2)
    assert m is not None
    await c.close()
    assert c.stats() == {"lines": 2, "records": 130}


@pytest.mark.asyncio
async def test_background_lines_on_stderr_and_close_is_idempotent(
    realdata: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recs = all_records(realdata)[:100]
    counts = RecordCounts()
    c = ConsoleReporter(0.05, stats=FakeStats(), counts=counts.per_channel)
    await c.start()
    for _ in range(3):
        counts.add(list[AnyRecord](recs))
    await wait_for(lambda: c.stats()["lines"] >= 2, what="two report lines")
    await c.close()
    await c.close()
    err = capsys.readouterr().err.splitlines()
    n = c.stats()["lines"]
    assert len(err) == n >= 2  # one line per report, each on its own
    assert all(LINE.match(line) for line in err), err
    # An absence check: a task left running would report within this window (0.05 s cadence).
    await asyncio.sleep(0.2)
    assert c.stats()["lines"] == n  # the task is gone
    assert c.stats()["records"] == 300


@pytest.mark.asyncio
async def test_no_stats_callable_and_a_failing_one(caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    plain = ConsoleReporter(1.0, out=out)
    assert plain.report() == "ingestd: 0.0 rec/s"

    def broken() -> dict[str, Any]:
        raise KeyError("reconnects")

    c = ConsoleReporter(1.0, stats=broken, out=out)
    with caplog.at_level(logging.ERROR, logger="ingestd.console"):
        assert c.report() == "ingestd: 0.0 rec/s"
        assert c.report() == "ingestd: 0.0 rec/s"
    assert len([r for r in caplog.records if "stats callable failed" in r.getMessage()]) == 1
    assert ConsoleReporter(1.0, stats=dict, out=out).report() == "ingestd: 0.0 rec/s | reconnects 0 | drops 0"


def test_default_out_is_stderr_at_write_time(capsys: pytest.CaptureFixture[str]) -> None:
    c = ConsoleReporter(1.0)
    c.report()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("ingestd: 0.0 rec/s")
    assert sys.stderr is not None


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ConsoleReporter(0)
