"""Checks at the node's boundary: everything the coordinator sends, validated before any data is read.

The coordinator is not trusted (docs/privacy.md, "Threat model"). It controls the global
weights, the feature encoder, every round-config value, message order and timing. Before a
handler reads one borrower's row, the node checks here that

* every config value it uses has the right type and lies in a bounded range
  (:data:`CONFIG_LIMITS`); unknown keys are ignored, the node's own keys (``max-epsilon`` …)
  are never read from the run config;
* the encoder is exactly the shape the node's schema implies — the same features in the same
  order, kinds, transforms, value ranges, levels and categories — and its numeric knots are
  finite and strictly increasing with a gap of at least :data:`MIN_KNOT_GAP` of the feature's
  transformed range (a zero-width interval is what turns one borrower's value into 0/0), at
  most :data:`MAX_KNOTS` per feature;
* the model spec is an architecture the node knows, with the encoder's width as input and at
  most :data:`MAX_HIDDEN_LAYERS` hidden layers of at most :data:`MAX_HIDDEN_WIDTH` units;
* the weights are exactly the spec's parameters: the same names, float32, the same shapes,
  every value finite and at most :data:`MAX_ABS_WEIGHT` in magnitude.

A failed check raises :class:`clients.refusal.NodeRefusal` with reason ``invalid-request``
and a sentence built from the message alone (the key, the value sent, the rule), so the
refusal is the same whether or not any borrower is in the node's table. These checks are
the first line; the second is that training and evaluation treat non-finite numbers the
same way whichever rows produce them (:mod:`privacy.dpsgd`, :func:`clients.node.evaluate`).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from clients.refusal import NodeRefusal
from configs.schema import Feature, Schema, apply_transform
from fedcredit import protocol as P
from models.encoder import EncodedFeature, FeatureEncoder
from models.network import ARCHITECTURES, ModelSpec, parameter_shapes

MAX_ENCODER_CHARS = 4_000_000
MAX_SPEC_CHARS = 4_000
MAX_KNOTS = 257
MIN_KNOT_GAP = 1e-9  # relative to max(1, width of the feature's transformed range), as models.encoder.quantile_knots
MAX_HIDDEN_LAYERS = 8
MAX_HIDDEN_WIDTH = 4096
MAX_ABS_WEIGHT = 1e4
MAX_TEXT = 256

_REQUIRED = object()

#: key → (type, lowest, highest); a number outside [lowest, highest] is refused
CONFIG_LIMITS: dict[str, tuple[type, float, float]] = {
    "server-round": (int, 0, 1_000_000),
    "num-server-rounds": (int, 1, 100_000),
    "local-epochs": (int, 1, 1_000),
    "batch-size": (int, 1, 10_000_000),
    "evaluate-every": (int, 1, 100_000),
    "seed": (int, 0, 2**63 - 1),  # NumPy generators take non-negative seeds only
    "learning-rate": (float, 1e-12, 10.0),
    "proximal-mu": (float, 0.0, 1e3),
    "clipping-norm": (float, 1e-6, 1e3),
    "target-epsilon": (float, 0.0, 1e3),
    "cutoff-pd": (float, 1e-9, 1 - 1e-9),
}


def _refuse(what: str) -> NodeRefusal:
    return NodeRefusal.invalid_request(what)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "…"


# ----------------------------------------------------------------------------- config values
def config_number(cfg: dict, key: str, default: Any = _REQUIRED) -> int | float:
    """``cfg[key]`` as the type and within the bounds of :data:`CONFIG_LIMITS`."""
    kind, lo, hi = CONFIG_LIMITS[key]
    if cfg.get(key) is None:  # absent (in-process callers may pass None; Flower records hold no None)
        if default is _REQUIRED:
            raise _refuse(f"the config lacks '{key}'")
        return default
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _refuse(f"'{key}' must be a number, got {_shown(v)}")
    if kind is int:
        if isinstance(v, float) and not v.is_integer():
            raise _refuse(f"'{key}' must be a whole number, got {_shown(v)}")
        if not (isinstance(v, int) or math.isfinite(v)):
            raise _refuse(f"'{key}' must be a whole number, got {_shown(v)}")
        v = int(v)
    else:
        v = float(v)
        if not math.isfinite(v):
            raise _refuse(f"'{key}' must be a finite number, got {_shown(v)}")
    if not lo <= v <= hi:
        raise _refuse(f"'{key}' must lie in [{lo:g}, {hi:g}], got {_shown(v)}")
    return v


def config_bool(cfg: dict, key: str, default: bool) -> bool:
    v = default if cfg.get(key) is None else cfg[key]
    if not isinstance(v, bool):
        raise _refuse(f"'{key}' must be true or false, got {_shown(v)}")
    return v


def config_text(cfg: dict, key: str, default: str | None = None, choices: tuple[str, ...] = (),
                max_chars: int = MAX_TEXT) -> str:
    if cfg.get(key) is None:
        if default is None:
            raise _refuse(f"the config lacks '{key}'")
        return default
    v = cfg[key]
    if not isinstance(v, str) or len(v) > max_chars or not v.isprintable():
        raise _refuse(f"'{key}' must be printable text of at most {max_chars} characters, got {_shown(v)}")
    if choices and v not in choices:
        raise _refuse(f"'{key}' must be one of {', '.join(choices)}, got {_shown(v)}")
    return v


#: the personalisation keys (:mod:`clients.personalization`), checked by models.personalization
PERSONAL_KEYS = ("local-layers", "output-bias-learning-rate", "aggregation-weight", "personalize",
                 "personal-epochs", "personal-proximal-mu", "step-noise-target")


def personal_keys(cfg: dict) -> dict:
    """The personalisation keys the message carries, after :func:`models.personalization.personal_settings`
    checked them (typed, bounded)."""
    from models.personalization import PersonalizationConfigError, personal_settings

    keys = {k: cfg[k] for k in PERSONAL_KEYS if cfg.get(k) is not None}
    try:
        personal_settings(keys)
    except PersonalizationConfigError as exc:
        raise _refuse(str(exc)) from None
    return keys


def _ledger_head(cfg: dict) -> str:
    head = config_text(cfg, "ledger-head", "")
    if head and not (len(head) == 64 and all(c in "0123456789abcdef" for c in head)):
        raise _refuse(f"'ledger-head' must be a sha256 hex digest or empty, got {_shown(head)}")
    return head


def statistics_request(cfg: dict) -> dict:
    """The statistics query's config, typed and bounded (the run's shape is optional: a query
    without it plans nothing)."""
    out = {"run-id": config_text(cfg, "run-id", ""), "schema-key": config_text(cfg, "schema-key", ""),
           "dp": config_bool(cfg, "dp", True), "target-epsilon": config_number(cfg, "target-epsilon", 0.0),
           "seed": config_number(cfg, "seed", 0)}
    shape = ("num-server-rounds", "local-epochs", "batch-size")
    if any(k in cfg for k in shape):
        out.update({k: config_number(cfg, k) for k in shape})
        out["evaluate-every"] = config_number(cfg, "evaluate-every", 1)
    return {**out, **personal_keys(cfg)}


def train_request(cfg: dict, schema: Schema) -> tuple[dict, FeatureEncoder, ModelSpec]:
    """A training round's config (typed, bounded), its encoder and model spec."""
    out = {"run-id": config_text(cfg, "run-id", ""), "dp": config_bool(cfg, "dp", True),
           "optimizer": config_text(cfg, "optimizer", "adam", choices=("adam", "sgd")),
           "ledger-head": _ledger_head(cfg),
           # evaluate the received weights (the previous round's model) before training: a second release
           P.EVALUATE_RECEIVED: config_bool(cfg, P.EVALUATE_RECEIVED, False)}
    for key in ("server-round", "num-server-rounds", "local-epochs", "batch-size", "learning-rate",
                "clipping-norm"):
        out[key] = config_number(cfg, key)
    for key, default in (("proximal-mu", 0.0), ("target-epsilon", 0.0), ("evaluate-every", 1), ("seed", 0)):
        out[key] = config_number(cfg, key, default)
    if out["server-round"] < 1:
        raise _refuse(f"'server-round' of a training round must be at least 1, got {out['server-round']}")
    if out[P.EVALUATE_RECEIVED]:  # the evaluation's own keys: clients.node.evaluate checks them again, as ever
        if out["server-round"] < 2:
            raise _refuse(f"'{P.EVALUATE_RECEIVED}' asks to evaluate the previous round's model; round "
                          f"{out['server-round']} has none")
        out["cutoff-pd"] = config_number(cfg, "cutoff-pd", 0.2)
    encoder = check_encoder(cfg.get("encoder"), schema)
    spec = check_model_spec(cfg.get("model-spec"), encoder.n_outputs)
    out.update(personal_keys(cfg))
    out["model-spec"] = json.dumps(spec.to_dict())  # the checked spec (the personal fine-tune rebuilds it)
    return out, encoder, spec


