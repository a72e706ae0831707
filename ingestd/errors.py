"""The error tree. One root, :class:`IngestError`; each subclass says what failed.

``retriable`` tells a supervising loop whether trying again can help: a dropped socket is
retriable, an unknown symbol is not. Subclasses also inherit the builtin exception whose meaning
matches (``ValueError`` for bad input, ``OSError`` for transport faults, ``TimeoutError`` for
deadlines) so callers that only know the builtins still catch them.
"""

from __future__ import annotations


class IngestError(Exception):
    """Root of every error ingestd raises on purpose."""

    retriable: bool = False


class ConfigError(IngestError, ValueError):
    """Settings, config file, environment or CLI flags are invalid. The CLI exits with 2."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class StartupError(IngestError):
    """The daemon could not start (discovery failed, unknown symbol …). The CLI exits with 3."""


class ParseError(IngestError, ValueError):
    """A frame or REST body did not have the expected shape. Counted and skipped, never fatal."""

    def __init__(self, message: str, *, stream: str | None = None) -> None:
        super().__init__(f"{stream}: {message}" if stream else message)
        self.stream = stream


class TransportError(IngestError, OSError):
    """A websocket or HTTP connection failed. Retriable unless stated otherwise."""

    retriable = True

    def __init__(self, message: str, *, url: str | None = None, retriable: bool = True) -> None:
        super().__init__(message)
        self.url = url
        self.retriable = retriable


class RestError(TransportError):
    """A REST call answered with an error status or an unusable body."""

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        code: int | None = None,
        retry_after: float | None = None,
        retriable: bool = True,
    ) -> None:
        super().__init__(message, url=url, retriable=retriable)
        self.status = status
        self.code = code
        self.retry_after = retry_after


class RateLimitedError(RestError):
    """HTTP 429: the host's request weight was exceeded; wait ``retry_after`` seconds."""


class BannedError(RestError):
    """HTTP 418: the IP is banned from the host until ``until`` (epoch seconds)."""

    def __init__(self, message: str, *, url: str | None = None, until: float, status: int = 418) -> None:
        super().__init__(message, url=url, status=status, retriable=True)
        self.until = until


class PhaseTimeoutError(IngestError, TimeoutError):
    """A deadline ran out; the message names the phase (``shutdown.drain``, ``snapshot`` …)."""

    def __init__(self, phase: str, seconds: float) -> None:
        super().__init__(f"{phase} did not finish within {seconds:g} s")
        self.phase = phase
        self.seconds = seconds


class StorageError(IngestError, OSError):
    """A consumer could not write (disk full, permission). Retriable: data stays buffered."""

    retriable = True
