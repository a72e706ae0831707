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
    """GET ``<url>/status``; a 503 still carries the JSON body. Raises ``ValueError`` for a URL
    that is not http(s) or an answer that is not JSON, ``TypeError`` for JSON that is not an
    object, ``OSError`` when unreachable."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    req = urllib.request.Request(url.rstrip("/") + "/status", headers={"Accept": "application/json"})  # noqa: S310 - scheme checked above
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - scheme checked above
            body = resp.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"/status did not answer JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TypeError(f"/status answered a JSON {type(data).__name__}, not an object")
    return data


def _age(v: Any) -> str:
    return "-" if v is None else f"{float(v):.1f}s"


def _book_state(name: str, books: dict[str, Any]) -> str:
    """The book column: only the diff-depth stream of a symbol (``<s>@depth``, ``<s>@depth@100ms``,
    not the partial ``<s>@depth20``) feeds a local book."""
    native, _, kind = name.partition("@")
    if not kind.startswith("depth") or kind[5:6].isdigit():
        return "-"
    b = books.get(native.upper())
    return "-" if b is None else str(b.get("state", "?"))


def _table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out.writelines(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows
    )


def render(status: dict[str, Any], out: TextIO) -> None:
    """Write the table for one ``/status`` snapshot."""
    uptime = float(status.get("uptime_s") or 0.0)
    ready = "READY" if status.get("ready") else "NOT READY"
    # Liveness is shown only when it fails: that is what restarts the daemon.
    if status.get("alive") is False:
        ready += "  NOT ALIVE"
    out.write(
        f"{status.get('venue', '?')}  {ready}  uptime {uptime:.0f}s  contracts {status.get('contracts', 0)}\n"
    )
    out.writelines(f"  not alive: {reason}\n" for reason in status.get("not_alive") or [])
    out.writelines(f"  not ready: {reason}\n" for reason in status.get("not_ready") or [])
    streams = (status.get("streams") or {}).get("streams") or {}
    conns = (status.get("streams") or {}).get("connections") or {}
    books = (status.get("books") or {}).get("symbols") or {}
    rows: list[tuple[str, ...]] = [("STREAM", "STATE", "AGE", "RATE/s", "RECONN", "DUPS", "ERRORS", "BOOK")]
    for name, st in sorted(streams.items()):
        conn = conns.get(st.get("connection", ""), {})
        rows.append(
            (
                name,
                str(conn.get("state", "?")),
                _age(st.get("last_frame_age_s")),
                f"{st.get('frames', 0) / max(uptime, 1.0):.1f}",
                str(conn.get("reconnects", 0)),
                str(st.get("duplicates", 0)),
                str(st.get("parse_errors", 0)),
                _book_state(name, books),
            )
        )
    _table(rows, out)
    consumers = (status.get("bus") or {}).get("consumers") or {}
    if consumers:
        crow: list[tuple[str, ...]] = [("CONSUMER", "QUEUED", "HIGH", "MAX", "DROPPED")]
        crow.extend(
            (name, *(str(c.get(k, "?")) for k in ("depth", "high_water", "maxsize", "dropped")))
            for name, c in consumers.items()
        )
        _table(crow, out)
    totals = (status.get("books") or {}).get("totals") or {}
    if totals:
        out.write(
            f"books {totals.get('synced', 0)}/{totals.get('symbols', 0)} synced, "
            f"{totals.get('resyncs', 0)} resyncs, {totals.get('audit_mismatches', 0)} audit mismatches\n"
        )
    clock = status.get("clock") or {}
    if clock.get("offset_ms") is not None:
        out.write(f"clock offset {clock['offset_ms']:+.1f} ms (rtt {clock.get('rtt_ms', 0):.1f} ms)\n")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """0 when the daemon answered and is ready, 1 when it answered not ready, 3 when unreachable."""
    out = out or sys.stdout
    try:
        status = fetch_status(args.url, args.timeout)
    except (OSError, ValueError, TypeError) as exc:
        sys.stderr.write(f"ingestd status: cannot read {args.url}/status: {exc}\n")
        return 3
    if args.json:
        out.write(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        render(status, out)
    return 0 if status.get("ready") else 1
