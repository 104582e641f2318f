"""The node's privacy bookkeeping: its ledger, its released row counts, its noise seeds and plans.

* :func:`open_ledger` — the institution's lifetime ledger (:class:`privacy.ledger.PrivacyLedger`)
  in the node's ``state-dir``, told which table version the node reads.
* :func:`released_counts` — the noisy row counts of that version (released once, then reused:
  :func:`privacy.dp_release.release_counts`). Everything the node derives from its size — the
  sample rate, steps, the expected batch size, ``num-examples``, the default δ, the evaluation's
  resolution — comes from them, never from the exact count.
* :func:`noise_seed` — where the randomness of a release comes from (module section below).
* :func:`plan_run` — the run's noise plan: DP-SGD's σ (:func:`privacy.planning.plan_noise`) and
  the evaluations' σ (:func:`privacy.planning.plan_evaluation_noise`).

Randomness
----------
Deployment: ``None`` — every release draws from the operating system (``os.urandom`` seeds the
generators afresh for each release), so no two releases share noise or Poisson samples.

Simulation (reproducible research runs): a seed from sha256 over the run's ``seed``, the
institution, the ledger's release counter (its number of events) and the sha256 of its whole
history (what was released — not when, in which run or from which table version), the
release's kind and round, and a digest of the release's own inputs (weights, config, σ). Every
release appends to the ledger before it leaves, so the counter makes every release on one
state draw fresh noise, in this run or any later one: two runs with the same seed on one state
root never share noise or Poisson samples. Run ids are left out (they are random per run): a DP
simulation with the same ``--seed`` on a fresh state root repeats itself exactly. Two fresh
state roots given the same seed draw the same noise only for a release with identical inputs —
the same output twice, which reveals nothing new; any change in the inputs (another σ, other
weights) changes the noise, so releases cannot be subtracted to cancel it.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from clients.node_data import NodeData
from clients.node_policy import NodePolicy
from clients.refusal import NodeRefusal
from fedcredit import protocol as P
from fedcredit.protocol import evaluation_rounds


#: config keys that name the run rather than what it computes (the run id is random per run; the
#: audit ledger's head hashes the run's own signed history)
PER_RUN_KEYS = ("run-id", "ledger-head")


def require_budget(policy: NodePolicy) -> None:
    """Refuse (policy) when the node config sets no ``max-epsilon``: decided from the config alone."""
    if policy.max_epsilon is None:
        raise NodeRefusal(P.REFUSED_POLICY, "this node has no 'max-epsilon' in its node config, so it does not "
                          "release anything computed from borrower data; set max-epsilon")


def open_ledger(policy: NodePolicy, data: NodeData):
    """The institution's ledger, opened for the table version in ``data`` (hold it briefly: it is locked)."""
    from privacy.ledger import PrivacyLedger

    require_budget(policy)
    return PrivacyLedger.open(policy.state_dir, institution_id=policy.institution_id,
                              max_epsilon=policy.max_epsilon, delta=policy.delta, accountant=policy.accountant,
                              fingerprint=data.split.fingerprint, schema_key=data.schema.key, split=data.split.split)


