"""The consortium schema: which columns every institution's table has, and what they mean.

docs/schemas.md explains writing one (and `fedcredit schema infer` drafts one from a table).

A schema file (``configs/schemas/*.toml``) declares

* ``[schema]`` — ``name``, ``version``, ``description``;
* ``[label]`` — the target column: ``name``, ``description``, ``positive`` (the value that means
  *default*) and ``negative``;
* ``[id]`` — optional borrower id column (``name``); ids are checked for duplicates and never
  used as a model input;
* ``[groups.<name>]`` — optional feature groups with the adverse-action ``reason`` text that
  reason codes print when the group pushes an applicant's PD up;
* ``[[feature]]`` — one table per feature with

  ==============  ==========================================================================
  key             meaning
  ==============  ==========================================================================
  ``name``        column name in the consortium's clean table
  ``kind``        ``numeric`` | ``ordinal`` (integer levels) | ``categorical`` | ``binary``
  ``description`` human-readable meaning; reason codes quote it
  ``range``       ``[min, max]`` valid values (numeric, ordinal; inclusive)
  ``categories``  valid values (categorical)
  ``missing``     ``reject`` (a missing value is an error) or ``impute``
  ``impute``      the value used for a missing entry when ``missing = "impute"``
  ``transform``   ``identity`` | ``log1p`` | ``signed-log1p`` (numeric hint for the encoder)
  ``bins``        number of histogram bins for federated statistics (numeric; default 64)
  ``protected``   ``true`` for attributes used only for fairness checks (not model inputs)
  ``group``       name of a ``[groups.*]`` entry (for reason codes)
  ``bands``       fairness bands of a numeric protected feature: ascending lower bounds,
                  e.g. ``[18, 25, 35]`` → groups 18–24, 25–34, 35+
  ``unit``        optional unit, for documentation
  ==============  ==========================================================================

:func:`load_schema` validates the file itself and raises :class:`~configs.errors.ConfigError`
naming the offending key.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configs.toml_reader import Table, read_toml, resolve_config_file

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
DEFAULT_SCHEMA = "consumer-credit-v1"

KINDS = ("numeric", "ordinal", "categorical", "binary")
TRANSFORMS = ("identity", "log1p", "signed-log1p")
MISSING_POLICIES = ("reject", "impute")
DEFAULT_BINS = 64


def apply_transform(name: str, x):
    """Apply a schema transform hint elementwise (works on floats and NumPy arrays).

    ``log1p``: log(1 + x), for x > -1.  ``signed-log1p``: sign(x)·log(1 + |x|), for any x
    (amounts that may be negative, such as a credit balance). ``identity``: x.
    """
    import numpy as np

    if name == "identity":
        return x
    if name == "log1p":
        return np.log1p(x)
    if name == "signed-log1p":
        return np.sign(x) * np.log1p(np.abs(x))
    raise ValueError(f"unknown transform {name!r}")


@dataclass(frozen=True)
class Feature:
    """One schema feature (see the module docstring for the meaning of each field)."""

    name: str
    kind: str
    description: str
    range: tuple[float, float] | None = None
    categories: tuple[str, ...] | None = None
    missing: str = "reject"
    impute: Any = None
    transform: str = "identity"
    bins: int = DEFAULT_BINS
    protected: bool = False
    group: str | None = None
    unit: str | None = None
    bands: tuple[float, ...] | None = None

    @property
    def is_numeric_kind(self) -> bool:
        """True for kinds stored as numbers in the clean table (numeric, ordinal, binary)."""
        return self.kind in ("numeric", "ordinal", "binary")

    def valid_values(self) -> str:
        """Human-readable statement of the valid values (for error messages)."""
        if self.kind == "categorical":
            return "one of " + ", ".join(f"'{c}'" for c in self.categories or ())
        if self.kind == "binary":
            return "0 or 1"
        lo, hi = self.range  # type: ignore[misc]
        integer = " (whole numbers)" if self.kind == "ordinal" else ""
        return f"between {_fmt(lo)} and {_fmt(hi)}{integer}"

    def bin_edges(self):
        """Histogram bin edges in the *transformed* space, ``bins + 1`` values.

        Federated statistics count each institution's rows per bin over these edges; values
        are clipped into ``[edges[0], edges[-1]]`` first, so every row falls in exactly one bin.
        """
        import numpy as np

        lo, hi = self.range  # type: ignore[misc]
        t_lo, t_hi = apply_transform(self.transform, np.array([lo, hi], dtype=float))
        return np.linspace(float(t_lo), float(t_hi), self.bins + 1)

    def levels(self) -> list[int]:
        """The integer levels of an ordinal feature (``range`` inclusive)."""
        lo, hi = self.range  # type: ignore[misc]
        return list(range(int(lo), int(hi) + 1))


@dataclass(frozen=True)
class Label:
    name: str
    description: str
    positive: Any
    negative: Any


@dataclass(frozen=True)
class Schema:
    """A validated consortium schema."""

    name: str
    version: str
    description: str
    label: Label
    features: tuple[Feature, ...]
    id_column: str | None = None
    groups: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def key(self) -> str:
        """``name-vVERSION``: the schema identity recorded in models and privacy state."""
        return f"{self.name}-v{self.version}"

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def protected_features(self) -> list[Feature]:
        return [f for f in self.features if f.protected]

    def model_features(self, include_protected: bool = False) -> list[Feature]:
        """Features that feed the model; protected attributes are excluded by default."""
        return [f for f in self.features if include_protected or not f.protected]

    @property
    def columns(self) -> list[str]:
        """All columns of a clean table: id (if any), features, label."""
        cols = [self.id_column] if self.id_column else []
        return cols + self.feature_names + [self.label.name]

    def reason_text(self, feature: Feature) -> str:
        """Adverse-action wording for a feature: its group's reason, else its description."""
        if feature.group and feature.group in self.groups:
            return self.groups[feature.group]
        return feature.description

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (stored with a model package so it is self-describing)."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "label": vars(self.label),
            "id": self.id_column,
            "groups": dict(self.groups),
            "features": [
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(f).items()}
                for f in self.features
            ],
        }

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON form (changes when any declaration changes)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def resolve_schema_path(name_or_path: str | Path | None) -> Path:
    """A schema given by path, or by name of a file in ``configs/schemas`` (``.toml`` optional)."""
    return resolve_config_file(DEFAULT_SCHEMA if name_or_path is None else name_or_path, SCHEMA_DIR, "schema")


