"""Robust aggregation (Flower's FedTrimmedAvg / FedMedian / Krum / MultiKrum, alone or under
FedProx / FedAdam) and server-side clipping of each update; the measured effect on poisoned
runs is ``bench/poisoning.py``."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from configs.errors import ConfigError
from fedcredit import protocol as P
from server.settings import parse_run_config
from server.strategies import aggregate_updates, build_strategy
from tests.inprocess_runs import _execute, _grid, _message, _run_config

SHAPES = {"w": (4, 3), "b": (3,)}


def _replies(n_honest: int = 4, attack: str | None = "scale", seed: int = 0):
    """Honest updates near global + 0.1; the last one is the attacker's."""
    from flwr.app import MetricRecord, RecordDict

    rng = np.random.default_rng(seed)
    before = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    honest_delta = {k: np.full(s, 0.1, np.float32) for k, s in SHAPES.items()}
    updates = [{k: before[k] + honest_delta[k] + rng.normal(0, 0.01, s).astype(np.float32) for k, s in SHAPES.items()}
               for _ in range(n_honest)]
    if attack == "scale":
        updates.append({k: before[k] + 50 * honest_delta[k] for k in SHAPES})
    elif attack == "sign-flip":
        updates.append({k: before[k] - 3 * honest_delta[k] for k in SHAPES})
    msgs = [_message(RecordDict({P.ARRAYS: P.to_array_record(u), P.METRICS: MetricRecord({"num-examples": 100.0})}),
                     "train") for u in updates]
    return before, msgs


def _settings(aggregation: str, strategy: str = "fedavg", f: int = 1, **extra):
    return parse_run_config({"aggregation": aggregation, "strategy": strategy, "max-malicious-nodes": f,
                             "min-train-nodes": 5, "min-available-nodes": 5, **extra})


def _aggregate(s, before, msgs, rnd: int = 1):
    strategy = build_strategy(s)
    if hasattr(strategy, "current_arrays"):
        strategy.current_arrays = {k: v.copy() for k, v in before.items()}
    arrays, _, info = aggregate_updates(strategy, s, rnd, msgs)
    return P.from_array_record(arrays), info, strategy


@pytest.mark.parametrize("attack", ["scale", "sign-flip"])
@pytest.mark.parametrize("aggregation", ["trimmed-mean", "median", "krum", "multi-krum"])
def test_robust_rules_ignore_one_attacker_that_moves_the_mean(aggregation, attack):
    before, msgs = _replies(attack=attack)
    mean, _, _ = _aggregate(_settings("mean", **{"min-train-nodes": 2}), before, copy.deepcopy(msgs))
    robust, info, _ = _aggregate(_settings(aggregation), before, msgs)
    for k in SHAPES:
        step = robust[k] - before[k]
        assert np.allclose(step, 0.1, atol=0.03), (aggregation, k, step)
        assert not np.allclose(mean[k] - before[k], 0.1, atol=0.03)
    assert info["updates"] == 5
    if aggregation == "krum":
        assert len(info["selected"]) == 1 and 4 not in info["selected"]
    if aggregation == "multi-krum":
        assert info["selected"] == [0, 1, 2, 3]  # n − f = 4 kept, the attacker (index 4) is not
    if aggregation == "trimmed-mean":
        assert info["trimmed_per_end"] == 1


def test_fedadam_with_a_robust_rule_uses_the_robust_aggregate_as_its_pseudo_gradient():
    from flwr.app import MetricRecord, RecordDict

    before, msgs = _replies()
    composed, _, strategy = _aggregate(_settings("median", "fedadam"), before, msgs)
    assert type(strategy).__name__ == "FedAdamWithFedMedian"
    median = {k: np.median(np.stack([P.from_array_record(m.content[P.ARRAYS])[k] for m in _replies()[1]]), axis=0)
              for k in SHAPES}
    one = [_message(RecordDict({P.ARRAYS: P.to_array_record(median), P.METRICS: MetricRecord({"num-examples": 1.0})}),
                    "train")]
    plain, _, _ = _aggregate(_settings("mean", "fedadam", **{"min-train-nodes": 2}), before, one)
    for k in SHAPES:
        assert np.allclose(composed[k], plain[k], atol=1e-6)
    assert strategy.m_t is not None and strategy.v_t is not None  # the moments were fed


