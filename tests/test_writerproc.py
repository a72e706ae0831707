"""The Parquet writer process (``storage.writer: process``): the same files as the thread
writer, and a writer child that dies (kill -9) loses nothing, writes nothing twice, and is
counted; a chunk that kills every child is dropped and counted exactly; real disk errors come
back through the pipe as the thread writer sees them."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from ingestd.app import Daemon
from ingestd.config import StorageSettings
from ingestd.consumers import writerproc
from ingestd.consumers.columns import Columns, plan_for
from ingestd.consumers.parquet import ParquetWriter
from ingestd.records import AnyRecord, Record, Trade
from ingestd.sim import SimVenue
from tests.faults_util import (
    CF_FUTURES,
    CaptureTruth,
    admitted,
    assert_storage_is_capture,
    fault_settings,
    real_capture,
    running,
    until,
)
from tests.ops import wait_for
from tests.test_parquet import _stream_records, parquet_files, tmp_files, trades, utc_date


def settings(root: Path, **kw: Any) -> StorageSettings:
    return StorageSettings(data_dir=root, **{"writer": "process", **kw})


async def write_all(root: Path, recs: list[Record], writer: str, **kw: Any) -> ParquetWriter:
    w = ParquetWriter(settings(root, writer=writer, **kw))
    await w.start()
    for i in range(0, len(recs), 256):
        await w.consume(list[AnyRecord](recs[i : i + 256]))
    await w.close()
    return w


def tree(root: Path) -> dict[str, pq.ParquetFile]:
    """Files by directory (relative) and order of their sequence number."""
    out: dict[str, pq.ParquetFile] = {}
    for p in parquet_files(root):
        seq = p.name.rsplit("-", 1)[1]
        out[f"{p.parent.relative_to(root)}/{seq}"] = pq.ParquetFile(p)
    return out


def trade_ids(root: Path) -> list[int]:
    return sorted(i for p in parquet_files(root) for i in pq.read_table(p).column("trade_id").to_pylist())


def want_ids(recs: list[Record]) -> list[int]:
    return sorted(r.trade_id for r in recs if isinstance(r, Trade))


def child_pid(w: ParquetWriter) -> int:
    proc = w._process
    assert proc is not None
    pid = proc.pid
    assert pid is not None
    return pid


@pytest.mark.asyncio
async def test_the_process_writes_the_files_the_thread_writes(tmp_path: Path, realdata: Path) -> None:
    """Depth diffs (levels), trades: same directories, same rotation, same schema (metadata
    included), same encodings and compression per column, equal rows field by field."""
    depth = [r for r in _stream_records(realdata, b"@depth@0ms") if utc_date(r) == "2024-08-08"][:3000]
    recs: list[Record] = [*depth, *trades(realdata, 1500)]
    a = await write_all(tmp_path / "thread", recs, "thread", rotate_rows=700)
    b = await write_all(tmp_path / "process", recs, "process", rotate_rows=700)
    ta, tb = tree(tmp_path / "thread"), tree(tmp_path / "process")
    assert len(ta) >= 6
    assert sorted(ta) == sorted(tb)
    for key, fa in ta.items():
        fb = tb[key]
        assert fa.schema_arrow.equals(fb.schema_arrow, check_metadata=True), key
        ma, mb = fa.metadata.row_group(0), fb.metadata.row_group(0)
        for i in range(ma.num_columns):
            ca, cb = ma.column(i), mb.column(i)
            assert (ca.path_in_schema, ca.compression, ca.encodings) == (
                cb.path_in_schema,
                cb.compression,
                cb.encodings,
            )
        assert fa.read().to_pylist() == fb.read().to_pylist(), key
    sa, sb = a.stats(), b.stats()
    for k in ("files", "rows", "per_channel", "dropped_rows", "write_errors", "pending_rows"):
        assert sa[k] == sb[k], k
    assert (sa["writer"], sb["writer"]) == ("thread", "process")
    assert sb["writer_process_restarts"] == 0
    assert tmp_files(tmp_path) == []


@pytest.mark.asyncio
async def test_a_child_killed_while_idle_is_noticed_counted_and_replaced(
    tmp_path: Path, realdata: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recs = trades(realdata, 400)
    w = ParquetWriter(settings(tmp_path, rotate_rows=100, rotate_seconds=0.2))
    await w.start()
    with caplog.at_level(logging.ERROR, logger="ingestd.parquet"):
        await w.consume(list[AnyRecord](recs[:200]))
        await wait_for(lambda: w.stats()["rows"] == 200, what="the first files")
        first = child_pid(w)
        os.kill(first, signal.SIGKILL)
        # Seen at the flusher's next tick, before anything else is written.
        await wait_for(lambda: w.stats()["writer_process_restarts"] == 1, what="the restart")
        await w.consume(list[AnyRecord](recs[200:]))
        await w.close()
    assert f"writer process {first} exited (code -9) while idle" in caplog.text
    assert trade_ids(tmp_path) == want_ids(recs)
    st = w.stats()
    assert (st["rows"], st["files"], st["dropped_rows"], st["writer_process_restarts"]) == (400, 4, 0, 1)


@pytest.mark.asyncio
async def test_a_child_killed_mid_write_loses_nothing(
    tmp_path: Path, realdata: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The child is stopped before a request and killed while the parent waits for the answer:
    the chunk, still in the parent's backlog, goes to a new child; written once."""
    recs = trades(realdata, 300)
    w = ParquetWriter(settings(tmp_path, rotate_rows=100))
    await w.start()
    sent = threading.Event()
    real_send = writerproc.send
    state = {"stopped": False}

    def send(f: Any, obj: Any) -> None:
        if not state["stopped"]:
            state["stopped"] = True
            os.kill(child_pid(w), signal.SIGSTOP)  # cannot read, cannot write: mid-request
            real_send(f, obj)
            sent.set()
            return
        real_send(f, obj)

    monkeypatch.setattr(writerproc, "send", send)
    await w.consume(list[AnyRecord](recs[:100]))  # seals one file
    await wait_for(sent.is_set, what="the request to the stopped child")
    victim = child_pid(w)
    os.kill(victim, signal.SIGKILL)
    await wait_for(lambda: w.stats()["rows"] == 100, what="the file, by the next child")
    await w.consume(list[AnyRecord](recs[100:]))
    await w.close()
    assert f"writer process {victim} exited (code -9) while writing" in caplog.text
    assert trade_ids(tmp_path) == want_ids(recs)
    st = w.stats()
    assert (st["files"], st["rows"], st["dropped_rows"], st["writer_process_restarts"]) == (3, 300, 0, 1)
    assert tmp_files(tmp_path) == []


