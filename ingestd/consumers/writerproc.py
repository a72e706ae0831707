"""Parquet files written by a child process: pyarrow's encoding and zstd off the loop's core.

With ``storage.writer: process`` the :class:`~ingestd.consumers.parquet.ParquetWriter` keeps
everything that decides what is written and when (buffers, rotation, the sealed backlog, disk
error retries, drop accounting, the shutdown drain) and hands each sealed file to one child
process (``python -m ingestd.consumers.writerproc``) instead of building and writing it in a
thread of its own. The thread writer's Arrow conversion and zstd encoding hold or contend for
the core the event loop runs on (the GIL is released while pyarrow compresses, but the CPU is
still shared with the loop's thread); in the child they run on another core.

Channel: the child's stdin and stdout pipes. One request at a time, always answered: a sealed
chunk's column parts (:meth:`~ingestd.consumers.columns.ColumnsLike.finish`: int32 offsets,
float64/int64 values, validity bits, small lists of strings) pickled with protocol 5, every
buffer sent out of band (no copy into the pickle), plus the schema, the encodings, the
compression and the final file name the parent chose. The child builds the table with
``pa.Array.from_buffers`` and writes it exactly as the thread writer does (:func:`write_file`:
temp file, fsync, ``os.replace``, directory fsync) and answers with the path and size, or the
``OSError`` (errno, message, file name) so the parent's disk-error handling is the same, or any
other error as text. The exchange runs in a worker thread of the parent (blocking pipe I/O
releases the GIL), so the loop never copies a chunk.

Crash safety: the chunk stays in the parent's sealed backlog until the child has answered, so a
child that dies (killed, out of memory, a crash in native code) loses nothing queued. The death
is detected (end of file on its stdout, or its exit seen at the flusher's next tick), logged,
counted (``writer_process_restarts``) and the child restarted. The chunk it was writing is
then looked up by its final name: the rename is atomic, so if the file is there the write
completed (counted as written, its directory fsynced), otherwise it is sent again to the new
child under the same name; exactly once either way. A chunk that kills
:data:`MAX_ATTEMPTS` children in a row is dropped and its rows counted as dropped (a chunk the
child cannot survive must not stop every later one).

The child ignores SIGINT, SIGTERM and SIGHUP (a Ctrl-C or a systemd stop reaches the whole
process group: the parent's shutdown drain needs its writer until the last file is written) and
exits at end of file on its stdin: when the parent closes it, or dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Final

log = logging.getLogger("ingestd.parquet")

MAX_ATTEMPTS: Final = 3
"""Children a chunk may see die while it is written before its rows are dropped (and counted)."""
STOP_WAIT_S: Final = 5.0
"""How long :meth:`WriterProcess.close` waits for the child to exit after end of file."""

PIPE_BYTES: Final = 1 << 20
"""Pipe buffer asked for each direction (a 64 KiB pipe makes a 7 MB file ~110 hand-overs)."""
_F_SETPIPE_SZ: Final = getattr(fcntl, "F_SETPIPE_SZ", 1031)

_HEAD: Final = struct.Struct("<QI")
"""Frame header: pickle length, number of out-of-band buffers (then one ``<Q`` length each)."""


class WriterDied(Exception):  # noqa: N818 - a state, not an error of the caller
    """The child process ended before it answered."""


class WriterError(Exception):
    """The child answered with an error that is not an ``OSError`` (it cannot be retried)."""


# -- file writing (shared with the thread writer) ---------------------------------------------


def write_file(
    table: Any, directory: Path, name: str, compression: str, encodings: dict[str, Any]
) -> tuple[Path, int]:
    """Write ``table`` atomically as ``directory/name``: temp file, fsync, rename, dir fsync."""
    import pyarrow.parquet as pq  # noqa: PLC0415 - the parent imports it anyway; the child needs it here

    directory.mkdir(parents=True, exist_ok=True)
    final = directory / name
    tmp = directory / f".{name}.tmp"
    try:
        pq.write_table(table, tmp, compression=compression, **encodings)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    # The file is complete and in place; a failed directory fsync must not cause a rewrite.
    fsync_dir(directory)
    return final, size


def fsync_dir(directory: Path) -> None:
    """fsync a directory (its new entries), ignoring errors."""
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


# -- framing ----------------------------------------------------------------------------------


def _out_of_band(parts: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``parts`` with every buffer wrapped so that pickle sends it out of band (no copy)."""
    return [
        tuple(v if isinstance(v, (int, list, type(None))) else pickle.PickleBuffer(v) for v in p)
        for p in parts
    ]


