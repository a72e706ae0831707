"""``ingestd tail``: read records back from NATS JetStream, on this machine or another one.

``ingestd tail --nats-url nats://HOST:4222 'ingestd.binance-usdm.trade.>' [--from new|first|TIME]
[--count N] [--hook MODULE:FUNC]`` subscribes to a subject pattern with an ordered consumer (an
ephemeral push consumer that JetStream re-creates from the last sequence seen if a message goes
missing, so the output has no gaps and no repeats) and either prints every record as one NDJSON
line (the same JSON the publisher wrote) or feeds it, as the record object, to the same
``MODULE:FUNC`` hooks the daemon runs, with the same timeout and isolation. A strategy written
against the daemon's hooks runs unchanged on another machine.

Exit codes follow the daemon's: 0 done (``--count`` reached, SIGTERM, or stdout closed), 2 bad
arguments, 3 NATS unreachable or no stream holds the subject.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import re
import signal
import sys
from datetime import UTC, datetime
from typing import IO, Any

import ingestd.catalog  # noqa: F401 - registers gap, book, clock and poller records for decoding
from ingestd.consumers.hooks import HookConsumer, HookContext, load_hook
from ingestd.consumers.nats import decode_message, encode_record
from ingestd.errors import ConfigError, ParseError

log = logging.getLogger("ingestd.tail")

EXIT_OK, EXIT_USAGE, EXIT_STARTUP = 0, 2, 3
DEFAULT_URL = "nats://127.0.0.1:4222"
_SUBJECT_RE = re.compile(r"[^\s.]+(\.[^\s.]+)*")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``tail`` subcommand's arguments."""
    parser.add_argument(
        "subject", metavar="SUBJECT", help="subject or pattern, e.g. 'ingestd.binance-usdm.trade.>'"
    )
    parser.add_argument("--nats-url", default=DEFAULT_URL, help=f"NATS server (default {DEFAULT_URL})")
    parser.add_argument(
        "--from",
        dest="start",
        default="new",
        metavar="new|first|TIME",
        help="new (default): only what arrives from now; first: all the stream holds; "
        "or an ISO 8601 time with a zone, e.g. 2024-08-08T23:55:00Z",
    )
    parser.add_argument("--count", type=_positive_int, metavar="N", help="stop after N records")
    parser.add_argument(
        "--hook", action="append", metavar="MODULE:FUNC", help="feed records to this async hook (repeatable)"
    )
    parser.add_argument("--hook-timeout", type=_positive_float, default=1.0, metavar="SECONDS",
                        help="per-call hook deadline (default 1)")  # fmt: skip
    parser.add_argument("--stream", help="stream name (default: the stream that holds SUBJECT)")
    parser.add_argument("--connect-timeout", type=_positive_float, default=30.0, metavar="SECONDS",
                        help="how long to wait for NATS to answer at start (default 30)")  # fmt: skip


def parse_start(text: str) -> tuple[str, datetime | None]:
    """``new`` / ``first`` / an ISO time → (deliver policy name, start time).

    A time without a zone is refused rather than guessed (local? UTC?): the error says so.
    """
    t = text.strip().lower()
    if t == "new":
        return "new", None
    if t in ("first", "all"):
        return "all", None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"--from {text!r}: want new, first or an ISO 8601 time", key="from") from None
    if when.tzinfo is None:
        raise ConfigError(f"--from {text!r}: give a time zone (e.g. {text.strip()}Z or +00:00)", key="from")
    return "by_start_time", when.astimezone(UTC)


class _Output:
    """NDJSON to a binary stream, flushed when the subscription has nothing more pending."""

    def __init__(self, stream: IO[Any]) -> None:
        self._bin: IO[bytes] | None = getattr(stream, "buffer", None)
        self._text = stream

    def write(self, line: bytes) -> None:
        if self._bin is not None:
            self._bin.write(line)
        else:
            self._text.write(line.decode())

    def flush(self) -> None:
        (self._bin or self._text).flush()


async def _connect(url: str, wait_s: float) -> Any:
    from nats.aio.client import Client  # noqa: PLC0415 - optional dependency (ingestd[nats])

    nc = Client()
    opts: dict[str, Any] = {
        "servers": [s.strip() for s in url.split(",") if s.strip()],
        "name": "ingestd-tail",
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,  # once connected, ride out outages; the consumer resumes
        "reconnect_time_wait": 1,
        "connect_timeout": min(wait_s, 5.0),
    }

    async def quiet(exc: Exception) -> None:
        log.debug("nats: %s: %s", type(exc).__name__, exc)

    opts["error_cb"] = quiet
    try:
        async with asyncio.timeout(wait_s):
            await nc.connect(**opts)
    except TimeoutError:
        with contextlib.suppress(Exception):
            await nc.close()
        return None
    return nc


