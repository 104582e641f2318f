"""The same consortium training as the Flower run, in a plain in-process loop without Flower.

Each institution is handled by exactly the node code the ClientApp calls
(:func:`clients.node.answer_statistics`, :func:`clients.node.train`,
:func:`clients.node.evaluate`) with the same run config and policies, and the weights are
averaged with example-count weights (FedAvg). It is the reference for ``bench/sim_overhead.py``
(what Flower's runtime costs on top of the training itself) and a fast harness for tuning.
It does not checkpoint, sample nodes or handle refusals — use the Flower run for that.
"""

from __future__ import annotations

import json
import time

import numpy as np

from clients import node as N
from models.encoder import fit_encoder_from_histograms, sum_statistics
from models.metrics import EvaluationSums, sum_evaluations
from models.network import ModelSpec, build_model, get_weights
from server.settings import parse_run_config


def fedavg(updates: list[tuple[dict[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """Example-weighted mean of several weight dicts."""
    total = sum(w for _, w in updates)
    keys = updates[0][0].keys()
    return {k: sum(u[k].astype(np.float64) * (w / total) for u, w in updates).astype(np.float32) for k in keys}


def run_plain(run_config: dict, n_nodes: int, evaluate_every_round: bool = True) -> dict:
    """Statistics, rounds of train + FedAvg (+ evaluation); returns per-round global metrics."""
    s = parse_run_config(run_config)
    t0 = time.time()
    policies = [N.policy_from_context({"partition-id": k, "num-partitions": n_nodes}, run_config, "plain")
                for k in range(n_nodes)]
    cfg_base = {"run-id": "plain", "schema-key": "", "dp": s.dp, "seed": s.seed,
                "target-epsilon": s.target_epsilon, "num-server-rounds": s.num_server_rounds,
                # what the statistics query announces, so that nodes plan the run's budget (server.consortium)
                "local-epochs": s.local_epochs, "batch-size": s.batch_size, "evaluate-every": s.evaluate_every}
    states = [dict() for _ in policies]  # each node's per-run state (its noise plan), as Flower's context.state
    parts = [N.answer_statistics(p, cfg_base, st)[0] for p, st in zip(policies, states)]
    schema_key = N.load_node_data(policies[0]).schema.key
    from configs.schema import load_schema

    encoder = fit_encoder_from_histograms(load_schema(s.schema), sum_statistics(parts), s.encoder_knots)
    assert encoder.schema_key == schema_key
    spec = ModelSpec(s.model, encoder.n_outputs, s.hidden if s.model == "mlp" else ())
    weights = get_weights(build_model(spec, s.seed))
    node_metrics: dict[str, dict] = {}  # institution → its last training reply's metrics (ε spent …)
    history = []
    t_rounds = time.time()
    round_s = []
    for rnd in range(1, s.num_server_rounds + 1):
        t_round = time.time()
        cfg = dict(cfg_base, **{
            "server-round": rnd, "local-epochs": s.local_epochs, "batch-size": s.batch_size,
            "learning-rate": s.learning_rate, "optimizer": s.optimizer,
            "proximal-mu": s.proximal_mu if s.strategy == "fedprox" else 0.0, "clipping-norm": s.clipping_norm,
            "encoder": encoder.to_json(), "model-spec": json.dumps(spec.to_dict()), "cutoff-pd": s.cutoff_pd})
        updates = []
        for p, st in zip(policies, states):
            w, m = N.train(p, weights, cfg, st)
            updates.append((w, m["num-examples"]))
            node_metrics[p.institution_id] = m
        weights = fedavg(updates)
        record = {"round": rnd}
        if evaluate_every_round or rnd == s.num_server_rounds:
            sums = [EvaluationSums.from_arrays(N.evaluate(p, weights, cfg)[0]) for p in policies]
            record["global"] = sum_evaluations(sums).metrics()
        history.append(record)
        round_s.append(time.time() - t_round)
    return {"history": history, "final": history[-1].get("global"), "wall_s": time.time() - t0,
            "setup_s": t_rounds - t0, "rounds_s": time.time() - t_rounds, "round_s": round_s,
            "encoder": encoder, "spec": spec, "weights": weights, "node_metrics": node_metrics}