@pytest.mark.asyncio
async def test_a_child_dying_after_the_rename_is_not_written_twice(
    tmp_path: Path, realdata: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer is lost after the file was renamed into place: the file counts as written
    (it is complete: the rename is atomic), it is not sent again."""
    recs = trades(realdata, 200)
    w = ParquetWriter(settings(tmp_path, rotate_rows=100))
    await w.start()
    real_recv = writerproc.recv
    state = {"lost": 0}

    def recv(f: Any) -> Any:
        reply = real_recv(f)
        if not state["lost"]:
            state["lost"] += 1
            os.kill(child_pid(w), signal.SIGKILL)
            raise EOFError("the answer never came")
        return reply

    monkeypatch.setattr(writerproc, "recv", recv)
    await w.consume(list[AnyRecord](recs))
    await w.close()
    assert state["lost"] == 1
    assert trade_ids(tmp_path) == want_ids(recs)  # each once
    st = w.stats()
    assert (st["files"], st["rows"], st["dropped_rows"], st["writer_process_restarts"]) == (2, 200, 0, 1)


@pytest.mark.asyncio
async def test_a_chunk_that_kills_every_child_is_dropped_and_counted_exactly(
    tmp_path: Path, realdata: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    recs = trades(realdata, 300)
    w = ParquetWriter(settings(tmp_path, rotate_rows=100))
    await w.start()
    real_send = writerproc.send
    poison = {"n": 0}

    def send(f: Any, obj: Any) -> None:
        if poison["n"] < writerproc.MAX_ATTEMPTS:  # every attempt at the first chunk
            poison["n"] += 1
            os.kill(child_pid(w), signal.SIGKILL)  # dies before it can read the request
        real_send(f, obj)

    monkeypatch.setattr(writerproc, "send", send)
    await w.consume(list[AnyRecord](recs[:100]))
    await wait_for(lambda: w.stats()["dropped_rows"] == 100, what="the poisoned chunk dropped")
    await w.consume(list[AnyRecord](recs[100:]))
    await w.close()
    st = w.stats()
    assert poison["n"] == writerproc.MAX_ATTEMPTS
    assert (st["files"], st["rows"], st["dropped_rows"]) == (2, 200, 100)
    assert st["writer_process_restarts"] == writerproc.MAX_ATTEMPTS
    assert trade_ids(tmp_path) == want_ids(recs[100:])
    assert "100 rows dropped" in caplog.text


@pytest.mark.asyncio
async def test_a_real_disk_error_in_the_child_is_kept_retried_and_recovers(
    tmp_path: Path, realdata: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file where the venue directory should be: every write fails in the child with the
    OSError the parent logs and retries as with the thread writer; removed, the rows are written."""
    recs = trades(realdata, 300)
    blocker = tmp_path / f"venue={recs[0].venue}"
    blocker.write_text("not a directory")
    w = ParquetWriter(settings(tmp_path, rotate_rows=100), retry_interval_s=0.05)
    await w.start()
    with caplog.at_level(logging.WARNING, logger="ingestd.parquet"):
        await w.consume(list[AnyRecord](recs))
        await wait_for(lambda: w.stats()["write_errors"] >= 3, what="retries")
        st = w.stats()
        assert (st["failing"], st["files"], st["pending_rows"]) == (True, 0, 300)
        failures = [r.getMessage() for r in caplog.records if "write failed" in r.getMessage()]
        assert len(failures) == 1
        assert "errno 20" in failures[0]  # ENOTDIR, from the child's mkdir
        blocker.unlink()
        await wait_for(lambda: w.stats()["pending_rows"] == 0, what="recovery")
    await w.close()
    assert trade_ids(tmp_path) == want_ids(recs)
    st = w.stats()
    assert (st["files"], st["rows"], st["dropped_rows"], st["failing"]) == (3, 300, 0, False)
    assert st["writer_process_restarts"] == 0
    assert "recovered" in caplog.text


@pytest.mark.asyncio
async def test_the_child_ignores_a_terminal_sigterm_and_exits_at_close(
    tmp_path: Path, realdata: Path
) -> None:
    """SIGTERM/SIGINT to the whole process group (systemd stop, Ctrl-C) must not take the
    writer away from the parent's shutdown drain; close ends it."""
    recs = trades(realdata, 200)
    w = ParquetWriter(settings(tmp_path, rotate_rows=100))
    await w.start()
    pid = child_pid(w)
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGINT)
    await w.consume(list[AnyRecord](recs))
    await w.close()
    await w.close()
    assert trade_ids(tmp_path) == want_ids(recs)
    assert w.stats()["writer_process_restarts"] == 0
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped by close


