"""The institution's node runs only its installed fedcredit — real SuperLink, two real nodes.

One deployment on loopback for the module (``fedcredit certs`` → ``flower-superlink`` with TLS
and node authentication → ``flwr supernode register`` → two ``fedcredit node start``, each a
SuperNode in process isolation plus the fedcredit runtime). On it:

* a run of the installed release completes, and no node ever installs the run's FAB;
* a run submitted from a modified copy of the app (a ClientApp that writes a marker file and
  returns the raw table size) is refused by both nodes with ``app-not-allowed``, and the marker
  file never appears;
* the runtime of one node is killed with SIGKILL in the middle of a run: ``node start`` starts it
  again, the run completes, and the node's privacy ledger holds every release it made;
* a node whose key was never registered, and a node started with ``--insecure`` against this TLS
  SuperLink, end with exit code 2 and the fix.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_fedcredit
from tests.processes import kill_pids, new_processes, processes, tagged
from tests.deployment import (BIN, MAX_EPSILON, consortium_files, flower_env, flwr, free_port, node_start_command, operator_cli, start,
                               superlink_command, wait_for_port)

pytestmark = pytest.mark.slow
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (node|supernode|runtime) ")
READY_TIMEOUT_S = 300


def _runtime_pids(log: Path) -> list[int]:
    return [int(p) for p in re.findall(r"runtime started \(pid (\d+)\)", log.read_text())]


def _wait_for(predicate, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} after {timeout:.0f} s" + (f":\n{log.read_text()[-3000:]}" if log else ""))


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    work = tmp_path_factory.mktemp("consortium")
    certs, keys, data = work / "certs", work / "keys", work / "data"
    started: list[subprocess.Popen] = []
    with tagged() as tag:
        before = processes(tag=tag)
        try:
            names = consortium_files(work, 2, extra_keys=("intruder",), seed=5)
            port = free_port()
            link = start(superlink_command(certs, port), flower_env(work / "home-link"), work / "superlink.log")
            started.append(link)
            wait_for_port(port, link, work / "superlink.log")
            cli_home = operator_cli(work / "home-cli", port, certs, keys, names)
            logs = {name: work / f"node-{name}.log" for name in names}
            for name in names:
                cmd = node_start_command(port, certs, keys, data, work / f"state-{name}", name)
                started.append(start(cmd, flower_env(work / f"home-{name}", threads=1), logs[name], cwd=REPO))
            for name in names:
                _wait_for(lambda n=name: "[fedcredit-runtime] ready" in logs[n].read_text(), READY_TIMEOUT_S,
                          f"node {name} not ready", logs[name])
            yield {"work": work, "port": port, "certs": certs, "keys": keys, "data": data, "names": names,
                   "cli_home": cli_home, "logs": logs, "nodes": dict(zip(names, started[1:]))}
        finally:
            for p in reversed(started):  # SIGTERM: node start stops its runtime and SuperNode
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        kill_pids([p.pid])
            left = new_processes(before, settle_s=20, tag=tag)
            kill_pids(list(left))
    assert left == {}, f"processes left behind: {left}"


def _run(consortium, run_dir: Path, rounds: int, extra: str = "", app: Path = REPO) -> subprocess.CompletedProcess:
    config = (f"num-server-rounds={rounds} min-available-nodes=2 min-train-nodes=1 round-timeout=150.0 "
              f"run-dir='{run_dir}' dp=true batch-size=128 seed=3 target-epsilon=1.0 {extra}")
    return flwr(["run", ".", "consortium", "--stream", "--run-config", config], consortium["cli_home"],
                timeout=900, cwd=app)


def test_a_run_of_the_installed_release_completes_without_installing_its_fab(consortium):
    run_dir = consortium["work"] / "run-ok"
    proc = _run(consortium, run_dir, rounds=2)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "completed" and m["rounds_completed"] == 2, m.get("stop_detail")
    assert sorted(m["history"][-1]["participants"]) == sorted(consortium["names"])
    for name, log in consortium["logs"].items():
        text = log.read_text()
        assert f"run {m['run_id']}" in text and "train: done" in text, text[-3000:]
        assert "not warmed up" not in text, "a task imported a module the runtime should have loaded once"
        lines = [ln for ln in text.splitlines() if ln.strip()]
        stamped = [ln for ln in lines if TIMESTAMP.match(ln)]
        first_child_line = next(i for i, ln in enumerate(lines) if TIMESTAMP.match(ln))
        assert len(stamped) == len(lines) - first_child_line, "every line of the running node has a timestamp"
        # Flower installs a FAB under FLWR_HOME/apps before running it; the node never does
        assert not (consortium["work"] / f"home-{name}" / "apps").exists()


def _modified_app(dst: Path, marker: Path) -> Path:
    """A copy of the app whose ClientApp writes ``marker`` and returns the raw table size."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if rel.endswith((".py", ".toml")) and not rel.startswith(("tests/", "bench/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            (dst / rel).write_bytes((REPO / rel).read_bytes())
    with open(dst / "clients" / "client_app.py", "a") as fh:
        fh.write(f'''

@app.query("stats")
def leak(msg, context):  # the coordinator's modification, next to the raw borrower table
    from pathlib import Path
    Path({str(marker)!r}).write_text("modified code ran at " + str(context.node_id))
    policy = _policy(context)
    data = N.load_node_data(policy)
    return P.reply(msg, institution_id=policy.institution_id,
                   metrics={{"raw-rows": float(len(data.split.train) + len(data.split.holdout))}})
''')
    return dst


