"""Per-round checkpoints: weights, encoder, strategy state and round counter, hash-verified.

``RUN_DIR/checkpoints/round-NNNN/`` holds

* ``weights.safetensors`` — the global model after the round;
* ``strategy.safetensors`` — strategy state arrays (e.g. FedAdam moments; may be empty);
* ``state.json`` — round, encoder, model spec, run history so far, and the sha256 of both
  array files;
* ``state.sha256`` — sha256 of ``state.json``.

A checkpoint is written into a temporary directory and renamed into place, so a crash never
leaves a half-written ``round-NNNN``. :func:`load_checkpoint` verifies every hash before it
reads any array and raises :class:`CheckpointError` naming the damaged file — a damaged
checkpoint is never loaded, and the run is not resumed from another one on its own: the error
lists the earlier checkpoints that verify, and the operator may resume from one of them by
giving its directory (``RUN_DIR/checkpoints/round-NNNN``) instead of the run directory
(:func:`resume_source`); the rounds after it are then trained again.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from configs.errors import UserError
from fedcredit.atomic_write import atomic_directory
from fedcredit.json_values import json_default
from models.package import sha256_file

ROUND_DIR = "round-{:04d}"


class CheckpointError(UserError):
    """A checkpoint is missing, incomplete or fails its hash check."""


@dataclass
class Checkpoint:
    round: int
    weights: dict[str, np.ndarray]
    strategy_state: dict[str, np.ndarray]
    state: dict  # encoder, model spec, history, ...
    path: Path


def checkpoint_dir(run_dir: Path, rnd: int) -> Path:
    return Path(run_dir) / "checkpoints" / ROUND_DIR.format(rnd)


def save_checkpoint(run_dir: Path, rnd: int, weights: dict[str, np.ndarray],
                    strategy_state: dict[str, np.ndarray], state: dict) -> Path:
    from safetensors.numpy import save

    final = checkpoint_dir(run_dir, rnd)
    with atomic_directory(final) as tmp:
        (tmp / "weights.safetensors").write_bytes(save({k: np.ascontiguousarray(v) for k, v in weights.items()}))
        (tmp / "strategy.safetensors").write_bytes(
            save({k: np.ascontiguousarray(v) for k, v in strategy_state.items()}))
        body = dict(state, round=rnd, files_sha256={
            name: sha256_file(tmp / name) for name in ("weights.safetensors", "strategy.safetensors")})
        text = json.dumps(body, sort_keys=True, default=json_default)
        (tmp / "state.json").write_text(text)
        (tmp / "state.sha256").write_text(hashlib.sha256(text.encode()).hexdigest() + "\n")
    return final


def list_checkpoints(run_dir: Path) -> list[int]:
    base = Path(run_dir) / "checkpoints"
    if not base.is_dir():
        return []
    rounds = []
    for d in base.iterdir():
        if d.is_dir() and d.name.startswith("round-") and not d.name.endswith(".tmp"):
            try:
                rounds.append(int(d.name.split("-", 1)[1]))
            except ValueError:
                continue
    return sorted(rounds)


def resume_source(path: str | Path) -> tuple[Path, int | None]:
    """What ``resume-from`` names: ``(run directory, checkpoint round or None for the latest)``.

    ``RUN_DIR`` resumes from its latest checkpoint; ``RUN_DIR/checkpoints/round-NNNN`` from
    that one.
    """
    p = Path(path).expanduser().resolve()
    m = re.fullmatch(r"round-(\d+)", p.name)
    if m and p.parent.name == "checkpoints":
        return p.parent.parent, int(m.group(1))
    return p, None


def load_checkpoint(run_dir: Path, rnd: int | None = None) -> Checkpoint:
    """Load round ``rnd`` (default: the latest) after verifying all hashes.

    A checkpoint that fails verification raises :class:`CheckpointError` naming the damaged
    file and listing the earlier checkpoints that do verify.
    """
    rounds = list_checkpoints(run_dir)
    if not rounds:
        raise CheckpointError(f"{run_dir}: no checkpoints to resume from (expected {run_dir}/checkpoints/round-NNNN; "
                              "a run leaves one after each completed round)")
    rnd = rounds[-1] if rnd is None else rnd
    if rnd not in rounds:
        raise CheckpointError(f"{checkpoint_dir(run_dir, rnd)}: no such checkpoint; {run_dir} has rounds "
                              f"{', '.join(map(str, rounds))}")
    try:
        return _load_verified(run_dir, rnd)
    except CheckpointError as exc:
        intact = [r for r in rounds if r < rnd and checkpoint_verifies(run_dir, r)]
        if intact:
            hint = (f" Earlier checkpoints that verify: rounds {', '.join(map(str, intact))}. To resume from one of "
                    f"them give its directory, e.g. resume-from = '{checkpoint_dir(run_dir, intact[-1])}' (or "
                    f"fedcredit simulate --resume {checkpoint_dir(run_dir, intact[-1])}); the rounds after it are "
                    "trained again.")
        else:
            hint = " No earlier checkpoint of this run verifies either; start a new run."
        raise CheckpointError(str(exc) + hint) from None


def checkpoint_verifies(run_dir: Path, rnd: int) -> bool:
    try:
        _load_verified(run_dir, rnd, read_arrays=False)
    except CheckpointError:
        return False
    return True


def _load_verified(run_dir: Path, rnd: int, read_arrays: bool = True) -> Checkpoint:
    from safetensors.numpy import load_file

    d = checkpoint_dir(run_dir, rnd)
    state_path, digest_path = d / "state.json", d / "state.sha256"
    for p in (state_path, digest_path):
        if not p.is_file():
            raise CheckpointError(f"{p}: missing — checkpoint round {rnd} is incomplete; it will not be loaded.")
    raw = state_path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != digest_path.read_text(errors="replace").strip():
        raise CheckpointError(f"{state_path}: sha256 mismatch — the checkpoint was modified or damaged; "
                              "it will not be loaded.")
    state = json.loads(raw)
    if state.get("round") != rnd:
        raise CheckpointError(f"{state_path}: records round {state.get('round')!r} but lies in {d.name}; "
                              "it will not be loaded.")
    for name, digest in state["files_sha256"].items():
        p = d / name
        if not p.is_file() or sha256_file(p) != digest:
            raise CheckpointError(f"{p}: sha256 mismatch or missing — the checkpoint was modified or damaged; "
                                  "it will not be loaded.")
    if not read_arrays:
        return Checkpoint(round=rnd, weights={}, strategy_state={}, state=state, path=d)
    return Checkpoint(round=int(state["round"]), weights=load_file(str(d / "weights.safetensors")),
                      strategy_state=load_file(str(d / "strategy.safetensors")), state=state, path=d)
