"""What an institution's node does for each message, independent of Flower's plumbing.

The node is the privacy boundary. It

* loads its own table (validated exactly like ``fedcredit data validate``) and splits it into
  training rows and a local holdout (:mod:`clients.dataset`);
* answers the statistics query, trains and evaluates — and for every release that touches
  borrower data it first checks its *own* lifetime budget (:class:`privacy.accountant.
  PrivacyLedger`), persists the spend, and only then lets the numbers leave;
* takes its budget (``max-epsilon``, ``delta``) and release policy from the **node config**;
  the run config can only ask for less (``target-epsilon``), never for more.

Node config keys (deployment, ``flower-supernode --node-config``)
-----------------------------------------------------------------
``data-path`` (required) · ``institution-id`` (default: file name) · ``mapping`` · ``schema``
(default ``consumer-credit-v1``) · ``state-dir`` (required: lifetime privacy state) ·
``max-epsilon`` (required for DP training) · ``delta`` (default: the largest power of ten
≤ 1/(10·n)) · ``release-eval`` = ``noised`` (default) | ``off`` · ``allow-non-private``
= false (default) · ``split-seed`` (0) · ``holdout-fraction`` (0.2) · ``accountant`` = rdp | prv.

Simulation: a virtual node only has ``partition-id`` / ``num-partitions``; it takes file
``partition-id`` of the run's ``data-dir`` (sorted) or synthesises institution ``partition-id``,
keeps its privacy state under ``state-root/<institution-id>``, its budget from
``sim-budgets`` (its own entry) or ``sim-max-epsilon``, its data minimum from ``min-rows`` /
``min-positives``, releases exact evaluations and may train without DP (``dp = false``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clients.dataset import InstitutionSplit, labels, split_institution
from configs.errors import UserError
from configs.schema import Schema, load_schema
from fedcredit.protocol import evaluation_rounds
from models.encoder import FeatureEncoder, feature_statistics
from models.fairness import group_counts
from models.metrics import EvaluationSums
from models.network import ModelSpec, build_model, get_weights, predict_pd, set_weights
from models.training import LocalTrainConfig, train_local

DEPLOYMENT_RELEASE_MODES = ("noised", "off")
DATA_SUFFIXES = (".csv", ".parquet", ".pq", ".tsv", ".txt")


class NodeRefusal(Exception):
    """The node declines a request; ``reason`` is a protocol code, ``detail`` says why, and
    ``metrics`` holds public figures sent with the refusal (ε spent and budget for an exhausted
    budget)."""

    def __init__(self, reason: str, detail: str, metrics: dict[str, float] | None = None):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.metrics = dict(metrics or {})

    @classmethod
    def budget_exhausted(cls, exc) -> NodeRefusal:
        """From a :class:`privacy.accountant.BudgetExceeded`: the reason, and the lifetime ε spent
        and budget (public figures, docs/privacy.md) so the coordinator can report them."""
        return cls("budget-exhausted", str(exc), {"epsilon-spent": float(exc.spent), "epsilon-budget": float(exc.budget)})


@dataclass(frozen=True)
class NodePolicy:
    institution_id: str
    source: str  # a file path, or "synthetic:<index>/<count>"
    mapping: str | None
    schema: str
    state_dir: Path
    max_epsilon: float | None
    delta: float | None
    release_eval: str
    allow_non_private: bool
    split_seed: int
    holdout_fraction: float
    accountant: str
    simulation: bool
    synthetic_scale: float = 1.0
    synthetic_seed: int = 0
    #: the table's minimum rows / defaults (``fedcredit data validate``'s); simulation: run config
    #: ``min-rows`` / ``min-positives`` (research mode, see simulation.research_mode)
    min_rows: int = 500
    min_positives: int = 50


def _get(cfg: dict, key: str, default: Any = None) -> Any:
    v = cfg.get(key, default)
    return default if v == "" else v


def policy_from_context(node_config: dict, run_config: dict, run_id: str = "") -> NodePolicy:
    """Resolve the node's policy: node config in deployment, run config for virtual nodes."""
    node_config = dict(node_config or {})
    run_config = dict(run_config or {})
    if "data-path" in node_config:
        path = str(node_config["data-path"])
        state = _get(node_config, "state-dir")
        if not state:
            raise UserError("node config: 'state-dir' is required (the node's lifetime privacy state lives there)")
        release = str(_get(node_config, "release-eval", "noised"))
        if release not in DEPLOYMENT_RELEASE_MODES:
            hint = " (exact evaluation releases are for simulation only)" if release == "exact" else ""
            raise UserError(f"node config: 'release-eval' must be one of {', '.join(DEPLOYMENT_RELEASE_MODES)}, "
                            f"got '{release}'{hint}")
        max_eps = _get(node_config, "max-epsilon")
        return NodePolicy(
            institution_id=str(_get(node_config, "institution-id", Path(path).stem)),
            source=path, mapping=_get(node_config, "mapping"),
            schema=str(_get(node_config, "schema", "consumer-credit-v1")),
            state_dir=Path(str(state)).expanduser(),
            max_epsilon=float(max_eps) if max_eps is not None else None,
            delta=float(_get(node_config, "delta")) if _get(node_config, "delta") is not None else None,
            release_eval=release,
            allow_non_private=str(_get(node_config, "allow-non-private", "false")).lower() == "true",
            split_seed=int(_get(node_config, "split-seed", 0)),
            holdout_fraction=float(_get(node_config, "holdout-fraction", 0.2)),
            accountant=str(_get(node_config, "accountant", "rdp")), simulation=False)
    if "partition-id" not in node_config:
        raise UserError("node config: give 'data-path' (and 'state-dir', 'max-epsilon') for this institution")
    index, count = int(node_config["partition-id"]), int(node_config.get("num-partitions", 1))
    data_dir = _get(run_config, "data-dir")
    if data_dir:
        files = _data_files(str(data_dir))
        if index >= len(files):
            raise UserError(f"run config: data-dir {data_dir} has {len(files)} data file(s); "
                            f"virtual node {index} has none (use num-supernodes ≤ {len(files)})")
        source, inst = str(files[index]), files[index].stem
    else:
        plan = _synthetic_plan(count, float(_get(run_config, "synthetic-scale", 1.0)))
        source, inst = f"synthetic:{index}/{count}", plan[index].id
    root = _get(run_config, "state-root") or str(Path(tempfile.gettempdir()) / "fedcredit-sim" / (run_id or "run"))
    return NodePolicy(
        institution_id=inst, source=source, mapping=_get(run_config, "mapping"),
        schema=str(_get(run_config, "schema", "consumer-credit-v1")),
        state_dir=Path(root) / inst, max_epsilon=_simulated_budget(run_config, inst),
        delta=None, release_eval="exact", allow_non_private=True, split_seed=0, holdout_fraction=0.2,
        accountant="rdp", simulation=True,
        synthetic_scale=float(_get(run_config, "synthetic-scale", 1.0)),
        synthetic_seed=int(_get(run_config, "synthetic-seed", 0)),
        min_rows=int(_get(run_config, "min-rows", 500)), min_positives=int(_get(run_config, "min-positives", 50)))


