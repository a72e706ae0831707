"""Closing a producer without cutting a batch in half; running its pool of worker tasks.

A producer's task that is inside ``emit`` has handed its batch to the book manager (which may
have applied it) and to some consumers already; cancelling it there leaves the batch with some
consumers and not others. :class:`EmitGuard` knows which of a producer's tasks are emitting, so
``close()`` can cancel the idle ones at once and let the emitting ones finish their batch:

    async def close(self):
        self._closed = True
        await self._guard.stop(self._tasks)

The caller bounds ``close()`` with its shutdown deadline. If the deadline cancels it, the
emitting tasks are cancelled too; the bus then still queues the batch for every consumer it had
not reached yet, or counts it lost for each whose queue is already closed
(:meth:`ingestd.bus.Bus.publish`): never with some consumers and silently not others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from ingestd.records import AnyRecord


class EmitGuard:
    """Wraps a producer's ``emit`` (or any call that emits); tracks the tasks inside it."""

    __slots__ = ("_emit", "_emitting", "_idle", "closing")

    def __init__(self, emit: Callable[[Sequence[AnyRecord]], Awaitable[None]] | None = None) -> None:
        self._emit = emit
        self._emitting: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.closing = False
        """Set by :meth:`stop`: a batch not yet started is not emitted (its task is ending)."""

    async def emit(self, batch: Sequence[AnyRecord]) -> bool:
        """Hand ``batch`` to the wrapped ``emit``; ``False`` (nothing emitted) once closing."""
        assert self._emit is not None
        return await self.run(self._emit, batch)

    async def run(self, fn: Callable[..., Awaitable[None]], *args: Any) -> bool:
        """Await ``fn(*args)`` as an emit; ``False`` (not called) once the producer is closing."""
        if self.closing:
            return False
        task = asyncio.current_task()
        assert task is not None
        self._emitting.add(task)
        self._idle.clear()
        try:
            await fn(*args)
        finally:
            self._emitting.discard(task)
            if not self._emitting:
                self._idle.set()
        return True

    def emitting(self, task: asyncio.Task[Any]) -> bool:
        """``task`` is inside :meth:`emit` now."""
        return task in self._emitting

    async def stop(self, tasks: Iterable[asyncio.Task[Any]]) -> None:
        """Cancel ``tasks`` that are not emitting, wait for the emitting ones to finish their
        batch, then cancel those too and wait for every task to end.

        Cancelled itself (the shutdown deadline), it still cancels every task and waits for them:
        a batch cut there is counted lost by the bus for the consumers it missed.
        """
        self.closing = True
        tasks = list(tasks)
        try:
            for t in tasks:
                if not self.emitting(t):
                    t.cancel()
            await self._idle.wait()
        finally:
            for t in tasks:
                t.cancel()
            # return_exceptions: a task's bug is its owner's to raise (run()), not close()'s.
            await asyncio.gather(*tasks, return_exceptions=True)


async def run_workers(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """A producer's ``run()`` over its worker tasks: wait until one fails (its exception is
    raised, as itself) or all have ended (``close()`` cancelled them); every task is then
    cancelled and awaited, so none outlives the call. A worker only ends on its own on a bug."""
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            exc = None if t.cancelled() else t.exception()
            if exc is not None:
                raise exc
    finally:
        for t in tasks:
            t.cancel()
        # return_exceptions: a worker's bug is raised once, above, not again here.
        await asyncio.gather(*tasks, return_exceptions=True)
