"""What an institution's node does for each message, independent of Flower's plumbing.

The node is the privacy boundary, and it does not trust the coordinator (docs/privacy.md,
"Threat model"). For every message it

1. checks everything the coordinator sent — config values, encoder, model spec, weights —
   before it reads one borrower's row (:mod:`clients.request_checks`; a failure is an
   ``invalid-request`` refusal worded from the message alone);
2. loads its own table (validated exactly like ``fedcredit data validate``) and splits it into
   training rows and a local holdout (:mod:`clients.node_data`);
3. for every release that touches borrower data, checks its *own* lifetime budget in its
   ledger (:mod:`clients.node_privacy`), persists the spend, and only then lets the numbers
   leave. Every figure that reveals the table's size comes from the released noisy row
   counts, never from the exact ones.

Non-finite numbers get one fixed treatment whichever rows produce them: a non-finite encoded
value becomes 0 (:func:`clients.node_data.encode`), a row whose per-sample gradient is not
finite contributes nothing to DP-SGD (:mod:`privacy.dpsgd`), a non-finite PD is scored 0.5
(:func:`finite_pd`), and the weights sent back are post-processed to be finite and bounded
(:func:`finite_weights`). So no reply's keys, shapes or refusal reason depend on one borrower
except through the accounted mechanisms.

The node takes its budget (``max-epsilon``, ``delta``) and release policy from the **node
config** (:mod:`clients.node_policy`); the run config can only ask for less.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from clients.node_data import NodeData, clear_data_cache, load_node_data
from clients.node_policy import (DATA_SUFFIXES, DEPLOYMENT_RELEASE_MODES, NodePolicy,  # noqa: F401
                                  deployment_policy, policy_from_context)
from clients.node_privacy import (
    inputs_digest,
    noise_seed,
    open_ledger,
    personal_round,
    plan_run,
    plan_shape,
    released_counts,
    require_budget,
)
from clients.refusal import NodeRefusal
from clients.request_checks import (
    MAX_ABS_WEIGHT,
    check_weights,
    evaluation_request,
    statistics_request,
    train_request,
)
from configs.schema import Schema, load_schema
from fedcredit import protocol as P
from models.encoder import feature_statistics
from models.fairness import group_counts
from models.metrics import EvaluationSums
from models.network import ModelSpec, build_model, get_weights, predict_pd, set_weights
from models.training import LocalTrainConfig, train_local

__all__ = ["NodeData", "NodePolicy", "NodeRefusal", "answer_statistics", "clear_data_cache", "evaluate",
           "deployment_policy", "load_node_data", "policy_from_context", "received_evaluation", "train"]


@functools.lru_cache(maxsize=8)
def node_schema(name: str) -> Schema:
    """The schema the node's config names (read before any data: the checks need it)."""
    return load_schema(name)


def _wants_dp(policy: NodePolicy, cfg: dict) -> bool:
    """DP unless the run asks for none *and* the node allows non-private training (decided, with
    the node's budget being set, before any row is read)."""
    if cfg["dp"]:
        require_budget(policy)
        return True
    if not policy.allow_non_private:
        raise NodeRefusal(P.REFUSED_POLICY, "the run asks for training without differential privacy; this node's "
                          "policy (allow-non-private = false) forbids it")
    return False


def _budget(call, *args, **kwargs):
    """``call(...)``, a :class:`privacy.errors.BudgetExceeded` turned into the node's refusal."""
    from privacy.errors import BudgetExceeded

    try:
        return call(*args, **kwargs)
    except BudgetExceeded as exc:
        raise NodeRefusal.budget_exhausted(exc) from None


def _public_figures(ledger, spent: float) -> dict[str, float]:
    return {"epsilon-spent": spent, "epsilon-budget": ledger.max_epsilon, "delta": ledger.delta}


def _side_event(event, cfg: dict, data: NodeData, rows: str, rnd: int | None = None):
    event.run_id, event.round = str(cfg.get("run-id", "")), rnd
    event.rows, event.split, event.data = rows, data.split.split, data.split.fingerprint
    return event


