"""``ingestd sim``: serve recorded captures as a local Binance venue until SIGINT/SIGTERM.

When ready it prints exactly one line to stdout, flushed::

    rest=http://127.0.0.1:PORT ws=ws://127.0.0.1:PORT

With ``--tls-cert FILE --tls-key FILE`` it serves the same venue over TLS and prints
``rest=https://… ws=wss://…``.

Exit codes: 0 clean stop, 2 missing/unreadable capture, certificate or key, or a bad flag,
3 could not listen.
``python -m ingestd.sim.cli …`` runs it without the main CLI (tests start it that way).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

from ingestd.errors import ConfigError
from ingestd.sim.schedule import ListingChange, parse_change
from ingestd.sim.venue import BUNDLED_CAPTURE, SimVenue
from ingestd.tls import server_context

EXIT_OK, EXIT_USAGE, EXIT_STARTUP = 0, 2, 3


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"speed must be a number >= 0 (0 = as fast as the client reads): {text!r}"
        )
    return value


def _change(text: str, *, listed: bool) -> ListingChange:
    try:
        return parse_change(text, listed=listed)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _listed(text: str) -> ListingChange:
    return _change(text, listed=True)


def _delisted(text: str) -> ListingChange:
    return _change(text, listed=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``ingestd sim`` flags."""
    parser.add_argument(
        "--capture",
        action="append",
        type=Path,
        metavar="FILE",
        help="capture to replay, repeatable: hftbacktest .gz, an ingestd --raw dump, or a cryptofeed "
        f"X.ws.N.0 (default: the bundled {BUNDLED_CAPTURE.name})",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    parser.add_argument(
        "--speed", type=_speed, default=0.0, help="1 = real time, 10 = ten times faster, 0 = as fast as read"
    )
    parser.add_argument("--loop", action="store_true", help="at the end of the capture start again")
    parser.add_argument(
        "--loop-shift",
        action="store_true",
        help="with --loop: shift ids and times of every later pass so it is new data (soak runs)",
    )
    parser.add_argument(
        "--resume",
        choices=("restart", "continue", "live"),
        default="restart",
        help="new connections replay from the start (restart), go on where the last one left (continue), "
        "or join the venue's own clock, which runs from the first connection whether anyone listens (live)",
    )
    parser.add_argument(
        "--list-at",
        action="append",
        type=_listed,
        default=[],
        metavar="SECONDS:SYMBOL",
        help="SYMBOL becomes TRADING at SECONDS of replay time (before: PENDING_TRADING on USDⓈ-M, "
        "absent on spot; its streams send nothing); repeatable",
    )
    parser.add_argument(
        "--delist-at",
        action="append",
        type=_delisted,
        default=[],
        metavar="SECONDS:SYMBOL",
        help="SYMBOL stops trading at SECONDS (USDⓈ-M: SETTLING, spot: BREAK; its streams go quiet); "
        "repeatable",
    )
    parser.add_argument(
        "--no-derived-agg-trades",
        action="store_true",
        help="do not derive an @aggTrade stream from the recorded trades of symbols that have none",
    )
    parser.add_argument("--clock-skew-ms", type=int, default=0, help="added to serverTime")
    parser.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="serve https/wss with this PEM certificate (chain)"
    )
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="the PEM private key of --tls-cert")
    parser.add_argument(
        "--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="log to stderr at this level"
    )


def _fail(message: str) -> None:
    sys.stderr.write(f"ingestd sim: {message}\n")
    sys.stderr.flush()


def _server_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server context of ``--tls-cert``/``--tls-key``; ``None`` without them."""
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("--tls-cert and --tls-key go together")
    return server_context(cert, key)


async def run(args: argparse.Namespace) -> int:
    """Start the venue, print the ready line, serve until SIGINT/SIGTERM, close, return 0."""
    if getattr(args, "log_level", None):
        from ingestd.observe.logging import setup_logging  # noqa: PLC0415 - only when asked for

        setup_logging("auto", args.log_level)
    captures = list(args.capture or [BUNDLED_CAPTURE])
    try:
        tls = _server_tls(args)
        venue = SimVenue(
            captures,
            host=args.host,
            port=args.port,
            speed=args.speed,
            loop=args.loop,
            resume=args.resume,
            loop_shift=args.loop_shift,
            ssl_context=tls,
            listings=[*getattr(args, "list_at", []), *getattr(args, "delist_at", [])],
            derive_agg_trades=not getattr(args, "no_derived_agg_trades", False),
        )
        venue.faults.clock_skew_ms = args.clock_skew_ms
        await venue.start()
    except ConfigError as exc:  # CaptureError included; a bad certificate or key too
        _fail(str(exc))
        return EXIT_USAGE
    except OSError as exc:
        _fail(f"cannot listen on {args.host}:{args.port}: {exc}")
        return EXIT_STARTUP
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Handlers only ask for shutdown; not available off the main thread or on Windows.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        sys.stdout.write(f"rest={venue.rest_url} ws={venue.ws_url}\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await venue.close()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ingestd.sim.cli [flags]``."""
    from ingestd.loop import loop_factory  # noqa: PLC0415 - keeps importing this module cheap

    parser = argparse.ArgumentParser(
        prog="ingestd sim", description="A local Binance venue replaying captures."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        with asyncio.Runner(loop_factory=loop_factory(True)) as runner:
            return runner.run(run(args))
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