def test_a_modified_app_is_refused_by_both_nodes_and_never_runs(consortium):
    work = consortium["work"]
    marker = work / "MODIFIED-CODE-RAN"
    app = _modified_app(work / "modified-app", marker)
    run_dir = work / "run-modified"
    _run(consortium, run_dir, rounds=2, app=app)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "stopped" and m["rounds_completed"] == 0
    refused = m["statistics"]["refused"]
    assert sorted(refused) == sorted(consortium["names"]), m["statistics"]
    for name, why in refused.items():
        assert why.startswith("app-not-allowed: offered: fedcredit/fedcredit"), why
        assert "clients/client_app.py differs from the installed file" in why and "allowed: fedcredit/fedcredit" in why
        assert "REFUSED run" in consortium["logs"][name].read_text()
    assert "raw-rows" not in json.dumps(m)
    assert not marker.exists(), marker.read_text()


def test_killing_the_runtime_mid_run_loses_no_privacy_spend(consortium):
    from privacy.accountant import PrivacyEvent, compute_epsilon, read_state

    work, names = consortium["work"], consortium["names"]
    victim = names[0]
    log = consortium["logs"][victim]
    pid_before = _runtime_pids(log)[-1]
    run_dir = work / "run-kill"
    flwr_run = start([str(BIN / "flwr"), "run", ".", "consortium", "--stream", "--run-config",
                      f"num-server-rounds=3 min-available-nodes=2 min-train-nodes=1 round-timeout=150.0 "
                      f"run-dir='{run_dir}' dp=true batch-size=128 seed=4 target-epsilon=1.0"],
                     flower_env(consortium["cli_home"]), work / "flwr-run-kill.log", cwd=REPO)
    heads = work / f"state-{victim}" / "ledger-heads.jsonl"
    seen = len(heads.read_text().splitlines()) if heads.is_file() else 0

    def round_2_started() -> bool:  # the train handler stores the ledger head it was shown, then trains
        new = [json.loads(ln) for ln in heads.read_text().splitlines()[seen:]] if heads.is_file() else []
        return any(e.get("round") == 2 and e.get("stage") == "train" for e in new)

    try:
        _wait_for(round_2_started, 600, "round 2 never reached the victim", work / "flwr-run-kill.log")
        os.kill(pid_before, signal.SIGKILL)
        assert flwr_run.wait(timeout=900) == 0, (work / "flwr-run-kill.log").read_text()[-4000:]
    finally:
        if flwr_run.poll() is None:
            kill_pids([flwr_run.pid])
    text = log.read_text()
    assert "the runtime was killed by signal SIGKILL" in text, text[-3000:]
    assert _runtime_pids(log)[-1] != pid_before  # node start started it again
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "completed" and m["rounds_completed"] == 3, m.get("stop_detail")
    assert victim in m["history"][-1]["participants"], "the restarted runtime takes part again"

    (state,) = read_state(work / f"state-{victim}")
    events = [PrivacyEvent.from_dict(e) for e in state["events"]]
    # the stored total is the composition of the stored events: nothing half-written
    assert state["epsilon_spent"] == pytest.approx(compute_epsilon(events, state["delta"]))
    assert state["epsilon_spent"] <= MAX_EPSILON + 1e-9
    trained = {e.round for e in events if e.kind == "train" and e.run_id == m["run_id"]}
    for record in m["history"]:  # every update the server accepted from the victim was paid for first
        if victim in record["participants"]:
            assert record["round"] in trained, (record["round"], trained)
            assert record["privacy"][victim]["epsilon_spent"] <= state["epsilon_spent"] + 1e-9
    status = run_fedcredit("privacy", "status", "--state-dir", work / f"state-{victim}")
    assert status.returncode == 0, status.stderr  # readable and not left locked


def test_an_unregistered_node_and_an_insecure_node_end_with_exit_2(consortium):
    c = consortium
    name = c["names"][0]
    cmd = node_start_command(c["port"], c["certs"], c["keys"], c["data"], c["work"] / "state-intruder", name)
    cmd[cmd.index("--key") + 1] = str(c["keys"] / "intruder")
    proc = subprocess.run(cmd, env=flower_env(c["work"] / "home-intruder"), cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr
    assert f"the public key {c['keys'] / 'intruder'}.pub is not registered" in proc.stderr
    assert "flwr supernode register" in proc.stderr and "Traceback" not in proc.stderr

    insecure = [a for a in cmd if a not in ("--root-certificates", str(c["certs"] / "ca.crt"))]
    i = insecure.index("--key")
    insecure[i:i + 2] = ["--insecure"]
    proc = subprocess.run(insecure, env=flower_env(c["work"] / "home-insecure"), cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr
    assert "uses TLS but this node was started with --insecure" in proc.stderr
    assert "starting:" not in proc.stdout
