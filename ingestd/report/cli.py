"""``ingestd report``: five PNG figures and an ``index.html`` from stored data and/or a collect run.

Figures: ``spot_dashboard.png``, ``futures_dashboard.png``, ``basis.png``, ``co_movement.png``,
``ws_microstructure.png``. A figure whose data is missing is skipped with one line saying what it
needed; ``index.html`` shows the figures and the reasons for the skipped ones.

Exit codes: 0 at least one figure written; 1 none could be drawn; 2 bad flags, no input, or
matplotlib missing (``pip install 'ingestd[report]'``).
``python -m ingestd.report.cli …`` runs it without the main CLI.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

from ingestd.report.spans import span_ns

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ingestd.report.load import ReportData

EXIT_OK, EXIT_NONE, EXIT_USAGE = 0, 1, 2

TITLES: Final = {
    "spot_dashboard": "Spot dashboard: candles, SMA20, EMA55, VWAP, RSI14, volume with MA20",
    "futures_dashboard": "Futures dashboard: candles, EMA21, EMA55, VWAP, MACD, open interest, volume",
    "basis": "Basis: futures - spot (USDT, bps) with a 60-minute mean, 15-minute basis and premium, funding",
    "co_movement": "Co-movement: correlation and beta of futures vs spot log returns, annualised volatility",
    "ws_microstructure": "Websocket microstructure: last price, volume, event-to-receive latency",
}


def _bar(text: str) -> int:
    try:
        return span_ns(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``ingestd report`` flags."""
    parser.add_argument("--data", type=Path, metavar="DIR", help="stored Parquet (the daemon's data_dir)")
    parser.add_argument("--collect", type=Path, metavar="DIR", help="an `ingestd collect --out` directory")
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="where the PNGs and index.html go"
    )
    parser.add_argument("--spot-symbol", default="BTCUSDT", type=str.upper)
    parser.add_argument("--futures-symbol", default="BTCUSDT", type=str.upper)
    parser.add_argument(
        "--bar",
        type=_bar,
        default=span_ns("1m"),
        metavar="SPAN",
        help="candle width: 1m (default), or 5s, 15m, 1h … (finer than the klines: built from trades)",
    )


def _drawers() -> dict[str, Callable[[ReportData, int], Figure]]:
    from ingestd.report import figures  # noqa: PLC0415 - imports matplotlib, an optional extra

    return {
        "spot_dashboard": figures.draw_spot_dashboard,
        "futures_dashboard": figures.draw_futures_dashboard,
        "basis": figures.draw_basis,
        "co_movement": figures.draw_co_movement,
        "ws_microstructure": figures.draw_ws_microstructure,
    }


def _save(fig: Figure, path: Path) -> None:
    """PNG through a temporary file and a rename (Agg: the backend chosen in :func:`run`)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            fig.savefig(fh, format="png")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def index_html(written: dict[str, str], skipped: dict[str, str], sources: str) -> str:
    """A page showing every written figure and why each skipped one was skipped."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8"><title>ingestd report</title>',
        "<style>body{font-family:sans-serif;margin:2em;max-width:1500px}img{max-width:100%;"
        "border:1px solid #ddd}.skip{color:#a33}</style></head><body>",
        "<h1>ingestd report</h1>",
        f"<p>{html.escape(sources)}</p>",
    ]
    for name, title in TITLES.items():
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if name in written:
            parts.append(f'<p><img src="{html.escape(written[name])}" alt="{html.escape(title)}"></p>')
        else:
            parts.append(f'<p class="skip">skipped: {html.escape(skipped.get(name, "not drawn"))}</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def make_report(
    data: ReportData, out: Path, bar: int, stream: TextIO
) -> tuple[dict[str, str], dict[str, str]]:
    """Draw every figure into ``out``; returns (written name → file, skipped name → reason)."""
    from ingestd.report.figures import Skip  # noqa: PLC0415 - optional extra

    written: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for name, draw in _drawers().items():
        try:
            fig = draw(data, bar)
        except Skip as exc:
            skipped[name] = str(exc)
            stream.write(f"skipped {name}: {exc}\n")
            continue
        _save(fig, out / f"{name}.png")
        written[name] = f"{name}.png"
        stream.write(f"wrote {out / (name + '.png')}\n")
    sources = ", ".join(
        f"{label} {path}" for label, path in (("data", data.data_dir), ("collect", data.collect_dir)) if path
    )
    (out / "index.html").write_text(index_html(written, skipped, f"Sources: {sources}."), encoding="utf-8")
    stream.write(f"wrote {out / 'index.html'}\n")
    return written, skipped


def run(args: argparse.Namespace) -> int:
    """One report as the flags say; returns the exit code."""
    data_dir: Path | None = args.data
    collect_dir: Path | None = args.collect
    if data_dir is None and collect_dir is None:
        sys.stderr.write("ingestd report: give --data DIR and/or --collect DIR\n")
        return EXIT_USAGE
    for flag, path in (("--data", data_dir), ("--collect", collect_dir)):
        if path is not None and not path.is_dir():
            sys.stderr.write(f"ingestd report: {flag} {path}: not a directory\n")
            return EXIT_USAGE
    try:
        import matplotlib  # noqa: PLC0415 - the optional extra, checked before any work
        import numpy  # noqa: F401, PLC0415 - matplotlib brings it; the series code uses it directly

        matplotlib.use("Agg")
    except ImportError as exc:
        sys.stderr.write(f"ingestd report: needs {exc.name or 'matplotlib'}: pip install 'ingestd[report]'\n")
        return EXIT_USAGE
    from ingestd.report.load import ReportData  # noqa: PLC0415 - reads Parquet, after the checks

    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        sys.stderr.write(f"ingestd report: cannot create {args.out}: {exc}\n")
        return EXIT_USAGE
    data = ReportData(data_dir, collect_dir, spot_symbol=args.spot_symbol, futures_symbol=args.futures_symbol)
    written, _ = make_report(data, args.out, args.bar, sys.stdout)
    return EXIT_OK if written else EXIT_NONE


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ingestd.report.cli --out DIR [--data DIR] [--collect DIR]``."""
    parser = argparse.ArgumentParser(prog="ingestd report", description="Figures from stored market data.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
