"""cryptofeed's Binance futures feed pointed at the sim: L2 book + trades, count-only callbacks.

Runs in its own virtualenv (``bench/.cache/cryptofeed-venv``, made by ``bench.run``), so it
imports only cryptofeed and the standard library (plus :mod:`bench.probe`, stdlib only).

Two small overrides make cryptofeed 2.4 talk to the sim, nothing in its data path is touched:

* its endpoint tables (``websocket_endpoints``, ``rest_endpoints``) name the sim's URLs, and
  ``_address`` splits the combined-stream URL by USDⓈ-M route (``/public`` for depth,
  ``/market`` for aggTrade), which cryptofeed 2.4 predates;
* its websocket connection class refuses any address that is not ``wss://``; a subclass accepts
  the sim's ``ws://127.0.0.1``.

Callbacks count and, with ``--latency``, time receive→callback (cryptofeed's
``receipt_timestamp`` is taken when its reader gets the frame) and exchange→callback. The run
ends after ``--expect`` callbacks, after ``--max-seconds``, or when no callback came for
``--idle-seconds``; the result JSON is then written and the process exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import time
from typing import Any, ClassVar

from bench.probe import Probe

# cryptofeed lives in the benchmark's own virtualenv and ships no type information: its names
# are looked up at run time (typed Any) rather than imported for the type checker.
_feed: Any = importlib.import_module("cryptofeed.feed")
_conn: Any = importlib.import_module("cryptofeed.connection")
_defines: Any = importlib.import_module("cryptofeed.defines")
FeedHandler: Any = importlib.import_module("cryptofeed").FeedHandler
BinanceFutures: Any = importlib.import_module("cryptofeed.exchanges").BinanceFutures
RestEndpoint, Routes, WebsocketEndpoint, WSAsyncConn = (
    _conn.RestEndpoint,
    _conn.Routes,
    _conn.WebsocketEndpoint,
    _conn.WSAsyncConn,
)
L2_BOOK, TRADES = _defines.L2_BOOK, _defines.TRADES


class _LoopbackWS(WSAsyncConn):  # type: ignore[misc,valid-type]
    """cryptofeed's websocket connection without its ``wss://``-only check."""

    def __init__(self, address: str, conn_id: str, **kwargs: Any) -> None:
        super().__init__("wss://" + address.removeprefix("ws://"), conn_id, **kwargs)
        self.address = address


def _feed_class(ws: str, rest: str) -> Any:
    class SimBinanceFutures(BinanceFutures):  # type: ignore[misc]
        websocket_endpoints: ClassVar[list[Any]] = [WebsocketEndpoint(ws, options={"compression": None})]
        rest_endpoints: ClassVar[list[Any]] = [
            RestEndpoint(
                rest,
                routes=Routes(
                    "/fapi/v1/exchangeInfo",
                    l2book="/fapi/v1/depth?symbol={}&limit={}",
                    authentication="/fapi/v1/listenKey",
                    open_interest="/fapi/v1/openInterest?symbol={}",
                ),
            )
        ]

        def _address(self) -> Any:
            addr = super()._address()
            urls = addr if isinstance(addr, list) else [addr]
            streams = [s for u in urls for s in u.split("?streams=", 1)[1].split("/")]
            by_route: dict[str, list[str]] = {}
            for s in streams:
                route = "/public" if "@depth" in s or "@bookTicker" in s else "/market"
                by_route.setdefault(route, []).append(s)
            return [f"{ws}{route}/stream?streams={'/'.join(names)}" for route, names in by_route.items()]

    return SimBinanceFutures


def main() -> None:
    """Entry point (see the module docstring)."""
    p = argparse.ArgumentParser(prog="bench.contenders.cryptofeed_feed")
    p.add_argument("--ws", required=True)
    p.add_argument("--rest", required=True)
    p.add_argument("--symbols", required=True, help="comma list of native symbols")
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--idle-seconds", type=float, default=5.0)
    p.add_argument("--latency", action="store_true")
    args = p.parse_args()

    _feed.WSAsyncConn = _LoopbackWS
    feed_cls = _feed_class(args.ws, args.rest)
    wanted = set(args.symbols.split(","))
    mapping = feed_cls.symbol_mapping()
    symbols = sorted(std for std, native in mapping.items() if native in wanted)

    probe = Probe(latency=args.latency)
    latency = args.latency
    expect = args.expect
    started = time.time_ns()

    def finish() -> None:
        probe.extra["symbols"] = len(symbols)
        probe.write(args.out)
        os._exit(0)  # measured and written: cryptofeed's own shutdown is not part of the run

    async def on_message(obj: Any, receipt_timestamp: float) -> None:
        probe.count += 1
        if probe.count == 1:
            probe.mark_first(int(receipt_timestamp * 1e9))
        now = time.time_ns()
        probe.last_ns = now
        if latency:
            ts = getattr(obj, "timestamp", None)
            route = 0 if hasattr(obj, "book") else 1  # books ride /public, trades /market
            probe.sample(now, int(receipt_timestamp * 1e9), int(ts * 1e9) if ts else None, route)
        if probe.count >= expect:
            finish()

    async def watchdog() -> None:
        while True:
            await asyncio.sleep(0.2)
            now = time.time_ns()
            if probe.count and (now - probe.last_ns) / 1e9 > args.idle_seconds:
                probe.extra["ended"] = "idle"
                finish()
            if (now - (probe.first_ns or started)) / 1e9 > args.max_seconds:
                probe.extra["ended"] = "max_seconds"
                finish()

    config = {"uvloop": True, "log": {"filename": args.log, "level": "WARNING"}}
    fh = FeedHandler(config=config)
    fh.add_feed(
        feed_cls(
            symbols=symbols, channels=[L2_BOOK, TRADES], callbacks={L2_BOOK: on_message, TRADES: on_message}
        )
    )
    loop = asyncio.new_event_loop()  # uvloop's, through the policy FeedHandler installed
    asyncio.set_event_loop(loop)
    fh.run(start_loop=False)
    watch = loop.create_task(watchdog())
    try:
        loop.run_forever()
    finally:
        watch.cancel()


if __name__ == "__main__":
    main()
