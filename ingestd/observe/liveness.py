"""Liveness: the one rule behind systemd's ``WATCHDOG=1`` and ``/healthz``.

The daemon is *alive* while both hold:

* **The event loop answers.** A heartbeat task wakes every ``min(1 s, health.loop_deadline_s
  / 4)``. The loop fails when the heartbeat has not run for ``health.loop_deadline_s``, and
  for ``health.loop_deadline_s`` after a wake-up that came more than that late (a blocked loop
  is reported even by the first check that runs once it is free again, whichever runs first).
* **The intake makes progress.** Some websocket connection took a step within its deadline: it
  read a frame, completed a connect, or failed a connect attempt (backing off from a venue that
  is unreachable is the right thing to do, so each retry counts). A connection's deadline is the
  longest the producer itself may legitimately go without a step, plus ``health.liveness_s``:
  ``max(stale deadline, streams.backoff_max_s + streams.connect_timeout_s) + health.liveness_s``,
  where the stale deadline is ``streams.stale_after_s`` (10x for a connection carrying only
  trade-driven streams, see :func:`ingestd.producers.connstate.stale_deadline`): a connection
  that hears nothing is closed as stale and reconnected, which is a step, so only a stuck
  producer (or a consumer blocking the intake that long) misses its deadline. Before the
  websockets exist (start-up, waiting out a remembered 418 ban) and during shutdown the intake
  counts as progressing; a run without websockets (REST snapshots only) checks the loop alone.

Silent or quiet streams never make the daemon "not alive": they are readiness (``/readyz``)
and data quality (metrics, the gap log), reported, not restarted.

Progress is sampled when the rule is checked: a counter that moved since the last check moved
"now", which errs on the lenient side by at most the time between checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ingestd.config import HealthSettings, StreamSettings
from ingestd.producers.connstate import stale_deadline

log = logging.getLogger("ingestd.observe")

HEARTBEAT_MAX_S: Final = 1.0
"""The heartbeat wakes at least this often (more often when the loop deadline is short)."""

Check = Callable[[], tuple[bool, dict[str, Any]]]
"""``() -> (ok, detail)``: the shape of both :meth:`Liveness.check` and ``Daemon.readiness``."""


@dataclass(frozen=True, slots=True)
class Intake:
    """What the daemon's intake is doing, as :class:`Liveness` needs to know it."""

    phase: str | None = None
    """Start-up or shutdown (``"starting"``, ``"waiting out a REST ban until …"``,
    ``"stopping"``): progressing by definition. ``None`` once the producers run."""
    streams: Mapping[str, Any] | None = None
    """``StreamsProducer.stats()`` while running; ``None`` for a run without websockets."""


