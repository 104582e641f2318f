"""A member's DP drift release to the operator: noised score-band counts, spent on its own ledger.

Optional and on the member's decision (``fedcredit drift release``). From a table it monitors
(applicants, like ``fedcredit monitor``) or backtests (a book with outcomes, like ``fedcredit
backtest``), scored with the package, it releases the cells of
:data:`privacy.dp_release.DRIFT_CELLS` over the package's development score bands
(:func:`models.score_bands.development_bands`) through the Gaussian mechanism
(:func:`privacy.dp_release.release_drift`). The event is recorded in the institution's
lifetime ledger in its node state directory — the same accountant and budget as training,
checked prospectively: a release that would exceed the budget is refused and nothing is
written. The noise comes from the operating system (a fresh draw for every release). The file
(:mod:`fedcredit.drift_file`) is written only after the event is on disk, and is signed with the
node key when the member gives it.

The event reads the institution's borrowers without a side of the node's split (the monitored
rows are not the training table's), so it composes with every other release.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from configs.errors import UserError


def open_member_ledger(state_dir: str | Path):
    """The institution's ledger under its node's ``state-dir``, opened with the policy the node last
    recorded (institution id, max ε, δ, accountant); :class:`UserError` when it released nothing yet."""
    from privacy.ledger import PrivacyLedger
    from privacy.status import read_state

    (state,) = read_state(state_dir) or [None]
    if state is None:
        raise UserError(f"{state_dir}: this node state holds no privacy ledger yet (nothing was released from it); "
                        "give the 'state-dir' of the node that took part in the consortium's runs")
    return PrivacyLedger.open(state_dir, institution_id=state["institution_id"], max_epsilon=state["max_epsilon"],
                              delta=None, accountant=state["accountant"])


def drift_release(scored, state_dir: str | Path, *, with_outcomes: bool, noise_multiplier: float,
                  period: str = "", key: str | None = None, rng: np.random.Generator | None = None) -> dict:
    """The release file's body (see :mod:`fedcredit.drift_file`) of one scored table, its event
    recorded in the ledger first. ``rng`` None: OS randomness (tests may pass a seeded one)."""
    from fedcredit.drift_file import DRIFT_FORMAT, bands_record, canonical_bytes
    from models.drift_view import band_cells, package_identity
    from models.score_bands import development_bands
    from privacy.dp_release import drift_sensitivity, release_drift
    from privacy.ledger import now

    pkg = scored.package
    if pkg.reference is None or not pkg.reference.has_scores:
        raise UserError("the model package carries no development score distribution (reference.json with score "
                        "histograms), so it has no public score bands to release counts over; use a package "
                        "exported by a current fedcredit run")
    signing_key = None
    if key:  # read before anything is spent
        from fedcredit.node_signatures import load_node_private_key

        signing_key = load_node_private_key(key)
    bands = development_bands(pkg.reference)
    cells = band_cells(bands, scored.pd, scored.outcomes if with_outcomes else None)
    with open_member_ledger(state_dir) as ledger:
        noisy, event = release_drift(cells, noise_multiplier, rng if rng is not None else np.random.default_rng())
        # not the package's run id: the event is no part of that run (a run's own events count
        # against its target-epsilon when the node plans it)
        event.detail += f"; scored with the model of run {pkg.meta.get('run_id', '?')}"
        before = ledger.spent()
        spent = ledger.record([event])  # persisted before anything is written for the operator
        privacy = {"event": event.to_dict(), "epsilon_before": before, "epsilon_spent": spent, "epsilon_budget": ledger.max_epsilon,
                   "delta": ledger.delta, "accountant": ledger.accountant}
        institution = ledger.institution_id
    sensitivity = drift_sensitivity(with_outcomes)
    body = {"format": DRIFT_FORMAT, "institution": institution, "created": now(), "period": period,
            "kind": "outcomes" if with_outcomes else "population",
            "model": package_identity(pkg),
            "bands": bands_record(bands),
            "noise": {"mechanism": "gaussian", "multiplier": float(noise_multiplier), "sensitivity": sensitivity,
                      "std_per_cell": float(noise_multiplier) * sensitivity},
            "cells": {k: [float(x) for x in v] for k, v in noisy.items()}, "privacy": privacy}
    if signing_key is not None:
        from fedcredit.node_signatures import sign_with_node_key

        body["signature"] = sign_with_node_key(signing_key, canonical_bytes(body))
    return body
