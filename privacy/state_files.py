"""The files of an institution's privacy state: atomic writes, locks, the index, validation.

Layout (``STATE_DIR/privacy/``)
-------------------------------
* ``ledger.json`` — the institution's lifetime ledger (format ``fedcredit-privacy-ledger/2``,
  :mod:`privacy.ledger` says what it holds), with ``events_sha256`` (sha256 of the canonical
  JSON of the events, :func:`privacy.events.events_digest`) and ``sha256`` (of the whole
  content), so a damaged or edited file is detected.
* ``index.json`` — the number of events last recorded and the sha256 of those events; and
  the state files of earlier versions that were migrated into the ledger. A ledger that is
  missing although the index knows events, that holds fewer events than the index recorded
  (an older backup put back), or whose first events differ from what the index recorded, is
  an error — never a silent reset to zero.
* ``ledger.lock`` — an exclusive ``fcntl.flock`` held while a process uses the ledger.
* ``<fingerprint>.json`` (format ``fedcredit-privacy-state/1``) — one ledger per table
  version, as earlier versions of the node kept them; read once, migrated into ``ledger.json`` and
  renamed ``<fingerprint>.json.migrated`` (kept as a record).

Every write is atomic: temporary file, ``fsync``, ``os.replace``, ``fsync`` of the directory.
Every problem is a :class:`privacy.errors.PrivacyStateError` naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedcredit.atomic_write import fsync_directory, write_json_atomic
from privacy.composition import ACCOUNTANTS
from privacy.errors import PrivacyStateError
from privacy.events import PrivacyEvent, events_digest

LEDGER_FILE = "ledger.json"
INDEX_FILE = "index.json"
LOCK_FILE = "ledger.lock"
LEDGER_FORMAT = "fedcredit-privacy-ledger/2"
INDEX_FORMAT = "fedcredit-privacy-index/2"
LEGACY_STATE_FORMAT = "fedcredit-privacy-state/1"
LEGACY_INDEX_FORMAT = "fedcredit-privacy-index/1"
MIGRATED_SUFFIX = ".migrated"


def privacy_dir(state_dir: str | Path) -> Path:
    return Path(state_dir).expanduser() / "privacy"


def restore_hint(path: Path) -> str:
    return (f"restore {path} (and index.json next to it) from the node's backup; the node refuses to "
            "release anything until its privacy state is intact, because starting again from zero would "
            "overspend the privacy budget")


def content_digest(payload: dict) -> str:
    """sha256 of the canonical JSON of ``payload`` without its ``sha256`` key."""
    body = {k: v for k, v in payload.items() if k != "sha256"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------- atomic files
def atomic_write_json(path: Path, payload: dict) -> None:
    """Write JSON to ``path`` atomically (tmp + fsync + os.replace + dir fsync); NaN is refused."""
    write_json_atomic(path, payload, indent=2, sort_keys=True, allow_nan=False)


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; FileNotFoundError passes, anything else unreadable is damage."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise PrivacyStateError(f"{path}: cannot read the privacy state ({exc}); {restore_hint(path)}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PrivacyStateError(f"{path}: the privacy state is damaged (not valid JSON: {exc}); "
                                f"{restore_hint(path)}") from None
    if not isinstance(data, dict):
        raise PrivacyStateError(f"{path}: the privacy state is damaged (not a JSON object); {restore_hint(path)}")
    return data


# ----------------------------------------------------------------------------- locks
def open_lock(path: Path, timeout: float, what: str) -> int:
    """An exclusive ``flock`` on ``path`` (created), waiting up to ``timeout`` s; returns the fd."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise PrivacyStateError(f"{path.parent}: the privacy state directory is not writable ({exc.strerror}); "
                                "give the node a writable 'state-dir' — nothing is trained or released "
                                "until its privacy spend can be recorded") from None
    try:
        _acquire(fd, path, timeout, what)
    except BaseException:
        os.close(fd)
        raise
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def release_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _acquire(fd: int, path: Path, timeout: float, what: str) -> None:
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise PrivacyStateError(f"{path}: cannot lock {what} ({exc.strerror})") from None
        if time.monotonic() >= deadline:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 64, 0).decode().strip()
            raise PrivacyStateError(
                f"{path}: {what} is locked by another process{f' (pid {holder})' if holder else ''} "
                f"(waited {timeout:g} s); only one node may use an institution's privacy state at a time — "
                "stop the other node or wait for its round to finish")
        time.sleep(0.05)


# ----------------------------------------------------------------------------- the index
@dataclass
class Index:
    """What ``index.json`` records: the ledger's event count and digest, migrated legacy files,
    and — for a state dir of an earlier version not migrated yet — its legacy entries."""

    events: int = 0
    events_sha256: str = ""
    migrated: dict[str, dict] = field(default_factory=dict)
    legacy: dict[str, dict] = field(default_factory=dict)
    exists: bool = False


def _legacy_files(pdir: Path) -> list[Path]:
    return sorted(p for p in pdir.glob("*.json") if p.name not in (INDEX_FILE, LEDGER_FILE))


