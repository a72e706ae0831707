"""Scale-out end to end: sim → daemon with the NATS publisher → JetStream → `ingestd tail`;
a nats-server restart mid-run; two shards covering a multi-symbol capture with no overlap."""

from __future__ import annotations

import argparse
import asyncio
import io
import uuid
from collections import Counter
from contextlib import redirect_stdout
from pathlib import Path

import orjson
import pytest

from ingestd.app import Daemon
from ingestd.sim import SimVenue
from ingestd.tail import add_arguments, run
from tests.e2e import capture_frames, read_channel, run_until, settings_for, stored_counts
from tests.ops import wait_for
from tests.test_nats import OwnServer, nats_url, own_server  # noqa: F401 - fixtures


def _tail_args(url: str, subject: str, count: int) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["--nats-url", url, subject, "--from", "first", "--count", str(count)])


@pytest.mark.nats
@pytest.mark.asyncio
async def test_every_record_reaches_tail_exactly_once(
    nats_url: str,  # noqa: F811 - the fixture imported above
    bundled_capture: Path,
    tmp_path: Path,
) -> None:
    frames = capture_frames(bundled_capture)
    n_trades = len(frames["trade"])
    tag = uuid.uuid4().hex[:10]
    async with SimVenue([bundled_capture], speed=0) as sim:
        settings = settings_for(
            sim.rest_url,
            sim.ws_url,
            tmp_path / "data",
            symbols="BTCUSDT",
            channels="trade",
            nats={"url": nats_url, "stream": f"T_{tag}", "subject_prefix": f"t{tag}", "max_age_s": 600},
        )
        daemon = Daemon(settings)

        def published() -> bool:
            c = daemon.bus.stats()["consumers"].get("nats", {})
            return daemon.bus.published >= n_trades and c.get("acked", 0) - c.get("duplicates", 0) >= n_trades

        await run_until(daemon, published, timeout=60)
    out = io.StringIO()
    with redirect_stdout(out):
        code = await run(_tail_args(nats_url, f"t{tag}.binance-usdm.trade.>", n_trades))
    assert code == 0
    lines = [orjson.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) == n_trades
    got = {(r["trade_id"], r["price"], r["qty"], r["is_buyer_maker"]) for r in lines}
    want = {(d["t"], float(d["p"]), float(d["q"]), d["m"]) for d in frames["trade"]}
    assert got == want  # every trade exactly once, field for field
    import nats  # noqa: PLC0415

    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().delete_stream(f"T_{tag}")
    finally:
        await nc.close()


@pytest.mark.nats
@pytest.mark.asyncio
async def test_nats_restart_mid_run_keeps_parquet_complete(
    own_server: OwnServer,  # noqa: F811 - the fixture imported above
    bundled_capture: Path,
    tmp_path: Path,
) -> None:
    frames = capture_frames(bundled_capture)
    n_trades = len(frames["trade"])
    data = tmp_path / "data"
    async with SimVenue([bundled_capture], speed=20) as sim:
        settings = settings_for(
            sim.rest_url,
            sim.ws_url,
            data,
            symbols="BTCUSDT",
            channels="trade",
            nats={"url": own_server.url, "stream": "RESTART", "subject_prefix": "r", "reconnect_wait_s": 0.2},
            clock={"enabled": False},  # only trades (and the contract row) on the stream
        )
        total = n_trades + 1  # the start-up contract row is published too
        daemon = Daemon(settings)
        task = asyncio.create_task(daemon.run())
        await wait_for(lambda: daemon.bus.published >= n_trades // 4, 60, "a quarter of the trades")
        own_server.stop()  # NATS goes away mid-run
        await wait_for(lambda: daemon.bus.published >= n_trades // 2, 60, "half of the trades")
        own_server.start()  # and comes back (same store directory)
        import nats  # noqa: PLC0415

        nc = await nats.connect(own_server.url)
        try:
            js = nc.jetstream()

            async def through() -> bool:
                # Counted on the server: a message stored whose ack was lost in the outage is
                # acknowledged again as a duplicate, so the publisher's own counts cannot tell.
                dropped = daemon.bus.stats()["consumers"]["nats"].get("buffer_dropped", 0)
                stored = (await js.stream_info("RESTART")).state.messages
                return bool(daemon.bus.published >= total and stored + dropped >= total)

            await wait_for(
                through, 60, "every record published, and stored in JetStream or counted as dropped"
            )
            nats_stats = daemon.bus.stats()["consumers"]["nats"]
            daemon.request_stop("test")
            assert await asyncio.wait_for(task, 30) == 0
            info = await js.stream_info("RESTART")
        finally:
            await nc.close()
    assert stored_counts(data)["trade"] == n_trades  # storage never waited for NATS
    dropped = int(nats_stats.get("buffer_dropped", 0))
    assert info.state.messages + dropped == total, nats_stats  # complete apart from counted drops


@pytest.mark.asyncio
async def test_two_shards_cover_the_capture_with_no_overlap(realdata: Path, tmp_path: Path) -> None:
    capture = realdata / "cryptofeed" / "2021-10_head" / "BINANCE_FUTURES.ws.1.0"
    outputs: dict[str, Counter[tuple[str, int]]] = {}
    for label, shard in (("all", None), ("s1", "1/2"), ("s2", "2/2")):
        async with SimVenue([capture], speed=0) as sim:
            extra = {"shard": shard} if shard else {}
            settings = settings_for(sim.rest_url, sim.ws_url, tmp_path / label, channels="agg_trade", **extra)
            daemon = Daemon(settings)
            await run_until(daemon, lambda d=daemon, s=sim: _sent_all(d, s), timeout=30)
        rows = (
            read_channel(tmp_path / label, "agg_trade").to_pylist() if stored_counts(tmp_path / label) else []
        )
        outputs[label] = Counter((r["native"], r["agg_id"]) for r in rows)
    assert sum(outputs["all"].values()) > 0
    assert not (set(outputs["s1"]) & set(outputs["s2"]))  # no overlap
    assert outputs["s1"] + outputs["s2"] == outputs["all"]  # the union is the single-instance output
    assert outputs["s1"]
    assert outputs["s2"]
    files = [p.name for p in (tmp_path / "s1").rglob("*.parquet")]
    assert files
    assert all("shard-1-of-2" in f for f in files)


def _sent_all(daemon: Daemon, sim: SimVenue) -> bool:
    if daemon.streams is None:
        return False
    sent = sum(sim.stats().frames_sent.values())
    want = sum(
        n
        for cap in sim.timeline.captures
        for s, n in cap.stream_counts().items()
        if "@aggTrade" in s
        and (daemon.contracts is not None and s.partition("@")[0].upper() in daemon.contracts)
    )
    return sent >= want and daemon.streams.stats()["frames"] >= sent
