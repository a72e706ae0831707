"""wss:// and https://: the sim over TLS with a throwaway CA made at test time, the daemon verifying it.

* the offline demo over wss+https stores every record of the bundled capture exactly once, field by
  field, with the CA given by ``--ca-file`` (in-process) and by ``SSL_CERT_FILE`` (the CLI in a
  child process, the way an operator sets it);
* a certificate the daemon does not trust: one warning line per connection naming the host and
  OpenSSL's reason, then reconnects with backoff, no traceback, a clean stop; at start-up an
  untrusted REST host is a :class:`StartupError` naming host and reason (exit 3), like any
  unreachable venue;
* TLS cut mid-stream (the sim aborts the TLS transport: no close_notify, no close frame): the
  daemon reconnects, the books resync, the gap log says so and storage equals the capture;
* bad ``--ca-file`` / ``--tls-cert`` / ``--tls-key``: one line, exit 2.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import ClassVar

import aiohttp
import pytest

from ingestd.app import Daemon
from ingestd.cli import main
from ingestd.errors import StartupError
from ingestd.records import Record
from ingestd.sim import SimVenue
from ingestd.sim.certs import ThrowawayCerts, make_certs
from ingestd.tls import client_context, server_context
from tests.e2e import assert_stored_as_captured, capture_frames, demo_counts, run_until, settings_for
from tests.faults_util import (
    CaptureTruth,
    assert_only_the_tail_was_lost,
    assert_storage_is_capture,
    books_synced,
    free_port,
    gaps,
    running,
    until,
)

DEMO_CHANNELS = "trade,book_ticker,depth_diff"
FAST = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2}
"""Reconnect quickly: the tests wait on counters, and a short backoff makes them grow fast."""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCerts:
    """The CA the daemon is told to trust, and a sim certificate it signed."""
    return make_certs(tmp_path_factory.mktemp("tls-trusted"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCerts:
    """Another CA, which the daemon is never told about, and a certificate it signed."""
    return make_certs(tmp_path_factory.mktemp("tls-stranger"), name="ingestd untrusted test CA")


def _server(c: ThrowawayCerts) -> ssl.SSLContext:
    return server_context(c.cert, c.key)


@pytest.fixture
def no_env_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither SSL_CERT_FILE nor SSL_CERT_DIR from the test's environment decides trust."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


# --------------------------------------------------------------------------- the demo over TLS


@pytest.mark.asyncio
async def test_offline_demo_over_wss_and_https_with_ca_file_stores_the_capture(
    bundled_capture: Path, tmp_path: Path, certs: ThrowawayCerts, no_env_trust: None
) -> None:
    frames = capture_frames(bundled_capture)
    expected = demo_counts(frames)
    data = tmp_path / "data"
    async with SimVenue([bundled_capture], speed=0, ssl_context=_server(certs)) as sim:
        assert sim.rest_url.startswith("https://127.0.0.1:")
        assert sim.ws_url.startswith("wss://127.0.0.1:")
        settings = settings_for(
            sim.rest_url,
            sim.ws_url,
            data,
            symbols="BTCUSDT",
            channels=DEMO_CHANNELS,
            tls={"ca_file": str(certs.ca)},
        )
        daemon = Daemon(settings)
        total = sum(expected.values())
        code = await run_until(daemon, lambda: daemon.bus.published >= total)
        conns = sim.stats().connections
    assert code == 0
    # One context for everything: REST (discovery, snapshots, clock, pollers) and websockets.
    assert daemon.rest is not None
    assert daemon.rest.ssl_context is daemon.tls
    assert daemon.streams is not None
    assert daemon.streams._transport.ssl_context is daemon.tls  # type: ignore[attr-defined]
    assert {c.route for c in conns} == {"/public", "/market"}
    assert daemon.stats()["rest"]["errors"] == {}
    assert_stored_as_captured(data, frames, expected)


async def _status(port: int) -> dict[str, object] | None:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/status", timeout=aiohttp.ClientTimeout(total=5)) as resp,
        ):
            doc: dict[str, object] = await resp.json()
            return doc
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None


@pytest.mark.asyncio
async def test_the_cli_trusts_the_ca_named_by_ssl_cert_file(
    bundled_capture: Path, tmp_path: Path, certs: ThrowawayCerts
) -> None:
    """``SSL_CERT_FILE`` in the daemon's environment, no flag: the standard OpenSSL variable is
    honoured by the context built at start-up, for REST and websockets alike."""
    frames = capture_frames(bundled_capture)
    expected = demo_counts(frames)
    total = sum(expected.values())
    data, port = tmp_path / "data", free_port()
    env = {k: v for k, v in os.environ.items() if k != "SSL_CERT_DIR"}
    env["SSL_CERT_FILE"] = str(certs.ca)
    async with SimVenue([bundled_capture], speed=0, ssl_context=_server(certs)) as sim:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ingestd", "--rest-url", sim.rest_url, "--ws-url", sim.ws_url,
            "--symbols", "BTCUSDT", "--channels", DEMO_CHANNELS, "--data-dir", str(data),
            "--health-port", str(port), "--log-format", "text",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            published = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 120
            while published < total:
                assert proc.returncode is None, "the daemon exited early"
                assert loop.time() < deadline, f"only {published} of {total} records published"
                doc = await _status(port)
                bus = doc.get("bus") if doc else None
                published = int(bus["published"]) if isinstance(bus, dict) else 0
                await asyncio.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    log = err.decode()
    assert proc.returncode == 0, log[-3000:]
    assert f"TLS: verifying certificates against SSL_CERT_FILE={certs.ca}" in log
    assert "Traceback" not in log
    assert_stored_as_captured(data, frames, expected)


# --------------------------------------------------------------------------- untrusted certificates


def _tls_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "TLS certificate verify failed" in r.getMessage()]


@pytest.mark.asyncio
async def test_an_untrusted_websocket_certificate_is_one_line_then_backoff_no_traceback(
    bundled_capture: Path,
    tmp_path: Path,
    certs: ThrowawayCerts,
    stranger: ThrowawayCerts,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """REST is trusted (discovery works), the websocket host presents a certificate from a CA the
    daemon was not given: each connection logs one warning naming ``wss://host:port`` and the
    reason, then keeps retrying with backoff; the daemon stays up and stops cleanly."""
    caplog.set_level(logging.DEBUG, logger="ingestd")
    data = tmp_path / "data"
    async with (
        SimVenue([bundled_capture], speed=0, ssl_context=_server(certs)) as rest,
        SimVenue([bundled_capture], speed=0, ssl_context=_server(stranger)) as ws,
    ):
        settings = settings_for(
            rest.rest_url,
            ws.ws_url,
            data,
            symbols="BTCUSDT",
            channels="trade,book_ticker",
            tls={"ca_file": str(certs.ca)},
            streams=FAST,
            clock={"enabled": False},
        )
        daemon = Daemon(settings)

        def failures() -> dict[str, int]:
            assert daemon.streams is not None
            conns = daemon.streams.stats()["connections"]
            return {name: int(c["connect_failures"]) for name, c in conns.items()}

        async with running(daemon):
            await until(lambda: daemon.streams is not None, what="streams started")
            # Many failed attempts per connection, each after a backoff delay.
            await until(lambda: min(failures().values()) >= 8, timeout=60, what="8 failed connects each")
            assert daemon.streams is not None
            stats = daemon.streams.stats()["connections"]
            assert not ws.stats().connections  # no websocket was ever opened
            ready, detail = daemon.readiness()  # /readyz names what has no data
            assert not ready
            assert "stream btcusdt@bookTicker: no frame yet" in detail["not_ready"]
        assert daemon.stats()["connection_events"].get("connected", 0) == 0

    origin = f"wss://127.0.0.1:{ws.port}"
    warnings = _tls_warnings(caplog)
    # Exactly one line per connection (the first failure of the episode); the rest are DEBUG.
    assert sorted(r.getMessage().split(":")[0] for r in warnings if r.levelno >= logging.WARNING) == sorted(
        stats
    )
    for record in warnings:
        message = record.getMessage()
        assert f"{origin}: TLS certificate verify failed: unable to get local issuer certificate" in message
        assert "retrying with backoff" in message
        assert "?streams=" not in message  # the host, not the whole stream list
    assert sum(1 for r in warnings if r.levelno >= logging.WARNING) == len(stats)
    for name, conn in stats.items():
        assert conn["connects"] == 0, name
        assert conn["backoff_attempts"] >= 8, name  # every retry drew a backoff delay
        assert f"{origin}: TLS certificate verify failed" in str(conn["last_error"]), name
    # Nothing anywhere in ingestd's logs carries a traceback, and nothing failed fatally.
    ours = [
        r for r in caplog.records if r.name.startswith("ingestd") and not r.name.startswith("ingestd.sim")
    ]
    assert not [r for r in ours if r.exc_info], [r.getMessage() for r in ours if r.exc_info]
    assert not [r for r in ours if r.levelno >= logging.ERROR], [r.getMessage() for r in ours]


@pytest.mark.asyncio
async def test_an_untrusted_rest_certificate_at_start_up_is_a_startup_error_naming_host_and_reason(
    bundled_capture: Path, tmp_path: Path, stranger: ThrowawayCerts, no_env_trust: None
) -> None:
    """Discovery treats an untrusted certificate like an unreachable host: the REST client's
    retries, then one StartupError (the CLI's exit 3) with OpenSSL's reason."""
    async with SimVenue([bundled_capture], speed=0, ssl_context=_server(stranger)) as sim:
        daemon = Daemon(settings_for(sim.rest_url, sim.ws_url, tmp_path / "data", symbols="BTCUSDT"))
        with pytest.raises(StartupError) as info:
            await daemon.run()
        requests = sim.stats().rest_requests
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"binance-usdm: cannot reach {sim.rest_url}/fapi/v1/exchangeInfo: ")
    assert "TLS certificate verify failed: unable to get local issuer certificate (4 attempts)" in msg
    assert requests == {}  # no request was ever sent over the untrusted connection
    assert daemon.stats()["rest"]["errors"] == {"tls": 4}


# --------------------------------------------------------------------------- TLS cut mid-stream


class LastRecords:
    """A hook that notes when the capture's last record of every stream has come through."""

    ID_FIELD: ClassVar[dict[str, str]] = {
        "trade": "trade_id",
        "book_ticker": "update_id",
        "depth_diff": "final_update_id",
    }

    def __init__(self, truth: CaptureTruth, native: str) -> None:
        self.last = {ch: truth.keys(ch, native)[-1] for ch in self.ID_FIELD}
        self.seen: set[str] = set()
        self.done = asyncio.Event()

    async def __call__(self, record: Record) -> None:
        channel = record.channel
        if getattr(record, self.ID_FIELD[channel]) == self.last[channel]:
            self.seen.add(channel)
            if self.seen == set(self.last):
                self.done.set()


@pytest.mark.parametrize("route", ["/public", "/market"])
@pytest.mark.asyncio
async def test_tls_aborted_mid_stream_reconnects_and_only_the_unread_tail_is_lost(
    bundled_capture: Path, tmp_path: Path, certs: ThrowawayCerts, route: str
) -> None:
    """The sim drops one route's TLS connection after 2,000 frames with neither close_notify nor a
    close frame (fault ``close(1006)``: the transport is aborted). The daemon reconnects and the
    venue goes on where it left off (``resume="continue"``, live-like). Storage equals the
    capture except, at most, a tail the venue wrote to the dead socket after the daemon's last
    read; the book resyncs and the gap log records the disconnect. The other route never notices."""
    truth = CaptureTruth.load(bundled_capture)
    data = tmp_path / "data"
    watch = LastRecords(truth, "BTCUSDT")
    async with SimVenue([bundled_capture], speed=0, resume="continue", ssl_context=_server(certs)) as sim:
        sim.faults.stall(sticky=True)  # hold every frame until both routes are connected
        settings = settings_for(
            sim.rest_url,
            sim.ws_url,
            data,
            symbols="BTCUSDT",
            channels=DEMO_CHANNELS,
            tls={"ca_file": str(certs.ca)},
            streams=FAST,
            clock={"enabled": False},
            snapshots={"limit": 100, "weight_headroom": 1.0},
            hooks={"policy": "block"},
        )
        daemon = Daemon(settings)
        daemon.add_hook(watch, channels=list(LastRecords.ID_FIELD))
        async with running(daemon) as ev:
            await until(lambda: sim.stats().connections_open == 2, what="both routes connected")
            assert sim.faults.close(1006, after_frames=2000, route=route) == 1
            sim.faults.resume()
            await until(lambda: ev.count("disconnected") == 1, timeout=60, what="the disconnect")
            # The last frame of every stream came through: all a live socket sent is in.
            await asyncio.wait_for(watch.done.wait(), 120)
            await until(lambda: books_synced(daemon, ["BTCUSDT"]), timeout=60, what="book synced")
            assert daemon.streams is not None
            conns = daemon.streams.stats()["connections"]
        sim_conns = sorted(sim.stats().connections, key=lambda c: c.id)

    cut = [c for c in sim_conns if c.route == route]
    assert len(cut) == 2
    assert cut[0].close_code == 1006
    assert sum(cut[0].frames_sent.values()) == 2000
    assert set(cut[0].subscriptions) == set(cut[1].subscriptions)
    name = f"binance-usdm/{route.strip('/')}#0"
    assert conns[name]["reconnects"] == 1
    assert conns[name]["reconnect_reasons"] == {"close 1006": 1}
    assert conns[next(n for n in conns if n != name)]["reconnects"] == 0
    channels = ["book_ticker", "depth_diff"] if route == "/public" else ["trade"]
    lost = assert_only_the_tail_was_lost(data, truth, cut[0].last, channels)
    assert lost < 2000
    untouched = [c for c in LastRecords.ID_FIELD if c not in channels]
    assert_storage_is_capture(data, truth, channels=untouched)
    log = [g for g in gaps(data) if g["native"] == "BTCUSDT"]
    if route == "/public":  # the book's stream was cut: a disconnect gap naming it, then a resync
        assert [g["kind"] for g in log] == ["disconnect", "resync"], log
        assert "close 1006" in log[0]["reason"]
    else:
        assert log == []


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("kind", ["missing", "directory", "not-pem", "private-key"])
def test_a_bad_ca_file_is_one_line_naming_it_and_exit_2(
    kind: str, tmp_path: Path, certs: ThrowawayCerts, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = {
        "missing": tmp_path / "nope.pem",
        "directory": tmp_path,
        "not-pem": tmp_path / "notes.txt",
        "private-key": certs.key,
    }[kind]
    (tmp_path / "notes.txt").write_text("not a certificate\n")
    data, log_file = tmp_path / "data", tmp_path / "ingestd.log"
    code = main(["--ca-file", str(bad), "--data-dir", str(data), "--log-file", str(log_file)])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.startswith(f"ingestd: config error: tls.ca_file {bad}: ")
    assert err.count("\n") == 1, err
    assert out == ""
    assert not log_file.exists()  # refused before logging or anything else started
    assert not data.exists()


def test_client_context_verifies_by_default(certs: ThrowawayCerts) -> None:
    for ctx in (client_context(), client_context(certs.ca)):
        assert ctx.verify_mode is ssl.CERT_REQUIRED
        assert ctx.check_hostname is True


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--tls-cert", "{cert}"], "--tls-cert and --tls-key go together"),
        (["--tls-key", "{key}"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "{missing}", "--tls-key", "{key}"], "--tls-cert {missing}: No such file"),
        (["--tls-cert", "{cert}", "--tls-key", "{missing}"], "--tls-key {missing}: No such file"),
        (["--tls-cert", "{key}", "--tls-key", "{key}"], "not a PEM certificate and its private key"),
        (["--tls-cert", "{cert}", "--tls-key", "{ca_key}"], "key values mismatch"),
    ],
)
def test_sim_rejects_a_bad_certificate_or_key_in_one_line_exit_2(
    flags: list[str], needle: str, tmp_path: Path, certs: ThrowawayCerts, capsys: pytest.CaptureFixture[str]
) -> None:
    names = {
        "cert": str(certs.cert),
        "key": str(certs.key),
        "ca_key": str(certs.ca.with_name("ca.key")),
        "missing": str(tmp_path / "nope.pem"),
    }
    code = main(["sim", *(f.format(**names) for f in flags)])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.startswith("ingestd sim: ")
    assert err.count("\n") == 1, err
    assert needle.format(**names) in err
    assert out == ""


@pytest.mark.asyncio
async def test_sim_cli_serves_https_and_wss_and_prints_their_urls(certs: ThrowawayCerts) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ingestd", "sim", "--tls-cert", str(certs.cert), "--tls-key", str(certs.key),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
        rest, ws = (part.split("=", 1)[1] for part in line.split())
        assert rest.startswith("https://127.0.0.1:")
        assert ws == "wss://" + rest.removeprefix("https://")
        ctx = client_context(certs.ca)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{rest}/fapi/v1/time", ssl=ctx) as resp:
                assert resp.status == 200
                assert "serverTime" in await resp.json()
            async with session.ws_connect(f"{ws}/public/stream?streams=btcusdt@bookTicker", ssl=ctx) as conn:
                msg = await asyncio.wait_for(conn.receive_json(), 30)
                assert msg["stream"] == "btcusdt@bookTicker"
            # Without the CA the same URL does not verify.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(f"{rest}/fapi/v1/time", ssl=client_context()):
                    pass
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
