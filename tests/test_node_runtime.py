"""The node runs only the fedcredit it installed (clients.app_release), and ``node start`` says what
is wrong before it starts (clients.superlink_probe) — without Flower processes.

The FABs are built by Flower's own builder from this repository (the release installed in this
environment) and from a modified copy; the SuperLink stand-ins are real TLS / plain HTTP servers
on loopback with the certificates ``fedcredit certs`` makes.
"""

from __future__ import annotations

import hashlib
import http.server
import shutil
import ssl
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO, run_fedcredit


def _fab(app_dir: Path) -> bytes:
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(app_dir)


def _app_copy(tmp_path: Path) -> Path:
    """A copy of the app's files as ``flwr run .`` would package them (tracked files)."""
    dst = tmp_path / "app"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if rel.endswith((".py", ".toml", ".md", ".json")) and not rel.startswith(("tests/", "docs/", "bench/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    return dst


@pytest.fixture(scope="module")
def installed_fab(tmp_path_factory) -> bytes:
    """The FAB of the installed release's files (built from a copy: Flower's builder would walk
    the whole checkout, .venv included, which took over 30 s on a loaded machine)."""
    return _fab(_app_copy(tmp_path_factory.mktemp("installed")))


def test_the_app_constants_match_pyproject():
    from clients.app_release import APP_NAME, APP_PUBLISHER, CLIENTAPP_REF, installed_release

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["tool"]["flwr"]["app"]["publisher"] == APP_PUBLISHER
    assert project["project"]["name"] == APP_NAME
    assert project["tool"]["flwr"]["app"]["components"]["clientapp"] == CLIENTAPP_REF
    assert installed_release().version == project["project"]["version"]


def test_the_installed_release_is_allowed(installed_fab):
    from clients.app_release import check_fab

    verdict = check_fab(installed_fab)
    assert verdict.allowed, verdict.problems
    digest = hashlib.sha256(installed_fab).hexdigest()
    assert check_fab(installed_fab, frozenset({digest})).allowed
    pinned = check_fab(installed_fab, frozenset({"0" * 64}))  # allow-list without this FAB
    assert not pinned.allowed and any("allowed-fab-hashes" in p for p in pinned.problems)


def test_a_modified_app_is_not_allowed_and_the_refusal_names_the_file(tmp_path):
    from clients.app_release import check_fab, installed_release

    app = _app_copy(tmp_path)
    with open(app / "clients" / "client_app.py", "a") as fh:
        fh.write("\n# a coordinator's change\n")
    (app / "privacy" / "extra_release.py").write_text("LEAK = True\n")
    verdict = check_fab(_fab(app))
    assert not verdict.allowed
    assert "clients/client_app.py differs from the installed file" in verdict.problems
    assert "privacy/extra_release.py is not part of the installed release" in verdict.problems
    detail = verdict.detail(installed_release(), frozenset())
    assert detail.startswith(f"offered: fedcredit/fedcredit {installed_release().version} (FAB sha256 ")
    assert "allowed: fedcredit/fedcredit" in detail and "clients/client_app.py" in detail


def test_another_version_or_clientapp_is_not_allowed(tmp_path):
    from clients.app_release import check_fab

    app = _app_copy(tmp_path)
    text = (app / "pyproject.toml").read_text()
    text = text.replace('version = "0.1.0"', 'version = "9.9.9"').replace(
        'clientapp = "clients.client_app:app"', 'clientapp = "clients.other:app"')
    (app / "pyproject.toml").write_text(text)
    verdict = check_fab(_fab(app))
    assert not verdict.allowed
    assert any("version 9.9.9 is not the installed" in p for p in verdict.problems)
    assert any("'clients.other:app' is not 'clients.client_app:app'" in p for p in verdict.problems)
    assert not check_fab(b"not a zip file").allowed


def test_allowed_fab_hashes_are_checked_at_node_start(tmp_path):
    from clients.app_release import parse_allowed_hashes

    good = "a" * 64
    assert parse_allowed_hashes(f"{good}, {'B' * 64}") == {good, "b" * 64}
    assert parse_allowed_hashes("") == frozenset()
    data = tmp_path / "bank.csv"
    data.write_text("x\n")
    proc = run_fedcredit("node", "start", "--superlink", "127.0.0.1:9", "--insecure", "--check", "--node-config",
                         f"data-path='{data}' state-dir='{tmp_path}/s' max-epsilon=1.0 allowed-fab-hashes='abc'")
    assert proc.returncode == 2 and "allowed-fab-hashes: 'abc' is not a SHA-256" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------ node start diagnostics
@pytest.fixture(scope="module")
def node_setup(tmp_path_factory):
    """Certificates (two CAs), a key, one institution's table."""
    base = tmp_path_factory.mktemp("node")
    assert run_fedcredit("certs", "--out", base / "certs", "--hosts", "localhost,127.0.0.1").returncode == 0
    assert run_fedcredit("certs", "--out", base / "other", "--hosts", "localhost,127.0.0.1").returncode == 0
    assert run_fedcredit("certs", "--out", base / "elsewhere", "--hosts", "superlink.example").returncode == 0
    assert run_fedcredit("keys", "--out", base / "keys", "--name", "bank").returncode == 0
    assert run_fedcredit("data", "synth", "--out", base / "data", "--institutions", 1, "--scale", 0.2).returncode == 0
    return base, next((base / "data").glob("*.csv"))


class _Server:
    """A real HTTP server on loopback, with TLS when given a certificate and key."""

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


def _check(node_setup, superlink: str, *extra) -> subprocess.CompletedProcess:
    base, csv = node_setup
    return run_fedcredit("node", "start", "--superlink", superlink, "--check", "--node-config",
                         f"data-path='{csv}' state-dir='{base}/state' max-epsilon=4.0", *extra)


@pytest.mark.slow  # six `node start --check` processes, each loading torch and the table
def test_check_tests_the_superlink_certificate_against_ca_crt(node_setup):
    base, _ = node_setup
    ca, key = ["--root-certificates", base / "certs" / "ca.crt"], ["--key", base / "keys" / "bank"]
    with _Server(base / "certs" / "server.crt", base / "certs" / "server.key") as tls:
        ok = _check(node_setup, f"127.0.0.1:{tls.port}", *ca, *key)
        assert ok.returncode == 0, ok.stderr
        assert "SuperLink OK" in ok.stdout and "commonName=localhost" in ok.stdout
        assert "--isolation process" in ok.stdout and "clients.node_runtime" in ok.stdout
        wrong_ca = _check(node_setup, f"127.0.0.1:{tls.port}", "--root-certificates", base / "other" / "ca.crt")
        assert wrong_ca.returncode == 2 and "is not signed by" in wrong_ca.stderr, wrong_ca.stderr
        insecure = _check(node_setup, f"127.0.0.1:{tls.port}", "--insecure")
        assert insecure.returncode == 2 and "uses TLS but this node was started with --insecure" in insecure.stderr
    with _Server(base / "elsewhere" / "server.crt", base / "elsewhere" / "server.key") as other_name:
        wrong_name = _check(node_setup, f"127.0.0.1:{other_name.port}",
                            "--root-certificates", base / "elsewhere" / "ca.crt")
        assert wrong_name.returncode == 2 and "not valid for '127.0.0.1'" in wrong_name.stderr, wrong_name.stderr
    with _Server() as plain:
        no_tls = _check(node_setup, f"127.0.0.1:{plain.port}", *ca)
        assert no_tls.returncode == 2 and "does not use TLS" in no_tls.stderr, no_tls.stderr
    for proc in (wrong_ca, insecure, wrong_name, no_tls):
        assert "Traceback" not in proc.stderr and "would run" not in proc.stdout


def test_check_reports_a_superlink_that_does_not_answer(node_setup):
    from tests.deployment import free_port

    base, _ = node_setup
    proc = _check(node_setup, f"127.0.0.1:{free_port()}", "--root-certificates", base / "certs" / "ca.crt")
    assert proc.returncode == 2 and "nothing answers at 127.0.0.1:" in proc.stderr, proc.stderr


def test_insecure_with_a_key_is_refused_before_anything_starts(node_setup):
    base, csv = node_setup
    proc = run_fedcredit("node", "start", "--superlink", "127.0.0.1:9", "--insecure", "--key", base / "keys" / "bank",
                         "--node-config", f"data-path='{csv}' state-dir='{base}/state' max-epsilon=4.0")
    assert proc.returncode == 2, proc.stderr
    assert "--insecure with --key: SuperNode authentication needs TLS" in proc.stderr
    assert "starting:" not in proc.stdout and "Traceback" not in proc.stderr


def test_supernode_connection_failures_are_translated():
    from clients.node_supervisor import supernode_failure

    unregistered = ["ERROR :     Exit Code: 305", "Failed to initialize the connection to the SuperLink.",
                    "[code: 2004] Failed to activate SuperNode."]
    assert "keys/bank.pub is not registered" in supernode_failure(unregistered, "keys/bank")
    no_key = ["Exit Code: 305", "[code: 2001] SuperNode authentication is enabled. All SuperNodes must be "
              "registered via the CLI."]
    assert "requires node authentication: give --key" in supernode_failure(no_key, None)
    assert supernode_failure(["INFO : SuperNode terminated gracefully."], None) is None


def test_runtime_module_runs_as_a_program():
    proc = subprocess.run([sys.executable, "-m", "clients.node_runtime", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 0 and "--runtime-api" in proc.stdout
