"""Migration of privacy state written by earlier versions: one ledger per table version → one per institution.

Earlier versions of the node kept one ledger per table fingerprint (``<fingerprint>.json``), so a
re-exported table started from zero. :func:`merge_legacy_states` folds every such file into
the institution's single ledger: all events, in time order, each tagged with the fingerprint
of the table version it read (so parallel composition stays exact inside a version and
conservative across versions, :mod:`privacy.composition`); the smallest δ any of them used
(a stronger statement; never a larger one); every policy change, annotated with its
fingerprint; and a ``migrated`` entry per file (its event count and sha256) so that the same
file is never counted twice. No spend is lost.
"""

from __future__ import annotations

from privacy.events import PrivacyEvent


def _tagged(event: PrivacyEvent, fingerprint: str) -> PrivacyEvent:
    d = event.to_dict()
    if d["rows"] and d["split"] and not d["data"]:
        d["data"] = fingerprint
    return PrivacyEvent(**d)


def _first_time(state: dict) -> str:
    times = [e.time for e in state["events"] if e.time] + [h.get("time", "") for h in state["policy_history"]]
    return min((t for t in times if t), default="")


def merge_legacy_states(state: dict | None, legacy: list[dict], stamp: str) -> dict:
    """``state`` (the institution's ledger, or None) with the validated legacy files ``legacy``
    (:func:`privacy.state_files.legacy_states`) folded in; see the module docstring."""
    legacy = sorted(legacy, key=_first_time)
    newest = max(legacy, key=lambda s: max([e.time for e in s["events"]] + [_first_time(s)]))
    base = dict(state) if state is not None else {
        "institution_id": newest["institution_id"], "max_epsilon": newest["max_epsilon"],
        "accountant": newest["accountant"], "events": [], "policy_history": [], "versions": {}, "migrated": {},
        "populations": [{"started": _first_time(legacy[0]) or stamp, "reason": "created", "first_event": 0}]}
    population = len(base["populations"]) - 1
    events, history = [], list(base["policy_history"])
    versions, migrated = dict(base["versions"]), dict(base.get("migrated", {}))
    for s in legacy:
        fp = s["fingerprint"]
        events += [_tagged(e, fp) for e in s["events"]]
        splits = sorted({e.split for e in s["events"] if e.split})
        versions[fp] = {"schema_key": s["schema_key"], "split": splits[0] if len(splits) == 1 else "",
                        "first_seen": _first_time(s), "population": population, "format": "fedcredit-privacy-state/1"}
        migrated[fp] = {"events": len(s["events"]), "events_sha256": s["events_sha256"]}
        history += [{**h, "fingerprint": fp} for h in s["policy_history"]]
    events.sort(key=lambda e: e.time)  # stable: the order within one file is kept for equal times
    history.append({"time": stamp, "change": "migrated", "fingerprints": [s["fingerprint"] for s in legacy],
                    "events": len(events)})
    deltas = [float(s["delta"]) for s in legacy] + ([float(base["delta"])] if base.get("delta") else [])
    return {**base, "delta": min(deltas), "events": list(base["events"]) + events, "policy_history": history,
            "versions": versions, "migrated": migrated}
