"""The institution's lifetime privacy ledger: every release, composed with Opacus's accountant.

Unit of privacy: one borrower record of one institution's dataset (add/remove adjacency).
Every release that touches the records — the Gaussian-noised feature statistics, every DP-SGD
round of every run, every noised evaluation — is a :class:`PrivacyEvent` ``(σ, q, steps)``:
``steps`` applications of the (subsampled, with rate ``q``) Gaussian mechanism with noise
multiplier ``σ`` = noise standard deviation / L2 sensitivity. A one-shot Gaussian release is
``q = 1, steps = 1``.

ε is never stored as the truth: :func:`compute_epsilon` builds a *fresh* Opacus accountant
(``RDPAccountant`` or ``PRVAccountant``), feeds it the history of all events and asks for ε at
the ledger's δ. Events with equal ``(σ, q)`` are merged into one history entry with their
steps summed (what Opacus's own ``step()`` does; composition is commutative and the RDP of
``s`` steps is ``s`` times the RDP of one step, so the value is the same).

Persistence (``STATE_DIR/privacy/``)
------------------------------------
* ``<fingerprint>.json`` — one per dataset fingerprint (:func:`clients.dataset.data_fingerprint`):
  format, fingerprint, schema key, institution id, accountant, δ, budget, the history of policy
  changes, the events, and ``events_sha256`` (sha256 of the canonical JSON of the events), so a
  damaged or edited file is detected. Written atomically: temporary file, ``fsync``,
  ``os.replace``, ``fsync`` of the directory.
* ``index.json`` — every fingerprint ever created, with the number of events last recorded and
  the sha256 of those events. A state file that is missing although the index knows it has
  events, or that has fewer events than the index recorded (an older backup put back), or whose
  first events differ from what the index recorded, is an error — never a silent reset to zero.
* ``<fingerprint>.lock`` — an exclusive ``fcntl.flock`` held by the :class:`PrivacyLedger`
  for its lifetime (one process at a time per dataset); ``index.lock`` guards index updates.

Policy (from the node config; the ledger records every change in ``policy_history``)
----------------------------------------------------------------------------------
* ``max_epsilon`` may change between opens (the institution's policy may change); ε spent is
  always computed from *all* events, so lowering the budget below the spend simply stops all
  further releases.
* δ: the first δ is kept. A later open may ask for a *smaller* δ: the ledger then switches to
  it, and all past events are re-accounted at the smaller δ (a stronger statement; ε spent
  grows). A *larger* δ is refused (:class:`PrivacyPolicyConflict`): it would weaken the
  guarantee already stated for past releases and free budget without any change in what was
  released.
* The accountant (``rdp`` or ``prv``) may change; ε is recomputed over all events with the
  accountant the node asks for (both give valid bounds for the same history).

Fail closed: :meth:`PrivacyLedger.record` persists before it returns; the node releases a
result only after ``record`` returned. Any problem with the state (unreadable, damaged,
missing, unwritable, locked by another process) is a :class:`PrivacyStateError` raised before
anything is released.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import math
import os
import time as _time
import warnings
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from configs.errors import UserError

STATE_FORMAT = "fedcredit-privacy-state/1"
INDEX_FORMAT = "fedcredit-privacy-index/1"
EVENT_KINDS = ("train", "statistics", "evaluation")
ACCOUNTANTS = ("rdp", "prv")
DEFAULT_LOCK_TIMEOUT = 10.0
_TOLERANCE = 1e-9


class PrivacyStateError(UserError):
    """The privacy state is damaged, missing, unreadable or unwritable, or locked by another process."""


class PrivacyPolicyConflict(PrivacyStateError):
    """The node config asks for something the stored state cannot honour (e.g. a larger δ)."""


class BudgetExceeded(UserError):
    """A release would take lifetime ε above the institution's budget.

    ``budget`` is the node's max ε, ``spent`` the ε already spent, ``epsilon_if`` the ε the
    refused release(s) would have brought the total to.
    """

    def __init__(self, message: str, *, budget: float, spent: float, epsilon_if: float):
        super().__init__(message)
        self.budget = budget
        self.spent = spent
        self.epsilon_if = epsilon_if

    @property
    def remaining(self) -> float:
        return max(0.0, self.budget - self.spent)


@dataclass
class PrivacyEvent:
    """One release: ``steps`` applications of the Gaussian mechanism with noise multiplier
    ``noise_multiplier`` (noise std / L2 sensitivity) on a Poisson subsample of rate
    ``sample_rate`` (1.0 for a release over the whole dataset)."""

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

    def __post_init__(self) -> None:
        problem = _event_problem(self)
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


def _event_problem(e: PrivacyEvent) -> str:
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
    for name in ("run_id", "time", "detail"):
        if not isinstance(getattr(e, name), str):
            return f"{name} must be a string"
    return ""


# ----------------------------------------------------------------------------- accounting
ROW_SETS = ("train", "holdout")


def disjoint_sides(events: Sequence[PrivacyEvent]) -> dict[str, list[PrivacyEvent]] | None:
    """The events grouped by the disjoint row set they read, when parallel composition applies.

    A node splits its table into training rows and a holdout by a rule that puts each record on
    one side by its own content alone (:func:`clients.dataset.holdout_mask`), so adding or
    removing one record changes one side only. Releases that read only the training rows
    (statistics, DP-SGD) and releases that read only the holdout (evaluation) then compose in
    *parallel*: a record is protected by the releases of its own side. That holds when every
    event names its side (``rows``) and all name the same ``split``; otherwise this returns
    None and everything composes sequentially (the conservative default, e.g. for events
    recorded before sides were tracked or after the node changed its split).
    """
    if not events:
        return None
    splits = {e.split for e in events}
    if len(splits) != 1 or "" in splits or any(e.rows not in ROW_SETS for e in events):
        return None
    return {side: [e for e in events if e.rows == side] for side in ROW_SETS}


def accountant_history(events: Iterable[PrivacyEvent]) -> list[tuple[float, float, int]]:
    """Opacus history entries ``(σ, q, steps)``: events with equal (σ, q) merged, first-seen order."""
    merged: dict[tuple[float, float], int] = {}
    for e in events:
        key = (float(e.noise_multiplier), float(e.sample_rate))
        merged[key] = merged.get(key, 0) + int(e.steps)
    return [(s, q, n) for (s, q), n in merged.items()]


def compute_epsilon(events: Sequence[PrivacyEvent], delta: float, accountant: str = "rdp") -> float:
    """ε at ``delta`` of all ``events`` composed, as a fresh Opacus accountant reports it; 0.0 for none.

    When the events read disjoint row sets of one split (:func:`disjoint_sides`), ε is the
    larger of the two sides' ε, each computed by a fresh accountant from that side's events
    (parallel composition); otherwise all events compose sequentially.

    ``accountant``:

    * ``"rdp"`` — Rényi DP (Mironov 2017; Opacus ``RDPAccountant`` with its default orders and
      the RDP → (ε, δ) conversion of Balle et al. 2020). Computed exactly as
      ``RDPAccountant.get_privacy_spent`` does — ``compute_rdp`` for each history entry, summed
      in history order, then ``get_privacy_spent`` — with the per-step RDP curve of each
      ``(σ, q)`` memoised (``compute_rdp`` of ``s`` steps is ``s`` × that curve), so the value
      is the same number a fresh ``RDPAccountant`` returns, in microseconds instead of ~10 ms
      per history entry.
    * ``"prv"`` — privacy random variables (Gopi et al. 2021; Opacus ``PRVAccountant``, a fresh
      one per call): tighter, slower. A history it cannot evaluate gives ``inf``, so any
      release is refused rather than under-counted.
    """
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    sides = disjoint_sides(events)
    if sides is not None:  # parallel composition over disjoint rows: the worse side counts
        return max(epsilon_of_history(accountant_history(v), delta, accountant) for v in sides.values())
    return epsilon_of_history(accountant_history(events), delta, accountant)


def epsilon_of_history(history: Sequence[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """ε of Opacus history entries ``(σ, q, steps)`` (see :func:`compute_epsilon`)."""
    if not history:
        return 0.0
    with warnings.catch_warnings(), _quiet_numpy():
        warnings.simplefilter("ignore")
        if accountant == "rdp":
            from opacus.accountants.analysis.rdp import get_privacy_spent

            rdp = sum([_rdp_curve(float(s), float(q)) * int(n) for s, q, n in history])
            eps = float(get_privacy_spent(orders=_rdp_orders(), rdp=rdp, delta=delta)[0])
        else:
            from opacus.accountants import PRVAccountant

            acc = PRVAccountant()
            acc.history = [(float(s), float(q), int(n)) for s, q, n in history]
            try:
                eps = float(acc.get_epsilon(delta=delta))
            except (ValueError, RuntimeError, FloatingPointError, OverflowError, ZeroDivisionError):
                eps = float("inf")
    if math.isnan(eps):
        eps = float("inf")
    return max(0.0, eps)


@functools.lru_cache(maxsize=1)
def _rdp_orders():
    from opacus.accountants import RDPAccountant

    return list(RDPAccountant.DEFAULT_ALPHAS)


@functools.lru_cache(maxsize=8192)
def _rdp_curve(sigma: float, q: float):
    """RDP of one step of the sampled Gaussian mechanism at Opacus's default orders (read-only)."""
    from opacus.accountants.analysis.rdp import compute_rdp

    with warnings.catch_warnings(), _quiet_numpy():
        warnings.simplefilter("ignore")
        curve = compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=_rdp_orders())
    curve.setflags(write=False)
    return curve


