"""TLS: the daemon's one client context, the sim's server context, and one-line failure reasons.

Trust, highest first:

* ``tls.ca_file`` (``--ca-file``): that PEM bundle is the whole trust store (like curl's
  ``--cacert``; concatenate it with the system bundle to trust both);
* ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``, OpenSSL's standard variables, read by
  :func:`ssl.create_default_context` when the context is built (at start-up);
* the system store (Debian: ``/etc/ssl/certs``).

The context is built once, before the event loop starts (loading a bundle is blocking file I/O),
and shared by every REST request, websocket, the clock and the pollers. aiohttp's own default
context (``ssl=True``) is built when aiohttp is imported: it sees ``SSL_CERT_FILE`` from the
process environment but not a change made later, one more reason to pass ours everywhere.

Verification is always on: certificate chain and host name (IP addresses match an IP
``subjectAltName``). A failure is described in one line by :func:`tls_reason`, and is retriable
(see :func:`ingestd.backoff.classify`).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from ingestd.errors import ConfigError

__all__ = ["client_context", "origin", "server_context", "tls_reason", "trust_source"]


def client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """A verifying client context: chain and host name checked, trusting ``ca_file`` when given,
    else ``SSL_CERT_FILE``/``SSL_CERT_DIR`` or the system store.

    Raises :class:`~ingestd.errors.ConfigError` naming ``ca_file`` when it cannot be read or
    holds no PEM certificate.
    """
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None)
    except OSError as exc:
        if isinstance(exc, ssl.SSLError):
            reason = _ssl_text(exc)
            raise ConfigError(
                f"tls.ca_file {ca_file}: not a PEM bundle of CA certificates ({reason})", key="tls.ca_file"
            ) from None
        raise ConfigError(f"tls.ca_file {ca_file}: {exc.strerror or exc}", key="tls.ca_file") from None
    # create_default_context already asks for both; stated so a future default cannot relax them.
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    return ctx


def trust_source(ca_file: Path | None = None) -> str:
    """Which CAs :func:`client_context` trusts, for the start-up log line."""
    if ca_file is not None:
        return f"tls.ca_file {ca_file}"
    env = [f"{k}={os.environ[k]}" for k in ("SSL_CERT_FILE", "SSL_CERT_DIR") if os.environ.get(k)]
    if env:
        return " and ".join(env)
    paths = ssl.get_default_verify_paths()
    return f"the system store ({paths.cafile or paths.capath or 'OpenSSL default'})"


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server context presenting ``cert_file`` (PEM, chain allowed) with ``key_file`` (the sim).

    Raises :class:`~ingestd.errors.ConfigError` naming the files when they cannot be read or do
    not hold a PEM certificate and its private key.
    """
    for flag, path in (("--tls-cert", cert_file), ("--tls-key", key_file)):
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"{flag} {path}: {exc.strerror or exc}") from None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"--tls-cert {cert_file} / --tls-key {key_file}: not a PEM certificate and its private key "
            f"({_ssl_text(exc)})"
        ) from None
    return ctx


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url`` (names the peer without a long stream list)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else url


def tls_reason(exc: BaseException) -> str | None:
    """One line for a TLS failure anywhere in ``exc``'s chain, else ``None``.

    ``TLS certificate verify failed: self-signed certificate`` (the OpenSSL verify message:
    untrusted issuer, expired, host name mismatch …) or ``TLS error: <OpenSSL reason>``.
    aiohttp wraps these (``ClientConnectorCertificateError``, ``ClientConnectorSSLError``)
    and chains the original, which is what is read here.
    """
    related = _related(exc)
    for e in related:
        message = getattr(e, "verify_message", None)
        if isinstance(e, ssl.SSLCertVerificationError) and message:
            return f"TLS certificate verify failed: {message}"
    for e in related:
        # aiohttp's wrappers are SSLErrors too, but only the original carries OpenSSL's text.
        if isinstance(e, ssl.SSLError) and isinstance(getattr(e, "reason", None), str):
            return f"TLS error: {_ssl_text(e)}"
    return None


def _related(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception reachable from it: causes, contexts, aiohttp's wrapped errors."""
    out: list[BaseException] = []
    todo: list[object] = [exc]
    while todo:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or any(e is seen for seen in out):
            continue
        out.append(e)
        todo += [
            e.__cause__,
            e.__context__,
            getattr(e, "certificate_error", None),
            getattr(e, "os_error", None),
        ]
    return out


def _ssl_text(exc: ssl.SSLError) -> str:
    """``wrong version number`` from ``[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)``."""
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    text = text.split("] ", 1)[-1]
    return text.split(" (_ssl.c:", 1)[0].strip() or str(getattr(exc, "reason", None) or type(exc).__name__)
