"""REST depth answers: the capture's recorded snapshot, or one rolled forward to the replay position.

With ``resume="restart"`` every connection replays from the start, so the recorded snapshot (the
latest recorded at or before the symbol's replay position, else the first) is the right answer.
With ``resume="continue"`` the sim acts like a live venue: a client that reconnects mid-capture
and re-snapshots needs a book *at the current position*, so the recorded snapshot is rolled
forward through the capture's own depth diffs (Binance's rules: futures apply from the first
diff with ``u >= L``, spot from the first with ``u > L``; zero quantity deletes a level).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ingestd.sim.captures import Market, Snapshot, Timeline


def _parse(body: bytes) -> dict[str, Any]:
    parsed = orjson.loads(body)
    if not isinstance(parsed, dict):
        raise TypeError("depth snapshot body is not an object")
    return parsed


def truncated(body: bytes, limit: int, parsed: dict[str, Any] | None = None) -> bytes:
    """``body`` with at most ``limit`` levels per side; the recorded bytes when nothing is cut."""
    if parsed is None:
        parsed = _parse(body)
    bids, asks = parsed.get("bids") or [], parsed.get("asks") or []
    if len(bids) <= limit and len(asks) <= limit:
        return body
    return orjson.dumps({**parsed, "bids": bids[:limit], "asks": asks[:limit]})


@dataclass(slots=True)
class _Rolled:
    base: Snapshot
    template: dict[str, Any]
    last_id: int
    bids: dict[str, str] = field(default_factory=dict)
    asks: dict[str, str] = field(default_factory=dict)
    next_diff: int = 0
    """Index into the symbol's diff list of the next diff to look at."""
    applied: int = 0
    event_ts: tuple[int, int] | None = None


def _apply(side: dict[str, str], levels: Any) -> None:
    for price, qty in levels:
        if float(qty) == 0.0:
            side.pop(price, None)
        else:
            side[price] = qty


class DepthBooks:
    """Answers ``/depth`` for one timeline; keeps one rolling book per symbol (lazy)."""

    def __init__(self, timeline: Timeline) -> None:
        self._tl = timeline
        self._diffs: dict[tuple[Market, str], list[int]] = {}
        self._rolled: dict[tuple[Market, str], _Rolled] = {}
        self._parsed: dict[int, dict[str, Any]] = {}
        """Recorded snapshot bodies, decoded once (keyed by ``id`` of the timeline's Snapshot)."""

    def _decoded(self, snap: Snapshot) -> dict[str, Any]:
        found = self._parsed.get(id(snap))
        if found is None:
            found = self._parsed[id(snap)] = _parse(snap.body)
        return found

    def has_snapshot(self, market: Market, symbol: str) -> bool:
        return bool(self._tl.snapshots.get((market, symbol)))

    def base(self, market: Market, symbol: str, position: int) -> Snapshot | None:
        """The latest recorded snapshot at or before frame ``position`` (else the first)."""
        snaps = self._tl.snapshots.get((market, symbol))
        if not snaps:
            return None
        chosen = snaps[0]
        if position >= 0:
            at = self._tl.ts[position]
            for snap in snaps:
                if snap.recv_ns <= at:
                    chosen = snap
        return chosen

    def body(self, market: Market, symbol: str, position: int, *, live: bool, limit: int) -> bytes | None:
        """The depth body for ``symbol`` at frame ``position`` (``-1``: nothing sent yet)."""
        base = self.base(market, symbol, position)
        if base is None:
            return None
        if not live or position < 0:
            return truncated(base.body, limit, self._decoded(base))
        rolled = self._roll(market, symbol, base, position)
        if rolled.applied == 0:
            return truncated(base.body, limit, self._decoded(base))
        return self._render(rolled, limit)

    def _diff_indices(self, market: Market, symbol: str) -> list[int]:
        key = (market, symbol)
        found = self._diffs.get(key)
        if found is None:
            wanted = {s for s in self._tl.symbol_sids(market, symbol) if self._tl.streams[s].is_depth_diff}
            found = [i for i, s in enumerate(self._tl.sid) if s in wanted] if wanted else []
            self._diffs[key] = found
        return found

    def _roll(self, market: Market, symbol: str, base: Snapshot, position: int) -> _Rolled:
        key = (market, symbol)
        diffs = self._diff_indices(market, symbol)
        state = self._rolled.get(key)
        if (
            state is None
            or state.base is not base
            or (state.next_diff > 0 and diffs[state.next_diff - 1] > position)
        ):
            template = self._decoded(base)
            state = _Rolled(base=base, template=template, last_id=int(template["lastUpdateId"]))
            state.bids = dict(template.get("bids") or [])
            state.asks = dict(template.get("asks") or [])
            self._rolled[key] = state
        futures = market == "futures"
        snap_id = int(state.template["lastUpdateId"])
        k = state.next_diff
        while k < len(diffs) and diffs[k] <= position:
            data = self._tl.parsed(diffs[k])
            k += 1
            if not isinstance(data, dict) or "u" not in data:
                continue
            final = int(data["u"])
            if state.applied == 0 and (final < snap_id if futures else final <= snap_id):
                continue
            _apply(state.bids, data.get("b") or ())
            _apply(state.asks, data.get("a") or ())
            state.last_id = final
            state.applied += 1
            if "E" in data:
                event = int(data["E"])
                state.event_ts = (event, int(data.get("T", event)))
        state.next_diff = k
        return state

    @staticmethod
    def _render(state: _Rolled, limit: int) -> bytes:
        body = dict(state.template)
        body["lastUpdateId"] = state.last_id
        if state.event_ts is not None and "E" in body:
            body["E"], body["T"] = state.event_ts
        body["bids"] = [list(kv) for kv in sorted(state.bids.items(), key=lambda kv: -float(kv[0]))[:limit]]
        body["asks"] = [list(kv) for kv in sorted(state.asks.items(), key=lambda kv: float(kv[0]))[:limit]]
        return orjson.dumps(body)
