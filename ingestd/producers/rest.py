"""The REST client: one aiohttp session and one request-weight budget per host.

Every request first takes its weight from the host's :class:`~ingestd.producers.budget.WeightBudget`
(paced, priority-ordered, corrected by ``X-MBX-USED-WEIGHT-1M``). Failures are classified once,
here (docs/binance.md §5):

* 5xx, 408, timeouts and connection errors (TLS failures too, an untrusted certificate
  included, named by OpenSSL's reason): retried with capped, jittered backoff up to
  ``max_retries``, then :class:`~ingestd.errors.RestError` (``retriable=True``);
* 429: the whole host pauses for ``Retry-After`` seconds (exponential when absent), then the
  request is retried, counting against ``max_retries``; past that
  :class:`~ingestd.errors.RateLimitedError`;
* 418: the IP is banned. The end of the ban (``Retry-After``, or the time in a ``-1003``
  message) is written to the state file and :class:`~ingestd.errors.BannedError` is raised at
  once; every later call raises it too, without touching the network, until the ban is over —
  also in a daemon restarted during the ban, which reads the file at construction;
* any other 4xx: :class:`~ingestd.errors.RestError` (``retriable=False``) with Binance's
  ``code``/``msg``.

Logs record transitions (rate-limited, banned until T, ban over), never one line per request.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import aiohttp
import orjson

from ingestd.backoff import Backoff
from ingestd.errors import BannedError, ParseError, RateLimitedError, RestError
from ingestd.producers.budget import WeightBudget, load_ban, save_ban
from ingestd.tls import tls_reason
from ingestd.venues.binance.endpoints import VenueSpec

log = logging.getLogger("ingestd.rest")

USED_WEIGHT_HEADERS = ("X-MBX-USED-WEIGHT-1M", "X-MBX-USED-WEIGHT")
DEFAULT_BAN_S = 120.0
"""Ban length assumed when a 418 says nothing: Binance's shortest ban is 2 minutes."""
MAX_429_FALLBACK_S = 60.0
"""A 429 without ``Retry-After`` waits 1, 2, 4 … s, capped here (the weight window is 1 min)."""
RETRIABLE_STATUS = frozenset({408})
"""4xx statuses that are transient like a 5xx (USDⓈ-M 408: backend timeout)."""
_BANNED_UNTIL = re.compile(r"banned until (\d{10,})")

Params = Mapping[str, str | int]


@dataclass(frozen=True, slots=True)
class RestResponse:
    """A successful (2xx) response, body read in full."""

    status: int
    body: bytes
    used_weight: int | None
    """``X-MBX-USED-WEIGHT-1M`` of this response, when sent."""
    elapsed_s: float
    recv_ts: int
    """ns wall clock when the body was read."""
    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    """Response headers (case-insensitive when they come from the server)."""

    def json(self) -> Any:
        """The decoded body; :class:`~ingestd.errors.ParseError` when it is not JSON."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            head = self.body[:60].decode("utf-8", "replace")
            raise ParseError(f"body is not JSON ({exc}): {head!r}", stream=self.url) from exc


def binance_error(body: bytes) -> tuple[int | None, str | None]:
    """``(code, msg)`` of a Binance error body ``{"code": -1121, "msg": "Invalid symbol."}``."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    code, msg = data.get("code"), data.get("msg")
    return (
        code if isinstance(code, int) and not isinstance(code, bool) else None,
        msg if isinstance(msg, str) else None,
    )


def used_weight(headers: Mapping[str, str]) -> int | None:
    """The server's used weight for the current minute, if the response says it."""
    for name in USED_WEIGHT_HEADERS:
        value = headers.get(name)
        if value is not None:
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date); ``None`` when absent or bad."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def ban_end(headers: Mapping[str, str], msg: str | None, now: float) -> float:
    """Epoch seconds when a 418 ban ends: ``Retry-After``, or the ms time in a ``-1003`` message
    ("IP banned until 1534231853426"), the later of the two; 2 minutes when neither is given."""
    ends: list[float] = []
    wait = retry_after(headers, now)
    if wait is not None:
        ends.append(now + wait)
    if msg:
        m = _BANNED_UNTIL.search(msg)
        if m:
            ends.append(int(m.group(1)) / 1000.0)
    return max(ends) if ends else now + DEFAULT_BAN_S


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat(timespec="seconds")


