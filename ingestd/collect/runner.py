"""One collect run: every endpoint of :data:`~ingestd.collect.endpoints.ENDPOINTS`, in order.

Calls go through :class:`~ingestd.producers.rest.RestClient` and its weight budget, one client per
API family (spot ``/api``, USDⓈ-M ``/fapi`` + ``/futures/data``): in production those are two
hosts with two limits (6000 and 2400 per minute), and a single ``--rest-url`` (the sim) still
meters them apart, like Binance. A collect run is short, so the budget lets a burst of ten
seconds' worth of weight through at once; the rolling one-minute limit still holds.

A failing endpoint (HTTP error, bad JSON, a file that cannot be written) is recorded and the run
goes on. Endpoints that need an API key are skipped, with one line, when ``INGESTD_API_KEY`` is
not set. Progress: a bar on a terminal, one line per endpoint otherwise; a summary table at the end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, TextIO

import orjson

from ingestd.collect.endpoints import ENDPOINTS, Endpoint, Market
from ingestd.collect.output import (
    CallResult,
    StreamResult,
    count_items,
    document,
    iso_ns,
    payload_table,
    records_table,
    write_atomic,
    write_parquet,
)
from ingestd.collect.ws import frame_row, record_stream
from ingestd.errors import ParseError, RestError
from ingestd.producers.budget import WeightBudget
from ingestd.producers.rest import RestClient, RestResponse
from ingestd.venues.binance.endpoints import SPOT, USDM

log = logging.getLogger("ingestd.collect")

API_KEY_ENV: Final = "INGESTD_API_KEY"
API_KEY_HEADER: Final = "X-MBX-APIKEY"
BURST_S: Final = 10.0
HEADROOM: Final = 0.5
_KEY_CODES: Final = frozenset({-2014, -2015})
"""Binance's "API-key format invalid" / "Invalid API-key, IP, or permissions"."""


@dataclass(frozen=True, slots=True)
class CollectOptions:
    """What one run fetches. Limits are clamped to each endpoint's documented maximum."""

    spot_symbol: str = "BTCUSDT"
    futures_symbol: str = "BTCUSDT"
    futures_pair: str = "BTCUSDT"
    contract_type: str = "PERPETUAL"
    kline_limit: int = 500
    funding_limit: int = 100
    metric_limit: int = 30
    trade_limit: int = 500
    depth_limit: int = 100
    period: str = "5m"
    interval: str = "1m"
    composite_index: str | None = None
    window: str = "1h"
    ws_seconds: float = 0.0
    timeout_s: float = 10.0
    retries: int = 2

    def values(self) -> dict[str, object]:
        """Option values the endpoint table refers to (derived limits included)."""
        out: dict[str, object] = asdict(self)
        out["spot_kline_limit"] = min(self.kline_limit, 1000)
        out["kline_limit"] = min(self.kline_limit, 1500)
        out["trade_limit"] = min(self.trade_limit, 1000)
        out["futures_historical_limit"] = min(self.trade_limit, 500)
        out["funding_limit"] = min(self.funding_limit, 1000)
        out["metric_limit"] = min(self.metric_limit, 500)
        return out


class Progress:
    """A progress bar on a terminal; one line per endpoint elsewhere (logs, CI, pipes)."""

    BAR: Final = 30

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.total = total
        self.done = 0
        self.tty = stream.isatty()

    def start(self, label: str) -> None:
        if self.tty:
            filled = self.BAR * self.done // max(1, self.total)
            bar = "#" * filled + "." * (self.BAR - filled)
            self.stream.write(f"\r[{bar}] {self.done}/{self.total} {label:<40.40}")
            self.stream.flush()

    def finish(self, r: CallResult) -> None:
        self.done += 1
        label = f"{r.market}/{r.name}"
        if self.tty:
            if r.status != "ok":
                self.stream.write(f"\r{' ' * (self.BAR + 56)}\r{_line(r, label)}\n")
            self.start(label)
            if self.done == self.total:
                self.stream.write("\n")
            return
        self.stream.write(f"[{self.done:>2}/{self.total}] {_line(r, label)}\n")
        self.stream.flush()


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} kB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MB"


def _ms(ms: float) -> str:
    """A latency for people: ms, s, or days (a replayed capture's frames are years old)."""
    if abs(ms) < 10_000:
        return f"{ms:.1f} ms"
    if abs(ms) < 86_400_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 86_400_000:.1f} d"


def _line(r: CallResult, label: str) -> str:
    if r.status == "ok":
        ms = _ms((r.latency_s or 0) * 1000)
        used = "-" if r.used_weight is None else str(r.used_weight)
        note = f"  ({r.note})" if r.note else ""
        size = _size(r.bytes)
        return f"ok    {label:<36} {r.http_status} {ms:>10}  used {used:>5}  {r.items} items  {size}{note}"
    return f"{'skip' if r.status == 'skipped' else 'FAIL':<5} {label:<36} {r.error}"


