"""Logs: JSON lines with ``--log-format json``, readable text on a TTY, transitions only.

A full replay of the real capture (93,953 frames, with a forced reconnect) must produce a few
dozen lines, every one a JSON object with ts/level/logger/msg.
"""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from ingestd.app import Daemon
from ingestd.observe.logging import JsonFormatter, setup_logging
from ingestd.sim import SimVenue
from tests.e2e import capture_frames, run_until, settings_for

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """setup_logging reconfigures the ``ingestd`` tree: put it back for the other tests."""
    root = logging.getLogger("ingestd")
    saved = (list(root.handlers), root.level, root.propagate)
    try:
        yield
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
            if h not in saved[0]:
                h.close()
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
        root.propagate = saved[2]


def _json_lines(text: str) -> list[dict[str, object]]:
    out = []
    for line in text.splitlines():
        obj = orjson.loads(line)
        assert isinstance(obj, dict), line
        assert {"ts", "level", "logger", "msg"} <= set(obj), line
        assert isinstance(obj["ts"], str)
        assert TS.match(obj["ts"]), obj["ts"]
        out.append(obj)
    return out


@pytest.mark.asyncio
@pytest.mark.usefixtures("restore_logging")
async def test_a_full_replay_logs_a_few_json_lines(
    bundled_capture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    setup_logging("json", "INFO")
    frames = capture_frames(bundled_capture)
    total = len(frames["trade"]) + len(frames["bookTicker"]) + len(frames["depth"])
    assert total == 93_953
    async with SimVenue([bundled_capture], speed=0, resume="continue") as sim:
        sim.faults.close(1001, after_frames=40_000, stream="btcusdt@bookTicker", sticky=True)
        settings = settings_for(
            sim.rest_url,
            sim.ws_url,
            tmp_path / "data",
            symbols="BTCUSDT",
            channels="trade,book_ticker,depth_diff",
            streams={"backoff_initial_s": 0.05, "backoff_max_s": 0.2},
        )
        daemon = Daemon(settings)
        assert await run_until(daemon, lambda: daemon.bus.published >= total, timeout=60) == 0
    lines = _json_lines(err.getvalue())
    assert 5 <= len(lines) < 50, [x["msg"] for x in lines]
    assert all(str(x["logger"]).startswith("ingestd.") for x in lines)
    assert {x["level"] for x in lines} <= {"INFO", "WARNING"}
    msgs = [str(x["msg"]) for x in lines]
    assert any(m.startswith("running: binance-usdm, 1 contracts") for m in msgs)
    assert any(m.startswith("stopped in ") for m in msgs)
    assert "streaming on 2 connection(s)" in msgs
    # The reconnect is there as transitions: the producer's line and the book's, once each.
    dropped = [
        str(x["logger"]) for x in lines if str(x["msg"]).startswith("binance-usdm/public#0 disconnected")
    ]
    assert sorted(dropped) == ["ingestd.book", "ingestd.streams"]


@pytest.mark.usefixtures("restore_logging")
def test_text_on_a_tty_json_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    log = logging.getLogger("ingestd.test")
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    setup_logging("auto", "INFO")
    log.info("connected to %s", "wss://x", extra={"connection": "c#0"})
    line = tty.getvalue().rstrip("\n")
    assert re.match(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    ingestd\.test: connected to wss://x$", line
    )

    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    setup_logging("auto", "INFO")
    log.info("connected to %s", "wss://x", extra={"connection": "c#0"})
    log.debug("not at INFO")
    (obj,) = _json_lines(pipe.getvalue())
    assert {k: v for k, v in obj.items() if k != "ts"} == {
        "level": "INFO",
        "logger": "ingestd.test",
        "msg": "connected to wss://x",
        "connection": "c#0",
    }

    forced = _Tty()
    monkeypatch.setattr(sys, "stderr", forced)
    setup_logging("json", "WARNING")  # --log-format json wins over a TTY
    log.info("dropped: below WARNING")
    log.warning("queue %s dropped %d", "hook:x", 7)
    (obj,) = _json_lines(forced.getvalue())
    assert obj["msg"] == "queue hook:x dropped 7"
    assert obj["level"] == "WARNING"


def test_json_formatter_exceptions_and_odd_values() -> None:
    fmt = JsonFormatter()
    try:
        raise ValueError("bad frame")
    except ValueError:
        rec = logging.LogRecord(
            "ingestd.streams", logging.ERROR, __file__, 1, "parse %s", ("x",), sys.exc_info()
        )
    rec.__dict__["path"] = Path("/srv/data")
    obj = orjson.loads(fmt.format(rec))
    assert obj["msg"] == "parse x"
    assert obj["level"] == "ERROR"
    assert obj["path"] == "/srv/data"
    assert "ValueError: bad frame" in obj["exc"]
    assert "\n" not in fmt.format(rec)  # one line, even with a traceback


@pytest.mark.usefixtures("restore_logging")
def test_log_file_is_json_and_reopens_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "ingestd.log"
    handler = setup_logging("auto", "INFO", path)
    assert handler is not None
    log = logging.getLogger("ingestd.test")
    log.info("before rotation")
    path.rename(tmp_path / "ingestd.log.1")
    handler.reopen()  # what SIGHUP does
    log.info("after rotation")
    assert [o["msg"] for o in _json_lines((tmp_path / "ingestd.log.1").read_text())] == ["before rotation"]
    assert [o["msg"] for o in _json_lines(path.read_text())] == ["after rotation"]
