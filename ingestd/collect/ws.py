"""``--ws-seconds``: record the spot rolling-window ticker stream ``<symbol>@ticker_<window>``.

Every frame is kept with its receive time (ns wall clock) and the event→receive latency
(receive time minus the payload's ``E``, in ms; it includes any clock offset between this host and
Binance, and on a replayed capture the age of the recording). Frames are held in memory, at most
:data:`MAX_FRAMES` (Binance pushes one per second).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from typing import Any, Final

import orjson

from ingestd.collect.output import StreamResult, iso_ns
from ingestd.errors import TransportError
from ingestd.producers.transport import AiohttpTransport
from ingestd.venues.binance.endpoints import SPOT

log = logging.getLogger("ingestd.collect")

MAX_FRAMES: Final = 100_000
CONNECT_TIMEOUT_S: Final = 10.0

TICKER_NAMES: Final = {
    "e": "event",
    "E": "event_time",
    "s": "symbol",
    "p": "price_change",
    "P": "price_change_pct",
    "o": "open",
    "h": "high",
    "l": "low",
    "c": "last_price",
    "w": "weighted_avg_price",
    "v": "volume",
    "q": "quote_volume",
    "O": "open_time",
    "C": "close_time",
    "F": "first_trade_id",
    "L": "last_trade_id",
    "n": "trades",
}
"""Rolling-window ticker keys → Parquet column names (``p``/``P`` would clash in DuckDB)."""


def stream_name(symbol: str, window: str) -> str:
    return f"{symbol.lower()}@ticker_{window}"


def stream_url(ws_url: str, name: str) -> str:
    """The spot combined-stream URL for one stream (spot is not routed)."""
    return f"{ws_url.rstrip('/')}/stream?streams={name}"


def frame_row(frame: dict[str, Any]) -> dict[str, Any]:
    """A stored frame → one Parquet row: receive time, latency, the ticker fields renamed."""
    data = frame["data"]
    row: dict[str, Any] = {"recv_ts": frame["recv_ts"], "latency_ms": frame["latency_ms"]}
    if isinstance(data, dict):
        row.update({TICKER_NAMES.get(str(k), str(k)): v for k, v in data.items()})
    return row


async def record_stream(
    ws_url: str, symbol: str, window: str, seconds: float
) -> tuple[StreamResult, list[Any]]:
    """Connect, keep every frame for ``seconds``, close. Never raises for a stream failure: the
    result carries the error (an empty recording is an error too: the stream was silent)."""
    name = stream_name(symbol, window)
    url = stream_url(ws_url, name)
    result = StreamResult(stream=name, url=url, seconds=seconds)
    frames: list[Any] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    transport = AiohttpTransport(ping_interval_s=SPOT.ping_interval_s)
    try:
        conn = await transport.connect(url, CONNECT_TIMEOUT_S)
    except TransportError as exc:
        result.error = str(exc)
        return result, frames
    log.info("streaming %s for %g s", url, seconds)
    deadline = started + seconds
    closed_early = False
    try:
        while len(frames) < MAX_FRAMES and (left := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(left):
                    data = await conn.recv()
            except TimeoutError:
                break
            if data is None:
                closed_early = True
                break
            recv_ns = time.time_ns()
            result.bytes += len(data)
            try:
                msg = orjson.loads(data)
            except orjson.JSONDecodeError:
                frames.append(
                    {
                        "recv_ts": recv_ns,
                        "received_at": iso_ns(recv_ns),
                        "latency_ms": None,
                        "raw": data.decode("utf-8", "replace"),
                    }
                )
                continue
            payload = msg.get("data", msg) if isinstance(msg, dict) else msg
            event = payload.get("E") if isinstance(payload, dict) else None
            latency = recv_ns / 1e6 - event if isinstance(event, int) else None
            frames.append(
                {
                    "recv_ts": recv_ns,
                    "received_at": iso_ns(recv_ns),
                    "latency_ms": None if latency is None else round(latency, 3),
                    "data": payload,
                }
            )
    except TransportError as exc:
        result.error = str(exc)
    finally:
        await conn.close()
    result.elapsed_s = round(loop.time() - started, 3)
    result.frames = len(frames)
    lat = [f["latency_ms"] for f in frames if f.get("latency_ms") is not None]
    if lat:
        result.latency_ms = {"min": min(lat), "median": statistics.median(lat), "max": max(lat)}
    if result.error is None and not frames:
        result.error = f"no frame in {seconds:g} s" + (" (closed by the server)" if closed_early else "")
    if result.error is None:
        result.status, result.ok = "ok", True
    return result, frames
