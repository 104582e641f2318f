"""Reference points for every simulation: centralised (pooled) and local-only training.

Both use the *same* network and initialisation (:func:`models.training.initial_weights`), the
same encoder (the federated run's, read from its model package), the same training rows and
holdouts (:func:`clients.node.load_node_data`, i.e. the nodes' own split) and the same optimiser
settings (including the output bias's own learning rate); the number of epochs equals the
federated run's ``rounds × local-epochs``.

* **centralised** — one model on the pooled training rows of all institutions, non-private:
  the upper reference (what pooling the data would give, which the consortium cannot do);
* **local-only** — each institution alone on its own training rows, with DP-SGD at the same
  per-institution budget when the federated run is private: what an institution gets without
  the consortium.

AUCs are measured on each institution's own holdout; the centralised model also on the pooled
holdouts. (The local-only models' PDs pooled over institutions are not reported: under label
skew that AUC mostly measures which institution a row came from.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from clients.node import NodeData
from models.encoder import FeatureEncoder
from models.metrics import auc_score
from models.network import ModelSpec, build_model, predict_pd, set_weights
from models.training import LocalTrainConfig, initial_weights, train_local


@dataclass(frozen=True)
class BaselineSettings:
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    seed: int
    dp: bool
    max_epsilon: float
    clipping_norm: float
    delta_for: "callable" = None  # n_rows → δ
    output_bias_learning_rate: float = 0.0
    output_layer_init: str = "zero"


def _cfg(b: BaselineSettings) -> LocalTrainConfig:
    return LocalTrainConfig(local_epochs=b.epochs, batch_size=b.batch_size, learning_rate=b.learning_rate,
                            optimizer=b.optimizer, output_bias_learning_rate=b.output_bias_learning_rate)


def _initial_model(spec: ModelSpec, b: BaselineSettings):
    model = build_model(spec, b.seed)
    set_weights(model, initial_weights(spec, b.seed, b.output_layer_init))
    return model


def centralised(nodes: dict[str, NodeData], encoder: FeatureEncoder, spec: ModelSpec,
                b: BaselineSettings) -> dict:
    """Non-private model on the pooled training rows; AUC per institution and pooled."""
    mats = {k: d.matrices(encoder) for k, d in nodes.items()}
    x = np.concatenate([m[0] for m in mats.values()])
    y = np.concatenate([m[1] for m in mats.values()])
    model = _initial_model(spec, b)
    train_local(model, x, y, _cfg(b), seed=b.seed)
    per, all_p, all_y = {}, [], []
    for k, (_, _, xh, yh) in mats.items():
        p = predict_pd(model, xh)
        per[k] = auc_score(yh, p)
        all_p.append(p)
        all_y.append(yh)
    return {"pooled_auc": auc_score(np.concatenate(all_y), np.concatenate(all_p)), "institutions": per}


def local_only(data: NodeData, encoder: FeatureEncoder, spec: ModelSpec, b: BaselineSettings) -> dict:
    """One institution alone (DP-SGD at its budget when ``b.dp``); AUC on its holdout."""
    x, y, xh, yh = data.matrices(encoder)
    model = _initial_model(spec, b)
    cfg = _cfg(b)
    out: dict = {}
    rule = None
    if b.dp:
        from privacy.dpsgd import DPSGDGradients
        from privacy.planning import plan_noise, sample_rate_for

        q = sample_rate_for(len(x), cfg.batch_size)
        delta = b.delta_for(len(x) + len(xh))
        plan = plan_noise(prior_events=[], max_epsilon=b.max_epsilon, delta=delta, sample_rate=q,
                          steps_per_round=cfg.steps_per_epoch(len(x)), rounds=b.epochs)
        rule = DPSGDGradients(plan.noise_multiplier, b.clipping_norm, q, seed=b.seed)
        out.update({"noise_multiplier": plan.noise_multiplier, "epsilon": plan.epsilon_run})
    train_local(model, x, y, cfg, rule, seed=b.seed)
    p = predict_pd(model, xh)
    out.update({"auc": auc_score(yh, p), "pd": p, "y": yh})
    return out


def run_baselines(nodes: dict[str, NodeData], encoder: FeatureEncoder, spec: ModelSpec,
                  b: BaselineSettings, budgets: dict[str, float] | None = None,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Centralised and local-only figures for every institution (JSON-ready). ``budgets``: an
    institution's own ε for its DP local-only model (others: ``b.max_epsilon``). ``progress`` is
    called with the name of each model trained (``centralised``, then each institution)."""
    from dataclasses import replace

    report = progress or (lambda name: None)
    cen = centralised(nodes, encoder, spec, b)
    report("centralised")
    local = {}
    for k, d in nodes.items():
        local[k] = local_only(d, encoder, spec, replace(b, max_epsilon=(budgets or {}).get(k, b.max_epsilon)))
        report(k)
    return {
        "centralised": cen,
        "local_only": {k: {kk: vv for kk, vv in v.items() if kk not in ("pd", "y")} for k, v in local.items()},
        "local_only_mean_auc": float(np.nanmean([v["auc"] for v in local.values()])),
        "epochs": b.epochs,
        "dp_local_only": b.dp,
    }