def load_schema(name_or_path: str | Path | None = None) -> Schema:
    """Load and validate a schema file; raise :class:`ConfigError` naming the offending key."""
    path = resolve_schema_path(name_or_path)
    root = Table(read_toml(path, "schema"), path, "")
    root.reject_unknown(["schema", "label", "id", "groups", "feature"])

    head = root.sub("schema")
    head.reject_unknown(["name", "version", "description"])
    name = head.get("name", str)
    version = str(head.get("version", (str, int)))
    description = head.get("description", str, "")

    groups: dict[str, str] = {}
    gtab = root.sub("groups", required=False)
    if gtab is not None:
        for gname in gtab.data:
            g = gtab.sub(gname)
            g.reject_unknown(["reason"])
            groups[gname] = g.get("reason", str)

    label = _parse_label(root.sub("label"))

    id_column = None
    idtab = root.sub("id", required=False)
    if idtab is not None:
        idtab.reject_unknown(["name", "description"])
        id_column = idtab.get("name", str)

    features = tuple(_parse_feature(t, groups) for t in root.array_of_tables("feature"))
    if not features:
        raise root.fail("feature", "a schema needs at least one [[feature]]")
    seen: dict[str, int] = {}
    for i, f in enumerate(features):
        if f.name in seen:
            raise root.fail(f"feature[{i}].name", f"duplicate feature name '{f.name}' (also feature[{seen[f.name]}])")
        seen[f.name] = i
    for col, what in ((label.name, "label"), (id_column, "id")):
        if col is not None and col in seen:
            raise root.fail(f"{what}.name", f"'{col}' is also declared as a feature")
    if id_column is not None and id_column == label.name:
        raise root.fail("id.name", "the id column cannot be the label column")
    if not any(not f.protected for f in features):
        raise root.fail("feature", "every feature is protected; the model would have no inputs")
    return Schema(name=name, version=version, description=description, label=label,
                  features=features, id_column=id_column, groups=groups, source=str(path))


def _parse_label(t: Table) -> Label:
    t.reject_unknown(["name", "description", "positive", "negative"])
    positive = t.get("positive", (int, str))
    negative = t.get("negative", (int, str))
    if positive == negative:
        raise t.fail("negative", f"must differ from positive ({positive!r})")
    return Label(name=t.get("name", str), description=t.get("description", str, ""),
                 positive=positive, negative=negative)


_FEATURE_KEYS = ["name", "kind", "description", "range", "categories", "missing", "impute",
                 "transform", "bins", "protected", "group", "unit", "bands"]