class RestClient:
    """HTTP client for one Binance REST host.

    ``headroom`` is the share of the venue's per-minute weight limit this process may use;
    ``state_file`` remembers a 418 ban across restarts (``None``: in memory only). A
    ``budget`` may be passed to share one between clients of the same host, or for tests.
    ``ssl_context`` verifies ``https://`` hosts (the daemon's shared one, :mod:`ingestd.tls`);
    ``None`` uses aiohttp's default verifying context.
    """

    def __init__(
        self,
        base_url: str,
        venue: VenueSpec,
        *,
        headroom: float = 0.5,
        state_file: Path | None = None,
        timeout_s: float = 10.0,
        max_retries: int = 3,
        budget: WeightBudget | None = None,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.venue = venue
        self.host = urlsplit(self.base_url).netloc
        self.headroom = headroom
        self.budget = (
            budget
            if budget is not None
            else WeightBudget.for_limit(venue.weight_limit_per_minute, headroom, name=self.host)
        )
        self.state_file = state_file
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._banned_until = load_ban(state_file, self.host) if state_file is not None else 0.0
        if self._banned_until <= time.time():
            self._banned_until = 0.0  # ended before this run: nothing to wait for or announce
        else:
            log.warning(
                "%s banned this IP until %s (recorded in %s): no request to it before then",
                self.host,
                _iso(self._banned_until),
                state_file,
            )
        self._rate_limited = 0
        """429s in the current episode (0: not rate-limited)."""
        self.requests = 0
        self.retries = 0
        self.errors: dict[str, int] = {}
        self.count_429 = 0
        self.count_418 = 0
        self.last_used_weight: int | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the HTTP session (otherwise opened by the first request)."""
        self._ensure_session()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RestError(f"REST client for {self.base_url} is closed", url=self.base_url, retriable=False)
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(
                    limit=8, ttl_dns_cache=300, ssl=self.ssl_context if self.ssl_context is not None else True
                ),
                headers={"User-Agent": "ingestd", "Accept": "application/json"},
            )
        return self._session

    async def close(self) -> None:
        """Close the session. Idempotent; later calls to :meth:`get` raise."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> RestClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- bans -------------------------------------------------------------------------------------

    @property
    def banned_until(self) -> float:
        """Epoch seconds when the current ban ends; 0 when not banned."""
        return self._banned_until if self._banned_until > time.time() else 0.0

    def set_weight_limit(self, limit_per_minute: int) -> None:
        """Use the live per-minute limit (exchangeInfo ``rateLimits``) x headroom."""
        self.budget.set_budget(max(1, int(limit_per_minute * self.headroom)))

    async def _check_ban(self, url: str) -> None:
        if not self._banned_until:
            return
        now = time.time()
        if self._banned_until > now:
            raise BannedError(
                f"{self.host} banned this IP until {_iso(self._banned_until)} "
                f"({self._banned_until - now:.0f} s left); GET {url} not sent",
                url=url,
                until=self._banned_until,
            )
        log.info("ban by %s is over (ended %s)", self.host, _iso(self._banned_until))
        self._banned_until = 0.0
        await self._persist_ban(0.0)

    async def _persist_ban(self, until: float) -> None:
        if self.state_file is None:
            return
        try:
            # File I/O off the loop: the state file may sit on a slow disk.
            await asyncio.to_thread(save_ban, self.state_file, self.host, until)
        except OSError as exc:
            log.warning("could not write ban state to %s: %s", self.state_file, exc)

    # -- requests ---------------------------------------------------------------------------------

    def _count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    async def get(
        self,
        path: str,
        params: Params | None = None,
        *,
        weight: int,
        priority: int = 0,
        headers: Mapping[str, str] | None = None,
    ) -> RestResponse:
        """GET ``path`` on this host, spending ``weight`` from the budget per attempt.
        ``headers`` are sent with this request only (``X-MBX-APIKEY`` for MARKET_DATA endpoints).

        Raises :class:`BannedError` during a ban, :class:`RateLimitedError` when 429s outlast
        ``max_retries``, :class:`RestError` otherwise (``retriable`` says whether to try later).
        """
        url = self.base_url + path
        attempt = 0
        # Capped, fully jittered exponential delays between attempts of this one call.
        backoff = Backoff(self.retry_initial_s, self.retry_max_s, 2.0)
        while True:
            try:
                resp = await self._send(url, params, weight, priority, headers)
            except (TimeoutError, aiohttp.ClientError) as exc:
                # A TLS failure (an untrusted certificate too) is retried like any connection
                # error, and its message is OpenSSL's reason, not aiohttp's wrapper.
                tls = tls_reason(exc)
                kind = "timeout" if isinstance(exc, TimeoutError) else "tls" if tls else "connection"
                self._count_error(kind)
                if attempt >= self.max_retries:
                    what = f"timed out after {self.timeout_s:g} s" if kind == "timeout" else tls or repr(exc)
                    raise RestError(
                        f"GET {url}: {what} ({attempt + 1} attempts)", url=url, retriable=True
                    ) from exc
                attempt += 1
                await self._retry_sleep(url, kind, attempt, backoff)
                continue
            if 200 <= resp.status < 300:
                if self._rate_limited:
                    log.info("rate limit on %s over after %d 429(s)", self.host, self._rate_limited)
                    self._rate_limited = 0
                return resp
            error = await self._error(resp, attempt)
            if attempt >= self.max_retries or not error.retriable:
                raise error
            attempt += 1
            if isinstance(error, RateLimitedError):
                self.retries += 1  # no extra sleep: acquire() waits out the host's pause
            else:
                await self._retry_sleep(url, f"HTTP {resp.status}", attempt, backoff)

    async def _send(
        self,
        url: str,
        params: Params | None,
        weight: int,
        priority: int,
        headers: Mapping[str, str] | None = None,
    ) -> RestResponse:
        """One attempt: wait for budget, send, read the whole body, feed the used-weight header
        to the budget. Returns any status; transport failures raise aiohttp/timeout errors."""
        await self._check_ban(url)
        await self.budget.acquire(weight, priority=priority)
        # The ban may have started (another request got a 418) while this one waited.
        await self._check_ban(url)
        session = self._ensure_session()
        sent_at = time.monotonic()
        self.requests += 1
        async with session.get(url, params=params, headers=headers) as resp:
            body = await resp.read()
            recv_ts = time.time_ns()
            headers = resp.headers
            status, final_url = resp.status, str(resp.url)
        used = used_weight(headers)
        if used is not None:
            self.last_used_weight = used
            self.budget.observe(used, sent_at=sent_at)
        return RestResponse(status, body, used, time.monotonic() - sent_at, recv_ts, final_url, headers)

    async def _error(self, resp: RestResponse, attempt: int) -> RestError:
        """Classify a non-2xx response: the error to raise, ``retriable`` when another attempt
        may help. A 429 also pauses the host; a 418 records the ban and raises here."""
        status, url = resp.status, resp.url
        self._count_error(str(status))
        code, msg = binance_error(resp.body)
        detail = f" code {code}: {msg}" if code is not None or msg else ""
        tries = f" ({attempt + 1} attempts)"
        if status == 418:
            await self._on_banned(resp.headers, msg, url)
        if status == 429:
            wait = self._on_rate_limited(resp.headers, code, msg)
            return RateLimitedError(
                f"GET {url}: HTTP 429{detail}{tries}", url=url, status=status, code=code, retry_after=wait
            )
        if status >= 500 or status in RETRIABLE_STATUS:
            return RestError(f"GET {url}: HTTP {status}{detail}{tries}", url=url, status=status, code=code)
        return RestError(
            f"GET {url}: HTTP {status}{detail}", url=url, status=status, code=code, retriable=False
        )

    async def _retry_sleep(self, url: str, why: str, attempt: int, backoff: Backoff) -> None:
        self.retries += 1
        delay = backoff.next_delay()
        log.debug("GET %s: %s, retry %d/%d in %.2f s", url, why, attempt, self.max_retries, delay)
        await asyncio.sleep(delay)

    def _on_rate_limited(self, headers: Mapping[str, str], code: int | None, msg: str | None) -> float:
        self.count_429 += 1
        self._rate_limited += 1
        wait = retry_after(headers, time.time())
        if wait is None:
            wait = min(MAX_429_FALLBACK_S, 2.0 ** (self._rate_limited - 1))
        self.budget.pause(wait)
        if self._rate_limited == 1:
            log.warning(
                "rate-limited by %s (HTTP 429%s): no request for %.1f s",
                self.host,
                f", code {code}: {msg}" if code is not None else "",
                wait,
            )
        return wait

    async def _on_banned(self, headers: Mapping[str, str], msg: str | None, url: str) -> NoReturn:
        self.count_418 += 1
        now = time.time()
        until = max(ban_end(headers, msg, now), self._banned_until)
        self._banned_until = until
        log.error(
            "%s banned this IP until %s (HTTP 418%s); no request to it before then",
            self.host,
            _iso(until),
            f": {msg}" if msg else "",
        )
        await self._persist_ban(until)
        raise BannedError(
            f"GET {url}: HTTP 418, IP banned until {_iso(until)}" + (f" ({msg})" if msg else ""),
            url=url,
            until=until,
        )

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and the status line."""
        return {
            "host": self.host,
            "requests": self.requests,
            "retries": self.retries,
            "errors": dict(self.errors),
            "status_429": self.count_429,
            "status_418": self.count_418,
            "used_weight": self.last_used_weight,
            "banned_until": self.banned_until or None,
            "rate_limited": self._rate_limited > 0,
            "waited_s": round(self.budget.waited_s, 3),
            "budget": self.budget.stats(),
        }