def evaluation_request(cfg: dict, schema: Schema) -> tuple[dict, FeatureEncoder, ModelSpec]:
    """An evaluation's config (typed, bounded), its encoder and model spec."""
    out = {"run-id": config_text(cfg, "run-id", ""), "server-round": config_number(cfg, "server-round", 0),
           "cutoff-pd": config_number(cfg, "cutoff-pd", 0.2), "seed": config_number(cfg, "seed", 0),
           "ledger-head": _ledger_head(cfg)}
    encoder = check_encoder(cfg.get("encoder"), schema)
    return out, encoder, check_model_spec(cfg.get("model-spec"), encoder.n_outputs)


def secure_aggregation_settings(cfg: dict, n_arrays: int) -> tuple[list[str], float, float]:
    """The SecAgg+ round's own keys, removed from ``cfg``: the arrays' names (a JSON list of
    ``n_arrays`` distinct names), the largest weight M ≥ 1 and the clipping range c > 0 (both
    finite, at most 1e12) — checked before training, so that settings the node cannot use never
    cost it a round of budget."""
    try:
        names = json.loads(str(cfg.pop(P.SECAGG_ARRAY_NAMES, "")))
    except ValueError:
        names = None
    if (not isinstance(names, list) or len(names) != n_arrays or len(set(names)) != n_arrays
            or not all(isinstance(n, str) for n in names)):
        raise _refuse(f"'{P.SECAGG_ARRAY_NAMES}' must be a JSON list of {n_arrays} distinct names")
    settings = []
    for key, lo in ((P.SECAGG_MAX_WEIGHT, 1.0), (P.SECAGG_CLIPPING, 1e-12)):
        v = cfg.pop(key, None)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= 1e12:
            raise _refuse(f"'{key}' must be a number in [{lo:g}, 1e12], got {_shown(v)}")
        settings.append(float(v))
    return names, settings[0], settings[1]


