"""The USDⓈ-M ``<symbol>@aggTrade`` stream, aggregated from a capture's recorded ``@trade``.

Binance documents only aggregated trades on the USDⓈ-M websocket (docs/binance.md §2.3), so
ingestd's default USDⓈ-M channels ask for ``agg_trade``. The bundled capture (hftbacktest,
2024-08-08) recorded ``btcusdt@trade`` and no ``@aggTrade``: without this stream the default run
against the sim would subscribe a stream the sim cannot serve. A USDⓈ-M capture that recorded
``@trade`` but no ``@aggTrade`` of a symbol therefore gains one, built from those trades:

* consecutive trades with the same transaction time ``T``, price and taker side ``m`` form one
  aggregate (one taker order filling several makers at one price; the REST ``aggTrades`` of
  :mod:`ingestd.sim.tape` groups the same way and numbers them the same way);
* ``p`` is the trades' price string, ``q`` (and ``nq``) the exact decimal sum of their
  quantities, ``f``/``l`` the first and last trade id, ``T``/``m`` theirs, ``E`` the last one's;
* each frame is received at the receive time of its last trade, right after it, so it replays
  in step with the trades::

    {"e":"aggTrade","E":1723161256672,"a":2633291973,"s":"BTCUSDT","p":"61800.20",
     "q":"1.000","nq":"1.000","f":5266583941,"l":5266583943,"T":1723161256671,"m":true}

The recorded ``@trade`` stream stays: it is real traffic of 2024, and asking for it on
USDⓈ-M makes the daemon warn that it is undocumented. Spot captures come back unchanged (spot
publishes both streams). Pure: no I/O, no clock.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from decimal import Decimal

import orjson

from ingestd.sim.captures import Capture, wrap
from ingestd.venues.binance.endpoints import stream_kind, stream_symbol


@dataclass(slots=True)
class _Run:
    """Trades being aggregated: the open aggregate's fields so far."""

    native: str
    event: int
    time: int
    price: str
    buyer_maker: bool
    qty: Decimal
    first: int
    last: int
    recv_ns: int

    def matches(self, time: int, price: str, buyer_maker: bool) -> bool:
        return (time, price, buyer_maker) == (self.time, self.price, self.buyer_maker)

    def payload(self, agg_id: int) -> bytes:
        q = format(self.qty, "f")
        return orjson.dumps(
            {
                "e": "aggTrade",
                "E": self.event,
                "a": agg_id,
                "s": self.native,
                "p": self.price,
                "q": q,
                "nq": q,
                "f": self.first,
                "l": self.last,
                "T": self.time,
                "m": self.buyer_maker,
            }
        )


def aggregate(capture: Capture, sid: int, name: str) -> list[tuple[int, bytes]]:
    """``(recv_ns, combined frame)`` of the ``name`` aggTrade stream built from stream ``sid``."""
    out: list[tuple[int, bytes]] = []
    run: _Run | None = None
    base: int | None = None

    def close(r: _Run) -> None:
        assert base is not None
        out.append((r.recv_ns, wrap(name, r.payload(base // 2 + len(out)))))

    for k, s in enumerate(capture.sid):
        if s != sid:
            continue
        data = orjson.loads(capture.frames[k]).get("data")
        if not isinstance(data, dict):
            continue
        tid, t, price, qty = data.get("t"), data.get("T"), data.get("p"), data.get("q")
        if not isinstance(tid, int) or not isinstance(t, int):
            continue
        if not isinstance(price, str) or not isinstance(qty, str):
            continue
        m = bool(data.get("m"))
        if base is None:
            base = tid
        if run is not None and run.matches(t, price, m):
            run.qty += Decimal(qty)
            run.last, run.event, run.recv_ns = tid, int(data.get("E", t)), capture.ts[k]
            continue
        if run is not None:
            close(run)
        native = str(data.get("s", stream_symbol(name) or "")).upper()
        run = _Run(native, int(data.get("E", t)), t, price, m, Decimal(qty), tid, tid, capture.ts[k])
    if run is not None:
        close(run)
    return out


def with_agg_trades(capture: Capture) -> Capture:
    """``capture`` plus a generated ``<symbol>@aggTrade`` stream for each USDⓈ-M symbol that has
    recorded trades and no recorded aggTrade stream; anything else comes back unchanged."""
    if capture.market != "futures":
        return capture
    kinds: dict[str, dict[str, int]] = {}
    for sid, stream in enumerate(capture.streams):
        sym = stream_symbol(stream)
        if sym is not None:
            kinds.setdefault(sym, {})[stream_kind(stream)] = sid
    streams = list(capture.streams)
    extra: list[tuple[int, int, bytes]] = []  # (recv_ns, new stream id, frame)
    for sym, by_kind in kinds.items():
        if "trade" not in by_kind or "aggTrade" in by_kind:
            continue  # nothing to aggregate, or the capture recorded the real stream: replay that
        name = f"{sym}@aggTrade"
        frames = aggregate(capture, by_kind["trade"], name)
        if frames:
            new_sid = len(streams)
            streams.append(name)
            extra.extend((ts, new_sid, frame) for ts, frame in frames)
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
    # On equal receive times the recorded frame goes first: an aggregate follows its last trade.
    original = ((ts, 0, k) for k, ts in enumerate(capture.ts))
    generated = ((ts, 1, k) for k, (ts, _, _) in enumerate(extra))
    for ts, source, k in heapq.merge(original, generated):
        merged.ts.append(ts)
        if source == 0:
            merged.sid.append(capture.sid[k])
            merged.frames.append(capture.frames[k])
        else:
            merged.sid.append(extra[k][1])
            merged.frames.append(extra[k][2])
    return merged
