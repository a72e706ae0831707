"""Time-series arithmetic for the report figures (numpy only; pure, no I/O).

Times are int64 ns epoch. Bars are keyed by their open time; a bar exists only where there was
a trade (no forward-filled empty bars). Rolling indicators follow the usual definitions: SMA over
``n`` bars, EMA with ``alpha = 2 / (n + 1)`` seeded with the first value, RSI with Wilder's
smoothing, MACD 12/26/9, VWAP cumulative over the shown range (typical price x volume).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from ingestd.report.spans import NS_PER_S, span_ns

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

SECONDS_PER_YEAR: Final = 365 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Bars:
    """OHLCV bars of one instrument; ``t`` is each bar's open time (ns), ``bar`` its width (ns)."""

    t: I64
    open: F64
    high: F64
    low: F64
    close: F64
    volume: F64
    bar: int
    source: str
    """Where they came from, for the figure's caption (``trades``, ``klines 1m`` …)."""

    def __len__(self) -> int:
        return len(self.t)

    def typical(self) -> F64:
        return (self.high + self.low + self.close) / 3.0


def _group_starts(keys: I64) -> I64:
    """Indices where a run of equal (sorted) keys starts."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1]))).astype(np.int64)


def resample_trades(ts: I64, price: F64, qty: F64, bar: int, source: str = "trades") -> Bars:
    """Trades (any order) → bars of ``bar`` ns (first/max/min/last price, summed quantity)."""
    order = np.argsort(ts, kind="stable")
    ts, price, qty = ts[order], price[order], qty[order]
    keys = (ts // bar) * bar
    starts = _group_starts(keys)
    if len(starts) == 0:
        empty = np.zeros(0)
        return Bars(np.zeros(0, dtype=np.int64), empty, empty, empty, empty, empty, bar, source)
    ends = np.append(starts[1:], len(ts)) - 1
    return Bars(
        t=keys[starts],
        open=price[starts],
        high=np.maximum.reduceat(price, starts),
        low=np.minimum.reduceat(price, starts),
        close=price[ends],
        volume=np.add.reduceat(qty, starts),
        bar=bar,
        source=source,
    )


def resample_bars(bars: Bars, bar: int) -> Bars:
    """Coarser bars from finer ones (``bar`` must be a multiple of ``bars.bar``)."""
    if bar == bars.bar or len(bars) == 0:
        return bars
    if bar % bars.bar:
        raise ValueError(f"cannot make {bar} ns bars from {bars.bar} ns bars")
    keys = (bars.t // bar) * bar
    starts = _group_starts(keys)
    ends = np.append(starts[1:], len(keys)) - 1
    return Bars(
        t=keys[starts],
        open=bars.open[starts],
        high=np.maximum.reduceat(bars.high, starts),
        low=np.minimum.reduceat(bars.low, starts),
        close=bars.close[ends],
        volume=np.add.reduceat(bars.volume, starts),
        bar=bar,
        source=bars.source,
    )


def sma(x: F64, n: int) -> F64:
    """Simple moving average; NaN until ``n`` values are in."""
    out = np.full(len(x), np.nan)
    if len(x) >= n:
        c = np.cumsum(np.insert(x, 0, 0.0))
        out[n - 1 :] = (c[n:] - c[:-n]) / n
    return out


def ema(x: F64, n: int) -> F64:
    """Exponential moving average, ``alpha = 2/(n+1)``, seeded with the first value."""
    out = np.empty(len(x))
    if len(x) == 0:
        return out
    alpha = 2.0 / (n + 1)
    acc = float(x[0])
    for i, v in enumerate(x):
        acc = acc + alpha * (float(v) - acc)
        out[i] = acc
    return out


def rsi(close: F64, n: int = 14) -> F64:
    """Relative strength index with Wilder's smoothing; NaN for the first ``n`` bars."""
    out = np.full(len(close), np.nan)
    if len(close) <= n:
        return out
    delta = np.diff(close)
    gain, loss = np.clip(delta, 0, None), np.clip(-delta, 0, None)
    avg_gain, avg_loss = float(gain[:n].mean()), float(loss[:n].mean())
    for i in range(n, len(close)):
        if i > n:
            avg_gain = (avg_gain * (n - 1) + gain[i - 1]) / n
            avg_loss = (avg_loss * (n - 1) + loss[i - 1]) / n
        out[i] = 100.0 if avg_loss == 0 else 100.0 - 100.0 / (1.0 + avg_gain / avg_loss)
    return out


