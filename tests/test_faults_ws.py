"""Fault matrix, websocket rows: the sim breaks the connection on purpose, the daemon recovers, and
storage holds every frame the venue sent exactly once (compared field by field with the capture).

The venue is live-like (``resume="continue"``): a new connection goes on where the last one
stopped, so any frame the daemon fails to keep is missing from storage for good.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from pathlib import Path

import pytest

from ingestd.app import Daemon
from ingestd.config import Settings
from ingestd.sim import SimVenue
from tests.faults_util import (
    CF_FUTURES,
    BackoffDraws,
    CaptureTruth,
    admitted,
    assert_only_the_tail_was_lost,
    assert_storage_is_capture,
    books_synced,
    closed_trade_holes,
    fault_settings,
    gaps,
    read_rows,
    real_capture,
    received_all,
    running,
    settled,
    until,
)

PUBLIC, MARKET = "binance-usdm/public#0", "binance-usdm/market#0"
BOOK_CHANNELS = "book_ticker,depth_diff"
FAST_SNAPSHOTS = {"limit": 100, "weight_headroom": 1.0}
"""Weight 5 per snapshot at the full 2,400/min: eight a second, so resyncs take no test time."""


@pytest.fixture(scope="module")
def truth() -> CaptureTruth:
    return CaptureTruth.load(real_capture(CF_FUTURES))


def _conn(daemon: Daemon, name: str) -> dict[str, object]:
    assert daemon.streams is not None
    conn: dict[str, object] = daemon.streams.stats()["connections"][name]
    return conn


def _kind(channel: str) -> str:
    return {"depth_diff": "depth@100ms", "book_ticker": "bookTicker", "agg_trade": "aggTrade"}.get(
        channel, "kline_1m"
    )


def _venue_done(sim: SimVenue, truth: CaptureTruth) -> bool:
    """The venue has sent the last frame of every stream (on some connection)."""
    last: dict[str, int] = {}
    for c in sim.stats().connections:
        for name, ordinal in c.last.items():
            last[name] = max(last.get(name, -1), ordinal)
    return all(last.get(name, -1) == n - 1 for name, n in truth.capture.stream_counts().items())


def _all_in(truth: CaptureTruth, daemon: Daemon, *channels: str) -> bool:
    """Every record of the capture (of ``channels``) went through the daemon's dedupe."""
    want = sum(truth.count(c) for c in channels) if channels else truth.count()
    return admitted(daemon) >= want


@pytest.mark.parametrize("code", [1000, 1001, 1006, 1011])
@pytest.mark.asyncio
async def test_server_close_mid_stream_reconnects_with_the_same_streams_and_loses_nothing(
    truth: CaptureTruth, tmp_path: Path, code: int
) -> None:
    data = tmp_path / "data"
    async with SimVenue([CF_FUTURES], speed=0, resume="continue") as sim:
        sim.faults.stall(sticky=True)  # hold every frame until both routes are connected
        settings = fault_settings(sim, data, snapshots=FAST_SNAPSHOTS)
        daemon = Daemon(settings)
        with BackoffDraws.spy(settings) as draws:
            async with running(daemon) as ev:
                await until(lambda: sim.stats().connections_open == 2, what="both routes connected")
                assert sim.faults.close(code, after_frames=300, route="/public") == 1
                sim.faults.resume()
                await until(lambda: ev.count("disconnected") == 1, what="the disconnect")
                await until(lambda: _all_in(truth, daemon), what="every frame sent and read")
                await until(lambda: books_synced(daemon, truth.natives), what="books resynced")
                public, market = _conn(daemon, PUBLIC), _conn(daemon, MARKET)
                events = dict(daemon.stats()["connection_events"])
                down, up = ev.at("disconnected"), ev.at("connected", 3)
        conns = sorted(sim.stats().connections, key=lambda c: c.id)

    # The public socket closed after exactly 300 frames with the code; the new one asked for
    # exactly the same streams; the market socket never noticed.
    pub = [c for c in conns if c.route == "/public"]
    assert len(pub) == 2
    assert pub[0].close_code == code
    assert sum(pub[0].frames_sent.values()) == 300
    assert set(pub[0].subscriptions) == set(pub[1].subscriptions)
    assert len(pub[0].subscriptions) == 8
    assert [c.route for c in conns].count("/market") == 1
    # Counted, and reconnected at the first attempt after one (jittered, 0..50 ms) backoff delay.
    assert public["reconnects"] == 1
    assert public["reconnect_reasons"] == {f"close {code}": 1}
    assert (public["connects"], public["connect_failures"]) == (2, 0)
    assert market["reconnects"] == 0
    assert events["disconnected"] == 1
    assert events["connected"] == 3
    assert len(draws.delays) == 1
    assert 0 <= draws.delays[0] <= 0.05
    assert down is not None
    assert up is not None
    assert down <= up

    assert_storage_is_capture(data, truth)
    # Every book lost its stream, so each has one disconnect gap and one resync, naming the code.
    log = gaps(data)
    for native in truth.natives:
        kinds = [g["kind"] for g in log if g["native"] == native]
        assert kinds == ["disconnect", "resync"], (native, kinds)
    assert all(f"close {code}" in g["reason"] for g in log if g["kind"] == "disconnect")
    assert daemon.snapshots is not None
    assert len(read_rows(data, "depth_snapshot")) == daemon.snapshots.stats()["emitted"]


