"""The spot rolling-window ticker stream ``<symbol>@ticker_<1h|4h|1d>``, generated from trades.

No genuine capture of this stream exists (docs/binance.md §8.4), so the sim computes it
from a spot capture's own trades, in the documented shape (docs/binance.md §2.3, spot ``1hTicker``)::

    {"e":"1hTicker","E":1723161300000,"s":"BTCUSDT","p":"-12.01000000","P":"-0.019",
     "o":"61837.63000000","h":"61850.00000000","l":"61790.10000000","c":"61825.62000000",
     "w":"61821.43220931","v":"71.20233000","q":"4401814.96321090",
     "O":1723157640000,"C":1723161300000,"F":3735683259,"L":3735690115,"n":6857}

One frame per window per second of exchange time (Binance pushes every 1000 ms); the window
opens on a minute boundary, so it is up to 59 999 ms wider than nominal, as Binance documents.
The frames are merged into the capture itself, received at the receive time of the latest trade
they include (shifted by the event-time difference), so they replay in step with the trades.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import orjson

from ingestd.sim.captures import Capture, wrap
from ingestd.venues.binance.endpoints import stream_kind, stream_symbol

WINDOW_MS: Final = {"1h": 3_600_000, "4h": 14_400_000, "1d": 86_400_000}
"""The windows Binance streams (``<symbol>@ticker_<window>``)."""
_MINUTE_MS: Final = 60_000
_PUSH_MS: Final = 1000


@dataclass(frozen=True, slots=True)
class _Trades:
    """One symbol's trades in capture order (``time`` = trade time ``T``, ms)."""

    recv_ns: list[int]
    event_ms: list[int]
    time: list[int]
    ids: list[int]
    prices: list[float]
    qtys: list[float]
    price_dp: int
    qty_dp: int


def decimals_written(text: str) -> int:
    """Decimals a Binance number string is written with (``"61800.30"`` → 2)."""
    _, dot, frac = text.partition(".")
    return len(frac) if dot else 0


def _collect(capture: Capture, sid: int) -> _Trades | None:
    recv: list[int] = []
    event: list[int] = []
    times: list[int] = []
    ids: list[int] = []
    prices: list[float] = []
    qtys: list[float] = []
    price_dp = qty_dp = 0
    for k, s in enumerate(capture.sid):
        if s != sid:
            continue
        msg = orjson.loads(capture.frames[k])
        data = msg.get("data") if isinstance(msg, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("p"), str):
            continue
        trade_id = data.get("t", data.get("a"))
        t = data.get("T", data.get("E"))
        if not isinstance(trade_id, int) or not isinstance(t, int):
            continue
        if not prices:
            price_dp, qty_dp = decimals_written(data["p"]), decimals_written(str(data.get("q", "0")))
        recv.append(capture.ts[k])
        event.append(int(data.get("E", t)))
        times.append(t)
        ids.append(trade_id)
        prices.append(float(data["p"]))
        qtys.append(float(data.get("q", 0)))
    if not prices:
        return None
    return _Trades(recv, event, times, ids, prices, qtys, price_dp, qty_dp)


def _frames(native: str, window: str, tr: _Trades) -> list[tuple[int, bytes]]:
    """``(recv_ns, combined frame)`` of one window's stream, one per second with trades in it."""
    name = f"{native.lower()}@ticker_{window}"
    span = WINDOW_MS[window]
    n = len(tr.prices)
    order = sorted(range(n), key=lambda k: (tr.time[k], k))
    t = [tr.time[k] for k in order]
    px = [tr.prices[k] for k in order]
    qty = [tr.qtys[k] for k in order]
    out: list[tuple[int, bytes]] = []
    hi: deque[int] = deque()
    lo: deque[int] = deque()
    first = j = 0
    vol = quote = 0.0
    pdp, qdp = tr.price_dp, tr.qty_dp
    event = -(-t[0] // _PUSH_MS) * _PUSH_MS
    while event <= t[-1] + _PUSH_MS:
        while j < n and t[j] <= event:
            while hi and px[hi[-1]] <= px[j]:
                hi.pop()
            hi.append(j)
            while lo and px[lo[-1]] >= px[j]:
                lo.pop()
            lo.append(j)
            vol += qty[j]
            quote += qty[j] * px[j]
            j += 1
        opens = (event - span) // _MINUTE_MS * _MINUTE_MS
        while first < j and t[first] < opens:
            vol -= qty[first]
            quote -= qty[first] * px[first]
            first += 1
        while hi and hi[0] < first:
            hi.popleft()
        while lo and lo[0] < first:
            lo.popleft()
        if first < j:
            o, c = px[first], px[j - 1]
            last = order[j - 1]
            payload = {
                "e": f"{window}Ticker",
                "E": event,
                "s": native,
                "p": f"{c - o:.{pdp}f}",
                "P": f"{(c - o) / o * 100:.3f}",
                "o": f"{o:.{pdp}f}",
                "h": f"{px[hi[0]]:.{pdp}f}",
                "l": f"{px[lo[0]]:.{pdp}f}",
                "c": f"{c:.{pdp}f}",
                "w": f"{quote / vol if vol else c:.{pdp}f}",
                "v": f"{vol:.{qdp}f}",
                "q": f"{quote:.{pdp}f}",
                "O": opens,
                "C": event,
                "F": tr.ids[order[first]],
                "L": tr.ids[last],
                "n": j - first,
            }
            recv = tr.recv_ns[last] + (event - tr.event_ms[last]) * 1_000_000
            out.append((recv, wrap(name, orjson.dumps(payload))))
        event += _PUSH_MS
    out.sort(key=lambda f: f[0])
    return out


def with_window_tickers(capture: Capture, windows: Sequence[str] = tuple(WINDOW_MS)) -> Capture:
    """``capture`` plus the generated ``<symbol>@ticker_<window>`` streams of each spot symbol
    with trades (``@trade``, else ``@aggTrade``). Futures captures come back unchanged: the
    rolling-window ticker stream is spot only."""
    if capture.market != "spot":
        return capture
    sources: dict[str, int] = {}
    for sid, name in enumerate(capture.streams):
        sym, kind = stream_symbol(name), stream_kind(name)
        if sym is None or kind not in ("trade", "aggTrade"):
            continue
        if kind == "trade" or sym not in sources:
            sources[sym] = sid
    extra: list[tuple[int, int, bytes]] = []  # (recv_ns, new stream id, frame)
    streams = list(capture.streams)
    for sym, sid in sources.items():
        trades = _collect(capture, sid)
        if trades is None:
            continue
        native = sym.upper()
        for window in windows:
            name = f"{sym}@ticker_{window}"
            if name in streams:
                continue  # the capture recorded it: replay the real one
            new_sid = len(streams)
            streams.append(name)
            extra.extend((ts, new_sid, frame) for ts, frame in _frames(native, window, trades))
    if not extra:
        return capture
    extra.sort(key=lambda e: e[0])
    original = ((ts, 0, k) for k, ts in enumerate(capture.ts))
    generated = ((ts, 1, k) for k, (ts, _, _) in enumerate(extra))
    merged = Capture(
        capture.name,
        capture.format,
        capture.market,
        streams=streams,
        snapshots=list(capture.snapshots),
        skipped_lines=capture.skipped_lines,
    )
    for ts, source, k in heapq.merge(original, generated):
        merged.ts.append(ts)
        if source == 0:
            merged.sid.append(capture.sid[k])
            merged.frames.append(capture.frames[k])
        else:
            merged.sid.append(extra[k][1])
            merged.frames.append(extra[k][2])
    return merged
