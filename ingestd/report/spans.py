"""Durations written like ``5s``, ``1m``, ``15m``, ``1h`` (pure; no numpy, so the CLI can parse
``--bar`` while it builds its parser on a plain install without the ``report`` extra)."""

from __future__ import annotations

import re
from typing import Final

NS_PER_S: Final = 1_000_000_000
_SPAN: Final = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def span_ns(text: str) -> int:
    """``"1m"`` → 60e9; ``"5s"``, ``"15m"``, ``"1h"``, ``"1d"``. ``ValueError`` otherwise."""
    m = _SPAN.match(text)
    if m is None or int(m[1]) == 0:
        raise ValueError(f"not a duration like 5s, 1m, 15m, 1h: {text!r}")
    return int(m[1]) * _UNIT_S[m[2]] * NS_PER_S
