"""The institution's lifetime privacy ledger: every release of its node, one budget.

Unit of privacy: one borrower record of the institution (add/remove adjacency). The ledger
lives in the node's state directory and composes *every* release the node ever made from it —
feature statistics, row counts, all DP-SGD steps of all rounds of all runs, evaluations —
whatever version of the table each used: a re-export, a dropped row or re-keyed ids do not
reset the borrowers' protection. Each event records the data version it read
(:class:`privacy.events.PrivacyEvent`), which is what lets training and holdout releases
compose in parallel inside a version and conservatively across versions
(:mod:`privacy.composition`).

A **fresh start** — the institution's borrowers are a wholly new population, e.g. a new
business line — is an explicit act: :meth:`PrivacyLedger.new_population` (``fedcredit privacy
new-population``) records it with a reason; the budget then counts the events recorded after
it, the earlier ones stay in the file, and a table version used before the fresh start is
refused afterwards.

Policy (from the node config; every change is recorded in ``policy_history``)
----------------------------------------------------------------------------
* ``max_epsilon`` may change between opens; ε spent is always recomputed from the events, so
  lowering the budget below the spend stops all further releases.
* δ: the first δ is kept. The node config may ask for a *smaller* δ (all events are then
  re-accounted at it; ε spent grows); a *larger* one is refused (:class:`PrivacyPolicyConflict`).
  Without a δ in the node config a new ledger takes the one the node derives from its released
  row count (:meth:`adopt_delta`) and keeps it.
* The accountant (``rdp`` or ``prv``) may change; ε is recomputed over all events.

Fail closed: :meth:`PrivacyLedger.record` persists before it returns, and the node releases a
result only after ``record`` returned. Any problem with the state is a
:class:`PrivacyStateError` raised before anything is released (:mod:`privacy.state_files`).
"""

from __future__ import annotations

import contextlib
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from configs.errors import UserError
from privacy import state_files as F
from privacy.composition import ACCOUNTANTS, compute_epsilon
from privacy.errors import BudgetExceeded, PrivacyPolicyConflict, PrivacyStateError
from privacy.events import PrivacyEvent, events_digest
from privacy.migration import merge_legacy_states

DEFAULT_LOCK_TIMEOUT = 10.0
_TOLERANCE = 1e-9


def now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _check_policy(max_epsilon, delta, accountant) -> None:
    if isinstance(max_epsilon, bool) or not isinstance(max_epsilon, (int, float)) or not math.isfinite(max_epsilon) \
            or max_epsilon <= 0:
        raise UserError(f"max-epsilon must be a positive number, got {max_epsilon!r}")
    if delta is not None and (isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1):
        raise UserError(f"delta must be a number in (0, 1), got {delta!r}")
    if accountant not in ACCOUNTANTS:
        raise UserError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")


