"""Aggregated trades in the sim: the ``<symbol>@aggTrade`` stream and the REST ``aggTrades`` answers.

Binance serves aggregated trades on a websocket stream and on ``GET /fapi/v1/aggTrades`` /
``GET /api/v3/aggTrades`` (``fromId``, ``startTime``, ``endTime``, ``limit`` ≤ 1000; see
docs/binance.md). In the sim both come from one source, the timeline's aggTrade stream, so a
client that backfills a hole from REST gets exactly the payloads the stream would have sent.

Where a capture recorded a symbol's ``@aggTrade`` (the cryptofeed captures), those real frames
are that source. Where it recorded only ``@trade`` (the hftbacktest captures, and the bundled
one), :func:`with_agg_trades` **derives** the stream from the real trades the way Binance
aggregates them: consecutive trades (contiguous trade ids) of one taker order at one price
become one aggregate, which is recognised as the same trade time ``T``, the same price and the
same taker side (``m``). USDⓈ-M fills that are not ``MARKET`` (insurance fund, ADL) are not
aggregated, as Binance documents. The derived payload has the recorded shape (real 2021
captures: futures ``e,E,a,s,p,q,f,l,T,m``, plus today's ``nq``; spot ``e,E,s,a,p,q,f,l,T,m,M``);
``p`` is the trades' own price string, ``q`` (and ``nq``: no RPI trades in a capture) their exact
decimal sum, ``E`` the last fill's event time, and the frame is received when the last fill was::

    {"e":"aggTrade","E":1723161256672,"a":2633291973,"s":"BTCUSDT","p":"61800.20",
     "q":"1.000","nq":"1.000","f":5266583941,"l":5266583943,"T":1723161256671,"m":true}
 Aggregate ids are numbered from half the first
trade id (Binance's aggregate ids run below its trade ids), contiguous like Binance's.
Two taker orders filled at the same price in the same millisecond would be merged into one
aggregate here: the derivation cannot tell them apart (the 2024 trade stream no longer carries
order ids).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import orjson

from ingestd.sim.captures import Capture, Market, Timeline, wrap
from ingestd.sim.window_tickers import decimals_written
from ingestd.venues.binance.endpoints import stream_kind, stream_symbol

MAX_LIMIT: Final = 1000
"""Most rows one ``aggTrades`` request returns (both venues)."""
DEFAULT_LIMIT: Final = 500
HOUR_MS: Final = 3_600_000


def _trade(data: Any) -> tuple[int, int, int, str, str, bool, str | None] | None:
    """``(t, T, E, p, q, m, X)`` of a trade payload; ``None`` when it is not one."""
    if not isinstance(data, dict):
        return None
    tid, t, e, p, q, m = (data.get(k) for k in ("t", "T", "E", "p", "q", "m"))
    if not (isinstance(tid, int) and isinstance(t, int) and isinstance(p, str) and isinstance(q, str)):
        return None
    x = data.get("X")
    return tid, t, e if isinstance(e, int) else t, p, q, bool(m), x if isinstance(x, str) else None


def _aggregate(native: str, market: Market, rows: list[tuple[int, int, int, str, str, bool, str | None]],
               recv: list[int]) -> list[tuple[int, bytes]]:  # fmt: skip
    """``(recv_ns, payload bytes)`` of each aggregate of one symbol's trades (in trade-id order)."""
    out: list[tuple[int, bytes]] = []
    if not rows:
        return out
    next_id = rows[0][0] // 2
    qty_dp = decimals_written(rows[0][4])
    k, n = 0, len(rows)
    while k < n:
        tid, t, _, p, q, m, x = rows[k]
        if market == "futures" and x not in (None, "MARKET"):
            k += 1  # insurance-fund and ADL fills are not aggregated
            continue
        j = k + 1
        total = Decimal(q)
        while j < n:
            nt = rows[j]
            if nt[0] != rows[j - 1][0] + 1 or nt[1] != t or nt[3] != p or nt[5] != m:
                break
            if market == "futures" and nt[6] not in (None, "MARKET"):
                break
            total += Decimal(nt[4])
            j += 1
        last = rows[j - 1]
        qty = f"{total:.{qty_dp}f}"
        if market == "futures":
            payload: dict[str, Any] = {"e": "aggTrade", "E": last[2], "a": next_id, "s": native,
                                       "p": p, "q": qty, "nq": qty, "f": tid, "l": last[0], "T": t,
                                       "m": m}  # fmt: skip
        else:
            payload = {"e": "aggTrade", "E": last[2], "s": native, "a": next_id, "p": p, "q": qty,
                       "f": tid, "l": last[0], "T": t, "m": m, "M": True}  # fmt: skip
        out.append((recv[j - 1], orjson.dumps(payload)))
        next_id += 1
        k = j
    return out


