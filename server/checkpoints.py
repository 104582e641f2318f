"""Per-round checkpoints: weights, encoder, strategy state and round counter, hash-verified.

``RUN_DIR/checkpoints/round-NNNN/`` holds

* ``weights.safetensors`` — the global model after the round;
* ``strategy.safetensors`` — strategy state arrays (e.g. FedAdam moments; may be empty);
* ``state.json`` — round, encoder, model spec, run history so far, and the sha256 of both
  array files;
* ``state.sha256`` — sha256 of ``state.json``.

A checkpoint is written into a temporary directory and renamed into place, so a crash never
leaves a half-written ``round-NNNN``. :func:`load_checkpoint` verifies every hash before it
reads any array and raises :class:`CheckpointError` naming the damaged file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from configs.errors import UserError
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
    from safetensors.numpy import save_file

    final = checkpoint_dir(run_dir, rnd)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(tmp / "weights.safetensors"))
    save_file({k: np.ascontiguousarray(v) for k, v in strategy_state.items()},
              str(tmp / "strategy.safetensors"))
    body = dict(state, round=rnd, files_sha256={
        name: sha256_file(tmp / name) for name in ("weights.safetensors", "strategy.safetensors")})
    text = json.dumps(body, sort_keys=True, default=_json_default)
    (tmp / "state.json").write_text(text)
    (tmp / "state.sha256").write_text(hashlib.sha256(text.encode()).hexdigest() + "\n")
    _fsync_dir(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def _fsync_dir(d: Path) -> None:
    for f in d.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


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


def load_checkpoint(run_dir: Path, rnd: int | None = None) -> Checkpoint:
    """Load round ``rnd`` (default: the latest) after verifying all hashes."""
    from safetensors.numpy import load_file

    rounds = list_checkpoints(run_dir)
    if not rounds:
        raise CheckpointError(f"{run_dir}: no checkpoints to resume from (expected {run_dir}/checkpoints/round-NNNN)")
    rnd = rounds[-1] if rnd is None else rnd
    d = checkpoint_dir(run_dir, rnd)
    state_path, digest_path = d / "state.json", d / "state.sha256"
    for p in (state_path, digest_path):
        if not p.is_file():
            raise CheckpointError(f"{p}: missing — checkpoint round {rnd} is incomplete; it will not be loaded")
    text = state_path.read_text()
    if hashlib.sha256(text.encode()).hexdigest() != digest_path.read_text().strip():
        raise CheckpointError(f"{state_path}: sha256 mismatch — the checkpoint was modified or damaged; "
                              "it will not be loaded")
    state = json.loads(text)
    for name, digest in state["files_sha256"].items():
        p = d / name
        if not p.is_file() or sha256_file(p) != digest:
            raise CheckpointError(f"{p}: sha256 mismatch or missing — the checkpoint was modified or damaged; "
                                  "it will not be loaded")
    return Checkpoint(round=int(state["round"]), weights=load_file(str(d / "weights.safetensors")),
                      strategy_state=load_file(str(d / "strategy.safetensors")), state=state, path=d)
