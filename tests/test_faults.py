"""Reliability: dropouts and stragglers, crash and resume, broken updates, damaged state.

Fast tests drive the real round driver (:class:`server.consortium.ConsortiumRun`) and the real
ClientApp in this process (:class:`tests.inprocess_grid.InProcessGrid`); a server crash is an
exception raised where the process would have died (after the nodes replied, before the
round's checkpoint). The slow tests do the same with real processes: Flower's simulation
runtime with injected faults and an invalid institution file, ``fedcredit simulate`` killed
with SIGKILL and resumed, and a deployment on loopback whose SuperNode is killed mid-round and
whose ServerApp is then killed and resumed with ``resume-from``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedcredit import protocol as P
from server.ledger import LEDGER_FILE, read_ledger, verify_ledger
from tests.conftest import REPO, run_fedcredit
from tests.inprocess_grid import InProcessGrid
from tests.inprocess_runs import _execute, _grid, _message, _run_config


def _kinds(run_dir: Path) -> list[tuple[str, int | None]]:
    return [(e["kind"], e["payload"].get("round")) for e in read_ledger(run_dir / LEDGER_FILE)]


# ------------------------------------------------------------------- dropouts and dead nodes
class VanishingGrid(InProcessGrid):
    """Node 13 fails in round 1 and then disappears from the SuperLink's node list."""

    def get_node_ids(self):
        trained = sum(1 for _, t in self.sent if t == "train")
        return [n for n in self.contexts if not (n == 13 and trained >= 3)]


@pytest.mark.timeout(120)
def test_a_node_that_dies_is_left_out_and_not_waited_for(tmp_path):
    # min-available-nodes = 3: Flower's own sampler would wait for the third node forever
    rc = _run_config(tmp_path, "vanish")
    summary, _ = _execute(rc, _grid(rc, fail={13: {"train"}}, grid_cls=VanishingGrid))
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    rounds = summary["history"]
    assert list(rounds[0]["dropped"]) and len(rounds[0]["participants"]) == 2
    dead = next(iter(rounds[0]["dropped"]))
    assert all(len(r["sampled"]) == 2 and dead not in r["sampled"] for r in rounds[1:])
    run_dir = Path(rc["run-dir"])
    assert verify_ledger(run_dir / LEDGER_FILE).ok
    assert _kinds(run_dir) == [("run-start", None), ("statistics", None), ("dropout", 1), ("round", 1),
                               ("round", 2), ("round", 3), ("run-end", None)]


@pytest.mark.timeout(120)
def test_too_few_connected_nodes_stop_the_run_after_the_round_timeout(tmp_path):
    class Emptying(InProcessGrid):
        def get_node_ids(self):
            return [11] if any(t == "train" for _, t in self.sent) else list(self.contexts)

    rc = _run_config(tmp_path, "empty")
    t0 = time.monotonic()
    summary, _ = _execute(rc, _grid(rc, grid_cls=Emptying))
    assert summary["status"] == "stopped" and summary["stop_reason"] == "too-few-nodes"
    assert "min-train-nodes is 2" in summary["stop_detail"] and summary["rounds_completed"] == 1
    assert time.monotonic() - t0 < 60
    assert _kinds(Path(rc["run-dir"]))[-2:] == [("run-stopped", None), ("run-end", None)]


# ------------------------------------------------------------------------ update validation
def _corrupting_app(plan: dict[int, str]):
    """The real ClientApp; in round r, virtual node 2's update is broken as ``plan[r]`` says."""
    from flwr.app import MetricRecord

    from simulation.faults import ClientAppWithMods
    from clients.client_app import app

    def corrupt(msg, ctx, call_next):
        before = P.from_array_record(msg.content[P.ARRAYS]) if msg.metadata.message_type == "train" else None
        reply = call_next(msg, ctx)
        rnd = int(msg.content["config"]["server-round"]) if before is not None else 0
        if before is None or int(ctx.node_config["partition-id"]) != 2 or rnd not in plan:
            return reply
        w = P.from_array_record(reply.content[P.ARRAYS])
        k = sorted(w)[0]
        kind = plan[rnd]
        if kind == "shape":
            w[k] = w[k][..., :-1].copy()
        elif kind == "dtype":
            w[k] = np.round(w[k] * 100).astype(np.int32)
        elif kind in ("nan", "inf"):
            w[k].flat[0] = np.nan if kind == "nan" else -np.inf
        elif kind == "extra-array":
            w["backdoor"] = np.ones(3, np.float32)
        elif kind == "missing-array":
            del w[k]
        elif kind == "norm":
            w = {n: before[n] + 1000 * (w[n] - before[n]) for n in w}
        elif kind == "examples":
            reply.content[P.METRICS] = MetricRecord({"num-examples": -5.0})
        reply.content[P.ARRAYS] = P.to_array_record(w)
        return reply

    return ClientAppWithMods(app, [corrupt])