def with_agg_trades(capture: Capture) -> Capture:
    """``capture`` plus a derived ``<symbol>@aggTrade`` stream for every symbol that has recorded
    ``@trade`` frames but no ``@aggTrade`` stream (unchanged when there is none to derive)."""
    trades: dict[str, int] = {}
    has_agg: set[str] = set()
    for sid, name in enumerate(capture.streams):
        sym, kind = stream_symbol(name), stream_kind(name)
        if sym is None:
            continue
        if kind == "aggTrade":
            has_agg.add(sym)
        elif kind == "trade":
            trades.setdefault(sym, sid)
    todo = {sid: sym for sym, sid in trades.items() if sym not in has_agg}
    if not todo:
        return capture
    collected: dict[int, tuple[list[tuple[int, int, int, str, str, bool, str | None]], list[int]]] = {
        sid: ([], []) for sid in todo
    }
    for k, s in enumerate(capture.sid):
        got = collected.get(s)
        if got is None:
            continue
        msg = orjson.loads(capture.frames[k])
        row = _trade(msg.get("data") if isinstance(msg, dict) else None)
        if row is not None:
            got[0].append(row)
            got[1].append(capture.ts[k])
    streams = list(capture.streams)
    extra: list[tuple[int, int, bytes]] = []  # (recv_ns, new stream id, frame)
    for sid, sym in todo.items():
        rows, recv = collected[sid]
        order = sorted(range(len(rows)), key=lambda i: rows[i][0])
        rows = [rows[i] for i in order]
        # A frame cannot be received before the fills it aggregates: keep receive times monotone.
        recv_sorted = [recv[i] for i in order]
        for i in range(1, len(recv_sorted)):
            recv_sorted[i] = max(recv_sorted[i], recv_sorted[i - 1])
        aggs = _aggregate(sym.upper(), capture.market, rows, recv_sorted)
        if not aggs:
            continue
        name = f"{sym}@aggTrade"
        new_sid = len(streams)
        streams.append(name)
        extra.extend((ts, new_sid, wrap(name, payload)) for ts, payload in aggs)
    if not extra:
        return capture
    extra.sort(key=lambda e: e[0])
    merged = Capture(
        capture.name,
        capture.format,
        capture.market,
        streams=streams,
        snapshots=list(capture.snapshots),
        skipped_lines=capture.skipped_lines,
    )
    original = ((ts, 0, k) for k, ts in enumerate(capture.ts))
    derived = ((ts, 1, k) for k, (ts, _, _) in enumerate(extra))
    for ts, source, k in heapq.merge(original, derived):
        merged.ts.append(ts)
        if source == 0:
            merged.sid.append(capture.sid[k])
            merged.frames.append(capture.frames[k])
        else:
            merged.sid.append(extra[k][1])
            merged.frames.append(extra[k][2])
    return merged


@dataclass(slots=True)
class _SymbolAggs:
    """One symbol's aggregates in id order: id, trade time, timeline index, REST row."""

    ids: list[int] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


def rest_row(data: dict[str, Any], market: Market) -> dict[str, Any]:
    """The REST ``aggTrades`` row of a stream payload: ``{a,p,q,f,l,T,m}`` (+ ``M`` on spot,
    + ``nq`` where the payload carries it)."""
    row = {k: data[k] for k in ("a", "p", "q", "f", "l", "T", "m")}
    if "nq" in data:
        row["nq"] = data["nq"]
    if market == "spot":
        row["M"] = data.get("M", True)
    return row


