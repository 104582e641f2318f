"""What an institution's privacy state says, read-only: ε spent in total and per side, per population.

:func:`read_state` is what ``fedcredit privacy status`` and the model card show; it takes no
lock and writes nothing (state of an earlier version is migrated in memory only), so it is
safe while the node runs. ε is recomputed from the stored events, as the node does.
"""

from __future__ import annotations

from pathlib import Path

from privacy import state_files as F
from privacy.composition import compute_epsilon, side_epsilons
from privacy.errors import PrivacyStateError
from privacy.events import PrivacyEvent


def _epsilons(events: list[PrivacyEvent], delta: float, accountant: str) -> dict:
    sides = side_epsilons(events, delta, accountant) if events else {"train": 0.0, "holdout": 0.0}
    return {"epsilon_spent": compute_epsilon(events, delta, accountant) if events else 0.0,
            "epsilon_train_side": sides["train"], "epsilon_holdout_side": sides["holdout"]}


def summarise(state: dict) -> dict:
    """The JSON-ready summary of a ledger state (:func:`privacy.ledger.load_state`)."""
    pops = state["populations"]
    start = int(pops[-1]["first_event"])
    all_events = state["events"]
    delta, accountant = state["delta"], state["accountant"]
    current = all_events[start:]
    figures = _epsilons(current, delta, accountant)
    earlier = []
    for i, p in enumerate(pops[:-1]):
        evs = all_events[int(p["first_event"]):int(pops[i + 1]["first_event"])]
        earlier.append({"started": p["started"], "reason": p.get("reason", ""), "events": len(evs),
                        **_epsilons(evs, delta, accountant)})
    versions = state["versions"]
    used = [e.data for e in all_events if e.data in versions]  # the version of the latest release, else the newest
    latest = used[-1] if used else max(versions, key=lambda k: versions[k].get("first_seen", ""), default="")
    return {
        "institution_id": state["institution_id"],
        "fingerprint": latest,
        "schema_key": (versions.get(latest) or {}).get("schema_key", ""),
        "accountant": accountant,
        "delta": delta,
        "max_epsilon": state["max_epsilon"],
        **figures,
        "epsilon_remaining": max(0.0, state["max_epsilon"] - figures["epsilon_spent"]),
        "population_started": pops[-1]["started"],
        "earlier_populations": earlier,
        "data_versions": versions,
        "events": [e.to_dict() for e in current],
        "policy_history": state["policy_history"],
    }


def read_state(state_dir: str | Path) -> list[dict]:
    """The institution's privacy state under ``state_dir`` as a one-entry list (the lifetime
    ledger; empty when nothing was ever recorded). Raises :class:`PrivacyStateError` for a
    damaged or missing state, like the node would."""
    from privacy.ledger import load_state

    root = Path(state_dir).expanduser()
    if not root.is_dir():
        raise PrivacyStateError(f"{root}: no such directory; give the node's 'state-dir'")
    pdir = F.privacy_dir(root)
    if not pdir.is_dir():
        raise PrivacyStateError(f"{root}: holds no privacy state (no privacy/ folder); is this the node's 'state-dir'?")
    state = load_state(pdir)
    if state is None or state.get("delta") is None:
        return []
    return [summarise(state)]
