"""Setting up a consortium on loopback with real processes, for the deployment tests: free ports,
each process's own ``FLWR_HOME``, certificates, data and node keys (``fedcredit certs`` / ``data
synth`` / ``keys``), the SuperLink with TLS and node authentication, the operator's Flower CLI with
the institutions registered, and ``fedcredit node start`` — as docs/operator.md and
docs/institution.md describe them; a real (TLS) HTTP server on loopback standing in for a SuperLink
that ``node start --check`` probes (:class:`LoopbackServer`)."""

from __future__ import annotations

import http.server
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import run_fedcredit

BIN = Path(sys.executable).parent
MAX_EPSILON = 4.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(home: Path, threads: int | None = None) -> dict[str, str]:
    from simulation.flower_runtime import flwr_run_env

    home.mkdir(parents=True, exist_ok=True)
    env = flwr_run_env(home)
    env.update({"PYTHONIOENCODING": "utf-8", "COLUMNS": "200"})
    if threads:
        # three nodes share this machine's cores: one torch thread each avoids oversubscription
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode} before listening:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"nothing listens on {port} after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def start(cmd: list[str], env: dict, log: Path, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=cwd or log.parent, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def flwr(args: list, home: Path, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "flwr"), *map(str, args)], cwd=cwd or home, env=flower_env(home),
                          capture_output=True, text=True, timeout=timeout)


def consortium_files(work: Path, institutions: int, extra_keys: tuple[str, ...] = (), seed: int = 11) -> list[str]:
    """``fedcredit certs`` (work/certs), ``data synth`` (work/data) and ``keys`` (work/keys) for a
    consortium on loopback; returns the institutions' names (their files are data/<name>.csv)."""
    assert run_fedcredit("certs", "--out", work / "certs", "--hosts", "localhost,127.0.0.1").returncode == 0
    synth = run_fedcredit("data", "synth", "--out", work / "data", "--institutions", institutions, "--scale", 0.3,
                          "--seed", seed, "--json", timeout=300)
    assert synth.returncode == 0, synth.stderr
    names = [i["id"] for i in json.loads(synth.stdout.strip().splitlines()[-1])["institutions"]]
    for name in [*names, *extra_keys]:
        assert run_fedcredit("keys", "--out", work / "keys", "--name", name).returncode == 0
    return names


def superlink_command(certs: Path, port: int, database: Path | None = None) -> list[str]:
    """``flower-superlink`` with TLS and SuperNode authentication on loopback (operator.md)."""
    return [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(certs / "ca.crt"),
            "--ssl-certfile", str(certs / "server.crt"), "--ssl-keyfile", str(certs / "server.key"),
            "--enable-supernode-auth", *(["--database", str(database)] if database else []),
            "--host", "127.0.0.1", "--port", str(port)]


def operator_cli(home: Path, port: int, certs: Path, keys: Path, institutions: list[str]) -> Path:
    """The operator's Flower CLI home: a ``consortium`` connection in its config.toml, and every
    institution's public key registered with ``flwr supernode register``."""
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "consortium"\n\n[superlink.consortium]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{certs / "ca.crt"}"\n')
    for name in institutions:
        reg = flwr(["supernode", "register", keys / f"{name}.pub", "consortium", "--format", "json"], home)
        assert reg.returncode == 0 and json.loads(reg.stdout)["success"], reg.stdout + reg.stderr
    return home


def node_start_command(port: int, certs: Path, keys: Path, data: Path, state: Path, name: str) -> list[str]:
    """``fedcredit node start`` for institution ``name`` (its file ``data/<name>.csv``)."""
    return [sys.executable, "-m", "fedcredit", "node", "start", "--superlink", f"127.0.0.1:{port}",
            "--root-certificates", str(certs / "ca.crt"), "--key", str(keys / name), "--port", str(free_port()),
            "--node-config", node_config(data / f"{name}.csv", state, name)]


def node_config(data: Path, state: Path, inst: str) -> str:
    return (f"data-path='{data}' state-dir='{state}' max-epsilon={MAX_EPSILON} institution-id='{inst}' "
            "release-eval='noised'")


class LoopbackServer:
    """A real HTTP server on loopback, with TLS when given a certificate and key: a stand-in for a
    SuperLink that ``fedcredit node start --check`` probes (its port: ``.port``)."""

    def __init__(self, cert: Path | None = None, key: Path | None = None):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
        if cert is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
