"""The ceiling: a bare aiohttp client that only receives every frame and decodes it.

It opens the same connections ingestd plans (one per USDⓈ-M route, same stream lists), asks
aiohttp for bytes (``decode_text=False``), decodes each frame once with ``orjson.loads`` and
counts. No records, no queues, no storage: what Python can do at all on this machine.

``python -m bench.contenders.ceiling --ws URL --streams FILE --expect N --out FILE``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import aiohttp
import orjson

from bench.probe import Probe, ceiling_args
from ingestd.loop import loop_factory


async def _reader(url: str, probe: Probe, expect: int, done: asyncio.Event) -> None:
    loads = orjson.loads
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, decode_text=False, compress=0, max_msg_size=4 << 20, autoping=True) as ws,
    ):
        while not done.is_set():
            msg = await ws.receive()
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                return
            loads(msg.data)
            probe.count += 1
            if probe.count == 1:
                probe.mark_first(time.time_ns())
            if probe.count >= expect:
                probe.last_ns = time.time_ns()
                done.set()


async def _main(args: argparse.Namespace, routes: dict[str, list[str]]) -> int:
    probe = Probe()
    done = asyncio.Event()
    urls = [f"{args.ws}{route}/stream?streams={'/'.join(names)}" for route, names in routes.items()]
    tasks = [asyncio.create_task(_reader(u, probe, args.expect, done)) for u in urls]
    try:
        await asyncio.wait_for(done.wait(), args.max_seconds)
    except TimeoutError:
        probe.last_ns = time.time_ns()
        probe.extra["timed_out"] = True
    probe.write(args.out)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return 0


def main() -> int:
    """Entry point (see the module docstring)."""
    args = ceiling_args("bench.contenders.ceiling")
    with asyncio.Runner(loop_factory=loop_factory(True)) as runner:
        rc = runner.run(_main(args, json.loads(Path(args.streams).read_text())))
    sys.stdout.flush()
    os._exit(rc)  # measured and written: skip interpreter teardown


if __name__ == "__main__":
    main()
