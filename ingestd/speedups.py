"""Compiled speed-ups, each with a pure-Python twin chosen automatically.

Hot-path pieces (the order book, the Parquet column builders) exist twice: a C extension built by
``pip install`` (setuptools ``ext-modules`` in pyproject.toml; it needs gcc and the Python
headers) and a pure-Python implementation that is the reference. The extension is used when it
imports; when it is missing (no compiler at install time, an unusual platform) the Python one
runs, slower but with identical results (``tests/test_speedups.py`` replays every real capture
through both). ``INGESTD_NO_EXTENSIONS=1`` forces the Python implementations, as aiohttp's and
yarl's ``*_NO_EXTENSIONS`` variables do.

:func:`active` tells which ones a process runs (``/status`` shows it).
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType
from typing import Final

log = logging.getLogger("ingestd.speedups")

NO_EXTENSIONS: Final = os.environ.get("INGESTD_NO_EXTENSIONS", "") not in ("", "0")
"""``INGESTD_NO_EXTENSIONS`` set (to anything but ``0``): never load a compiled module."""

_loaded: dict[str, bool] = {}


def load(name: str) -> ModuleType | None:
    """The compiled module ``name``, or ``None`` (forced off, or not built on this install)."""
    if NO_EXTENSIONS:
        _loaded[name] = False
        return None
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        log.debug("%s not available (%s): using the pure-Python implementation", name, exc)
        _loaded[name] = False
        return None
    _loaded[name] = True
    return module


def active() -> dict[str, str]:
    """Each speed-up asked for so far → ``"compiled"`` or ``"python"``."""
    return {name: "compiled" if ok else "python" for name, ok in sorted(_loaded.items())}