# ----------------------------------------------------------------------------- the encoder
def _json_object(text: Any, what: str, max_chars: int) -> dict:
    if not isinstance(text, str):
        raise _refuse(f"{what} must be JSON text, got {type(text).__name__}")
    if len(text) > max_chars:
        raise _refuse(f"{what} is {len(text)} characters long; at most {max_chars} are accepted")
    try:
        d = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _refuse(f"{what} is not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(d, dict):
        raise _refuse(f"{what} must be a JSON object")
    return d


def _is_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _expected_feature(f: Feature) -> EncodedFeature:
    """What the schema implies for feature ``f`` (knots and reference come from the message)."""
    e = EncodedFeature(name=f.name, kind=f.kind, transform=f.transform,
                       value_range=[float(f.range[0]), float(f.range[1])] if f.range else [])
    if f.kind == "ordinal":
        e.levels = f.levels()
        e.width = len(e.levels) - 1
    elif f.kind == "categorical":
        e.categories = list(f.categories)
        e.width = len(e.categories)
    elif f.kind == "binary":
        e.width = 1
    return e


def check_knots(f: Feature, knots: Any) -> list[float]:
    """Finite, strictly increasing knots, gaps ≥ :data:`MIN_KNOT_GAP` × the transformed range."""
    where = f"the encoder's feature '{f.name}'"
    if not isinstance(knots, list) or not 2 <= len(knots) <= MAX_KNOTS:
        raise _refuse(f"{where}: knots must be a list of 2 to {MAX_KNOTS} numbers")
    if not all(_is_number(k) for k in knots):
        bad = next(k for k in knots if not _is_number(k))
        raise _refuse(f"{where}: every knot must be a finite number, got {_shown(bad)}")
    t_lo, t_hi = (float(v) for v in apply_transform(f.transform, np.asarray(f.range, dtype=float)))
    gap = MIN_KNOT_GAP * max(1.0, t_hi - t_lo)
    k = np.asarray(knots, dtype=float)
    steps = np.diff(k)
    if not np.all(steps >= gap):
        j = int(np.argmin(steps >= gap))
        raise _refuse(f"{where}: knots must increase by at least {gap:g} (knot {j + 1} = {k[j]!r}, "
                      f"knot {j + 2} = {k[j + 1]!r}); a zero-width interval divides by zero")
    return [float(v) for v in knots]


def _check_reference(e: EncodedFeature, ref: Any) -> Any:
    where = f"the encoder's feature '{e.name}'"
    if e.kind == "numeric":
        ok = _is_number(ref) and e.value_range[0] <= ref <= e.value_range[1]
    elif e.kind == "ordinal":
        ok = _is_number(ref) and float(ref).is_integer() and int(ref) in e.levels
    elif e.kind == "categorical":
        ok = isinstance(ref, str) and ref in e.categories
    else:
        ok = _is_number(ref) and float(ref) in (0.0, 1.0)
    if not ok:
        raise _refuse(f"{where}: reference {_shown(ref)} is not a valid value of the feature")
    return ref


def check_encoder(text: Any, schema: Schema) -> FeatureEncoder:
    """The coordinator's encoder, rebuilt from the node's schema with the message's knots and
    reference values after checking every field (module docstring)."""
    d = _json_object(text, "the encoder", MAX_ENCODER_CHARS)
    if d.get("format") != "fedcredit-encoder/1":
        raise _refuse(f"the encoder's format must be 'fedcredit-encoder/1', got {_shown(d.get('format'))}")
    if d.get("schema_key") != schema.key:
        raise _refuse(f"the encoder is for schema {_shown(d.get('schema_key'))}; this node's data follows {schema.key}")
    include = d.get("include_protected")
    if not isinstance(include, bool):
        raise _refuse("the encoder's include_protected must be true or false")
    feats = d.get("features")
    wanted = schema.model_features(include)
    if not isinstance(feats, list) or [f.get("name") if isinstance(f, dict) else None for f in feats] != [
            f.name for f in wanted]:
        raise _refuse(f"the encoder's features must be the schema's {len(wanted)} model features in order")
    out, start = [], 0
    for f, got in zip(wanted, feats):
        e = _expected_feature(f)
        if f.kind == "numeric":
            e.knots = check_knots(f, got.get("knots"))
            e.width = len(e.knots) - 1
        expected = {**vars(e), "start": start, "reference": got.get("reference")}
        if set(got) != set(expected):
            raise _refuse(f"the encoder's feature '{f.name}' must have the fields {', '.join(sorted(expected))}")
        for key, value in expected.items():
            if key not in ("knots", "reference") and got[key] != value:
                raise _refuse(f"the encoder's feature '{f.name}': {key} must be {_shown(value)} for this "
                              f"schema, got {_shown(got[key])}")
        e.start = start
        e.reference = _check_reference(e, got.get("reference"))
        start += e.width
        out.append(e)
    return FeatureEncoder(schema_key=schema.key, features=out, include_protected=include)


# ----------------------------------------------------------------------------- model and weights
def check_model_spec(text: Any, n_inputs: int) -> ModelSpec:
    """An architecture the node knows, fed by the encoder's ``n_inputs`` columns, bounded in size."""
    d = _json_object(text, "the model spec", MAX_SPEC_CHARS)
    if set(d) != {"architecture", "n_inputs", "hidden"}:
        raise _refuse("the model spec must have exactly the fields architecture, n_inputs, hidden")
    if d["architecture"] not in ARCHITECTURES:
        raise _refuse(f"the model's architecture must be one of {', '.join(ARCHITECTURES)}, "
                      f"got {_shown(d['architecture'])}")
    if d["n_inputs"] != n_inputs or isinstance(d["n_inputs"], bool):
        raise _refuse(f"the model's n_inputs must be the encoder's {n_inputs} columns, got {_shown(d['n_inputs'])}")
    hidden = d["hidden"]
    if (not isinstance(hidden, list) or len(hidden) > MAX_HIDDEN_LAYERS
            or not all(isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= MAX_HIDDEN_WIDTH for h in hidden)):
        raise _refuse(f"the model's hidden layers must be a list of at most {MAX_HIDDEN_LAYERS} widths in "
                      f"[1, {MAX_HIDDEN_WIDTH}], got {_shown(hidden)}")
    if d["architecture"] == "mlp" and not hidden:
        raise _refuse("the mlp model needs at least one hidden layer")
    return ModelSpec(d["architecture"], n_inputs, tuple(hidden))


def check_weights(weights: dict[str, Any], spec: ModelSpec) -> dict[str, np.ndarray]:
    """Named float32 arrays of the spec's shapes, finite, at most :data:`MAX_ABS_WEIGHT` in magnitude."""
    expected = parameter_shapes(spec)
    if not isinstance(weights, dict) or sorted(weights) != sorted(expected):
        raise _refuse(f"the weights must be the model's {len(expected)} parameters")
    out = {}
    for name, shape in expected.items():
        w = weights[name]
        if not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.shape != shape:
            raise _refuse(f"weights '{name}' must be float32 of shape {shape}, got "
                          f"{getattr(w, 'dtype', type(w).__name__)} {getattr(w, 'shape', '')}")
        if not np.all(np.isfinite(w)):
            raise _refuse(f"weights '{name}' hold NaN or infinite values")
        if w.size and float(np.max(np.abs(w))) > MAX_ABS_WEIGHT:
            raise _refuse(f"weights '{name}' exceed {MAX_ABS_WEIGHT:g} in magnitude "
                          f"(largest {float(np.max(np.abs(w))):.3g})")
        out[name] = np.ascontiguousarray(w)
    return out
