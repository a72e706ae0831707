"""``ingestd replay``: run stored data through the same hooks as live.

``ingestd replay --data DIR [--venue V] [--symbols A,B] [--channels a,b] [--from T] [--to T]
[--speed X] --hook MODULE:FUNC [--hook …]`` merges the stored tree by ``recv_ts`` and calls each
hook once per record, in order, through the daemon's hook consumer (same record structs, same
``HookContext``; ``ctx.books`` is the book as of the record). Without ``--hook`` the records are
printed as NDJSON (the JSON ``ingestd tail`` prints).

Exit codes: 0 at the end of the data, 2 bad arguments (missing or empty directory, unknown
channel, ``--from`` not before ``--to``, a malformed date, a hook that does not load). An
unreadable Parquet file is reported by name on stderr, skipped and counted; the replay goes on.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import IO, Any

from ingestd.consumers.hooks import HookConsumer, HookContext, load_hook
from ingestd.errors import ConfigError
from ingestd.replay.engine import DEFAULT_WARMUP_S, Replay, format_ns
from ingestd.replay.hooks import HookTarget, run_hooks

EXIT_OK, EXIT_USAGE = 0, 2


def _number(text: str, *, positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or (positive and value == 0):  # "not >=" also refuses NaN
        raise argparse.ArgumentTypeError(f"{text} must be {'positive' if positive else '>= 0'}")
    return value


def _speed(text: str) -> float:
    return _number(text, positive=False)


def _positive(text: str) -> float:
    return _number(text, positive=True)


def _list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def add_selection(parser: argparse.ArgumentParser, *, channels: bool = True) -> None:
    """``--data --venue --symbols [--channels] --from --to``: shared with ``ingestd export``."""
    parser.add_argument(
        "--data", required=True, metavar="DIR", help="the stored Parquet tree (--data-dir of a run)"
    )
    parser.add_argument("--venue", help="binance-usdm or binance-spot (needed when the tree holds both)")
    parser.add_argument(
        "--symbols", type=_list, metavar="A,B", help="native or normalized symbols (default: all)"
    )
    if channels:
        parser.add_argument(
            "--channels", type=_list, metavar="a,b", help="channels to hand on (default: all stored)"
        )
    parser.add_argument(
        "--from",
        dest="start",
        metavar="TIME",
        help="start, inclusive: YYYY-MM-DD (UTC), an ISO 8601 time with a zone, or ns since the epoch",
    )
    parser.add_argument("--to", dest="end", metavar="TIME", help="end, exclusive (same forms as --from)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``replay`` subcommand's arguments."""
    add_selection(parser)
    parser.add_argument(
        "--speed",
        type=_speed,
        default=0.0,
        metavar="X",
        help="0 (default): as fast as possible; 1: the recorded pace; 10: ten times faster",
    )
    parser.add_argument(
        "--hook",
        action="append",
        metavar="MODULE:FUNC",
        help="async hook called once per record (repeatable); without it, print NDJSON",
    )
    parser.add_argument(
        "--hook-timeout",
        type=_positive,
        default=1.0,
        metavar="SECONDS",
        help="per-call hook deadline (default 1)",
    )
    parser.add_argument(
        "--no-books", action="store_true", help="do not rebuild order books (ctx.books is None)"
    )
    parser.add_argument(
        "--book-warmup",
        type=_speed,
        default=DEFAULT_WARMUP_S,
        metavar="SECONDS",
        help=f"read book data this long before --from (default {DEFAULT_WARMUP_S:g})",
    )


def build_replay(args: argparse.Namespace) -> Replay:
    """The :class:`Replay` the arguments describe (:class:`ConfigError` on bad input)."""
    return Replay(
        args.data,
        venue=args.venue,
        symbols=args.symbols,
        channels=args.channels,
        start=args.start,
        end=args.end,
        books=not args.no_books,
        warmup_s=args.book_warmup,
    )


class Progress:
    """A one-line progress display on a terminal: position, records, rate (and % with --from/--to)."""

    def __init__(self, stream: IO[str], start: int | None, end: int | None) -> None:
        self.stream = stream
        self.start = start
        self.end = end
        self.began = time.monotonic()
        self.shown = False

    def __call__(self, replay: Replay) -> None:
        pos = replay.position_ts
        elapsed = max(time.monotonic() - self.began, 1e-9)
        where = format_ns(pos) if pos is not None else "-"
        pct = ""
        if pos is not None and self.start is not None and self.end is not None:
            pct = f"{100 * (pos - self.start) / (self.end - self.start):5.1f}%  "
        line = f"\rreplay  {pct}{where}  {replay.delivered:,} records  {replay.delivered / elapsed:,.0f}/s"
        self.stream.write(line)
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def summary(replay: Replay, seconds: float) -> str:
    """The closing line: records per channel, time taken, what could not be read."""
    st = replay.stats()
    per = ", ".join(f"{ch} {n:,}" for ch, n in st["per_channel"].items()) or "none"
    line = f"replay: {st['records']:,} records ({per}) in {seconds:.1f} s"
    if st["files_skipped"]:
        line += (
            f"; {st['files_skipped']} unreadable file(s) skipped ({st['rows_lost']:,} rows lost, "
            f"{st['bytes_unreadable']:,} bytes without a footer)"
        )
    return line


async def _print(replay: Replay, out: Any) -> None:
    from ingestd.consumers.nats import encode_record  # noqa: PLC0415 - the JSON tail prints

    for rec in replay:
        out.write(encode_record(rec) + b"\n")


async def run(args: argparse.Namespace) -> int:
    """Run the replay; returns the exit code."""
    try:
        replay = build_replay(args)
        context: HookContext = replay.context
        targets = [
            HookTarget(HookConsumer(spec, load_hook(spec), channels=None, timeout_s=args.hook_timeout,
                                    context=context))
            for spec in args.hook or ()
        ]  # fmt: skip
    except ConfigError as exc:
        sys.stderr.write(f"ingestd replay: {exc}\n")
        return EXIT_USAGE
    began = time.monotonic()
    progress = Progress(sys.stderr, replay.start, replay.end) if sys.stderr.isatty() and targets else None
    try:
        if targets:
            await run_hooks(replay, targets, speed=args.speed, progress=progress)
        else:
            await _print(replay, sys.stdout.buffer)
    except BrokenPipeError:
        return EXIT_OK  # `ingestd replay … | head`
    finally:
        if progress is not None:
            progress.done()
        for t in targets:
            await t.consumer.close()
    sys.stderr.write(summary(replay, time.monotonic() - began) + "\n")
    for t in targets:
        st = t.consumer.stats()
        if st["errors"] or st["timeouts"]:
            sys.stderr.write(
                f"replay: hook {t.consumer.name}: {st['errors']} error(s), {st['timeouts']} timeout(s); "
                f"last: {st['last_error']}\n"
            )
    return EXIT_OK
