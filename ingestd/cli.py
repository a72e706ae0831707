"""Command line: ``ingestd [run] …`` (the default), ``ingestd sim …``, ``replay``, ``export`` ….

``main(argv) -> int`` is testable in-process. Exit codes: 0 clean stop, 1 runtime failure,
2 usage or configuration error, 3 start-up failure (discovery failed, unknown symbol …).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ingestd import __version__
from ingestd.errors import ConfigError, StartupError
from ingestd.records import CHANNELS

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_STARTUP = 0, 1, 2, 3
SUBCOMMANDS = ("run", "sim", "tail", "status", "collect", "report", "replay", "export")

log = logging.getLogger("ingestd.cli")


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2 (its default too)."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_USAGE, f"ingestd: error: {message}\n")


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config file (default: $INGESTD_CONFIG if set)")
    p.add_argument("--venue", choices=("binance-usdm", "binance-spot"), help="default binance-usdm")
    p.add_argument(
        "--symbols", help="comma list of native symbols (BTCUSDT,ETHUSDT); default: all discovered"
    )
    p.add_argument("--channels", help=f"comma list of: {','.join(CHANNELS)}")
    p.add_argument("--no-storage", action="store_true", help="do not write Parquet")
    p.add_argument("--data-dir", type=Path, help="Parquet root (default ./data)")
    p.add_argument("--json-dump", type=Path, metavar="DIR", help="also write NDJSON per channel per hour")
    p.add_argument("--raw", action="store_true", help="with --json-dump: dump exact frames (sim-replayable)")
    p.add_argument("--hook", action="append", metavar="MODULE:FUNC", help="async hook, repeatable")
    p.add_argument("--rest-url", help="REST base URL override (sim, testnet)")
    p.add_argument("--ws-url", help="websocket base URL override (sim, testnet)")
    p.add_argument(
        "--ca-file", type=Path, metavar="FILE", help="PEM CAs to trust for https/wss (default: system store)"
    )
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop cleanly after N s (0 = forever)")
    p.add_argument("--depth-limit", type=int, help="levels per REST depth snapshot")
    p.add_argument("--snapshot-interval", type=float, metavar="SECONDS", help="also poll snapshots every N s")
    p.add_argument("--log-format", choices=("text", "json", "auto"))
    p.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--log-file", type=Path, help="log to this file (reopened on SIGHUP)")
    p.add_argument("--health-port", type=int, help="HTTP /healthz /readyz /metrics /status port (0 = off)")
    p.add_argument("--health-host", help="bind address of the health endpoint (default 127.0.0.1)")
    p.add_argument("--nats-url", help="also publish every record to NATS JetStream (nats://HOST:PORT)")
    p.add_argument("--shard", metavar="K/N", help="ingest only shard K of N of the contract set")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ingestd", description="Binance market-data ingestion daemon.")
    parser.add_argument("--version", action="version", version=f"ingestd {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    run = sub.add_parser("run", help="ingest (the default command)")
    _run_arguments(run)
    sim = sub.add_parser("sim", help="a local Binance-compatible venue replaying a capture")
    from ingestd.sim.cli import add_arguments  # noqa: PLC0415 - keeps `ingestd run` start-up lean

    add_arguments(sim)
    tail = sub.add_parser("tail", help="print or hook records from NATS JetStream")
    from ingestd.tail import add_arguments as tail_arguments  # noqa: PLC0415

    tail_arguments(tail)
    status = sub.add_parser("status", help="show a running daemon's streams, books and drops")
    from ingestd.observe.status import add_arguments as status_arguments  # noqa: PLC0415

    status_arguments(status)
    collect = sub.add_parser("collect", help="fetch every public REST market-data endpoint once")
    from ingestd.collect.cli import add_arguments as collect_arguments  # noqa: PLC0415

    collect_arguments(collect)
    report = sub.add_parser("report", help="PNG figures and index.html from stored data")
    from ingestd.report.cli import add_arguments as report_arguments  # noqa: PLC0415

    report_arguments(report)
    replay = sub.add_parser("replay", help="run stored data through hooks, books rebuilt as of each record")
    from ingestd.replay.cli import add_arguments as replay_arguments  # noqa: PLC0415

    replay_arguments(replay)
    export = sub.add_parser(
        "export", help="write stored data in another tool's format (nautilus, hftbacktest)"
    )
    from ingestd.export.cli import add_arguments as export_arguments  # noqa: PLC0415

    export_arguments(export)
    return parser


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Only the flags the user gave, in the settings' nested shape."""
    out: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        if value is None:
            return
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    put("venue", args.venue)
    put("symbols", args.symbols)
    put("channels", args.channels)
    put("storage.enabled", False if args.no_storage else None)
    put("storage.data_dir", args.data_dir)
    put("json_dump.dir", args.json_dump)
    put("json_dump.raw", True if args.raw else None)
    put("hooks.specs", args.hook)
    put("rest_url", args.rest_url)
    put("ws_url", args.ws_url)
    put("tls.ca_file", args.ca_file)
    put("duration_s", args.duration)
    put("snapshots.limit", args.depth_limit)
    put("snapshots.poll_interval_s", args.snapshot_interval)
    put("log.format", args.log_format)
    put("log.level", args.log_level)
    put("log.file", args.log_file)
    put("health.port", args.health_port)
    put("health.host", args.health_host)
    put("nats.url", args.nats_url)
    put("shard", args.shard)
    return out