def send(f: IO[bytes], obj: Any) -> None:
    """Write one frame: header, buffer lengths, pickle, buffers."""
    bufs: list[pickle.PickleBuffer] = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=bufs.append)
    views = [b.raw() for b in bufs]
    lengths = struct.pack(f"<{len(views)}Q", *(v.nbytes for v in views))
    _write_all(f, memoryview(_HEAD.pack(len(head), len(views)) + lengths + head))
    for v in views:
        _write_all(f, v)


def _write_all(f: IO[bytes], view: memoryview) -> None:
    """Write all of ``view``: a raw pipe write may be cut short (a signal landing mid-write)."""
    view = view.cast("B")
    done = 0
    while done < len(view):
        n = f.write(view[done:])
        if n is None:  # a non-blocking pipe that is full; ours block, but never spin silently
            raise BlockingIOError("pipe full")
        done += n


def _read_exact(f: IO[bytes], n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = f.readinto(view[got:])  # type: ignore[attr-defined]
        if not k:
            raise EOFError(f"end of file after {got} of {n} bytes")
        got += k
    return buf


def recv(f: IO[bytes]) -> Any:
    """Read one frame (``EOFError`` at end of file)."""
    hlen, nbufs = _HEAD.unpack(_read_exact(f, _HEAD.size))
    lengths = struct.unpack(f"<{nbufs}Q", _read_exact(f, 8 * nbufs)) if nbufs else ()
    head = _read_exact(f, hlen)
    bufs = [_read_exact(f, n) for n in lengths]
    return pickle.loads(head, buffers=bufs)  # noqa: S301 - our own child/parent, over our own pipe


# -- parent side ------------------------------------------------------------------------------


class WriterProcess:
    """The parent's handle on the writer child: :meth:`write` one file at a time (blocking; the
    Parquet writer calls it from a worker thread), :meth:`check` for a death while idle,
    :meth:`close`. Thread-safe; one request in flight at a time."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0
        """Children that died before close (each logged, each restarted)."""
        self.crash_dropped_chunks = 0

    def start(self) -> None:
        """Start the child (blocking: fork and exec; the child imports pyarrow on its own)."""
        with self._lock:
            if self._proc is None and not self._closed:
                self._spawn()

    def _spawn(self) -> None:
        """Start a child and wait until it is ready (signals ignored, pyarrow imported)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingestd.consumers.writerproc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            process_group=0,  # a Ctrl-C on the terminal is the parent's to handle
        )
        assert proc.stdout is not None
        assert proc.stdin is not None
        for pipe in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):  # fewer, larger pipe transfers (Linux; else 64 KiB)
                fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, PIPE_BYTES)
        try:
            hello = recv(proc.stdout)
        except (OSError, EOFError) as exc:
            self._died(proc, "while starting")  # a death all the same: counted, pipes closed
            raise WriterDied(f"the parquet writer process {proc.pid} exited at start") from exc
        if hello != ("ready", proc.pid):
            self._died(proc, "with a wrong greeting")
            raise WriterError(f"the parquet writer process answered {hello!r} at start")
        self._proc = proc

    def _died(self, proc: subprocess.Popen[bytes], pending: str) -> None:
        """Reap a dead child, log and count it; the next request starts a new one."""
        with contextlib.suppress(OSError):
            proc.kill()
        code = proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._proc = None
        self.restarts += 1
        log.error("parquet writer process %d exited (code %s) %s; restarting it (%d restart(s) so far)",
                  proc.pid, code, pending, self.restarts)  # fmt: skip

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return None if proc is None else proc.pid

    def exited(self) -> bool:
        """The child has exited (a cheap ``waitpid`` poll; never blocks)."""
        proc = self._proc
        return proc is not None and not self._closed and proc.poll() is not None

    def check(self) -> None:
        """Notice a child that died while idle (and restart it); never waits for a write."""
        if not self._lock.acquire(blocking=False):
            return  # a write is in flight: it notices a death itself
        try:
            proc = self._proc
            if proc is not None and proc.poll() is not None and not self._closed:
                self._died(proc, "while idle; nothing was being written")
                self._spawn()
        finally:
            self._lock.release()

    def write(self, request: dict[str, Any], parts: list[tuple[Any, ...]]) -> tuple[Path, int]:
        """Have the child write one file; ``(final path, size)``.

        Raises the child's ``OSError`` (disk errors: the caller retries), :class:`WriterError`
        (cannot be written), or :class:`WriterDied` after :data:`MAX_ATTEMPTS` dead children.
        """
        final = Path(request["directory"]) / request["name"]
        msg = {**request, "parts": _out_of_band(parts)}
        with self._lock:
            if self._closed:
                raise WriterError("the writer process is closed")
            for attempt in range(1, MAX_ATTEMPTS + 1):
                if self._proc is None:
                    try:
                        self._spawn()
                    except WriterDied:
                        continue  # logged and counted by _died
                proc = self._proc
                assert proc is not None
                assert proc.stdin is not None
                assert proc.stdout is not None
                try:
                    send(proc.stdin, msg)
                    reply = recv(proc.stdout)
                except (OSError, EOFError):
                    self._died(proc, f"while writing {final} (attempt {attempt} of {MAX_ATTEMPTS})")
                    if final.exists():
                        # It died after the atomic rename: the file is complete, written once.
                        fsync_dir(final.parent)
                        return final, final.stat().st_size
                    continue
                return _result(reply)
            self.crash_dropped_chunks += 1
            raise WriterDied(f"{MAX_ATTEMPTS} writer processes died writing {final}")

    def close(self) -> None:
        """End of file to the child, wait for it to exit (kill it after :data:`STOP_WAIT_S`).
        Idempotent. Waits for a write in flight first."""
        with self._lock:
            self._closed = True
            proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            log.error("parquet writer process %d did not exit at end of input; killing it", proc.pid)  # noqa: TRY400
            proc.kill()
            proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def kill(self) -> None:
        """Kill the child at once (a shutdown deadline passed); nothing is waited for."""
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.kill()