def test_broken_updates_are_rejected_recorded_and_the_round_goes_on(tmp_path):
    plan = {1: "shape", 2: "dtype", 3: "nan", 4: "inf", 5: "extra-array", 6: "missing-array", 7: "norm",
            8: "examples"}
    expected = {"shape": "has shape", "dtype": "expected a float type", "nan": "NaN or infinite",
                "inf": "NaN or infinite", "extra-array": "array names differ", "missing-array": "array names differ",
                "norm": "exceeds the bound max-update-norm = 50", "examples": "num-examples must be a positive"}
    rc = _run_config(tmp_path, "broken", **{"num-server-rounds": len(plan), "max-update-norm": 50.0})
    summary, _ = _execute(rc, _grid(rc, app=_corrupting_app(plan)))
    assert summary["status"] == "completed" and summary["rounds_completed"] == len(plan)
    bad = "card-issuer-1"  # virtual node 2
    for record in summary["history"]:
        kind = plan[record["round"]]
        assert list(record["rejected"]) == [bad], kind
        assert expected[kind] in record["rejected"][bad], (kind, record["rejected"][bad])
        assert bad not in record["participants"] and len(record["participants"]) == 2
        assert record["aggregate_update_norm"] < 50
    entries = [e for e in read_ledger(Path(rc["run-dir"]) / LEDGER_FILE) if e["kind"] == "rejected-update"]
    assert [(e["payload"]["round"], e["payload"]["institution"]) for e in entries] == [(r, bad) for r in plan]


