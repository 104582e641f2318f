"""Membership-inference audit of a released model at one institution: measure what it leaks.

The institution gives the released model and its own labelled rows, each marked *member*
(on the training side of the node's split) or not (holdout). :func:`audit_membership`

1. **draws the canaries** — the rows whose membership counts as an independent fair coin
   (:func:`fair_coin_canaries`). The node puts each row on the training side by an
   independent draw with probability ``p`` (``1 − holdout-fraction``, from a hash of the row's
   content and the node's ``split-seed``, ``clients.dataset.holdout_mask``). Keeping every row
   of the rarer side and each row of the commoner side with probability
   ``min(p, 1 − p) / max(p, 1 − p)`` (the audit's own coin) leaves rows whose membership is, given
   that they were kept, independent and ½ each: ``p · (1 − p)/p = (1 − p) · 1``. Rows that
   occur more than once (same encoded features and label) are left out: identical rows share
   one hash, hence one side, and are not independent canaries;
2. **scores** every row with the attacks of :mod:`privacy.audit_attacks` — the loss threshold
   and offline LiRA with ``K`` reference models trained here on random halves of all rows;
3. **reports** per attack, on the canaries: ROC AUC (members = positives), TPR at 0.1 % and 1 %
   FPR (with fewer than 1,000 non-member canaries the 0.1 % figure is the TPR at FPR = 0), and
   the **ε lower bound** of Steinke, Nasr & Jagielski (2023) at the stated confidence
   (:mod:`privacy.audit_bounds`), Bonferroni-corrected over the attacks (and, inside, over the
   fixed grid of guess counts), so the largest reported bound holds at that confidence.

What the bound means. It is evidence against "this model is (ε, δ)-DP for these rows" for any ε
below it, at the stated confidence, assuming the split really was independent coins (the hash
stands in for them). "Member vs non-member" here is "on the training side vs on the holdout
side": a model that spends ε_train on training rows and ε_eval on holdout rows (noised
evaluations; the server fits its Platt recalibration on them) is (ε_train + ε_eval)-DP for that
distinction, so a correct node's bound stays below that sum — and below ε_train when the
holdout was never released. It is a *lower* bound: 0 means these attacks found nothing, never
that the model is private. With ``m`` canaries it cannot exceed about ``ln(m)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from configs.errors import UserError
from privacy.audit_attacks import ATTACKS, attack_scores, cross_entropy, logits, train_reference_models
from privacy.audit_bounds import epsilon_lower_bound

if TYPE_CHECKING:
    from models.training import LocalTrainConfig

MIN_CANARIES = 20
DEFAULT_REFERENCE_MODELS = 16


@dataclass(frozen=True)
class AuditSettings:
    """What the audit does. ``reference_models`` = K (even; 0 runs the loss attack only);
    ``reference_training`` = a ``models.training.LocalTrainConfig`` for each reference model
    (non-private; ideally the way the audited model was trained); ``confidence`` of the ε lower
    bound; ``delta`` = the δ of the (ε, δ) being tested; ``seed`` of the canary draw and the
    reference models."""

    reference_training: LocalTrainConfig
    reference_models: int = DEFAULT_REFERENCE_MODELS
    confidence: float = 0.95
    delta: float = 1e-5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.confidence < 1:
            raise UserError(f"confidence must be between 0 and 1 (exclusive), got {self.confidence}")
        if not 0 <= self.delta < 1:
            raise UserError(f"delta must be in [0, 1), got {self.delta}")
        if self.reference_models < 0 or self.reference_models % 2:
            raise UserError("the number of reference models must be 0 (loss attack only) or even (they are "
                            f"trained in complementary pairs), got {self.reference_models}")


def fair_coin_canaries(x: np.ndarray, y: np.ndarray, member: np.ndarray, member_probability: float,
                       rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Rows whose membership is an independent fair coin (see the module docstring).

    Returns ``(mask, duplicates)``: the canary mask over the rows and how many rows were left
    out because their encoded features and label occur more than once.
    """
    p = float(member_probability)
    if not 0 < p < 1:
        raise UserError(f"the probability that a row is on the training side must be in (0, 1), got {p}")
    member = np.asarray(member, dtype=bool)
    rows = np.column_stack([np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)])
    _, first, counts = np.unique(rows, axis=0, return_index=True, return_counts=True)
    unique = np.zeros(len(rows), dtype=bool)
    unique[first[counts == 1]] = True
    keep_common = min(p, 1 - p) / max(p, 1 - p)
    common = member if p > 0.5 else ~member
    coin = rng.random(len(rows)) < keep_common
    return unique & (~common | coin), int((~unique).sum())


