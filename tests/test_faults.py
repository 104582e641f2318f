"""Reliability: dropouts and stragglers, crash and resume, broken updates, damaged state.

Fast tests drive the real round driver (:class:`server.consortium.ConsortiumRun`) and the real
ClientApp in this process (:class:`tests.inprocess_grid.InProcessGrid`); a server crash is an
exception raised where the process would have died (after the nodes replied, before the
round's checkpoint). The slow tests do the same with real processes: Flower's simulation
runtime with injected faults and an invalid institution file, ``fedcredit simulate`` killed
with SIGKILL and resumed, and a deployment on loopback whose SuperNode is killed mid-round.
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
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fedcredit import protocol as P
from server.ledger import LEDGER_FILE, read_ledger, verify_ledger
from tests.conftest import REPO, run_fedcredit
from tests.inprocess_grid import InProcessGrid


class ServerCrash(BaseException):
    """Stands for the ServerApp process dying (not an Exception: nothing in the driver catches it)."""


def _run_config(tmp_path: Path, tag: str, **overrides) -> dict:
    return {"num-server-rounds": 3, "min-available-nodes": 3, "min-train-nodes": 2,
            "run-dir": str(tmp_path / tag), "dp": False, "synthetic-scale": 0.3, "fraction-evaluate": 0.0,
            "state-root": str(tmp_path / f"{tag}-state"), "round-timeout": 1.0, "seed": 3, **overrides}


def _grid(rc: dict, n: int = 3, app=None, fail=None, grid_cls=InProcessGrid) -> InProcessGrid:
    from clients.client_app import app as client_app

    return grid_cls(app or client_app, {11 + k: {"partition-id": k, "num-partitions": n} for k in range(n)}, rc,
                    fail=fail)


def _execute(rc: dict, grid, *, crash_at: int | None = None, monkeypatch=None, resume_from=None):
    """Run (or resume) in process; with ``crash_at`` the 'process dies' in that round after the nodes
    replied, before the checkpoint and the ledger's round entry. Returns (summary or None, run)."""
    from server.consortium import ConsortiumRun

    run = ConsortiumRun(grid, rc, run_id=7)
    if crash_at is not None:
        original = ConsortiumRun.checkpoint

        def checkpoint(self, rnd):
            if rnd == crash_at:
                raise ServerCrash(f"server died in round {rnd}")
            original(self, rnd)

        monkeypatch.setattr(ConsortiumRun, "checkpoint", checkpoint)
    try:
        return run.execute(resume_from), run
    except ServerCrash:
        run.audit.close()  # a dead process holds no locks and no open files
        run.recorder.close()
        return None, run
    finally:
        if crash_at is not None:
            monkeypatch.undo()


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
    assert kinds == [("run-start", None), ("statistics", None), ("round", 1), ("round", 2),
                     ("run-start", None), ("resume", None), ("round", 3), ("round", 4), ("run-end", None)]
    resume = read_ledger(run_dir / LEDGER_FILE)[5]["payload"]
    assert resume["checkpoint_round"] == 2 and resume["next_round"] == 3


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
    for st in before.values():
        assert [(e["kind"], e["round"]) for e in st["events"]] == [("statistics", None), ("train", 1), ("train", 2)]
    lost_sigma = {who: st["events"][2]["noise_multiplier"] for who, st in before.items()}

    rc["resume-from"] = rc["run-dir"]
    resumed, _ = _execute(rc, _grid(rc), resume_from=rc["run-dir"])
    assert resumed["status"] == "completed" and resumed["rounds_completed"] == 3
    for who, record in ((w, r) for r in resumed["history"] for w in r["participants"]):
        assert record["privacy"][who]["epsilon_spent"] <= 2.0 + 1e-9
    for d in state_root.iterdir():
        (st,) = read_state(d)
        events = st["events"]
        assert [(e["kind"], e["round"]) for e in events] == [
            ("statistics", None), ("train", 1), ("train", 2), ("train", 2), ("train", 3)]
        assert events[:3] == before[d.name]["events"], "the lost round's spend is kept"
        from privacy.accountant import PrivacyEvent

        eps = compute_epsilon([PrivacyEvent.from_dict(e) for e in events], st["delta"])
        assert st["epsilon_spent"] == pytest.approx(eps) and eps <= 2.0 + 1e-9
        # re-planned: the replayed rounds carry more noise, since the lost round used up budget
        assert events[3]["noise_multiplier"] > lost_sigma[d.name]
        assert events[3]["noise_multiplier"] == events[4]["noise_multiplier"]
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


def _message(content, message_type: str):
    """A message as the SuperNode hands it to the ClientApp."""
    from uuid import uuid4

    from flwr.app import Message
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 2, 1, SUPERLINK_NODE_ID
    msg = Message(content, dst_node_id=5, message_type=message_type)
    msg.metadata.__dict__["_message_id"] = str(uuid4())
    return msg


@pytest.fixture(scope="module")
def bank_csv(tmp_path_factory):
    from configs.schema import load_schema
    from simulation.archetypes import load_archetypes
    from simulation.synthetic import generate_institution, institution_rng, write_csv

    a = next(x for x in load_archetypes() if x.id == "regional-bank")
    table, _ = generate_institution(a, 1500, institution_rng(4, 0), load_schema())
    path = tmp_path_factory.mktemp("bank") / "bank.csv"
    write_csv(table, path)
    return path


@pytest.mark.parametrize("where", ["state-dir", "privacy-dir"])
def test_an_unwritable_state_dir_makes_the_node_refuse_without_losing_or_doubling_spend(where, bank_csv, tmp_path):
    """``state-dir``: the node cannot even store the ledger head and refuses before training.
    ``privacy-dir``: it trains, cannot record the spend, and withholds the update."""
    from flwr.app import ConfigRecord, Context, RecordDict

    from clients import client_app as CA
    from clients import node as N
    from privacy.accountant import PrivacyEvent, compute_epsilon, read_state
    from tests.test_node_privacy import round_config

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
    assert [(e["kind"], e["round"]) for e in after["events"]] == [("train", 1), ("train", 2)]
    eps = compute_epsilon([PrivacyEvent.from_dict(e) for e in after["events"]], after["delta"])
    assert after["epsilon_spent"] == pytest.approx(eps)
    assert float(reply.content[P.METRICS]["epsilon-spent"]) == pytest.approx(eps)
