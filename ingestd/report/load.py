"""What the report draws from: stored Parquet (``--data``) and/or a collect output (``--collect``).

Every accessor returns ``None`` when its data is missing, and the figure that needs it says so.
Sources, first found wins:

* candles: stored ``kline`` records (closed bars), collect ``klines.json``, stored ``trade``
  records resampled (the bundled capture has trades only);
* open interest: stored ``open_interest`` records, collect ``openInterestHist`` + ``openInterest``;
* funding: stored ``funding_rate`` records, collect ``fundingRate``;
* premium (mark / index - 1): stored ``premium_index`` records, collect mark and index klines;
* websocket frames: collect ``ws_ticker_<w>.json``, else stored trades (their ``recv_ts``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ingestd.consumers.schema import open_dataset
from ingestd.report.series import F64, I64, Bars, resample_bars, resample_trades
from ingestd.report.spans import span_ns

Market = Literal["spot", "futures"]
VENUE = {"spot": "binance-spot", "futures": "binance-usdm"}
MS = 1_000_000


@dataclass(frozen=True, slots=True)
class Trades:
    """Trades of one instrument, by exchange time: ``t`` (event time), ``recv`` (receive time)."""

    t: I64
    recv: I64
    price: F64
    qty: F64


@dataclass(frozen=True, slots=True)
class Series:
    """A time series (``t`` ns, sorted) with a caption naming its source."""

    t: I64
    v: F64
    source: str


@dataclass(frozen=True, slots=True)
class Frames:
    """Websocket frames of one stream: receive time, event time, last price, volume, latency."""

    recv: I64
    event: I64
    price: F64
    volume: F64
    """Per frame: the trade quantity, or the window volume's increase for a ticker stream."""
    latency_ms: F64
    source: str


def _i64(values: Any) -> I64:
    return np.asarray(values, dtype=np.int64)


def _f64(values: Any) -> F64:
    return np.asarray(values, dtype=np.float64)


