"""Checks every update before it is aggregated.

An update is rejected — the node is recorded and the round goes on with the others — when

* its arrays do not have exactly the global model's names, shapes and float dtype;
* any value is NaN or infinite;
* its L2 distance from the global model exceeds ``max-update-norm`` (when that bound is set).

An accepted update may then be clipped (:func:`clip_update`, run config ``clip-update-norm``):
its delta from the global model is scaled down to that L2 norm, so no single node can move the
model further than the bound in one round. The nodes' DP guarantee does not depend on it (it is
post-processing of what they released); it bounds the influence of a faulty or malicious node.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Message

from fedcredit import protocol as P


def check_update(msg: Message, global_weights: dict[str, np.ndarray], max_norm: float = 0.0) -> str:
    """Empty string when the update is acceptable, else the reason it is rejected."""
    records = msg.content.array_records
    if P.ARRAYS not in records or len(records) != 1:
        return f"expected exactly one ArrayRecord '{P.ARRAYS}', got {sorted(records)}"
    if P.METRICS not in msg.content.metric_records or "num-examples" not in msg.content[P.METRICS]:
        return "no num-examples in the reply metrics"
    n = msg.content[P.METRICS]["num-examples"]
    if not isinstance(n, (int, float)) or not np.isfinite(n) or n <= 0:
        return f"num-examples must be a positive number, got {n!r}"
    try:
        update = P.from_array_record(records[P.ARRAYS])
    except Exception as exc:  # undecodable bytes
        return f"arrays cannot be decoded ({type(exc).__name__})"
    if set(update) != set(global_weights):
        return f"array names differ from the global model: {sorted(set(update) ^ set(global_weights))}"
    sq = 0.0
    for k, ref in global_weights.items():
        a = update[k]
        if a.shape != ref.shape:
            return f"array '{k}' has shape {a.shape}, expected {ref.shape}"
        if a.dtype.kind != "f":
            return f"array '{k}' has dtype {a.dtype}, expected a float type"
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