class _Reader:
    """Drains the subscription into stdout or the hooks; counts what it saw."""

    def __init__(self, hooks: list[HookConsumer], count: int | None) -> None:
        self.hooks = hooks
        self.count = count
        self.records = 0
        self.unreadable = 0

    async def read(self, sub: Any) -> None:
        out = None if self.hooks else _Output(sys.stdout)
        async for msg in sub.messages:
            try:
                record = decode_message(msg.data)
            except ParseError as exc:
                self.unreadable += 1
                if self.unreadable == 1:
                    log.warning("tail: skipping a message on %s that is not a record: %s", msg.subject, exc)
                continue
            self.records += 1
            if out is None:
                for hook in self.hooks:
                    await hook.consume([record])
            else:
                out.write(encode_record(record) + b"\n")
                if sub.pending_msgs == 0:
                    out.flush()
            if self.count is not None and self.records >= self.count:
                break
        if out is not None:
            out.flush()


def _complain(line: str) -> None:
    sys.stderr.write(line + "\n")


def _check_subject(subject: str) -> None:
    if not _SUBJECT_RE.fullmatch(subject):
        raise ConfigError(f"subject {subject!r}: dot-separated tokens, no spaces (e.g. ingestd.>)")


def _silence_stdout() -> None:
    """After EPIPE (``ingestd tail … | head``), point stdout at /dev/null so the exit-time flush
    does not print a traceback (the recipe from Python's ``signal`` docs)."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _prepare(args: argparse.Namespace) -> tuple[str, datetime | None, list[HookConsumer]]:
    """Check the arguments and load the hooks: (deliver policy, start time, hooks) or ConfigError."""
    _check_subject(args.subject)
    policy, start_time = parse_start(args.start)
    hooks = [
        HookConsumer(spec, load_hook(spec), channels=None, timeout_s=args.hook_timeout, context=HookContext())
        for spec in args.hook or ()
    ]
    return policy, start_time, hooks


async def _subscribe(nc: Any, args: argparse.Namespace, policy: str, start_time: datetime | None) -> Any:
    """An ordered consumer on ``args.subject``, or ``None`` (reported) if no stream holds it."""
    from nats.js.api import ConsumerConfig, DeliverPolicy  # noqa: PLC0415 - optional dependency
    from nats.js.errors import NotFoundError  # noqa: PLC0415

    config = ConsumerConfig(opt_start_time=start_time) if start_time is not None else None
    try:
        return await nc.jetstream().subscribe(
            args.subject,
            stream=args.stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy(policy),
            config=config,
            pending_msgs_limit=65_536,  # bounded; the ordered consumer's flow control paces the server
            pending_bytes_limit=64 * 1024 * 1024,
        )
    except NotFoundError:
        where = f"stream {args.stream}" if args.stream else "no stream"
        _complain(f"ingestd tail: {where} holds subject {args.subject!r} on {args.nats_url}")
        return None


async def _follow(sub: Any, reader: _Reader, stop: asyncio.Event) -> None:
    """Read until the reader is done or ``stop`` is set; a closed stdout is a normal end."""
    reading = asyncio.create_task(reader.read(sub), name="tail:read")
    stopping = asyncio.create_task(stop.wait(), name="tail:stop")
    try:
        await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reading, stopping):
            task.cancel()
        await asyncio.gather(reading, stopping, return_exceptions=True)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    failure = None if reading.cancelled() else reading.exception()
    if isinstance(failure, BrokenPipeError):
        _silence_stdout()  # the reader of our stdout left (`| head`)
    elif failure is not None:
        raise failure


async def run(args: argparse.Namespace) -> int:
    """Run ``ingestd tail`` until ``--count`` records, SIGTERM, or stdout closes. Returns the exit code."""
    if importlib.util.find_spec("nats") is None:
        _complain("ingestd tail: needs nats-py: pip install 'ingestd[nats]'")
        return EXIT_USAGE
    try:
        policy, start_time, hooks = _prepare(args)
    except ConfigError as exc:
        _complain(f"ingestd tail: {exc}")
        return EXIT_USAGE
    nc = await _connect(args.nats_url, args.connect_timeout)
    if nc is None:
        _complain(f"ingestd tail: NATS at {args.nats_url} did not answer within {args.connect_timeout:g} s")
        return EXIT_STARTUP
    reader = _Reader(hooks, args.count)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, stop.set)  # main thread only; Ctrl-C cancels instead
    try:
        sub = await _subscribe(nc, args, policy, start_time)
        if sub is None:
            return EXIT_STARTUP
        log.info("tail: %s from %s on %s", args.subject, args.start, args.nats_url)
        await _follow(sub, reader, stop)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGTERM)
        for hook in hooks:
            await hook.close()
        await nc.close()
        log.info("tail: %d records, %d unreadable messages skipped", reader.records, reader.unreadable)
    return EXIT_OK