def _simulated_budget(run_config: dict, institution: str) -> float:
    """A virtual node's lifetime ε: its entry in ``sim-budgets``, else ``sim-max-epsilon``."""
    from server.settings import parse_sim_budgets

    budgets = parse_sim_budgets(str(_get(run_config, "sim-budgets", "") or ""))
    return float(budgets.get(institution, _get(run_config, "sim-max-epsilon", 3.0)))


def _data_files(data_dir: str) -> tuple[Path, ...]:
    """The data files of a simulation's data directory, sorted (virtual node k takes file k).

    Resolved for every message, so the listing is cached until the directory changes (its
    mtime): a directory of 1,000 files costs ~20 ms to list and sort, per message otherwise.
    """
    import os

    return _data_files_at(data_dir, os.stat(data_dir).st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _data_files_at(data_dir: str, mtime_ns: int) -> tuple[Path, ...]:
    return tuple(sorted(p for p in Path(data_dir).iterdir() if p.suffix.lower() in DATA_SUFFIXES))


def _synthetic_plan(count: int, scale: float):
    """The synthetic consortium's institutions (cached while the archetypes file is unchanged)."""
    import os

    from simulation.archetypes import ARCHETYPES_FILE

    return _synthetic_plan_at(count, scale, os.stat(ARCHETYPES_FILE).st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _synthetic_plan_at(count: int, scale: float, mtime_ns: int):
    from simulation.archetypes import institution_plan, load_archetypes

    return tuple(institution_plan(count, scale, load_archetypes()))


# ------------------------------------------------------------------------------ data
_DATA_CACHE: dict[tuple, "NodeData"] = {}


@dataclass
class NodeData:
    schema: Schema
    split: InstitutionSplit
    encoded: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]  # encoder hash → x/y train, x/y holdout

    def matrices(self, encoder: FeatureEncoder):
        key = hashlib.sha256(encoder.to_json().encode()).hexdigest()
        if key not in self.encoded:
            s = self.split
            self.encoded.clear()  # one encoder per run; keep memory flat
            self.encoded[key] = (encoder.transform(s.train), labels(s.train, self.schema),
                                 encoder.transform(s.holdout), labels(s.holdout, self.schema))
        return self.encoded[key]


def clear_data_cache() -> None:
    """Forget every table this process loaded (benchmarks: each repetition starts cold)."""
    _DATA_CACHE.clear()


def load_node_data(policy: NodePolicy) -> NodeData:
    """Load, validate and split the node's table (cached per process)."""
    key = (policy.source, policy.mapping, policy.schema, policy.split_seed, policy.holdout_fraction,
           policy.synthetic_scale, policy.synthetic_seed, policy.min_rows, policy.min_positives)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    schema = load_schema(policy.schema)
    if policy.source.startswith("synthetic:"):
        table = _synthetic_table(policy, schema)
    else:
        from clients.validation import load_institution_table

        table = load_institution_table(policy.source, schema, policy.mapping, min_rows=policy.min_rows,
                                       min_positives=policy.min_positives).table
    split = split_institution(table, schema, policy.institution_id, policy.holdout_fraction, policy.split_seed)
    data = NodeData(schema=schema, split=split, encoded={})
    _DATA_CACHE[key] = data
    return data


def _synthetic_table(policy: NodePolicy, schema: Schema):
    from simulation.synthetic import consortium_member

    index, count = (int(v) for v in policy.source.split(":", 1)[1].split("/"))
    return consortium_member(index, count, policy.synthetic_scale, policy.synthetic_seed, schema)[1]


# -------------------------------------------------------------------------- privacy
def _ledger(policy: NodePolicy, data: NodeData):
    from privacy.accountant import PrivacyLedger
    from privacy.planning import default_delta

    if policy.max_epsilon is None:
        raise NodeRefusal("policy", "this node has no 'max-epsilon' in its node config, so it does not "
                          "release anything computed from borrower data; set max-epsilon")
    delta = policy.delta if policy.delta is not None else default_delta(len(data.split.train) + len(data.split.holdout))
    ledger = PrivacyLedger.open(policy.state_dir, fingerprint=data.split.fingerprint, schema_key=data.schema.key,
                                institution_id=policy.institution_id, max_epsilon=policy.max_epsilon,
                                delta=delta, accountant=policy.accountant)
    ledger.node_split = data.split.split
    return ledger


def _wants_dp(policy: NodePolicy, cfg: dict) -> bool:
    """DP unless the run asks for none *and* the node allows non-private training."""
    if bool(cfg.get("dp", True)):
        return True
    if not policy.allow_non_private:
        raise NodeRefusal("policy", "the run asks for training without differential privacy; this node's "
                          "policy (allow-non-private = false) forbids it")
    return False


def _noise_seed(policy: NodePolicy, cfg: dict, salt: str) -> int | None:
    """Reproducible noise in simulation — from the run's seed, the institution and the release
    (``salt``), not the run id, which is random per simulation; fresh OS randomness in deployment."""
    if not policy.simulation:
        return None
    blob = f"{cfg.get('seed', 0)}|{policy.institution_id}|{salt}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little")