class Liveness:
    """Evaluates the rule (:meth:`check`) and owns the heartbeat task (:meth:`start`, :meth:`close`).

    ``intake`` is called on every check; ``venue`` names whose channel cadences decide a
    connection's stale deadline; ``clock`` is ``time.monotonic`` unless a test drives it.
    """

    def __init__(
        self,
        health: HealthSettings,
        streams: StreamSettings,
        intake: Callable[[], Intake],
        *,
        venue: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.venue = venue
        self.loop_deadline_s = health.loop_deadline_s
        self.liveness_s = health.liveness_s
        self.tick_s = min(HEARTBEAT_MAX_S, self.loop_deadline_s / 4)
        self._streams_settings = streams
        self._intake = intake
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._last_beat: float | None = None
        self._late_at: float | None = None
        self._late_lag = 0.0
        self.last_lag_s = 0.0
        self.worst_lag_s = 0.0
        self.late_beats = 0
        """Heartbeats that woke more than ``loop_deadline_s`` late (blocked-loop episodes)."""
        self._steps: dict[str, tuple[int, float]] = {}
        """Per connection: its step count when last seen to change, and when that was."""
        self._allowance: dict[str, float] = {}
        self.checks = 0
        self.failed_checks = 0
        self._alive: bool | None = None

    # -- heartbeat ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the heartbeat on the running loop. Idempotent."""
        if self._task is None:
            self._last_beat = self._clock()
            self._task = asyncio.create_task(self._run(), name="liveness:heartbeat")

    async def close(self) -> None:
        """Stop the heartbeat. Idempotent; checks after it judge the intake alone."""
        task, self._task = self._task, None
        self._last_beat = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            due = self._clock() + self.tick_s
            await asyncio.sleep(self.tick_s)
            self.beat(due)

    def beat(self, due: float) -> None:
        """One heartbeat that was due at ``due`` ran now (the task calls it; tests may too)."""
        now = self._clock()
        lag = max(0.0, now - due)
        self._last_beat = now
        self.last_lag_s = lag
        self.worst_lag_s = max(self.worst_lag_s, lag)
        if lag > self.loop_deadline_s:
            self._late_at, self._late_lag = now, lag
            self.late_beats += 1
            log.warning(
                "event loop was blocked for %.1f s (health.loop_deadline_s %g s): not alive for %g s more",
                lag,
                self.loop_deadline_s,
                self.loop_deadline_s,
            )

    # -- the rule -------------------------------------------------------------------------------

    def check(self) -> tuple[bool, dict[str, Any]]:
        """``(alive, detail)``; ``detail["not_alive"]`` names every reason it is not."""
        now = self._clock()
        reasons: list[str] = []
        loop = self._loop_reason(now)
        if loop:
            reasons.append(loop)
        stuck, intake = self._intake_state(now)
        if stuck:
            reasons.append(stuck)
        alive = not reasons
        self.checks += 1
        if not alive:
            self.failed_checks += 1
        if alive is not self._alive:
            if not alive:
                log.warning("not alive (/healthz 503, no WATCHDOG=1): %s", "; ".join(reasons))
            elif self._alive is not None:
                log.info("alive again: %s", intake)
            self._alive = alive
        detail: dict[str, Any] = {
            "not_alive": reasons,
            "intake": intake,
            "loop_lag_s": round(self.last_lag_s, 3),
            "loop_worst_lag_s": round(self.worst_lag_s, 3),
        }
        return alive, detail

    def _loop_reason(self, now: float) -> str | None:
        last = self._last_beat
        if last is None:
            return None  # not started yet, or closed at shutdown: the loop is not watched
        silent = now - last
        if silent > self.loop_deadline_s:
            return f"event loop blocked: no heartbeat for {silent:.1f} s (limit {self.loop_deadline_s:g} s)"
        if self._late_at is not None and now - self._late_at <= self.loop_deadline_s:
            ago = now - self._late_at
            return (
                f"event loop was blocked {ago:.1f} s ago (a heartbeat {self._late_lag:.1f} s late; "
                f"deadline {self.loop_deadline_s:g} s)"
            )
        return None

    def _intake_state(self, now: float) -> tuple[str | None, str]:
        """``(reason it is stuck or None, what it is doing)``."""
        state = self._intake()
        if state.phase is not None:
            return None, state.phase
        if state.streams is None:
            return None, "no websocket streams (REST only)"
        conns: Mapping[str, Mapping[str, Any]] = state.streams.get("connections") or {}
        if not conns:
            return None, "no websocket connections planned"
        moving: list[str] = []
        backing_off: list[str] = []
        stuck: list[str] = []
        for name, c in conns.items():
            steps = int(c.get("frames", 0)) + int(c.get("connects", 0)) + int(c.get("connect_failures", 0))
            seen = self._steps.get(name)
            if seen is None or seen[0] != steps:
                seen = self._steps[name] = (steps, now)
            idle = now - seen[1]
            allowed = self._allowance_of(name, state.streams)
            if idle <= allowed:
                moving.append(name)
                if c.get("state") in ("backoff", "connecting") and c.get("connect_failures"):
                    backing_off.append(f"{name} ({c.get('last_error') or 'connect failed'})")
            else:
                stuck.append(f"{name} {idle:.0f} s (allowed {allowed:.0f} s)")
        if moving:
            doing = f"{len(moving)} of {len(conns)} connection(s) made progress within their deadline"
            if backing_off:
                doing += "; backing off: " + ", ".join(backing_off)
            return None, doing
        reason = "intake stuck: no connection read a frame, connected or retried in time: " + "; ".join(stuck)
        return reason, "stuck"

    def _allowance_of(self, connection: str, streams_stats: Mapping[str, Any]) -> float:
        found = self._allowance.get(connection)
        if found is None:
            per_stream: Mapping[str, Mapping[str, Any]] = streams_stats.get("streams") or {}
            carried = [n for n, st in per_stream.items() if st.get("connection") == connection]
            s = self._streams_settings
            own = max(stale_deadline(carried, s, self.venue), s.backoff_max_s + s.connect_timeout_s)
            found = self._allowance[connection] = own + self.liveness_s
        return found

    def stats(self) -> dict[str, Any]:
        """Counters for ``/status``."""
        return {
            "alive": self._alive,
            "checks": self.checks,
            "failed_checks": self.failed_checks,
            "late_beats": self.late_beats,
            "loop_lag_s": round(self.last_lag_s, 3),
            "loop_worst_lag_s": round(self.worst_lag_s, 3),
            "loop_deadline_s": self.loop_deadline_s,
            "liveness_s": self.liveness_s,
        }
