"""Fresh ids for looped replays (pure: no I/O, no clock).

A looping replay sends the same capture again and again. A client that drops records at or below
the highest id it has seen would drop every pass after the first (ingestd takes each pass for
ids that restarted: it stores it behind an ``id_reset`` gap record, and its books resync). With
``loop_shift`` the sim moves every id and time of pass ``n`` forward by ``n`` strides, so each
pass looks like new live data, as a long soak run wants:

* times (``E``, ``T``, kline ``t``/``T``) by a whole number of minutes covering the capture,
  so kline open times stay on minute boundaries;
* book update ids (depth ``U``/``u``/``pu``, bookTicker ``u``, REST ``lastUpdateId``) by the
  span of update ids in the capture, so pass ``n+1`` never overlaps pass ``n`` (the first diff
  of a pass does not continue the last one: a client's book resyncs once per pass, from a
  REST snapshot shifted the same way);
* trade ids (trade ``t``, aggTrade ``f``/``l``, kline ``f``/``L``) and aggregate ids (``a``)
  by their own spans **per symbol** (Binance numbers them per symbol): pass ``n+1`` of a symbol
  continues its pass ``n`` with the next id, so a client that checks id continuity (trade
  backfill) sees no hole at a pass boundary.

``-1`` ids (Binance's "none": ``pu`` of a first event, kline ``f`` with no trades) stay ``-1``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson

_MINUTE_MS: Final = 60_000
_UPDATE_KEYS: Final = ("U", "u", "pu")
_TIME_KEYS: Final = ("E", "T")


def _ints(values: Iterable[Any]) -> list[int]:
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0]


@dataclass(frozen=True, slots=True)
class LoopShift:
    """How far ids and times move per pass (see the module docstring)."""

    time_ms: int
    update_ids: int
    trade_ids: dict[str, int]
    """Per native symbol (upper case)."""
    agg_ids: dict[str, int]
    """Per native symbol (upper case)."""

    @classmethod
    def measure(cls, frames: Iterable[bytes], snapshots: Iterable[bytes], span_ns: int) -> LoopShift:
        """Strides covering every id in ``frames`` (combined-stream frames) and ``snapshots``
        (REST depth bodies); ``span_ns`` is the capture's length in receive time."""
        lo: dict[str, int] = {}
        hi: dict[str, int] = {}

        def note(kind: str, values: Iterable[Any]) -> None:
            for v in _ints(values):
                lo[kind] = min(lo.get(kind, v), v)
                hi[kind] = max(hi.get(kind, v), v)

        def sym(data: dict[str, Any]) -> str:
            s = data.get("s")
            return s.upper() if isinstance(s, str) else ""

        for frame in frames:
            data = orjson.loads(frame).get("data")
            if not isinstance(data, dict):
                continue
            event = data.get("e")
            note("time", [data.get("E")])
            if event in ("depthUpdate", "bookTicker"):
                note("update", [data.get(k) for k in _UPDATE_KEYS])
            elif event == "trade":
                note("trade:" + sym(data), [data.get("t")])
            elif event == "aggTrade":
                note("agg:" + sym(data), [data.get("a")])
                note("trade:" + sym(data), [data.get("f"), data.get("l")])
            elif event == "kline" and isinstance(data.get("k"), dict):
                note("trade:" + sym(data), [data["k"].get("f"), data["k"].get("L")])
        for body in snapshots:
            snap = orjson.loads(body)
            if isinstance(snap, dict):
                note("update", [snap.get("lastUpdateId")])

        def stride(kind: str) -> int:
            return hi[kind] - lo[kind] + 1 if kind in lo else 1

        # Whole minutes longer than both the receive-time and the event-time span.
        minutes = max(span_ns // 1_000_000, stride("time")) // _MINUTE_MS + 1
        per_symbol = {
            kind: {k.partition(":")[2]: stride(k) for k in lo if k.startswith(kind + ":")}
            for kind in ("trade", "agg")
        }
        return cls(minutes * _MINUTE_MS, stride("update"), per_symbol["trade"], per_symbol["agg"])

    def frame(self, payload: bytes, n: int) -> bytes:
        """``payload`` (a combined-stream frame or a bare one) as pass ``n`` sends it."""
        if n == 0:
            return payload
        msg = orjson.loads(payload)
        if not isinstance(msg, dict):
            return payload
        data = msg.get("data") if "stream" in msg else msg
        if isinstance(data, dict):
            self._event(data, n)
        return orjson.dumps(msg)

    def snapshot(self, body: bytes, n: int) -> bytes:
        """A REST depth body as pass ``n`` answers it."""
        if n == 0:
            return body
        snap = orjson.loads(body)
        if not isinstance(snap, dict):
            return body
        _add(snap, ("lastUpdateId",), n * self.update_ids)
        _add(snap, _TIME_KEYS, n * self.time_ms)
        return orjson.dumps(snap)

    def _event(self, data: dict[str, Any], n: int) -> None:
        event = data.get("e")
        _add(data, _TIME_KEYS, n * self.time_ms)
        if event in ("depthUpdate", "bookTicker"):
            _add(data, _UPDATE_KEYS, n * self.update_ids)
        s = data.get("s")
        native = s.upper() if isinstance(s, str) else ""
        trades = self.trade_ids.get(native, 1)
        if event == "trade":
            _add(data, ("t",), n * trades)
        elif event == "aggTrade":
            _add(data, ("a",), n * self.agg_ids.get(native, 1))
            _add(data, ("f", "l"), n * trades)
        elif event == "kline" and isinstance(data.get("k"), dict):
            k = data["k"]
            _add(k, ("t", "T"), n * self.time_ms)
            _add(k, ("f", "L"), n * trades)


def _add(obj: dict[str, Any], keys: Iterable[str], delta: int) -> None:
    for key in keys:
        v = obj.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            obj[key] = v + delta
