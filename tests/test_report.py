"""``ingestd report`` on a demo run (the daemon against the sim, spot and USDⓈ-M trades of the same
five real minutes) plus a collect run: all five figures, valid PNGs, index.html; skips; and the
indicator arithmetic."""

from __future__ import annotations

import argparse
import asyncio
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from ingestd.app import Daemon
from ingestd.collect.cli import add_arguments as collect_arguments
from ingestd.collect.cli import run as collect_run
from ingestd.report.series import (
    co_movement,
    ema,
    macd,
    resample_trades,
    rolling_mean,
    rsi,
    sma,
    vwap,
)
from ingestd.report.spans import span_ns
from ingestd.sim import SimVenue
from tests.e2e import run_until, settings_for

pytest.importorskip("matplotlib", reason="ingestd report needs the [report] extra (matplotlib)")

from ingestd.report.cli import TITLES
from ingestd.report.cli import add_arguments as report_arguments
from ingestd.report.cli import run as report_run
from ingestd.report.load import ReportData

ROOT = Path(__file__).resolve().parents[1]
SPOT_SLICE = ROOT / "tests" / "data" / "spot_btcusdt_20240808_trades.gz"
FIGURES = tuple(TITLES)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MINUTE = 60_000_000_000


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC, path
    assert head[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _report(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    report_arguments(parser)
    return report_run(parser.parse_args(list(argv)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, bundled_capture: Path) -> tuple[Path, Path]:
    """(data dir of a demo run, a collect run's output), against one sim."""
    base = tmp_path_factory.mktemp("report")
    data, collect = base / "data", base / "collect"

    async def build() -> None:
        async with SimVenue([bundled_capture, SPOT_SLICE]) as sim:
            for venue, trades in (("binance-usdm", 21313), ("binance-spot", 9757)):
                settings = settings_for(
                    sim.rest_url,
                    sim.ws_url,
                    data,
                    venue=venue,
                    symbols="BTCUSDT",
                    channels="trade",
                    health={"port": 0},
                    clock={"enabled": False},
                )
                daemon = Daemon(settings)

                def stored_all(d: Daemon = daemon, n: int = trades) -> bool:
                    return d.bus.published >= n

                code = await run_until(daemon, stored_all)
                assert code == 0
            parser = argparse.ArgumentParser()
            collect_arguments(parser)
            args = parser.parse_args(
                [
                    "--out",
                    str(collect),
                    "--rest-url",
                    sim.rest_url,
                    "--ws-url",
                    sim.ws_url,
                    "--ws-seconds",
                    "1",
                ]
            )
            assert await collect_run(args) == 0

    # A module fixture runs its own loop: the demo is built once for every test here.
    asyncio.run(build())
    return data, collect


def test_report_writes_all_five_figures(
    demo: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, collect = demo
    out = tmp_path / "report"
    assert _report("--data", str(data), "--collect", str(collect), "--out", str(out)) == 0
    printed = capsys.readouterr().out
    for name in FIGURES:
        png = out / f"{name}.png"
        assert f"wrote {png}" in printed
        assert _png_size(png) == (1430, 935)
        assert 20_000 < png.stat().st_size < 2_000_000, name
    page = (out / "index.html").read_text(encoding="utf-8")
    assert all(f'<img src="{name}.png"' in page for name in FIGURES)
    assert "skipped" not in page
    # Candles from trades (--bar 5s is finer than the collected 1m klines) draw all five too.
    out5 = tmp_path / "report5s"
    assert _report("--data", str(data), "--out", str(out5), "--bar", "5s") == 0
    assert all(_png_size(out5 / f"{name}.png") == (1430, 935) for name in FIGURES)


def test_stored_trades_and_collected_klines_agree(demo: tuple[Path, Path]) -> None:
    data, collect = demo
    stored, collected = ReportData(data, None), ReportData(None, collect)
    for market in ("spot", "futures"):
        a, b = stored.bars(market, MINUTE), collected.bars(market, MINUTE)
        assert a is not None
        assert b is not None
        assert (a.source, b.source) == ("stored trades", "collected klines")
        # Both come from the same recorded trades: the daemon stored them, the sim built klines.
        assert a.t.tolist() == b.t.tolist()
        for field in ("open", "high", "low", "close"):
            assert getattr(a, field).tolist() == getattr(b, field).tolist(), (market, field)
        assert a.volume == pytest.approx(b.volume, abs=1e-6)
    trades = stored.trades("futures")
    assert trades is not None
    assert len(trades.t) == 21313
    assert bool(np.all(np.diff(trades.t) >= 0))
    frames = ReportData(None, collect).frames()
    assert frames is not None
    assert frames.source == "collected ws_ticker_1h"
    assert bool(np.all(frames.volume >= 0))


def test_missing_data_skips_figures_with_a_reason(
    demo: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, collect = demo
    only_futures = tmp_path / "futures_only"
    (only_futures / "futures").mkdir(parents=True)
    for f in ("klines.json", "openInterestHist.json", "fundingRate.json"):
        (only_futures / "futures" / f).write_bytes((collect / "futures" / f).read_bytes())
    out = tmp_path / "report"
    assert _report("--collect", str(only_futures), "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert (out / "futures_dashboard.png").is_file()
    for name in ("spot_dashboard", "basis", "co_movement", "ws_microstructure"):
        assert not (out / f"{name}.png").exists()
        assert f"skipped {name}: " in printed
    assert "skipped spot_dashboard: no spot BTCUSDT klines or trades" in printed
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count('class="skip"') == 4
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _report("--data", str(empty), "--out", str(tmp_path / "none")) == 1
    assert _report("--out", str(tmp_path / "none")) == 2
    assert _report("--data", str(tmp_path / "missing"), "--out", str(tmp_path / "none")) == 2


def test_indicator_arithmetic() -> None:
    ts = np.array([0, 10, 59_999, 60_000, 61_000, 180_000], dtype=np.int64) * 1_000_000
    price = np.array([10.0, 12.0, 11.0, 9.0, 9.5, 20.0])
    qty = np.array([1.0, 2.0, 1.0, 3.0, 1.0, 5.0])
    bars = resample_trades(ts[::-1].copy(), price[::-1].copy(), qty[::-1].copy(), MINUTE)
    assert bars.t.tolist() == [0, MINUTE, 3 * MINUTE]  # no empty bar for the quiet minute
    assert (bars.open.tolist(), bars.high.tolist(), bars.low.tolist(), bars.close.tolist()) == (
        [10.0, 9.0, 20.0],
        [12.0, 9.5, 20.0],
        [10.0, 9.0, 20.0],
        [11.0, 9.5, 20.0],
    )
    assert bars.volume.tolist() == [4.0, 4.0, 5.0]
    typical = (bars.high + bars.low + bars.close) / 3
    assert vwap(bars)[-1] == pytest.approx(float((typical * bars.volume).sum() / bars.volume.sum()))
    x = np.arange(1.0, 11.0)
    assert np.isnan(sma(x, 3)[:2]).all()
    assert sma(x, 3)[2:].tolist() == pytest.approx([2, 3, 4, 5, 6, 7, 8, 9])
    e = ema(np.array([1.0, 2.0, 3.0]), 3)  # alpha 0.5, seeded with the first value
    assert e.tolist() == [1.0, 1.5, 2.25]
    assert np.isnan(rsi(x, 14)).all()  # 10 values: fewer than 14 changes
    up = rsi(np.arange(30.0), 14)
    assert np.isnan(up[:14]).all()
    assert up[14:].tolist() == [100.0] * 16
    line, signal, hist = macd(np.full(40, 5.0))
    assert np.allclose(line, 0)
    assert np.allclose(signal, 0)
    assert np.allclose(hist, 0)
    t = np.arange(5, dtype=np.int64) * MINUTE
    assert rolling_mean(t, np.array([1.0, 2.0, 3.0, 4.0, 5.0]), 2 * MINUTE).tolist() == [
        1,
        1.5,
        2.5,
        3.5,
        4.5,
    ]
    assert span_ns("15m") == 15 * MINUTE
    with pytest.raises(ValueError, match="duration"):
        span_ns("0m")
    # Futures moving exactly twice as much as spot (in log terms): beta 2, correlation 1.
    rng = np.random.default_rng(7)
    steps = rng.normal(0, 1e-3, 120)
    t = np.arange(121, dtype=np.int64) * MINUTE + MINUTE // 2
    spot = 60_000 * np.exp(np.concatenate(([0.0], np.cumsum(steps))))
    fut = 60_000 * np.exp(np.concatenate(([0.0], np.cumsum(2 * steps))))
    cm = co_movement("1m", t, spot, t, fut)
    assert cm.returns == 120
    assert cm.corr == pytest.approx(1.0)
    assert cm.beta == pytest.approx(2.0)
    assert cm.vol_futures == pytest.approx(2 * cm.vol_spot)
    assert cm.vol_spot == pytest.approx(float(np.std(steps, ddof=1)) * math.sqrt(365 * 24 * 60))
    # 121 minutes touch three hour buckets: two 1h returns, fewer than 3, so no statistics.
    assert co_movement("1h", t, spot, t, fut).returns == 2
    assert math.isnan(co_movement("1h", t, spot, t, fut).corr)
