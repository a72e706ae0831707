"""The ceiling with picows: receive every frame with picows and decode it with ``orjson.loads``.

Same connections and count as :mod:`bench.contenders.ceiling`, another websocket client: it
measures what swapping aiohttp for picows could gain (docs/performance.md §2: picows receives 2-3x faster).
Runs in its own virtualenv (``bench/.cache/picows-venv``: picows, orjson, uvloop), so it imports
only those and the standard library (plus :mod:`bench.probe`).

picows is push-based: ``on_ws_frame`` is called synchronously for each frame of a received
chunk, and the frame's payload is valid only during that call, so it is decoded right there.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import time
from pathlib import Path
from typing import Any

from bench.probe import Probe, ceiling_args

# picows, orjson and uvloop live in the benchmark's own virtualenv: looked up at run time.
_picows: Any = importlib.import_module("picows")
_loads: Any = importlib.import_module("orjson").loads
_uvloop: Any = importlib.import_module("uvloop")


def main() -> None:
    """Entry point: ``--ws URL --streams FILE --expect N --out FILE``."""
    args = ceiling_args("bench.contenders.picows_ceiling")
    routes: dict[str, list[str]] = json.loads(Path(args.streams).read_text())
    probe = Probe()
    text = _picows.WSMsgType.TEXT

    async def run() -> None:
        done = asyncio.get_running_loop().create_future()

        class Listener(_picows.WSListener):  # type: ignore[misc]
            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                if frame.msg_type != text:
                    return
                _loads(frame.get_payload_as_bytes())
                probe.count += 1
                if probe.count == 1:
                    probe.mark_first(time.time_ns())
                if probe.count >= args.expect and not done.done():
                    probe.last_ns = time.time_ns()
                    done.set_result(None)

        urls = [f"{args.ws}{route}/stream?streams={'/'.join(names)}" for route, names in routes.items()]
        conns = [await _picows.ws_connect(Listener, url) for url in urls]
        try:
            await asyncio.wait_for(done, args.max_seconds)
        except TimeoutError:
            probe.last_ns = time.time_ns()
            probe.extra["timed_out"] = True
        probe.write(args.out)
        for transport, _ in conns:
            transport.disconnect()

    _uvloop.run(run())
    os._exit(0)  # measured and written: skip interpreter teardown


if __name__ == "__main__":
    main()
