"""What a run writes about itself into its run directory, and the round records it keeps.

* ``progress.jsonl`` — one JSON event per line, as they happen (:class:`RunRecorder`); listeners
  (the audit ledger, the ServerApp's log lines, a simulation's progress bar) see each event;
* ``metrics.json`` — the run's summary, replaced atomically at the end;
* ``config.resolved.toml`` — every run-config value the run used (:func:`write_resolved_config`).

A round record is a dict (round, participants, refusals, …, ``global`` metrics); keys that
start with ``_`` hold in-memory objects (pooled evaluation sums) and never reach a file
(:func:`public`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fedcredit.atomic_write import write_atomic, write_json_atomic
from fedcredit.json_values import json_default
from server.settings import RunSettings

#: reply metrics a node reports about its privacy and training, as kept in a round record
PRIVACY_FIELDS = ("epsilon-spent", "epsilon-budget", "epsilon-run", "delta", "noise-multiplier",
                  "sample-rate", "steps", "num-examples", "train-loss")


@dataclass
class RunRecorder:
    """Writes ``progress.jsonl`` (one event per line, as they happen) and ``metrics.json``."""

    run_dir: Path
    listeners: list[Callable[[dict], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._progress = open(self.run_dir / "progress.jsonl", "a", buffering=1)

    def event(self, kind: str, **payload: Any) -> None:
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": kind, **payload}
        self._progress.write(json.dumps(entry, default=json_default) + "\n")
        for listener in self.listeners:
            listener(entry)

    def write_metrics(self, metrics: dict) -> None:
        write_json_atomic(self.run_dir / "metrics.json", metrics, default=json_default)

    def close(self) -> None:
        self._progress.close()


def resolve_run_dir(s: RunSettings, run_id: int | str) -> Path:
    """``run-dir``, or ``runs/<UTC time>-<run id>`` when it is empty."""
    if s.run_dir:
        return Path(s.run_dir).expanduser().resolve()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return (Path("runs") / f"{stamp}-{run_id}").resolve()


def write_resolved_config(run_dir: Path, s: RunSettings, run_id: int | str) -> Path:
    """``RUN_DIR/config.resolved.toml``: a ``[run-config]`` table of every setting (tomli-w)."""
    import tomli_w

    text = f"# resolved run configuration of run {run_id}\n" + tomli_w.dumps({"run-config": s.as_run_config()})
    return write_atomic(run_dir / "config.resolved.toml", text)


def finite_or_none(x: float | None) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def privacy_fields(metrics: dict) -> dict:
    """The privacy and training figures of a node's reply metrics, snake_case."""
    return {k.replace("-", "_"): float(metrics[k]) for k in PRIVACY_FIELDS if k in metrics}


def public(record: dict) -> dict:
    """A history record without in-memory objects (keys starting with '_'), JSON-ready."""
    out = {k: v for k, v in record.items() if not k.startswith("_")}
    if "institutions" in out:
        out["institutions"] = {who: {k: v for k, v in m.items() if not k.startswith("_")}
                               for who, m in out["institutions"].items()}
    return out


def drop_node_sums(records: list[dict]) -> None:
    """Forget the per-institution evaluation sums of ``records`` (8,000-bin histograms per node:
    ~130 MB a round at 1,000 nodes); their metrics stay. The run's summary needs the sums of the
    last evaluation only."""
    for r in records:
        for m in (r.get("institutions") or {}).values():
            m.pop("_sums", None)


def final_institutions(history: list[dict]) -> dict[str, dict]:
    """Last known evaluation and privacy figures per institution."""
    out: dict[str, dict] = {}
    for r in history:
        for who, m in (r.get("institutions") or {}).items():
            out.setdefault(who, {}).update({"eval": {k: v for k, v in m.items() if not k.startswith("_")}})
        for who, p in (r.get("privacy") or {}).items():
            out.setdefault(who, {}).update({"privacy": dict(p)})
        for who, eps in (r.get("privacy_after_evaluation") or {}).items():
            out.setdefault(who, {}).setdefault("privacy", {})["epsilon_spent"] = eps
        for who, why in (r.get("refused") or {}).items():
            out.setdefault(who, {}).update({"last_refusal": why})
    return out
