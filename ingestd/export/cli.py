"""``ingestd export nautilus …`` and ``ingestd export hftbacktest …``.

Exit codes: 0 done, 2 bad arguments (including a missing optional extra: one line naming it),
1 the export failed while writing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ingestd.errors import ConfigError
from ingestd.replay.cli import add_selection

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``export`` subcommand and its formats."""
    formats = parser.add_subparsers(dest="format", metavar="FORMAT", parser_class=type(parser))
    formats.required = True
    nt = formats.add_parser("nautilus", help="a nautilus_trader ParquetDataCatalog (needs ingestd[nautilus])")
    add_selection(nt, channels=False)
    nt.add_argument(
        "--catalog", required=True, metavar="DIR", help="the catalog directory (created if needed)"
    )
    nt.add_argument("--trades", choices=("auto", "trade", "agg_trade"), default="auto",
                    help="channel of the TradeTicks (auto: trade where stored, else agg_trade)")  # fmt: skip
    hft = formats.add_parser("hftbacktest", help="hftbacktest collector files from a --raw NDJSON dump")
    hft.add_argument("--raw", required=True, metavar="DIR", help="the --json-dump DIR of a --raw run")
    hft.add_argument("--out", required=True, metavar="DIR", help="where <symbol>_<YYYYMMDD>.gz files go")


def _nautilus(args: argparse.Namespace) -> int:
    try:
        from ingestd.export.nautilus import NautilusExport  # noqa: PLC0415 - optional, heavy
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] != "nautilus_trader":
            raise
        sys.stderr.write("ingestd export nautilus: needs nautilus_trader: pip install 'ingestd[nautilus]'\n")
        return EXIT_USAGE

    began = time.monotonic()
    try:
        export = NautilusExport(
            args.data, args.catalog, venue=args.venue, symbols=args.symbols, start=args.start, end=args.end,
            trades=args.trades,
        )  # fmt: skip
    except ConfigError as exc:
        sys.stderr.write(f"ingestd export nautilus: {exc}\n")
        return EXIT_USAGE
    stats = export.run()
    took = time.monotonic() - began
    wrote = ", ".join(f"{n:,} {name}" for name, n in sorted(stats.written.items())) or "nothing"
    sys.stderr.write(f"export: wrote {wrote} to {stats.catalog} in {took:.1f} s\n")
    replay = stats.replay
    if replay.get("files_skipped"):
        skipped, lost = replay["files_skipped"], replay["rows_lost"]
        sys.stderr.write(f"export: {skipped} unreadable file(s) skipped ({lost:,} rows lost)\n")
    for symbol, n in sorted(stats.no_instrument.items()):
        sys.stderr.write(f"export: {symbol}: no stored contract row defines it; {n:,} records left out\n")
    if stats.off_grid:
        sys.stderr.write(f"export: {stats.off_grid:,} prices or sizes were off their increment\n")
    return EXIT_OK


def _hftbacktest(args: argparse.Namespace) -> int:
    from ingestd.export.hftbacktest import export_hftbacktest  # noqa: PLC0415

    try:
        stats = export_hftbacktest(Path(args.raw), Path(args.out))
    except ConfigError as exc:
        sys.stderr.write(f"ingestd export hftbacktest: {exc}\n")
        return EXIT_USAGE
    sys.stderr.write(
        f"export: {stats.lines:,} lines into {len(stats.files)} file(s) under {args.out}"
        f"{f'; {stats.skipped:,} unreadable line(s) skipped' if stats.skipped else ''}\n"
    )
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Run the chosen export; returns the exit code."""
    if args.format == "nautilus":
        return _nautilus(args)
    return _hftbacktest(args)
