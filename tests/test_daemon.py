"""The daemon end to end against the sim: reconnects, hooks with context, CLI exit codes."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from ingestd.app import Daemon
from ingestd.book.manager import BookManager
from ingestd.cli import main
from ingestd.consumers.hooks import HookContext
from ingestd.records import Record, Trade
from ingestd.sim import SimVenue
from tests.e2e import capture_frames, read_channel, run_until, settings_for, stored_counts


@pytest.mark.asyncio
async def test_reconnects_resubscribe_the_same_streams_and_lose_nothing(
    bundled_capture: Path, tmp_path: Path
) -> None:
    """The sim closes every connection after each 20,000 frames (1011, a server error); a live-like
    venue (resume=continue) goes on where it stopped. Storage must equal the capture exactly."""
    frames = capture_frames(bundled_capture)
    expected = {
        "trade": len(frames["trade"]),
        "book_ticker": len(frames["bookTicker"]),
        "depth_diff": len(frames["depth"]),
    }
    data = tmp_path / "data"
    async with SimVenue([bundled_capture], speed=0, resume="continue") as sim:
        sim.faults.close(1011, after_frames=20_000, sticky=True)
        settings = settings_for(
            sim.rest_url,
            sim.ws_url,
            data,
            symbols="BTCUSDT",
            channels="trade,book_ticker,depth_diff",
            streams={"backoff_initial_s": 0.05, "backoff_max_s": 0.2},
        )
        daemon = Daemon(settings)
        total = sum(expected.values())

        def stored_all() -> bool:
            return daemon.bus.published >= total

        await run_until(daemon, stored_all, timeout=60)
        conns = sim.stats().connections
    by_route: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for c in sorted(conns, key=lambda c: c.id):
        by_route[c.route].append(tuple(sorted(c.subscriptions)))
    assert set(by_route) == {"/public", "/market"}
    assert len(by_route["/public"]) >= 4  # 72,640 book frames / 20,000 per connection
    for route, subs in by_route.items():
        assert len(set(subs)) == 1, (route, subs)  # every reconnect asked for exactly the same set
    assert by_route["/public"][0] == ("btcusdt@bookTicker", "btcusdt@depth@100ms")
    assert by_route["/market"][0] == ("btcusdt@trade",)
    reconnects = daemon.stats()["streams"]["reconnects"]
    assert reconnects >= len(conns) - 2

    counts = stored_counts(data)
    for channel, n in expected.items():
        assert counts[channel] == n, (channel, counts[channel], n)
    ids = read_channel(data, "depth_diff").column("final_update_id").to_pylist()
    assert sorted(ids) == sorted(d["u"] for d in frames["depth"])  # none lost, none twice


@pytest.mark.asyncio
async def test_a_looping_replay_whose_ids_restart_is_stored_again_behind_an_id_reset_gap(
    bundled_capture: Path, tmp_path: Path
) -> None:
    """``ingestd sim --loop`` sends the capture again with the same ids: to the daemon the trade
    ids restart lower. The second pass is new data, not duplicates: every record of it is stored
    (field by field the capture's), behind one ``id_reset`` gap record that reaches storage."""
    trades = capture_frames(bundled_capture)["trade"]
    n = len(trades)
    data = tmp_path / "data"
    async with SimVenue([bundled_capture], speed=0, loop=True) as sim:
        settings = settings_for(sim.rest_url, sim.ws_url, data, symbols="BTCUSDT", channels="trade")
        daemon = Daemon(settings)

        def second_pass_under_way() -> bool:
            st = daemon.stats().get("streams", {}).get("streams", {}).get("btcusdt@trade", {})
            return int(st.get("records", 0)) >= n + 2_000

        await run_until(daemon, second_pass_under_way, timeout=90)
    st = daemon.stats()["streams"]["streams"]["btcusdt@trade"]
    rows = read_channel(data, "trade").sort_by([("recv_ts", "ascending")]).to_pylist()
    assert len(rows) == st["records"] - st["duplicates"] >= n + 2_000  # nothing dropped silently
    assert st["id_resets"] >= 1
    for row, d in zip(rows, trades + trades, strict=False):  # pass 1, then pass 2 from the start
        assert (row["trade_id"], row["price"], row["qty"], row["is_buyer_maker"], row["trade_type"]) == (
            d["t"], float(d["p"]), float(d["q"]), d["m"], d["X"])  # fmt: skip
        assert (row["exchange_ts"], row["transaction_ts"]) == (d["E"] * 1_000_000, d["T"] * 1_000_000)
    gaps = [g for g in read_channel(data, "gap").to_pylist() if g["kind"] == "id_reset"]
    assert len(gaps) == st["id_resets"]
    first = gaps[0]
    assert (first["native"], first["symbol"]) == ("BTCUSDT", "BTC-USDT-PERP")
    assert (first["last_update_id"], first["first_update_id"]) == (trades[-1]["t"], trades[0]["t"])
    assert first["started_ts"] == rows[n]["recv_ts"]  # it stands right before the new sequence


@pytest.mark.asyncio
async def test_hooks_get_records_and_contract_context(bundled_capture: Path, tmp_path: Path) -> None:
    seen: list[Record] = []
    contexts: list[HookContext] = []

    async def on_trade(record: Record, ctx: HookContext) -> None:
        seen.append(record)
        if not contexts:
            contexts.append(ctx)

    async with SimVenue([bundled_capture], speed=0) as sim:
        settings = settings_for(
            sim.rest_url,
            sim.ws_url,
            tmp_path,
            symbols="BTCUSDT",
            channels="trade,depth_diff",
            storage={"enabled": False},
        )
        daemon = Daemon(settings)
        daemon.add_hook(on_trade, channels=["trade"], symbols=["BTC-USDT-PERP"])
        await run_until(daemon, lambda: len(seen) >= 21313, timeout=60)
    assert all(isinstance(r, Trade) for r in seen)
    assert len({r.trade_id for r in seen if isinstance(r, Trade)}) == len(seen)
    ctx = contexts[0]
    assert ctx.price_precision == {"BTC-USDT-PERP": 1}  # tickSize 0.1 in the sim's exchangeInfo
    assert ctx.min_qty["BTC-USDT-PERP"] > 0
    assert ctx.books is not None
    book = ctx.books.get("BTC-USDT-PERP")
    assert book is not None
    assert book.is_synced
    bid, ask = book.best_bid(), book.best_ask()
    assert bid is not None
    assert ask is not None
    assert bid[0] < ask[0]


def _run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--channels", "trade,bogus"], "unknown channel 'bogus'"),
        (["--symbols", "BTC/USDT"], "symbol 'BTC/USDT' is malformed"),
        (["--duration", "-5"], "duration_s: Input should be greater than or equal to 0"),
        (
            ["--venue", "binance-spot", "--channels", "mark_price"],
            "mark_price does not exist on binance-spot",
        ),
        (["--raw"], "--raw needs --json-dump DIR"),
        (["--depth-limit", "7"], "--depth-limit 7: binance-usdm allows 5, 10, 20, 50, 100, 500, 1000"),
        (["--rest-url", "nope"], "rest_url: 'nope' is not an http(s):// or ws(s):// URL"),
        (["--hook", "no_colon"], "hook 'no_colon' is not MODULE:FUNC"),
        (["--hook", "no_such_module_xyz:f"], "no_such_module_xyz"),
        (["--shard", "3/2"], "shard"),
    ],
)
def test_cli_config_errors_exit_2_with_one_line(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run_cli(args, capsys)
    assert code == 2
    assert needle in err
    assert err.count("\n") == 1


def test_cli_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--no-such-flag"])
    assert info.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def _sim_and_run(capture: Path, extra: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    sim = subprocess.Popen(
        [sys.executable, "-m", "ingestd", "sim", "--capture", str(capture)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert sim.stdout is not None
        line = sim.stdout.readline().split()
        rest, ws = (kv.split("=", 1)[1] for kv in line)
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "ingestd",
                "--rest-url",
                rest,
                "--ws-url",
                ws,
                "--data-dir",
                str(tmp_path / "data"),
                "--health-port",
                "0",
                "--log-format",
                "text",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        sim.terminate()
        sim.wait(10)
        if sim.stdout is not None:
            sim.stdout.close()


def test_unknown_symbol_is_a_startup_error_naming_it(bundled_capture: Path, tmp_path: Path) -> None:
    res = _sim_and_run(bundled_capture, ["--symbols", "BTCUSDT,DOGEUSDT,XYZUSDT"], tmp_path)
    assert res.returncode == 3
    assert "not listed as trading: DOGEUSDT, XYZUSDT" in res.stderr


def test_unreachable_rest_url_is_a_startup_error(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "ingestd",
            "--rest-url",
            "http://127.0.0.1:9",
            "--ws-url",
            "ws://127.0.0.1:9",
            "--symbols",
            "BTCUSDT",
            "--health-port",
            "0",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 3
    assert "startup failed" in res.stderr
    assert "127.0.0.1:9" in res.stderr


def test_cli_run_against_the_sim_stops_cleanly_after_duration(bundled_capture: Path, tmp_path: Path) -> None:
    res = _sim_and_run(
        bundled_capture, ["--symbols", "BTCUSDT", "--channels", "trade", "--duration", "3"], tmp_path
    )
    assert res.returncode == 0, res.stderr
    counts = stored_counts(tmp_path / "data")
    assert counts["trade"] == 21313
    assert "stopped in" in res.stderr


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("ingestd ")
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out: Any = capsys.readouterr().out
    for flag in ("--symbols", "--channels", "--no-storage", "--json-dump", "--raw", "--hook", "--duration"):
        assert flag in out


@pytest.mark.asyncio
async def test_pollers_store_rest_market_data_through_the_daemon(
    bundled_capture: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    async with SimVenue([bundled_capture], speed=0) as sim:
        settings = settings_for(
            sim.rest_url,
            sim.ws_url,
            data,
            symbols="BTCUSDT",
            channels="trade",
            pollers={"premium_index_s": 1, "open_interest_s": 1, "funding_rate_s": 2},
        )
        daemon = Daemon(settings)

        def polled() -> bool:
            st = daemon.stats().get("pollers") or {}
            return daemon.bus.published >= 21313 and bool(st) and st.get("records", 0) >= 3

        await run_until(daemon, polled, timeout=30)
    counts = stored_counts(data)
    assert counts["premium_index"] >= 1
    assert counts["open_interest"] >= 1
    assert counts["funding_rate"] >= 1
    funding = read_channel(data, "funding_rate").to_pylist()
    times = [r["exchange_ts"] for r in funding]
    assert len(times) == len(set(times))  # re-polling the same history stores no duplicates
    (oi, *_) = read_channel(data, "open_interest").to_pylist()
    assert oi["native"] == "BTCUSDT"
    assert oi["symbol"] == "BTC-USDT-PERP"


@pytest.mark.asyncio
async def test_an_order_book_failure_costs_no_records_and_is_reported(
    bundled_capture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the book code (here: three batches raise) must not drop the batch nor stop the
    daemon: every record is stored, the failures are counted, logged once per episode, and
    /readyz says the books are failing until they process again (the book then finds the diffs
    it missed as a sequence break and resyncs, as for any gap)."""
    real = BookManager.process
    calls = 0
    readiness: list[tuple[bool, list[str]]] = []
    holder: list[Daemon] = []

    def flaky(self: BookManager, batch: Any) -> Any:
        nonlocal calls
        calls += 1
        if 100 <= calls < 103:
            raise RuntimeError("book bug")
        if calls == 103:
            ok, detail = holder[0].readiness()
            readiness.append((ok, detail["not_ready"]))
        return real(self, batch)

    monkeypatch.setattr(BookManager, "process", flaky)
    caplog.set_level(logging.INFO, logger="ingestd.app")
    frames = capture_frames(bundled_capture)
    expected = {"trade": len(frames["trade"]), "book_ticker": len(frames["bookTicker"]),
                "depth_diff": len(frames["depth"])}  # fmt: skip
    data = tmp_path / "data"
    async with SimVenue([bundled_capture], speed=0) as sim:
        settings = settings_for(
            sim.rest_url, sim.ws_url, data, symbols="BTCUSDT", channels="trade,book_ticker,depth_diff"
        )
        daemon = Daemon(settings)
        holder.append(daemon)
        code = await run_until(daemon, lambda: daemon.bus.published >= sum(expected.values()), timeout=60)
    assert code == 0
    assert daemon.book_errors == 3
    assert daemon.stats()["book_errors"] == 3
    assert readiness
    assert not readiness[0][0]
    assert any("order books failing (3 batch(es) in a row)" in r for r in readiness[0][1])
    assert all("order books failing" not in r for r in daemon.readiness()[1]["not_ready"])
    assert caplog.text.count("order-book processing failed") == 1
    assert "order books process again after 3 failed batch(es)" in caplog.text
    counts = stored_counts(data)
    for channel, n in expected.items():
        assert counts[channel] == n, (channel, counts[channel], n)
