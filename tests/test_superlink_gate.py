"""The consortium's public port passes the Fleet API only — real nginx, real SuperLink, real nodes.

docs/operator.md §3 ("Who may submit runs"): the SuperLink listens on loopback, and nginx with the
shipped template ``deploy/superlink-gate.nginx.conf`` serves the public port. This test renders
the template for free ports and the test's ``fedcredit certs`` (only the lines that name them,
each substitution checked, so a template of another shape fails here), runs nginx as a process
of its own (its own process group, ended by the test — and by the kernel if the test process
dies), and checks against a SuperLink with TLS and ``--enable-supernode-auth`` on 127.0.0.1:

* two institutions' ``fedcredit node start --superlink 127.0.0.1:<public port>`` join through the
  gate (online in ``flwr supernode ls``) and a one-round DP run completes; nginx's access log
  holds the nodes' Fleet calls;
* the Control API through the public port is refused: ``flwr run``, ``flwr ls`` and ``flwr
  supernode register`` fail with nginx's 403, and so do a raw ListRuns request (also spelled with
  ``..``, ``%2e%2e``, ``%2f``, ``//``) and the Runtime API — while the same ListRuns request on
  the loopback port answers with the run.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import pwd
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, skip_unless_required
from tests.deployment import (consortium_files, flower_env, flwr, free_port, node_start_command, operator_cli, start,
                              superlink_command, wait_for_port)
from tests.processes import new_processes, processes, stop_group, stop_started

TEMPLATE = REPO / "deploy" / "superlink-gate.nginx.conf"
ONLINE_TIMEOUT_S = 300
TRAVERSALS = ("/v1/fleet/../control/list-runs", "/v1/fleet/%2e%2e/control/list-runs",
              "/v1/fleet/..%2fcontrol/list-runs", "/v1/fleet/..;/control/list-runs", "//v1/control/list-runs",
              "/v1/control%2flist-runs")


def find_nginx() -> str | None:
    """The nginx binary (Debian installs it in /usr/sbin, outside a user's PATH), or None."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


@pytest.fixture(scope="module")
def nginx() -> str:
    """nginx to run the gate with. Skips when none is installed — except where
    ``FEDCREDIT_REQUIRE_NGINX=1`` (set by ``.ci/run``, which installs it): there it fails."""
    path = find_nginx()
    if path is None:
        skip_unless_required("no nginx installed (Debian: apt-get install -y nginx-light)", "FEDCREDIT_REQUIRE_NGINX")
    return path


def render_gate(public_port: int, link_port: int, certs: Path) -> str:
    """The template with this test's ports and certificate paths, substituted in exactly the lines
    (outside comments) that name them; fails if any is not where the template had it."""
    substitutions = [("listen 8000 ssl;", f"listen 127.0.0.1:{public_port} ssl;", 1),
                     ("server 127.0.0.1:8001;", f"server 127.0.0.1:{link_port};", 1),
                     ("/etc/fedcredit/certs/", f"{certs}/", 3)]
    lines = TEMPLATE.read_text().splitlines()
    for old, new, expected in substitutions:
        hits = [i for i, line in enumerate(lines) if old in line.partition("#")[0]]
        assert len(hits) == expected, f"{TEMPLATE}: {old!r} in {len(hits)} line(s), expected {expected}"
        for i in hits:
            code, sep, comment = lines[i].partition("#")
            lines[i] = code.replace(old, new) + sep + comment
    code = "\n".join(line.partition("#")[0] for line in lines)
    assert ":8000" not in code and ":8001" not in code and "/etc/" not in code, "a port or path left unrendered"
    return "\n".join(lines) + "\n"


def nginx_config(gate: Path, prefix: Path) -> Path:
    """A minimal nginx.conf whose http {} block includes ``gate``: logs and temporary files
    under ``prefix``, nothing that needs root."""
    tmp = prefix / "tmp"
    tmp.mkdir(parents=True)
    # a master running as root would run its workers as 'nobody', who cannot write the test's tmp
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    temp_paths = "".join(f"    {kind}_temp_path {tmp / kind};\n"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = prefix / "nginx.conf"
    conf.write_text(f"{user}worker_processes 1;\nevents {{ worker_connections 256; }}\nhttp {{\n"
                    f"    access_log {prefix / 'access.log'};\n{temp_paths}    include {gate};\n}}\n")
    return conf


def start_nginx(binary: str, conf: Path, prefix: Path) -> subprocess.Popen:
    """nginx in the foreground, leading its own process group; SIGTERM (nginx's fast shutdown)
    reaches it also when the test process dies without cleaning up (PR_SET_PDEATHSIG)."""
    from clients.node_runtime import die_with_parent

    log = prefix / "error.log"
    log.touch()
    cmd = [binary, "-c", str(conf), "-p", f"{prefix}/", "-e", str(log),
           "-g", f"daemon off; pid {prefix / 'nginx.pid'}; error_log {log} notice;"]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(prefix / "nginx.out", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=functools.partial(die_with_parent, os.getpid(), signal.SIGTERM))


def post(port: int, path: str, ca: Path, body: bytes = b"") -> tuple[int, bytes]:
    """A raw protobuf POST over HTTPS to 127.0.0.1:``port``, the path sent exactly as given."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=str(ca)),
                                       timeout=30)
    try:
        conn.request("POST", path, body=body,
                     headers={"content-type": "application/protobuf", "accept": "application/protobuf"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_online(cli_home: Path, count: int, logs: list[Path]) -> list[dict]:
    """Wait until the SuperLink (asked on loopback) lists ``count`` nodes online."""
    deadline = time.monotonic() + ONLINE_TIMEOUT_S
    while time.monotonic() < deadline:
        listing = flwr(["supernode", "ls", "consortium", "--format", "json"], cli_home)
        nodes = json.loads(listing.stdout)["nodes"] if listing.returncode == 0 else []
        if sum(n["status"] == "online" for n in nodes) == count:
            return nodes
        time.sleep(2)
    pytest.fail(f"not {count} nodes online after {ONLINE_TIMEOUT_S} s: {listing.stdout}\n"
                + "\n".join(log.read_text()[-2000:] for log in logs))


def refused_by_gate(proc: subprocess.CompletedProcess) -> bool:
    """A ``flwr … --format json`` that the gate refused: no success, nginx's 403 in the message."""
    out = json.loads(proc.stdout)
    return out["success"] is False and "403 Forbidden" in out["error-message"]


@pytest.mark.slow  # a SuperLink, nginx, two nodes (torch) and a DP round
def test_public_port_passes_nodes_and_refuses_the_control_api(tmp_path, nginx, process_tag):
    from flwr.proto.control_pb2 import ListRunsRequest, ListRunsResponse

    before = processes()
    started: list[subprocess.Popen] = []
    gate: subprocess.Popen | None = None
    work = tmp_path
    certs, keys, data, run_dir, prefix = work / "certs", work / "keys", work / "data", work / "run", work / "nginx"
    try:
        institutions = consortium_files(work, 2, extra_keys=("intruder",), seed=7)
        link_port, public_port = free_port(), free_port()
        link = start(superlink_command(certs, link_port), flower_env(work / "home-link"), work / "superlink.log")
        started.append(link)
        wait_for_port(link_port, link, work / "superlink.log")
        cli_home = operator_cli(work / "home-cli", link_port, certs, keys, institutions)  # on loopback
        with open(cli_home / "config.toml", "a") as fh:  # and one through the public port
            fh.write(f'\n[superlink.gate]\naddress = "127.0.0.1:{public_port}"\n'
                     f'root-certificates = "{certs / "ca.crt"}"\n')

        prefix.mkdir()
        (prefix / "gate.conf").write_text(render_gate(public_port, link_port, certs))
        gate = start_nginx(nginx, nginx_config(prefix / "gate.conf", prefix), prefix)
        wait_for_port(public_port, gate, prefix / "error.log")

        # --- the institutions' nodes know only the public port
        logs = [work / f"node-{name}.log" for name in institutions]
        for name, log in zip(institutions, logs):
            cmd = node_start_command(public_port, certs, keys, data, work / f"state-{name}", name)
            started.append(start(cmd, flower_env(work / f"home-{name}", threads=1), log, cwd=REPO))
        nodes = wait_online(cli_home, 2, logs)
        assert len(nodes) == 2, nodes

        proc = flwr(["run", ".", "consortium", "--stream", "--run-config",
                     f"num-server-rounds=1 min-available-nodes=2 min-train-nodes=2 round-timeout=240.0 "
                     f"run-dir='{run_dir}' dp=true local-epochs=1 batch-size=128 seed=3 target-epsilon=2.0"],
                    cli_home, timeout=600, cwd=REPO)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["rounds_completed"] == 1, metrics.get("stop_detail")
        assert sorted(metrics["history"][-1]["participants"]) == sorted(institutions)
        access = (prefix / "access.log").read_text()
        for call in ("activate-node", "pull-messages", "push-messages", "pull-object", "push-object"):
            assert f'"POST /v1/fleet/{call} HTTP/1.1" 200' in access, (call, access[-3000:])

        # --- the Control API through the public port: refused by nginx; on loopback: answered
        assert refused_by_gate(flwr(["ls", "gate", "--format", "json"], cli_home))
        assert refused_by_gate(flwr(["supernode", "register", keys / "intruder.pub", "gate", "--format", "json"],
                                    cli_home))
        proc = flwr(["run", ".", "gate", "--run-config", f"run-dir='{work / 'run-2'}'", "--format", "json"], cli_home,
                    cwd=REPO)
        assert refused_by_gate(proc), proc.stdout + proc.stderr
        listing = json.loads(flwr(["ls", "consortium", "--format", "json"], cli_home).stdout)
        assert [r["status"] for r in listing["runs"]] == ["finished:completed"], listing
        nodes = json.loads(flwr(["supernode", "ls", "consortium", "--format", "json"], cli_home).stdout)["nodes"]
        assert len(nodes) == 2, nodes  # the intruder's key was not registered

        body = ListRunsRequest().SerializeToString()
        status, content = post(link_port, "/v1/control/list-runs", certs / "ca.crt", body)
        assert status == 200 and len(ListRunsResponse.FromString(content).run_dict) == 1, (status, content[:300])
        for path in ("/v1/control/list-runs", *TRAVERSALS, "/v1/runtime/get-nodes"):
            status, content = post(public_port, path, certs / "ca.crt", body)
            assert status in (403, 404) and (status == 404 or b"nginx" in content), (path, status, content[:300])
        assert not (work / "run-2").exists()
    finally:
        stop_started(started)
        if gate is not None:
            stop_group(gate, "nginx")
    left = new_processes(before, settle_s=20, tag=process_tag)
    assert left == {}, f"processes left behind: {left}"
