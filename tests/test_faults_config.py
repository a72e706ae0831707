"""Bad input: every kind of configuration or command-line mistake is one clear stderr line and exit
code 2 (3 for a venue that cannot be reached) before anything starts; symbols the exchange lists
are validated before they can name a file or a subject."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ingestd.app import Daemon
from ingestd.cli import main
from ingestd.sim import SimVenue
from ingestd.sim.exchange_info import build_exchange_info
from tests.faults_util import CF_FUTURES, admitted, fault_settings, free_port, real_capture, running, until

CASES: list[tuple[str, str, list[str], dict[str, str], str]] = [
    # (id, config file text, CLI flags, environment, what the one line must say)
    (
        "unknown-key-file",
        "storage:\n  data_dirr: /srv\n",
        [],
        {},
        "storage.data_dirr: unknown key; allowed here:",
    ),
    (
        "unknown-key-env",
        "",
        [],
        {"INGESTD_STREAMS__STALE_AFTER": "5"},
        "environment: streams.stale_after: unknown key",
    ),
    ("unknown-top-key", "symbol: BTCUSDT\n", [], {}, "symbol: unknown key; allowed here: venue, symbols"),
    (
        "wrong-type",
        "storage:\n  rotate_rows: many\n",
        [],
        {},
        "storage.rotate_rows: Input should be a valid integer",
    ),
    (
        "wrong-type-bool",
        "console:\n  enabled: sometimes\n",
        [],
        {},
        "console.enabled: Input should be a valid boolean",
    ),
    ("unknown-channel", "", ["--channels", "trade,orderbook"], {}, "unknown channel 'orderbook'"),
    ("malformed-symbol", "", ["--symbols", "BTCUSDT,eth usdt"], {}, "symbol 'eth usdt' is malformed"),
    ("symbol-with-path", "symbols: [../etc]\n", [], {}, "symbol '../etc' is malformed"),
    (
        "negative-interval",
        "",
        ["--snapshot-interval", "-1"],
        {},
        "snapshots.poll_interval_s: Input should be greater",
    ),
    (
        "negative-deadline",
        "streams:\n  stale_after_s: -5\n",
        [],
        {},
        "streams.stale_after_s: Input should be greater",
    ),
    (
        "bad-url",
        "",
        ["--ws-url", "fstream.binance.com"],
        {},
        "ws_url: 'fstream.binance.com' is not an http(s)",
    ),
    ("bad-yaml", "storage: [unclosed\n", [], {}, "not valid YAML"),
]


@pytest.mark.parametrize(
    ("config", "flags", "env", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_configuration_is_one_line_and_exit_2_before_anything_starts(
    config: str,
    flags: list[str],
    env: dict[str, str],
    needle: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    data, log_file = tmp_path / "data", tmp_path / "ingestd.log"
    args = ["--data-dir", str(data), "--log-file", str(log_file), "--health-port", str(free_port()), *flags]
    if config:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(config)
        args = ["--config", str(cfg), *args]
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 2
    assert err.startswith("ingestd: config error: ")
    assert err.count("\n") == 1, err
    assert needle in err
    # Nothing started: no log file opened, no data directory made, nothing printed to stdout.
    assert not log_file.exists()
    assert not data.exists()
    assert out == ""


def test_an_unreachable_venue_is_one_line_and_exit_3(tmp_path: Path) -> None:
    data, log_file = tmp_path / "data", tmp_path / "ingestd.log"
    closed = free_port()  # nothing listens there
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "ingestd",
            "--rest-url",
            f"http://127.0.0.1:{closed}",
            "--ws-url",
            f"ws://127.0.0.1:{closed}",
            "--data-dir",
            str(data),
            "--log-file",
            str(log_file),
            "--health-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 3
    assert res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("ingestd: startup failed: binance-usdm: cannot reach ")
    assert f"127.0.0.1:{closed}" in res.stderr
    assert res.stdout == ""
    assert not data.exists()  # no consumer started


UNSAFE = ["BTC/USDT", "..", "../ETCUSDT", "ETH\x01USDT", "SOL\nUSDT", "DOGE USDT", "btcusdt", "ÄUSDT"]


@pytest.mark.asyncio
async def test_unsafe_symbols_from_the_exchange_never_reach_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The venue lists symbols that would escape or corrupt a path or a NATS subject: they are
    skipped at discovery (counted, logged) and nothing of them is ever subscribed or stored."""

    def with_unsafe(*a: Any, **kw: Any) -> dict[str, Any]:
        doc: dict[str, Any] = build_exchange_info(*a, **kw)
        if doc["symbols"]:
            template = doc["symbols"][0]
            doc["symbols"] = [*doc["symbols"], *({**template, "symbol": s} for s in UNSAFE)]
        return doc

    monkeypatch.setattr("ingestd.sim.venue.build_exchange_info", with_unsafe)
    data = tmp_path / "data"
    async with SimVenue([real_capture(CF_FUTURES)], speed=0, resume="continue") as sim:
        daemon = Daemon(fault_settings(sim, data, channels="agg_trade,book_ticker"))
        async with running(daemon):
            await until(lambda: admitted(daemon) >= 91 + 613, what="the safe symbols' frames")
            assert daemon.contracts is not None
            natives = sorted(daemon.contracts.natives)
            skipped = sorted(daemon.contracts.skipped_unsafe)
        subscribed = {n for c in sim.stats().connections for n in c.subscriptions}
    assert natives == ["AKROUSDT", "CTKUSDT", "KEEPUSDT", "SUSHIUSDT"]
    assert skipped == sorted(UNSAFE)
    assert all(s.partition("@")[0].upper() in natives for s in subscribed)
    for path in data.rglob("*"):
        rel = path.relative_to(data)
        for part in rel.parts:
            assert part.isascii()
            assert part.isprintable()
            assert "/" not in part
            assert part not in (".", "..")
        symbol_dirs = [p for p in rel.parts if p.startswith("symbol=")]
        assert all(p.removeprefix("symbol=") in {f"{n[:-4]}-USDT-PERP" for n in natives} for p in symbol_dirs)