class _Trickle:
    """A pipe end that moves at most ``k`` bytes per call (as a write cut short by a signal)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.data = bytearray()
        self.pos = 0

    def write(self, b: Any) -> int:
        chunk = bytes(memoryview(b)[: self.k])
        self.data += chunk
        return len(chunk)

    def readinto(self, b: Any) -> int:
        view = memoryview(b)
        n = min(len(view), self.k, len(self.data) - self.pos)
        view[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def test_frames_survive_short_writes_and_reads(realdata: Path) -> None:
    recs = trades(realdata, 500)
    cols = Columns(plan_for(Trade))
    for r in recs:
        cols.append(r)
    parts = cols.finish()
    pipe = _Trickle(997)
    writerproc.send(pipe, {"name": "x", "parts": writerproc._out_of_band(parts)})  # type: ignore[arg-type]
    writerproc.send(pipe, ("ok", "/y", 5))  # type: ignore[arg-type]
    got = writerproc.recv(pipe)  # type: ignore[arg-type]
    assert got["name"] == "x"
    assert len(got["parts"]) == len(parts)
    for g, w in zip(got["parts"], parts, strict=True):
        assert [bytes(v) if isinstance(v, memoryview) else v for v in g] == list(w)
    assert writerproc.recv(pipe) == ("ok", "/y", 5)  # type: ignore[arg-type]
    with pytest.raises(EOFError):
        writerproc.recv(pipe)  # type: ignore[arg-type]


def _writer_children() -> list[int]:
    me = str(os.getpid())
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if ppid == me and b"ingestd.consumers.writerproc" in cmd:
            out.append(int(entry.name))
    return out


@pytest.fixture(scope="module")
def truth() -> CaptureTruth:
    return CaptureTruth.load(real_capture(CF_FUTURES))


@pytest.mark.asyncio
async def test_the_daemon_stores_every_record_once_while_its_writer_is_killed(
    truth: CaptureTruth, tmp_path: Path
) -> None:
    """The real capture through the sim into a daemon with ``storage.writer: process``; its
    writer child is killed once files are being written and again after the last record was
    admitted: storage still equals the capture, every payload once, field by field."""
    data = tmp_path / "data"
    async with SimVenue([CF_FUTURES], speed=0, resume="continue") as sim:
        daemon = Daemon(
            fault_settings(sim, data, storage={"rotate_rows": 50, "rotate_seconds": 0.5, "writer": "process"})
        )
        async with running(daemon):
            await until(lambda: bool(_writer_children()), what="a writer process")
            await until(lambda: parquet_stats(daemon)["files"] >= 3, what="files written")
            (first,) = _writer_children()
            os.kill(first, signal.SIGKILL)
            await until(lambda: admitted(daemon) >= truth.count(), what="every frame")
            await until(lambda: parquet_stats(daemon)["writer_process_restarts"] == 1, what="restart 1")
            await until(lambda: [p for p in _writer_children() if p != first] != [], what="a new child")
            (second,) = _writer_children()
            os.kill(second, signal.SIGKILL)
            await until(lambda: parquet_stats(daemon)["writer_process_restarts"] == 2, what="restart 2")
        st = parquet_stats(daemon)
    assert_storage_is_capture(data, truth)
    assert (st["dropped_rows"], st["write_errors"], st["writer_process_restarts"]) == (0, 0, 2)
    assert _writer_children() == []  # closed with the daemon


def parquet_stats(daemon: Daemon) -> dict[str, Any]:
    (found,) = [v for k, v in daemon.bus.stats()["consumers"].items() if k.startswith("parquet")]
    return found