# ------------------------------------------------------------------------- statistics
def answer_statistics(policy: NodePolicy, cfg: dict, state: dict | None = None
                      ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-feature count vectors of the training rows; Gaussian-noised and accounted under DP.

    Under DP the node first plans the run's noise (it spends nothing on a run it cannot train
    in); the plan is kept in ``state`` (the node's per-run state), so that the first training
    round uses it instead of planning again when nothing changed in between.
    """
    req = statistics_request(cfg)
    schema = node_schema(policy.schema)
    if req["schema-key"] and req["schema-key"] != schema.key:
        raise NodeRefusal(P.REFUSED_POLICY, f"the run uses schema {req['schema-key']}, this node's data follows "
                          f"{schema.key}")
    dp = _wants_dp(policy, req)  # a policy refusal is decided before any row is read
    data = load_node_data(policy)
    stats = feature_statistics(data.split.train, data.schema)
    if not dp:
        return stats, {"num-examples": float(data.split.n_train)}
    from privacy.dp_release import STATISTICS_NOISE_MULTIPLIER, release_statistics

    with open_ledger(policy, data) as ledger:
        counts = released_counts(policy, ledger, data, req)
        rng = np.random.default_rng(noise_seed(policy, req, ledger, "statistics", inputs_digest(req)))
        noisy, event = release_statistics(stats, STATISTICS_NOISE_MULTIPLIER, rng)
        _side_event(event, req, data, "train")
        plan = None
        if "num-server-rounds" in req:  # do not spend on statistics for a run we cannot train in
            plan = _budget(plan_run, policy, ledger, data, counts["train"], req, first_round=1, pending=[event])
        spent = _budget(ledger.record, [event])
        if plan is not None and state is not None:
            state["plan"] = {**plan, "planned-at": "statistics", "ledger-events": len(ledger.all_events),
                             "shape": plan_shape(counts["train"], req, 1)}
        metrics = {"num-examples": counts["train"], **_public_figures(ledger, spent)}
    return noisy, metrics


# ------------------------------------------------------------------------- training
def _model_from(spec: ModelSpec, weights: dict[str, np.ndarray]):
    model = build_model(spec)
    set_weights(model, weights)
    return model


def finite_weights(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every weight finite and within ±:data:`clients.request_checks.MAX_ABS_WEIGHT` (NaN → 0).

    Applied to the weights a node sends back: a fixed function of the DP-SGD output
    (post-processing), so a weight can never carry a NaN or an overflow out of the node.
    """
    out = {}
    for k, w in weights.items():
        w = np.nan_to_num(np.asarray(w, dtype=np.float32), nan=0.0, posinf=MAX_ABS_WEIGHT, neginf=-MAX_ABS_WEIGHT)
        out[k] = np.clip(w, -MAX_ABS_WEIGHT, MAX_ABS_WEIGHT).astype(np.float32)
    return out


def _run_plan(policy: NodePolicy, ledger, data: NodeData, n_train: float, cfg: dict, state: dict, rnd: int) -> dict:
    """This run's noise plan: the one made for the statistics query when nothing changed since,
    the one kept in ``state`` for this run, or a new one."""
    run_id = cfg["run-id"]
    plan = state.get("plan")
    if plan and plan.get("planned-at") == "statistics":
        same = (plan.get("ledger-events") == len(ledger.all_events) and plan.get("run-id") == run_id
                and plan.get("shape") == plan_shape(n_train, cfg, rnd))
        plan = ({k: plan[k] for k in ("run-id", "noise-multiplier", "evaluation-noise", "rounds", "batch-size")}
                if same else None)
        state["plan"] = plan
    if not plan or plan.get("run-id") != run_id:
        plan = _budget(plan_run, policy, ledger, data, n_train, cfg, first_round=rnd)
        state["plan"] = plan
    return plan


def train(policy: NodePolicy, weights: dict[str, np.ndarray], cfg: dict,
          state: dict) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Local training from the global weights; DP-SGD with the node's own noise plan.

    ``state`` is the node's per-run state (Flower ``context.state``), where the noise plan of
    the run is kept so σ stays fixed across its rounds.
    """
    req, encoder, spec = train_request(cfg, node_schema(policy.schema))
    weights = check_weights(weights, spec)
    dp = _wants_dp(policy, req)  # a policy refusal is decided before any row is read
    rnd = req["server-round"]
    if req["ledger-head"]:  # keep the audit ledger head we were shown (clients.ledger_heads)
        from clients.ledger_heads import record_ledger_head

        record_ledger_head(policy.state_dir, req["run-id"], rnd, req["ledger-head"])
    data = load_node_data(policy)
    x, y, _, _ = data.matrices(encoder)
    model = _model_from(spec, weights)
    personal = personal_round(policy, req, model)  # the node's own layers (clients.personalization)
    tcfg = LocalTrainConfig(local_epochs=req["local-epochs"], batch_size=req["batch-size"],
                            learning_rate=req["learning-rate"], optimizer=req["optimizer"],
                            proximal_mu=req["proximal-mu"],
                            output_bias_learning_rate=personal.settings.output_bias_learning_rate)
    seed = req["seed"] * 100_003 + rnd  # the training loop's own generator (public; not DP-SGD's sample)
    if not dp:
        out = train_local(model, x, y, tcfg, seed=seed)
        metrics = {"num-examples": float(len(x)), "train-loss": out["loss"], **personal.after_training(model, y, dp=False)}
        personal.personalise_if_last(req, x, y, tcfg, None, policy.institution_id, encoder, data.schema)
        return finite_weights(get_weights(model)), metrics
    with open_ledger(policy, data) as ledger:
        metrics = _train_private(policy, ledger, data, req, state, model, personal, tcfg, x, y, seed, weights,
                                 encoder)
    return finite_weights(get_weights(model)), metrics


def _train_private(policy, ledger, data, req, state, model, personal, tcfg, x, y, seed, weights, encoder) -> dict:
    """DP-SGD for one round (and, after the last, the personal fine-tune); every release checked
    against the budget first and recorded before anything leaves. Returns the reply's metrics."""
    from privacy.dpsgd import DPSGDGradients
    from privacy.planning import sample_rate_for, steps_per_epoch

    rnd, run_id = req["server-round"], req["run-id"]
    n_hat = _budget(released_counts, policy, ledger, data, req)["train"]
    plan = _run_plan(policy, ledger, data, n_hat, req, state, rnd)
    sigma = float(plan["noise-multiplier"])
    # the batch the plan chose (privacy.batch_plan: the announced one unless step-noise-target is set)
    tcfg = dataclasses.replace(tcfg, batch_size=int(plan.get("batch-size") or tcfg.batch_size))
    q = sample_rate_for(int(n_hat), tcfg.batch_size)
    steps = tcfg.local_epochs * steps_per_epoch(int(n_hat), tcfg.batch_size)

    def rule(salt: str, n_steps: int) -> DPSGDGradients:
        seed_ = noise_seed(policy, req, ledger, salt, inputs_digest(weights, req, sigma))
        return DPSGDGradients(sigma, req["clipping-norm"], q, steps=n_steps, expected_batch_size=q * n_hat, seed=seed_)

    round_rule = rule(f"train-{rnd}", steps)
    events = [_side_event(round_rule.events(steps, run_id, rnd), req, data, "train", rnd)]
    events += personal.releases_with_update(True, run_id, data.split.split)
    _budget(ledger.check, events)
    train_local(model, x, y, tcfg, round_rule, seed=seed)
    label_rng = np.random.default_rng(noise_seed(policy, req, ledger, "label-count"))
    spent = _budget(ledger.record, events)  # persisted before the update leaves the node
    metrics = {"num-examples": n_hat, **personal.after_training(model, y, dp=True, rng=label_rng, n_rows=n_hat)}
    p_steps = personal.settings.personal_rounds(tcfg.local_epochs) * steps
    spent = _budget(personal.personalise_if_last, req, x, y, tcfg, rule("personal", max(p_steps, 1)),
                    policy.institution_id, encoder, data.schema, ledger=ledger, steps=steps) or spent
    # no training loss under DP: it is an exact function of the private batches (unclipped,
    # unnoised), so it would be a release outside the accountant (docs/privacy.md)
    return {**metrics, **_public_figures(ledger, spent), "noise-multiplier": sigma, "sample-rate": q,
            "steps": float(steps)}


# ------------------------------------------------------------------------- evaluation
def received_evaluation(policy: NodePolicy, weights: dict[str, np.ndarray], cfg: dict) -> dict | None:
    """The evaluation config a train message asks for with ``evaluate-received`` (None: none).

    The whole train request — config, encoder, model spec and weights — is checked first
    (:mod:`clients.request_checks`), so a message that fails is refused as a whole before either
    release. The weights it carries are the previous round's global model: the evaluation is
    reported as round ``server-round`` − 1. It stores no ledger head (the training part stores the
    same head for this round).
    """
    req, _, spec = train_request(cfg, node_schema(policy.schema))
    if not req[P.EVALUATE_RECEIVED]:
        return None
    check_weights(weights, spec)
    return {**cfg, "server-round": req["server-round"] - 1, "cutoff-pd": req["cutoff-pd"], "ledger-head": ""}


def finite_pd(pd_values: np.ndarray) -> np.ndarray:
    """PDs in [0, 1]; a non-finite PD (from any weights or row) is scored 0.5 — one fixed bin."""
    p = np.asarray(pd_values, dtype=np.float64)
    return np.where(np.isfinite(p), np.clip(p, 0.0, 1.0), 0.5)


def _evaluation_noise(state: dict | None, run_id: str) -> float:
    """The evaluations' σ of this run's plan (:func:`clients.node_privacy.plan_run`), else the default."""
    from privacy.dp_release import EVALUATION_NOISE_MULTIPLIER

    plan = (state or {}).get("plan") or {}
    if plan.get("run-id") == run_id and plan.get("evaluation-noise"):
        return float(plan["evaluation-noise"])
    return EVALUATION_NOISE_MULTIPLIER


def evaluate(policy: NodePolicy, weights: dict[str, np.ndarray], cfg: dict, state: dict | None = None
             ) -> tuple[dict[str, np.ndarray] | None, dict[str, float], str]:
    """Holdout evaluation; returns (released arrays or None, metrics, release mode)."""
    req, encoder, spec = evaluation_request(cfg, node_schema(policy.schema))
    weights = check_weights(weights, spec)
    if req["ledger-head"]:  # the head after the round's entries (the final evaluation: after the last round)
        from clients.ledger_heads import record_ledger_head

        record_ledger_head(policy.state_dir, req["run-id"], req["server-round"], req["ledger-head"], stage="evaluate")
    if policy.release_eval == "off":  # decided before any data is read
        return None, {"num-examples": 0.0}, "off"
    if policy.release_eval == "noised":
        require_budget(policy)
    data = load_node_data(policy)
    _, _, xh, yh = data.matrices(encoder)
    pd_holdout = finite_pd(predict_pd(_model_from(spec, weights), xh))
    sums = EvaluationSums.from_scores(pd_holdout, yh)
    groups = group_counts(data.split.holdout, pd_holdout, yh, data.schema, req["cutoff-pd"])
    if policy.release_eval == "exact":  # simulation only: not differentially private
        return {**sums.to_arrays(), **{f"fair/{k}": v for k, v in groups.items()}}, {"num-examples": float(len(xh))}, \
            "exact"
    from privacy.dp_release import evaluation_bins, release_evaluation

    with open_ledger(policy, data) as ledger:
        n_hat = _budget(released_counts, policy, ledger, data, req)["holdout"]
        sigma = _evaluation_noise(state, req["run-id"])
        bins = evaluation_bins(n_hat, sigma, len(groups))
        salt = f"eval-{req['server-round']}"
        rng = np.random.default_rng(noise_seed(policy, req, ledger, salt, inputs_digest(weights, req, sigma)))
        noisy, noisy_groups, event = release_evaluation(sums, sigma, rng, bins=bins, groups=groups)
        _side_event(event, req, data, "holdout", req["server-round"])
        spent = _budget(ledger.record, [event])  # persisted before the numbers leave the node
        metrics = {"num-examples": n_hat, "epsilon-spent": spent, "noise-multiplier": sigma}
    return {**noisy.to_arrays(), **{f"fair/{k}": v for k, v in noisy_groups.items()}}, metrics, "noised"
