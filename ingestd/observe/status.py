"""``ingestd status [--url URL]``: a compact table of a running daemon's health.

Reads the daemon's ``/status`` JSON and prints one row per stream (connection state, last
message age, rate, reconnects, duplicates, book sync), then queue depths and drops per consumer.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from typing import Any, TextIO

import orjson

DEFAULT_URL = "http://127.0.0.1:9108"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=DEFAULT_URL, help=f"the daemon's health endpoint (default {DEFAULT_URL})")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    p.add_argument("--json", action="store_true", help="print the raw /status JSON")


def fetch_status(url: str, timeout: float) -> dict[str, Any]:
    """GET ``<url>/status``; a 503 still carries the JSON body."""
    req = urllib.request.Request(url.rstrip("/") + "/status", headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - operator-given URL
            body = resp.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    data = orjson.loads(body)
    if not isinstance(data, dict):
        raise ValueError("/status did not answer a JSON object")
    return data


def _age(v: Any) -> str:
    return "-" if v is None else f"{float(v):.1f}s"


def render(status: dict[str, Any], out: TextIO) -> None:
    """Write the table for one ``/status`` snapshot."""
    uptime = float(status.get("uptime_s") or 0.0) or 1.0
    ready = "READY" if status.get("ready") else "NOT READY"
    out.write(
        f"{status.get('venue', '?')}  {ready}  uptime {uptime:.0f}s  contracts {status.get('contracts', 0)}\n"
    )
    for reason in status.get("not_ready") or []:
        out.write(f"  not ready: {reason}\n")
    streams = (status.get("streams") or {}).get("streams") or {}
    conns = (status.get("streams") or {}).get("connections") or {}
    books = (status.get("books") or {}).get("symbols") or {}
    rows = [("STREAM", "STATE", "AGE", "RATE/s", "RECONN", "DUPS", "ERRORS", "BOOK")]
    for name, st in sorted(streams.items()):
        conn = conns.get(st.get("connection", ""), {})
        native = name.partition("@")[0].upper()
        book = "-"
        if "@depth" in name and not name.split("@")[1][5:6].isdigit():
            b = books.get(native) or next((v for v in books.values() if v.get("native") == native), None)
            if b is not None:
                book = "synced" if b.get("synced") else str(b.get("state", "unsynced"))
        rows.append(
            (
                name,
                str(conn.get("state", "?")),
                _age(st.get("last_frame_age_s")),
                f"{st.get('frames', 0) / uptime:.1f}",
                str(conn.get("reconnects", 0)),
                str(st.get("duplicates", 0)),
                str(st.get("parse_errors", 0)),
                book,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
    consumers = (status.get("bus") or {}).get("consumers") or {}
    if consumers:
        out.write("CONSUMER  QUEUED  HIGH  DROPPED\n")
        for name, c in consumers.items():
            out.write(f"{name}  {c.get('depth', 0)}  {c.get('high_water', 0)}  {c.get('dropped', 0)}\n")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """0 when the daemon answered and is ready, 1 when it answered not ready, 3 when unreachable."""
    out = out or sys.stdout
    try:
        status = fetch_status(args.url, args.timeout)
    except (OSError, ValueError) as exc:
        print(f"ingestd status: cannot read {args.url}/status: {exc}", file=sys.stderr)
        return 3
    if args.json:
        out.write(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        render(status, out)
    return 0 if status.get("ready") else 1