@pytest.mark.asyncio
async def test_tcp_stall_is_reconnected_by_the_stale_watchdog_once_its_deadline_passed(
    truth: CaptureTruth, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ingestd.streams")
    stale_after = 0.3
    data = tmp_path / "data"
    # Paced at 20x (the 30 s capture in 1.5 s): frames flow, then the socket stalls mid-stream.
    async with SimVenue([CF_FUTURES], speed=20, resume="continue") as sim:
        settings = fault_settings(
            sim,
            data,
            channels=BOOK_CHANNELS,
            snapshots=FAST_SNAPSHOTS,
            streams={"stale_after_s": stale_after},
        )
        daemon = Daemon(settings)
        async with running(daemon) as ev:
            await until(lambda: received_all(sim, daemon) and daemon.stats()["streams"]["frames"] >= 150)
            stalled_ns = time.time_ns()
            assert sim.faults.stall() == 1  # this socket only: the next one is healthy
            await until(lambda: ev.count("stale") >= 1, timeout=5, what="the stale watchdog")
            await until(lambda: ev.count("connected") >= 2, what="the reconnect")
            await until(lambda: _all_in(truth, daemon, *BOOK_CHANNELS.split(",")), what="all frames")
            await until(lambda: books_synced(daemon, truth.natives), what="books resynced")
            public = _conn(daemon, PUBLIC)
        conns = sorted(sim.stats().connections, key=lambda c: c.id)

    assert conns[0].frames_sent  # the stalled socket delivered data first: a stall mid-stream
    assert public["reconnect_reasons"].get("stale", 0) >= 1  # type: ignore[attr-defined]
    assert_storage_is_capture(data, truth, channels=BOOK_CHANNELS.split(","))
    disconnects = [g for g in gaps(data) if g["kind"] == "disconnect"]
    assert all("stale" in g["reason"] for g in disconnects)
    first = [g for g in disconnects if g["started_ts"] == disconnects[0]["started_ts"]]
    assert {g["native"] for g in first} == set(truth.natives)
    # The watchdog gave the socket up only once it had been quiet for stale_after_s, by its own
    # measure (how much later it noticed depends on the machine's load, and is not asserted);
    # the books' gap starts when it did, after the stall began.
    quiet = [
        float(m.group(1))
        for r in caplog.records
        if (
            m := re.fullmatch(
                rf"{re.escape(PUBLIC)} stale: no frame for ([0-9.]+) s; reconnecting", r.getMessage()
            )
        )
    ]
    assert quiet
    assert quiet[0] >= stale_after
    assert first[0]["started_ts"] > stalled_ns


@pytest.mark.asyncio
async def test_a_stream_that_never_sends_is_reported_by_name_within_its_deadline(
    truth: CaptureTruth, tmp_path: Path
) -> None:
    """``@trade`` is subscribed but the venue has none (like a stream on the wrong route: acked,
    then silent). It must be reported by name, not taken for a quiet market."""
    deadline = 0.5
    data = tmp_path / "data"
    trade_streams = sorted(f"{n.lower()}@trade" for n in truth.natives)
    async with SimVenue([CF_FUTURES], speed=0, resume="continue") as sim:
        settings = fault_settings(
            sim,
            data,
            channels="trade,agg_trade,book_ticker,depth_diff,kline",
            snapshots=FAST_SNAPSHOTS,
            streams={"first_frame_deadline_s": deadline},
            # Trades may be quiet for a while on a thin market; /readyz names them after this.
            health={"port": 0, "quiet_freshness_s": deadline},
        )
        daemon = Daemon(settings)
        started_ns = time.time_ns()
        async with running(daemon) as ev:
            await until(lambda: ev.count("stream_silent") >= 1, timeout=5, what="the silent-stream report")
            await until(lambda: _all_in(truth, daemon), what="every frame")
            await until(lambda: books_synced(daemon, truth.natives), what="books synced")
            assert daemon.streams is not None
            streams = daemon.streams.stats()["streams"]
            market, public = _conn(daemon, MARKET), _conn(daemon, PUBLIC)
            ready, detail = daemon.readiness()
            events = dict(daemon.stats()["connection_events"])
            subs = {c.route: c.subscriptions for c in sim.stats().connections}

    assert set(trade_streams) <= set(subs["/market"])  # asked for, acknowledged, never served
    # Reported once the deadline after connecting had passed (the market socket connected after
    # the daemon was started). The report's time is the gap records' started_ts; how soon after
    # the deadline it came depends on the machine and is not asserted.
    silent = [g for g in gaps(data) if g["kind"] == "silent_stream"]
    reported_ns = {g["started_ts"] for g in silent}
    assert len(reported_ns) == 1
    reported = reported_ns.pop()
    assert reported - started_ns >= deadline * 1e9
    assert all(not streams[s]["first_frame_seen"] for s in trade_streams)
    assert events["stream_silent"] == 1  # one report for the connection, naming every stream
    assert sorted(market["silent_streams"]) == trade_streams  # type: ignore[call-overload]
    assert public["silent_streams"] == []
    assert market["reconnects"] == 0  # reported, not "fixed" by reconnecting forever
    assert not ready
    for stream in trade_streams:
        assert f"stream {stream}: no frame yet" in detail["not_ready"]
    # The gap log names the stream for each symbol; the other streams are stored in full.
    assert sorted(g["native"] for g in silent) == truth.natives
    for g in silent:
        assert f"{g['native'].lower()}@trade" in g["reason"]
        assert g["ended_ts"] is None
    assert read_rows(data, "trade") == []
    assert_storage_is_capture(data, truth)


async def _shutdown_mid_stream(sim: SimVenue, daemon: Daemon, *, close_after: int | None = None) -> None:
    """Let frames flow, then announce serverShutdown on the public socket with frames right
    behind it (the ones that fell due while it was held): a venue that keeps sending until it
    closes. With ``close_after`` the venue closes that socket (1001) that many frames after the
    notice. Returns once the venue saw the new socket."""
    await until(lambda: received_all(sim, daemon) and daemon.stats()["streams"]["frames"] >= 100)
    assert sim.faults.stall(route="/public") == 1
    await until(lambda: received_all(sim, daemon), what="the daemon caught up")
    # Not a sync point: the held socket's frames fall due meanwhile (at 20x, two seconds of
    # capture), so the notice has data right behind it. Any amount (none included) is correct.
    await asyncio.sleep(0.1)
    assert sim.faults.server_shutdown(route="/public") == 1
    if close_after is not None:
        assert sim.faults.close(1001, after_frames=close_after, route="/public") == 1
    sim.faults.resume()  # the notice goes first, then every frame that fell due
    await until(lambda: sim.stats().connections_total == 3, what="the new socket")


def _shutdown_settings(sim: SimVenue, data: Path) -> Settings:
    # A backoff delay would be drawn from 0..1000 s: the spy proves none was drawn at all.
    backoff = {"backoff_initial_s": 1000.0, "backoff_max_s": 1000.0}
    return fault_settings(sim, data, snapshots=FAST_SNAPSHOTS, streams=backoff)


@pytest.mark.asyncio
async def test_server_shutdown_rotates_at_once_and_loses_nothing_the_venue_sent(
    truth: CaptureTruth, tmp_path: Path
) -> None:
    """The notice starts a make-before-break switch at once: the old socket is read until the new
    one has proven overlap, so what the venue sent behind the notice is kept too."""
    data = tmp_path / "data"
    async with SimVenue([CF_FUTURES], speed=20, resume="continue") as sim:
        settings = _shutdown_settings(sim, data)
        daemon = Daemon(settings)
        with BackoffDraws.spy(settings) as draws:
            async with running(daemon) as ev:
                await _shutdown_mid_stream(sim, daemon)
                await until(lambda: ev.count("rotated") == 1, what="the switch")
                await until(lambda: _venue_done(sim, truth), what="the end of the capture")
                await settled(sim, daemon)
                public, market = _conn(daemon, PUBLIC), _conn(daemon, MARKET)
                events = dict(daemon.stats()["connection_events"])
                books = daemon.books.stats()["symbols"] if daemon.books is not None else {}
        conns = sorted(sim.stats().connections, key=lambda c: c.id)

    assert draws.delays == []  # at once: no backoff delay was drawn (it would be 0..1000 s)
    assert events["server_shutdown"] == 1
    assert events["rotated"] == 1
    assert "disconnected" not in events
    assert public["rotations"] == 1
    assert public["reconnects"] == market["reconnects"] == 0
    old, new = (c for c in conns if c.route == "/public")
    assert old.injected == 1
    assert set(old.subscriptions) == set(new.subscriptions)
    # The old socket went on sending after the notice, and the daemon kept reading it: storage is
    # the capture, every frame exactly once, and no book lost its sync.
    assert sum(old.frames_sent.values()) > 0
    assert_storage_is_capture(data, truth)
    assert not [g for g in gaps(data) if g["kind"] != "resync" or g["native"] not in truth.natives]
    assert all(b["resyncs"] == 0 for b in books.values())


@pytest.mark.parametrize("close_after", [1, 40])
@pytest.mark.asyncio
async def test_server_shutdown_then_close_hands_over_to_the_new_socket(
    truth: CaptureTruth, tmp_path: Path, close_after: int
) -> None:
    """The venue closes the old socket soon after its notice, before or after the new socket has
    proven overlap: the new socket takes over (no third socket, no backoff) and storage is whole."""
    data = tmp_path / "data"
    async with SimVenue([CF_FUTURES], speed=20, resume="continue") as sim:
        settings = _shutdown_settings(sim, data)
        daemon = Daemon(settings)
        with BackoffDraws.spy(settings) as draws:
            async with running(daemon):
                await _shutdown_mid_stream(sim, daemon, close_after=close_after)
                await until(lambda: _venue_done(sim, truth), what="the end of the capture")
                await settled(sim, daemon)
                await until(lambda: books_synced(daemon, truth.natives), what="books synced")
                public, market = _conn(daemon, PUBLIC), _conn(daemon, MARKET)
                events = dict(daemon.stats()["connection_events"])
        conns = sorted(sim.stats().connections, key=lambda c: c.id)

    assert draws.delays == []  # no backoff delay was drawn for the switch
    assert len(conns) == 3  # the rotation's socket took over; no further one was opened
    old = next(c for c in conns if c.route == "/public")
    assert old.close_code == 1001
    # Either the switch was proven (a rotation) or it counts as one reconnect with books resynced.
    assert public["rotations"] + public["reconnects"] == 1
    assert market["reconnects"] == 0
    assert events.get("disconnected", 0) == public["reconnects"]
    assert_storage_is_capture(data, truth)


@pytest.mark.asyncio
async def test_rotation_before_the_24h_cut_leaves_no_gap_and_no_duplicate(
    truth: CaptureTruth, tmp_path: Path
) -> None:
    """The 23 h rotation compressed to 0.3 s: make-before-break, overlap dropped by id."""
    data = tmp_path / "data"
    async with SimVenue([CF_FUTURES], speed=20, resume="continue") as sim:
        settings = fault_settings(
            sim,
            data,
            snapshots=FAST_SNAPSHOTS,
            streams={"rotate_after_s": 0.3, "first_frame_deadline_s": 1.0},
        )
        daemon = Daemon(settings)
        async with running(daemon) as ev:
            await until(lambda: _all_in(truth, daemon), timeout=20, what="every frame")
            stats = daemon.stats()
            conns = sorted(sim.stats().connections, key=lambda c: c.id)
            books = daemon.books.stats()["symbols"] if daemon.books is not None else {}
            rotated = ev.count("rotated")

    public, market = (stats["streams"]["connections"][n] for n in (PUBLIC, MARKET))
    assert public["rotations"] >= 3
    assert market["rotations"] >= 1
    assert rotated == public["rotations"] + market["rotations"]
    assert public["reconnects"] == market["reconnects"] == 0
    assert "disconnected" not in stats["connection_events"]
    assert stats["streams"]["duplicates"] > 0  # the sockets overlapped; the overlap was dropped
    # Seen from the venue: each new public socket started before the old one stopped sending.
    pub = [c for c in conns if c.route == "/public"]
    overlaps = 0
    for old, new in itertools.pairwise(pub):
        shared = set(old.last) & set(new.first)
        assert all(new.first[s] <= old.last[s] + 1 for s in shared), (old.id, new.id)
        overlaps += any(new.first[s] <= old.last[s] for s in shared)
    assert overlaps >= 1
    # No book noticed: one sync each, no gap.
    for native in truth.natives:
        assert books[native]["syncs"] == 1, books[native]
        assert books[native]["gaps"] == {}
    assert gaps(data) == []
    assert_storage_is_capture(data, truth)


BAD_PUBLIC_FRAMES = (
    # invalid JSON (cut short)
    '{"stream":"sushiusdt@bookTicker","data":{"e":"bookTicker","u":6008596',
    # wrong type: an update id that is a string of letters
    '{"stream":"sushiusdt@bookTicker","data":{"e":"bookTicker","u":"x","s":"SUSHIUSDT","b":"7.6",'
    '"B":"2","a":"7.7","A":"1","T":1626992741012,"E":1626992741017}}',
    # missing fields: a depth update without its levels and previous id
    '{"stream":"akrousdt@depth@100ms","data":{"e":"depthUpdate","E":1626992741077,"s":"AKROUSDT",'
    '"U":600859599831,"u":600859599831}}',
    # unknown event on an unknown stream kind
    '{"stream":"sushiusdt@fooBar","data":{"e":"fooBar","E":1626992741017}}',
    # a known kind for a symbol this run does not ingest
    '{"stream":"dogeusdt@bookTicker","data":{"e":"bookTicker","u":1,"s":"DOGEUSDT","b":"1","B":"1",'
    '"a":"1","A":"1","T":1,"E":1}}',
    # JSON, but not an object
    "[1,2,3]",
)


@pytest.mark.asyncio
async def test_malformed_frames_are_counted_per_stream_and_skipped(
    truth: CaptureTruth, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    async with SimVenue([CF_FUTURES], speed=20, resume="continue") as sim:
        daemon = Daemon(fault_settings(sim, data, snapshots=FAST_SNAPSHOTS))
        async with running(daemon):
            await until(lambda: received_all(sim, daemon) and daemon.stats()["streams"]["frames"] >= 100)
            assert sim.faults.inject(BAD_PUBLIC_FRAMES, route="/public") == 1
            assert sim.faults.inject([b"\x00\xffnot text"], binary=True, route="/public") == 1
            await until(lambda: _all_in(truth, daemon), what="every good frame")
            await until(lambda: books_synced(daemon, truth.natives), what="books synced")
            stats = daemon.stats()["streams"]
            injected = sim.stats().injected

    assert injected == len(BAD_PUBLIC_FRAMES) + 1
    per_stream = {name: st["parse_errors"] for name, st in stats["streams"].items() if st["parse_errors"]}
    public = stats["connections"][PUBLIC]
    # Counted on the stream they name (bad JSON is attributed by the stream name it starts with);
    # frames naming no stream of this run are counted on their connection.
    assert per_stream == {"sushiusdt@bookTicker": 2, "akrousdt@depth@100ms": 1}
    assert public["parse_errors"] == 4  # unknown kind, unknown symbol, not an object, binary junk
    assert stats["parse_errors"] == len(BAD_PUBLIC_FRAMES) + 1
    assert public["reconnects"] == 0
    assert stats["connections"][MARKET]["reconnects"] == 0
    assert stats["connections"][MARKET]["parse_errors"] == 0
    assert_storage_is_capture(data, truth)
    assert gaps(data) == []


@pytest.mark.asyncio
async def test_a_frame_over_the_size_limit_costs_only_its_own_connection(
    truth: CaptureTruth, tmp_path: Path
) -> None:
    """A frame larger than ``max_frame_bytes`` is never buffered: the socket that carried it fails
    (1009, counted) and reconnects; the other connection and its streams are untouched."""
    data = tmp_path / "data"
    async with SimVenue([CF_FUTURES], speed=20, resume="continue") as sim:
        settings = fault_settings(sim, data, snapshots=FAST_SNAPSHOTS, streams={"max_frame_bytes": 65536})
        daemon = Daemon(settings)
        async with running(daemon) as ev:
            await until(lambda: received_all(sim, daemon) and daemon.stats()["streams"]["frames"] >= 100)
            huge = '{"stream":"ctkusdt@aggTrade","data":{"e":"aggTrade","pad":"' + "x" * 100_000 + '"}}'
            assert sim.faults.inject([huge], route="/market") == 1
            await until(lambda: ev.count("connected") >= 3, timeout=5, what="the market reconnect")
            await until(lambda: _venue_done(sim, truth), what="the end of the capture")
            await settled(sim, daemon)
            stats = daemon.stats()["streams"]
        conns = sorted(sim.stats().connections, key=lambda c: c.id)

    market, public = stats["connections"][MARKET], stats["connections"][PUBLIC]
    assert market["reconnects"] == 1
    assert market["reconnect_reasons"] == {"error TransportError": 1}
    assert "1009" in market["last_error"] or "too big" in market["last_error"].lower()
    assert public["reconnects"] == 0
    old_market = next(c for c in conns if c.route == "/market")
    assert old_market.injected == 1
    # The public streams (and the books) never noticed; the market streams lost at most what the
    # venue wrote behind the huge frame on the failed socket.
    book_channels = ["book_ticker", "depth_diff"]
    assert_storage_is_capture(data, truth, channels=book_channels)
    # Trades the failed socket had sent behind the huge frame (a race: often none) are holes the
    # backfill closes from REST, so every aggTrade of the capture is stored; no other gap.
    holes, other = closed_trade_holes(data)
    assert other == []
    assert all(h["data_channel"] == "agg_trade" for h in holes)
    assert_storage_is_capture(data, truth, channels=["agg_trade"])
    assert_only_the_tail_was_lost(data, truth, old_market.last, ["kline"])


@pytest.mark.asyncio
async def test_a_depth_sequence_gap_resyncs_only_that_symbol_and_is_in_the_gap_log(
    truth: CaptureTruth, tmp_path: Path
) -> None:
    """Four real symbols; the venue never sends AKROUSDT's 101st diff (index 100)."""
    data = tmp_path / "data"
    diffs = truth.payloads[("depth_diff", "AKROUSDT")]
    before, skipped, after = diffs[99], diffs[100], diffs[101]
    assert after["pu"] == skipped["u"] != before["u"]  # the real chain, broken by the skip
    # Paced (20x) so every book is synced when the skipped diff falls due (~0.8 s in).
    async with SimVenue([CF_FUTURES], speed=20, resume="continue") as sim:
        sim.faults.skip_depth_diff("AKROUSDT", index=100)
        daemon = Daemon(fault_settings(sim, data, snapshots=FAST_SNAPSHOTS))
        async with running(daemon):
            await until(lambda: _all_in(truth, daemon) or admitted(daemon) >= truth.count() - 1)
            await until(lambda: _venue_done(sim, truth), what="the end of the capture")
            await until(lambda: books_synced(daemon, truth.natives), what="AKROUSDT resynced")
            books = daemon.books.stats()["symbols"] if daemon.books is not None else {}
            skipped_by_sim = sim.stats().frames_skipped

    assert skipped_by_sim == {"akrousdt@depth@100ms": 1}
    assert books["AKROUSDT"]["gaps"] == {"desync": 1}
    assert books["AKROUSDT"]["resyncs"] == 1
    for native in ("CTKUSDT", "KEEPUSDT", "SUSHIUSDT"):
        assert books[native]["gaps"] == {}, native
        assert books[native]["syncs"] == 1
    # Storage: everything but the diff the venue never sent; the gap log holds the episode.
    assert_storage_is_capture(data, truth, missing={("depth_diff", "AKROUSDT"): {skipped["u"]}})
    log = gaps(data)
    assert [(g["native"], g["kind"]) for g in log] == [("AKROUSDT", "desync"), ("AKROUSDT", "resync")]
    start, end = log
    assert start["last_update_id"] == before["u"]
    assert (start["first_update_id"], start["final_update_id"], start["prev_final_update_id"]) == (
        after["U"],
        after["u"],
        after["pu"],
    )
    assert end["started_ts"] == start["started_ts"]
    assert end["ended_ts"] is not None
    assert end["ended_ts"] >= end["started_ts"]
    assert end["first_update_id"] >= after["u"]  # rebuilt from a snapshot taken after the gap
    snaps = [r["native"] for r in read_rows(data, "depth_snapshot")]
    assert sorted(snaps) == sorted([*truth.natives, "AKROUSDT"])  # only AKROUSDT re-snapshotted
