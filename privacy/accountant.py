"""The institution's privacy accountant: one entry point over the modules that do the work.

Like ``opacus.privacy_engine`` in front of Opacus's accountants, this module only gathers
names; each concept lives in its own module:

* :mod:`privacy.events` — :class:`PrivacyEvent`, one release ``(σ, q, steps)`` and what it read;
* :mod:`privacy.composition` — ε mathematics: :func:`compute_epsilon` (Opacus RDP/PRV
  accountants, sequential and parallel composition across data versions);
* :mod:`privacy.ledger` — :class:`PrivacyLedger`, the institution's lifetime budget: policy,
  prospective checks, recording, fresh starts;
* :mod:`privacy.state_files` — atomic files, locks, the index, validation;
  :mod:`privacy.migration` — state of earlier versions folded into the ledger;
* :mod:`privacy.status` — :func:`read_state`, the read-only view ``privacy status`` prints;
* :mod:`privacy.errors` — :class:`BudgetExceeded`, :class:`PrivacyStateError`,
  :class:`PrivacyPolicyConflict`.

Unit of privacy: one borrower record of one institution (add/remove adjacency); see
docs/privacy.md for the threat model and what each release reveals.
"""

from __future__ import annotations

from privacy.composition import (
    ACCOUNTANTS,
    accountant_history,
    compute_epsilon,
    disjoint_sides,
    epsilon_of_history,
    side_epsilons,
)
from privacy.errors import BudgetExceeded, PrivacyPolicyConflict, PrivacyStateError
from privacy.events import EVENT_KINDS, ROW_SETS, PrivacyEvent, events_digest
from privacy.ledger import PrivacyLedger
from privacy.status import read_state

__all__ = [
    "ACCOUNTANTS", "EVENT_KINDS", "ROW_SETS", "BudgetExceeded", "PrivacyEvent", "PrivacyLedger",
    "PrivacyPolicyConflict", "PrivacyStateError", "accountant_history", "compute_epsilon", "disjoint_sides",
    "epsilon_of_history", "events_digest", "read_state", "side_epsilons",
]
