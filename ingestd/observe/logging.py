"""Logging set-up: readable text on a TTY, JSON lines (orjson) for journald and Docker.

One named logger per subsystem (``ingestd.streams``, ``ingestd.book`` …). Logs record
transitions, never one line per message. SIGHUP reopens a log file (logrotate-friendly).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Literal

import orjson

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # Fields given with ``extra=`` (context such as the connection) ride along as keys.
        out.update((k, v) for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_"))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class ReopenableFileHandler(logging.FileHandler):
    """A file handler whose file can be reopened after logrotate moved it."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


def setup_logging(
    fmt: Literal["text", "json", "auto"] = "auto", level: str = "INFO", file: Path | None = None
) -> ReopenableFileHandler | None:
    """Configure the ``ingestd`` logger tree. Returns the file handler when logging to a file."""
    handler: logging.Handler
    file_handler: ReopenableFileHandler | None = None
    if file is not None:
        file_handler = ReopenableFileHandler(file, encoding="utf-8")
        handler = file_handler
    else:
        handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and file is None and not sys.stderr.isatty())
    if fmt == "auto" and file is not None:
        use_json = True
    handler.setFormatter(
        JsonFormatter()
        if use_json
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    root = logging.getLogger("ingestd")
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    return file_handler