def inputs_digest(*parts) -> str:
    """sha256 of a release's inputs (arrays by their bytes, the rest as canonical JSON; a config's
    :data:`PER_RUN_KEYS` left out — they differ per run whatever it computes, and the ledger's
    history already tells runs apart)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, dict) and part and all(isinstance(v, np.ndarray) for v in part.values()):
            for k in sorted(part):
                h.update(k.encode())
                h.update(np.ascontiguousarray(part[k]).tobytes())
        else:
            if isinstance(part, dict):
                part = {k: v for k, v in part.items() if k not in PER_RUN_KEYS}
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def noise_seed(policy: NodePolicy, cfg: dict, ledger, salt: str, inputs: str = "") -> int | None:
    """None in deployment (OS randomness); in simulation the seed of the module docstring."""
    if not policy.simulation:
        return None
    history = ledger.all_events
    # what was released, not when, nor from which table version (a hash of the data)
    what = inputs_digest([{k: v for k, v in e.to_dict().items() if k not in ("time", "data", "run_id")}
                          for e in history])
    blob = f"{cfg.get('seed', 0)}|{policy.institution_id}|{len(history)}|{what}|{salt}|{inputs}"
    return int.from_bytes(hashlib.sha256(blob.encode()).digest()[:8], "little")


def released_counts(policy: NodePolicy, ledger, data: NodeData, cfg: dict) -> dict[str, float]:
    """The noisy training and holdout row counts of the current table version (released on first use)."""
    counts = ledger.version_counts()
    if counts is not None:
        return counts
    from privacy.dp_release import COUNT_NOISE_MULTIPLIER, release_counts
    from privacy.errors import BudgetExceeded
    from privacy.planning import default_delta

    rng = np.random.default_rng(noise_seed(policy, cfg, ledger, "count", inputs_digest(len(ledger.versions))))
    counts, events = release_counts(data.split.n_train, len(data.split.holdout), COUNT_NOISE_MULTIPLIER, rng)
    for e in events:
        e.run_id, e.split = str(cfg.get("run-id", "")), data.split.split
    if ledger.delta is None:  # a new ledger without a δ in the node config: from the released size
        ledger.adopt_delta(default_delta(int(counts["train"] + counts["holdout"])))
    try:
        ledger.record(events, counts=counts)
    except BudgetExceeded as exc:
        raise NodeRefusal.budget_exhausted(exc) from None
    return counts


def personal_round(policy: NodePolicy, cfg: dict, model=None):
    """This round's :class:`clients.personalization.PersonalRound` (``cfg``'s keys are checked:
    :func:`clients.request_checks.personal_keys`)."""
    from clients.personalization import PersonalRound

    return PersonalRound(policy.state_dir, str(cfg.get("run-id", "")), cfg, model)


def plan_shape(n_train: float, cfg: dict, first_round: int) -> str:
    """What :func:`plan_run` depends on besides the ledger (to reuse a plan only when equal)."""
    keys = ("run-id", "num-server-rounds", "local-epochs", "batch-size", "evaluate-every", "target-epsilon",
            "aggregation-weight", "personalize", "personal-epochs", "step-noise-target")
    return json.dumps([n_train, first_round] + [str(cfg.get(k, "")) for k in keys])


def plan_run(policy: NodePolicy, ledger, data: NodeData, n_train: float, cfg: dict, first_round: int,
             pending=()) -> dict:
    """The noise plan for the rest of this run, from the node's own ledger
    (:func:`privacy.planning.plan_run_noise`).

    Rounds ``first_round..num-server-rounds`` of ``local-epochs`` epochs at the batch size (the
    announced one, or the node's own choice for ``step-noise-target``: :mod:`privacy.batch_plan`)
    must fit the node's lifetime budget together with every earlier release; this run's
    releases (``pending`` ones, planned noised evaluations: the scheduled ones and the final
    evaluation of the recalibrated model, see ``server.consortium``) must also fit the run's
    ``target-epsilon`` when the operator asks for less. The personal fine-tune after the last
    round and the label-count release (:mod:`clients.personalization`) are reserved too.
    Returns ``{"run-id",
    "noise-multiplier", "evaluation-noise", "rounds", "batch-size"}``; raises ``BudgetExceeded``.
    """
    from privacy.batch_plan import plan_with_batch
    from privacy.planning import plan_run_noise, sample_rate_for, steps_per_epoch

    run_id = str(cfg.get("run-id", ""))
    n_rows, last = int(n_train), int(cfg["num-server-rounds"])
    personal = personal_round(policy, cfg)
    reserved = personal.releases_with_update(True, run_id, data.split.split)
    for e in reserved:
        e.data = data.split.fingerprint
    evaluations = 0
    if policy.release_eval == "noised":
        evaluations = 1 + len(evaluation_rounds(first_round, last, int(cfg.get("evaluate-every", 1))))

    def plan_for(batch: int):
        return plan_run_noise(prior_events=[e for e in ledger.events if e.run_id != run_id],
                              run_events=[e for e in ledger.events if e.run_id == run_id] + list(pending) + reserved,
                              evaluations=evaluations, max_epsilon=ledger.max_epsilon, delta=ledger.delta,
                              sample_rate=sample_rate_for(n_rows, batch),
                              steps_per_round=int(cfg["local-epochs"]) * steps_per_epoch(n_rows, batch),
                              rounds=max(1, last - first_round + 1) + personal.reserved_rounds(cfg),
                              run_epsilon_cap=float(cfg.get("target-epsilon", 0.0)) or None,
                              accountant=policy.accountant, split=data.split.split, data=data.split.fingerprint)

    plan, batch = plan_with_batch(plan_for, n_rows, int(cfg["batch-size"]), personal.settings.step_noise_target)
    from privacy.dp_release import EVALUATION_NOISE_MULTIPLIER

    return {"run-id": run_id, "noise-multiplier": plan.noise_multiplier, "rounds": plan.rounds, "batch-size": batch,
            "evaluation-noise": plan.evaluation_noise_multiplier or EVALUATION_NOISE_MULTIPLIER}