@contextlib.contextmanager
def _quiet_numpy():
    import numpy as np

    with np.errstate(all="ignore"):
        yield


# ----------------------------------------------------------------------------- files
def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def events_digest(events: Sequence[PrivacyEvent]) -> str:
    """sha256 of the canonical JSON of the events (sorted keys, no spaces)."""
    blob = json.dumps([e.to_dict() for e in events], sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_json(path: Path, payload: dict) -> None:
    """Write JSON to ``path`` atomically (tmp + fsync + os.replace + dir fsync)."""
    text = json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _privacy_dir(state_dir: str | Path) -> Path:
    return Path(state_dir).expanduser() / "privacy"


def _restore_hint(path: Path) -> str:
    return (f"restore {path} (and index.json next to it) from the node's backup; the node refuses to "
            "train until its privacy state is intact, because starting again from zero would overspend "
            "the privacy budget")


def _read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise PrivacyStateError(f"{path}: cannot read the privacy state ({exc}); {_restore_hint(path)}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PrivacyStateError(f"{path}: the privacy state is damaged (not valid JSON: {exc}); "
                                f"{_restore_hint(path)}") from None
    if not isinstance(data, dict):
        raise PrivacyStateError(f"{path}: the privacy state is damaged (not a JSON object); {_restore_hint(path)}")
    return data


def _read_index(pdir: Path) -> dict[str, dict]:
    """fingerprint → index entry; {} when there is no index and no state file."""
    path = pdir / "index.json"
    try:
        data = _read_json(path)
    except FileNotFoundError:
        orphans = sorted(p.name for p in pdir.glob("*.json")) if pdir.is_dir() else []
        if orphans:
            raise PrivacyStateError(
                f"{path}: missing, but {pdir} holds privacy state files ({', '.join(orphans[:3])}"
                f"{', …' if len(orphans) > 3 else ''}); the index of every dataset this node ever accounted "
                f"for was deleted. {_restore_hint(path)}") from None
        return {}
    fps = data.get("fingerprints")
    if data.get("format") != INDEX_FORMAT or not isinstance(fps, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("events", 0), int) and not isinstance(v.get("events", 0), bool)
            and isinstance(v.get("events_sha256", ""), str) for v in fps.values()):
        raise PrivacyStateError(f"{path}: the privacy index is damaged (unexpected content); {_restore_hint(path)}")
    return fps


