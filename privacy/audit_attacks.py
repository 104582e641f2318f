"""Membership-inference attacks of the audit: each gives every row a score, higher = "member".

Both attacks read the model's **logit-scaled confidence in the true label**

    φ(x, y) = log(p_y / (1 − p_y)) = (2y − 1) · z(x),        z = the network's logit,

which for a binary classifier is the statistic LiRA uses (Carlini et al. 2022, §4.3: it is close
to Gaussian across training runs, unlike the probability itself).

* ``loss`` (Yeom et al. 2018): score = φ of the audited model. The binary cross-entropy is
  ``log(1 + e^{−φ})``, so this is the loss-threshold attack. Cheap, but blind to how hard each
  row is: a borrower every model gets right looks like a member.
* ``lira`` — offline LiRA (Carlini et al. 2022, §VI-C; the same test as Watson et al. 2022's
  difficulty calibration) with reference ("shadow") models trained at the institution. ``K``
  networks of the audited model's architecture are trained, non-privately, on random halves
  of the institution's rows, in complementary pairs, so every row is *out* of the training
  data of exactly ``K/2`` of them (:func:`train_reference_models`). Their mean logit on a row,
  ``z̄_out``, says how the row scores when a model has *not* seen it — how hard it is. The
  score is the released model's confidence beyond that,

      φ_target − (2y − 1) · (a + b · z̄_out),

  which, with LiRA's pooled ("global") variance, orders rows exactly as the offline
  likelihood-ratio test does. ``a + b·z̄`` maps the reference models' scale onto the released
  model's (:func:`align_to_target`): the released model was trained with the other
  institutions' rows and recalibrated by the server (Platt scaling ``z' = a·z + c`` fitted on
  the holdout histograms, ``models/calibration.py``), which shrinks or shifts every logit.
  Left alone, that mismatch swamps the per-row signal (on issue 12's over-fit, recalibrated
  model: AUC 0.53 unaligned, 0.60 aligned; docs/privacy.md). ``a, b`` are the least-squares
  fit of the released model's logit on ``z̄_out`` over all rows; they use no membership
  information.
  The offline test is used rather than the online one (which also models each row's score
  *in* training): the reference models cannot be trained exactly as the federated model was,
  and when they over-fit more than it did, the online ratio ranks rows by how much the
  *reference* models over-fit them — measured here, worse than chance.

Neither attack uses which rows were members; that is what lets :mod:`privacy.audit_bounds` turn
their guesses into a valid bound.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ATTACKS = ("loss", "lira")


def logits(model, x: np.ndarray, batch_size: int = 65536) -> np.ndarray:
    """The network's logit for every row of ``x`` (float64, shape ``(n,)``)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            chunk = torch.as_tensor(np.asarray(x[start:start + batch_size], dtype=np.float32))
            out.append(model(chunk).double().numpy().reshape(-1))
    return np.concatenate(out) if out else np.zeros(0)


def confidence(logit: np.ndarray, y: np.ndarray) -> np.ndarray:
    """φ = (2y − 1) · logit: the logit-scaled confidence in the true label (nats)."""
    return (2.0 * np.asarray(y, dtype=float) - 1.0) * np.asarray(logit, dtype=float)


def cross_entropy(logit: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row binary cross-entropy log(1 + e^{−φ}) (nats; numerically stable)."""
    return np.logaddexp(0.0, -confidence(logit, y))


def train_reference_models(spec, x: np.ndarray, y: np.ndarray, count: int, train_config, seed: int,
                           on_trained: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train ``count`` (even) reference models on complementary random halves of the rows.

    Model ``2j`` trains on half ``H_j`` (a fresh uniform half of the rows), model ``2j + 1``
    on its complement, each from its own initialisation, with ``models.training.train_local``
    and ``train_config`` (non-private). Returns ``(logits, inside)``, both ``(count, n)``:
    each model's logit on every row, and whether the row was in that model's training half.
    ``on_trained(done, count)`` is called after each model.
    """
    import torch

    from models.network import build_model
    from models.training import train_local

    if count < 2 or count % 2:
        raise ValueError(f"reference models come in complementary pairs: need an even count ≥ 2, got {count}")
    n = len(x)
    rng = np.random.default_rng([seed, 0xA0D17])
    out = np.zeros((count, n))
    inside = np.zeros((count, n), dtype=bool)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small steps: more intra-op threads only add synchronisation (10× slower under load)
    try:
        for j in range(count):
            if j % 2 == 0:
                half = np.zeros(n, dtype=bool)
                half[rng.permutation(n)[: n // 2]] = True
            inside[j] = half if j % 2 == 0 else ~half
            model = build_model(spec, seed=int(rng.integers(2**31)))
            train_local(model, x[inside[j]], y[inside[j]], train_config, seed=int(rng.integers(2**31)))
            out[j] = logits(model, x)
            if on_trained is not None:
                on_trained(j + 1, count)
    finally:
        torch.set_num_threads(threads)
    return out, inside


def out_mean_logit(reference_logits: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Per row, the mean logit of the reference models that did not train on it."""
    out = ~inside
    return np.where(out, reference_logits, 0.0).sum(axis=0) / np.maximum(out.sum(axis=0), 1)


def align_to_target(out_logit: np.ndarray, target_logit: np.ndarray) -> np.ndarray:
    """``a + b · z̄_out``: the least-squares affine prediction of the target's logit from the
    reference models' mean out-logit, over all rows. Unchanged when the fit is not increasing
    (``b ≤ 0``: the reference models and the target have nothing in common to align on)."""
    design = np.column_stack([np.ones_like(out_logit), out_logit])
    (a, b), *_ = np.linalg.lstsq(design, np.asarray(target_logit, dtype=float), rcond=None)
    if not (np.isfinite(a) and np.isfinite(b)) or b <= 0:
        return out_logit
    return a + b * out_logit


def attack_scores(target_logit: np.ndarray, y: np.ndarray, reference_logits: np.ndarray | None,
                  inside: np.ndarray | None) -> dict[str, np.ndarray]:
    """``{"loss": …, "lira": …}`` scores of every row (``lira`` only with reference models)."""
    target_phi = confidence(target_logit, y)
    scores = {"loss": target_phi}
    if reference_logits is not None and len(reference_logits):
        expected = align_to_target(out_mean_logit(reference_logits, inside), target_logit)
        scores["lira"] = target_phi - confidence(expected, y)
    return scores
