"""A privacy event: one release of an institution's node, as its ledger records it.

Every release that touches borrower records is ``steps`` applications of the (Poisson
subsampled, rate ``q``) Gaussian mechanism with noise multiplier ``σ`` = noise standard
deviation / L2 sensitivity. A one-shot Gaussian release over the whole row set is
``q = 1, steps = 1``.

Besides the mechanism, an event names what it read, which is what parallel composition
needs (:mod:`privacy.composition`):

* ``rows`` — the disjoint part of the table: ``"train"`` or ``"holdout"`` ("" = all rows);
* ``split`` — the rule that defines those parts (:func:`clients.dataset.split_id`);
* ``data`` — the version of the table (its fingerprint, :func:`clients.dataset.data_fingerprint`):
  inside one version each borrower is on one side; across versions a borrower whose row
  changed may be on the other side.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Sequence

#: statistics (feature counts), train (DP-SGD), evaluation (holdout histograms), count (row counts),
#: drift (score-band counts of a monitored population, released to the operator: privacy.dp_release.release_drift)
EVENT_KINDS = ("train", "statistics", "evaluation", "count", "drift")
ROW_SETS = ("train", "holdout")


@dataclass
class PrivacyEvent:
    """One release: ``steps`` applications of the Gaussian mechanism with noise multiplier
    ``noise_multiplier`` (noise std / L2 sensitivity) on a Poisson subsample of rate
    ``sample_rate`` (1.0 for a release over the whole row set); see the module docstring."""

    kind: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    run_id: str = ""
    round: int | None = None
    time: str = ""
    detail: str = ""
    rows: str = ""   # which disjoint part of the dataset it read: "train", "holdout", or "" (all rows)
    split: str = ""  # identity of the train/holdout split that defines those parts
    data: str = ""   # the data version (table fingerprint) whose split defines the parts

    def __post_init__(self) -> None:
        problem = event_problem(self)
        if problem:
            raise ValueError(f"invalid privacy event: {problem}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PrivacyEvent":
        names = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or set(d) - names or not {"kind", "noise_multiplier", "sample_rate", "steps"} <= set(d):
            raise ValueError(f"not a privacy event: {d!r}")
        return cls(**d)

    @property
    def sided(self) -> bool:
        """True when the event read one side of a named split of a named data version."""
        return self.rows in ROW_SETS and bool(self.split) and bool(self.data)


def event_problem(e: PrivacyEvent) -> str:
    """Why ``e`` is not a valid event ("" when it is)."""
    if e.kind not in EVENT_KINDS:
        return f"kind must be one of {EVENT_KINDS}, got {e.kind!r}"
    for name in ("noise_multiplier", "sample_rate"):
        v = getattr(e, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"{name} must be a finite number, got {v!r}"
    if e.noise_multiplier <= 0:
        return f"noise_multiplier must be > 0, got {e.noise_multiplier}"
    if not 0 < e.sample_rate <= 1:
        return f"sample_rate must be in (0, 1], got {e.sample_rate}"
    if isinstance(e.steps, bool) or not isinstance(e.steps, int) or e.steps < 1:
        return f"steps must be a positive integer, got {e.steps!r}"
    if e.round is not None and (isinstance(e.round, bool) or not isinstance(e.round, int)):
        return f"round must be an integer or null, got {e.round!r}"
    for name in ("run_id", "time", "detail", "rows", "split", "data"):
        if not isinstance(getattr(e, name), str):
            return f"{name} must be a string"
    return ""


def events_digest(events: Sequence[PrivacyEvent]) -> str:
    """sha256 of the canonical JSON of the events (sorted keys, no spaces).

    Events recorded before the ``data`` field existed hash as they were written (an empty
    ``data`` is left out), so the digests stored by earlier versions still verify.
    """
    blob = json.dumps([_canonical(e) for e in events], sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _canonical(e: PrivacyEvent) -> dict:
    d = e.to_dict()
    if not d["data"]:
        del d["data"]
    return d
