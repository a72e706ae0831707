"""Reconnect pacing: a capped, jittered exponential delay generator and a failure classifier.

:class:`Backoff` yields the delay before each reconnect attempt. Jitter is **full jitter**: the
n-th delay since the last reset is drawn uniformly from ``[0, min(max_s, initial_s * factor**n)]``.
Chosen over decorrelated jitter (``min(max, uniform(initial, 3 * previous))``) because

* one daemon runs many connections and several daemons may share an IP; a network blip drops
  them together, and full jitter spreads their retries evenly over the whole window, which keeps
  the IP far from Binance's connection-attempt budget (300 per 5 min);
* each draw depends only on the attempt count, so the bounds are exact (and testable) and
  :meth:`Backoff.reset` is a counter reset; decorrelated jitter carries the previous draw along
  and drifts between its floor and the cap;
* the first delay after a healthy connection ends is short on average (``initial_s / 2``),
  which is what a dropped-but-healthy venue wants.

:func:`classify` decides whether a connection failure is worth retrying: network
faults, timeouts, server-side HTTP statuses and TLS failures (a certificate that does not verify
included) are; a URL that is not a websocket endpoint and programming errors are not.
"""

from __future__ import annotations

import random
import ssl
from typing import TYPE_CHECKING, Final

import aiohttp

from ingestd.errors import IngestError, TransportError

if TYPE_CHECKING:
    from ingestd.config import StreamSettings

RETRIABLE_STATUS: Final = frozenset({403, 408, 418, 429, 500, 502, 503, 504})
"""Handshake statuses that can clear by themselves: WAF throttling (403), timeouts (408),
rate limits and bans (429, 418; they end), and server or proxy failures (5xx)."""


class Backoff:
    """Delays before reconnect attempts: full jitter over a capped exponential ceiling.

    Iterate it (``next(backoff)``) or call :meth:`next_delay`; call :meth:`reset` once a
    connection has proven itself (its first data frame, not the handshake).
    """

    __slots__ = ("_ceiling", "_rng", "attempts", "factor", "initial_s", "max_s")

    def __init__(
        self, initial_s: float, max_s: float, factor: float, *, rng: random.Random | None = None
    ) -> None:
        if initial_s <= 0 or max_s <= 0:
            raise ValueError(f"backoff delays must be positive (initial {initial_s}, max {max_s})")
        if factor < 1:
            raise ValueError(f"backoff factor must be >= 1 (got {factor})")
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self.attempts = 0
        """Delays drawn since the last reset."""
        # Jitter needs no cryptographic strength; a private generator keeps tests reproducible.
        self._rng = rng or random.Random()  # noqa: S311 - spreading retries, not a secret
        self._ceiling = min(initial_s, max_s)

    @classmethod
    def from_settings(cls, settings: StreamSettings, *, rng: random.Random | None = None) -> Backoff:
        """A backoff paced by ``backoff_initial_s``, ``backoff_max_s`` and ``backoff_factor``."""
        return cls(settings.backoff_initial_s, settings.backoff_max_s, settings.backoff_factor, rng=rng)

    def ceiling(self) -> float:
        """Upper bound of the next delay: ``min(max_s, initial_s * factor**attempts)``."""
        return self._ceiling

    def next_delay(self) -> float:
        """Draw the next delay in seconds and grow the ceiling for the one after."""
        delay = self._rng.uniform(0.0, self._ceiling)
        self.attempts += 1
        # Grown multiplicatively and clamped, so a long outage never overflows a float power.
        self._ceiling = min(self.max_s, self._ceiling * self.factor)
        return delay

    def reset(self) -> None:
        """Start over from ``initial_s`` (after a connection delivered data)."""
        self.attempts = 0
        self._ceiling = min(self.initial_s, self.max_s)

    def __iter__(self) -> Backoff:
        return self

    def __next__(self) -> float:
        return self.next_delay()


def _status(exc: BaseException) -> int | None:
    """HTTP status of a failed handshake, from aiohttp or from a websockets-style ``response``."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status
    status = getattr(exc, "status", None)
    if status is None:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", getattr(response, "status", None))
    return int(status) if isinstance(status, int) else None


def classify(exc: BaseException) -> bool:
    """``True`` if reconnecting with the same parameters could succeed, ``False`` if fatal.

    Retriable: network faults (``OSError``, ``EOFError``, aiohttp connection and payload
    errors), timeouts, websocket protocol errors, and handshake statuses in
    :data:`RETRIABLE_STATUS`. Fatal: other handshake statuses (a wrong path answers 404, a URL
    that is not a websocket endpoint 200), invalid URLs, and anything else (bugs). An
    :class:`~ingestd.errors.IngestError` says for itself through ``retriable``.

    A TLS failure, a certificate that does not verify included, is retriable on purpose:
    nothing is read over such a connection, so retrying hides nothing, and what fixes it happens
    outside the process: the venue renews or corrects a certificate, an intercepting proxy goes
    away, or the operator adds a CA to a hashed certificate directory (``/etc/ssl/certs``,
    ``SSL_CERT_DIR``), which OpenSSL looks up at the next handshake. Exiting instead would only
    become a restart loop under systemd that re-discovers every contract. The first failure of
    an episode is logged with its reason (:func:`ingestd.tls.tls_reason`).
    """
    if isinstance(exc, TransportError):
        return exc.retriable
    status = _status(exc)
    if status is not None:
        return status in RETRIABLE_STATUS
    if isinstance(exc, aiohttp.InvalidURL):
        return False
    if isinstance(exc, ssl.SSLError):  # certificate verify failures included: see above
        return True
    if isinstance(
        exc,
        (
            TimeoutError,
            EOFError,
            OSError,
            aiohttp.ClientConnectionError,
            aiohttp.ClientPayloadError,
            aiohttp.WebSocketError,
        ),
    ):
        return True
    if isinstance(exc, IngestError):
        return exc.retriable
    return False
