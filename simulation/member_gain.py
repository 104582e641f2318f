"""What each member gains from joining: local-only vs global vs its personalised model.

For every institution, on its own holdout:

* ``auc_local_only`` — the institution alone (:mod:`simulation.baselines`, DP at its budget);
* ``auc_federated`` — the shared (global, recalibrated) model, from the run's final evaluation;
* ``auc_personalized`` — the personal model its node kept (:mod:`clients.personalization`),
  read from the virtual node's state directory and scored here;
* ``auc_chosen = max(global, personalised)`` — the model the member would use for its own
  applicants, and ``gain_from_joining = auc_chosen − auc_local_only``.

A member is *worse off* when its chosen model is below its local-only model by more than
:data:`GAIN_TOLERANCE` (0.005 AUC). ``auc_personalized_pooled`` pools the members' chosen
models' PDs over all holdouts (each model scores only its own institution's rows). Under label
skew that figure rewards each personal model's own intercept — it separates the institutions'
base rates, which a single model cannot — so it is shown next to ``auc_chosen_mean``, the mean
of the members' own AUCs, which compares with the centralised model's mean on equal terms.

Scoring the personal models here reads them from the virtual nodes' state: a simulation-only
shortcut (like the exact evaluations). A deployed node never sends its personal model or its
figures anywhere (docs/privacy.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from clients.node import NodeData
from clients.personalization import find_personal_model
from models.metrics import auc_score
from models.package import load_package

#: a member counts as worse off than alone below its local-only AUC minus this
GAIN_TOLERANCE = 0.005


def node_run_ids(run_dir: Path, metrics: dict) -> list[str]:
    """The run ids the nodes saw: the run's own, and for a resumed run the id it continued."""
    ids = []
    progress = Path(run_dir) / "progress.jsonl"
    if progress.is_file():
        for line in progress.read_text().splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            if e.get("event") == "resumed" and e.get("node_run_id"):
                ids.append(str(e["node_run_id"]))
    return ids + [str(metrics.get("run_id", ""))]


def holdout_pd(model_dir: Path, data: NodeData) -> np.ndarray:
    """PDs of a model package for an institution's holdout rows."""
    return load_package(model_dir).predict_pd(data.split.holdout)


def labels_of(data: NodeData) -> np.ndarray:
    return data.split.holdout[data.schema.label.name].to_numpy(dtype=float)


def member_gains(nodes: dict[str, NodeData], state_root: Path, run_ids: list[str], global_model: Path | None,
                 federated_auc: dict[str, float | None], local_only_auc: dict[str, float | None]) -> dict:
    """Per-member AUCs and gains, and the pooled and mean figures (JSON-ready)."""
    members, pooled_pd, pooled_y = {}, [], []
    for inst, data in nodes.items():
        y = labels_of(data)
        personal_dir = find_personal_model(Path(state_root) / inst, run_ids)
        p_personal = holdout_pd(personal_dir, data) if personal_dir is not None else None
        auc_personal = auc_score(y, p_personal) if p_personal is not None else None
        auc_global = federated_auc.get(inst)
        candidates = {k: v for k, v in (("global", auc_global), ("personalized", auc_personal))
                      if v is not None and np.isfinite(v)}
        chosen = max(candidates, key=candidates.get) if candidates else None
        local = local_only_auc.get(inst)
        auc_chosen = candidates.get(chosen) if chosen else None
        members[inst] = {
            "auc_personalized": auc_personal, "chosen_model": chosen, "auc_chosen": auc_chosen,
            "gain_from_joining": (auc_chosen - local if auc_chosen is not None and local is not None else None),
            "personal_model": str(personal_dir) if personal_dir is not None else None,
        }
        if chosen == "personalized":
            pooled_pd.append(p_personal)
        elif chosen == "global" and global_model is not None:
            pooled_pd.append(holdout_pd(global_model, data))
        else:
            continue
        pooled_y.append(y)
    gains = [m["gain_from_joining"] for m in members.values() if m["gain_from_joining"] is not None]
    chosen_aucs = [m["auc_chosen"] for m in members.values() if m["auc_chosen"] is not None]
    return {
        "institutions": members,
        "auc_personalized_pooled": (auc_score(np.concatenate(pooled_y), np.concatenate(pooled_pd))
                                    if len(pooled_y) == len(nodes) and pooled_y else None),
        "auc_chosen_mean": float(np.mean(chosen_aucs)) if chosen_aucs else None,
        "members_worse_than_local_only": (sum(1 for g in gains if g < -GAIN_TOLERANCE) if gains else None),
        "gain_tolerance": GAIN_TOLERANCE,
    }
