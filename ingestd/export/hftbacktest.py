"""``ingestd export hftbacktest``: a ``--raw`` dump → hftbacktest's collector files.

hftbacktest's collector writes one gzip file per symbol per day, ``<symbol>_<YYYYMMDD>.gz``, of
lines ``<local_ns> <frame>``: the combined-stream websocket frame exactly as received
(``{"stream":"btcusdt@depth@0ms","data":{…}}``), and for a REST depth snapshot the bare body
(``{"lastUpdateId":…}``). Its converters read that form, so they work unchanged on these files.
The ``--raw`` dump (:mod:`ingestd.consumers.jsonl`) holds exactly those bytes with their receive
time: this rewrites them, frame bytes untouched, as
``<out>/<venue>/<symbol>_<YYYYMMDD>.gz`` (the UTC day of the receive time).

Frames that name no single symbol (all-market arrays such as ``!markPrice@arr``, control
replies) and lines that are not ``<recv_ns> <source> <frame>`` are skipped and counted.
Files are written under a temporary name and renamed when complete; exporting again replaces
them.
"""

from __future__ import annotations

import gzip
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, urlsplit

import orjson

from ingestd.consumers.parquet import SAFE_PART
from ingestd.errors import ConfigError
from ingestd.venues.binance.endpoints import stream_symbol

OPEN_FILES: Final = 64
"""Output files kept open at once (more symbols: the least recent is closed and reopened)."""
_NS_PER_DAY: Final = 86_400 * 1_000_000_000


@dataclass(slots=True)
class HftStats:
    """What an export wrote."""

    lines: int = 0
    skipped: int = 0
    files: set[Path] = field(default_factory=set)


def _stream_of(frame: bytes) -> str | None:
    """The ``stream`` of a combined-stream frame (``None`` for anything else)."""
    if not frame.startswith(b'{"stream":'):
        return None
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    stream = obj.get("stream") if isinstance(obj, dict) else None
    return stream if isinstance(stream, str) else None


def _symbol(source: str, frame: bytes) -> str | None:
    """The lower-case symbol a raw line belongs to, or ``None`` when it names none."""
    path = source.partition("?")[0]
    if path.startswith(("/fapi/", "/api/", "/dapi/")):
        if not path.endswith("/depth"):
            return None
        values = parse_qs(urlsplit(source).query).get("symbol")
        return values[0].lower() if values else None
    stream = _stream_of(frame)
    if stream is None:
        return None
    sym = stream_symbol(stream)
    return sym.lower() if sym and not stream.startswith("!") else None


class _Outputs:
    """The open gzip files, at most :data:`OPEN_FILES`; each written under a temp name."""

    def __init__(self) -> None:
        self.open: OrderedDict[Path, gzip.GzipFile] = OrderedDict()
        self.started: set[Path] = set()

    def write(self, path: Path, line: bytes) -> None:
        fh = self.open.get(path)
        if fh is None:
            tmp = path.with_name(f".{path.name}.tmp")
            if path not in self.started:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.started.add(path)
                mode = "wb"
            else:
                mode = "ab"  # reopened after eviction: a new gzip member, which readers join
            # Kept open across lines (closed on eviction, finish or abort): no context manager.
            fh = self.open[path] = gzip.GzipFile(tmp, mode, compresslevel=6)
            if len(self.open) > OPEN_FILES:
                _, old = self.open.popitem(last=False)
                old.close()
        else:
            self.open.move_to_end(path)
        fh.write(line)

    def finish(self) -> None:
        for fh in self.open.values():
            fh.close()
        self.open.clear()
        for path in self.started:
            os.replace(path.with_name(f".{path.name}.tmp"), path)

    def abort(self) -> None:
        for fh in self.open.values():
            fh.close()
        for path in self.started:
            path.with_name(f".{path.name}.tmp").unlink(missing_ok=True)


def _raw_files(root: Path) -> list[tuple[str, Path]]:
    out = []
    for vdir in sorted(root.iterdir()):
        if vdir.is_dir() and SAFE_PART.match(vdir.name):
            files = sorted(p for p in (vdir / "raw").glob("*/*") if p.suffix in (".raw", ".gz"))
            out += [(vdir.name, p) for p in files]
    return out


def export_hftbacktest(raw_dir: Path, out: Path) -> HftStats:
    """Rewrite every raw dump file under ``raw_dir`` as collector files under ``out``."""
    if not raw_dir.is_dir():
        raise ConfigError(f"--raw {str(raw_dir)!r} is not a directory")
    files = _raw_files(raw_dir)
    if not files:
        raise ConfigError(
            f"--raw {str(raw_dir)!r} holds no raw dump (expected <venue>/raw/<date>/<hour>.raw)"
        )
    stats = HftStats()
    outputs = _Outputs()
    try:
        for venue, path in files:
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rb") as fh:
                for line in fh:
                    parts = line.rstrip(b"\n").split(b" ", 2)
                    if len(parts) != 3 or not parts[0].isdigit():
                        stats.skipped += 1
                        continue
                    ts = int(parts[0])
                    symbol = _symbol(parts[1].decode(errors="replace"), parts[2])
                    if symbol is None or not SAFE_PART.match(symbol):
                        stats.skipped += 1
                        continue
                    day = datetime.fromtimestamp(ts // _NS_PER_DAY * 86_400, UTC).strftime("%Y%m%d")
                    target = out / venue / f"{symbol}_{day}.gz"
                    outputs.write(target, parts[0] + b" " + parts[2] + b"\n")
                    stats.lines += 1
                    stats.files.add(target)
    except BaseException:
        outputs.abort()
        raise
    outputs.finish()
    return stats