def _parse_feature(t: Table, groups: dict[str, str]) -> Feature:
    t.reject_unknown(_FEATURE_KEYS)
    name = t.get("name", str)
    if not name.strip():
        raise t.fail("name", "must not be empty")
    t = Table(t.data, t.file, f"{t.path} ('{name}')")
    kind = t.choice("kind", KINDS)
    description = t.get("description", str, describe="human-readable; reason codes quote it")
    protected = t.get("protected", bool, False)
    group = t.get("group", str, None)
    if group is not None and group not in groups:
        known = ", ".join(groups) or "none declared"
        raise t.fail("group", f"unknown group '{group}'; declare it as [groups.{group}] (known: {known})")
    unit = t.get("unit", str, None)

    value_range = None
    categories = None
    if kind in ("numeric", "ordinal"):
        if t.has("categories"):
            raise t.fail("categories", f"only categorical features have categories (this one is {kind})")
        raw = t.get("range", list, describe="[min, max]")
        if len(raw) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
            raise t.fail("range", f"expected [min, max] with two numbers, got {raw!r}")
        lo, hi = float(raw[0]), float(raw[1])
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise t.fail("range", "bounds must be finite numbers")
        if lo >= hi:
            raise t.fail("range", f"min {_fmt(lo)} must be below max {_fmt(hi)}")
        if kind == "ordinal" and not (lo.is_integer() and hi.is_integer()):
            raise t.fail("range", "ordinal features take whole-number bounds")
        value_range = (lo, hi)
    elif kind == "categorical":
        if t.has("range"):
            raise t.fail("range", "categorical features declare categories, not a range")
        raw = t.get("categories", list)
        if len(raw) < 2 or not all(isinstance(c, str) and c for c in raw):
            raise t.fail("categories", "expected at least two non-empty strings")
        if len(set(raw)) != len(raw):
            dup = sorted({c for c in raw if raw.count(c) > 1})
            raise t.fail("categories", f"duplicate categories: {', '.join(dup)}")
        categories = tuple(raw)
    else:  # binary
        for key in ("range", "categories"):
            if t.has(key):
                raise t.fail(key, "binary features take the values 0 and 1; remove this key")
        value_range = (0.0, 1.0)

    transform = t.choice("transform", TRANSFORMS, "identity")
    if transform != "identity" and kind != "numeric":
        raise t.fail("transform", f"transforms apply to numeric features only (this one is {kind})")
    if transform == "log1p" and value_range[0] <= -1:  # type: ignore[index]
        raise t.fail("transform", "log1p needs min > -1; use signed-log1p for values that can be negative")
    bins = t.get("bins", int, DEFAULT_BINS)
    if t.has("bins") and kind != "numeric":
        raise t.fail("bins", "histogram bins apply to numeric features only")
    if not 2 <= bins <= 4096:
        raise t.fail("bins", f"expected 2..4096, got {bins}")

    bands = None
    if t.has("bands"):
        raw = t.get("bands", list)
        if kind != "numeric":
            raise t.fail("bands", "fairness bands apply to numeric features only (categories are their own groups)")
        if len(raw) < 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
            raise t.fail("bands", "expected at least two numbers (ascending lower bounds of the bands)")
        if any(b >= c for b, c in zip(raw, raw[1:])):
            raise t.fail("bands", f"lower bounds must be strictly ascending, got {raw}")
        if raw[0] > value_range[0] or raw[-1] >= value_range[1]:
            raise t.fail("bands", f"the first bound must be ≤ the range minimum {_fmt(value_range[0])} and the "
                         f"last below the maximum {_fmt(value_range[1])}")
        bands = tuple(float(v) for v in raw)
    elif protected and kind == "numeric":
        raise t.fail("bands", "a protected numeric feature needs fairness bands, e.g. bands = [18, 25, 35, 45]")

    missing = t.choice("missing", MISSING_POLICIES, "reject")
    impute = None
    if missing == "impute":
        impute = t.get("impute", (int, float, str), describe='the value to use for a missing entry')
        if kind == "categorical":
            if impute not in categories:  # type: ignore[operator]
                raise t.fail("impute", f"'{impute}' is not one of the categories")
        else:
            if not isinstance(impute, (int, float)):
                raise t.fail("impute", f"expected a number for a {kind} feature, got {impute!r}")
            lo, hi = value_range  # type: ignore[misc]
            if not lo <= impute <= hi or (kind != "numeric" and not float(impute).is_integer()):
                raise t.fail("impute", f"{impute!r} is outside the valid values ({_fmt(lo)}..{_fmt(hi)})")
    elif t.has("impute"):
        raise t.fail("impute", 'only used with missing = "impute"; remove it or change the policy')

    return Feature(name=name, kind=kind, description=description, range=value_range,
                   categories=categories, missing=missing, impute=impute, transform=transform,
                   bins=bins, protected=protected, group=group, unit=unit, bands=bands)