class ReportData:
    """Lazy, cached reads of ``data_dir`` (hive Parquet) and ``collect_dir`` for two symbols."""

    def __init__(
        self,
        data_dir: Path | None,
        collect_dir: Path | None,
        *,
        spot_symbol: str = "BTCUSDT",
        futures_symbol: str = "BTCUSDT",
    ) -> None:
        self.data_dir = data_dir
        self.collect_dir = collect_dir
        self.symbols: dict[Market, str] = {"spot": spot_symbol, "futures": futures_symbol}
        self._tables: dict[tuple[str, Market], pa.Table | None] = {}
        self._docs: dict[tuple[Market, str], Any] = {}

    # -- raw reads ---------------------------------------------------------------------------------

    def _stored(self, channel: str, market: Market) -> pa.Table | None:
        """Stored records of ``channel`` for the market's symbol (read once)."""
        key = (channel, market)
        if key not in self._tables:
            self._tables[key] = self._read_stored(channel, market)
        return self._tables[key]

    def _read_stored(self, channel: str, market: Market) -> pa.Table | None:
        if self.data_dir is None:
            return None
        dataset = open_dataset(self.data_dir, channel)
        if "native" not in dataset.schema.names:
            return None
        table = dataset.to_table()
        mask = pc.and_(
            pc.equal(table["venue"], VENUE[market]), pc.equal(table["native"], self.symbols[market])
        )
        table = table.filter(mask)
        return table if table.num_rows else None

    def document(self, market: Market, name: str) -> dict[str, Any] | None:
        """``<collect>/<market>/<name>.json`` (read once); ``None`` when absent or unreadable."""
        key = (market, name)
        if key not in self._docs:
            doc = None
            if self.collect_dir is not None:
                try:
                    doc = orjson.loads((self.collect_dir / market / f"{name}.json").read_bytes())
                except (OSError, orjson.JSONDecodeError):
                    doc = None
            self._docs[key] = doc if isinstance(doc, dict) else None
        found: dict[str, Any] | None = self._docs[key]
        return found

    def collected(self, market: Market, name: str) -> Any:
        """The payload of a collected endpoint; ``None`` when absent."""
        doc = self.document(market, name)
        return None if doc is None else doc.get("payload")

    # -- accessors ---------------------------------------------------------------------------------

    def trades(self, market: Market) -> Trades | None:
        table = self._stored("trade", market)
        if table is None:
            return None
        # Trade time T; the event time E where a venue sends no T.
        t = _i64(pc.coalesce(table["transaction_ts"], table["exchange_ts"]).to_numpy(zero_copy_only=False))
        order = np.argsort(t, kind="stable")
        return Trades(
            t=t[order],
            recv=_i64(table["recv_ts"].to_numpy())[order],
            price=_f64(table["price"].to_numpy())[order],
            qty=_f64(table["qty"].to_numpy())[order],
        )

    def bars(self, market: Market, bar: int) -> Bars | None:
        """Candles of ``bar`` ns: klines when they are fine enough, else resampled trades."""
        table = self._stored("kline", market)
        if table is not None:
            table = table.filter(pc.equal(table["closed"], True))
            for interval in sorted(set(table["interval"].to_pylist()), key=_interval_ns):
                size = _interval_ns(interval)
                if size and bar % size == 0:
                    rows = table.filter(pc.equal(table["interval"], interval)).sort_by("open_time")
                    base = Bars(
                        _i64(rows["open_time"].to_numpy()),
                        _f64(rows["open"].to_numpy()),
                        _f64(rows["high"].to_numpy()),
                        _f64(rows["low"].to_numpy()),
                        _f64(rows["close"].to_numpy()),
                        _f64(rows["volume"].to_numpy()),
                        size,
                        f"stored klines {interval}",
                    )
                    return resample_bars(base, bar)
        klines = self.collected(market, "klines")
        interval = self._collect_interval(market)
        if isinstance(klines, list) and klines and interval and bar % interval == 0:
            base = Bars(
                _i64([k[0] for k in klines]) * MS,
                _f64([k[1] for k in klines]),
                _f64([k[2] for k in klines]),
                _f64([k[3] for k in klines]),
                _f64([k[4] for k in klines]),
                _f64([k[5] for k in klines]),
                interval,
                "collected klines",
            )
            return resample_bars(base, bar)
        trades = self.trades(market)
        if trades is not None and len(trades.t):
            return resample_trades(trades.t, trades.price, trades.qty, bar, "stored trades")
        return None

    def _collect_interval(self, market: Market) -> int | None:
        doc = self.document(market, "klines")
        params = doc.get("params") if doc is not None else None
        return _interval_ns(str(params.get("interval"))) if isinstance(params, dict) else None

    def closes(self, market: Market) -> Series | None:
        """The finest price series there is: every trade, else 1-minute (or coarser) closes."""
        trades = self.trades(market)
        if trades is not None and len(trades.t):
            return Series(trades.t, trades.price, "stored trades")
        bars = self.bars(market, span_ns("1m"))
        if bars is not None and len(bars):
            return Series(bars.t + bars.bar - 1, bars.close, bars.source)
        return None

    def open_interest(self) -> Series | None:
        table = self._stored("open_interest", "futures")
        if table is not None:
            table = table.sort_by("exchange_ts")
            return Series(
                _i64(table["exchange_ts"].to_numpy()),
                _f64(table["open_interest"].to_numpy()),
                "stored open_interest",
            )
        hist = self.collected("futures", "openInterestHist") or []
        current = self.collected("futures", "openInterest")
        points = [
            (int(r["timestamp"]) * MS, float(r["sumOpenInterest"])) for r in hist if isinstance(r, dict)
        ]
        if isinstance(current, dict) and "openInterest" in current:
            points.append((int(current["time"]) * MS, float(current["openInterest"])))
        if not points:
            return None
        points.sort()
        return Series(
            _i64([p[0] for p in points]), _f64([p[1] for p in points]), "collected openInterestHist"
        )

    def funding(self) -> Series | None:
        table = self._stored("funding_rate", "futures")
        if table is not None:
            table = table.sort_by("exchange_ts")
            return Series(
                _i64(table["exchange_ts"].to_numpy()),
                _f64(table["funding_rate"].to_numpy()),
                "stored funding_rate",
            )
        rows = self.collected("futures", "fundingRate")
        if not isinstance(rows, list) or not rows:
            return None
        rows = sorted(rows, key=lambda r: int(r["fundingTime"]))
        return Series(
            _i64([int(r["fundingTime"]) * MS for r in rows]),
            _f64([float(r["fundingRate"]) for r in rows]),
            "collected fundingRate",
        )

    def premium(self) -> Series | None:
        """Mark price over index price minus 1."""
        table = self._stored("premium_index", "futures")
        if table is not None:
            table = table.sort_by("exchange_ts")
            table = table.filter(pc.is_valid(table["index_price"]))
            mark, index = _f64(table["mark_price"].to_numpy()), _f64(table["index_price"].to_numpy())
            return Series(_i64(table["exchange_ts"].to_numpy()), mark / index - 1.0, "stored premium_index")
        mark, index = (
            self.collected("futures", "markPriceKlines"),
            self.collected("futures", "indexPriceKlines"),
        )
        if not isinstance(mark, list) or not isinstance(index, list) or not mark or not index:
            return None
        by_time = {int(k[0]): float(k[4]) for k in index}
        pairs = [(int(k[0]), float(k[4]) / by_time[int(k[0])] - 1.0) for k in mark if int(k[0]) in by_time]
        if not pairs:
            return None
        return Series(
            _i64([p[0] * MS for p in pairs]), _f64([p[1] for p in pairs]), "collected mark/index klines"
        )

    def frames(self) -> Frames | None:
        """The collected rolling-window ticker frames, else stored trades as they arrived."""
        if self.collect_dir is not None:
            for path in sorted((self.collect_dir / "spot").glob("ws_ticker_*.json")):
                frames = self._ticker_frames(path)
                if frames is not None:
                    return frames
        for market in ("spot", "futures"):
            trades = self.trades(market)
            if trades is not None and len(trades.t):
                order = np.argsort(trades.recv, kind="stable")
                latency = (trades.recv - trades.t).astype(np.float64) / MS
                return Frames(
                    trades.recv[order],
                    trades.t[order],
                    trades.price[order],
                    trades.qty[order],
                    latency[order],
                    f"stored {market} trades",
                )
        return None

    @staticmethod
    def _ticker_frames(path: Path) -> Frames | None:
        try:
            doc = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        rows = [
            f for f in doc.get("payload") or [] if isinstance(f, dict) and isinstance(f.get("data"), dict)
        ]
        if not rows:
            return None
        recv = _i64([f["recv_ts"] for f in rows])
        event = _i64([f["data"]["E"] for f in rows]) * MS
        volume = _f64([float(f["data"]["v"]) for f in rows])
        # The window volume rolls; its increase frame to frame is the volume traded in between.
        increase = np.clip(np.diff(volume, prepend=volume[0]), 0, None)
        return Frames(
            recv,
            event,
            _f64([float(f["data"]["c"]) for f in rows]),
            increase,
            _f64([f["latency_ms"] for f in rows]),
            f"collected {path.stem}",
        )


def _interval_ns(interval: str) -> int:
    try:
        return span_ns(interval)
    except ValueError:
        return 0  # 1w / 1M: not used for intraday candles
