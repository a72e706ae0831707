"""Throwaway certificates for serving the sim over TLS: a CA and a server certificate it signed.

The server certificate names ``127.0.0.1``, ``::1`` and ``localhost`` in its ``subjectAltName``
(host names are checked against it, IP addresses against its IP entries), so a client trusting
the CA verifies the sim exactly as it verifies a real venue. Made with the ``openssl`` command
(no Python dependency); EC P-256 keys, valid for ``days``. Tests and the benchmark make a fresh
set each run; nothing here is meant to protect anything.

``python -m ingestd.sim.certs DIR`` writes a set into DIR and prints the ``ingestd sim`` and
``ingestd run`` flags that use it.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SERVER_NAMES: Final = ("IP:127.0.0.1", "IP:::1", "DNS:localhost")

_SERVER_EXTENSIONS: Final = f"""\
subjectAltName = {",".join(SERVER_NAMES)}
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


@dataclass(frozen=True, slots=True)
class ThrowawayCerts:
    """Paths of one set: what a client trusts (``ca``) and what the server presents."""

    ca: Path
    """The CA certificate (PEM): pass it as ``--ca-file`` or ``SSL_CERT_FILE``."""
    cert: Path
    """The server certificate (PEM), signed by ``ca``: ``ingestd sim --tls-cert``."""
    key: Path
    """Its private key (PEM, unencrypted): ``ingestd sim --tls-key``."""


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise FileNotFoundError("the openssl command is needed to make throwaway certificates")
    done = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, check=False)  # noqa: S603 - fixed arguments, our own paths
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed ({done.returncode}): {done.stderr.strip()[-500:]}")


def make_certs(directory: Path, *, days: int = 2, name: str = "ingestd throwaway test CA") -> ThrowawayCerts:
    """Write a fresh CA and a server certificate for the loopback names into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", str(days),
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=directory
    )
    (directory / "server.ext").write_text(_SERVER_EXTENSIONS, encoding="ascii")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-set_serial", f"0x{secrets.token_hex(16)}", "-days", str(days),
        "-extfile", "server.ext", "-out", "server.pem",
        cwd=directory,
    )  # fmt: skip
    return ThrowawayCerts(directory / "ca.pem", directory / "server.pem", directory / "server.key")


def main(argv: list[str] | None = None) -> int:
    """``python -m ingestd.sim.certs DIR``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m ingestd.sim.certs DIR\n")
        return 2
    certs = make_certs(Path(args[0]))
    sys.stdout.write(
        f"ingestd sim --tls-cert {certs.cert} --tls-key {certs.key}\n"
        f"ingestd run --ca-file {certs.ca} --rest-url https://127.0.0.1:PORT --ws-url wss://127.0.0.1:PORT\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
