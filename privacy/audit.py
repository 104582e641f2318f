"""Membership-inference audit of a trained model: measure what it leaks, don't only assert.

Given the model package and two labelled tables in the consortium schema — **members** (rows the
model was trained on) and **non-members** (rows it never saw, drawn from the same population,
e.g. the institution's holdout) — :func:`audit_model` runs two attacks that score each row,
higher = "more likely a member":

* ``loss-threshold`` (Yeom et al. 2018): score = − binary cross-entropy of the model on the row.
* ``calibrated`` — offline LiRA with a global variance (Carlini et al. 2022, offline variant;
  equivalently difficulty calibration, Watson et al. 2022): ``K`` reference models with the
  package's architecture are trained (non-privately, ``reference_epochs`` epochs, Adam) on the
  two halves A and B of the non-members, ``K/2`` per half. Every row, member or not, is
  assigned to a half (non-members: their own; members: at random) and compared with the ``K/2``
  reference models trained on the other half, which never saw it — the same number for
  members and non-members, so that without leakage their scores are exchangeable. Score = the
  target model's logit-scaled confidence in the true label, ``φ = (2y − 1) · logit``, minus the
  mean ``φ`` of the row's reference models, divided by the pooled standard deviation of
  those reference confidences. It removes per-row difficulty (rows every model gets right or wrong)
  that blurs the plain loss attack.

For each attack the audit reports the ROC AUC (members = positives), the TPR at 0.1 % and 1 %
FPR (resolution: one non-member is ``1/n`` of the FPR, so with fewer than 1,000 non-members the
0.1 % figure is the TPR at FPR = 0), and an **empirical ε lower bound** computed as follows:

1. Members and non-members are each split at random (``seed``) into a *selection* half and an
   *evaluation* half.
2. On the selection half, the threshold ``t`` and direction (predict "member" when score ≥ t,
   or when score < t) are chosen that maximise the bound of step 3 computed on that half.
3. On the evaluation half, with ``TPR`` and ``FPR`` of that one test, Clopper–Pearson one-sided
   bounds ``TPR_lo`` and ``FPR_hi``, each at level ``1 − α/2`` (α = 1 − confidence, union
   bound over the two), give

       ε_lb = max(0, ln((TPR_lo − δ) / FPR_hi), ln((1 − FPR_hi − δ) / (1 − TPR_lo)))

   — the two inequalities any (ε, δ)-DP mechanism imposes on a membership test
   (Kairouz et al. 2015; as used by Jagielski et al. 2020 and Nasr et al. 2021).
4. With A attacks, each attack's bound is computed at α/A, so the reported maximum over the
   attacks holds at the stated confidence.

What this is and is not: the bound treats every audited row as an independent membership
trial of one trained model. Jagielski et al. and Nasr et al. obtain independent trials by
training many models; with one model the rows are not independent and the figure is an
indicator of leakage, not a certified lower bound (Steinke, Nasr & Jagielski 2023 give the
rigorous one-run analysis). It never *proves* privacy: an AUC near 0.5 only says these two
attacks found nothing. With n rows per half the largest bound the audit can show is about
ln(n), so small audits cannot distinguish moderate ε values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from configs.errors import UserError

ATTACKS = ("loss-threshold", "calibrated")
DEFAULT_DELTA = 1e-5
DEFAULT_REFERENCE_MODELS = 4
DEFAULT_REFERENCE_EPOCHS = 20
MIN_ROWS = 20


def audit_model(package_dir: str | Path, members_file: str | Path, non_members_file: str | Path, *,
                mapping=None, confidence: float = 0.95, seed: int = 0, delta: float = DEFAULT_DELTA,
                reference_models: int = DEFAULT_REFERENCE_MODELS,
                reference_epochs: int = DEFAULT_REFERENCE_EPOCHS, batch_size: int = 256) -> dict:
    """Run the membership-inference audit (see the module docstring); returns a JSON-able dict.

    Keys: ``package``, ``members``, ``non_members``, ``confidence``, ``delta``, ``seed``,
    ``model`` (AUC and mean loss of the model on each set), ``attacks`` (per attack: ``name``,
    ``auc``, ``tpr_at_0.1pct_fpr``, ``tpr_at_1pct_fpr``, ``epsilon_lower_bound``, ``test``),
    ``auc`` and ``epsilon_lower_bound`` (maxima over the attacks), ``notes``.
    """
    from clients.validation import load_institution_table
    from models.package import load_package

    if not 0 < confidence < 1:
        raise UserError(f"confidence must be between 0 and 1, got {confidence}")
    if not 0 <= delta < 1:
        raise UserError(f"delta must be in [0, 1), got {delta}")
    if reference_models < 0 or reference_models % 2:
        raise UserError(f"reference models must be an even number ≥ 0 (half per half of the non-members), got {reference_models}")
    pkg = load_package(package_dir)
    tables = {}
    for name, path in (("members", members_file), ("non-members", non_members_file)):
        t = load_institution_table(path, pkg.schema, mapping, require_label=True, min_rows=0, min_positives=0).table
        if len(t) < MIN_ROWS:
            raise UserError(f"{path}: the {name} file has {len(t)} rows; the audit needs at least {MIN_ROWS}")
        tables[name] = t
    label = pkg.schema.label.name
    xm = pkg.encoder.transform(tables["members"])
    ym = tables["members"][label].to_numpy(dtype=np.float32)
    xn = pkg.encoder.transform(tables["non-members"])
    yn = tables["non-members"][label].to_numpy(dtype=np.float32)
    model = pkg.model()
    report = run_attacks(model, pkg.spec, xm, ym, xn, yn, confidence=confidence, seed=seed, delta=delta,
                         reference_models=reference_models, reference_epochs=reference_epochs,
                         batch_size=batch_size)
    report["package"] = str(package_dir)
    return report


def run_attacks(model, spec, xm: np.ndarray, ym: np.ndarray, xn: np.ndarray, yn: np.ndarray, *,
                confidence: float = 0.95, seed: int = 0, delta: float = DEFAULT_DELTA,
                reference_models: int = DEFAULT_REFERENCE_MODELS, reference_epochs: int = DEFAULT_REFERENCE_EPOCHS,
                batch_size: int = 256) -> dict:
    """The audit on encoded matrices (members ``xm, ym``, non-members ``xn, yn``)."""
    from models.metrics import auc_score
    from models.network import predict_pd

    logit_m, logit_n = _logits(model, xm), _logits(model, xn)
    loss_m, loss_n = _bce(logit_m, ym), _bce(logit_n, yn)
    is_member = np.concatenate([np.ones(len(xm)), np.zeros(len(xn))])
    scores = {"loss-threshold": -np.concatenate([loss_m, loss_n])}
    notes = []
    if reference_models > 0 and len(xn) >= 2 * MIN_ROWS:
        scores["calibrated"] = _calibrated_scores(spec, xm, ym, logit_m, xn, yn, logit_n, reference_models,
                                                  reference_epochs, batch_size, seed)
    else:
        notes.append("calibrated attack skipped (needs reference models and at least "
                     f"{2 * MIN_ROWS} non-members)")
    alpha = (1 - confidence) / len(scores)
    split = _selection_split(len(xm), len(xn), seed)
    attacks = []
    for name, s in scores.items():
        auc = float(_auc(is_member, s))
        attacks.append({
            "name": name,
            "auc": auc,
            "tpr_at_0.1pct_fpr": _tpr_at_fpr(is_member, s, 0.001),
            "tpr_at_1pct_fpr": _tpr_at_fpr(is_member, s, 0.01),
            **_epsilon_lower_bound(is_member, s, split, alpha, delta),
        })
    if len(xn) < 1000:
        notes.append(f"{len(xn)} non-members: TPR at 0.1 % FPR is the TPR at FPR = 0")
    return {
        "members": int(len(xm)), "non_members": int(len(xn)), "confidence": confidence, "delta": delta,
        "seed": seed, "reference_models": reference_models if "calibrated" in scores else 0,
        "reference_epochs": reference_epochs,
        "model": {"auc_members": auc_score(ym, predict_pd(model, xm)),
                  "auc_non_members": auc_score(yn, predict_pd(model, xn)),
                  "loss_members": float(loss_m.mean()), "loss_non_members": float(loss_n.mean())},
        "attacks": attacks,
        "auc": max(a["auc"] for a in attacks),
        "epsilon_lower_bound": max(a["epsilon_lower_bound"] for a in attacks),
        "notes": notes,
    }


# ----------------------------------------------------------------------------- scores
def _logits(model, x: np.ndarray) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(x, dtype=np.float32))).double().numpy().reshape(-1)


def _bce(logit: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row binary cross-entropy from logits (numerically stable)."""
    y = np.asarray(y, dtype=float)
    return np.logaddexp(0.0, logit) - y * logit