def _result(reply: tuple[Any, ...]) -> tuple[Path, int]:
    kind = reply[0]
    if kind == "ok":
        return Path(reply[1]), int(reply[2])
    if kind == "oserror":
        _, err, strerror, filename = reply
        raise OSError(err, strerror, filename)
    raise WriterError(reply[1])


# -- child side -------------------------------------------------------------------------------


def _handle(msg: dict[str, Any]) -> tuple[Any, ...]:
    from ingestd.consumers.columns import table_from_parts  # noqa: PLC0415 - child only

    try:
        table = table_from_parts(msg["schema"], msg["parts"])
        final, size = write_file(
            table, Path(msg["directory"]), msg["name"], msg["compression"], msg["encodings"]
        )
    except OSError as exc:
        return ("oserror", exc.errno, exc.strerror or str(exc), exc.filename)
    except Exception as exc:  # noqa: BLE001 - every other error goes back to the parent, which logs it
        return ("error", f"{type(exc).__name__}: {exc}")
    return ("ok", str(final), size)


def main() -> int:
    """The child: answer requests from stdin on stdout until end of file."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    # Replies get a private copy of stdout; fd 1 becomes stderr, so nothing printed by accident
    # can corrupt the channel.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    inp = os.fdopen(0, "rb", buffering=0)
    import pyarrow as pa  # noqa: PLC0415 - loaded before "ready"

    import ingestd.consumers.columns  # noqa: F401, PLC0415

    # pyarrow imports pandas (when installed) the first time pa.array() gets a Python list, to
    # check that the list is not a pandas object: ~30 % of a child's first-file CPU, paid here.
    pa.array(["warm"])
    # What is imported stays; young collections only over a request's few containers.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    send(out, ("ready", os.getpid()))
    while True:
        try:
            msg = recv(inp)
        except EOFError:
            return 0
        started = time.perf_counter()
        reply = _handle(msg)
        del msg
        try:
            send(out, (*reply, time.perf_counter() - started) if reply[0] == "ok" else reply)
        except BrokenPipeError:
            return 0


if __name__ == "__main__":
    sys.exit(main())