class AggTradeIndex:
    """The aggregates of every symbol of a timeline, for the REST answers (built lazily)."""

    def __init__(self, timeline: Timeline) -> None:
        self._tl = timeline
        self._by_symbol: dict[tuple[Market, str], _SymbolAggs | None] = {}

    def symbol(self, market: Market, native: str) -> _SymbolAggs | None:
        """The aggregates of ``native`` (``None``: the timeline has no aggTrade stream for it)."""
        key = (market, native.upper())
        if key in self._by_symbol:
            return self._by_symbol[key]
        tl = self._tl
        sids = {s for s in tl.symbol_sids(market, native) if tl.streams[s].kind == "aggTrade"}
        found: _SymbolAggs | None = None
        if sids:
            entries: list[tuple[int, int, int, dict[str, Any]]] = []
            for i, s in enumerate(tl.sid):
                if s in sids:
                    data = tl.parsed(i)
                    if isinstance(data, dict) and isinstance(data.get("a"), int):
                        entries.append((data["a"], int(data.get("T", 0)), i, rest_row(data, market)))
            entries.sort(key=lambda e: e[0])
            found = _SymbolAggs(
                [e[0] for e in entries],
                [e[1] for e in entries],
                [e[2] for e in entries],
                [e[3] for e in entries],
            )
        self._by_symbol[key] = found
        return found

    def answer(
        self,
        market: Market,
        native: str,
        *,
        from_id: int | None,
        start_ms: int | None,
        end_ms: int | None,
        limit: int,
        window: tuple[int, int] | None = None,
    ) -> list[dict[str, Any]]:
        """Rows as Binance returns them: from ``from_id`` on; or within ``[start_ms, end_ms]``;
        or the latest ``limit``. ``window`` is the timeline index range ``[lo, hi)`` the venue has
        published (the symbol listed, up to "now"; ``None``: all of it): nothing outside it is
        served."""
        aggs = self.symbol(market, native)
        if aggs is None:
            return []
        limit = max(1, min(limit, MAX_LIMIT))

        def shown(k: int) -> bool:
            return window is None or window[0] <= aggs.index[k] < window[1]

        if from_id is not None:
            k = bisect.bisect_left(aggs.ids, from_id)
            ks = range(k, len(aggs.ids))
        elif start_ms is not None or end_ms is not None:
            lo_t = start_ms if start_ms is not None else 0
            hi_t = end_ms if end_ms is not None else 2**62
            ks = range(len(aggs.ids))
            ks = range(next((k for k in ks if aggs.times[k] >= lo_t), len(aggs.ids)), len(aggs.ids))
            out: list[dict[str, Any]] = []
            for k in ks:
                if aggs.times[k] > hi_t or len(out) >= limit:
                    break
                if shown(k):
                    out.append(aggs.rows[k])
            return out
        else:
            latest = [k for k in range(len(aggs.ids) - 1, -1, -1) if shown(k)][:limit]
            return [aggs.rows[k] for k in reversed(latest)]
        out = []
        for k in ks:
            if shown(k):
                out.append(aggs.rows[k])
                if len(out) >= limit:
                    break
        return out

    def request(
        self, market: Market, query: Mapping[str, str], window_of: Callable[[int], tuple[int, int]]
    ) -> tuple[int, bytes]:
        """``(status, body)`` of ``GET aggTrades?query``, with Binance's errors (``-1102`` no
        symbol, ``-1121`` unknown symbol, ``-1100`` bad number, ``-1127`` USDⓈ-M window of an
        hour or more). ``window_of(stream id)`` is the published range of that stream."""
        symbol = query.get("symbol", "").upper()
        if not symbol:
            msg = "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
            return 400, orjson.dumps({"code": -1102, "msg": msg})
        if symbol not in self._tl.symbols(market):
            return 400, b'{"code":-1121,"msg":"Invalid symbol."}'
        values: dict[str, int | None] = {}
        for key in ("fromId", "startTime", "endTime", "limit"):
            raw = query.get(key)
            if raw is None or raw == "":
                values[key] = None
            elif not raw.isdigit():
                msg = f"Illegal characters found in parameter '{key}'; legal range is '^[0-9]{{1,20}}$'."
                return 400, orjson.dumps({"code": -1100, "msg": msg})
            else:
                values[key] = int(raw)
        start, end = values["startTime"], values["endTime"]
        if market == "futures" and start is not None and end is not None and end - start >= HOUR_MS:
            return 400, b'{"code":-1127,"msg":"More than 1 hours between startTime and endTime."}'
        tl = self._tl
        sids = [s for s in tl.symbol_sids(market, symbol) if tl.streams[s].kind == "aggTrade"]
        rows = self.answer(
            market,
            symbol,
            from_id=values["fromId"],
            start_ms=start,
            end_ms=end,
            limit=values["limit"] or DEFAULT_LIMIT,
            window=window_of(sids[0]) if sids else None,
        )
        return 200, orjson.dumps(rows)