def _write_index(pdir: Path, fps: dict[str, dict]) -> None:
    atomic_write_json(pdir / "index.json", {"format": INDEX_FORMAT, "fingerprints": fps})


@contextlib.contextmanager
def _index_lock(pdir: Path, timeout: float):
    fd = _open_lock_file(pdir / "index.lock")
    try:
        _acquire(fd, pdir / "index.lock", timeout, what="the privacy index")
        yield
    finally:
        os.close(fd)


def _open_lock_file(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise PrivacyStateError(f"{path.parent}: the privacy state directory is not writable ({exc.strerror}); "
                                "give the node a writable 'state-dir' — nothing is trained or released "
                                "until its privacy spend can be recorded") from None


def _acquire(fd: int, path: Path, timeout: float, what: str) -> None:
    deadline = _time.monotonic() + max(0.0, timeout)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise PrivacyStateError(f"{path}: cannot lock {what} ({exc.strerror})") from None
        if _time.monotonic() >= deadline:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 64, 0).decode().strip()
            raise PrivacyStateError(
                f"{path}: {what} is locked by another process{f' (pid {holder})' if holder else ''} "
                f"(waited {timeout:g} s); only one node may use a dataset's privacy state at a time — "
                "stop the other node or wait for its round to finish")
        _time.sleep(0.05)


def _state_path(pdir: Path, fingerprint: str) -> Path:
    return pdir / f"{fingerprint}.json"


