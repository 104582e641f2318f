"""Before a node starts: does the SuperLink answer, and does its TLS match what the node expects?

Flower's SuperNode retries forever when it speaks plain HTTP to a TLS SuperLink, and exits with
status 1 and a generic "could not establish a connection" for a certificate it cannot verify.
:func:`probe_superlink` opens one TCP connection and one TLS handshake (Python's ``ssl``, the
consortium CA as the only trust anchor, the address's host as the name to verify) and says in
words what is wrong: nothing listening, a certificate not signed by ``ca.crt``, a certificate for
another name, an expired one, a SuperLink without TLS, or one with TLS for a node started with
``--insecure``.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Probe:
    """``reachable`` False: nothing answered (``problem`` says why); otherwise ``problem`` is a
    TLS mismatch to fix (empty when all is well) and ``certificate`` describes what was seen."""

    reachable: bool
    problem: str = ""
    certificate: str = ""

    @property
    def ok(self) -> bool:
        return self.reachable and not self.problem


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _connect(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)


def _describe(cert: dict) -> str:
    subject = ", ".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)
    names = ", ".join(v for _, v in cert.get("subjectAltName", ()))
    return f"{subject} (names: {names or 'none'}; valid until {cert.get('notAfter', '?')})"


def _speaks_tls(host: str, port: int) -> bool:
    """A TLS handshake without verification succeeds: the server speaks TLS."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with _connect(host, port) as raw, ctx.wrap_socket(raw):
            return True
    except (ssl.SSLError, OSError):
        return False


def _verify_problem(exc: ssl.SSLCertVerificationError, host: str, ca: Path) -> str:
    if exc.verify_code == 62 or "Hostname mismatch" in str(exc.verify_message):
        return (f"the SuperLink's certificate is not valid for '{host}' ({exc.verify_message}); connect with a "
                "name or address the certificate lists, or ask the operator for a certificate that lists it")
    if exc.verify_code == 10:
        return f"the SuperLink's certificate has expired ({exc.verify_message}); the operator must renew it"
    return (f"the SuperLink's certificate is not signed by {ca} ({exc.verify_message}); check that you have the "
            "consortium's current ca.crt (compare its fingerprint with the operator's by phone)")


def probe_superlink(address: str, root_certificates: str | Path | None, insecure: bool) -> Probe:
    """Connect to ``address`` (host:port) the way the node will and report what is wrong."""
    host, port = split_address(address)
    try:
        _connect(host, port).close()
    except OSError as exc:
        return Probe(False, f"nothing answers at {address} ({exc.strerror or exc})")
    if insecure:
        if _speaks_tls(host, port):
            return Probe(True, f"the SuperLink at {address} uses TLS but this node was started with --insecure; "
                         "drop --insecure and give --root-certificates ca.crt (from the operator)")
        return Probe(True, "", "no TLS (--insecure)")
    ca = Path(str(root_certificates)).expanduser()
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with _connect(host, port) as raw, ctx.wrap_socket(raw, server_hostname=host) as tls:
            return Probe(True, "", _describe(tls.getpeercert()))
    except ssl.SSLCertVerificationError as exc:
        return Probe(True, _verify_problem(exc, host, ca))
    except ssl.SSLError as exc:
        if "WRONG_VERSION_NUMBER" in str(exc) or "record layer failure" in str(exc):
            return Probe(True, f"the SuperLink at {address} does not use TLS (it was started with --insecure); "
                         "a node only connects with TLS: ask the operator to start it with its certificate")
        return Probe(True, f"TLS handshake with {address} failed ({exc})")
    except OSError as exc:
        return Probe(False, f"the connection to {address} failed during the TLS handshake ({exc.strerror or exc})")
