"""Shared fixtures. Tests never leave 127.0.0.1; real recorded data is the ground truth."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.realdata import DATA, need

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_CAPTURE = ROOT / "ingestd" / "sim" / "data" / "usdm_btcusdt_20240808.gz"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """``tests/data``: the real captures the tests replay (see tests/data/PROVENANCE.md)."""
    return need(DATA)


@pytest.fixture(scope="session")
def bundled_capture() -> Path:
    """The real USDⓈ-M BTCUSDT capture shipped inside the package for the offline demo."""
    assert BUNDLED_CAPTURE.is_file(), f"bundled capture missing: {BUNDLED_CAPTURE}"
    return BUNDLED_CAPTURE