# ------------------------------------------------------------------------- handlers
def answer_statistics(policy: NodePolicy, cfg: dict, state: dict | None = None
                      ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-feature count vectors of the training rows; Gaussian-noised and accounted under DP.

    Under DP the node first plans the run's noise (it spends nothing on a run it cannot train
    in); the plan is kept in ``state`` (the node's per-run state), so that the first training
    round uses it instead of planning again when nothing changed in between (planning searches
    σ with the accountant: about a second per node).
    """
    data = load_node_data(policy)
    if cfg.get("schema-key") and cfg["schema-key"] != data.schema.key:
        raise NodeRefusal("policy", f"the run uses schema {cfg['schema-key']}, this node's data follows {data.schema.key}")
    stats = feature_statistics(data.split.train, data.schema)
    metrics = {"num-examples": float(data.split.n_train)}
    if not _wants_dp(policy, cfg):
        return stats, metrics
    from privacy.accountant import BudgetExceeded
    from privacy.dp_release import STATISTICS_NOISE_MULTIPLIER, release_statistics

    rng = np.random.default_rng(_noise_seed(policy, cfg, "statistics"))
    noisy, event = release_statistics(stats, STATISTICS_NOISE_MULTIPLIER, rng)
    event.run_id, event.rows, event.split = str(cfg.get("run-id", "")), "train", data.split.split
    with _ledger(policy, data) as ledger:
        try:
            p = batch = None
            if "num-server-rounds" in cfg:  # do not spend on statistics for a run we cannot train in
                p, batch = _plan_run(policy, ledger, data.split.n_train, cfg, first_round=1, pending=[event])
            spent = ledger.record([event])
        except BudgetExceeded as exc:
            raise NodeRefusal.budget_exhausted(exc) from None
        if p is not None and state is not None and "batch-size" in cfg and "local-epochs" in cfg:
            state["plan"] = {"run-id": event.run_id, "noise-multiplier": p.noise_multiplier, "rounds": p.rounds,
                             "batch-size": batch, "planned-at": "statistics", "ledger-events": len(ledger.events),
                             "shape": _plan_shape(data.split.n_train, cfg, 1)}
        metrics.update({"epsilon-spent": spent, "epsilon-budget": ledger.max_epsilon, "delta": ledger.delta})
    return noisy, metrics


def _model_from(cfg: dict, weights: dict[str, np.ndarray]):
    spec = ModelSpec.from_dict(json.loads(cfg["model-spec"]))
    model = build_model(spec)
    set_weights(model, weights)
    return model


def train(policy: NodePolicy, weights: dict[str, np.ndarray], cfg: dict,
          state: dict) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Local training from the global weights; DP-SGD with the node's own noise plan.

    ``state`` is the node's per-run state (Flower ``context.state``), where the noise plan of
    the run is kept so σ stays fixed across its rounds.
    """
    if cfg.get("ledger-head"):  # keep the audit ledger head we were shown (clients.ledger_heads)
        from clients.ledger_heads import record_ledger_head

        record_ledger_head(policy.state_dir, str(cfg.get("run-id", "")), int(cfg["server-round"]), cfg["ledger-head"])
    data = load_node_data(policy)
    encoder = FeatureEncoder.from_json(cfg["encoder"])
    if encoder.schema_key != data.schema.key:
        raise NodeRefusal("policy", f"the run's encoder is for schema {encoder.schema_key}, "
                          f"this node's data follows {data.schema.key}")
    x, y, _, _ = data.matrices(encoder)
    model = _model_from(cfg, weights)
    personal = _personal_round(policy, cfg, model)  # the node's own layers (clients.personalization)
    tcfg = LocalTrainConfig(local_epochs=int(cfg["local-epochs"]), batch_size=int(cfg["batch-size"]),
                            learning_rate=float(cfg["learning-rate"]), optimizer=str(cfg["optimizer"]),
                            proximal_mu=float(cfg.get("proximal-mu", 0.0)),
                            output_bias_learning_rate=personal.settings.output_bias_learning_rate)
    rnd = int(cfg["server-round"])
    seed = int(cfg.get("seed", 0)) * 100_003 + rnd
    metrics: dict[str, float] = {"num-examples": float(len(x))}
    if not _wants_dp(policy, cfg):
        out = train_local(model, x, y, tcfg, seed=seed)
        metrics["train-loss"] = out["loss"]
        metrics.update(personal.after_training(model, y, dp=False))
        personal.personalise_if_last(cfg, x, y, tcfg, None, policy.institution_id, encoder, data.schema)
        return get_weights(model), metrics

    from privacy.accountant import BudgetExceeded
    from privacy.dpsgd import DPSGDGradients
    from privacy.planning import sample_rate_for

    run_id = str(cfg.get("run-id", ""))
    with _ledger(policy, data) as ledger:
        plan = state.get("plan")
        if plan and plan.get("planned-at") == "statistics":  # planned when answering the statistics query:
            if (plan.get("ledger-events") == len(ledger.events)  # the same ledger, the same run shape
                    and plan.get("shape") == _plan_shape(len(x), cfg, rnd) and plan.get("run-id") == run_id):
                plan = state["plan"] = {k: plan[k] for k in ("run-id", "noise-multiplier", "rounds", "batch-size")}
            else:
                plan = None
        if not plan or plan.get("run-id") != run_id:
            try:
                p, batch = _plan_run(policy, ledger, len(x), cfg, first_round=rnd)
            except BudgetExceeded as exc:
                raise NodeRefusal.budget_exhausted(exc) from None
            plan = {"run-id": run_id, "noise-multiplier": p.noise_multiplier, "rounds": p.rounds, "batch-size": batch}
            state["plan"] = plan
        sigma = float(plan["noise-multiplier"])
        # the batch the plan chose (privacy.batch_plan; the announced one unless step-noise-target is set)
        tcfg = dataclasses.replace(tcfg, batch_size=int(plan.get("batch-size") or tcfg.batch_size))
        q = sample_rate_for(len(x), tcfg.batch_size)
        steps = tcfg.local_epochs * tcfg.steps_per_epoch(len(x))
        # a round trained again (its first reply was lost with a crashed server) draws fresh noise:
        # the same draws at another σ would let the two releases be combined to remove the noise
        replays = sum(1 for e in ledger.events if e.kind == "train" and e.run_id == run_id and e.round == rnd)
        salt = f"train-{rnd}" + (f"-replay-{replays}" if replays else "")
        rule = DPSGDGradients(sigma, float(cfg["clipping-norm"]), q, seed=_noise_seed(policy, cfg, salt))
        event = rule.events(steps, run_id, rnd)
        event.rows, event.split = "train", data.split.split
        events = [event] + personal.releases_with_update(True, run_id, data.split.split)
        try:
            ledger.check(events)
        except BudgetExceeded as exc:
            raise NodeRefusal.budget_exhausted(exc) from None
        out = train_local(model, x, y, tcfg, rule, seed=seed)
        label_rng = np.random.default_rng(_noise_seed(policy, cfg, "label-count"))
        spent = ledger.record(events)  # persisted before the update leaves the node
        metrics.update(personal.after_training(model, y, dp=True, rng=label_rng))
        p_rule = DPSGDGradients(sigma, float(cfg["clipping-norm"]), q, seed=_noise_seed(policy, cfg, f"personal-{rnd}"))
        try:
            spent = personal.personalise_if_last(cfg, x, y, tcfg, p_rule, policy.institution_id, encoder,
                                                 data.schema, ledger=ledger, steps=steps) or spent
        except BudgetExceeded as exc:
            raise NodeRefusal.budget_exhausted(exc) from None
        # no training loss under DP: it is an exact function of the private batches (unclipped,
        # unnoised), so it would be a release outside the accountant (docs/privacy.md)
        metrics.update({"epsilon-spent": spent, "epsilon-budget": ledger.max_epsilon,
                        "delta": ledger.delta, "noise-multiplier": sigma, "sample-rate": q, "steps": float(steps)})
    return get_weights(model), metrics


def _personal_round(policy: NodePolicy, cfg: dict, model=None):
    """This round's :class:`clients.personalization.PersonalRound`; a bad key is a policy refusal."""
    from clients.personalization import PersonalizationConfigError, PersonalRound

    try:
        return PersonalRound(policy.state_dir, str(cfg.get("run-id", "")), cfg, model)
    except PersonalizationConfigError as exc:
        raise NodeRefusal("policy", str(exc)) from None


def _plan_shape(n_train: int, cfg: dict, first_round: int) -> str:
    """What :func:`_plan_run` depends on besides the ledger (to reuse a plan only when equal)."""
    keys = ("run-id", "num-server-rounds", "local-epochs", "batch-size", "evaluate-every", "target-epsilon",
            "aggregation-weight", "personalize", "personal-epochs", "step-noise-target")
    return json.dumps([n_train, first_round] + [str(cfg.get(k, "")) for k in keys])


def _plan_run(policy: NodePolicy, ledger, n_train: int, cfg: dict, first_round: int, pending=()):
    """The noise plan for the rest of this run, from the node's own ledger, and its batch size.

    Rounds ``first_round..num-server-rounds`` of ``local-epochs`` epochs at the batch size (the
    announced one, or the node's own choice for ``step-noise-target``: privacy.batch_plan) must
    fit the node's lifetime budget together with every earlier release; this run's releases (its
    statistics, ``pending`` ones, planned noised evaluations, the personal fine-tune and label
    count it reserves) must also fit the run's ``target-epsilon`` when the operator asks for less.
    Raises ``BudgetExceeded``.
    """
    from privacy.batch_plan import plan_with_batch
    from privacy.planning import plan_noise, sample_rate_for, steps_per_epoch

    run_id = str(cfg.get("run-id", ""))
    personal = _personal_round(policy, cfg)  # reserves the personal fine-tune and the label-count release
    rounds_left = max(1, int(cfg["num-server-rounds"]) - first_round + 1) + personal.reserved_rounds(cfg)
    this_run = ([e for e in ledger.events if e.run_id == run_id] + list(pending)
                + personal.releases_with_update(True, run_id, ledger_split(ledger)))

    def plan_for(batch: int):
        return plan_noise(prior_events=[e for e in ledger.events if e.run_id != run_id],
                          max_epsilon=ledger.max_epsilon, delta=ledger.delta,
                          sample_rate=sample_rate_for(n_train, batch),
                          steps_per_round=int(cfg["local-epochs"]) * steps_per_epoch(n_train, batch),
                          rounds=rounds_left, run_epsilon_cap=float(cfg.get("target-epsilon", 0.0)) or None,
                          extra_events=this_run + _planned_eval_events(
                              policy, 1 + len(evaluation_rounds(first_round, int(cfg["num-server-rounds"]),
                                                                int(cfg.get("evaluate-every", 1)))),
                              ledger_split(ledger)),
                          accountant=policy.accountant, rows="train", split=ledger_split(ledger))

    return plan_with_batch(plan_for, n_train, int(cfg["batch-size"]), personal.settings.step_noise_target)


def ledger_split(ledger) -> str:
    """The split id the node's releases are recorded under (set on the ledger by ``_ledger``)."""
    return getattr(ledger, "node_split", "")


def _planned_eval_events(policy: NodePolicy, rounds: int, split: str = "") -> list:
    """The noised evaluation releases the node will make in ``rounds`` evaluations (the scheduled
    ones and the final evaluation of the recalibrated model, see ``server.consortium``)."""
    if policy.release_eval != "noised":
        return []
    from privacy.accountant import PrivacyEvent
    from privacy.dp_release import EVALUATION_NOISE_MULTIPLIER

    return [PrivacyEvent("evaluation", EVALUATION_NOISE_MULTIPLIER, 1.0, 1, rows="holdout", split=split)
            for _ in range(rounds)]


def evaluate(policy: NodePolicy, weights: dict[str, np.ndarray], cfg: dict
             ) -> tuple[dict[str, np.ndarray] | None, dict[str, float], str]:
    """Holdout evaluation; returns (released arrays or None, metrics, release mode)."""
    if cfg.get("ledger-head"):  # the head after the round's entries (the final evaluation: after the last round)
        from clients.ledger_heads import record_ledger_head

        record_ledger_head(policy.state_dir, str(cfg.get("run-id", "")), int(cfg.get("server-round", 0)),
                           cfg["ledger-head"], stage="evaluate")
    data = load_node_data(policy)
    encoder = FeatureEncoder.from_json(cfg["encoder"])
    _, _, xh, yh = data.matrices(encoder)
    metrics = {"num-examples": float(len(xh))}
    if policy.release_eval == "off":
        return None, metrics, "off"
    pd_holdout = predict_pd(_model_from(cfg, weights), xh)
    sums = EvaluationSums.from_scores(pd_holdout, yh)
    groups = group_counts(data.split.holdout, pd_holdout, yh, data.schema, float(cfg.get("cutoff-pd", 0.2)))
    if policy.release_eval == "exact":
        return {**sums.to_arrays(), **{f"fair/{k}": v for k, v in groups.items()}}, metrics, "exact"
    from privacy.accountant import BudgetExceeded
    from privacy.dp_release import EVALUATION_NOISE_MULTIPLIER, release_evaluation

    rng = np.random.default_rng(_noise_seed(policy, cfg, f"eval-{cfg.get('server-round')}"))
    noisy, noisy_groups, event = release_evaluation(sums, EVALUATION_NOISE_MULTIPLIER, rng, groups=groups)
    arrays = {**noisy.to_arrays(), **{f"fair/{k}": v for k, v in noisy_groups.items()}}
    event.run_id, event.round = str(cfg.get("run-id", "")), int(cfg.get("server-round", 0))
    event.rows, event.split = "holdout", data.split.split
    with _ledger(policy, data) as ledger:
        try:
            metrics["epsilon-spent"] = ledger.record([event])  # persisted before the numbers leave the node
        except BudgetExceeded as exc:
            raise NodeRefusal.budget_exhausted(exc) from None
    return arrays, metrics, "noised"
