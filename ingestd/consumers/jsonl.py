"""The JSON dump: normalized records as NDJSON, or exact raw frames for replay.

Normalized (``raw=False``), one file per venue, channel and UTC hour of ``recv_ts``::

    <dir>/<venue>/<channel>/<YYYY-MM-DD>/<HH>.ndjson

Each line is one record: ``"channel"`` first, then the record's fields in struct order; depth
levels are ``[[price, qty], ...]``. ``msgspec.json.decode(line, type=RECORD_TYPES[channel])``
gives the record back (the extra ``channel`` key is ignored).

Raw (``raw=True``) takes the ``raw`` channel (:class:`ingestd.records.RawFrame`) instead::

    <dir>/<venue>/raw/<YYYY-MM-DD>/<HH>.raw

with lines exactly ``<recv_ns> <source> <frame bytes>\\n``; the frame bytes are untouched. This
is the format ``ingestd sim`` replays: readers split lines on ``\\n`` only, then on the first two
spaces. A frame holding ``\\n`` or ``\\r`` (Binance sends compact JSON, so never in practice) or a
source with whitespace would corrupt that framing: it is rejected and counted, never written.

Lines are buffered and written by one flusher task in a worker thread, at least every
``flush_interval_s`` and on :meth:`JsonDump.close`. Files are opened in append mode, so a restart
appends. A failed write is rolled back (the file is truncated to its size before the write, so a
retry never duplicates or tears a line) and retried on the next flush; past
``max_pending_bytes`` of backlog new lines are dropped and counted. Only one process may write a
given ``dir``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec

from ingestd.config import JsonDumpSettings
from ingestd.consumers.parquet import SAFE_PART
from ingestd.errors import ConfigError
from ingestd.records import AnyRecord, RawFrame, Record

log = logging.getLogger("ingestd.jsondump")

NS_PER_HOUR: Final = 3_600 * 1_000_000_000
_SOURCE_OK: Final = re.compile(r"^[!-~]+$")
"""A raw line's source: printable ASCII without spaces (a URL path with its query)."""
_WAKE_BYTES: Final = 4 * 1024 * 1024
_IDLE_CLOSE_S: Final = 30.0

_PathKey = tuple[str, str, int]
"""(venue, channel, UTC hour number)."""