def audit_membership(model, spec, x: np.ndarray, y: np.ndarray, member: np.ndarray, member_probability: float,
                     settings: AuditSettings,
                     on_reference_model: Callable[[int, int], None] | None = None) -> dict:
    """Run the audit on encoded rows ``x``, labels ``y`` and the membership mask; JSON-able report.

    Keys: ``rows``, ``members``, ``non_members``, ``member_probability``, ``canaries``
    (``total``, ``members``, ``non_members``, ``duplicates_excluded``), ``model`` (mean
    cross-entropy on members and non-members), ``confidence``, ``delta``, ``seed``,
    ``reference_models``, ``attacks`` (per attack: ``name``, ``auc``, ``tpr_at_0.1pct_fpr``,
    ``tpr_at_1pct_fpr``, ``epsilon_lower_bound``, ``test``), ``auc`` and ``epsilon_lower_bound``
    (maxima over the attacks), ``bound`` (which bound and how it was corrected), ``notes``.
    """
    import time

    member = np.asarray(member, dtype=bool)
    y = np.asarray(y, dtype=np.float32)
    rng = np.random.default_rng([settings.seed, 0xCA7A])
    canary, duplicates = fair_coin_canaries(x, y, member, member_probability, rng)
    n_canaries = int(canary.sum())
    if n_canaries < MIN_CANARIES:
        raise UserError(f"only {n_canaries} rows can serve as audit canaries ({int(member.sum())} training-side and "
                        f"{int((~member).sum())} holdout rows, {duplicates} duplicates); the audit needs at least "
                        f"{MIN_CANARIES} — audit a larger table")
    target_logit = logits(model, x)
    started = time.monotonic()
    refs, inside = (None, None)
    if settings.reference_models:
        refs, inside = train_reference_models(spec, x, y, settings.reference_models, settings.reference_training,
                                              settings.seed, on_reference_model)
    reference_seconds = time.monotonic() - started
    scores = attack_scores(target_logit, y, refs, inside)
    alpha = (1 - settings.confidence) / len(scores)
    truth = member[canary]
    attacks = [{"name": name, **_roc_figures(truth, s[canary]),
                **_bound_figures(s[canary], truth, settings.delta, alpha)}
               for name, s in scores.items()]
    loss = cross_entropy(target_logit, y)
    notes = []
    if int((~truth).sum()) < 1000:
        notes.append(f"{int((~truth).sum())} non-member canaries: the TPR at 0.1 % FPR is the TPR at FPR = 0")
    return {
        "rows": int(len(x)), "members": int(member.sum()), "non_members": int((~member).sum()),
        "member_probability": float(member_probability),
        "canaries": {"total": n_canaries, "members": int(truth.sum()), "non_members": int((~truth).sum()),
                     "duplicates_excluded": duplicates},
        "model": {"loss_members": float(loss[member].mean()) if member.any() else None,
                  "loss_non_members": float(loss[~member].mean()) if (~member).any() else None},
        "confidence": settings.confidence, "delta": settings.delta, "seed": settings.seed,
        "reference_models": settings.reference_models, "reference_seconds": reference_seconds,
        "attacks": attacks,
        "auc": max(a["auc"] for a in attacks),
        "epsilon_lower_bound": max(a["epsilon_lower_bound"] for a in attacks),
        "bound": {"method": "Steinke, Nasr & Jagielski 2023 (one training run, fair-coin canaries)",
                  "confidence": settings.confidence, "confidence_per_attack": 1 - alpha,
                  "attacks": list(scores), "available_attacks": list(ATTACKS)},
        "notes": notes,
    }


def _roc_figures(member: np.ndarray, score: np.ndarray) -> dict:
    """ROC AUC and the TPR at 0.1 % and 1 % FPR (members = positives; scikit-learn)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    if member.all() or not member.any():
        return {"auc": 0.5, "tpr_at_0.1pct_fpr": 0.0, "tpr_at_1pct_fpr": 0.0}
    fpr, tpr, _ = roc_curve(member, score)
    return {"auc": float(roc_auc_score(member, score)),
            "tpr_at_0.1pct_fpr": float(tpr[fpr <= 0.001].max()),
            "tpr_at_1pct_fpr": float(tpr[fpr <= 0.01].max())}


def _bound_figures(score: np.ndarray, member: np.ndarray, delta: float, alpha: float) -> dict:
    test = epsilon_lower_bound(score, member, delta, alpha)
    return {"epsilon_lower_bound": test.pop("epsilon_lower_bound"), "test": test}
