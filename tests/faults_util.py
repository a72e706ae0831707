"""Helpers for the fault-matrix tests: run the daemon against the sim, and hold storage up to the
capture the sim replayed, id by id and field by field.

The ground truth is the capture itself: every payload of every stream, keyed by the id the
daemon deduplicates on (depth ``u``, bookTicker ``u``, trade ``t``, aggTrade ``a``, kline
``(k.t, E)``). Storage is read back through :func:`ingestd.consumers.schema.open_dataset`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ingestd.app import Daemon
from ingestd.backoff import Backoff
from ingestd.config import Settings, StreamSettings
from ingestd.consumers.schema import open_dataset
from ingestd.sim import SimVenue
from ingestd.sim.captures import Capture, load_capture
from ingestd.venues.binance.endpoints import stream_kind, stream_symbol
from tests.e2e import settings_for
from tests.ops import wait_for as until
from tests.realdata import CF, need

CF_FUTURES = CF / "2021-10_head" / "BINANCE_FUTURES.ws.1.0"
"""Real USDⓈ-M capture (cryptofeed sample data, 2021-07-22): 4 symbols, 30 s, 1,535 frames of
depth@100ms, bookTicker, aggTrade and kline_1m, plus a REST snapshot per symbol (http.0.0)."""
CF_CHANNELS = "agg_trade,book_ticker,depth_diff,kline"
MS = 1_000_000

KIND_CHANNEL: dict[str, str] = {
    "depth": "depth_diff",
    "bookTicker": "book_ticker",
    "aggTrade": "agg_trade",
    "trade": "trade",
    "kline_1m": "kline",
}
"""Capture stream kind → the channel its records are stored under."""

Key = int | tuple[int, int]
"""A record's id: an update/trade/aggregate id, or a kline's ``(open_time, exchange_ts)``."""


def real_capture(path: Path) -> Path:
    """``path``, which must exist (tests/data holds every capture; a missing one fails)."""
    return need(path)


def payload_key(channel: str, d: Mapping[str, Any]) -> Key:
    """The id the daemon orders (and deduplicates) a payload of ``channel`` by."""
    if channel in ("depth_diff", "book_ticker"):
        return int(d["u"])
    if channel == "trade":
        return int(d["t"])
    if channel == "agg_trade":
        return int(d["a"])
    if channel == "kline":
        return (int(d["k"]["t"]) * MS, int(d["E"]) * MS)
    raise KeyError(channel)


def row_key(channel: str, row: Mapping[str, Any]) -> Key:
    """The same id read from a stored row."""
    if channel == "depth_diff":
        return int(row["final_update_id"])
    if channel == "book_ticker":
        return int(row["update_id"])
    if channel == "trade":
        return int(row["trade_id"])
    if channel == "agg_trade":
        return int(row["agg_id"])
    if channel == "kline":
        return (int(row["open_time"]), int(row["exchange_ts"]))
    raise KeyError(channel)


def _levels(side: Iterable[Any]) -> list[tuple[float, float]]:
    return [(float(p), float(q)) for p, q in side]


def expected_row(channel: str, d: Mapping[str, Any]) -> dict[str, Any]:
    """The stored columns a real payload must produce (prices as floats, times in ns)."""
    out: dict[str, Any] = {"native": d["s"], "exchange_ts": int(d["E"]) * MS}
    if channel == "depth_diff":
        out |= {
            "first_update_id": d["U"],
            "final_update_id": d["u"],
            "prev_final_update_id": d.get("pu"),
            "bids": _levels(d["b"]),
            "asks": _levels(d["a"]),
            "transaction_ts": int(d["T"]) * MS if "T" in d else None,
        }
    elif channel == "book_ticker":
        out |= {
            "update_id": d["u"],
            "bid_price": float(d["b"]),
            "bid_qty": float(d["B"]),
            "ask_price": float(d["a"]),
            "ask_qty": float(d["A"]),
        }
    elif channel == "agg_trade":
        out |= {
            "agg_id": d["a"],
            "first_trade_id": d["f"],
            "last_trade_id": d["l"],
            "price": float(d["p"]),
            "qty": float(d["q"]),
            "is_buyer_maker": d["m"],
            "transaction_ts": int(d["T"]) * MS,
        }
    elif channel == "trade":
        out |= {
            "trade_id": d["t"],
            "price": float(d["p"]),
            "qty": float(d["q"]),
            "is_buyer_maker": d["m"],
            "transaction_ts": int(d["T"]) * MS,
        }
    elif channel == "kline":
        k = d["k"]
        out |= {
            "interval": k["i"],
            "open_time": int(k["t"]) * MS,
            "close_time": int(k["T"]) * MS,
            "open": float(k["o"]),
            "high": float(k["h"]),
            "low": float(k["l"]),
            "close": float(k["c"]),
            "volume": float(k["v"]),
            "trades": k["n"],
            "closed": k["x"],
        }
    return out


def _stored_row(row: Mapping[str, Any], want: Mapping[str, Any]) -> dict[str, Any]:
    got = {k: row[k] for k in want}
    for side in ("bids", "asks"):
        if side in got:
            got[side] = [(lv["price"], lv["qty"]) for lv in got[side]]
    return got


@dataclass
class CaptureTruth:
    """What a capture holds, per ``(channel, native)``: payloads in capture order."""

    capture: Capture
    payloads: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    streams: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Capture stream name → ``(channel, native)``."""
    order: dict[tuple[str, str, Key], int] = field(default_factory=dict)
    """``(channel, native, id)`` → position of its frame in the capture."""

    @classmethod
    def load(cls, path: Path) -> CaptureTruth:
        cap = load_capture(path)
        truth = cls(cap)
        for name in cap.streams:
            channel = KIND_CHANNEL[stream_kind(name)]
            truth.streams[name] = (channel, (stream_symbol(name) or "").upper())
        for i, (sid, frame) in enumerate(zip(cap.sid, cap.frames, strict=True)):
            channel, native = truth.streams[cap.streams[sid]]
            data = orjson.loads(frame)["data"]
            truth.payloads.setdefault((channel, native), []).append(data)
            truth.order[(channel, native, payload_key(channel, data))] = i
        return truth

    @property
    def natives(self) -> list[str]:
        return sorted({n for _, n in self.payloads})

    def count(self, channel: str | None = None) -> int:
        return sum(len(v) for (c, _), v in self.payloads.items() if channel in (None, c))

    def keys(self, channel: str, native: str) -> list[Key]:
        return [payload_key(channel, d) for d in self.payloads.get((channel, native), [])]

    def by_key(self, channel: str, native: str) -> dict[Key, dict[str, Any]]:
        return {payload_key(channel, d): d for d in self.payloads.get((channel, native), [])}

    def channels(self) -> set[str]:
        return {c for c, _ in self.payloads}