def test_fedprox_with_a_robust_rule_keeps_the_proximal_term():
    s = _settings("trimmed-mean", "fedprox", **{"proximal-mu": 0.3})
    strategy = build_strategy(s)
    assert type(strategy).__name__ == "FedProxWithFedTrimmedAvg" and strategy.proximal_mu == 0.3


def test_clip_update_scales_the_delta_down_to_the_bound():
    from server.update_checks import clip_update

    before, msgs = _replies()
    honest, attacker = msgs[0], msgs[-1]
    assert clip_update(honest, before, 5.0) is None
    norm = clip_update(attacker, before, 1.0)
    assert norm == pytest.approx(50 * 0.1 * np.sqrt(15), rel=1e-5)
    clipped = P.from_array_record(attacker.content[P.ARRAYS])
    delta = np.concatenate([(clipped[k] - before[k]).ravel() for k in SHAPES])
    assert np.linalg.norm(delta) == pytest.approx(1.0, rel=1e-5)
    assert np.allclose(delta / np.linalg.norm(delta), 1 / np.sqrt(15), atol=1e-5)  # direction kept
    assert clipped["w"].dtype == np.float32


@pytest.mark.parametrize("override,message", [
    ({"aggregation": "krum"}, "min-train-nodes' must be at least 5 with aggregation = krum"),
    ({"aggregation": "median", "max-malicious-nodes": 2, "min-train-nodes": 4, "min-available-nodes": 4},
     "must be at least 5"),
    ({"aggregation": "trimmed-mean"}, "at least 3"),
    ({"clip-update-norm": -1.0}, "clip-update-norm"),
    ({"secure-aggregation": True, "clip-update-norm": 2.0}, "clip-update-norm' must be 0 with secure-aggregation"),
    ({"secure-aggregation": True, "aggregation": "median", "min-train-nodes": 3, "min-available-nodes": 3},
     "aggregation' must be 'mean'"),
])
def test_robust_settings_are_checked(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_run_config(override)


def test_a_run_with_an_attacker_records_what_the_robust_rule_and_the_clipping_did(tmp_path):
    from server.ledger import LEDGER_FILE, read_ledger
    from simulation.faults import ClientAppWithMods
    from clients.client_app import app

    def scale_50(msg, ctx, call_next):  # virtual node 4 sends 50 × its update
        before = P.from_array_record(msg.content[P.ARRAYS]) if msg.metadata.message_type == "train" else None
        reply = call_next(msg, ctx)
        if before is not None and int(ctx.node_config["partition-id"]) == 4:
            w = P.from_array_record(reply.content[P.ARRAYS])
            reply.content[P.ARRAYS] = P.to_array_record({k: before[k] + 50 * (w[k] - before[k]) for k in w})
        return reply

    rc = _run_config(tmp_path, "krum", **{"num-server-rounds": 2, "min-available-nodes": 5, "min-train-nodes": 5,
                                          "aggregation": "krum", "clip-update-norm": 20.0,
                                          "synthetic-scale": 0.25})
    summary, _ = _execute(rc, _grid(rc, n=5, app=ClientAppWithMods(app, [scale_50])))
    assert summary["status"] == "completed"
    attacker = "online-microlender-1"  # virtual node 4
    for record in summary["history"]:
        assert record["aggregation"]["rule"] == "krum" and attacker not in record["aggregation"]["selected"]
        assert attacker in record["clipped"] and record["clipped"][attacker] > 20.0
        assert record["aggregate_update_norm"] <= 20.0 + 1e-6
    rounds = [e["payload"] for e in read_ledger(Path(rc["run-dir"]) / LEDGER_FILE) if e["kind"] == "round"]
    assert all(r["aggregation"]["selected"] and attacker in r["clipped"] for r in rounds)