def _check_combinations(settings: Any, *, raw: bool) -> None:
    """Cross-flag rules the settings model cannot see (it does not know which flags were given)."""
    from ingestd.venues.binance.endpoints import VENUES  # noqa: PLC0415

    if raw and settings.json_dump.dir is None:
        raise ConfigError("--raw needs --json-dump DIR (where the frames go)")
    limit = settings.snapshots.limit
    if limit is not None:
        allowed = VENUES[settings.venue].depth_limits
        if limit not in allowed:
            shown = ", ".join(map(str, allowed)) if len(allowed) < 20 else f"{allowed[0]}..{allowed[-1]}"
            raise ConfigError(f"--depth-limit {limit}: {settings.venue} allows {shown}")


def _cmd_run(args: argparse.Namespace) -> int:
    from ingestd.app import Daemon  # noqa: PLC0415 - import cost only for the run command
    from ingestd.config import CONFIG_ENV, load_settings  # noqa: PLC0415
    from ingestd.loop import loop_factory, tune_gc  # noqa: PLC0415
    from ingestd.observe.logging import setup_logging  # noqa: PLC0415
    from ingestd.tls import client_context  # noqa: PLC0415

    config_path = args.config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    try:
        settings = load_settings(config_path=config_path, cli=cli_overrides(args))
        _check_combinations(settings, raw=args.raw)
        # Before logging starts: a bad tls.ca_file is an error before anything is opened.
        tls = client_context(settings.tls.ca_file)
        setup_logging(settings.log.format, settings.log.level, settings.log.file)
        daemon = Daemon(settings, ssl_context=tls)
    except ConfigError as exc:
        print(f"ingestd: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.use_uvloop)) as runner:
            tune_gc()
            return runner.run(daemon.run())
    except StartupError as exc:
        print(f"ingestd: startup failed: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        return EXIT_RUNTIME


def _cmd_sim(args: argparse.Namespace) -> int:
    from ingestd.sim.cli import run  # noqa: PLC0415

    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return EXIT_OK


def _cmd_tail(args: argparse.Namespace) -> int:
    from ingestd.observe.logging import setup_logging  # noqa: PLC0415
    from ingestd.tail import run  # noqa: PLC0415

    setup_logging("text", "WARNING")
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return EXIT_OK


def _cmd_collect(args: argparse.Namespace) -> int:
    from ingestd.collect.cli import run  # noqa: PLC0415

    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return EXIT_RUNTIME


def _cmd_report(args: argparse.Namespace) -> int:
    from ingestd.report.cli import run  # noqa: PLC0415

    return run(args)


def _cmd_replay(args: argparse.Namespace) -> int:
    from ingestd.loop import loop_factory  # noqa: PLC0415
    from ingestd.observe.logging import setup_logging  # noqa: PLC0415
    from ingestd.replay.cli import run  # noqa: PLC0415

    setup_logging("text", "WARNING")
    try:
        with asyncio.Runner(loop_factory=loop_factory(True)) as runner:
            return runner.run(run(args))
    except KeyboardInterrupt:
        return EXIT_RUNTIME


def _cmd_export(args: argparse.Namespace) -> int:
    from ingestd.export.cli import run  # noqa: PLC0415
    from ingestd.observe.logging import setup_logging  # noqa: PLC0415

    setup_logging("text", "WARNING")
    try:
        return run(args)
    except KeyboardInterrupt:
        return EXIT_RUNTIME


def _cmd_status(args: argparse.Namespace) -> int:
    from ingestd.observe.status import run  # noqa: PLC0415

    return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ingestd`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (
        args_list[0] not in SUBCOMMANDS and args_list[0] not in ("-h", "--help", "--version")
    ):
        args_list.insert(0, "run")
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "sim":
        return _cmd_sim(args)
    if args.command == "tail":
        return _cmd_tail(args)
    if args.command == "status":
        return _cmd_status(args)
    if args.command == "collect":
        return _cmd_collect(args)
    if args.command == "report":
        return _cmd_report(args)
    if args.command == "replay":
        return _cmd_replay(args)
    if args.command == "export":
        return _cmd_export(args)
    return _cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
