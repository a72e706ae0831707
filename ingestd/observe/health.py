"""The daemon's HTTP endpoint, inside its own loop (aiohttp ``AppRunner`` + ``TCPSite``).

``/healthz`` 200 while the daemon is alive (the rule in :mod:`ingestd.observe.liveness`: the
event loop answers and the intake makes progress), else 503 naming why; ``/readyz`` 200 only
when every stream is fresh and every required book is synced, else 503 with a JSON body naming
what is not ready; ``/metrics`` the
Prometheus text format; ``/status`` a JSON snapshot of every component's stats. Binds 127.0.0.1
unless configured otherwise: the endpoint is for the operator on the box, not the network.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from ingestd.errors import StartupError

log = logging.getLogger("ingestd.observe")

Readiness = Callable[[], tuple[bool, dict[str, Any]]]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, default=str, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
    )


class HealthServer:
    """Owns the HTTP site. ``start()`` binds (port 0 picks a free one); ``close()`` is idempotent."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        stats: Callable[[], dict[str, Any]],
        ready: Readiness,
        metrics: Callable[[], bytes],
        alive: Readiness | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._stats = stats
        self._ready = ready
        self._alive = alive
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        self.requests = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve; :class:`StartupError` when the address cannot be bound."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_get("/status", self._status)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(f"health endpoint {self.host}:{self.port}: {exc.strerror or exc}") from exc
        self._runner = runner
        if self.port == 0 and runner.addresses:
            # Port 0 asked the OS for a free port: report the one it gave.
            self.port = int(runner.addresses[0][1])
        log.info("health endpoint on %s (/healthz /readyz /metrics /status)", self.url)

    async def close(self) -> None:
        """Stop serving and release the port. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        self.requests += 1
        if self._alive is None:
            return _json({"status": "alive"})
        ok, detail = self._alive()
        return _json({"status": "alive" if ok else "not alive", **detail}, 200 if ok else 503)

    async def _readyz(self, _: web.Request) -> web.Response:
        self.requests += 1
        ok, detail = self._ready()
        return _json({"ready": ok, **detail}, 200 if ok else 503)

    async def _metrics_handler(self, _: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(
            body=self._metrics(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def _status(self, _: web.Request) -> web.Response:
        self.requests += 1
        ok, detail = self._ready()
        verdicts: dict[str, Any] = {"ready": ok, "not_ready": detail.get("not_ready", [])}
        if self._alive is not None:
            alive, why = self._alive()
            verdicts |= {"alive": alive, "not_alive": why.get("not_alive", [])}
        return _json({**verdicts, **self._stats()})
