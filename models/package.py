"""The model package: everything needed to score applicants, in plain files.

``RUN_DIR/model/`` holds

* ``weights.safetensors`` — the network's tensors (safetensors: no pickle, safe to load from
  anyone); the same tensors load with ``torch.load(weights_only=True)`` from ``weights.pt``;
* ``encoder.json`` — the fitted :class:`models.encoder.FeatureEncoder`;
* ``schema.toml`` — the consortium schema the model was trained on (byte copy);
* ``reference.json`` (packages exported since monitoring exists; optional) — the development
  population: the federated feature statistics and score histograms it was built and evaluated
  on (:class:`models.reference.PopulationReference`), the baseline of ``fedcredit monitor``;
* ``model.json`` — format tag, :class:`models.network.ModelSpec`, schema key and fingerprint,
  score scaling, cut-off PD, sha256 of the weights and encoder files, and run metadata.

:func:`load_package` checks both hashes before it builds anything, so a modified or truncated
file is reported instead of loaded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from configs.errors import UserError
from configs.schema import Schema, load_schema
from models.encoder import FeatureEncoder
from models.network import DefaultNet, ModelSpec, build_model, predict_pd, set_weights
from models.reference import REFERENCE_FILE, PopulationReference
from models.scoring import ScoreScale

FORMAT = "fedcredit-model/1"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_digest(weights: dict[str, np.ndarray]) -> str:
    """sha256 over the arrays in name order (dtype, shape and bytes): the model's identity."""
    h = hashlib.sha256()
    for k in sorted(weights):
        a = np.ascontiguousarray(weights[k])
        h.update(k.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class ModelPackage:
    spec: ModelSpec
    encoder: FeatureEncoder
    weights: dict[str, np.ndarray]
    schema: Schema
    scale: ScoreScale = field(default_factory=ScoreScale)
    cutoff_pd: float = 0.2
    meta: dict = field(default_factory=dict)
    reference: PopulationReference | None = None

    def model(self) -> DefaultNet:
        net = build_model(self.spec)
        set_weights(net, self.weights)
        return net

    def predict_pd(self, table) -> np.ndarray:
        return predict_pd(self.model(), self.encoder.transform(table))


def save_package(directory: str | Path, package: ModelPackage) -> Path:
    """Write the package into ``directory`` (created; existing files replaced)."""
    from safetensors.numpy import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in package.weights.items()}
    save_file(arrays, str(d / "weights.safetensors"))
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, d / "weights.pt")
    (d / "encoder.json").write_text(package.encoder.to_json())
    hashed = ["weights.safetensors", "weights.pt", "encoder.json"]
    if package.reference is not None:
        (d / REFERENCE_FILE).write_text(package.reference.to_json())
        hashed.append(REFERENCE_FILE)
    if package.schema.source and Path(package.schema.source).is_file():
        shutil.copyfile(package.schema.source, d / "schema.toml")
    meta = {
        "format": FORMAT,
        "spec": package.spec.to_dict(),
        "schema_key": package.schema.key,
        "schema_fingerprint": package.schema.fingerprint(),
        "score_scale": package.scale.to_dict(),
        "cutoff_pd": package.cutoff_pd,
        "weights_sha256": weights_digest(arrays),
        "files_sha256": {name: sha256_file(d / name) for name in hashed},
        **{k: v for k, v in package.meta.items() if k not in ("format",)},
    }
    (d / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return d


def load_package(directory: str | Path) -> ModelPackage:
    """Load and verify a package; any inconsistency is a :class:`UserError` naming the file."""
    from safetensors.numpy import load_file

    d = Path(directory)
    meta_path = d / "model.json"
    if not meta_path.is_file():
        raise UserError(f"{d}: not a model package (no model.json); point --model at RUN_DIR/model")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{meta_path}: not valid JSON ({exc}); the package is damaged") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{meta_path}: unknown package format {meta.get('format')!r} (expected {FORMAT})")
    for name, digest in meta.get("files_sha256", {}).items():
        path = d / name
        if not path.is_file():
            raise UserError(f"{path}: missing from the model package")
        if sha256_file(path) != digest:
            raise UserError(f"{path}: sha256 does not match model.json — the file was modified or damaged")
    weights = load_file(str(d / "weights.safetensors"))
    if weights_digest(weights) != meta["weights_sha256"]:
        raise UserError(f"{d / 'weights.safetensors'}: weights do not match model.json")
    schema_path = d / "schema.toml"
    if not schema_path.is_file():
        raise UserError(f"{schema_path}: missing from the model package")
    schema = load_schema(schema_path)
    if schema.fingerprint() != meta["schema_fingerprint"]:
        raise UserError(f"{schema_path}: does not match the schema the model was trained on")
    encoder = FeatureEncoder.from_json((d / "encoder.json").read_text())
    reference = _load_reference(d, meta)
    extra = {k: v for k, v in meta.items() if k not in
             ("format", "spec", "score_scale", "cutoff_pd", "weights_sha256", "files_sha256",
              "schema_key", "schema_fingerprint")}
    return ModelPackage(spec=ModelSpec.from_dict(meta["spec"]), encoder=encoder, weights=weights,
                        schema=schema, scale=ScoreScale(**meta["score_scale"]),
                        cutoff_pd=float(meta["cutoff_pd"]), meta=extra, reference=reference)


def _load_reference(d: Path, meta: dict) -> PopulationReference | None:
    """The package's development population, when model.json lists (and so has verified) it."""
    if REFERENCE_FILE not in meta.get("files_sha256", {}):
        return None
    try:
        return PopulationReference.from_json((d / REFERENCE_FILE).read_text())
    except ValueError as exc:
        raise UserError(f"{d / REFERENCE_FILE}: not a valid population reference ({exc})") from None
