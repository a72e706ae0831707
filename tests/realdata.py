"""Where the real recorded Binance traffic the tests replay lives: ``tests/data`` in this repository.

tests/data/PROVENANCE.md names each file's origin, licence and what it exercises. A missing file
fails the test that needs it: nothing here skips, so a clone runs the whole suite on its own.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
HFT = DATA / "hftbacktest"
"""hftbacktest captures (``usdm_btcusdt`` is a link to the copy bundled in ``ingestd/sim/data``)."""
CF = DATA / "cryptofeed"
"""cryptofeed sample captures ("This product includes software developed by Bryant Moscon")."""


def need(path: Path) -> Path:
    """``path``, asserting it is there (a missing capture is a failure, never a skip)."""
    assert path.exists(), f"test data missing: {path} (tests/data/PROVENANCE.md lists every file)"
    return path