def _phi(logit: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Logit-scaled confidence in the true label: log(p_y / (1 − p_y)) = (2y − 1) · logit."""
    return (2 * np.asarray(y, dtype=float) - 1) * logit


def _calibrated_scores(spec, xm, ym, logit_m, xn, yn, logit_n, k, epochs, batch_size, seed) -> np.ndarray:
    """Offline-LiRA scores of members then non-members (see the module docstring).

    Symmetric by construction: every row — member or not — is put in half A or half B, and is
    scored against the ``k/2`` reference models trained on the *other* half of the
    non-members. Were the target independent of membership, member and non-member scores
    would be exchangeable; a calibration that used more reference models for members than for
    non-members would make their score distributions differ without any leakage.
    """
    from models.network import build_model
    from models.training import LocalTrainConfig, train_local

    rng = np.random.default_rng([seed, 1])
    half_a_n = np.zeros(len(xn), dtype=bool)
    half_a_n[rng.permutation(len(xn))[: len(xn) // 2]] = True
    half_a_m = np.zeros(len(xm), dtype=bool)
    half_a_m[rng.permutation(len(xm))[: len(xm) // 2]] = True
    cfg = LocalTrainConfig(local_epochs=max(1, int(epochs)), batch_size=max(1, min(batch_size, len(xn) // 4)))
    phi = {"m": [], "n": []}
    for j in range(k):
        trained_on_a = j % 2 == 0
        train_rows = half_a_n if trained_on_a else ~half_a_n
        ref = build_model(spec, seed=10_000 + 101 * seed + j)
        train_local(ref, xn[train_rows], yn[train_rows], cfg, seed=7919 * seed + j)
        phi["m"].append((_phi(_logits(ref, xm), ym), ~half_a_m if trained_on_a else half_a_m))
        phi["n"].append((_phi(_logits(ref, xn), yn), ~half_a_n if trained_on_a else half_a_n))
    scores, resid = [], []
    for key, logit, y in (("m", logit_m, ym), ("n", logit_n, yn)):
        total, count = np.zeros(len(y)), np.zeros(len(y))
        for p, use in phi[key]:
            total[use] += p[use]
            count[use] += 1
        mu = total / count
        resid += [(p - mu)[use] for p, use in phi[key]]
        scores.append(_phi(logit, y) - mu)
    # pooled ("global") standard deviation of the out-confidences around each row's mean
    sd = float(np.sqrt(np.mean(np.concatenate(resid) ** 2))) or 1.0
    return np.concatenate(scores) / sd


# ----------------------------------------------------------------------------- statistics
def _auc(is_member: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(is_member, score))


def _tpr_at_fpr(is_member: np.ndarray, score: np.ndarray, fpr_max: float) -> float:
    """Largest TPR among thresholds whose FPR ≤ ``fpr_max`` (members: score ≥ threshold)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(is_member, score)
    ok = fpr <= fpr_max + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def _selection_split(n_members: int, n_non: int, seed: int) -> np.ndarray:
    """Boolean mask over [members, non-members]: True = selection half, False = evaluation half."""
    rng = np.random.default_rng([seed, 2])
    sel = np.zeros(n_members + n_non, dtype=bool)
    sel[rng.permutation(n_members)[: n_members // 2]] = True
    sel[n_members + rng.permutation(n_non)[: n_non // 2]] = True
    return sel


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 − alpha) Clopper–Pearson lower bound of a binomial proportion k/n."""
    from scipy.stats import beta

    if n == 0 or k == 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 − alpha) Clopper–Pearson upper bound of a binomial proportion k/n."""
    from scipy.stats import beta

    if n == 0 or k == n:
        return 1.0
    return float(beta.ppf(1 - alpha, k + 1, n - k))


def _bound(tp: np.ndarray, n_pos: int, fp: np.ndarray, n_neg: int, alpha: float, delta: float) -> np.ndarray:
    """ε lower bound per candidate test with ``tp`` of ``n_pos`` members and ``fp`` of ``n_neg``
    non-members flagged, both directions of the DP inequality, CP bounds at ``alpha/2`` each."""
    from scipy.stats import beta

    a = alpha / 2
    tp = np.asarray(tp, dtype=float)
    fp = np.asarray(fp, dtype=float)
    with np.errstate(all="ignore"):
        tpr_lo = np.where(tp > 0, beta.ppf(a, tp, n_pos - tp + 1), 0.0)
        fpr_hi = np.where(fp < n_neg, beta.ppf(1 - a, fp + 1, n_neg - fp), 1.0)
        e1 = np.log((tpr_lo - delta) / fpr_hi)
        e2 = np.log((1 - fpr_hi - delta) / (1 - tpr_lo))
    e = np.fmax(np.nan_to_num(e1, nan=-np.inf, posinf=-np.inf), np.nan_to_num(e2, nan=-np.inf, posinf=-np.inf))
    return np.maximum(e, 0.0)


def _counts_at_thresholds(is_member: np.ndarray, score: np.ndarray, thresholds: np.ndarray):
    """Members and non-members with score ≥ t for each threshold t."""
    sm = np.sort(score[is_member == 1])
    sn = np.sort(score[is_member == 0])
    tp = len(sm) - np.searchsorted(sm, thresholds, side="left")
    fp = len(sn) - np.searchsorted(sn, thresholds, side="left")
    return tp, fp, len(sm), len(sn)


def _epsilon_lower_bound(is_member: np.ndarray, score: np.ndarray, selection: np.ndarray, alpha: float,
                         delta: float) -> dict:
    """Threshold chosen on the selection half, bound evaluated on the evaluation half."""
    sel_m, sel_s = is_member[selection], score[selection]
    ev_m, ev_s = is_member[~selection], score[~selection]
    thresholds = np.unique(sel_s)
    if len(thresholds) > 2000:  # a fixed grid of quantiles is as good and keeps it fast
        thresholds = np.unique(np.quantile(sel_s, np.linspace(0, 1, 2001)))
    tp, fp, n_pos, n_neg = _counts_at_thresholds(sel_m, sel_s, thresholds)
    b = _bound(tp, n_pos, fp, n_neg, alpha, delta)
    best = int(np.argmax(b))
    t = float(thresholds[best])
    tp_e, fp_e, n_pos_e, n_neg_e = _counts_at_thresholds(ev_m, ev_s, np.array([t]))
    eps = float(_bound(tp_e, n_pos_e, fp_e, n_neg_e, alpha, delta)[0])
    return {"epsilon_lower_bound": eps,
            "test": {"threshold": t, "tpr": float(tp_e[0] / max(n_pos_e, 1)), "fpr": float(fp_e[0] / max(n_neg_e, 1)),
                     "members_evaluated": int(n_pos_e), "non_members_evaluated": int(n_neg_e),
                     "confidence_per_attack": 1 - alpha}}
