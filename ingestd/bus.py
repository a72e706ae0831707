"""The bus: one bounded queue per consumer, each with a named overflow policy.

Producers publish *batches* (one per frame or per REST body): a per-record queue hop costs more
than parsing (docs/performance.md §4). Each consumer has its own :class:`BoundedQueue`, bounded
in records, and one runner task that hands it batches. Policies:

* ``block``: the publisher waits for room. Storage uses it: nothing is dropped, and back-pressure
  reaches the websocket reader (and from there TCP).
* ``drop_oldest``: the oldest queued records make room. For hooks that want fresh data.
* ``drop_newest``: the incoming records are refused.

Drops are counted per consumer and logged once per episode (when dropping starts and when it
ends, with the count), never per record.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ingestd.records import AnyRecord, RawFrame

log = logging.getLogger("ingestd.bus")


class OverflowPolicy(enum.StrEnum):
    """What a full queue does with a new batch."""

    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"


@runtime_checkable
class Consumer(Protocol):
    """A stage that drains records. ``channels`` ``None`` means every market channel (not raw)."""

    name: str
    channels: frozenset[str] | None

    async def start(self) -> None:
        """Open files and connections. Called once before the first batch."""

    async def consume(self, batch: list[AnyRecord]) -> None:
        """Handle one batch (shared with other consumers: read it, never change it).

        Exceptions are counted by the bus and the runner goes on."""

    async def close(self) -> None:
        """Flush and release everything. Idempotent."""

    def stats(self) -> dict[str, Any]:
        """A snapshot of counters for metrics and the status line."""


CLOSE_GRACE_S = 1.0
"""How long each consumer may take to close once the drain was cut at the shutdown deadline."""


class QueueClosedError(RuntimeError):
    """``put`` on a closed queue."""


class BoundedQueue:
    """A queue of record batches bounded by the number of records it holds."""

    def __init__(self, name: str, maxsize: int, policy: OverflowPolicy, max_batch: int = 4096) -> None:
        if maxsize <= 0:
            raise ValueError(f"queue {name}: maxsize must be positive, got {maxsize}")
        self.name = name
        self.maxsize = maxsize
        self.policy = policy
        self.max_batch = max_batch
        self._batches: deque[list[AnyRecord]] = deque()
        self._size = 0
        self._closed = False
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self.put_records = 0
        self.got_records = 0
        self.dropped = 0
        self.high_water = 0
        self.blocked_seconds = 0.0
        self._episode_drops = 0

    def __len__(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        return self._closed

    async def put(self, batch: Sequence[AnyRecord]) -> None:
        """Enqueue ``batch`` under the queue's overflow policy."""
        if self._closed:
            raise QueueClosedError(f"queue {self.name} is closed")
        n = len(batch)
        if n == 0:
            return
        if self._size + n > self.maxsize:
            if self.policy is OverflowPolicy.BLOCK:
                started = time.monotonic()
                # An oversized batch is admitted into an empty queue, else it could never enter.
                while self._size + n > self.maxsize and self._size > 0 and not self._closed:
                    self._not_full.clear()
                    await self._not_full.wait()
                self.blocked_seconds += time.monotonic() - started
                if self._closed:
                    raise QueueClosedError(f"queue {self.name} closed while blocked")
            elif self.policy is OverflowPolicy.DROP_NEWEST:
                self._drop(n)
                return
            else:
                self._evict(self._size + n - self.maxsize)
        self._end_episode()
        # Stored as given, not copied: batches are shared read-only (see Bus.publish).
        self._batches.append(batch if isinstance(batch, list) else list(batch))
        self._size += n
        self.put_records += n
        self.high_water = max(self.high_water, self._size)
        self._not_empty.set()

    def _evict(self, need: int) -> None:
        dropped = 0
        while need > 0 and self._batches:
            head = self._batches[0]
            if len(head) <= need:
                self._batches.popleft()
                need -= len(head)
                dropped += len(head)
            else:
                # A new list: the head may be shared with other consumers' queues.
                self._batches[0] = head[need:]
                dropped += need
                need = 0
        self._size -= dropped
        self._drop(dropped)

    def _drop(self, n: int) -> None:
        if n <= 0:
            return
        if self._episode_drops == 0:
            log.warning(
                "queue %s full (%d records): dropping under policy %s",
                self.name,
                self.maxsize,
                self.policy.value,
            )
        self.dropped += n
        self._episode_drops += n

    def _end_episode(self) -> None:
        if self._episode_drops and self._size < self.maxsize // 2:
            log.warning(
                "queue %s recovered: dropped %d records in that episode", self.name, self._episode_drops
            )
            self._episode_drops = 0

    async def get(self) -> list[AnyRecord]:
        """Up to ``max_batch`` records, waiting while empty. ``[]`` once closed and drained."""
        while not self._batches:
            if self._closed:
                return []
            self._not_empty.clear()
            await self._not_empty.wait()
        out = self._batches.popleft()
        if self._batches and len(out) + len(self._batches[0]) <= self.max_batch:
            out = [*out, *self._batches.popleft()]  # a new list: the batches are shared
            while self._batches and len(out) + len(self._batches[0]) <= self.max_batch:
                out.extend(self._batches.popleft())
        self._size -= len(out)
        self.got_records += len(out)
        if self._size + 0 < self.maxsize:
            self._not_full.set()
        return out

    def close(self) -> None:
        """Refuse further puts; ``get`` drains what is queued, then returns ``[]``."""
        self._closed = True
        self._not_empty.set()
        self._not_full.set()

    def stats(self) -> dict[str, Any]:
        return {
            "depth": self._size,
            "maxsize": self.maxsize,
            "high_water": self.high_water,
            "policy": self.policy.value,
            "put": self.put_records,
            "got": self.got_records,
            "dropped": self.dropped,
            "blocked_seconds": round(self.blocked_seconds, 3),
        }


