"""What ``ingestd collect`` writes: per-endpoint JSON documents, Parquet tables, ``metrics.json``.

Layout of ``--out DIR``::

    DIR/spot/<name>.json         {"retrieved_at", "endpoint", "params", "elapsed_s", "used_weight",
                                  "payload"}
    DIR/spot/<name>.parquet      tabular payloads (klines, trades, funding, open interest, ratios …)
    DIR/futures/…                the same for USDⓈ-M
    DIR/spot/ws_ticker_<w>.json  with --ws-seconds: every frame with its receive time and latency
    DIR/metrics.json             per call: latency, items, bytes, ok/error (see CallResult)

Every file is written to a temporary name in its directory and renamed into place, so a crash
leaves complete files only. Parquet columns: kline arrays get Binance's column names
(:data:`~ingestd.collect.endpoints.KLINE_COLUMNS`); object rows keep their keys, with decimal
strings as float64, times (``time``, ``timestamp``, ``*Time``) as int64 ms, other values as they
are (nested values as JSON text).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from ingestd.collect.endpoints import KLINE_COLUMNS, TableKind

Status = Literal["ok", "error", "skipped"]

AGG_TRADE_NAMES: Mapping[str, str] = {
    "a": "agg_id",
    "p": "price",
    "q": "qty",
    "nq": "normal_qty",
    "f": "first_trade_id",
    "l": "last_trade_id",
    "T": "time",
    "m": "is_buyer_maker",
    "M": "is_best_match",
}
"""aggTrades keys → column names (``m`` and ``M`` would clash in case-insensitive readers)."""


def iso_ns(ns: int) -> str:
    """ns epoch → ISO 8601 UTC with milliseconds (``2024-08-09T00:00:01.271Z``)."""
    dt = datetime.fromtimestamp(ns / 1e9, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


@dataclass(slots=True)
class CallResult:
    """One endpoint of a run, as ``metrics.json`` lists it."""

    market: str
    name: str
    endpoint: str
    params: dict[str, str]
    status: Status
    ok: bool = False
    http_status: int | None = None
    latency_s: float | None = None
    """Time of the HTTP exchange that answered (send → body read)."""
    total_s: float = 0.0
    """Including waits for the weight budget and retries."""
    weight: int = 0
    used_weight: int | None = None
    items: int | None = None
    bytes: int | None = None
    file: str | None = None
    parquet: str | None = None
    rows: int | None = None
    error: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class StreamResult:
    """The rolling-window ticker stream of a run (``--ws-seconds``)."""

    stream: str
    url: str
    seconds: float
    status: Status = "error"
    ok: bool = False
    frames: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    """min / median / max event→receive latency."""
    file: str | None = None
    parquet: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_items(payload: Any) -> int:
    """Rows of a payload: list length; exchangeInfo symbols; depth levels; else 1."""
    if isinstance(payload, list):
        return len(payload)
    if isinstance(payload, dict):
        if isinstance(payload.get("symbols"), list):
            return len(payload["symbols"])
        if isinstance(payload.get("bids"), list) and isinstance(payload.get("asks"), list):
            return len(payload["bids"]) + len(payload["asks"])
    return 1


def _is_time(key: str) -> bool:
    return key in ("time", "timestamp", "T", "E") or key.endswith(("Time", "_time", "_ts"))


def _float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _column(key: str, values: list[Any]) -> pa.Array:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.bool_())
    if (
        _is_time(key)
        and present
        and all(
            (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and v.isdigit())
            for v in present
        )
    ):
        return pa.array([None if v is None else int(v) for v in values], type=pa.int64())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.int64())
    floats = [None if v is None else _float(v) for v in values]
    if present and all(f is not None for f, v in zip(floats, values, strict=True) if v is not None):
        return pa.array(floats, type=pa.float64())
    texts = [None if v is None else (v if isinstance(v, str) else orjson.dumps(v).decode()) for v in values]
    return pa.array(texts, type=pa.string())


def records_table(
    rows: Sequence[Mapping[str, Any]], rename: Mapping[str, str] | None = None
) -> pa.Table | None:
    """Object rows → a table (keys in first-seen order; see the module doc for types)."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    if not keys:
        return None
    names = [rename.get(k, k) if rename else k for k in keys]
    columns = [_column(k, [row.get(k) for row in rows]) for k in keys]
    return pa.Table.from_arrays(columns, names=names)


def klines_table(rows: Sequence[Sequence[Any]]) -> pa.Table:
    """Kline arrays → a table with :data:`KLINE_COLUMNS` (Binance's trailing "ignore" dropped)."""
    arrays = [
        pa.array([int(r[i]) for r in rows], type=pa.int64())
        if kind == "int"
        else pa.array([float(r[i]) for r in rows], type=pa.float64())
        for i, (_, kind) in enumerate(KLINE_COLUMNS)
    ]
    return pa.Table.from_arrays(arrays, names=[n for n, _ in KLINE_COLUMNS])


def payload_table(kind: TableKind, payload: Any, *, name: str = "") -> pa.Table | None:
    """The Parquet table of a tabular payload; ``None`` when it has no rows or no tabular shape."""
    if kind == "klines":
        if isinstance(payload, list) and all(isinstance(r, list) and len(r) >= 11 for r in payload):
            return klines_table(payload)
        return None
    rows = [payload] if isinstance(payload, dict) else payload
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return None
    return records_table(rows, AGG_TRADE_NAMES if name == "aggTrades" else None)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet(path: Path, table: pa.Table) -> None:
    """Write ``table`` to ``path`` (zstd) through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def document(
    *,
    recv_ns: int,
    endpoint: str,
    params: Mapping[str, Any],
    elapsed_s: float,
    used_weight: int | None,
    payload: Any,
) -> bytes:
    """The per-endpoint JSON document."""
    doc = {
        "retrieved_at": iso_ns(recv_ns),
        "endpoint": endpoint,
        "params": dict(params),
        "elapsed_s": round(elapsed_s, 6),
        "used_weight": used_weight,
        "payload": payload,
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)
