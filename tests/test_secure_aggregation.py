"""Secure aggregation (SecAgg+): the same model as plain FedAvg, up to quantisation; no update seen.

The fast tests run the real ServerApp logic (:mod:`server.consortium`) and the real ClientApp
(with Flower's ``secaggplus_mod``) in this process through :class:`tests.inprocess_grid.
InProcessGrid`; the slow test runs both ways in Flower's simulation runtime (Ray actors,
serialised messages).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest


from configs.errors import ConfigError
from server.settings import parse_run_config
from tests.conftest import run_fedcredit
from tests.inprocess_grid import InProcessGrid

CLIP = 8.0
Q = 2**22
NODES = {11: 0, 12: 1, 13: 2}  # node id → partition id


def _run(tmp_path, tag: str, secure: bool, *, nodes=None, fail=None, **overrides):
    from clients.client_app import app
    from server.checkpoints import load_checkpoint
    from server.consortium import run_consortium

    run_dir = tmp_path / f"{tag}-{'secure' if secure else 'plain'}"
    shutil.rmtree(run_dir, ignore_errors=True)
    rc = {"num-server-rounds": 1, "min-available-nodes": 3, "min-train-nodes": 2, "run-dir": str(run_dir),
          "dp": False, "synthetic-scale": 0.3, "fraction-evaluate": 0.0, "secure-aggregation": secure,
          "state-root": str(tmp_path / f"{tag}-{secure}-state"), "round-timeout": 3.0, "seed": 4,
          "secagg-clipping-range": CLIP, **overrides}
    node_configs = nodes or {nid: {"partition-id": p, "num-partitions": 3} for nid, p in NODES.items()}
    grid = InProcessGrid(app, node_configs, rc, fail=fail)
    summary = run_consortium(grid, rc, run_id=7)
    weights = load_checkpoint(run_dir, 1).weights if summary["rounds_completed"] else None
    return summary, weights, grid


def _bound(record: dict) -> float:
    """Worst-case quantisation error of the mean update: k quanta 2c/Q over Σ rᵢ."""
    sa = record["secure_aggregation"]
    k = len(sa["contributors"])
    sum_r = record["examples"] / sa["max_weight"]
    return k * (2 * sa["clipping_range"] / Q) / sum_r + 1e-7


def _max_diff(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


def test_secure_round_equals_fedavg_within_quantisation_and_hides_every_update(tmp_path):
    plain, w_plain, _ = _run(tmp_path, "same", secure=False)
    secure, w_secure, grid = _run(tmp_path, "same", secure=True)
    assert plain["status"] == secure["status"] == "completed"
    rec_p, rec_s = plain["history"][0], secure["history"][0]
    assert sorted(rec_s["participants"]) == sorted(rec_p["participants"]) and len(rec_s["participants"]) == 3
    assert rec_s["examples"] == rec_p["examples"]
    assert rec_s["train_loss"] == pytest.approx(rec_p["train_loss"], rel=1e-6)

    err, bound = _max_diff(w_secure, w_plain), _bound(rec_s)
    update = max(float(np.max(np.abs(w_plain[k] - w0))) for k, w0 in _initial(plain).items())
    print(f"\nSecAgg+ vs FedAvg: max |Δ| {err:.3g} (bound {bound:.3g}); largest update coordinate {update:.3g}")
    assert 0 < err <= bound
    assert err < 1e-3 * update

    sa = rec_s["secure_aggregation"]
    assert sa["num_nodes"] == 3 and sa["clipping_range"] == CLIP and "clipped_fraction" not in sa
    stages = [stage for _, stage in grid.sent]
    assert {"setup", "share_keys", "collect_masked_vectors", "unmask"} <= set(stages) and "train" not in stages
    # the operator never receives an individual update or weights: only masked integers
    for reply in grid.received:
        if reply.metadata.message_type == "train":
            assert all(len(rec) == 0 for rec in reply.content.array_records.values())


@pytest.mark.parametrize("strategy", ["fedprox", "fedadam"])
def test_server_strategies_work_on_the_secure_mean(tmp_path, strategy):
    """FedProx and FedAdam get `global + mean update` as one aggregated reply: same model."""
    plain, w_plain, _ = _run(tmp_path, strategy, secure=False, strategy=strategy)
    secure, w_secure, _ = _run(tmp_path, strategy, secure=True, strategy=strategy)
    assert secure["status"] == "completed"
    step = max(float(np.max(np.abs(w_plain[k] - w0))) for k, w0 in _initial(plain).items())
    bound = _bound(secure["history"][0])
    # FedAdam divides by √v + τ: a quantisation error ε moves its step by at most ~η·ε/τ = 50 ε
    factor = 50 if strategy == "fedadam" else 1
    assert 0 < _max_diff(w_secure, w_plain) <= factor * bound
    assert _max_diff(w_secure, w_plain) < 1e-2 * step


def _initial(summary: dict) -> dict:
    """The global weights before round 1 (the model the seed builds)."""
    from models.network import ModelSpec, build_model, get_weights
    from server.checkpoints import load_checkpoint

    ckpt = load_checkpoint(summary["run_dir"], 1)
    spec = ModelSpec.from_dict(ckpt.state["spec"])
    return get_weights(build_model(spec, summary["settings"]["seed"]))


def test_a_refusing_node_adds_nothing_and_is_reported(tmp_path):
    data = tmp_path / "data"
    assert run_fedcredit("data", "synth", "--out", data, "--institutions", 3, "--scale", 0.3, "--seed", 2).returncode == 0
    files = sorted(data.glob("*.csv"))

    def nodes(tag):
        cfg = {11 + i: {"data-path": str(f), "state-dir": str(tmp_path / tag / f.stem), "allow-non-private": True,
                        "release-eval": "off"} for i, f in enumerate(files)}
        cfg[13].pop("allow-non-private")  # this institution's policy forbids non-private training
        return cfg

    plain, w_plain, _ = _run(tmp_path, "refuse", secure=False, nodes=nodes("p"))
    secure, w_secure, _ = _run(tmp_path, "refuse", secure=True, nodes=nodes("s"))
    refusing = files[2].stem
    for s in (plain, secure):
        rec = s["history"][0]
        assert s["status"] == "completed" and refusing not in rec["participants"] and len(rec["participants"]) == 2
        assert rec["refused"][refusing]["reason"] == "policy"
    rec_s = secure["history"][0]
    assert sorted(rec_s["secure_aggregation"]["contributors"]) == sorted(rec_s["participants"])
    assert 0 < _max_diff(w_secure, w_plain) <= _bound(rec_s)


@pytest.mark.parametrize("stage,counted", [("collect_masked_vectors", False), ("unmask", True)])
def test_dropouts_during_the_protocol(tmp_path, stage, counted):
    """A node lost before it sent its masked update is left out (its masks removed from its
    neighbours' shares); one lost afterwards is still in the sum (its own mask rebuilt)."""
    secure, w_secure, _ = _run(tmp_path, stage, secure=True, fail={13: {f"stage:{stage}"}})
    plain, w_plain, _ = _run(tmp_path, stage, secure=False, fail=None if counted else {13: {"train"}})
    assert secure["status"] == plain["status"] == "completed"
    rec = secure["history"][0]
    assert len(rec["participants"]) == (3 if counted else 2)
    if not counted:
        (who, why), = rec["dropped"].items()
        assert "collect_masked_vectors" in why
    assert 0 < _max_diff(w_secure, w_plain) <= _bound(rec)


def test_secure_round_with_dp_reports_privacy_through_the_legacy_metrics(tmp_path):
    secure, _, _ = _run(tmp_path, "dp", secure=True, dp=True, **{"sim-max-epsilon": 3.0, "batch-size": 512})
    assert secure["status"] == "completed", secure["stop_detail"]
    privacy = secure["history"][0]["privacy"]
    assert len(privacy) == 3
    for who, p in privacy.items():
        assert 0 < p["epsilon_spent"] <= 3.0 and p["noise_multiplier"] > 0 and p["num_examples"] > 0, who


def test_too_few_contributors_stop_the_run_cleanly(tmp_path):
    secure, _, _ = _run(tmp_path, "few", secure=True, fail={12: {"train"}, 13: {"train"}})
    assert secure["status"] == "stopped" and secure["stop_reason"] == "too-few-nodes"
    assert secure["rounds_completed"] == 0


@pytest.mark.parametrize("override,key", [
    ({"secure-aggregation": True, "aggregation": "median"}, "aggregation"),
    ({"secure-aggregation": True, "max-update-norm": 5.0}, "max-update-norm"),
    ({"secure-aggregation": True, "min-train-nodes": 1, "min-available-nodes": 1}, "min-train-nodes"),
    ({"secagg-clipping-range": 0.0}, "secagg-clipping-range"),
])
def test_secure_aggregation_config_mistakes_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        parse_run_config(override)


@pytest.mark.slow
def test_secure_aggregation_in_flower_simulation_matches_fedavg(tmp_path, process_tag):
    from models.package import load_package
    from simulation.flower_runtime import run_in_simulation
    from tests.processes import new_processes, processes

    before = processes()
    weights = {}
    for secure in (False, True):
        run_dir = tmp_path / f"sim-{secure}"
        run_in_simulation({"num-server-rounds": 1, "min-available-nodes": 3, "min-train-nodes": 3, "dp": False,
                           "synthetic-scale": 0.3, "fraction-evaluate": 0.0, "secure-aggregation": secure,
                           "run-dir": str(run_dir), "state-root": str(tmp_path / f"state-{secure}"), "seed": 4},
                          num_supernodes=3, num_cpus=2, cpus_per_client=1.0)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "completed" and len(metrics["history"][0]["participants"]) == 3
        weights[secure] = load_package(run_dir / "model").weights
        if secure:
            record = metrics["history"][0]
    assert 0 < _max_diff(weights[True], weights[False]) <= _bound(record)
    assert new_processes(before, settle_s=20, tag=process_tag) == {}