def read_index(pdir: Path) -> Index:
    """The index; an empty one when neither it nor any state file exists."""
    path = pdir / INDEX_FILE
    try:
        data = read_json(path)
    except FileNotFoundError:
        present = ([pdir / LEDGER_FILE] if (pdir / LEDGER_FILE).exists() else []) + _legacy_files(pdir)
        if present:
            names = ", ".join(p.name for p in present[:3]) + (", …" if len(present) > 3 else "")
            raise PrivacyStateError(f"{path}: missing, but {pdir} holds privacy state files ({names}); the index "
                                    f"of the institution's privacy spend was deleted. {restore_hint(path)}") from None
        return Index()

    def damaged() -> PrivacyStateError:
        return PrivacyStateError(f"{path}: the privacy index is damaged (unexpected content); {restore_hint(path)}")

    def entries(d) -> dict[str, dict]:
        if not isinstance(d, dict) or not all(isinstance(v, dict) and _count(v.get("events", 0)) is not None
                                              and isinstance(v.get("events_sha256", ""), str) for v in d.values()):
            raise damaged()
        return d

    if data.get("format") == LEGACY_INDEX_FORMAT:
        return Index(legacy=entries(data.get("fingerprints")), exists=True)
    ledger = data.get("ledger")
    if data.get("format") != INDEX_FORMAT or not isinstance(ledger, dict) or _count(ledger.get("events")) is None \
            or not isinstance(ledger.get("events_sha256"), str):
        raise damaged()
    return Index(events=ledger["events"], events_sha256=ledger["events_sha256"],
                 migrated=entries(data.get("migrated", {})), exists=True)


def write_index(pdir: Path, index: Index) -> None:
    atomic_write_json(pdir / INDEX_FILE, {"format": INDEX_FORMAT, "migrated": index.migrated,
                                          "ledger": {"events": index.events, "events_sha256": index.events_sha256}})


def _count(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


# ----------------------------------------------------------------------------- validation
def _damaged(path: Path, what: str) -> PrivacyStateError:
    return PrivacyStateError(f"{path}: the privacy state is damaged ({what}); {restore_hint(path)}")


def _parse_events(path: Path, raw: list) -> list[PrivacyEvent]:
    events = []
    for i, d in enumerate(raw):
        try:
            events.append(PrivacyEvent.from_dict(d))
        except (TypeError, ValueError) as exc:
            raise _damaged(path, f"event {i + 1}: {exc}") from None
    return events


def _check_common(path: Path, data: dict, fmt: str, strings: tuple[str, ...]) -> list[PrivacyEvent]:
    if data.get("format") != fmt:
        raise _damaged(path, f"format is {data.get('format')!r}, expected {fmt!r}")
    for key, typ in [(k, str) for k in strings] + [("events_sha256", str), ("events", list), ("policy_history", list)]:
        if not isinstance(data.get(key), typ):
            raise _damaged(path, f"'{key}' is missing or not a {typ.__name__}")
    for key in ("delta", "max_epsilon"):
        v = data.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise _damaged(path, f"'{key}' is missing or not a positive number")
    if not data["delta"] < 1:
        raise _damaged(path, "'delta' is not below 1")
    if data["accountant"] not in ACCOUNTANTS:
        raise _damaged(path, f"unknown accountant {data['accountant']!r}")
    events = _parse_events(path, data["events"])
    if events_digest(events) != data["events_sha256"]:
        raise _damaged(path, "its events do not match their recorded sha256 — the file was edited or truncated")
    return events


def parse_ledger(path: Path, data: dict) -> dict:
    """A validated ``ledger.json`` (events as :class:`PrivacyEvent`)."""
    events = _check_common(path, data, LEDGER_FORMAT, ("institution_id", "accountant"))
    if data.get("sha256") != content_digest(data):
        raise _damaged(path, "its content does not match its recorded sha256 — the file was edited")
    if not isinstance(data.get("versions"), dict) or not isinstance(data.get("populations"), list) \
            or not data["populations"]:
        raise _damaged(path, "'versions' or 'populations' is missing")
    return {**data, "events": events}


def check_against_index(path: Path, events: list[PrivacyEvent], recorded: int, digest: str) -> None:
    """The ledger must hold at least the events the index recorded, and the same first ones."""
    if len(events) < recorded:
        raise PrivacyStateError(
            f"{path}: holds {len(events)} privacy events but the index recorded {recorded}: this is an older "
            f"copy of the state (events were lost). {restore_hint(path)}")
    if recorded and events_digest(events[:recorded]) != digest:
        raise PrivacyStateError(
            f"{path}: its first {recorded} events differ from those the index recorded — the history was "
            f"rewritten. {restore_hint(path)}")


def legacy_states(pdir: Path, index: Index) -> list[dict]:
    """The per-table-version state files of earlier versions not migrated yet, validated
    (each checked against its index entry; one the index knows with events but that is gone is
    an error)."""
    out = []
    known = dict(index.legacy)
    for path in _legacy_files(pdir):
        fp = path.stem
        if fp in index.migrated:
            continue
        data = read_json(path)
        events = _check_common(path, data, LEGACY_STATE_FORMAT, ("fingerprint", "schema_key", "institution_id",
                                                                 "accountant"))
        if data["fingerprint"] != fp:
            raise _damaged(path, f"it belongs to fingerprint {data['fingerprint']!r}, not {fp!r}")
        entry = known.pop(fp, None)
        if entry is not None:
            check_against_index(path, events, int(entry.get("events", 0)), entry.get("events_sha256", ""))
        out.append({**data, "events": events})
    for fp, entry in known.items():
        if int(entry.get("events", 0)) > 0 and fp not in index.migrated:
            path = pdir / f"{fp}.json"
            raise PrivacyStateError(
                f"{path}: missing, but the index records {entry['events']} privacy events for this dataset "
                f"(institution {entry.get('institution_id', '?')}): the state file was deleted. {restore_hint(path)}")
    return out


def mark_migrated(pdir: Path, fingerprints: list[str]) -> None:
    """Rename migrated legacy files ``<fp>.json`` → ``<fp>.json.migrated`` (kept as a record)."""
    for fp in fingerprints:
        with contextlib.suppress(FileNotFoundError):
            os.replace(pdir / f"{fp}.json", pdir / f"{fp}.json{MIGRATED_SUFFIX}")
    fsync_directory(pdir)