def summary_table(calls: Sequence[CallResult], stream: StreamResult | None) -> str:
    """The table printed at the end of a run."""
    head = (
        f"{'endpoint':<38} {'status':<7} {'http':>4} {'latency':>10} {'weight':>6} {'items':>6} {'bytes':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in calls:
        lat = "-" if r.latency_s is None else _ms(r.latency_s * 1000)
        lines.append(
            f"{r.market + '/' + r.name:<38} {r.status:<7} {r.http_status or '-':>4} {lat:>10} "
            f"{r.weight:>6} {'-' if r.items is None else r.items:>6} {_size(r.bytes):>9}"
        )
    if stream is not None:
        med = stream.latency_ms.get("median")
        lat = "-" if med is None else _ms(med)
        lines.append(
            f"{'spot/ws ' + stream.stream:<38} {stream.status:<7} {'-':>4} {lat:>10} {0:>6} "
            f"{stream.frames:>6} {_size(stream.bytes):>9}"
        )
    ok = sum(r.status == "ok" for r in calls) + (stream is not None and stream.ok)
    failed = sum(r.status == "error" for r in calls) + (stream is not None and not stream.ok)
    skipped = sum(r.status == "skipped" for r in calls)
    lines.append(f"{ok} ok, {failed} failed, {skipped} skipped")
    return "\n".join(lines)


class Collector:
    """Runs one collect into ``out``. ``spot_url``/``futures_url``/``ws_url`` are base URLs."""

    def __init__(
        self,
        options: CollectOptions,
        out: Path,
        *,
        spot_url: str,
        futures_url: str,
        ws_url: str,
        api_key: str | None = None,
        stream: TextIO,
        endpoints: Sequence[Endpoint] = ENDPOINTS,
    ) -> None:
        self.options = options
        self.values = options.values()
        self.out = out
        self.urls: dict[Market, str] = {"spot": spot_url.rstrip("/"), "futures": futures_url.rstrip("/")}
        self.ws_url = ws_url
        self.api_key = api_key or None
        self.stream = stream
        self.endpoints = tuple(endpoints)
        self.calls: list[CallResult] = []
        self.ws: StreamResult | None = None
        self._clients: dict[Market, RestClient] = {}

    def _client(self, market: Market) -> RestClient:
        client = self._clients.get(market)
        if client is None:
            venue = SPOT if market == "spot" else USDM
            budget = WeightBudget(
                max(1, int(venue.weight_limit_per_minute * HEADROOM)), burst_s=BURST_S, name=f"{market} rest"
            )
            client = self._clients[market] = RestClient(
                self.urls[market],
                venue,
                headroom=HEADROOM,
                timeout_s=self.options.timeout_s,
                max_retries=self.options.retries,
                budget=budget,
            )
        return client

    async def run(self) -> int:
        """Fetch everything, write the files, print the summary. 0: all succeeded, 1: any failed."""
        started = time.time_ns()
        for market in ("spot", "futures"):
            (self.out / market).mkdir(parents=True, exist_ok=True)
        ws_task: asyncio.Task[tuple[StreamResult, list[Any]]] | None = None
        if self.options.ws_seconds > 0:
            # Streams while the REST calls run; awaited before the summary.
            ws_task = asyncio.create_task(
                record_stream(
                    self.ws_url, self.options.spot_symbol, self.options.window, self.options.ws_seconds
                ),
                name="collect-ws",
            )
        progress = Progress(self.stream, len(self.endpoints))
        try:
            for ep in self.endpoints:
                progress.start(f"{ep.market}/{ep.name}")
                result = await self._call(ep)
                self.calls.append(result)
                progress.finish(result)
            if ws_task is not None:
                self.ws = await self._save_stream(*await ws_task)
                if self.ws.ok:
                    self.stream.write(
                        f"ws    {self.ws.stream}: {self.ws.frames} frames in {self.ws.elapsed_s} s\n"
                    )
                else:
                    self.stream.write(f"FAIL  ws {self.ws.stream}: {self.ws.error}\n")
        finally:
            if ws_task is not None and not ws_task.done():
                ws_task.cancel()
                await asyncio.gather(ws_task, return_exceptions=True)
            for client in self._clients.values():
                await client.close()
        await asyncio.to_thread(write_atomic, self.out / "metrics.json", self._metrics(started))
        self.stream.write(summary_table(self.calls, self.ws) + "\n")
        self.stream.flush()
        failed = any(r.status == "error" for r in self.calls) or (self.ws is not None and not self.ws.ok)
        return 1 if failed else 0

    # -- one call ----------------------------------------------------------------------------------

    async def _call(self, ep: Endpoint) -> CallResult:
        query = ep.query(self.values)
        url = self.urls[ep.market] + ep.path
        r = CallResult(ep.market, ep.name, url, query, "error", weight=ep.weight_of(query))
        if ep.auth == "required" and self.api_key is None:
            r.status, r.error = "skipped", f"needs an API key: set {API_KEY_ENV} to fetch it"
            return r
        headers = {API_KEY_HEADER: self.api_key} if self.api_key and ep.auth != "none" else None
        t0 = time.monotonic()
        try:
            resp, payload = await self._fetch(ep, query, headers)
        except RestError as exc:
            fallback = await self._index_info_fallback(ep, query, exc, r)
            if fallback is None:
                r.total_s = round(time.monotonic() - t0, 6)
                r.http_status = exc.status
                if ep.auth == "optional" and (exc.status in (401, 403) or exc.code in _KEY_CODES):
                    r.status = "skipped"
                    r.error = f"the venue wants an API key (HTTP {exc.status}): set {API_KEY_ENV} to fetch it"
                else:
                    r.error = str(exc)
                return r
            resp, payload = fallback
        except ParseError as exc:
            r.total_s = round(time.monotonic() - t0, 6)
            r.http_status, r.error = 200, f"bad JSON: {exc}"
            return r
        r.total_s = round(time.monotonic() - t0, 6)
        r.http_status, r.latency_s, r.used_weight = resp.status, round(resp.elapsed_s, 6), resp.used_weight
        r.items, r.bytes = count_items(payload), len(resp.body)
        try:
            await asyncio.to_thread(self._write, ep, r, resp, payload)
        except OSError as exc:
            r.error = f"cannot write: {exc}"
            return r
        r.status, r.ok = "ok", True
        return r

    async def _fetch(
        self, ep: Endpoint, query: dict[str, str], headers: dict[str, str] | None
    ) -> tuple[RestResponse, Any]:
        resp = await self._client(ep.market).get(ep.path, query, weight=ep.weight_of(query), headers=headers)
        return resp, resp.json()

    async def _index_info_fallback(
        self, ep: Endpoint, query: dict[str, str], exc: RestError, r: CallResult
    ) -> tuple[RestResponse, Any] | None:
        """indexInfo for a symbol Binance rejects: fetch the full list instead, and say so."""
        if (
            ep.name != "indexInfo"
            or "symbol" not in query
            or exc.status is None
            or not 400 <= exc.status < 500
        ):
            return None
        rejected = query.pop("symbol")
        r.params = dict(query)
        r.weight = ep.weight_of(query)
        r.note = f"{rejected} rejected ({exc.code}: HTTP {exc.status}); fetched the full list instead"
        log.info("indexInfo: %s", r.note)
        return await self._fetch(ep, query, None)

    def _write(self, ep: Endpoint, r: CallResult, resp: RestResponse, payload: Any) -> None:
        base = self.out / ep.market / ep.name
        doc = document(
            recv_ns=resp.recv_ts,
            endpoint=r.endpoint,
            params=r.params,
            elapsed_s=resp.elapsed_s,
            used_weight=resp.used_weight,
            payload=payload,
        )
        write_atomic(base.with_suffix(".json"), doc)
        r.file = f"{ep.market}/{ep.name}.json"
        if ep.table is not None:
            table = payload_table(ep.table, payload, name=ep.name)
            if table is not None:
                write_parquet(base.with_suffix(".parquet"), table)
                r.parquet, r.rows = f"{ep.market}/{ep.name}.parquet", table.num_rows

    # -- the stream --------------------------------------------------------------------------------

    async def _save_stream(self, result: StreamResult, frames: list[Any]) -> StreamResult:
        if not frames:
            return result
        name = f"ws_ticker_{self.options.window}"
        base = self.out / "spot" / name
        doc = document(
            recv_ns=frames[0]["recv_ts"],
            endpoint=result.url,
            params={"streams": result.stream, "seconds": result.seconds},
            elapsed_s=result.elapsed_s,
            used_weight=None,
            payload=frames,
        )
        table = records_table([frame_row(f) for f in frames if "data" in f])
        try:
            await asyncio.to_thread(write_atomic, base.with_suffix(".json"), doc)
            result.file = f"spot/{name}.json"
            if table is not None:
                await asyncio.to_thread(write_parquet, base.with_suffix(".parquet"), table)
                result.parquet = f"spot/{name}.parquet"
        except OSError as exc:
            result.status, result.ok, result.error = "error", False, f"cannot write: {exc}"
        return result

    def _metrics(self, started_ns: int) -> bytes:
        finished = time.time_ns()
        doc = {
            "started_at": iso_ns(started_ns),
            "finished_at": iso_ns(finished),
            "elapsed_s": round((finished - started_ns) / 1e9, 3),
            "rest_urls": dict(self.urls),
            "ws_url": self.ws_url,
            "options": {k: v for k, v in asdict(self.options).items() if k not in ("timeout_s", "retries")},
            "api_key": self.api_key is not None,
            "calls": [r.to_dict() for r in self.calls],
            "ws": None if self.ws is None else self.ws.to_dict(),
            "summary": {
                "ok": sum(r.status == "ok" for r in self.calls),
                "failed": sum(r.status == "error" for r in self.calls),
                "skipped": sum(r.status == "skipped" for r in self.calls),
                "ws_ok": None if self.ws is None else self.ws.ok,
            },
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2)
