"""`fedcredit nodes register` / `nodes list` against a real SuperLink (TLS, SuperNode authentication).

The institution's name is bound to its node key when the operator registers the key; the
SuperLink stores both with the node id, and `fedcredit nodes list` reads them back — including
the status of a real SuperNode that authenticated with that key.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.conftest import run_fedcredit
from tests.processes import new_processes, processes, stop_started
from tests.deployment import BIN, flower_env, free_port, start, superlink_command, wait_for_port


def _fedcredit(capsys, *args) -> subprocess.CompletedProcess:
    """``fedcredit *args`` in this process (the SuperLink and the SuperNode are real processes)."""
    from fedcredit.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


@pytest.mark.slow
def test_register_and_list_nodes_with_institution_names_on_a_real_superlink(tmp_path, process_tag, capsys,
                                                                               monkeypatch):
    before = processes()
    started = []
    certs, keys = tmp_path / "certs", tmp_path / "keys"
    try:
        assert run_fedcredit("certs", "--out", certs, "--hosts", "localhost,127.0.0.1").returncode == 0
        fingerprints = {}
        for name in ("bank-a", "bank-b", "lender-c"):
            out = run_fedcredit("keys", "--out", keys, "--name", name, "--json")
            fingerprints[name] = json.loads(out.stdout.strip().splitlines()[-1])["fingerprint"]
        port = free_port()
        link = start(superlink_command(certs, port, tmp_path / "superlink.db"), flower_env(tmp_path / "home-link"),
                     tmp_path / "superlink.log")
        started.append(link)
        wait_for_port(port, link, tmp_path / "superlink.log")
        home = tmp_path / "home-cli"
        home.mkdir()
        monkeypatch.setenv("FLWR_HOME", str(home))  # the operator's Flower CLI settings
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "consortium"\n\n[superlink.consortium]\n'
            f'address = "127.0.0.1:{port}"\nroot-certificates = "{certs / "ca.crt"}"\n')

        # --- registration binds the key's name (its comment) or --institution to the key
        a = _fedcredit(capsys, "nodes", "register", keys / "bank-a.pub", "consortium", "--json")
        assert a.returncode == 0, a.stdout + a.stderr
        reg_a = json.loads(a.stdout.strip().splitlines()[-1])
        assert reg_a["institution"] == "bank-a" and reg_a["fingerprint"] == fingerprints["bank-a"]
        b = _fedcredit(capsys, "nodes", "register", keys / "bank-b.pub", "--institution", "bank-b", "--json")
        assert b.returncode == 0, b.stdout + b.stderr  # the default connection
        reg_b = json.loads(b.stdout.strip().splitlines()[-1])

        # --- mistakes: exit 2 with one message, nothing registered
        (keys / "renamed.pub").write_text((keys / "lender-c.pub").read_text().replace("lender-c", "bank-a"))
        (keys / "nameless.pub").write_text(" ".join((keys / "lender-c.pub").read_text().split()[:2]) + "\n")
        cases = [
            (["nodes", "register", keys / "lender-c.pub", "--institution", "bank-z"], "is named 'lender-c'"),
            (["nodes", "register", keys / "bank-a.pub"], "already registered, as node"),
            (["nodes", "register", keys / "renamed.pub"], "institution 'bank-a' is already registered"),
            (["nodes", "register", keys / "lender-c"], "this is a private key"),
            (["nodes", "register", keys / "nameless.pub", "--institution", "bad name"], "--institution 'bad name'"),
            (["nodes", "register", keys / "nameless.pub"], "key comment ''"),
            (["nodes", "list", "nowhere"], "nowhere"),
        ]
        for argv, words in cases:
            proc = _fedcredit(capsys, *argv)
            assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, (argv, proc.stderr)

        # --- a SuperNode authenticates with bank-a's key: the listing shows it online, under its name
        node = start([str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{port}",
                      "--root-certificates", str(certs / "ca.crt"), "--auth-supernode-private-key",
                      str(keys / "bank-a"), "--port", str(free_port())],
                     flower_env(tmp_path / "home-node"), tmp_path / "node.log")
        started.append(node)
        deadline, listed = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            proc = _fedcredit(capsys, "nodes", "list", "consortium", "--json")
            assert proc.returncode == 0, proc.stderr
            listed = {n["institution"]: n for n in json.loads(proc.stdout.strip().splitlines()[-1])["nodes"]}
            if listed.get("bank-a", {}).get("status") == "online":
                break
            time.sleep(1)
        assert set(listed) == {"bank-a", "bank-b"}, listed
        assert listed["bank-a"]["status"] == "online" and listed["bank-b"]["status"] == "registered", listed
        assert listed["bank-a"]["node_id"] == reg_a["node_id"] and listed["bank-b"]["node_id"] == reg_b["node_id"]
        assert {k: v["fingerprint"] for k, v in listed.items()} == {k: fingerprints[k] for k in ("bank-a", "bank-b")}
        table = _fedcredit(capsys, "nodes", "list")
        assert table.returncode == 0 and "bank-a" in table.stdout and str(reg_a["node_id"]) in table.stdout
        # the same node ids as Flower's own listing
        ls = subprocess.run([str(BIN / "flwr"), "supernode", "ls", "consortium", "--format", "json"], cwd=home,
                            env=flower_env(home), capture_output=True, text=True, timeout=120)
        assert {int(n["node-id"]) for n in json.loads(ls.stdout)["nodes"]} == {reg_a["node_id"], reg_b["node_id"]}
    finally:
        stop_started(started)
    assert new_processes(before, settle_s=20, tag=process_tag) == {}