class _Attachment:
    __slots__ = ("consumer", "errors", "inflight", "lost_at_close", "queue", "symbols", "task")

    def __init__(self, consumer: Consumer, queue: BoundedQueue, symbols: frozenset[str] | None) -> None:
        self.consumer = consumer
        self.queue = queue
        self.symbols = symbols
        self.task: asyncio.Task[None] | None = None
        self.errors = 0
        self.lost_at_close = 0
        self.inflight = 0
        """Records of the batch being consumed (0 between batches)."""


class Bus:
    """Fans batches out to every attached consumer. Owns the runner tasks."""

    def __init__(self) -> None:
        self._attached: list[_Attachment] = []
        self._offer: list[_Attachment] = []
        """``_attached`` in publishing order: non-blocking queues first."""
        self._started = False
        self._closed = False
        self.published = 0

    def attach(
        self,
        consumer: Consumer,
        *,
        maxsize: int,
        policy: OverflowPolicy,
        symbols: frozenset[str] | None = None,
        max_batch: int = 4096,
    ) -> BoundedQueue:
        """Give ``consumer`` its own queue. ``symbols`` (normalized) filters what it receives."""
        if self._started:
            raise RuntimeError("attach consumers before the bus starts")
        q = BoundedQueue(consumer.name, maxsize, policy, max_batch)
        self._attached.append(_Attachment(consumer, q, symbols))
        # Offer batches to consumers that never wait first: a blocking queue that is full (storage
        # behind) then holds up only the publisher, not what the hooks and the NATS publisher get.
        self._offer = sorted(self._attached, key=lambda a: a.queue.policy is OverflowPolicy.BLOCK)
        return q

    @property
    def consumers(self) -> list[Consumer]:
        return [a.consumer for a in self._attached]

    async def start(self) -> None:
        """Start every consumer, then one runner task each."""
        self._started = True
        for a in self._attached:
            await a.consumer.start()
        for a in self._attached:
            a.task = asyncio.create_task(self._run(a), name=f"bus:{a.consumer.name}")

    async def publish(self, batch: Sequence[AnyRecord]) -> None:
        """Offer ``batch`` to every consumer whose channels and symbols match.

        The batch is handed on without copying: one list is shared by every consumer that takes
        all of it, so neither the publisher nor a consumer may change it afterwards.
        """
        if self._closed or not batch:
            return
        self.published += len(batch)
        plain: Sequence[AnyRecord] | None = None
        for a in self._offer:
            chans = a.consumer.channels
            syms = a.symbols
            if chans is None and syms is None:
                if plain is None:
                    # Raw frames only exist with --raw; one scan per batch tells.
                    has_raw = any(type(r) is RawFrame for r in batch)
                    plain = [r for r in batch if r.channel != "raw"] if has_raw else batch
                sel: Sequence[AnyRecord] = plain
            else:
                sel = [
                    r
                    for r in batch
                    if (r.channel in chans if chans is not None else r.channel != "raw")
                    and (syms is None or getattr(r, "symbol", None) in syms)
                ]
            if sel:
                await a.queue.put(sel)

    async def _run(self, a: _Attachment) -> None:
        while True:
            batch = await a.queue.get()
            if not batch:
                return
            a.inflight = len(batch)
            try:
                await a.consumer.consume(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A consumer bug must not stop the others; it is counted and logged with a trace.
                a.errors += 1
                log.exception("consumer %s failed on a batch of %d records", a.consumer.name, len(batch))
            a.inflight = 0

    async def close(self) -> None:
        """Stop intake, let every queue drain, then close consumers. Idempotent.

        The caller bounds this with its shutdown deadline and cancels on expiry: then what is
        still queued is counted (``lost_at_close``) and logged per consumer, and every consumer is
        still closed (each in turn, whatever the others do) before the cancellation goes on.
        """
        if self._closed:
            return
        self._closed = True
        for a in self._attached:
            a.queue.close()
        cut = True
        try:
            for a in self._attached:
                if a.task is not None:
                    await a.task
            cut = False
        finally:
            cancelled = False
            for a in self._attached:
                cancelled = await self._close_one(a, cut=cut) or cancelled
            if cancelled:
                raise asyncio.CancelledError

    async def _close_one(self, a: _Attachment, *, cut: bool) -> bool:
        """Stop ``a``'s runner (counting what it never delivered) and close its consumer, within
        :data:`CLOSE_GRACE_S` when the drain was ``cut`` at the deadline. ``True`` when that
        close was cancelled."""
        if a.task is not None and not a.task.done():
            a.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await a.task
        lost = len(a.queue)
        if lost or a.inflight:
            a.lost_at_close += lost
            msg = "consumer %s: %d queued record(s) not delivered at the deadline (a batch of %d in consume)"
            log.error(msg, a.consumer.name, lost, a.inflight)
        try:
            async with asyncio.timeout(CLOSE_GRACE_S if cut else None):
                await a.consumer.close()
        except TimeoutError:
            msg = "consumer %s did not close within %.1f s after the deadline"
            log.error(msg, a.consumer.name, CLOSE_GRACE_S)  # noqa: TRY400 - a deadline, no traceback
        except asyncio.CancelledError:
            # A cancellation has no traceback worth logging; the consumer is named.
            msg = "consumer %s: close cancelled (second stop request or deadline)"
            log.error(msg, a.consumer.name)  # noqa: TRY400
            return True
        except Exception:
            log.exception("consumer %s failed to close", a.consumer.name)
        return False

    def stats(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "consumers": {
                a.consumer.name: {
                    **a.queue.stats(),
                    "errors": a.errors,
                    "lost_at_close": a.lost_at_close,
                    "inflight": a.inflight,
                    **a.consumer.stats(),
                }
                for a in self._attached
            },
        }