class _Files:
    """Append-mode file descriptors, touched only by the (single) flush thread and close()."""

    def __init__(self) -> None:
        self.fds: dict[Path, tuple[int, float]] = {}
        self.created = 0

    def fd(self, path: Path) -> int:
        entry = self.fds.get(path)
        if entry is not None:
            self.fds[path] = (entry[0], time.monotonic())
            return entry[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if os.fstat(fd).st_size == 0:
            self.created += 1
        self.fds[path] = (fd, time.monotonic())
        return fd

    def forget(self, path: Path) -> None:
        entry = self.fds.pop(path, None)
        if entry is not None:
            with contextlib.suppress(OSError):
                os.close(entry[0])

    def close_idle(self, idle_s: float) -> None:
        limit = time.monotonic() - idle_s
        for path in [p for p, (_, used) in self.fds.items() if used <= limit]:
            self.forget(path)

    def close_all(self) -> None:
        for path in list(self.fds):
            self.forget(path)


def _write_all(fd: int, data: bytes) -> None:
    """Append ``data`` whole, or roll the file back to where it was and raise."""
    start = os.fstat(fd).st_size
    view = memoryview(data)
    try:
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise


class JsonDump:
    """Consumer writing NDJSON of normalized records, or raw frames (``settings.raw``)."""

    def __init__(
        self,
        settings: JsonDumpSettings,
        *,
        flush_interval_s: float = 1.0,
        max_pending_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        if settings.dir is None:
            raise ConfigError("json_dump.dir is not set", key="json_dump.dir")
        self.settings = settings
        self.raw = settings.raw
        self.name = "json_dump:raw" if self.raw else "json_dump"
        self.channels: frozenset[str] | None = frozenset({"raw"}) if self.raw else None
        self._root = Path(settings.dir)
        self._interval = flush_interval_s
        self._max_pending = max_pending_bytes
        # A healthy but slow disk makes consume() wait past this backlog instead of dropping.
        self._high_water = max(_WAKE_BYTES, max_pending_bytes // 2)
        self._encoder = msgspec.json.Encoder()
        self._prefixes: dict[type[Record], bytes] = {}
        self._paths: dict[_PathKey, Path] = {}
        self._pending: dict[Path, list[bytes]] = {}
        self._pending_bytes = 0
        self._inflight_bytes = 0  # handed to the flush thread, not yet written
        self._files = _Files()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._failing = False
        self._dropping = False
        self._last_reject_log = -1e9
        self._rejects_unlogged = 0
        # counters (stats)
        self.lines = 0
        self.bytes = 0
        self.write_errors = 0
        self.dropped_lines = 0
        self.rejected_frames = 0
        self.skipped = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the flusher task (directories are created as files appear)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.name}:flusher")

    async def close(self) -> None:
        """Write everything buffered and close the files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        try:
            if self._task is None:
                await self._flush(final=True)
            else:
                self._wake.set()
                await self._task
        finally:
            self._files.close_all()
        log.info(
            "%s closed: %d lines, %d bytes, %d dropped, %d rejected",
            self.name,
            self.lines,
            self.bytes,
            self.dropped_lines,
            self.rejected_frames,
        )

    # -- data path ----------------------------------------------------------------------------

    async def consume(self, batch: list[AnyRecord]) -> None:
        """Encode ``batch`` into per-file line buffers."""
        if self._closed:
            self._drop(len(batch), "the dump is closed")
            return
        if self._failing and self._pending_bytes + self._inflight_bytes >= self._max_pending:
            self._drop(len(batch), f"{self._max_pending} bytes already wait for the disk")
            return
        added = self._add_raw(batch) if self.raw else self._add_records(batch)
        self._pending_bytes += added
        if self._pending_bytes >= _WAKE_BYTES:
            self._wake.set()
        while (
            self._pending_bytes >= self._high_water
            and not self._failing
            and self._task is not None
            and not self._task.done()
        ):
            self._progress.clear()
            self._wake.set()
            await self._progress.wait()

    def _path(self, venue: str, channel: str, hour: int, suffix: str) -> Path | None:
        key = (venue, channel, hour)
        path = self._paths.get(key)
        if path is None:
            if not (SAFE_PART.match(venue) and SAFE_PART.match(channel)):
                return None
            when = datetime.fromtimestamp(hour * 3600, UTC)
            path = self._root / venue / channel / when.strftime("%Y-%m-%d") / f"{when:%H}{suffix}"
            if len(self._paths) > 4096:
                self._paths.clear()
            self._paths[key] = path
        return path

    def _add_records(self, batch: list[AnyRecord]) -> int:
        encode = self._encoder.encode
        prefixes = self._prefixes
        pending = self._pending
        added = 0
        for r in batch:
            if not isinstance(r, Record):
                self.skipped += 1
                continue
            cls = type(r)
            prefix = prefixes.get(cls)
            if prefix is None:
                prefix = prefixes[cls] = b'{"channel":' + encode(cls.channel) + b","
            path = self._path(r.venue, cls.channel, r.recv_ts // NS_PER_HOUR, ".ndjson")
            if path is None:
                self._reject(f"unsafe venue {r.venue!r}")
                continue
            # Records always have fields, so the encoded object is never "{}": splice after "{".
            line = prefix + encode(r)[1:] + b"\n"
            chunks = pending.get(path)
            if chunks is None:
                pending[path] = [line]
            else:
                chunks.append(line)
            added += len(line)
        return added

    def _add_raw(self, batch: list[AnyRecord]) -> int:
        pending = self._pending
        added = 0
        for r in batch:
            if not isinstance(r, RawFrame):
                self.skipped += 1
                continue
            data = r.data
            if b"\n" in data or b"\r" in data:
                self._reject(f"frame from {r.source} contains a line break")
                continue
            if not _SOURCE_OK.match(r.source):
                self._reject(f"source {r.source!r} is empty or has whitespace")
                continue
            path = self._path(r.venue, "raw", r.recv_ts // NS_PER_HOUR, ".raw")
            if path is None:
                self._reject(f"unsafe venue {r.venue!r}")
                continue
            line = b"%d %s %s\n" % (r.recv_ts, r.source.encode(), data)
            chunks = pending.get(path)
            if chunks is None:
                pending[path] = [line]
            else:
                chunks.append(line)
            added += len(line)
        return added

    def _reject(self, why: str) -> None:
        self.rejected_frames += 1
        self._rejects_unlogged += 1
        now = time.monotonic()
        # Rate-limited: a flood of bad frames is one line a minute with the count, not a line each.
        if now - self._last_reject_log >= 60.0:
            log.warning(
                "%s: rejected %d record(s)/frame(s); latest: %s", self.name, self._rejects_unlogged, why
            )
            self._last_reject_log = now
            self._rejects_unlogged = 0

    def _drop(self, n: int, why: str) -> None:
        if n <= 0:
            return
        if not self._dropping:
            self._dropping = True
            log.error("%s: dropping records: %s", self.name, why)
        self.dropped_lines += n

    # -- flusher ------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            closing = self._closing
            if self._pending:
                await self._flush(final=closing)
            if closing:
                return

    async def _flush(self, *, final: bool) -> None:
        taken, self._pending = self._pending, {}
        self._inflight_bytes, self._pending_bytes = self._pending_bytes, 0
        if not taken:
            return
        try:
            written, failed = await asyncio.to_thread(self._write_files, taken)
        finally:
            self._inflight_bytes = 0
        self.lines += written[0]
        self.bytes += written[1]
        if failed:
            self.write_errors += len(failed)
            first_path, first_exc = next(iter(failed.items()))
            if not self._failing:
                self._failing = True
                log.error(
                    "%s: write failed for %s (errno %s: %s); keeping lines for the next flush",
                    self.name,
                    first_path,
                    first_exc.errno,
                    first_exc.strerror or first_exc,
                )
            for path in failed:
                chunks = taken[path]
                if final:
                    self.dropped_lines += len(chunks)
                    log.error("%s: %d lines for %s lost at shutdown", self.name, len(chunks), path)
                    continue
                # Failed data goes back in front of anything that arrived meanwhile: order is kept.
                self._pending[path] = chunks + self._pending.get(path, [])
                self._pending_bytes += sum(map(len, chunks))
        elif self._failing:
            log.warning("%s: writes recovered; %d lines dropped so far", self.name, self.dropped_lines)
            self._failing = False
            self._dropping = False
        self._progress.set()

    def _write_files(self, taken: dict[Path, list[bytes]]) -> tuple[tuple[int, int], dict[Path, OSError]]:
        """Append each file's lines (worker thread). Returns (lines, bytes) written and failures."""
        lines = nbytes = 0
        failed: dict[Path, OSError] = {}
        for path, chunks in taken.items():
            data = b"".join(chunks)
            try:
                _write_all(self._files.fd(path), data)
            except OSError as exc:
                failed[path] = exc
                self._files.forget(path)
                continue
            lines += len(chunks)
            nbytes += len(data)
        self._files.close_idle(_IDLE_CLOSE_S)
        return (lines, nbytes), failed

    # -- status -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Lines and bytes written, files created, backlog, errors, drops, rejected frames."""
        return {
            "lines": self.lines,
            "bytes": self.bytes,
            "files_created": self._files.created,
            "open_files": len(self._files.fds),
            "pending_bytes": self._pending_bytes + self._inflight_bytes,
            "write_errors": self.write_errors,
            "failing": self._failing,
            "dropped_lines": self.dropped_lines,
            "rejected_frames": self.rejected_frames,
        }