class PrivacyLedger:
    """The lifetime privacy spend of one institution, persisted and locked.

    Use as a context manager (``with PrivacyLedger.open(...) as ledger:``); the exclusive lock
    on the state is held until :meth:`close`.
    """

    def __init__(self, state: dict, pdir: Path, fd: int, lock_timeout: float):  # use PrivacyLedger.open
        self._dir, self._fd, self._lock_timeout = pdir, fd, lock_timeout
        self._path = pdir / F.LEDGER_FILE
        self.institution_id: str = state["institution_id"]
        self.max_epsilon: float = float(state["max_epsilon"])
        self.delta: float | None = None if state["delta"] is None else float(state["delta"])
        self.accountant: str = state["accountant"]
        self.all_events: list[PrivacyEvent] = list(state["events"])
        self.policy_history: list[dict] = list(state["policy_history"])
        self.versions: dict[str, dict] = dict(state["versions"])
        self.populations: list[dict] = list(state["populations"])
        self.migrated: dict[str, dict] = dict(state.get("migrated", {}))
        self.data_version = ""
        self._spent: float | None = None

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def open(cls, state_dir: str | Path, *, institution_id: str, max_epsilon: float, delta: float | None = None,
             accountant: str = "rdp", fingerprint: str = "", schema_key: str = "", split: str = "",
             lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> "PrivacyLedger":
        """Open (creating or migrating if needed) the ledger under ``state_dir/privacy``.

        ``fingerprint`` names the table version the caller reads (recorded with its events;
        ``schema_key`` and ``split`` are noted beside it). ``delta`` None keeps the stored δ
        (a new ledger then waits for :meth:`adopt_delta`). Raises :class:`PrivacyStateError`
        when the directory is not writable, the state is damaged or missing, or another
        process holds the lock after ``lock_timeout`` seconds; :class:`PrivacyPolicyConflict`
        for a larger δ or a table version of an earlier population.
        """
        _check_policy(max_epsilon, delta, accountant)
        pdir = F.privacy_dir(state_dir)
        try:
            pdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PrivacyStateError(f"{pdir}: cannot create the privacy state directory ({exc.strerror or exc}); "
                                    "give the node a writable 'state-dir' — nothing is trained or released "
                                    "until its privacy spend can be recorded") from None
        fd = F.open_lock(pdir / F.LOCK_FILE, lock_timeout, "the institution's privacy state")
        try:
            state, fresh = _load(pdir, institution_id, max_epsilon, delta, accountant)
            self = cls(state, pdir, fd, lock_timeout)
        except BaseException:
            F.release_lock(fd)
            raise
        try:
            changed = self._apply_policy(institution_id, float(max_epsilon), delta, accountant) or fresh
            if fingerprint:
                changed = self._use_version(fingerprint, schema_key, split) or changed
            if changed and self.delta is not None:
                self._persist()
        except BaseException:
            self.close()
            raise
        return self

    def _apply_policy(self, institution_id: str, max_epsilon: float, delta: float | None, accountant: str) -> bool:
        if delta is not None and self.delta is not None and delta > self.delta * (1 + 1e-12):
            raise PrivacyPolicyConflict(
                f"{self._path}: this institution's privacy spend is accounted at δ = {self.delta:g}; the node config "
                f"asks for δ = {delta:g}. A larger δ would weaken the guarantee already given for past releases, "
                f"so it is refused: set the node's delta to {self.delta:g} or smaller")
        change: dict = {}
        if delta is not None and (self.delta is None or delta < self.delta):
            change["delta"] = delta
        for key, value in (("max_epsilon", max_epsilon), ("accountant", accountant), ("institution_id", institution_id)):
            if value != getattr(self, key):
                change[key] = value
        if not change:
            return False
        if self.all_events or self.delta is not None:
            self.policy_history.append({"time": now(), "change": "policy", **change,
                                        "previous": {k: getattr(self, k) for k in change}})
        for k, v in change.items():
            setattr(self, k, v)
        self._spent = None
        return True

    def _use_version(self, fingerprint: str, schema_key: str, split: str) -> bool:
        self.data_version = fingerprint
        known = self.versions.get(fingerprint)
        if known is not None and known.get("population", 0) < len(self.populations) - 1:
            started = self.populations[-1]["started"]
            raise PrivacyPolicyConflict(
                f"{self._path}: this table (version {fingerprint[:12]}) was used before the institution's fresh start "
                f"of {started} ({self.populations[-1].get('reason', '')!r}); a fresh start is for a wholly new "
                "population of borrowers, so the node refuses to release anything from this table. Use the new "
                "population's table, or restore the state from before the fresh start")
        if known is not None:
            return False
        self.versions[fingerprint] = {"schema_key": schema_key, "split": split, "first_seen": now(),
                                      "population": len(self.populations) - 1}
        return True

    def adopt_delta(self, delta: float) -> None:
        """Set δ of a ledger that has none yet (a new one opened without a δ in the node config)."""
        if self.delta is not None:
            raise RuntimeError("the ledger already has a δ")
        _check_policy(self.max_epsilon, delta, self.accountant)
        self.delta = float(delta)
        self._spent = None

    # -- queries -----------------------------------------------------------------------
    @property
    def events(self) -> list[PrivacyEvent]:
        """The events that count against the budget: those since the last fresh start."""
        return self.all_events[int(self.populations[-1]["first_event"]):]

    def _delta(self) -> float:
        if self.delta is None:
            raise RuntimeError("the ledger has no δ yet (adopt_delta first)")
        return self.delta

    def spent(self) -> float:
        """ε spent so far (the current population's events, fresh accountant, at the ledger's δ)."""
        if self._spent is None:
            self._spent = compute_epsilon(self.events, self._delta(), self.accountant) if self.events else 0.0
        return self._spent

    def remaining(self) -> float:
        return max(0.0, self.max_epsilon - self.spent())

    def epsilon_if(self, new_events: Sequence[PrivacyEvent]) -> float:
        """ε spent if ``new_events`` were added to the ledger."""
        return compute_epsilon([*self.events, *self._stamped(new_events)], self._delta(), self.accountant)

    @property
    def node_split(self) -> str:
        """The split rule of the current table version (``rows`` of its events refer to it)."""
        return (self.versions.get(self.data_version) or {}).get("split", "")

    def version_counts(self) -> dict | None:
        """The row counts released for the current table version (:mod:`privacy.dp_release`), if any."""
        return (self.versions.get(self.data_version) or {}).get("counts")

    def check(self, new_events: Sequence[PrivacyEvent]) -> float:
        """Raise :class:`BudgetExceeded` when ``new_events`` would exceed the budget; else return ε if added."""
        new_events = list(new_events)
        eps = self.epsilon_if(new_events)
        if not eps <= self.max_epsilon + _TOLERANCE:
            spent = self.spent()
            kinds = ", ".join(sorted({e.kind for e in new_events})) or "nothing"
            raise BudgetExceeded(
                f"privacy budget of institution {self.institution_id} would be exceeded: ε spent {spent:.4f} of "
                f"{self.max_epsilon:g} (δ = {self.delta:g}), remaining {max(0.0, self.max_epsilon - spent):.4f}; "
                f"this {kinds} release would bring it to {eps:.4f}. The node refuses it. To go on, run fewer "
                f"rounds or fewer local epochs (the node then plans more noise), or — a policy decision of the "
                f"institution — raise max-epsilon in the node config",
                budget=self.max_epsilon, spent=spent, epsilon_if=eps)
        return eps

    # -- recording ---------------------------------------------------------------------
    def _stamped(self, events: Sequence[PrivacyEvent]) -> list[PrivacyEvent]:
        for e in events:
            if not e.data:
                e.data = self.data_version
        return list(events)

    def record(self, new_events: Sequence[PrivacyEvent], counts: dict[str, float] | None = None) -> float:
        """Check, then append ``new_events`` (and, for a row-count release, the released
        ``counts`` of the current version) and persist them before returning the new ε spent.

        If the state cannot be written, nothing is kept and :class:`PrivacyStateError` is
        raised: the caller must not release anything.
        """
        self._require_open()
        new_events = self._stamped(new_events)
        eps = self.check(new_events)
        stamp = now()
        for e in new_events:
            if not e.time:
                e.time = stamp
        before_events, before_version = list(self.all_events), dict(self.versions.get(self.data_version, {}))
        self.all_events.extend(new_events)
        if counts is not None:
            self.versions[self.data_version] = {**before_version, "counts": dict(counts)}
        try:
            self._persist()
        except BaseException:
            self.all_events = before_events
            if counts is not None:
                self.versions[self.data_version] = before_version
            raise
        self._spent = eps
        return eps

    def new_population(self, reason: str) -> float:
        """Start the budget afresh for a wholly new population (recorded with ``reason``);
        returns the ε the previous population had spent."""
        self._require_open()
        if not reason.strip():
            raise UserError("a fresh start needs a reason (it is recorded in the privacy ledger)")
        if self.delta is None:
            raise UserError(f"{self._dir}: nothing was ever released from this state; no fresh start is needed")
        before = self.spent()
        stamp = now()
        self.populations.append({"started": stamp, "reason": reason.strip(), "first_event": len(self.all_events)})
        self.policy_history.append({"time": stamp, "change": "new-population", "reason": reason.strip(),
                                    "epsilon_spent_before": before, "events_before": len(self.all_events)})
        self._spent = None
        self._persist()
        return before

    # -- persistence ---------------------------------------------------------------------
    def payload(self) -> dict:
        body = {
            "format": F.LEDGER_FORMAT,
            "institution_id": self.institution_id,
            "accountant": self.accountant,
            "delta": self._delta(),
            "max_epsilon": self.max_epsilon,
            "policy_history": self.policy_history,
            "versions": self.versions,
            "populations": self.populations,
            "migrated": self.migrated,
            "events": [e.to_dict() for e in self.all_events],
            "events_sha256": events_digest(self.all_events),
            "note": "epsilon is recomputed from the events by the node; this file must not be edited",
        }
        body["sha256"] = F.content_digest(body)
        return body

    def _persist(self) -> None:
        self._require_open()
        try:
            F.atomic_write_json(self._path, self.payload())
            F.write_index(self._dir, F.Index(events=len(self.all_events), events_sha256=events_digest(self.all_events),
                                             migrated=self.migrated))
        except OSError as exc:
            raise PrivacyStateError(f"{self._path}: cannot write the privacy state ({exc.strerror or exc}); "
                                    "nothing is released until the spend is recorded — free disk space or "
                                    "fix the permissions of the node's 'state-dir'") from None
        if self.migrated:
            F.mark_migrated(self._dir, list(self.migrated))

    def _require_open(self) -> None:
        if self._fd is None:
            raise RuntimeError("the privacy ledger is closed")

    def close(self) -> None:
        if self._fd is not None:
            F.release_lock(self._fd)
            self._fd = None

    def __enter__(self) -> "PrivacyLedger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - safety net
        with contextlib.suppress(Exception):
            self.close()


def _load(pdir: Path, institution_id: str, max_epsilon: float, delta: float | None, accountant: str
          ) -> tuple[dict, bool]:
    """The stored state (migrated from per-version files if needed), or a new one; and whether
    it must be written (new or migrated)."""
    state = load_state(pdir)
    if state is not None:
        return state, bool(state.get("_unsaved"))
    return {"institution_id": institution_id, "max_epsilon": max_epsilon, "delta": delta, "accountant": accountant,
            "events": [], "versions": {}, "migrated": {},
            "policy_history": [{"time": now(), "change": "created", "max_epsilon": max_epsilon, "delta": delta,
                                "accountant": accountant, "institution_id": institution_id}],
            "populations": [{"started": now(), "reason": "created", "first_event": 0}]}, True


def load_state(pdir: Path) -> dict | None:
    """The validated ledger state under ``pdir`` (read-only), migrating per-version files of
    earlier versions in memory (``_unsaved``); None when there is no state at all."""
    index = F.read_index(pdir)
    path = pdir / F.LEDGER_FILE
    try:
        state = F.parse_ledger(path, F.read_json(path))
    except FileNotFoundError:
        if index.events > 0:
            raise PrivacyStateError(f"{path}: missing, but the index records {index.events} privacy events of this "
                                    f"institution: the ledger was deleted. {F.restore_hint(path)}") from None
        state = None
    if state is not None:
        if index.legacy:  # written, but the index was not yet moved to the new format: adopt it
            index = F.Index(events=0, migrated=dict(state.get("migrated", {})), legacy={}, exists=True)
        F.check_against_index(path, state["events"], index.events, index.events_sha256)
        index.migrated = {**index.migrated, **state.get("migrated", {})}
    legacy = F.legacy_states(pdir, index)
    if not legacy:
        return state
    return {**merge_legacy_states(state, legacy, now()), "_unsaved": True}
