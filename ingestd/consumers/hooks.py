"""Strategy hooks: user ``async`` callables fed every record, isolated and time-limited.

A hook is ``async def on_record(record)`` or ``async def on_record(record, context)`` (a function
taking two positional parameters gets the :class:`HookContext`). Hooks are named in settings as
``module:function`` (:func:`load_hook`) or added in code with ``Daemon.add_hook``.

A hook may also take contract changes: ``async def on_contract(row)`` (or ``(row, context)``),
called with each ``contract`` row the hook's symbols pass — one per contract at start, then one
per listing, delisting or definition change (``--follow-listings``) — in order with the records
around it, under the same timeout and error rules. For ``--hook MODULE:FUNC`` it is the
module-level ``on_contract`` next to ``FUNC`` (:func:`load_contract_hook`); in code,
``Daemon.add_hook(func, on_contract=...)``. By the time it runs, ``context.contracts``,
``price_precision`` and ``min_qty`` already hold the change.

Isolation: the daemon gives each hook its own bounded bus queue (``drop_oldest`` by default) and
task, so a slow hook loses its own oldest records and never slows storage. Each call runs under
``asyncio.timeout(timeout_s)``; an exception or a timeout is counted and logged once per episode
(consecutive failures), with the traceback the first time each exception type is seen, and never
stops later calls. A hook that blocks the event loop synchronously (``time.sleep``, blocking I/O)
cannot be interrupted by any timeout: such calls are counted as ``overruns`` and logged, and the
fix is in the hook.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ingestd.errors import ConfigError
from ingestd.records import AnyRecord
from ingestd.venues.binance.symbols import ContractSet

log = logging.getLogger("ingestd.hooks")

HookFunc = Callable[..., Awaitable[Any]]
"""``async (record) -> Any`` or ``async (record, context) -> Any``."""

_LATENCY_WINDOW: Final = 2048
_OVERRUN_LOG_EVERY_S: Final = 60.0
GUARD_SLACK_S: Final = 0.001
"""uvloop fires timers up to ~0.5 ms early: within this of the deadline counts as reached."""


class BookSource(Protocol):
    """Where a hook reads local order books (set by the order-book stage)."""

    def get(self, symbol: str) -> Any:
        """The book of normalized ``symbol``, or ``None`` when it has none (yet)."""


class HookContext:
    """What a two-argument hook receives beside the record. Filled in by the daemon at start.

    ``contracts`` is the run's contract set; ``price_precision`` and ``min_qty`` map normalized
    symbols to price decimals and minimum order quantity; ``books`` gives the local order books
    when the run keeps them.
    """

    __slots__ = ("books", "contracts", "min_qty", "price_precision")

    def __init__(
        self,
        *,
        contracts: ContractSet | None = None,
        price_precision: dict[str, int] | None = None,
        min_qty: dict[str, float] | None = None,
        books: BookSource | None = None,
    ) -> None:
        self.contracts = contracts
        self.price_precision: dict[str, int] = price_precision if price_precision is not None else {}
        self.min_qty: dict[str, float] = min_qty if min_qty is not None else {}
        self.books = books


def _is_async(func: object) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    if inspect.isfunction(func) or inspect.ismethod(func):
        return False
    # An object with ``async def __call__`` is as good as a function.
    return callable(func) and inspect.iscoroutinefunction(func.__call__)


def wants_context(func: HookFunc) -> bool:
    """True when ``func`` takes two positional parameters (or ``*args``): pass the context."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    kinds = [p.kind for p in params]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(k in positional for k in kinds) >= 2


def load_hook(spec: str) -> HookFunc:
    """Import ``module:function`` and return the async function; :class:`ConfigError` if unusable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise ConfigError(
            f"hook {spec!r}: expected MODULE:FUNCTION, e.g. mystrategy.hooks:on_record", key="hooks.specs"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        why = (
            f"module {module_name!r} not found"
            if missing == module_name or module_name.startswith(f"{missing}.")
            else f"importing {module_name!r} needs module {missing!r}, which is not installed"
        )
        raise ConfigError(f"hook {spec!r}: {why}", key="hooks.specs") from exc
    except Exception as exc:
        raise ConfigError(
            f"hook {spec!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}", key="hooks.specs"
        ) from exc
    func = getattr(module, attr, None)
    if func is None:
        raise ConfigError(
            f"hook {spec!r}: module {module_name!r} has no attribute {attr!r}", key="hooks.specs"
        )
    if not _is_async(func):
        raise ConfigError(
            f"hook {spec!r}: {attr!r} is not an async function (define it with 'async def')",
            key="hooks.specs",
        )
    result: HookFunc = func
    return result


def load_contract_hook(spec: str) -> HookFunc | None:
    """The module-level ``on_contract`` of the module a ``module:function`` spec names, or
    ``None`` when it has none. Call after :func:`load_hook` (which reports import errors);
    a synchronous ``on_contract`` is a :class:`ConfigError`."""
    module_name = spec.partition(":")[0]
    func = getattr(importlib.import_module(module_name), "on_contract", None)
    if func is None:
        return None
    if not _is_async(func):
        raise ConfigError(
            f"hook {spec!r}: {module_name}.on_contract is not an async function (define it with 'async def')",
            key="hooks.specs",
        )
    result: HookFunc = func
    return result


@dataclass(frozen=True, slots=True)
class HookSpec:
    """One hook of a run, as ``--hook`` or ``Daemon.add_hook`` registered it: the callable, its
    name, the channels and normalized symbols it takes (``None``: all) and its ``on_contract``."""

    func: HookFunc
    name: str
    channels: frozenset[str] | None = None
    symbols: frozenset[str] | None = None
    on_contract: HookFunc | None = None

    @classmethod
    def load(cls, spec: str) -> HookSpec:
        """The hook a ``module:function`` spec names, with its module's ``on_contract`` if any."""
        return cls(load_hook(spec), spec, on_contract=load_contract_hook(spec))