def read_rows(data_dir: Path, channel: str) -> list[dict[str, Any]]:
    """Every stored row of ``channel`` (``[]`` when nothing was stored)."""
    if not any(data_dir.glob(f"venue=*/channel={channel}")):
        return []
    rows: list[dict[str, Any]] = open_dataset(data_dir, channel).to_table().to_pylist()
    return rows


def stored_keys(data_dir: Path, channel: str) -> dict[str, list[Key]]:
    """Stored ids per native symbol, in file order."""
    out: dict[str, list[Key]] = {}
    for row in read_rows(data_dir, channel):
        out.setdefault(row["native"], []).append(row_key(channel, row))
    return out


def assert_storage_is_capture(
    data_dir: Path,
    truth: CaptureTruth,
    *,
    channels: Iterable[str] | None = None,
    missing: Mapping[tuple[str, str], set[Key]] | None = None,
) -> dict[str, int]:
    """Every payload of the capture is stored exactly once (no gap, no duplicate), except the
    ``missing`` keys, and every stored row equals its payload field by field. Returns rows per
    channel."""
    missing = missing or {}
    counts: dict[str, int] = {}
    for channel in sorted(set(channels) if channels is not None else truth.channels()):
        rows = read_rows(data_dir, channel)
        counts[channel] = len(rows)
        per: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            per.setdefault(row["native"], []).append(row)
        natives = {n for c, n in truth.payloads if c == channel} | set(per)
        for native in sorted(natives):
            want_keys = [
                k for k in truth.keys(channel, native) if k not in missing.get((channel, native), set())
            ]
            got = per.get(native, [])
            got_keys = [row_key(channel, r) for r in got]
            dupes = [k for k, n in Counter(got_keys).items() if n > 1]
            assert not dupes, f"{channel} {native}: stored twice: {dupes[:5]}"
            lost = set(want_keys) - set(got_keys)
            extra = set(got_keys) - set(want_keys)
            assert not lost, (
                f"{channel} {native}: {len(lost)} of {len(want_keys)} lost, e.g. {sorted(lost)[:5]}"
            )
            assert not extra, (
                f"{channel} {native}: {len(extra)} stored that should not be: {sorted(extra)[:5]}"
            )
            payloads = truth.by_key(channel, native)
            for row in got:
                want = expected_row(channel, payloads[row_key(channel, row)])
                if row.get("source") == "rest":  # a backfilled trade: REST gives no event time
                    want["exchange_ts"] = None
                assert _stored_row(row, want) == want, (channel, native, row_key(channel, row))
    return counts


