"""The JSON dump: normalized NDJSON round trip, exact raw lines, append on restart, disk errors.

Records and frames come from real recorded Binance traffic (see ``tests/test_parquet.py``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from ingestd.config import JsonDumpSettings
from ingestd.consumers.jsonl import JsonDump
from ingestd.errors import ConfigError
from ingestd.records import RECORD_TYPES, AnyRecord, DepthDiff, RawFrame, Record
from tests.ops import wait_for as until
from tests.test_parquet import VENUE, all_records, hft_lines

WS_SOURCE = "/public/stream"
REST_SOURCE = "/fapi/v1/depth?symbol=BTCUSDT&limit=1000"


def hour_path(root: Path, venue: str, channel: str, recv_ts: int, suffix: str) -> Path:
    t = datetime.fromtimestamp(recv_ts // 1_000_000_000, UTC)
    return root / venue / channel / t.strftime("%Y-%m-%d") / f"{t:%H}{suffix}"


def raw_frames(realdata: Path) -> list[RawFrame]:
    return [
        RawFrame(venue=VENUE, source=REST_SOURCE if f.startswith(b'{"lastUpdateId"') else WS_SOURCE,
                 recv_ts=ts, data=f)
        for ts, f in hft_lines(realdata)
    ]  # fmt: skip


async def dump(settings: JsonDumpSettings, batches: list[list[AnyRecord]], **kw: float) -> JsonDump:
    d = JsonDump(settings, **kw)  # type: ignore[arg-type]
    await d.start()
    for b in batches:
        await d.consume(b)
    await d.close()
    return d


def chunks(items: list[AnyRecord], n: int = 300) -> list[list[AnyRecord]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


@pytest.mark.asyncio
async def test_normalized_records_round_trip_per_channel_and_hour(tmp_path: Path, realdata: Path) -> None:
    recs = all_records(realdata)
    # Two records an hour later land in the next hour's file.
    later = [msgspec.structs.replace(r, recv_ts=r.recv_ts + 3_600_000_000_000) for r in recs[:2]]
    everything: list[Record] = recs + later
    d = await dump(JsonDumpSettings(dir=tmp_path), chunks(list[AnyRecord](everything)))
    st = d.stats()
    assert (st["lines"], st["write_errors"], st["dropped_lines"], st["pending_bytes"]) == (
        len(everything),
        0,
        0,
        0,
    )
    assert st["bytes"] == sum(p.stat().st_size for p in tmp_path.rglob("*.ndjson"))

    expected: dict[Path, list[Record]] = {}
    for r in everything:
        expected.setdefault(hour_path(tmp_path, r.venue, r.channel, r.recv_ts, ".ndjson"), []).append(r)
    assert set(tmp_path.rglob("*.ndjson")) == set(expected)
    assert st["files_created"] == len(expected)
    for path, want in expected.items():
        lines = path.read_bytes().splitlines()
        got = []
        for line in lines:
            obj = json.loads(line)
            assert next(iter(obj)) == "channel"
            got.append(msgspec.json.decode(line, type=RECORD_TYPES[obj["channel"]]))
        assert got == want  # field by field, in arrival order

    # Levels are [[price, qty], ...], equal to float() of the exchange's strings.
    ts, frame = next((ts, f) for ts, f in hft_lines(realdata) if b"@depth@0ms" in f)
    payload = json.loads(frame)["data"]
    first = json.loads(hour_path(tmp_path, VENUE, "depth_diff", ts, ".ndjson").read_bytes().splitlines()[0])
    assert first["bids"] == [[float(p), float(q)] for p, q in payload["b"]]
    assert first["asks"] == [[float(p), float(q)] for p, q in payload["a"]]
    assert (first["first_update_id"], first["final_update_id"], first["prev_final_update_id"]) == (
        payload["U"], payload["u"], payload["pu"],
    )  # fmt: skip
    assert first["exchange_ts"] == payload["E"] * 1_000_000
    assert first["recv_ts"] == ts


@pytest.mark.asyncio
async def test_raw_lines_are_exact_and_bad_frames_rejected(tmp_path: Path, realdata: Path) -> None:
    frames = raw_frames(realdata)
    d = JsonDump(JsonDumpSettings(dir=tmp_path, raw=True))
    assert d.channels == frozenset({"raw"})
    await d.start()
    pretty = json.dumps(json.loads(frames[0].data), indent=1).encode()  # a frame with raw newlines
    bad: list[AnyRecord] = [
        RawFrame(venue=VENUE, source=WS_SOURCE, recv_ts=frames[0].recv_ts, data=pretty),
        RawFrame(
            venue=VENUE, source="/public/stream with space", recv_ts=frames[0].recv_ts, data=frames[0].data
        ),
        RawFrame(venue=VENUE, source=WS_SOURCE, recv_ts=frames[0].recv_ts, data=b'{"a":1}\r'),
    ]
    batches = chunks(list[AnyRecord](frames))
    batches.insert(1, bad)
    for b in batches:
        await d.consume(b)
    await d.close()
    st = d.stats()
    assert st["rejected_frames"] == 3
    assert st["lines"] == len(frames)

    (path,) = tmp_path.rglob("*.raw")
    assert path == hour_path(tmp_path, VENUE, "raw", frames[0].recv_ts, ".raw")
    want = b"".join(f"{f.recv_ts} {f.source} ".encode() + f.data + b"\n" for f in frames)
    assert path.read_bytes() == want
    # What a replayer does: split on \n, then on the first two spaces.
    for line, f in zip(path.read_bytes().split(b"\n")[:-1], frames, strict=True):
        ts, src, data = line.split(b" ", 2)
        assert (int(ts), src.decode(), data) == (f.recv_ts, f.source, f.data)


@pytest.mark.asyncio
async def test_a_restart_appends(tmp_path: Path, realdata: Path) -> None:
    frames = raw_frames(realdata)[:200]
    s = JsonDumpSettings(dir=tmp_path, raw=True)
    await dump(s, [list[AnyRecord](frames[:120])])
    await dump(s, [list[AnyRecord](frames[120:])])
    (path,) = tmp_path.rglob("*.raw")
    assert path.read_bytes() == b"".join(f"{f.recv_ts} {f.source} ".encode() + f.data + b"\n" for f in frames)


@pytest.mark.asyncio
async def test_lines_reach_disk_without_close(tmp_path: Path, realdata: Path) -> None:
    recs = all_records(realdata)[:50]
    d = JsonDump(JsonDumpSettings(dir=tmp_path))
    await d.start()
    await d.consume(list[AnyRecord](recs))
    await until(lambda: d.stats()["lines"] == 50)  # the periodic flush, no close needed
    assert sum(len(p.read_bytes().splitlines()) for p in tmp_path.rglob("*.ndjson")) == 50
    await d.close()
    await d.close()  # idempotent
    assert d.stats()["lines"] == 50
    assert d.stats()["open_files"] == 0


def test_dir_is_required() -> None:
    with pytest.raises(ConfigError, match=r"json_dump\.dir"):
        JsonDump(JsonDumpSettings())


def _under(fd: int, root: Path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith(str(root))
    except OSError:
        return False


@pytest.mark.asyncio
async def test_failed_write_is_rolled_back_and_retried_without_duplicates(
    tmp_path: Path, realdata: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recs = [r for r in all_records(realdata) if isinstance(r, DepthDiff)][:40]
    real_write = os.write
    failures = {"left": 2}

    def torn_write(fd: int, data: bytes | memoryview) -> int:
        if _under(fd, tmp_path) and failures["left"]:
            failures["left"] -= 1
            real_write(fd, bytes(data)[: len(data) // 2])  # half a line reaches the disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", torn_write)
    d = JsonDump(JsonDumpSettings(dir=tmp_path), flush_interval_s=0.05)
    await d.start()
    await d.consume(list[AnyRecord](recs))
    await until(lambda: d.stats()["write_errors"] >= 1)
    (path,) = tmp_path.rglob("*.ndjson")
    assert d.stats()["pending_bytes"] > 0
    await until(lambda: d.stats()["lines"] == 40)
    assert d.stats()["write_errors"] == 2
    assert not d.stats()["failing"]
    await d.close()
    lines = path.read_bytes().splitlines()
    assert [msgspec.json.decode(x, type=DepthDiff) for x in lines] == recs  # whole, once, in order


@pytest.mark.asyncio
async def test_backlog_bound_drops_and_counts_and_close_counts_loss(
    tmp_path: Path, realdata: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = raw_frames(realdata)[:400]
    real_write = os.write

    def dead_disk(fd: int, data: bytes | memoryview) -> int:
        if _under(fd, tmp_path):
            raise OSError(errno.EIO, "Input/output error")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", dead_disk)
    d = JsonDump(JsonDumpSettings(dir=tmp_path, raw=True), flush_interval_s=0.02, max_pending_bytes=50_000)
    await d.start()
    await d.consume(list[AnyRecord](frames[:100]))
    await until(lambda: d.stats()["failing"])
    biggest = max(len(f.data) for f in frames) + 100
    for i in range(100, 400, 20):
        await asyncio.wait_for(d.consume(list[AnyRecord](frames[i : i + 20])), 1)  # never blocks
        assert d.stats()["pending_bytes"] < 50_000 + 20 * biggest  # bounded (one batch of slack)
    st = d.stats()
    assert st["dropped_lines"] > 0
    assert st["lines"] == 0
    await d.close()
    assert d.stats()["dropped_lines"] == 400  # what could not be written at shutdown is counted too
    assert all(p.stat().st_size == 0 for p in tmp_path.rglob("*.raw"))