class HookConsumer:
    """Feeds records to one hook, in order, one call per record, each under a timeout.

    ``on_contract`` (optional) is called with each ``contract`` row as well (see the module
    docstring); the bus then also offers this consumer the ``contract`` channel, which reaches
    ``func`` only when ``channels`` names it (or is ``None``).

    ``stats()`` keys: ``calls``, ``contract_calls``, ``call_errors`` (exceptions raised by the
    hook; the bus's ``errors`` beside it counts batches this consumer itself failed on), ``timeouts``,
    ``overruns`` (calls that held the event loop past the timeout), ``latency_p50_ms`` /
    ``latency_p99_ms`` / ``latency_max_ms`` over the last 2,048 calls, and ``last_error``.
    """

    def __init__(
        self,
        name: str,
        func: HookFunc,
        *,
        channels: frozenset[str] | None,
        timeout_s: float,
        context: HookContext,
        on_contract: HookFunc | None = None,
    ) -> None:
        if not _is_async(func):
            raise TypeError(f"hook {name}: {func!r} is not an async function")
        if on_contract is not None and not _is_async(on_contract):
            raise TypeError(f"hook {name}: on_contract {on_contract!r} is not an async function")
        if timeout_s <= 0:
            raise ValueError(f"hook {name}: timeout_s must be positive, got {timeout_s}")
        self.name = name
        self.func = func
        self.record_channels = channels
        """The channels ``func`` asked for (``None``: every market channel)."""
        self.channels = channels if on_contract is None or channels is None else channels | {"contract"}
        """What the bus offers this consumer: ``record_channels``, plus ``contract`` rows for
        ``on_contract``."""
        self.on_contract = on_contract
        self.contract_context = on_contract is not None and wants_context(on_contract)
        self.contract_calls = 0
        self.timeout_s = timeout_s
        self.context = context
        self.passes_context = wants_context(func)
        self.calls = 0
        self.errors = 0
        self.timeouts = 0
        self.overruns = 0
        self.last_error: str | None = None
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._episode_failures = 0
        self._traced: set[type[BaseException]] = set()
        self._last_overrun_log = -1e9
        self._closed = False
        self._call_started = 0.0
        """``loop.time()`` when the running call started (read by the guard timer)."""
        self._guard: asyncio.TimerHandle | None = None
        self._expiring = False
        """The guard queued the scope's expiry for the running call."""

    async def start(self) -> None:
        """Nothing to open: the hook's module was imported when it was loaded."""

    async def close(self) -> None:
        """Idempotent; the hook holds no resources of ours."""
        if self._closed:
            return
        self._closed = True
        if self._episode_failures:
            log.warning(
                "hook %s closed during a failure episode (%d failed calls)", self.name, self._episode_failures
            )

    async def consume(self, batch: list[AnyRecord]) -> None:
        """Call the hook once per record, in order (and ``on_contract`` once per ``contract``
        row). Never raises (except on cancellation)."""
        loop = asyncio.get_running_loop()
        if self.on_contract is None:
            await self._all(batch, loop, self.func, self.passes_context)
            return
        wanted = self.record_channels
        start = 0
        for k, rec in enumerate(batch):
            if rec.channel != "contract":
                continue
            if k > start:
                await self._all(batch[start:k], loop, self.func, self.passes_context)
            if wanted is None or "contract" in wanted:
                await self._all([rec], loop, self.func, self.passes_context)
            self.contract_calls += 1
            await self._all([rec], loop, self.on_contract, self.contract_context)
            start = k + 1
        if start < len(batch):
            await self._all(batch if start == 0 else batch[start:], loop, self.func, self.passes_context)

    async def _all(
        self, batch: list[AnyRecord], loop: asyncio.AbstractEventLoop, func: HookFunc, two: bool
    ) -> None:
        i = 0
        while i < len(batch):
            i = await self._calls(batch, i, loop, func, two)

    async def _calls(
        self, batch: list[AnyRecord], first: int, loop: asyncio.AbstractEventLoop, func: HookFunc, two: bool
    ) -> int:
        """Call the hook on ``batch[first:]`` inside one timeout scope; returns where to go on.

        Each call still gets ``timeout_s``: instead of a timer per call (measured ~10 % of a
        hook-only run), one guard timer per scope is armed for the running call's deadline and,
        when it fires early, re-armed for the call running then. A call past its deadline
        expires the scope (its ``TimeoutError``); the next records get a new scope.
        """
        ctx = self.context
        timeout = self.timeout_s
        scope = asyncio.timeout(None)
        self._expiring = False
        self._call_started = loop.time()
        self._guard = loop.call_at(self._call_started + timeout, self._check_deadline, scope, loop)
        i = first
        started = time.perf_counter()
        try:
            async with scope:
                for i in range(first, len(batch)):
                    record = batch[i]
                    started = time.perf_counter()
                    self._call_started = loop.time()
                    try:
                        if two:
                            await func(record, ctx)
                        else:
                            await func(record)
                        if self._expiring:
                            self._late_return(scope, loop)
                    except Exception as exc:  # noqa: BLE001 - logged in _failed; a hook error must never propagate
                        # Isolation is the point: any hook error (its own TimeoutError too) is
                        # counted, logged per episode, swallowed.
                        if self._expiring:
                            self._late_return(scope, loop)
                        self.errors += 1
                        self._failed(f"{type(exc).__name__}: {exc}", exc)
                    else:
                        if self._episode_failures:
                            log.warning(
                                "hook %s recovered after %d failed call(s)", self.name, self._episode_failures
                            )
                            self._episode_failures = 0
                    self._called(started, timed_out=False)
                return len(batch)
        except TimeoutError:
            if not scope.expired():
                raise
            self.timeouts += 1
            self._failed(f"timed out after {timeout:g} s", None)
            self._called(started, timed_out=True)
            return i + 1
        finally:
            self._guard.cancel()

    def _check_deadline(self, scope: asyncio.Timeout, loop: asyncio.AbstractEventLoop) -> None:
        """The guard timer: expire ``scope`` if the running call is past its deadline, else wait
        for that call's deadline."""
        due = self._call_started + self.timeout_s
        if loop.time() >= due - GUARD_SLACK_S:
            # Expiry is queued (call_soon); should the call return first, _late_return withdraws
            # it, or it would cancel the next call instead.
            self._expiring = True
            scope.reschedule(loop.time())
        else:
            self._guard = loop.call_at(due, self._check_deadline, scope, loop)

    def _late_return(self, scope: asyncio.Timeout, loop: asyncio.AbstractEventLoop) -> None:
        """The running call returned after its expiry was queued but before it ran: withdraw it
        (the call counts as an overrun) and guard the next call."""
        self._expiring = False
        if scope.expired():  # already delivered (a hook that swallowed the cancellation)
            return
        scope.reschedule(None)
        self._guard = loop.call_at(loop.time() + self.timeout_s, self._check_deadline, scope, loop)

    def _called(self, started: float, *, timed_out: bool) -> None:
        elapsed = time.perf_counter() - started
        self.calls += 1
        self._latencies.append(elapsed)
        if elapsed > self.timeout_s and not timed_out:
            self._overrun(elapsed)

    def _failed(self, what: str, exc: BaseException | None) -> None:
        self.last_error = what
        self._episode_failures += 1
        if self._episode_failures > 1:
            return
        if exc is not None and type(exc) not in self._traced:
            self._traced.add(type(exc))
            log.error(
                "hook %s failed: %s (counted; later failures in a row are not logged)",
                self.name,
                what,
                exc_info=exc,
            )
        else:
            log.error("hook %s failed: %s (counted; later failures in a row are not logged)", self.name, what)

    def _overrun(self, elapsed: float) -> None:
        self.overruns += 1
        now = time.monotonic()
        if now - self._last_overrun_log >= _OVERRUN_LOG_EVERY_S:
            self._last_overrun_log = now
            log.warning(
                "hook %s held the event loop for %.3f s (timeout %g s, %d such calls): hooks must not block",
                self.name,
                elapsed,
                self.timeout_s,
                self.overruns,
            )

    def stats(self) -> dict[str, Any]:
        """Calls, call errors, timeouts, overruns, latency percentiles (ms) and the last error."""
        window = sorted(self._latencies)

        def pct(q: float) -> float:
            if not window:
                return 0.0
            return round(window[min(len(window) - 1, int(q * len(window)))] * 1e3, 3)

        return {
            "calls": self.calls,
            "contract_calls": self.contract_calls,
            "call_errors": self.errors,
            "timeouts": self.timeouts,
            "overruns": self.overruns,
            "latency_p50_ms": pct(0.50),
            "latency_p99_ms": pct(0.99),
            "latency_max_ms": round(window[-1] * 1e3, 3) if window else 0.0,
            "last_error": self.last_error,
        }
