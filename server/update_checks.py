"""Checks every node reply before the server uses it: updates, statistics, evaluations.

An update is rejected — the node is recorded and the round goes on with the others — when

* its arrays do not have exactly the global model's names, shapes and dtype (a float16 or
  float64 update to a float32 model is rejected, not silently converted);
* any value is NaN or infinite;
* its L2 distance from the global model exceeds ``max-update-norm`` (when that bound is set).

An accepted update may then be clipped (:func:`clip_update`, run config ``clip-update-norm``):
its delta from the global model is scaled down to that L2 norm, so no single node can move the
model further than the bound in one round. The nodes' DP guarantee does not depend on it (it is
post-processing of what they released); it bounds the influence of a faulty or malicious node.

The other replies are checked the same way (:func:`check_statistics`, :func:`check_evaluation`):
one malformed reply — a missing key, a shortened vector, NaN — would otherwise stop the whole
run when the server sums it with the others. A rejected reply is left out and recorded (round
record, ``rejected-reply`` ledger entry); the run goes on while enough nodes answer. Counts must
not be negative in an exact release; a DP-noised release legitimately has negative cells
(:mod:`privacy.dp_release`), so there only finiteness and shapes are checked.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Message

from fedcredit import protocol as P

#: the ``release`` a node names in its evaluation reply (``node`` record); "off" sends no arrays
EVALUATION_RELEASES = ("exact", "noised")
EVALUATION_SUMS = 5  # n, positives, Σ PD, Σ Brier, Σ log loss (models.metrics.EvaluationSums)


def check_update(msg: Message, global_weights: dict[str, np.ndarray], max_norm: float = 0.0,
                 dtypes: dict[str, np.dtype] | None = None) -> str:
    """Empty string when the update is acceptable, else the reason it is rejected.

    ``dtypes``: the global model's parameter dtypes (default: those of ``global_weights``).
    """
    records = msg.content.array_records
    if P.ARRAYS not in records or len(records) != 1:
        return f"expected exactly one ArrayRecord '{P.ARRAYS}', got {sorted(records)}"
    if P.METRICS not in msg.content.metric_records or "num-examples" not in msg.content[P.METRICS]:
        return "no num-examples in the reply metrics"
    n = msg.content[P.METRICS]["num-examples"]
    if not isinstance(n, (int, float)) or not np.isfinite(n) or n <= 0:
        return f"num-examples must be a positive number, got {n!r}"
    update, problem = _decode(msg, P.ARRAYS)
    if problem:
        return problem
    if set(update) != set(global_weights):
        return f"array names differ from the global model: {sorted(set(update) ^ set(global_weights))}"
    sq = 0.0
    for k, ref in global_weights.items():
        a = update[k]
        if a.shape != ref.shape:
            return f"array '{k}' has shape {a.shape}, expected {ref.shape}"
        want = np.dtype((dtypes or {}).get(k, ref.dtype))
        if a.dtype.kind != "f":
            return f"array '{k}' has dtype {a.dtype}, expected a float type ({want}, the global model's)"
        if a.dtype != want:
            return f"array '{k}' has dtype {a.dtype}, expected {want} (the global model's dtype)"
        if not np.all(np.isfinite(a)):
            return f"array '{k}' contains NaN or infinite values"
        sq += float(np.sum((a.astype(np.float64) - ref) ** 2))
    norm = float(np.sqrt(sq))
    if max_norm > 0 and norm > max_norm:
        return f"update norm {norm:.4g} exceeds the bound max-update-norm = {max_norm:g}"
    return ""


def clip_update(msg: Message, global_weights: dict[str, np.ndarray], clip_norm: float) -> float | None:
    """Scale the delta of ``msg``'s update down to L2 norm ``clip_norm`` in place.

    Returns the norm before clipping when the update was clipped, else None (norm within bound).
    """
    update = P.from_array_record(msg.content[P.ARRAYS])
    norm = float(np.sqrt(sum(float(np.sum((update[k].astype(np.float64) - ref) ** 2))
                             for k, ref in global_weights.items())))
    if clip_norm <= 0 or norm <= clip_norm:
        return None
    scale = clip_norm / norm
    clipped = {k: (ref + scale * (update[k].astype(np.float64) - ref)).astype(update[k].dtype)
               for k, ref in global_weights.items()}
    msg.content[P.ARRAYS] = P.to_array_record(clipped)
    return norm


def _num_examples_problem(msg: Message) -> str:
    if P.METRICS not in msg.content.metric_records or "num-examples" not in msg.content[P.METRICS]:
        return "no num-examples in the reply metrics"
    n = msg.content[P.METRICS]["num-examples"]
    if not isinstance(n, (int, float)) or not np.isfinite(n) or n < 0:
        return f"num-examples must be a number ≥ 0, got {n!r}"
    return ""


def _array_problem(what: str, a: np.ndarray, shape: tuple[int, ...], exact: bool) -> str:
    """'' when ``a`` has ``shape``, a float dtype and finite values (and none negative when ``exact``)."""
    if a.shape != shape:
        return f"{what} has shape {a.shape}, expected {shape}"
    if a.dtype.kind != "f":
        return f"{what} has dtype {a.dtype}, expected a float type"
    if not np.all(np.isfinite(a)):
        return f"{what} contains NaN or infinite values"
    if exact and np.any(a < 0):
        return f"{what} holds negative counts or sums in an exact (not noised) release"
    return ""


def _decode(msg: Message, key: str) -> tuple[dict[str, np.ndarray] | None, str]:
    records = msg.content.array_records
    if key not in records or len(records) != 1:
        return None, f"expected exactly one ArrayRecord '{key}', got {sorted(records)}"
    try:
        return P.from_array_record(records[key]), ""
    except Exception as exc:  # undecodable bytes
        return None, f"arrays cannot be decoded ({type(exc).__name__})"


def _reply_arrays(msg: Message, key: str) -> tuple[dict, str]:
    """The reply's named arrays under ``key`` and ``""``, or ``({}, why)`` when its example count
    or its arrays are unusable."""
    problem = _num_examples_problem(msg)
    return ({}, problem) if problem else _decode(msg, key)


def _names_problem(what: str, got: set[str], required: set[str], optional: frozenset | set = frozenset()) -> str:
    """Empty string when ``got`` holds every ``required`` name and nothing beyond ``optional``,
    else ``what`` with the missing and the unexpected names."""
    missing, extra = sorted(required - got), sorted(got - required - set(optional))
    if not missing and not extra:
        return ""
    parts = ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else [])
    return f"{what}: {'; '.join(parts)}"


def check_statistics(msg: Message, layout: dict[str, int], exact: bool) -> str:
    """Empty string when a statistics reply can be summed with the others, else why not.

    ``layout``: feature → length of its count vector (:func:`models.encoder.statistics_layout`
    of the run's schema); ``exact``: the release is not DP-noised (run config ``dp = false``),
    so no count may be negative.
    """
    stats, problem = _reply_arrays(msg, P.STATS)
    if problem:
        return problem
    problem = _names_problem("features differ from the schema's statistics layout", set(stats), set(layout))
    if problem:
        return problem
    for name, size in layout.items():
        problem = _array_problem(f"statistics of '{name}'", stats[name], (size,), exact)
        if problem:
            return problem
    return ""


def evaluation_bin_counts() -> tuple[int, ...]:
    """Histogram lengths a node may release: exact (``SCORE_BINS``) or noised (one of
    ``EVALUATION_BIN_CHOICES``, chosen by the node from its released holdout count).

    Each divides the next, so the server pools a mix of them at the coarsest resolution
    (:func:`models.metrics.sum_evaluations`); any other length could not be pooled.
    """
    from models.metrics import SCORE_BINS
    from privacy.noise_defaults import EVALUATION_BIN_CHOICES

    return (SCORE_BINS, *EVALUATION_BIN_CHOICES)


def fairness_layout(schema) -> dict[str, tuple[int, int]]:
    """``fair/<attribute>`` → shape of its group-count matrix (groups × 4, :mod:`models.fairness`)."""
    from models.fairness import COUNT_COLUMNS, group_labels

    return {f"fair/{f.name}": (len(group_labels(f)), len(COUNT_COLUMNS)) for f in schema.protected_features}


def check_evaluation(msg: Message, fairness: dict[str, tuple[int, int]],
                     bin_counts: tuple[int, ...] | None = None) -> str:
    """Empty string when an evaluation reply (with arrays ``eval``) can be pooled, else why not.

    Expected: ``hist-neg`` and ``hist-pos`` of one length from ``bin_counts`` (default
    :func:`evaluation_bin_counts`), ``sums`` (five numbers), optionally the ``fair/…`` matrices
    of ``fairness`` (:func:`fairness_layout`); finite values; the reply's ``release`` one of
    :data:`EVALUATION_RELEASES`, and with ``exact`` no negative count or sum.
    """
    release = str(P.node_info(msg).get("release", "exact"))
    if release not in EVALUATION_RELEASES:
        return f"unknown evaluation release {release[:40]!r}, expected one of {', '.join(EVALUATION_RELEASES)}"
    exact = release == "exact"
    arrays, problem = _reply_arrays(msg, P.EVAL)
    if problem:
        return problem
    required = {"hist-neg", "hist-pos", "sums"}
    problem = _names_problem("evaluation arrays differ from the protocol", set(arrays), required,
                             optional=set(fairness))
    if problem:
        return problem
    bins = len(arrays["hist-neg"]) if arrays["hist-neg"].ndim == 1 else -1
    allowed = bin_counts or evaluation_bin_counts()
    if bins not in allowed:
        return (f"score histogram 'hist-neg' has shape {arrays['hist-neg'].shape}, expected one of "
                f"{', '.join(f'({b},)' for b in allowed)} bins")
    shapes = {"hist-neg": (bins,), "hist-pos": (bins,), "sums": (EVALUATION_SUMS,),
              **{k: fairness[k] for k in arrays if k in fairness}}
    for key, shape in shapes.items():
        # Σ PD, Σ Brier and the log-loss sum are noised too: only the exact release is ≥ 0 throughout
        problem = _array_problem(f"evaluation array '{key}'", arrays[key], shape, exact)
        if problem:
            return problem
    return ""
