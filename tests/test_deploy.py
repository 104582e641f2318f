"""Deployment on loopback with real processes: TLS, SuperNode authentication, DP training.

``test_deploy_two_dp_rounds_with_tls_and_node_auth`` does what docs/operator.md and
docs/institution.md describe: ``fedcredit certs`` → ``flower-superlink`` (TLS,
``--enable-supernode-auth``, persistent ``--database``) → ``fedcredit keys`` per institution →
``flwr supernode register`` → ``fedcredit node start`` per institution → ``flwr run .
<connection> --stream`` → ``flwr ls`` / ``flwr log``; then it checks the model package and every
node's lifetime privacy state (a node with an unregistered key: tests/test_deploy_runtime.py). Every
process has its own ``FLWR_HOME`` under the test's temporary directory, and only the processes
the test started are stopped (by PID).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.conftest import REPO, run_fedcredit
from tests.deployment import (MAX_EPSILON, LoopbackServer, consortium_files, flower_env, flwr, free_port,
                              node_start_command, operator_cli, start, superlink_command, wait_for_port)
from tests.processes import new_processes, processes, stop_started


def test_node_start_with_invalid_data_exits_2_with_the_validation_report(tmp_path, process_tag):
    bad = tmp_path / "loans.csv"
    bad.write_text("borrower_id,credit_limit\nA1,1000\nA2,lots\n")
    before = processes()
    proc = run_fedcredit("node", "start", "--superlink", "127.0.0.1:9", "--insecure", "--node-config",
                         f"data-path='{bad}' state-dir='{tmp_path / 'state'}' max-epsilon=4.0", timeout=120)
    validate = run_fedcredit("data", "validate", bad)
    assert proc.returncode == 2 and validate.returncode == 2
    assert "the table was not accepted" in proc.stderr
    assert "'lots'" in proc.stderr or "lots" in proc.stderr
    # the same report as `fedcredit data validate`
    assert validate.stderr.strip() in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "starting:" not in proc.stdout  # Flower was never started
    assert new_processes(before, settle_s=0, tag=process_tag) == {}


@pytest.mark.slow  # seven `node start` processes, each importing torch and reading the table
def test_node_start_checks_config_key_and_certificate(tmp_path):
    run_fedcredit("keys", "--out", tmp_path / "keys", "--name", "bank")
    assert run_fedcredit("certs", "--out", tmp_path / "certs", "--hosts", "localhost,127.0.0.1").returncode == 0
    data = tmp_path / "data"
    assert run_fedcredit("data", "synth", "--out", data, "--institutions", 1, "--scale", 0.3).returncode == 0
    csv = next(data.glob("*.csv"))
    good = f"data-path='{csv}' state-dir='{tmp_path / 'st'}' max-epsilon=4.0"
    common = ["node", "start", "--superlink", "127.0.0.1:9", "--root-certificates", tmp_path / "certs" / "ca.crt"]

    with LoopbackServer(tmp_path / "certs" / "server.crt", tmp_path / "certs" / "server.key") as superlink:
        common[3] = f"127.0.0.1:{superlink.port}"
        ok = run_fedcredit(*common, "--key", tmp_path / "keys" / "bank", "--node-config", good, "--check",
                           "--port", 9123)
    assert ok.returncode == 0, ok.stderr
    assert "ε spent 0.0000 of 4" in ok.stdout
    assert "--auth-supernode-private-key" in ok.stdout and "--port 9123" in ok.stdout
    assert "--isolation process" in ok.stdout and "--runtime-api 127.0.0.1:9123" in ok.stdout

    cases = [
        (["--key", tmp_path / "keys" / "bank.pub", "--node-config", good], "this is a public key"),
        (["--key", tmp_path / "keys" / "bank", "--node-config", f"data-path='{csv}' max-epsilon=4.0"], "state-dir"),
        (["--key", tmp_path / "keys" / "bank", "--node-config", f"data-path={csv}"], "in quotes"),
        (["--key", tmp_path / "keys" / "bank", "--node-config", f"data-path='{csv}' state-dir='{tmp_path}/s2'"],
         "max-epsilon"),
    ]
    for extra, message in cases:
        proc = run_fedcredit(*common, *extra, "--check")
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr)
    os.chmod(tmp_path / "keys" / "bank", 0o644)
    proc = run_fedcredit(*common, "--key", tmp_path / "keys" / "bank", "--node-config", good, "--check")
    assert proc.returncode == 2 and "chmod 600" in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two runs (one with SecAgg+); on a loaded 2-core machine the pair took over 900 s
def test_deploy_two_dp_rounds_with_tls_and_node_auth(tmp_path, process_tag):
    from models.package import load_package
    from privacy.accountant import read_state

    t_start = time.monotonic()
    before = processes()
    started: list[subprocess.Popen] = []
    work = tmp_path
    certs, keys, data, run_dir = work / "certs", work / "keys", work / "data", work / "run"
    try:
        # --- operator: CA and SuperLink certificate; institutions: data and keys
        institutions = consortium_files(work, 3)

        # --- operator: SuperLink with TLS, node authentication and a persistent database
        port = free_port()
        link_log = work / "superlink.log"
        link = start(superlink_command(certs, port, work / "superlink.db"), flower_env(work / "home-link"), link_log)
        started.append(link)
        wait_for_port(port, link, link_log)

        # --- operator's CLI connection (config.toml of its FLWR_HOME) and node registration
        cli_home = operator_cli(work / "home-cli", port, certs, keys, institutions)

        # --- institutions: fedcredit node start (checks, then exec flower-supernode)
        for name in institutions:
            cmd = node_start_command(port, certs, keys, data, work / f"state-{name}", name)
            started.append(start(cmd, flower_env(work / f"home-{name}", threads=1), work / f"node-{name}.log",
                                 cwd=REPO))

        # --- operator: the run, streamed to the end
        run_config = (f"num-server-rounds=2 min-available-nodes=3 min-train-nodes=3 round-timeout=240.0 "
                      f"run-dir='{run_dir}' dp=true local-epochs=1 batch-size=128 seed=3 target-epsilon=2.0")
        t_run = time.monotonic()
        proc = flwr(["run", ".", "consortium", "--stream", "--run-config", run_config], cli_home, timeout=900,
                    cwd=REPO)
        run_s = time.monotonic() - t_run
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        listing = flwr(["ls", "consortium", "--format", "json"], cli_home)
        runs = json.loads(listing.stdout)["runs"]
        assert len(runs) == 1 and runs[0]["status"] == "finished:completed", listing.stdout
        log = flwr(["log", runs[0]["run-id"], "consortium", "--show"], cli_home)
        assert log.returncode == 0
        # the run can be followed from the Flower CLI: a fedcredit line per step (server/run_log.py)
        for text in (out, log.stdout + log.stderr):
            assert "statistics | 3 answered" in text and "round 2/2 | trained 3 of 3" in text, text[-4000:]
            assert "ε spent" in text and " ± " in text and "run " in text and "completed | 2/2 rounds" in text

        # --- the run directory: completed, two rounds, a loadable model package
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["rounds_completed"] == 2, metrics.get("stop_detail")
        assert sorted(metrics["history"][-1]["participants"]) == sorted(institutions)
        # round 1's evaluation came back inside round 2's train replies (fold-evaluation): noised, from every node
        r1 = metrics["history"][0]
        assert r1["evaluated_with"] == "train" and sorted(r1["institutions"]) == sorted(institutions), r1
        assert r1["global"]["auc"] is not None and "round 1/2 evaluation | evaluated by 3" in out
        pkg = load_package(run_dir / "model")
        assert pkg.meta["dp"] is True and pkg.meta["rounds_completed"] == 2

        # --- every node's lifetime privacy state: spent, and within its own budget
        for name in institutions:
            states = read_state(work / f"state-{name}")
            assert len(states) == 1
            spent = states[0]["epsilon_spent"]
            assert 0 < spent <= MAX_EPSILON + 1e-9, (name, spent)
            kinds = {e["kind"] for e in states[0]["events"]}
            assert "statistics" in kinds and len(states[0]["events"]) >= 3, kinds
            evaluated = [(e["round"], e["rows"]) for e in states[0]["events"] if e["kind"] == "evaluation"]
            assert evaluated[0] == (1, "holdout"), evaluated  # round 1's model, evaluated with round 2's message
            reported = metrics["institutions"][name]["privacy"]["epsilon_spent"]  # after training round 2
            assert 0 < reported <= spent + 1e-9
        # --- a second run on the same deployment, with secure aggregation (SecAgg+) and DP: the
        # nodes' lifetime ledgers go on from the first run's spend
        spent_before = {name: read_state(work / f"state-{name}")[0]["epsilon_spent"] for name in institutions}
        run2 = work / "run-secagg"
        t_run2 = time.monotonic()
        proc = flwr(["run", ".", "consortium", "--stream", "--run-config",
                     f"num-server-rounds=1 min-available-nodes=3 min-train-nodes=3 round-timeout=240.0 "
                     f"run-dir='{run2}' dp=true batch-size=128 seed=4 target-epsilon=1.0 fraction-evaluate=0.0 "
                     "secure-aggregation=true"], cli_home, timeout=900, cwd=REPO)
        run2_s = time.monotonic() - t_run2
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        m2 = json.loads((run2 / "metrics.json").read_text())
        assert m2["status"] == "completed", m2.get("stop_detail")
        rec = m2["history"][0]
        assert sorted(rec["secure_aggregation"]["contributors"]) == sorted(institutions)
        assert sorted(rec["participants"]) == sorted(institutions)
        for name in institutions:
            after = read_state(work / f"state-{name}")[0]["epsilon_spent"]
            assert spent_before[name] < after <= MAX_EPSILON + 1e-9, (name, spent_before[name], after)
            assert rec["privacy"][name]["epsilon_spent"] == pytest.approx(after, rel=1e-6)
        print(f"\ndeploy: run {run_s:.1f} s, secure-aggregation run {run2_s:.1f} s, "
              f"test {time.monotonic() - t_start:.1f} s")
    finally:
        stop_started(started)
    left = new_processes(before, settle_s=20, tag=process_tag)
    assert left == {}, f"processes left behind: {left}"