def assert_only_the_tail_was_lost(
    data_dir: Path, truth: CaptureTruth, last_sent: Mapping[str, int], channels: Iterable[str]
) -> int:
    """Storage holds the capture except a run of frames a failed socket sent after the last one
    the daemon read: every missing frame was sent by that socket (ordinal at most
    ``last_sent[stream]``, the venue's ``ConnectionStats.last``) and comes after every kept frame
    of it in capture order. Returns how many frames were lost."""
    channels = list(channels)
    stream_of = {v: k for k, v in truth.streams.items()}
    missing: dict[tuple[str, str], set[Key]] = {}
    lost: list[tuple[str, str, Key]] = []
    kept_old: list[tuple[str, str, Key]] = []
    for channel in channels:
        stored = {n: set(keys) for n, keys in stored_keys(data_dir, channel).items()}
        for ch, native in truth.payloads:
            if ch != channel:
                continue
            last = last_sent.get(stream_of[(ch, native)], -1)
            for ordinal, key in enumerate(truth.keys(ch, native)):
                if key in stored.get(native, set()):
                    if ordinal <= last:
                        kept_old.append((ch, native, key))
                    continue
                assert ordinal <= last, f"{ch} {native} #{ordinal} lost but never sent by the failed socket"
                missing.setdefault((ch, native), set()).add(key)
                lost.append((ch, native, key))
    if lost and kept_old:
        assert max(truth.order[x] for x in kept_old) < min(truth.order[x] for x in lost)
    assert_storage_is_capture(data_dir, truth, channels=channels, missing=missing)
    return len(lost)


def gaps(data_dir: Path) -> list[dict[str, Any]]:
    """The stored gap log, oldest first."""
    return sorted(read_rows(data_dir, "gap"), key=lambda g: (g["started_ts"], g["recv_ts"]))


