"""``ingestd collect``: fetch every public market-data REST endpoint once, save it all.

Exit codes: 0 every endpoint (and the stream, with ``--ws-seconds``) succeeded, skipped ones
(no API key) included; 1 one or more failed (the others were still fetched and saved);
2 bad flags or an output directory that cannot be created.
``python -m ingestd.collect.cli …`` runs it without the main CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from ingestd.collect.endpoints import CONTRACT_TYPES, INTERVALS, PERIODS, WINDOWS
from ingestd.collect.runner import API_KEY_ENV, CollectOptions, Collector
from ingestd.venues.binance.endpoints import SPOT, USDM

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_SYMBOL = re.compile(r"^[A-Z0-9_]{2,40}$")


def _symbol(text: str) -> str:
    value = text.strip().upper()
    if not _SYMBOL.match(value):
        raise argparse.ArgumentTypeError(f"not a symbol like BTCUSDT: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"want an integer >= 1, not {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"want a number of seconds >= 0, not {text!r}")
    return value


def _url(text: str) -> str:
    if not re.match(r"^(https?|wss?)://[^\s/]+", text):
        raise argparse.ArgumentTypeError(f"not an http(s):// or ws(s):// URL: {text!r}")
    return text.rstrip("/")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``ingestd collect`` flags."""
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the files go (created)")
    parser.add_argument(
        "--rest-url",
        type=_url,
        help="one REST base URL for spot and futures (the sim); default: the production hosts",
    )
    parser.add_argument("--ws-url", type=_url, help=f"spot websocket base URL (default {SPOT.ws_url})")
    parser.add_argument("--spot-symbol", type=_symbol, default="BTCUSDT")
    parser.add_argument("--futures-symbol", type=_symbol, default="BTCUSDT")
    parser.add_argument(
        "--futures-pair", type=_symbol, default="BTCUSDT", help="pair of continuous/index klines"
    )
    parser.add_argument("--contract-type", choices=CONTRACT_TYPES, default="PERPETUAL")
    parser.add_argument(
        "--kline-limit", type=_positive_int, default=500, help="bars (spot max 1000, futures 1500)"
    )
    parser.add_argument(
        "--funding-limit", type=_positive_int, default=100, help="funding-rate rows (max 1000)"
    )
    parser.add_argument(
        "--metric-limit",
        type=_positive_int,
        default=30,
        help="rows of open-interest history, long/short and taker ratios (max 500)",
    )
    parser.add_argument(
        "--trade-limit", type=_positive_int, default=500, help="trades (max 1000; futures history 500)"
    )
    parser.add_argument("--depth-limit", type=_positive_int, default=100, help="order-book levels per side")
    parser.add_argument("--period", choices=PERIODS, default="5m", help="period of /futures/data metrics")
    parser.add_argument("--interval", choices=INTERVALS, default="1m", help="kline interval")
    parser.add_argument(
        "--composite-index",
        type=_symbol,
        metavar="SYM",
        help="indexInfo for this composite index (default: the full list)",
    )
    parser.add_argument(
        "--ws-seconds",
        type=_seconds,
        default=0.0,
        metavar="N",
        help="also stream <spot-symbol>@ticker_<window> for N seconds",
    )
    parser.add_argument("--window", choices=WINDOWS, default="1h", help="rolling ticker window")
    parser.add_argument("--timeout", type=_seconds, default=10.0, help="per-request timeout in seconds")
    parser.add_argument("--retries", type=int, choices=range(6), default=2, help="retries on 5xx/timeouts")
    parser.add_argument(
        "--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="log to stderr at this level"
    )


def options_from(args: argparse.Namespace) -> CollectOptions:
    return CollectOptions(
        spot_symbol=args.spot_symbol,
        futures_symbol=args.futures_symbol,
        futures_pair=args.futures_pair,
        contract_type=args.contract_type,
        kline_limit=args.kline_limit,
        funding_limit=args.funding_limit,
        metric_limit=args.metric_limit,
        trade_limit=args.trade_limit,
        depth_limit=args.depth_limit,
        period=args.period,
        interval=args.interval,
        composite_index=args.composite_index,
        window=args.window,
        ws_seconds=args.ws_seconds,
        timeout_s=args.timeout or 10.0,
        retries=args.retries,
    )


async def run(args: argparse.Namespace) -> int:
    """One collect run as the flags say; returns the exit code."""
    if getattr(args, "log_level", None):
        from ingestd.observe.logging import setup_logging  # noqa: PLC0415 - only when asked for

        setup_logging("auto", args.log_level)
    out: Path = args.out
    try:
        await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        sys.stderr.write(f"ingestd collect: cannot create {out}: {exc}\n")
        return EXIT_USAGE
    rest = args.rest_url
    api_key = os.environ.get(API_KEY_ENV, "").strip() or None
    collector = Collector(
        options_from(args),
        out,
        spot_url=rest or SPOT.rest_url,
        futures_url=rest or USDM.rest_url,
        ws_url=args.ws_url or SPOT.ws_url,
        api_key=api_key,
        stream=sys.stdout,
    )
    if api_key is None:
        sys.stdout.write(f"no {API_KEY_ENV}: endpoints that need an API key are skipped\n")
    return await collector.run()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ingestd.collect.cli --out DIR …``."""
    parser = argparse.ArgumentParser(
        prog="ingestd collect", description="Fetch every public Binance market-data REST endpoint once."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