def _check_fingerprint(fingerprint: str) -> None:
    if not fingerprint or not all(c.isalnum() or c in "-_" for c in fingerprint) or len(fingerprint) > 128:
        raise ValueError(f"fingerprint must be a short alphanumeric string (hex digest), got {fingerprint!r}")


def _parse_state(path: Path, data: dict, fingerprint: str | None = None) -> dict:
    """Validate a state file's content; returns it with ``events`` as PrivacyEvent objects."""
    def damaged(what: str) -> PrivacyStateError:
        return PrivacyStateError(f"{path}: the privacy state is damaged ({what}); {_restore_hint(path)}")

    if data.get("format") != STATE_FORMAT:
        raise damaged(f"format is {data.get('format')!r}, expected {STATE_FORMAT!r}")
    for key, typ in (("fingerprint", str), ("schema_key", str), ("institution_id", str), ("accountant", str),
                     ("events_sha256", str), ("events", list), ("policy_history", list)):
        if not isinstance(data.get(key), typ):
            raise damaged(f"'{key}' is missing or not a {typ.__name__}")
    for key in ("delta", "max_epsilon"):
        v = data.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise damaged(f"'{key}' is missing or not a positive number")
    if not data["delta"] < 1:
        raise damaged("'delta' is not below 1")
    if data["accountant"] not in ACCOUNTANTS:
        raise damaged(f"unknown accountant {data['accountant']!r}")
    if data["fingerprint"] != path.stem or (fingerprint is not None and data["fingerprint"] != fingerprint):
        raise damaged(f"it belongs to fingerprint {data['fingerprint']!r}, not {path.stem!r}")
    events = []
    for i, raw in enumerate(data["events"]):
        try:
            events.append(PrivacyEvent.from_dict(raw))
        except (TypeError, ValueError) as exc:
            raise damaged(f"event {i + 1}: {exc}") from None
    if events_digest(events) != data["events_sha256"]:
        raise damaged("its events do not match their recorded sha256 — the file was edited or truncated")
    out = dict(data)
    out["events"] = events
    return out


def _check_against_index(path: Path, state: dict, entry: dict | None) -> None:
    if entry is None:
        return
    n = int(entry.get("events", 0))
    if len(state["events"]) < n:
        raise PrivacyStateError(
            f"{path}: holds {len(state['events'])} privacy events but the index recorded {n}: this is an older "
            f"copy of the state (events were lost). {_restore_hint(path)}")
    if n and events_digest(state["events"][:n]) != entry.get("events_sha256"):
        raise PrivacyStateError(
            f"{path}: its first {n} events differ from those the index recorded — the history was rewritten. "
            f"{_restore_hint(path)}")


def _load_known_state(pdir: Path, fingerprint: str, index: dict[str, dict]) -> dict | None:
    """The validated state of ``fingerprint``, or None when it never had any event."""
    path = _state_path(pdir, fingerprint)
    entry = index.get(fingerprint)
    try:
        data = _read_json(path)
    except FileNotFoundError:
        if entry is not None and int(entry.get("events", 0)) > 0:
            raise PrivacyStateError(
                f"{path}: missing, but the index records {entry['events']} privacy events for this dataset "
                f"(institution {entry.get('institution_id', '?')}): the state file was deleted. "
                f"{_restore_hint(path)}") from None
        return None
    state = _parse_state(path, data, fingerprint)
    _check_against_index(path, state, entry)
    return state


