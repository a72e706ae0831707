"""Event-loop selection: uvloop when available and wanted, else asyncio's default."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable

log = logging.getLogger("ingestd.loop")


def loop_factory(use_uvloop: bool = True) -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory for :func:`asyncio.Runner`; falls back to asyncio when uvloop is missing."""
    if use_uvloop:
        try:
            import uvloop  # noqa: PLC0415 - optional, imported only when asked for
        except ImportError:
            log.info("uvloop not installed: using the asyncio event loop")
        else:
            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return factory
    return asyncio.new_event_loop


def tune_gc() -> None:
    """GC settings for a long-running, allocation-heavy process.

    Records outlive their callback (they sit in queues and write buffers), which makes the
    cyclic collector rescan them over and over: 25-70 % of a core was lost to it at saturation
    (docs/performance.md §4). Freezing what start-up allocated and raising the gen-0 threshold
    removes most of that; records are ``gc=False`` structs anyway.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