def closed_trade_holes(data_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split the gap log into trade holes and the rest, asserting every hole (``trade_gap``) is
    closed by a ``backfill`` record with the same range and count, and none is ``unfilled``.

    A reconnect may lose trades the failed socket had sent behind its last read frame; the
    backfill fetches them from REST, so storage still holds every trade of the capture."""
    holes: list[dict[str, Any]] = []
    other: list[dict[str, Any]] = []
    done: dict[tuple[Any, ...], dict[str, Any]] = {}
    for g in gaps(data_dir):
        if g["kind"] == "trade_gap":
            holes.append(g)
        elif g["kind"] == "backfill":
            done[(g["symbol"], g["first_update_id"], g["final_update_id"], g["started_ts"])] = g
        else:
            other.append(g)
    assert [g for g in other if g["kind"] == "unfilled"] == []
    for h in holes:
        closing = done.pop((h["symbol"], h["first_update_id"], h["final_update_id"], h["started_ts"]))
        assert closing["count"] == h["count"] == h["final_update_id"] - h["first_update_id"] + 1
        assert (closing["ended_ts"], closing["data_channel"]) == (h["ended_ts"], h["data_channel"])
        assert h["last_update_id"] == h["first_update_id"] - 1
    assert done == {}, f"backfills that close no hole: {list(done.values())}"
    return holes, other


# --------------------------------------------------------------------------- running


def fault_settings(sim: SimVenue, data_dir: Path, **over: Any) -> Settings:
    """Settings for a test run: fast reconnects, no clock polling, no health port."""
    base: dict[str, Any] = {
        "channels": CF_CHANNELS,
        "clock": {"enabled": False},
        "health": {"port": 0},
        "streams": {"backoff_initial_s": 0.05, "backoff_max_s": 0.2},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return settings_for(sim.rest_url, sim.ws_url, data_dir, **base)


class EventTimes:
    """When each connection-event count of a running daemon first reached each value.

    Sampled every ``period`` seconds from ``Daemon.stats()["connection_events"]`` (the public
    counters), so a time is at most one period late.
    """

    def __init__(self, daemon: Daemon, period: float = 0.005) -> None:
        self.daemon = daemon
        self.period = period
        self.times: dict[tuple[str, int], float] = {}
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        seen: dict[str, int] = {}
        while True:
            now = time.monotonic()
            for kind, n in self.daemon.stats()["connection_events"].items():
                for i in range(seen.get(kind, 0) + 1, n + 1):
                    self.times[(kind, i)] = now
                seen[kind] = n
            await asyncio.sleep(self.period)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-times")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def at(self, kind: str, n: int = 1) -> float | None:
        return self.times.get((kind, n))

    def count(self, kind: str) -> int:
        """Events of ``kind`` seen so far (as sampled: each one has its time in :meth:`at`)."""
        return max((n for k, n in self.times if k == kind), default=0)


@contextlib.asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[EventTimes]:
    """Run ``daemon`` in the background; on exit stop it and require exit code 0."""
    task = asyncio.create_task(daemon.run(), name="daemon")
    events = EventTimes(daemon)
    events.start()
    try:
        yield events
    finally:
        await events.close()
        daemon.request_stop("test done")
        try:
            code = await asyncio.wait_for(task, 30)
        finally:
            if not task.done():
                task.cancel()
    assert code == 0, f"daemon exited with {code}"


@dataclass
class BackoffDraws:
    """Every reconnect delay the daemon's websocket backoffs drew (a spy on ``Backoff``).

    Whether a delay was drawn, and how long it was, is what a reconnect's pacing means; how many
    milliseconds the reconnect then took depends on the machine and is never asserted.
    """

    initial_s: float
    max_s: float
    delays: list[float] = field(default_factory=list)

    @classmethod
    @contextlib.contextmanager
    def spy(cls, settings: Settings | StreamSettings) -> Iterator[BackoffDraws]:
        """Record draws of backoffs paced like these stream settings (REST retries are not)."""
        streams = settings.streams if isinstance(settings, Settings) else settings
        draws = cls(streams.backoff_initial_s, streams.backoff_max_s)
        original = Backoff.next_delay

        def next_delay(self: Backoff) -> float:
            delay = original(self)
            if (self.initial_s, self.max_s) == (draws.initial_s, draws.max_s):
                draws.delays.append(delay)
            return delay

        Backoff.next_delay = next_delay  # type: ignore[method-assign]
        try:
            yield draws
        finally:
            Backoff.next_delay = original  # type: ignore[method-assign]


class RequestTimes:
    """When the sim answered each request of one REST path (sampled every ``period`` seconds)."""

    def __init__(self, sim: SimVenue, path: str, period: float = 0.005) -> None:
        self.sim = sim
        self.path = path
        self.period = period
        self.times: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            n = self.sim.stats().rest_requests.get(self.path, 0)
            now = time.monotonic()
            self.times.extend([now] * (n - len(self.times)))
            await asyncio.sleep(self.period)

    async def __aenter__(self) -> RequestTimes:
        self._task = asyncio.create_task(self._run(), name=f"requests:{self.path}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def received_all(sim: SimVenue, daemon: Daemon) -> bool:
    """The daemon has read every data frame the sim has sent so far (and at least one)."""
    sent = sum(sim.stats().frames_sent.values())
    streams = daemon.streams.stats() if daemon.streams is not None else None
    return sent > 0 and streams is not None and streams["frames"] >= sent


BARRIER = '{"stream":"barrier@settled","data":{"e":"settled","E":0}}'
"""A frame naming a stream no run subscribes: counted as a parse error on its connection only."""


async def settled(sim: SimVenue, daemon: Daemon) -> None:
    """Wait until the daemon has read everything the venue sent so far on every open socket.

    A :data:`BARRIER` frame is sent behind what each open socket already carries; frames arrive
    in order, so once the daemon has counted it (one more parse error on that connection),
    everything before it was read. Call it when no rotation is under way (a socket the daemon
    closes first would never deliver its barrier). Each call adds one parse error per socket.
    Then waits until the trade backfill has no hole queued or in flight.
    """
    assert daemon.streams is not None
    conns = daemon.streams.stats()["connections"]
    want: dict[str, int] = {}
    for c in sim.stats().connections:
        if not c.open:
            continue
        name = next(n for n in conns if n.split("/", 1)[1].startswith(c.route.strip("/") + "#"))
        want[name] = want.get(name, int(conns[name]["parse_errors"])) + 1
        assert sim.faults.inject([BARRIER], connection=c.id) == 1

    def read() -> bool:
        now = daemon.streams.stats()["connections"] if daemon.streams is not None else {}
        return all(int(now[n]["parse_errors"]) >= k for n, k in want.items())

    await until(read, what=f"the barrier read on {sorted(want)}")

    def backfilled() -> bool:  # holes the reads opened are fetched (or given up) before storage is read
        b = daemon.backfill.stats() if daemon.backfill is not None else None
        return b is None or (b["pending"] == 0 and b["active"] == 0)

    await until(backfilled, what="the trade backfill idle")


def admitted(daemon: Daemon) -> int:
    """Stream records the daemon has let through (parsed, minus duplicates dropped by id)."""
    if daemon.streams is None:
        return 0
    streams = daemon.streams.stats()["streams"].values()
    return sum(int(st["records"]) - int(st["duplicates"]) for st in streams)


def books_synced(daemon: Daemon, natives: Iterable[str]) -> bool:
    if daemon.books is None:
        return False
    rows = daemon.books.stats()["symbols"]
    return all(rows[n]["state"] == "synced" for n in natives)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
