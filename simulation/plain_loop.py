"""The same consortium training as the Flower run, in a plain in-process loop without Flower.

Each institution is handled by exactly the node code the ClientApp calls
(:func:`clients.node.answer_statistics`, :func:`clients.node.train`,
:func:`clients.node.evaluate`) with the same run config and policies, and the weights are
averaged with example-count weights (FedAvg) or, with ``aggregation-weight = information``,
with the weights the nodes send (capped at their number of examples, as
:func:`server.strategies.settle_weights`). Server-side optimisers (FedAdam, FedAvgM …) are not
modelled here. It is the reference for ``bench/sim_overhead.py``
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
from models.network import ModelSpec
from models.training import initial_weights
from server.round_config import evaluate_config, statistics_config, train_config
from server.settings import parse_run_config
from simulation.virtual_nodes import virtual_policy

RUN_ID = "plain"


def fedavg(updates: list[tuple[dict[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """Example-weighted mean of several weight dicts."""
    total = sum(w for _, w in updates)
    keys = updates[0][0].keys()
    return {k: sum(u[k].astype(np.float64) * (w / total) for u, w in updates).astype(np.float32) for k in keys}


def run_plain(run_config: dict, n_nodes: int, evaluate_every_round: bool = True) -> dict:
    """Statistics, rounds of train + FedAvg (+ evaluation); returns per-round global metrics."""
    s = parse_run_config(run_config)
    t0 = time.time()
    policies = [virtual_policy(k, n_nodes, run_config, RUN_ID) for k in range(n_nodes)]
    # what the ServerApp sends (server.round_config); the statistics query announces the run's
    # shape so that the nodes plan their budget for it
    stats_cfg = statistics_config(s, RUN_ID, None)
    states = [dict() for _ in policies]  # each node's per-run state (its noise plan), as Flower's context.state
    parts = [N.answer_statistics(p, stats_cfg, st)[0] for p, st in zip(policies, states)]
    schema_key = N.load_node_data(policies[0]).schema.key
    from configs.schema import load_schema

    encoder = fit_encoder_from_histograms(load_schema(s.schema), sum_statistics(parts), s.encoder_knots)
    assert encoder.schema_key == schema_key
    spec = ModelSpec(s.model, encoder.n_outputs, s.hidden if s.model == "mlp" else ())
    weights = initial_weights(spec, s.seed, s.output_layer_init)
    node_metrics: dict[str, dict] = {}  # institution → its last training reply's metrics (ε spent …)
    history = []
    t_rounds = time.time()
    round_s = []
    for rnd in range(1, s.num_server_rounds + 1):
        t_round = time.time()
        encoder_json, spec_json = encoder.to_json(), json.dumps(spec.to_dict())
        cfg = train_config(s, RUN_ID, rnd, encoder_json, spec_json)
        updates = []
        for p, st in zip(policies, states):
            w, m = N.train(p, weights, cfg, st)
            n = m["num-examples"]
            weight = m.get("aggregation-weight", n) if s.aggregation_weight == "information" else n
            updates.append((w, float(weight) if 0 <= weight <= n else n))
            node_metrics[p.institution_id] = m
        weights = fedavg(updates)
        record = {"round": rnd}
        if evaluate_every_round or rnd == s.num_server_rounds:
            eval_cfg = evaluate_config(s, RUN_ID, rnd, encoder_json, spec_json)
            sums = [EvaluationSums.from_arrays(N.evaluate(p, weights, eval_cfg)[0]) for p in policies]
            record["global"] = sum_evaluations(sums).metrics()
        history.append(record)
        round_s.append(time.time() - t_round)
    return {"history": history, "final": history[-1].get("global"), "wall_s": time.time() - t0,
            "setup_s": t_rounds - t0, "rounds_s": time.time() - t_rounds, "round_s": round_s,
            "encoder": encoder, "spec": spec, "weights": weights, "node_metrics": node_metrics}
