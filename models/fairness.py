"""Fairness figures computed federatedly from group-level counts.

For every protected attribute of the schema (a categorical feature: one group per category; a
numeric one: one group per declared band, e.g. ages 18–24, 25–34, …) each node counts, on its
holdout and at the cut-off PD, per group

    n            rows
    defaults     rows that defaulted (label = positive)
    declined     rows the model declines (PD ≥ cut-off)
    declined_def declined rows that defaulted

— four numbers per group, which sum across nodes. From the pooled counts:

* approval rate           = 1 − declined / n
* TPR (decline | default) = declined_def / defaults           (defaulters caught)
* FPR (decline | good)    = (declined − declined_def) / (n − defaults)  (good borrowers declined)
* demographic-parity difference = max − min approval rate over the groups
* equal-opportunity difference  = max − min approval rate among good borrowers (1 − FPR):
  the opportunity at stake in lending is a good borrower's chance to be approved.

One borrower changes one group's four counts by at most 1 each, so the L2 sensitivity of one
attribute's count matrix is 2.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from configs.schema import Feature, Schema

COUNT_COLUMNS = ("n", "defaults", "declined", "declined_defaults")
FAIRNESS_SENSITIVITY_PER_ATTRIBUTE = 2.0


def group_labels(f: Feature) -> list[str]:
    """Names of the groups of a protected feature (categories, or bands like '25–34')."""
    if f.kind == "categorical":
        return list(f.categories)
    b = [int(v) if float(v).is_integer() else v for v in f.bands]
    labels = [f"{lo}–{(hi - 1) if isinstance(hi, int) else hi}" for lo, hi in zip(b[:-1], b[1:])]
    return labels + [f"{b[-1]}+"]


def group_index(f: Feature, column: pd.Series) -> np.ndarray:
    if f.kind == "categorical":
        lookup = {c: i for i, c in enumerate(f.categories)}
        return column.map(lookup).to_numpy(dtype=np.int64)
    edges = np.asarray(f.bands, dtype=float)
    return np.clip(np.searchsorted(edges, column.to_numpy(dtype=float), side="right") - 1, 0, len(edges) - 1)


def group_counts(table: pd.DataFrame, pd_values: np.ndarray, y: np.ndarray, schema: Schema,
                 cutoff_pd: float) -> dict[str, np.ndarray]:
    """Per protected attribute a (groups × 4) matrix of the counts in the module docstring."""
    declined = np.asarray(pd_values) >= cutoff_pd
    y = np.asarray(y).astype(bool)
    out = {}
    for f in schema.protected_features:
        g = group_index(f, table[f.name])
        k = len(group_labels(f))
        cols = [np.ones_like(declined), y, declined, declined & y]
        out[f.name] = np.stack([np.bincount(g, weights=c.astype(float), minlength=k) for c in cols], axis=1)
    return out


def _ratio(a: float, b: float) -> float | None:
    """a / b clipped to [0, 1] (noised counts can put a part above its whole); None when b ≤ 0."""
    return float(np.clip(a / b, 0.0, 1.0)) if b > 0 else None


def fairness_metrics(counts: dict[str, np.ndarray], schema: Schema) -> dict:
    """Per attribute: per-group rates and the two differences (JSON-ready; None where undefined)."""
    out = {}
    for f in schema.protected_features:
        if f.name not in counts:
            continue
        m = np.clip(np.asarray(counts[f.name], dtype=float), 0, None)
        groups = []
        for label, (n, dflt, dec, dec_d) in zip(group_labels(f), m):
            dec_d, dec = min(dec_d, dec), min(dec, n)
            fpr = _ratio(dec - dec_d, n - dflt)
            groups.append({
                "group": label, "n": float(n), "defaults": float(dflt),
                "approval_rate": None if n <= 0 else 1.0 - dec / n,
                "tpr": _ratio(dec_d, dflt), "fpr": fpr,
                "good_approval_rate": None if fpr is None else 1.0 - fpr,
            })
        appr = [g["approval_rate"] for g in groups if g["approval_rate"] is not None]
        good = [g["good_approval_rate"] for g in groups if g["good_approval_rate"] is not None]
        out[f.name] = {
            "groups": groups,
            "demographic_parity_difference": (max(appr) - min(appr)) if len(appr) > 1 else None,
            "equal_opportunity_difference": (max(good) - min(good)) if len(good) > 1 else None,
        }
    return out
