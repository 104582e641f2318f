"""Crafted coordinator messages into a node's ClientApp handlers, in process, and what a reply shows.

The tests of the node against a hostile coordinator (tests/test_untrusted_coordinator.py), of the
evaluation folded into the train message (tests/test_folded_evaluation.py) and of the node's state
(tests/test_faults.py) build the messages here: what an honest coordinator sends
(:func:`honest_round`, :func:`round_config`), weights crafted to overflow on one borrower
(:func:`overflow_weights`), a deployment-style node :func:`context` over a real table (the
:func:`tables` fixture: a bank's table with and without its target borrowers) and a real privacy
state. A reply is compared by its :func:`signature` — keys, shapes, finiteness and refusal reason,
with what follows the node's released noisy row count masked (:func:`comparable`).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from clients import node as N
from clients.dataset import holdout_mask
from configs.schema import load_schema
from fedcredit import protocol as P
from models.encoder import fit_encoder_from_tables
from models.network import ModelSpec, build_model, get_weights
from tests.inprocess_runs import _message

#: the lifetime ε of the node :func:`context` configures
BUDGET = 2.0


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """A bank's table with the target borrowers, the same table without each, re-keyed and with one
    row dropped; the target in the training rows and the one in the holdout."""
    from simulation.archetypes import load_archetypes
    from simulation.synthetic import generate_institution, institution_rng, write_csv

    schema = load_schema()
    a = next(x for x in load_archetypes() if x.id == "regional-bank")
    table, _ = generate_institution(a, 700, institution_rng(21, 0), schema)
    mask = holdout_mask(table, schema)
    train_target, holdout_target = int(np.flatnonzero(~mask)[0]), int(np.flatnonzero(mask)[0])
    d = tmp_path_factory.mktemp("tables")
    paths = {"full": d / "full.csv", "no-train-target": d / "no_train_target.csv",
             "no-holdout-target": d / "no_holdout_target.csv", "rekeyed": d / "rekeyed.csv",
             "dropped": d / "dropped.csv"}
    write_csv(table, paths["full"])
    write_csv(table.drop(index=train_target), paths["no-train-target"])
    write_csv(table.drop(index=holdout_target), paths["no-holdout-target"])
    rekeyed = table.copy()
    rekeyed[schema.id_column] = [f"X{i:07d}" for i in range(len(table))][::-1]
    write_csv(rekeyed, paths["rekeyed"])
    write_csv(table.drop(index=len(table) - 1), paths["dropped"])
    return {"schema": schema, "table": table, "paths": paths, "train_target": table.iloc[train_target],
            "holdout_target": table.iloc[holdout_target]}


def context(path, state, **node_config) -> Context:
    """The Context a SuperNode hands the ClientApp: a deployment-style node config over the table
    ``path`` and the privacy state ``state`` (budget :data:`BUDGET`); ``node_config`` adds keys."""
    cfg = {"data-path": str(path), "state-dir": str(state), "institution-id": "bank", "max-epsilon": BUDGET,
           **node_config}
    return Context(run_id=1, node_id=5, node_config=cfg, state=RecordDict(), run_config={})


def honest_round(schema, table, hidden=(16,), rnd: int = 1, **extra):
    """What an honest coordinator sends: an encoder fitted on the table (stand-in for the federated
    statistics), a model spec, global weights and the round config."""
    enc = fit_encoder_from_tables(schema, [table])
    spec = ModelSpec("mlp", enc.n_outputs, tuple(hidden))
    cfg = {"run-id": "run-1", "server-round": rnd, "num-server-rounds": 3, "local-epochs": 1, "batch-size": 64,
           "learning-rate": 0.01, "optimizer": "adam", "proximal-mu": 0.0, "dp": True, "target-epsilon": 0.0,
           "clipping-norm": 1.0, "evaluate-every": 1, "seed": 0, "encoder": enc.to_json(),
           "model-spec": json.dumps(spec.to_dict()), "cutoff-pd": 0.2, **extra}
    return cfg, get_weights(build_model(spec)), enc


def with_encoder(cfg: dict, encoder_json: str, hidden=(16,)) -> tuple[dict, dict]:
    """``cfg`` with another encoder, and a model spec and weights of its width."""
    width = sum(f["width"] for f in json.loads(encoder_json)["features"])
    spec = ModelSpec("mlp", width, tuple(hidden))
    return {**cfg, "encoder": encoder_json, "model-spec": json.dumps(spec.to_dict())}, get_weights(build_model(spec))


def send(handler, message_type: str, cfg: dict, weights: dict, ctx: Context):
    """The reply of ``handler`` (``clients.client_app.train`` / ``evaluate`` / …) to one message of
    ``message_type`` carrying ``weights`` and the round config ``cfg``."""
    content = RecordDict({P.ARRAYS: P.to_array_record(weights), P.CONFIG: ConfigRecord(cfg)})
    return handler(_message(content, message_type), ctx)


def signature(reply) -> dict:
    """What a reply shows besides the noised numbers: keys, shapes, finiteness, refusal reason."""
    assert not reply.has_error(), reply.error
    arrays = {rk: {k: v.shape for k, v in P.from_array_record(rec).items()}
              for rk, rec in reply.content.array_records.items()}
    values = [v for rec in reply.content.array_records.values() for v in P.from_array_record(rec).values()]
    metrics = dict(reply.content[P.METRICS]) if P.METRICS in reply.content.metric_records else {}
    info = P.node_info(reply)
    out = {"arrays": arrays, "metric-keys": sorted(metrics), "node-keys": sorted(info),
           "refused": info.get("refused", ""), "detail": info.get("detail", ""),
           "finite": all(np.all(np.isfinite(v)) for v in values) and all(math.isfinite(v) for v in metrics.values())}
    if info.get("release") == "noised":  # the released figures a noised evaluation's shape follows
        out["noised"] = (metrics["num-examples"], metrics["noise-multiplier"])
    return out


def comparable(sig: dict) -> dict:
    """A reply's signature with what follows the node's released noisy row count n̂ masked —
    post-processing of an accounted release, and a fresh draw at each node: the figures of a
    budget refusal (the ε the refused release would have reached depends on q = batch / n̂) and
    the number of score bins of a noised evaluation (from n̂ and the planned σ; checked here to be
    exactly that function of the released figures)."""
    import re

    from privacy.dp_release import evaluation_bins

    if sig["refused"] == P.REFUSED_BUDGET:
        sig = {**sig, "detail": re.sub(r"\d+(\.\d+)?", "#", sig["detail"])}
    evaluation = sig["arrays"].get(P.EVAL)
    if evaluation and "noised" in sig:
        n_hat, sigma = sig["noised"]
        bins = evaluation_bins(n_hat, sigma, sum(k.startswith("fair/") for k in evaluation))
        assert evaluation["hist-neg"] == evaluation["hist-pos"] == (bins,), (evaluation, n_hat, sigma)
        evaluation = {**evaluation, "hist-neg": "bins(n̂, σ)", "hist-pos": "bins(n̂, σ)"}
        sig = {**sig, "arrays": {**sig["arrays"], P.EVAL: evaluation}}
    return {k: v for k, v in sig.items() if k != "noised"}


def assert_same_reply_shape(with_target, without_target) -> None:
    """Both replies finite, and alike in everything but the noised numbers (:func:`comparable`)."""
    a, b = signature(with_target), signature(without_target)
    assert a["finite"] and b["finite"], (a, b)
    assert comparable(a) == comparable(b), (a, b)


def overflow_weights(encoder, target_row: pd.Series, layers: int = 8, width: int = 32, scale: float = 1e4):
    """Weights within the node's bound (±1e4) that make the target's forward pass overflow: every
    first-layer unit detects the target's encoded pattern, and every later layer multiplies."""
    x_t = encoder.transform(target_row.to_frame().T)[0].astype(np.float64)
    spec = ModelSpec("mlp", encoder.n_outputs, (width,) * layers)
    w = {k: np.zeros_like(v) for k, v in get_weights(build_model(spec)).items()}
    direction = 2 * x_t - 1  # x·direction is largest at the target's pattern (each differing one-hot costs 1)
    margin = 0.25
    first = scale / (abs(direction @ x_t) + 1)  # keeps the bias within the bound too
    w["layers.0.weight"][:] = (first * direction).astype(np.float32)
    w["layers.0.bias"][:] = np.float32(-first * (direction @ x_t - margin))
    for i in range(1, layers + 1):
        w[f"layers.{2 * i}.weight"][:] = np.float32(scale)
    last = f"layers.{2 * layers}.weight"
    w[last][0, ::2] = np.float32(-scale)  # +inf − inf in the logit: a NaN, not just an overflow
    return spec, w


def round_config(p, rnd: int, rounds: int, **extra) -> tuple[dict, dict]:
    """What an honest coordinator sends the node of policy ``p`` in round ``rnd`` of ``rounds``: an
    encoder fitted on the node's own training rows, a model spec, fresh weights; ``extra`` overrides."""
    data = N.load_node_data(p)
    enc = fit_encoder_from_tables(data.schema, [data.split.train])
    spec = ModelSpec("mlp", enc.n_outputs, (16,))
    cfg = {"run-id": "r1", "server-round": rnd, "num-server-rounds": rounds, "local-epochs": 1, "batch-size": 256,
           "learning-rate": 0.01, "optimizer": "adam", "proximal-mu": 0.0, "dp": True, "target-epsilon": 0.0,
           "clipping-norm": 1.0, "seed": 0, "encoder": enc.to_json(), "model-spec": json.dumps(spec.to_dict()),
           "cutoff-pd": 0.2}
    cfg.update(extra)
    return cfg, get_weights(build_model(spec))
