"""The five report figures, drawn with matplotlib's object API on the Agg canvas (no pyplot state).

Each ``draw_*`` function takes the :class:`~ingestd.report.load.ReportData` and returns a
:class:`matplotlib.figure.Figure`, or raises :class:`Skip` naming the data it lacks. Candles are
drawn directly (bodies as bars, wicks as lines): no mplfinance, no pandas.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Final

import matplotlib.dates as mdates
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ingestd.report.load import Market, ReportData, Series
from ingestd.report.series import (
    F64,
    I64,
    Bars,
    align,
    co_movement,
    ema,
    last_per_bucket,
    macd,
    mean_per_bucket,
    rolling_mean,
    rsi,
    sma,
    sum_per_bucket,
    vwap,
)
from ingestd.report.spans import span_ns

UP: Final = "#26a69a"
DOWN: Final = "#ef5350"
HORIZONS: Final = ("1m", "5m", "15m", "1h")
SIZE: Final = (13.0, 8.5)
DPI: Final = 110


class Skip(Exception):  # noqa: N818 - a figure that is skipped, not a failure
    """This figure cannot be drawn: the message says which data is missing."""


def _dates(t: I64) -> F64:
    """ns epoch → matplotlib date numbers (days)."""
    return np.asarray(t, dtype=np.float64) / 86_400e9


def _utc(t: int) -> str:
    return datetime.fromtimestamp(t / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _time_axis(ax: Axes) -> None:
    # matplotlib.dates ships without annotations on these two constructors.
    locator = mdates.AutoDateLocator(minticks=4, maxticks=10)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]


def _figure(rows: int, ratios: list[float], *, sharex: bool = True) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, 1, sharex=sharex, gridspec_kw={"height_ratios": ratios})
    out = [axes] if isinstance(axes, Axes) else list(np.ravel(axes))
    for ax in out:
        ax.grid(visible=True, alpha=0.25)
    return fig, out


def _candles(ax: Axes, bars: Bars) -> None:
    x = _dates(bars.t + bars.bar // 2)
    width = bars.bar / 86_400e9 * 0.7
    up = bars.close >= bars.open
    colors = [UP if u else DOWN for u in up]
    ax.vlines(x, bars.low, bars.high, colors=colors, linewidth=0.8)
    body = np.abs(bars.close - bars.open)
    # A doji still shows: at least a hair of body.
    body = np.maximum(body, (np.nanmax(bars.high) - np.nanmin(bars.low)) * 0.002 if len(bars) else 0.0)
    ax.bar(x, body, width=width, bottom=np.minimum(bars.open, bars.close), color=colors, edgecolor=colors)


def _line(ax: Axes, bars: Bars, y: F64, label: str, color: str) -> None:
    if np.isfinite(y).any():
        ax.plot(_dates(bars.t + bars.bar // 2), y, label=label, color=color, linewidth=1.1)
    else:
        ax.plot([], [], label=f"{label} (needs more bars)", color=color)


def _volume(ax: Axes, bars: Bars) -> None:
    x = _dates(bars.t + bars.bar // 2)
    colors = np.where(bars.close >= bars.open, UP, DOWN)
    ax.bar(x, bars.volume, width=bars.bar / 86_400e9 * 0.7, color=colors, alpha=0.8)
    _line(ax, bars, sma(bars.volume, 20), "volume MA20", "#555555")
    ax.set_ylabel("volume")
    ax.legend(loc="upper left", fontsize=8)


def _need_bars(data: ReportData, market: Market, bar: int) -> Bars:
    bars = data.bars(market, bar)
    if bars is None or len(bars) == 0:
        raise Skip(
            f"no {market} {data.symbols[market]} klines or trades in --data/--collect "
            f"(want stored kline/trade records or a collect run's {market}/klines.json)"
        )
    return bars


def _title(data: ReportData, market: Market, bars: Bars, what: str) -> str:
    span = f"{_utc(int(bars.t[0]))} to {_utc(int(bars.t[-1] + bars.bar))}"
    width = bars.bar // 1_000_000_000
    label = f"{width // 60}m" if width % 60 == 0 else f"{width}s"
    return f"{data.symbols[market]} {market} {what}: {len(bars)} x {label} candles from {bars.source}\n{span}"


def draw_spot_dashboard(data: ReportData, bar: int) -> Figure:
    """Candles with SMA20, EMA55 and VWAP; RSI14; volume with its MA20."""
    bars = _need_bars(data, "spot", bar)
    fig, (price, osc, vol) = _figure(3, [3.2, 1.0, 1.1])
    _candles(price, bars)
    _line(price, bars, sma(bars.close, 20), "SMA20", "#1f77b4")
    _line(price, bars, ema(bars.close, 55), "EMA55", "#ff7f0e")
    _line(price, bars, vwap(bars), "VWAP", "#9467bd")
    price.set_ylabel("price")
    price.legend(loc="upper left", fontsize=8)
    price.set_title(_title(data, "spot", bars, "dashboard"), fontsize=10)
    _line(osc, bars, rsi(bars.close, 14), "RSI14", "#2ca02c")
    for level in (30, 70):
        osc.axhline(level, color="#999999", linewidth=0.8, linestyle="--")
    osc.set_ylim(0, 100)
    osc.set_ylabel("RSI")
    osc.legend(loc="upper left", fontsize=8)
    _volume(vol, bars)
    _time_axis(vol)
    return fig


def draw_futures_dashboard(data: ReportData, bar: int) -> Figure:
    """Candles with EMA21, EMA55 and VWAP; MACD 12/26/9; open interest; volume."""
    bars = _need_bars(data, "futures", bar)
    fig, (price, osc, oi_ax, vol) = _figure(4, [3.0, 1.0, 1.0, 1.0])
    _candles(price, bars)
    _line(price, bars, ema(bars.close, 21), "EMA21", "#1f77b4")
    _line(price, bars, ema(bars.close, 55), "EMA55", "#ff7f0e")
    _line(price, bars, vwap(bars), "VWAP", "#9467bd")
    price.set_ylabel("price")
    price.legend(loc="upper left", fontsize=8)
    price.set_title(_title(data, "futures", bars, "dashboard"), fontsize=10)
    line, signal, hist = macd(bars.close)
    x = _dates(bars.t + bars.bar // 2)
    osc.bar(x, hist, width=bars.bar / 86_400e9 * 0.7, color=np.where(hist >= 0, UP, DOWN), alpha=0.6)
    osc.plot(x, line, label="MACD 12/26", color="#1f77b4", linewidth=1.0)
    osc.plot(x, signal, label="signal 9", color="#ff7f0e", linewidth=1.0)
    osc.set_ylabel("MACD")
    osc.legend(loc="upper left", fontsize=8)
    oi = data.open_interest()
    start, end = int(bars.t[0]), int(bars.t[-1] + bars.bar)
    if oi is not None:
        # The value in force over the candles: points inside, and the last one before them.
        inside = (oi.t >= start) & (oi.t <= end)
        before = np.flatnonzero(oi.t < start)
        keep = inside.copy()
        if len(before):
            keep[before[-1]] = True
        t, v = oi.t[keep], oi.v[keep]
    if oi is None or not len(t):
        oi_ax.text(
            0.5,
            0.5,
            "no open interest data over these candles",
            ha="center",
            va="center",
            transform=oi_ax.transAxes,
            color="#777777",
        )
    else:
        xs = np.append(_dates(np.maximum(t, start)), _dates(np.asarray([end])))
        oi_ax.step(
            xs, np.append(v, v[-1]), where="post", color="#8c564b", label=f"open interest ({oi.source})"
        )
        oi_ax.legend(loc="upper left", fontsize=8)
    oi_ax.set_ylabel("OI (contracts)")
    _volume(vol, bars)
    _time_axis(vol)
    return fig


def _need_closes(data: ReportData) -> tuple[Series, Series]:
    spot, fut = data.closes("spot"), data.closes("futures")
    missing = [m for m, s in (("spot", spot), ("futures", fut)) if s is None]
    if missing or spot is None or fut is None:
        raise Skip(f"needs both spot and futures prices; no {' or '.join(missing)} klines or trades found")
    return spot, fut


def draw_basis(data: ReportData, bar: int) -> Figure:
    """Futures minus spot in USDT and bps with a 60-minute mean; 15-minute basis and premium;
    funding-rate bars."""
    _need_closes(data)
    spot_bars, fut_bars = data.bars("spot", bar), data.bars("futures", bar)
    if spot_bars is None or fut_bars is None:
        raise Skip("needs both spot and futures candles")
    common, ia, ib = np.intersect1d(spot_bars.t, fut_bars.t, assume_unique=True, return_indices=True)
    if len(common) == 0:
        raise Skip("spot and futures prices do not overlap in time")
    t = common.astype(np.int64)
    s, f = spot_bars.close[ia], fut_bars.close[ib]
    basis = f - s
    bps = basis / s * 1e4
    hour = span_ns("60m")
    fig, (usdt, rel, q15, fund) = _figure(4, [1.2, 1.2, 1.0, 1.0], sharex=False)
    x = _dates(t + bar // 2)
    usdt.plot(x, basis, color="#1f77b4", linewidth=1.0, label="futures - spot (USDT)")
    usdt.plot(x, rolling_mean(t, basis, hour), color="#d62728", linewidth=1.2, label="60-minute mean")
    usdt.axhline(0, color="#999999", linewidth=0.8)
    usdt.set_ylabel("USDT")
    usdt.legend(loc="upper left", fontsize=8)
    usdt.set_title(
        f"basis {data.symbols['futures']} futures vs {data.symbols['spot']} spot: {len(t)} common "
        f"{bar // 1_000_000_000} s bars ({fut_bars.source} / {spot_bars.source})",
        fontsize=10,
    )
    rel.plot(x, bps, color="#1f77b4", linewidth=1.0, label="basis (bps)")
    rel.plot(x, rolling_mean(t, bps, hour), color="#d62728", linewidth=1.2, label="60-minute mean")
    rel.axhline(0, color="#999999", linewidth=0.8)
    rel.set_ylabel("bps")
    rel.legend(loc="upper left", fontsize=8)
    rel.sharex(usdt)
    _quarter_panel(q15, data, t, bps)
    _funding_panel(fund, data)
    _time_axis(usdt)
    return fig


def _quarter_panel(ax: Axes, data: ReportData, t: I64, bps: F64) -> None:
    """15-minute means of the basis and of the premium (mark / index - 1), in bps."""
    quarter = span_ns("15m")
    tq, bq = mean_per_bucket(t, bps, quarter)
    width = quarter / 86_400e9 * 0.35
    ax.bar(
        _dates(tq + quarter // 2) - width / 2,
        bq,
        width=width,
        color="#1f77b4",
        label="basis, 15-min mean (bps)",
    )
    premium = data.premium()
    if premium is not None and len(premium.t):
        tp, pq = mean_per_bucket(premium.t, premium.v * 1e4, quarter)
        ax.bar(
            _dates(tp + quarter // 2) + width / 2,
            pq,
            width=width,
            color="#ff7f0e",
            label=f"premium mark/index - 1, 15-min mean (bps, {premium.source})",
        )
    else:
        ax.plot([], [], label="premium: no mark/index data", color="#ff7f0e")
    ax.axhline(0, color="#999999", linewidth=0.8)
    ax.set_ylabel("bps")
    ax.legend(loc="upper left", fontsize=8)
    _time_axis(ax)


def _funding_panel(ax: Axes, data: ReportData) -> None:
    """Funding-rate bars on their own (8-hourly) time axis."""
    funding = data.funding()
    if funding is None or not len(funding.t):
        ax.text(
            0.5,
            0.5,
            "no funding-rate data",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="#777777",
        )
    else:
        rates = funding.v * 100
        ax.bar(
            _dates(funding.t),
            rates,
            width=8 / 24 * 0.8,
            color=[UP if r >= 0 else DOWN for r in rates],
            label=f"funding rate % ({funding.source})",
        )
        ax.legend(loc="upper left", fontsize=8)
        _time_axis(ax)
    ax.set_ylabel("funding %")


def draw_co_movement(data: ReportData, _bar: int) -> Figure:
    """Correlation and beta of futures vs spot log returns at 1m/5m/15m/1h; annualised volatility."""
    spot, fut = _need_closes(data)
    stats = [co_movement(h, spot.t, spot.v, fut.t, fut.v) for h in HORIZONS]
    if all(s.returns < 3 for s in stats):
        raise Skip(
            "fewer than 3 common log returns at every horizon (1m/5m/15m/1h): "
            f"spot and futures overlap too briefly ({spot.source} / {fut.source})"
        )
    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(2, 3)
    axes = [fig.add_subplot(grid[0, i]) for i in range(3)]
    idx = np.arange(len(HORIZONS))
    corr = [s.corr for s in stats]
    beta = [s.beta for s in stats]
    for ax, values, name, color in (
        (axes[0], corr, "correlation", "#1f77b4"),
        (axes[1], beta, "beta (futures on spot)", "#2ca02c"),
    ):
        ax.bar(idx, np.nan_to_num(values), color=color)
        ax.set_title(name, fontsize=10)
        ax.set_xticks(idx, [f"{s.horizon}\nn={s.returns}" for s in stats])
        for i, v in enumerate(values):
            ax.text(
                i,
                0 if math.isnan(v) else v,
                "n/a" if math.isnan(v) else f"{v:.3f}",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.grid(visible=True, alpha=0.25)
    axes[0].set_ylim(min(0.0, *np.nan_to_num(corr)) - 0.05, 1.05)
    vol = axes[2]
    width = 0.38
    vs = [s.vol_spot * 100 for s in stats]
    vf = [s.vol_futures * 100 for s in stats]
    vol.bar(idx - width / 2, np.nan_to_num(vs), width=width, color="#9467bd", label="spot")
    vol.bar(idx + width / 2, np.nan_to_num(vf), width=width, color="#ff7f0e", label="futures")
    vol.set_xticks(idx, [s.horizon for s in stats])
    vol.set_title("annualised volatility %", fontsize=10)
    vol.legend(fontsize=8)
    vol.grid(visible=True, alpha=0.25)
    finest = next(s for s in stats if s.returns >= 3)
    size = span_ns(finest.horizon)
    ts, sv = last_per_bucket(spot.t, spot.v, size)
    tf, fv = last_per_bucket(fut.t, fut.v, size)
    t, sv, fv = align(ts, sv, tf, fv)
    ok = np.diff(t) == size
    rs, rf = np.diff(np.log(sv))[ok] * 1e4, np.diff(np.log(fv))[ok] * 1e4
    scatter = fig.add_subplot(grid[1, :])
    scatter.scatter(rs, rf, s=14, alpha=0.7, color="#1f77b4", label=f"{finest.horizon} log returns (bps)")
    if not math.isnan(finest.beta):
        xs = np.linspace(float(rs.min()), float(rs.max()), 2)
        # The least-squares line passes through the means.
        ys = float(rf.mean()) + finest.beta * (xs - float(rs.mean()))
        scatter.plot(xs, ys, color="#d62728", label=f"beta {finest.beta:.3f}")
    scatter.set_xlabel("spot return (bps)")
    scatter.set_ylabel("futures return (bps)")
    scatter.legend(loc="upper left", fontsize=8)
    scatter.grid(visible=True, alpha=0.25)
    fig.suptitle(
        f"co-movement {data.symbols['futures']} futures vs {data.symbols['spot']} spot "
        f"({fut.source} / {spot.source}); n/a: fewer than 3 returns",
        fontsize=10,
    )
    return fig


def _latency_unit(ms: F64) -> tuple[float, str]:
    med = float(np.nanmedian(np.abs(ms))) if len(ms) else 0.0
    for scale, unit, below in ((1.0, "ms", 1e4), (1e3, "s", 3.6e6), (3.6e6, "h", 1.728e8)):
        if med < below:
            return scale, unit
    return 8.64e7, "days"


def draw_ws_microstructure(data: ReportData, _bar: int) -> Figure:
    """Last price over the capture, volume, and the event→receive latency."""
    frames = data.frames()
    if frames is None or not len(frames.recv):
        raise Skip("no websocket frames: run collect with --ws-seconds, or store trades with the daemon")
    fig, (price, vol, lat) = _figure(3, [2.0, 1.0, 1.3])
    # By event time: "over the capture" (a replay may deliver minutes of frames in milliseconds).
    order = np.argsort(frames.event, kind="stable")
    event, latency = frames.event[order], frames.latency_ms[order]
    x = _dates(event)
    price.step(x, frames.price[order], where="post", color="#1f77b4", linewidth=1.0, label="last price")
    price.set_ylabel("price")
    price.legend(loc="upper left", fontsize=8)
    price.set_title(
        f"websocket microstructure: {len(event)} frames from {frames.source}, by event time\n"
        f"{_utc(int(event[0]))} to {_utc(int(event[-1]))}",
        fontsize=10,
    )
    span = max(1, int(event[-1] - event[0]))
    bucket = max(1_000_000, span // 120)
    tb, vb = sum_per_bucket(event, frames.volume[order], bucket)
    vol.bar(_dates(tb + bucket // 2), vb, width=bucket / 86_400e9 * 0.9, color="#7f7f7f")
    vol.set_ylabel(f"volume per {bucket / 1e9:.3g} s")
    scale, unit = _latency_unit(latency)
    lat.plot(x, latency / scale, ".", markersize=2.5, color="#d62728", label="event → receive")
    med = float(np.nanmedian(latency))
    lat.axhline(
        med / scale, color="#333333", linewidth=0.8, linestyle="--", label=f"median {med / scale:.3g} {unit}"
    )
    lat.set_ylabel(f"latency ({unit})")
    lat.ticklabel_format(axis="y", useOffset=False)
    lat.legend(loc="upper left", fontsize=8)
    if unit in ("h", "days"):
        lat.text(
            0.99,
            0.05,
            "a replayed capture: the latency includes the recording's age",
            ha="right",
            transform=lat.transAxes,
            fontsize=8,
            color="#555555",
        )
    _time_axis(lat)
    return fig
