"""The model package: everything needed to score applicants, in plain files.

``RUN_DIR/model/`` holds

* ``weights.safetensors`` — the network's tensors (safetensors: no pickle, safe to load from
  anyone; the one weights format — packages written before also held ``weights.pt``, which
  :func:`load_package` still verifies by its hash but never unpickles);
* ``encoder.json`` — the fitted :class:`models.encoder.FeatureEncoder`;
* ``schema.toml`` — the consortium schema the model was trained on (byte copy);
* ``reference.json`` (optional; packages exported since monitoring exists) — the development
  population: the federated feature statistics and score histograms the model was built and
  evaluated on (:class:`models.reference.PopulationReference`), the baseline of
  ``fedcredit monitor``; hashed in ``model.json`` like the weights;
* ``model.json`` — format tag, :class:`models.network.ModelSpec`, schema key and fingerprint,
  score scaling, cut-off PD, sha256 of the weights and encoder files, and run metadata.

:func:`load_package` checks every hash before it builds anything, so a modified or truncated
file is reported instead of loaded. The package directory is written as a whole
(:func:`fedcredit.atomic_write.atomic_directory`): a crash leaves the old package or the new
one, never a mix, and every file gets the same mode (that of a newly created file: 0o666 less
the umask).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from configs.errors import UserError
from configs.schema import Schema, load_schema
from fedcredit.atomic_write import atomic_directory
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


#: the files whose sha256 model.json records (schema.toml is checked by its fingerprint)
HASHED_FILES = ("weights.safetensors", "encoder.json")


def save_package(directory: str | Path, package: ModelPackage) -> Path:
    """Write the package as ``directory`` (created; an existing package there is replaced whole)."""
    from safetensors.numpy import save

    final = Path(directory)
    _refuse_foreign_files(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in package.weights.items()}
    with atomic_directory(final) as d:
        (d / "weights.safetensors").write_bytes(save(arrays))
        (d / "encoder.json").write_text(package.encoder.to_json())
        if package.reference is not None:
            (d / REFERENCE_FILE).write_text(package.reference.to_json())
        if package.schema.source and Path(package.schema.source).is_file():
            (d / "schema.toml").write_bytes(Path(package.schema.source).read_bytes())
        (d / "model.json").write_text(json.dumps(_model_json(d, package, arrays), indent=2, sort_keys=True,
                                                 default=str))
    return final


#: what a package directory may hold (weights.pt: packages written before safetensors was the one format)
PACKAGE_FILES = frozenset({"model.json", "weights.safetensors", "weights.pt", "encoder.json", "schema.toml",
                           REFERENCE_FILE})


def _refuse_foreign_files(directory: Path) -> None:
    """A package replaces its directory whole: refuse one that holds anything but a package."""
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory}: exists and is not a directory; a model package is a directory")
    foreign = sorted(p.name for p in directory.iterdir() if p.name not in PACKAGE_FILES) if directory.is_dir() else []
    if foreign:
        raise UserError(f"{directory}: holds {', '.join(foreign[:5])}{' …' if len(foreign) > 5 else ''}, which are "
                        "not part of a model package; a package replaces its directory whole, so write it to an "
                        "empty or new directory")


def _model_json(d: Path, package: ModelPackage, arrays: dict[str, np.ndarray]) -> dict:
    return {
        "format": FORMAT,
        "spec": package.spec.to_dict(),
        "schema_key": package.schema.key,
        "schema_fingerprint": package.schema.fingerprint(),
        "score_scale": package.scale.to_dict(),
        "cutoff_pd": package.cutoff_pd,
        "weights_sha256": weights_digest(arrays),
        "files_sha256": {name: sha256_file(d / name)
                         for name in HASHED_FILES + ((REFERENCE_FILE,) if package.reference is not None else ())},
        **{k: v for k, v in package.meta.items() if k not in ("format",)},
    }


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