# ----------------------------------------------------------------------------- the ledger
class PrivacyLedger:
    """The lifetime privacy spend of one dataset (fingerprint), persisted and locked.

    Use as a context manager (``with PrivacyLedger.open(...) as ledger:``); the exclusive lock
    on the fingerprint's state is held until :meth:`close`.
    """

    def __init__(self) -> None:  # use PrivacyLedger.open
        self._fd: int | None = None
        self.events: list[PrivacyEvent] = []
        self._spent: float | None = None

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def open(cls, state_dir: str | Path, *, fingerprint: str, schema_key: str, institution_id: str,
             max_epsilon: float, delta: float, accountant: str = "rdp",
             lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> "PrivacyLedger":
        """Open (creating if new) the state of ``fingerprint`` under ``state_dir/privacy``.

        Raises :class:`PrivacyStateError` when the directory is not writable, the state is
        damaged or missing, or another process holds the lock after ``lock_timeout`` seconds;
        :class:`PrivacyPolicyConflict` when ``delta`` is larger than the stored δ.
        """
        _check_fingerprint(fingerprint)
        if isinstance(max_epsilon, bool) or not isinstance(max_epsilon, (int, float)) or not math.isfinite(max_epsilon) or max_epsilon <= 0:
            raise UserError(f"max-epsilon must be a positive number, got {max_epsilon!r}")
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
            raise UserError(f"delta must be a number in (0, 1), got {delta!r}")
        if accountant not in ACCOUNTANTS:
            raise UserError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")
        pdir = _privacy_dir(state_dir)
        try:
            pdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PrivacyStateError(f"{pdir}: cannot create the privacy state directory ({exc.strerror or exc}); "
                                    "give the node a writable 'state-dir' — nothing is trained or released "
                                    "until its privacy spend can be recorded") from None
        self = cls()
        self._dir = pdir
        self._path = _state_path(pdir, fingerprint)
        self._lock_timeout = lock_timeout
        lock_path = pdir / f"{fingerprint}.lock"
        self._fd = _open_lock_file(lock_path)
        try:
            _acquire(self._fd, lock_path, lock_timeout, what="this dataset's privacy state")
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, str(os.getpid()).encode(), 0)
            self._load_or_create(fingerprint, schema_key, institution_id, float(max_epsilon), float(delta), accountant)
        except BaseException:
            self.close()
            raise
        return self

    def _load_or_create(self, fingerprint: str, schema_key: str, institution_id: str, max_epsilon: float,
                        delta: float, accountant: str) -> None:
        index = _read_index(self._dir)
        state = _load_known_state(self._dir, fingerprint, index)
        now = _now()
        if state is None:
            self.fingerprint, self.schema_key, self.institution_id = fingerprint, schema_key, institution_id
            self.max_epsilon, self.delta, self.accountant = max_epsilon, delta, accountant
            self.events = []
            self.policy_history = [{"time": now, "change": "created", "max_epsilon": max_epsilon, "delta": delta,
                                    "accountant": accountant, "institution_id": institution_id}]
            if fingerprint not in index:
                self._update_index(0, events_digest([]), register=True)
            self._persist()
            return
        if state["schema_key"] != schema_key:
            raise PrivacyStateError(f"{self._path}: recorded for schema {state['schema_key']!r}, opened for "
                                    f"{schema_key!r}; the fingerprint includes the schema, so the state is damaged. "
                                    f"{_restore_hint(self._path)}")
        self.fingerprint, self.schema_key = fingerprint, schema_key
        self.institution_id = state["institution_id"]
        self.max_epsilon, self.delta, self.accountant = float(state["max_epsilon"]), float(state["delta"]), state["accountant"]
        self.events = list(state["events"])
        self.policy_history = list(state["policy_history"])
        if fingerprint not in index:  # a valid file the index does not list: adopt it (no spend is lost)
            self._update_index(len(self.events), events_digest(self.events), register=True)
        if delta > self.delta * (1 + 1e-12):
            raise PrivacyPolicyConflict(
                f"{self._path}: this dataset's privacy spend is accounted at δ = {self.delta:g}; the node config "
                f"asks for δ = {delta:g}. A larger δ would weaken the guarantee already given for past releases, "
                f"so it is refused: set the node's delta to {self.delta:g} or smaller")
        change = {}
        if delta < self.delta:
            change["delta"] = delta
        if max_epsilon != self.max_epsilon:
            change["max_epsilon"] = max_epsilon
        if accountant != self.accountant:
            change["accountant"] = accountant
        if institution_id != self.institution_id:
            change["institution_id"] = institution_id
        if change:
            self.policy_history.append({"time": now, "change": "policy", **change,
                                        "previous": {k: getattr(self, k) for k in change}})
            for k, v in change.items():
                setattr(self, k, v)
            self._persist()

    # -- queries -----------------------------------------------------------------------
    def spent(self) -> float:
        """ε spent so far (all events, fresh accountant, at the ledger's δ)."""
        if self._spent is None:
            self._spent = compute_epsilon(self.events, self.delta, self.accountant)
        return self._spent

    def remaining(self) -> float:
        return max(0.0, self.max_epsilon - self.spent())

    def epsilon_if(self, new_events: Sequence[PrivacyEvent]) -> float:
        """ε spent if ``new_events`` were added to the ledger."""
        return compute_epsilon([*self.events, *new_events], self.delta, self.accountant)

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

    def record(self, new_events: Sequence[PrivacyEvent]) -> float:
        """Check, then append ``new_events`` and persist them before returning the new ε spent.

        If the state cannot be written, the events are not kept and :class:`PrivacyStateError`
        is raised: the caller must not release anything.
        """
        self._require_open()
        new_events = list(new_events)
        eps = self.check(new_events)
        now = _now()
        for e in new_events:
            if not e.time:
                e.time = now
        before = list(self.events)
        self.events.extend(new_events)
        try:
            self._persist()
        except BaseException:
            self.events = before
            raise
        self._update_index(len(self.events), events_digest(self.events))
        self._spent = eps
        return eps

    # -- persistence ---------------------------------------------------------------------
    def _payload(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "fingerprint": self.fingerprint,
            "schema_key": self.schema_key,
            "institution_id": self.institution_id,
            "accountant": self.accountant,
            "delta": self.delta,
            "max_epsilon": self.max_epsilon,
            "policy_history": self.policy_history,
            "events": [e.to_dict() for e in self.events],
            "events_sha256": events_digest(self.events),
            "note": "epsilon is recomputed from the events by the node; this file must not be edited",
        }

    def _persist(self) -> None:
        self._require_open()
        try:
            atomic_write_json(self._path, self._payload())
        except OSError as exc:
            raise PrivacyStateError(f"{self._path}: cannot write the privacy state ({exc.strerror or exc}); "
                                    "nothing is released until the spend is recorded — free disk space or "
                                    "fix the permissions of the node's 'state-dir'") from None
        self._spent = None

    def _update_index(self, n_events: int, digest: str, register: bool = False) -> None:
        try:
            with _index_lock(self._dir, self._lock_timeout):
                index = _read_index(self._dir)
                entry = index.get(self.fingerprint)
                if entry is None:
                    entry = {"created": _now()}
                entry.update({"institution_id": self.institution_id, "schema_key": self.schema_key,
                              "events": n_events, "events_sha256": digest})
                index[self.fingerprint] = entry
                _write_index(self._dir, index)
        except OSError as exc:
            raise PrivacyStateError(f"{self._dir / 'index.json'}: cannot write the privacy index "
                                    f"({exc.strerror or exc}); fix the node's 'state-dir'") from None

    def _require_open(self) -> None:
        if self._fd is None:
            raise RuntimeError("the privacy ledger is closed")

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "PrivacyLedger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - safety net
        with contextlib.suppress(Exception):
            self.close()

    def summary(self) -> dict:
        return _summary(self.fingerprint, self.institution_id, self.schema_key, self.accountant, self.delta,
                        self.max_epsilon, self.events, self.spent(), self.policy_history)