# ------------------------------------------------------------------------- crash and resume
def _same_weights(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_resumed_run_ends_with_the_same_model_as_an_uninterrupted_one(tmp_path, monkeypatch):
    """FedAdam (its moments are strategy state) without DP, so both runs are deterministic."""
    from models.package import load_package
    from server.checkpoints import list_checkpoints, load_checkpoint

    common = {"strategy": "fedadam", "num-server-rounds": 4, "fraction-evaluate": 1.0}
    rc_a = _run_config(tmp_path, "straight", **common)
    whole, _ = _execute(rc_a, _grid(rc_a))
    assert whole["status"] == "completed"

    rc_b = _run_config(tmp_path, "crashed", **common)
    summary, _ = _execute(rc_b, _grid(rc_b), crash_at=3, monkeypatch=monkeypatch)
    run_dir = Path(rc_b["run-dir"])
    assert summary is None and list_checkpoints(run_dir) == [1, 2]
    assert not (run_dir / "metrics.json").exists()
    # the same run directory, a new server process (new grid: the nodes' Flower state is per run)
    rc_b["resume-from"] = str(run_dir)
    resumed, _ = _execute(rc_b, _grid(rc_b), resume_from=run_dir)
    assert resumed["status"] == "completed" and resumed["rounds_completed"] == 4
    assert [r["round"] for r in resumed["history"]] == [1, 2, 3, 4]

    a, b = load_checkpoint(Path(rc_a["run-dir"])), load_checkpoint(run_dir)
    assert _same_weights(a.weights, b.weights)
    assert _same_weights(a.strategy_state, b.strategy_state) and b.strategy_state  # FedAdam m_t, v_t
    assert _same_weights(load_package(Path(rc_a["run-dir"]) / "model").weights, load_package(run_dir / "model").weights)

    assert verify_ledger(run_dir / LEDGER_FILE).ok
    kinds = _kinds(run_dir)
    # round r's evaluation came with round r+1's train replies (its own entry); round 2's came in the
    # round 3 that died before its checkpoint, so the resumed run asks for it again with its round 3
    assert kinds == [("run-start", None), ("statistics", None), ("round", 1), ("evaluation", 1), ("round", 2),
                     ("evaluation", 2), ("run-start", None), ("resume", None), ("evaluation", 2), ("round", 3),
                     ("evaluation", 3), ("round", 4), ("run-end", None)]
    resume = read_ledger(run_dir / LEDGER_FILE)[7]["payload"]
    assert resume["checkpoint_round"] == 2 and resume["next_round"] == 3
    assert [r["global"]["auc"] for r in resumed["history"]] == [r["global"]["auc"] for r in whole["history"]]


def test_a_round_in_flight_when_the_server_died_is_paid_once_and_replanned(tmp_path, monkeypatch):
    """DP: the nodes spent round 2 (recorded before releasing) and the server died before using it.

    After the resume the nodes train round 2 again: that is a second release, recorded as such
    (with fresh noise); the lost one stays in the ledger — never dropped, never counted twice —
    and each node re-plans σ for rounds 2–3 from what its ledger says is left.
    """
    from privacy.accountant import compute_epsilon, read_state

    rc = _run_config(tmp_path, "dp", **{"dp": True, "sim-max-epsilon": 2.0, "num-server-rounds": 3})
    summary, crashed = _execute(rc, _grid(rc), crash_at=2, monkeypatch=monkeypatch)
    assert summary is None
    state_root = Path(rc["state-root"])
    before = {d.name: read_state(d)[0] for d in state_root.iterdir()}
    counts = [("count", None), ("count", None)]  # the noisy row counts, released once per table version
    for st in before.values():
        assert [(e["kind"], e["round"]) for e in st["events"]] == counts + [("statistics", None), ("train", 1),
                                                                             ("train", 2)]
    lost_sigma = {who: st["events"][4]["noise_multiplier"] for who, st in before.items()}

    rc["resume-from"] = rc["run-dir"]
    resumed, _ = _execute(rc, _grid(rc), resume_from=rc["run-dir"], run_id=8)  # a new Flower run, as in deployment
    assert resumed["status"] == "completed" and resumed["rounds_completed"] == 3
    for who, record in ((w, r) for r in resumed["history"] for w in r["participants"]):
        assert record["privacy"][who]["epsilon_spent"] <= 2.0 + 1e-9
    for d in state_root.iterdir():
        (st,) = read_state(d)
        events = st["events"]
        assert [(e["kind"], e["round"]) for e in events] == counts + [
            ("statistics", None), ("train", 1), ("train", 2), ("train", 2), ("train", 3)]
        assert {e["run_id"] for e in events} == {"7"}, "the nodes see one run: the one that was resumed"
        assert events[:5] == before[d.name]["events"], "the lost round's spend is kept"
        from privacy.accountant import PrivacyEvent

        eps = compute_epsilon([PrivacyEvent.from_dict(e) for e in events], st["delta"])
        assert st["epsilon_spent"] == pytest.approx(eps) and eps <= 2.0 + 1e-9
        # re-planned: the replayed rounds carry more noise, since the lost round used up budget
        assert events[5]["noise_multiplier"] > lost_sigma[d.name]
        assert events[5]["noise_multiplier"] == events[6]["noise_multiplier"]
        # what the server was told last is what the ledger holds
        assert resumed["institutions"][d.name]["privacy"]["epsilon_spent"] == pytest.approx(st["epsilon_spent"])
    assert verify_ledger(Path(rc["run-dir"]) / LEDGER_FILE).ok


def _flip_byte(path: Path, offset: int = -10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_reported_never_loaded_and_an_earlier_one_can_be_chosen(tmp_path, monkeypatch):
    from server.checkpoints import CheckpointError, checkpoint_dir

    rc = _run_config(tmp_path, "damaged", **{"num-server-rounds": 4})
    _execute(rc, _grid(rc), crash_at=4, monkeypatch=monkeypatch)
    run_dir = Path(rc["run-dir"])
    _flip_byte(checkpoint_dir(run_dir, 3) / "weights.safetensors")
    ledger_before = (run_dir / LEDGER_FILE).read_bytes()
    rc["resume-from"] = str(run_dir)
    with pytest.raises(CheckpointError) as exc:
        _execute(rc, _grid(rc), resume_from=run_dir)
    message = str(exc.value)
    assert "round-0003/weights.safetensors: sha256 mismatch" in message and "will not be loaded" in message
    assert "Earlier checkpoints that verify: rounds 1, 2" in message and "round-0002" in message
    assert (run_dir / LEDGER_FILE).read_bytes() == ledger_before, "nothing is appended"
    assert not (run_dir / "metrics.json").exists()

    # the operator explicitly picks the intact round 2: round 3 is trained again
    rc["resume-from"] = str(checkpoint_dir(run_dir, 2))
    resumed, _ = _execute(rc, _grid(rc), resume_from=rc["resume-from"])
    assert resumed["status"] == "completed" and [r["round"] for r in resumed["history"]] == [1, 2, 3, 4]
    entries = read_ledger(run_dir / LEDGER_FILE)
    resume = next(e["payload"] for e in entries if e["kind"] == "resume")
    assert resume["checkpoint_round"] == 2 and resume["superseded_rounds"] == [3]
    assert verify_ledger(run_dir / LEDGER_FILE).ok


def test_simulate_resume_refuses_a_damaged_checkpoint_with_exit_2(tmp_path, monkeypatch):
    from server.checkpoints import checkpoint_dir

    rc = _run_config(tmp_path, "cli", **{"num-server-rounds": 3, "fraction-evaluate": 1.0})
    _execute(rc, _grid(rc), crash_at=3, monkeypatch=monkeypatch)
    run_dir = Path(rc["run-dir"])
    (checkpoint_dir(run_dir, 2) / "state.json").write_text("{}")
    ledger_before = (run_dir / LEDGER_FILE).read_bytes()
    proc = run_fedcredit("simulate", "--resume", run_dir, "--json")
    assert proc.returncode == 2, proc.stderr
    assert "round-0002/state.json: sha256 mismatch" in proc.stderr and "round-0001" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (run_dir / LEDGER_FILE).read_bytes() == ledger_before

    proc = run_fedcredit("simulate", "--resume", run_dir, "--rounds", 5)
    assert proc.returncode == 2 and "drop --rounds" in proc.stderr
    proc = run_fedcredit("simulate", "--resume", tmp_path / "nowhere")
    assert proc.returncode == 2 and "config.resolved.toml" in proc.stderr


# ------------------------------------------------------------------ an unwritable state dir
@contextlib.contextmanager
def unwritable(directory: Path):
    """``directory`` cannot be written (chmod; as root, the immutable attribute)."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(directory)],
                                                           capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr: cannot make a directory unwritable")
        undo = ["chattr", "-i", str(directory)]
    else:
        mode = directory.stat().st_mode
        directory.chmod(0o555)
        undo = None
    try:
        probe = directory / ".probe"
        try:
            probe.write_text("x")
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("the directory stays writable here")
        yield
    finally:
        if undo:
            subprocess.run(undo, check=True)
        else:
            directory.chmod(mode)


@pytest.fixture(scope="module")
def bank_csv(tmp_path_factory):
    from tests.tables import synthetic_bank_csv

    return synthetic_bank_csv(tmp_path_factory.mktemp("bank"), rows=1500, seed=4)


@pytest.mark.parametrize("where", ["state-dir", "privacy-dir"])
def test_an_unwritable_state_dir_makes_the_node_refuse_without_losing_or_doubling_spend(where, bank_csv, tmp_path):
    """``state-dir``: the node cannot even store the ledger head and refuses before training.
    ``privacy-dir``: it trains, cannot record the spend, and withholds the update."""
    from flwr.app import ConfigRecord, Context, RecordDict

    from clients import client_app as CA
    from clients import node as N
    from privacy.accountant import PrivacyEvent, compute_epsilon, read_state
    from tests.node_messages import round_config

    state = tmp_path / "state"
    node_config = {"data-path": str(bank_csv), "state-dir": str(state), "institution-id": "bank", "max-epsilon": 2.0}
    context = Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})
    policy = N.policy_from_context(node_config, {})

    def train(rnd: int):
        cfg, w = round_config(policy, rnd, 3, **{"ledger-head": f"{rnd:064x}"})
        msg = _message(RecordDict({P.ARRAYS: P.to_array_record(w), P.CONFIG: ConfigRecord(cfg)}), "train")
        return CA.train(msg, context)

    reply = train(1)
    assert not P.node_info(reply)["refused"] and P.ARRAYS in reply.content.array_records
    spent_1 = read_state(state)[0]

    target = state if where == "state-dir" else state / "privacy"
    with unwritable(target):
        reply = train(2)
        info = P.node_info(reply)
        assert info["refused"] == P.REFUSED_STATE, info
        assert P.ARRAYS not in reply.content.array_records, "nothing is released"
        assert "state-dir" in info["detail"] and str(target) in info["detail"], info["detail"]
        assert read_state(state)[0]["events"] == spent_1["events"], "a refused round spends nothing"
    assert not [p for p in target.iterdir() if p.name.endswith(".tmp")]

    reply = train(2)  # writable again: the round is trained and recorded once
    assert not P.node_info(reply)["refused"]
    (after,) = read_state(state)
    assert [(e["kind"], e["round"]) for e in after["events"]] == [("count", None), ("count", None), ("train", 1),
                                                                  ("train", 2)]
    eps = compute_epsilon([PrivacyEvent.from_dict(e) for e in after["events"]], after["delta"])
    assert after["epsilon_spent"] == pytest.approx(eps)
    assert float(reply.content[P.METRICS]["epsilon-spent"]) == pytest.approx(eps)


# ------------------------------------------------------------------------- real processes
SIMULATION_SCRIPT = """
import json, sys
from simulation.faults import client_app_with_faults
from simulation.flower_runtime import run_in_simulation
rc = json.loads(sys.argv[1])
run_in_simulation(rc, int(sys.argv[2]), num_cpus=2, client_app=client_app_with_faults(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def three_institutions(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("faults-data") / "data"
    proc = run_fedcredit("data", "synth", "--out", data, "--institutions", 3, "--scale", 0.3, "--seed", 11,
                         timeout=300)
    assert proc.returncode == 0, proc.stderr
    return data


@pytest.mark.slow
def test_simulation_with_failing_straggling_and_invalid_nodes_goes_on(three_institutions, tmp_path):
    """Flower's simulation runtime, four virtual nodes: card-issuer-1 fails in round 1 (injected),
    national-bank-1 answers after the round timeout in round 2 (injected), and zz-lender's file is
    invalid (bypassing ``fedcredit simulate``'s up-front validation, as a real node's file would)."""
    from tests.bad_input_corpus import CORPUS

    data = tmp_path / "data"
    shutil.copytree(three_institutions, data)
    shutil.copy(CORPUS / "unknown_sex_values.csv", data / "zz-lender.csv")
    run_dir = tmp_path / "run"
    rc = {"data-dir": str(data), "num-server-rounds": 2, "min-available-nodes": 4, "min-train-nodes": 2,
          "round-timeout": 25.0, "dp": False, "run-dir": str(run_dir), "state-root": str(tmp_path / "state"),
          "seed": 2}
    t0 = time.monotonic()
    exit_code, _, err, left = run_in_own_session(
        [sys.executable, "-c", SIMULATION_SCRIPT, json.dumps(rc), "4", "0:fail@1", "1:straggle@2"])
    wall = time.monotonic() - t0
    assert exit_code == 0, err[-3000:]
    assert left == {}, "the simulation left processes behind"

    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "completed" and m["rounds_completed"] == 2, m.get("stop_detail")
    assert m["statistics"]["refused"]["zz-lender"].startswith("invalid-data:")
    # the coordinator learns the kind of problem and the column, not the borrowers' values
    assert "unknown-category (sex)" in m["statistics"]["refused"]["zz-lender"]
    assert "Male" not in json.dumps(m)
    r1, r2 = m["history"]
    assert sorted(r1["participants"]) == ["national-bank-1", "regional-bank-1"]
    assert list(r1["dropped"]) == ["card-issuer-1"] and "injected fault" in r1["dropped"]["card-issuer-1"]
    assert sorted(r2["participants"]) == ["card-issuer-1", "regional-bank-1"]
    assert r2["dropped"] == {"national-bank-1": "no reply before the round timeout"}
    for r in (r1, r2):
        assert r["refused"]["zz-lender"]["reason"] == "invalid-data"

    res = verify_ledger(run_dir / LEDGER_FILE)
    assert res.ok, res.reason
    events = [(e["kind"], e["payload"].get("round"), e["payload"].get("institution"), e["payload"].get("stage"))
              for e in res.chain if e["kind"] in ("dropout", "refusal")]
    # the invalid institution refuses every training round and every evaluation (rounds 1, 2, final)
    assert sorted(events, key=str) == sorted([
        ("dropout", 1, "card-issuer-1", None), ("refusal", 1, "zz-lender", None),
        ("dropout", 2, "national-bank-1", None), ("refusal", 2, "zz-lender", None),
        ("refusal", 1, "zz-lender", "evaluation"), ("refusal", 2, "zz-lender", "evaluation"),
        ("refusal", 2, "zz-lender", "final-evaluation")], key=str)
    print(f"\nsimulation with faults: {wall:.1f} s")


def session_processes(sid: int) -> dict[int, str]:
    """Live processes of session ``sid`` (a test starts its command with ``start_new_session``: the
    command's pid is the session id, and Ray's and Flower's children stay in it)."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and int(parts[1]) == sid and not parts[2].startswith("Z"):
            found[int(parts[0])] = parts[3]
    return found


def descendants(pid: int) -> dict[int, str]:
    """Live descendants of ``pid`` (pid → command line), whatever session they started."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,stat=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 3) for line in out.splitlines()]
    children: dict[int, list[tuple[int, str]]] = {}
    for row in rows:
        if len(row) == 4 and not row[2].startswith("Z"):
            children.setdefault(int(row[1]), []).append((int(row[0]), row[3]))
    found, todo = {}, [pid]
    while todo:
        for child, args in children.get(todo.pop(), []):
            found[child] = args
            todo.append(child)
    return found


def run_in_own_session(cmd: list[str], timeout: float = 600) -> tuple[int, str, str, dict[int, str]]:
    """Run ``cmd`` in its own session to the end (killed after ``timeout``); returns its exit code,
    stdout, stderr and the processes of its session still alive 20 s later (then killed)."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = left_behind(proc.pid)
    return proc.returncode, out, err, left


def left_behind(sid: int, settle_s: float = 20.0) -> dict[int, str]:
    """Processes of session ``sid`` still alive after ``settle_s``; they are then killed (by pid)."""
    deadline = time.monotonic() + settle_s
    while (left := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def _train_rounds_in(state_dir: Path) -> list[int]:
    """The rounds of the training releases a node's lifetime ledger holds, in order."""
    from privacy.accountant import read_state

    return [e["round"] for e in read_state(state_dir)[0]["events"] if e["kind"] == "train"]


def _train_rounds(state_root: Path) -> dict[str, list[int]]:
    out = {}
    for d in sorted(state_root.iterdir()) if state_root.is_dir() else []:
        with contextlib.suppress(Exception):
            out[d.name] = _train_rounds_in(d)
    return out


@pytest.mark.slow
def test_simulate_killed_with_sigkill_resumes_and_finishes(tmp_path):
    """``fedcredit simulate`` (DP) is killed with SIGKILL once checkpoint 2 exists and two nodes have
    spent round 3 (the third is made slow in round 3); ``fedcredit simulate --resume`` finishes
    the planned rounds, the ledger verifies, and every node's ε is what its ledger holds for the
    releases it made — the round in flight counted once for the lost release, once for the new one."""
    from models.package import load_package, weights_digest
    from privacy.accountant import PrivacyEvent, compute_epsilon, read_state
    from server.checkpoints import list_checkpoints, load_checkpoint

    run_dir, state = tmp_path / "run", tmp_path / "run" / "node-state"
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "fedcredit", "simulate", "--institutions", "3", "--rounds", "6",
                             "--scale", "0.3", "--epsilon", "2", "--seed", "4", "--out", str(run_dir),
                             "--no-baselines", "--cpus", "2", "--inject-fault", "0:straggle=4@3"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "first.log", "w"), start_new_session=True)
    in_flight, seen_at = False, None
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            done = list_checkpoints(run_dir)
            if done and done[-1] >= 2:
                # node 0 is slow in round 3 (4 s), so the others have spent round 3 while it is in flight:
                # kill then (or within 3 s in any case)
                seen_at = seen_at or time.monotonic()
                in_flight = any(done[-1] + 1 in r for r in _train_rounds(state).values())
                if in_flight or time.monotonic() - seen_at > 3:
                    break
            time.sleep(0.01)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)  # the crash
        proc.wait()
        in_flight = in_flight and max(list_checkpoints(run_dir)) == done[-1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        time.sleep(2)
        left_behind(proc.pid, settle_s=0)  # Ray's helpers outlive a SIGKILLed driver for a while
    killed_at = max(list_checkpoints(run_dir))
    assert not (run_dir / "metrics.json").exists()
    spent_before = _train_rounds(state)

    # no --no-baselines here: the resumed run skips them because the original run did
    exit_code, out, err, left = run_in_own_session(
        [sys.executable, "-m", "fedcredit", "simulate", "--resume", str(run_dir), "--cpus", "2", "--json"])
    wall = time.monotonic() - t0
    assert exit_code == 0, err[-3000:]
    assert "Traceback" not in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["status"] == "completed" and summary["rounds"] == 6
    assert summary["auc_centralized"] is None and summary["auc_local_only_mean"] is None
    assert left == {}, "the resumed simulation left processes behind"

    assert list_checkpoints(run_dir) == [1, 2, 3, 4, 5, 6]
    res = verify_ledger(run_dir / LEDGER_FILE)
    assert res.ok, res.reason
    kinds = [(e["kind"], e["payload"].get("round")) for e in res.chain]
    assert kinds[:2] == [("run-start", None), ("statistics", None)]
    assert ("resume", None) in kinds and kinds[-1] == ("run-end", None)
    rounds = [e["payload"] for e in res.chain if e["kind"] == "round"]
    assert [p["round"] for p in rounds] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(rounds, rounds[1:]):
        assert a["model_sha256_after"] == b["model_sha256_before"]
    assert rounds[-1]["model_sha256_after"] == weights_digest(load_checkpoint(run_dir, 6).weights)
    assert load_package(run_dir / "model").meta["rounds_completed"] == 6

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for d in sorted(state.iterdir()):
        (st,) = read_state(d)
        trained = [e["round"] for e in st["events"] if e["kind"] == "train"]
        # every round once, plus the round in flight when the server died (spent, then trained again)
        assert sorted(set(trained)) == [1, 2, 3, 4, 5, 6]
        assert trained[:len(spent_before[d.name])] == spent_before[d.name], "no spend was lost"
        assert len(trained) == 6 + sum(1 for r in spent_before[d.name] if r > killed_at)
        eps = compute_epsilon([PrivacyEvent.from_dict(e) for e in st["events"]], st["delta"])
        assert st["epsilon_spent"] == pytest.approx(eps) and eps <= 2.0 + 1e-9
        assert metrics["institutions"][d.name]["privacy"]["epsilon_spent"] == pytest.approx(eps)
    assert in_flight, "the kill was meant to catch round 3 in flight"
    print(f"\nkill + resume: {wall:.1f} s; killed after checkpoint {killed_at}, round {killed_at + 1} in flight")


@pytest.mark.slow
def test_deployment_survives_a_killed_supernode_and_resumes_a_killed_server_app(tmp_path):
    """Real SuperLink (TLS, node authentication) and three SuperNodes on loopback; one node is killed
    with SIGKILL while it works on round 1. The round goes on with the other two, the dropout is
    recorded in metrics.json and the signed ledger, and the run finishes its rounds. Then a second
    run's ServerApp process is killed with SIGKILL after its first checkpoint, and ``flwr run`` with
    ``resume-from`` finishes it: one verified ledger across the crash, every round checkpointed,
    the nodes' spend before the crash kept and the resumed rounds added."""
    from privacy.accountant import PrivacyEvent, compute_epsilon, read_state
    from server.checkpoints import list_checkpoints
    from tests.deployment import (BIN, MAX_EPSILON, consortium_files, flower_env, flwr, free_port,
                                   node_start_command, operator_cli, superlink_command, wait_for_port)

    started: list[subprocess.Popen] = []

    def start(cmd: list[str], env: dict, log: Path, cwd: Path = tmp_path) -> subprocess.Popen:
        p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        started.append(p)
        return p

    certs, keys, data, run_dir = tmp_path / "certs", tmp_path / "keys", tmp_path / "data", tmp_path / "run"
    run_b = tmp_path / "run-b"
    t0 = time.monotonic()
    left: dict[int, str] = {}
    try:
        names = consortium_files(tmp_path, 3)

        port = free_port()
        link = start(superlink_command(certs, port), flower_env(tmp_path / "home-link"), tmp_path / "superlink.log")
        wait_for_port(port, link, tmp_path / "superlink.log")
        cli_home = operator_cli(tmp_path / "home-cli", port, certs, keys, names)
        nodes = {name: start(node_start_command(port, certs, keys, data, tmp_path / f"state-{name}", name),
                             flower_env(tmp_path / f"home-{name}", threads=1), tmp_path / f"node-{name}.log", cwd=REPO)
                 for name in names}

        victim = names[-1]
        run = start([str(BIN / "flwr"), "run", ".", "consortium", "--stream", "--run-config",
                     f"num-server-rounds=2 min-available-nodes=3 min-train-nodes=2 round-timeout=60.0 "
                     f"run-dir='{run_dir}' dp=true batch-size=128 seed=3 target-epsilon=2.0 evaluate-every=2"],
                    flower_env(cli_home), tmp_path / "flwr-run.log", cwd=REPO)
        # the victim is killed once it has taken up round 1 (it stores the ledger head it was shown first)
        heads = tmp_path / f"state-{victim}" / "ledger-heads.jsonl"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and run.poll() is None:
            if heads.is_file() and '"round": 1' in heads.read_text():
                break
            time.sleep(0.05)
        assert heads.is_file(), (tmp_path / "flwr-run.log").read_text()[-3000:]
        killed_after = time.monotonic() - t0
        os.kill(nodes[victim].pid, signal.SIGKILL)
        nodes[victim].wait()
        assert run.wait(timeout=600) == 0, (tmp_path / "flwr-run.log").read_text()[-3000:]
        listing = flwr(["ls", "consortium", "--format", "json"], cli_home)
        assert json.loads(listing.stdout)["runs"][0]["status"] == "finished:completed", listing.stdout

        # --- the ServerApp dies (SIGKILL) once checkpoint 1 of a second run exists; `flwr run` with
        # resume-from continues that run directory to its planned rounds on the two nodes left
        # a generous round time-out: a node's first message of a new run installs the app (FAB) and plans
        # its noise before it trains, which took up to ~50 s on this 2-core machine under load
        crash_config = (f"num-server-rounds=3 min-available-nodes=2 min-train-nodes=2 round-timeout=150.0 "
                        f"run-dir='{run_b}' dp=true batch-size=128 seed=5 target-epsilon=1.0 evaluate-every=3")
        doomed = start([str(BIN / "flwr"), "run", ".", "consortium", "--stream", "--run-config", crash_config],
                       flower_env(cli_home), tmp_path / "flwr-run-b.log", cwd=REPO)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list_checkpoints(run_b) and doomed.poll() is None:
            time.sleep(0.05)
        server_apps = [pid for pid, args in descendants(link.pid).items() if "flwr-serverapp" in args]
        assert list_checkpoints(run_b) and len(server_apps) == 1, (tmp_path / "flwr-run-b.log").read_text()[-3000:]
        os.kill(server_apps[0], signal.SIGKILL)
        killed_at = max(list_checkpoints(run_b))
        spent_at_kill = {name: _train_rounds_in(tmp_path / f"state-{name}") for name in names[:2]}
        with contextlib.suppress(subprocess.TimeoutExpired):
            doomed.wait(timeout=20)  # the CLI's log stream may outlive the ServerApp; it is not needed
        assert not (run_b / "metrics.json").exists() and killed_at < 3
        resumed = flwr(["run", ".", "consortium", "--stream", "--run-config",
                        f"{crash_config} resume-from='{run_b}'"], cli_home, timeout=600, cwd=REPO)
        assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    finally:
        for p in reversed(started):
            if p.poll() is None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=10)
            if p.poll() is None:
                p.kill()
                p.wait()
        for p in started:
            left.update(left_behind(p.pid))
    # Flower 1.42: a SuperNode that pulls a message of the run whose ServerApp was killed starts a
    # ClientApp, then sees the run is no longer RUNNING and ignores the message — and that ClientApp
    # does not exit when the SuperNode stops (left_behind killed it by pid). One per such message
    # is allowed; any other process left behind fails the test.
    ignored = sum((tmp_path / f"node-{name}.log").read_text().count("status. Ignoring message") for name in names)
    orphans = {pid: args for pid, args in left.items() if "flwr-clientapp" in args}
    assert {pid: a for pid, a in left.items() if pid not in orphans} == {}, f"processes left behind: {left}"
    assert len(orphans) <= ignored, f"ClientApps left behind beyond Flower's ignored messages: {orphans}"

    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "completed" and m["rounds_completed"] == 2, m.get("stop_detail")
    r1, r2 = m["history"]
    assert victim in r1["dropped"] and sorted(r1["participants"]) == sorted(names[:2])
    assert sorted(r2["participants"]) == sorted(names[:2])
    assert victim not in r2["sampled"] or victim in r2["dropped"]
    res = verify_ledger(run_dir / LEDGER_FILE)
    assert res.ok, res.reason
    assert ("dropout", 1, victim) in [(e["kind"], e["payload"].get("round"), e["payload"].get("institution"))
                                      for e in res.chain]
    assert m["final"]["auc"] is not None
    for name in names:  # the killed node never overspent; the others' spend is what they reported
        (st,) = read_state(tmp_path / f"state-{name}")
        assert st["epsilon_spent"] <= MAX_EPSILON + 1e-9
        if name != victim:
            assert m["history"][-1]["privacy"][name]["epsilon_spent"] <= st["epsilon_spent"] + 1e-9

    # the resumed run: completed, one checkpoint per round, one ledger across the crash, no spend lost
    mb = json.loads((run_b / "metrics.json").read_text())
    assert mb["status"] == "completed" and mb["rounds_completed"] == 3, mb.get("stop_detail")
    assert list_checkpoints(run_b) == [1, 2, 3]
    res = verify_ledger(run_b / LEDGER_FILE)
    assert res.ok, res.reason
    kinds = [(e["kind"], e["payload"].get("round")) for e in res.chain]
    assert ("resume", None) in kinds and kinds[-1] == ("run-end", None)
    assert [r for k, r in kinds if k == "round"] == [1, 2, 3]
    for name in names[:2]:
        trained = _train_rounds_in(tmp_path / f"state-{name}")
        assert trained[:len(spent_at_kill[name])] == spent_at_kill[name], "spend recorded before the crash was lost"
        after_kill = trained[len(spent_at_kill[name]):]  # the resumed rounds (and a release in flight at the kill)
        assert set(range(killed_at + 1, 4)) <= set(after_kill) and min(after_kill) > killed_at, trained
        (st,) = read_state(tmp_path / f"state-{name}")
        eps = compute_epsilon([PrivacyEvent.from_dict(e) for e in st["events"]], st["delta"])
        assert st["epsilon_spent"] == pytest.approx(eps) and eps <= MAX_EPSILON + 1e-9
        assert 0 < mb["institutions"][name]["privacy"]["epsilon_spent"] <= eps + 1e-9
    # a message the SuperNode ignored (its run stopped while it was received) is given up by the runtime
    # without a reply once the next message comes (clients.task_input), or still waited for at the end
    given_up = sum((tmp_path / f"node-{name}.log").read_text().count("given up without a reply after")
                   for name in names)
    print(f"\ndeployment with a killed node: {time.monotonic() - t0:.1f} s (killed after {killed_after:.1f} s); "
          f"round 1 dropout: {r1['dropped'][victim]!r}; round 2 dropped: {r2['dropped']}; messages of the "
          f"killed run ignored by a SuperNode: {ignored}, given up by the runtime: {given_up}")


def test_error_reasons_are_shortened_to_the_message():
    from server.exchange import _short_reason

    simulation = ("<class 'flwr.clientapp.exception.ClientAppException'>:<'Traceback (most recent call last):\n"
                  '  File "x.py", line 3, in f\n    raise RuntimeError("boom")\n'
                  "Exception ClientAppException occurred. Message: injected fault: node 0 fails in round 1'>")
    assert _short_reason(simulation) == ("Exception ClientAppException occurred. Message: injected fault: "
                                         "node 0 fails in round 1")
    assert _short_reason("<class 'grpc.RpcError'>:<'deadline exceeded'>") == "RpcError: deadline exceeded"
    assert _short_reason(None) == "unknown error"