def macd(close: F64, fast: int = 12, slow: int = 26, signal: int = 9) -> tuple[F64, F64, F64]:
    """(MACD line, signal line, histogram)."""
    line = ema(close, fast) - ema(close, slow)
    sig = ema(line, signal)
    return line, sig, line - sig


def vwap(bars: Bars) -> F64:
    """Cumulative volume-weighted average of the typical price over the bars shown."""
    vol = np.cumsum(bars.volume)
    pv = np.cumsum(bars.typical() * bars.volume)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(vol > 0, pv / np.where(vol > 0, vol, 1.0), np.nan)


def rolling_mean(t: I64, x: F64, window: int) -> F64:
    """Mean of the values within ``window`` ns up to each point (fewer at the start)."""
    c = np.cumsum(np.insert(x, 0, 0.0))
    lo = np.searchsorted(t, t - window, side="right")
    idx = np.arange(1, len(x) + 1)
    return (c[idx] - c[lo]) / (idx - lo)


def last_per_bucket(t: I64, x: F64, bucket: int) -> tuple[I64, F64]:
    """The last value in each ``bucket`` ns (``t`` sorted)."""
    keys = (t // bucket) * bucket
    starts = _group_starts(keys)
    ends = np.append(starts[1:], len(keys)) - 1
    return keys[starts], x[ends]


def mean_per_bucket(t: I64, x: F64, bucket: int) -> tuple[I64, F64]:
    """The mean value in each ``bucket`` ns (``t`` sorted)."""
    keys = (t // bucket) * bucket
    starts = _group_starts(keys)
    counts = np.diff(np.append(starts, len(keys)))
    return keys[starts], np.add.reduceat(x, starts) / counts


def sum_per_bucket(t: I64, x: F64, bucket: int) -> tuple[I64, F64]:
    """The sum of the values in each ``bucket`` ns (``t`` sorted)."""
    keys = (t // bucket) * bucket
    starts = _group_starts(keys)
    return keys[starts], np.add.reduceat(x, starts)


def align(ta: I64, a: F64, tb: I64, b: F64) -> tuple[I64, F64, F64]:
    """Values of two series at their common times."""
    common, ia, ib = np.intersect1d(ta, tb, assume_unique=True, return_indices=True)
    return common.astype(np.int64), a[ia], b[ib]


@dataclass(frozen=True, slots=True)
class CoMovement:
    """Futures vs spot log returns at one horizon."""

    horizon: str
    returns: int
    corr: float
    beta: float
    vol_spot: float
    """Annualised volatility (365 x 24 h trading)."""
    vol_futures: float


def co_movement(
    horizon: str, t_spot: I64, spot: F64, t_fut: I64, fut: F64, *, min_returns: int = 3
) -> CoMovement:
    """Correlation, beta (futures on spot) and annualised volatilities of log returns over
    consecutive ``horizon`` buckets present in both series; NaN with fewer than ``min_returns``."""
    size = span_ns(horizon)
    ts, s = last_per_bucket(t_spot, spot, size)
    tf, f = last_per_bucket(t_fut, fut, size)
    t, s, f = align(ts, s, tf, f)
    consecutive = np.diff(t) == size
    rs, rf = np.diff(np.log(s))[consecutive], np.diff(np.log(f))[consecutive]
    n = len(rs)
    if n < min_returns:
        return CoMovement(horizon, n, math.nan, math.nan, math.nan, math.nan)
    scale = math.sqrt(SECONDS_PER_YEAR * NS_PER_S / size)
    var_s = float(np.var(rs, ddof=1))
    cov = float(np.cov(rf, rs, ddof=1)[0, 1])
    sd_s, sd_f = math.sqrt(var_s), float(np.std(rf, ddof=1))
    corr = cov / (sd_s * sd_f) if sd_s > 0 and sd_f > 0 else math.nan
    beta = cov / var_s if var_s > 0 else math.nan
    return CoMovement(horizon, n, corr, beta, sd_s * scale, sd_f * scale)