def _summary(fingerprint, institution_id, schema_key, accountant, delta, max_epsilon, events, spent,
             policy_history) -> dict:
    return {
        "fingerprint": fingerprint,
        "institution_id": institution_id,
        "schema_key": schema_key,
        "accountant": accountant,
        "delta": delta,
        "max_epsilon": max_epsilon,
        "epsilon_spent": spent,
        "epsilon_remaining": max(0.0, max_epsilon - spent) if max_epsilon is not None else None,
        "events": [e.to_dict() for e in events],
        "policy_history": policy_history,
    }


def read_state(state_dir: str | Path) -> list[dict]:
    """Every dataset's privacy state under ``state_dir`` (read-only, no lock).

    Each entry: fingerprint, institution_id, schema_key, accountant, delta, max_epsilon,
    epsilon_spent (recomputed from the events), epsilon_remaining, events, policy_history.
    Raises :class:`PrivacyStateError` for a damaged or missing state, like the node would.
    """
    root = Path(state_dir).expanduser()
    if not root.is_dir():
        raise PrivacyStateError(f"{root}: no such directory; give the node's 'state-dir'")
    pdir = _privacy_dir(root)
    if not pdir.is_dir():
        raise PrivacyStateError(f"{root}: holds no privacy state (no privacy/ folder); is this the node's 'state-dir'?")
    index = _read_index(pdir)
    fps = list(index) + sorted(p.stem for p in pdir.glob("*.json") if p.name != "index.json" and p.stem not in index)
    out = []
    for fp in fps:
        state = _load_known_state(pdir, fp, index)
        if state is None:
            entry = index[fp]
            out.append(_summary(fp, entry.get("institution_id", ""), entry.get("schema_key", ""), None,
                                None, None, [], 0.0, []))
            continue
        spent = compute_epsilon(state["events"], state["delta"], state["accountant"])
        out.append(_summary(fp, state["institution_id"], state["schema_key"], state["accountant"], state["delta"],
                            state["max_epsilon"], state["events"], spent, state["policy_history"]))
    return out
