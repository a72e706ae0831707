"""The websocket seam: a small :class:`WsTransport` / :class:`WsConnection` protocol and its
aiohttp implementation.

The producer only needs "open a URL, read frames as bytes, know why it closed". aiohttp's
``ws_connect`` receives about 3x faster than ``websockets`` (docs/performance.md §2), and with
``decode_text=False`` it hands text frames over as the received ``bytes``: no UTF-8 decode here
and no re-encode in the parser (orjson/msgspec read bytes directly).

Keepalive: aiohttp answers server pings by itself (``autoping``) and, with ``heartbeat``, pings
the server after ``ping_interval_s`` without traffic and fails the connection when no pong comes
back within half of that — a dead peer is noticed even where TCP would sit for minutes.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Final, Protocol

import aiohttp

from ingestd.backoff import classify
from ingestd.errors import TransportError
from ingestd.tls import origin, tls_reason

log = logging.getLogger("ingestd.streams")

ABNORMAL_CLOSURE: Final = 1006
"""RFC 6455 code for "closed without a close frame" (TCP reset, EOF, dead peer)."""


class WsConnection(Protocol):
    """One open websocket."""

    @property
    def close_code(self) -> int | None:
        """The peer's close code once closed (1006 when the socket died without one)."""

    async def recv(self) -> bytes | None:
        """The next data frame's payload, or ``None`` once the connection is closed.

        Raises :class:`~ingestd.errors.TransportError` when the connection failed (protocol
        error, frame over the size limit, keepalive timeout).
        """

    async def send(self, text: str) -> None:
        """Send one text frame (control messages)."""

    # Optional: ``def ready(self) -> bool`` — the next :meth:`recv` returns a data frame without
    # waiting (one is already received and queued). The producer batches records across such
    # frames; a connection without it gets one batch per frame.

    async def close(self, code: int = 1000) -> None:
        """Close the connection and release its resources. Idempotent; waits."""


class WsTransport(Protocol):
    """Opens websockets."""

    async def connect(self, url: str, timeout: float) -> WsConnection:  # noqa: ASYNC109 - the deadline is data of the seam; implementations apply it with asyncio.timeout
        """Open ``url`` within ``timeout`` seconds.

        Raises :class:`~ingestd.errors.TransportError` whose ``retriable`` says whether trying
        again can help (see :func:`ingestd.backoff.classify`).
        """


_DATA: Final = (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY)
_ENDED: Final = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


class AiohttpConnection:
    """A :class:`WsConnection` over aiohttp. Owns its ``ClientSession``."""

    __slots__ = ("_close_code", "_closed", "_done", "_session", "_ws", "url")

    def __init__(
        self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse[bool], url: str
    ) -> None:
        self._session = session
        self._ws = ws
        self.url = url
        self._close_code: int | None = None
        self._closed = False
        self._done = asyncio.Event()

    @property
    def close_code(self) -> int | None:
        if self._close_code is not None:
            return self._close_code
        code = self._ws.close_code
        return int(code) if code is not None else None

    def ready(self) -> bool:
        """A data frame is already queued: the next :meth:`recv` returns it without waiting.

        aiohttp has no public call for this; its reader queue (``WebSocketDataQueue._buffer`` of
        ``(message, size)``, aiohttp 3.9-3.14) is read, and anything unexpected there answers
        ``False``, which only costs batching (one batch per frame), never a frame.
        """
        try:
            head = self._ws._reader._buffer[0][0]  # private aiohttp state: see the docstring
        except (AttributeError, IndexError, TypeError):
            return False
        return getattr(head, "type", None) in _DATA

    async def recv(self) -> bytes | None:
        msg = await self._ws.receive()
        if msg.type in _DATA:
            data = msg.data
            # decode_text=False: text frames arrive as bytes already.
            return data if isinstance(data, bytes) else bytes(data, "utf-8")
        if msg.type is aiohttp.WSMsgType.CLOSE:
            self._close_code = int(msg.data)
            return None
        if msg.type in _ENDED:
            # Closed without a close frame from the peer (EOF, reset) unless we closed it.
            if self._close_code is None and not self._closed:
                self._close_code = ABNORMAL_CLOSURE
            return None
        if msg.type is aiohttp.WSMsgType.ERROR:
            exc = msg.data
            # aiohttp records a protocol error's own code (1009 for a frame over the limit).
            code = self._ws.close_code
            self._close_code = int(code) if code else ABNORMAL_CLOSURE
            what = (tls_reason(exc) if isinstance(exc, BaseException) else None) or repr(exc)
            raise TransportError(
                f"websocket failed: {what}",
                url=self.url,
                retriable=classify(exc) if isinstance(exc, BaseException) else True,
            ) from (exc if isinstance(exc, BaseException) else None)
        # PING/PONG are answered inside aiohttp (autoping); nothing else is expected here.
        raise TransportError(f"unexpected websocket message type {msg.type!r}", url=self.url)

    async def send(self, text: str) -> None:
        try:
            await self._ws.send_str(text)
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"send failed: {exc!r}", url=self.url, retriable=classify(exc)) from exc

    async def close(self, code: int = 1000) -> None:
        if self._closed:
            # A second caller waits for the first to finish, so "closed" means released.
            await self._done.wait()
            return
        self._closed = True
        try:
            await self._ws.close(code=code)
        except (aiohttp.ClientError, OSError) as exc:
            log.debug("closing %s: %r", self.url, exc)
        finally:
            await self._session.close()
            self._done.set()


class AiohttpTransport:
    """A :class:`WsTransport` over ``aiohttp.ClientSession.ws_connect``.

    ``ping_interval_s``: client keepalive cadence (use the venue's: spot 20 s, USDⓈ-M 180 s);
    ``None`` disables client pings (server pings are still answered). ``max_frame_bytes``: a
    larger frame fails the connection. ``close_timeout_s`` bounds the closing handshake.
    ``ssl_context`` verifies ``wss://`` peers (the daemon's shared one, :mod:`ingestd.tls`);
    ``None`` uses aiohttp's default verifying context.
    """

    def __init__(
        self,
        *,
        max_frame_bytes: int = 4 * 1024 * 1024,
        ping_interval_s: float | None = None,
        close_timeout_s: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.ping_interval_s = ping_interval_s
        self.close_timeout_s = close_timeout_s
        self.ssl_context = ssl_context

    async def connect(self, url: str, timeout: float) -> AiohttpConnection:  # noqa: ASYNC109 - see WsTransport.connect
        session = aiohttp.ClientSession()
        try:
            # One deadline over DNS, TCP, TLS and the upgrade: the error says which URL stalled.
            async with asyncio.timeout(timeout):
                ws = await session.ws_connect(
                    url,
                    autoping=True,
                    heartbeat=self.ping_interval_s,
                    max_msg_size=self.max_frame_bytes,
                    decode_text=False,
                    compress=0,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self.close_timeout_s),
                    ssl=self.ssl_context if self.ssl_context is not None else True,
                )
        except TimeoutError as exc:
            await session.close()
            raise TransportError(f"connect to {url} timed out after {timeout:g} s", url=url) from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            await session.close()
            reason = tls_reason(exc)
            # A TLS failure names the peer, not the whole stream list: one readable line.
            what = f"{origin(url)}: {reason}" if reason else f"connect to {url} failed: {_describe(exc)}"
            raise TransportError(what, url=url, retriable=classify(exc)) from exc
        except BaseException:
            await session.close()
            raise
        return AiohttpConnection(session, ws, url)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status} {exc.message}".rstrip()
    return f"{type(exc).__name__}: {exc}"
