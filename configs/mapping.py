"""Column mappings: an institution's own column names, codes and units → the consortium schema.

A mapping file (``configs/mappings/*.toml``) declares

* ``[mapping]`` — ``name``, ``schema`` (schema name) and ``schema_version`` it targets,
  ``description``;
* ``[columns]`` — ``SOURCE_COLUMN = "schema_column"`` renames. Source columns not listed are
  kept under their own names (and then reported as unknown extra columns by validation);
* ``[recode.<schema_column>]`` — ``"source value" = schema value`` replacements, applied
  after renaming (e.g. undocumented education codes → ``"other"``). A key matches a cell with
  the same text (``"A11"``, ``"good"``) or, when the key is a number, a cell with the same
  numeric value: an integer key (``"1"``) matches ``1``, ``1.0``, ``01``, ``1e0``; a key with
  decimals matches the values that round to it at that many decimals (``"-0.7043"`` matches
  ``-0.70431`` and ``-7.0429e-01``) — the way to name the codes of a standardised categorical
  column. A target of ``""`` makes the cell missing (``"NA" = ""`` for a file that writes NA
  where a value is missing); the schema's ``missing`` policy then applies. Values with no entry
  stay as they are, so validation still reports them;
* ``[scale]`` — ``schema_column = factor`` and ``[offset]`` — ``schema_column = shift``: the
  affine map ``value × factor + shift`` of a numeric feature (unit conversion, e.g. thousands →
  units; an offset alone, a whole number, also for ordinal levels, e.g. levels 1..4 → 0..3);
* ``[unstandardise.<schema_column>]`` — ``mean = …``, ``sd = …``: undo a z-score standardisation,
  ``value × sd + mean`` (the named form of ``[scale]`` + ``[offset]``; not both for one column);
* ``[read]`` — how to read the institution's file: ``delimiter`` (``"auto"`` sniffed, or
  ``"comma"``, ``"semicolon"``, ``"tab"``, ``"pipe"``, ``"whitespace"``) and
  ``drop_leading_column`` (``true``: the first column is a row index or a junk header name —
  see :class:`clients.raw_table.ReadOptions`);
* ``[ignore] columns = [...]`` — source columns dropped silently (known, deliberately unused).

:func:`load_mapping` validates the file against the schema and names the offending key;
:func:`apply_mapping` turns a raw :class:`pandas.DataFrame` into schema column names and codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configs.schema import Schema
from configs.toml_reader import Table, read_toml, resolve_config_file

MAPPING_DIR = Path(__file__).resolve().parent / "mappings"
#: ``[read] delimiter`` values (``auto``: sniffed)
DELIMITER_CHOICES = ("auto", "comma", "semicolon", "tab", "pipe", "whitespace")


@dataclass(frozen=True)
class Affine:
    """``value × scale + offset``: a numeric column's map from the institution's unit to the schema's."""

    scale: float = 1.0
    offset: float = 0.0
    #: how the mapping wrote it: ``[scale]``/``[offset]``, or ``[unstandardise.<column>]``
    written_as: str = "scale"

    def apply(self, values):
        return values * self.scale + self.offset if self.scale != 1.0 or self.offset != 0.0 else values

    def invert(self, values):
        """The institution's own value of a schema value (for messages)."""
        return (values - self.offset) / self.scale

    def words(self, column: str) -> str:
        if self.written_as == "unstandardise":
            return f"after undoing the standardisation (× sd {self.scale:g} + mean {self.offset:g}, the mapping's " \
                   f"[unstandardise.{column}])"
        parts = ([f"× {self.scale:g}"] if self.scale != 1.0 else []) + (
            [f"{'+' if self.offset >= 0 else '−'} {abs(self.offset):g}"] if self.offset != 0.0 else [])
        tables = " and ".join(t for t, on in (("[scale]", self.scale != 1.0), ("[offset]", self.offset != 0.0)) if on)
        return f"after the mapping's {tables} for '{column}' ({' '.join(parts)})"


@dataclass(frozen=True)
class Mapping:
    name: str
    schema: str
    schema_version: str
    description: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    recode: dict[str, dict[str, Any]] = field(default_factory=dict)
    affine: dict[str, Affine] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    source: str = ""
    delimiter: str = "auto"  # [read]
    drop_leading_column: bool = False  # [read]

    @property
    def scale(self) -> dict[str, float]:
        """``{column: factor}`` of the columns with a scale factor (``[scale]`` or ``[unstandardise]``)."""
        return {c: a.scale for c, a in self.affine.items() if a.scale != 1.0}

    def schema_column_for(self, source_column: str) -> str:
        return self.columns.get(source_column, source_column)

    def source_column_for(self, schema_column: str) -> str:
        """The institution's own name for a schema column (for error messages)."""
        for src, dst in self.columns.items():
            if dst == schema_column:
                return src
        return schema_column


def resolve_mapping_path(name_or_path: str | Path) -> Path:
    """A mapping given by path, or by name of a file in ``configs/mappings`` (``.toml`` optional)."""
    return resolve_config_file(name_or_path, MAPPING_DIR, "mapping")


def mapping_reference(name_or_path: str | Path) -> str:
    """How to name a mapping to another process: an existing file by its absolute path (a worker
    may run in another directory), a shipped mapping by its name."""
    p = Path(name_or_path)
    return str(p.resolve()) if p.is_file() else str(name_or_path)


def load_mapping(name_or_path: str | Path, schema: Schema) -> Mapping:
    """Load a mapping and check every key against ``schema``."""
    path = resolve_mapping_path(name_or_path)
    root = Table(read_toml(path, "mapping"), path, "")
    root.reject_unknown(["mapping", "columns", "recode", "scale", "offset", "unstandardise", "read", "ignore"])
    head = root.sub("mapping")
    head.reject_unknown(["name", "schema", "schema_version", "description"])
    name = head.get("name", str)
    schema_name = head.get("schema", str)
    schema_version = str(head.get("schema_version", (str, int)))
    if schema_name != schema.name or schema_version != schema.version:
        raise head.fail(
            "schema",
            f"this mapping targets schema '{schema_name}' v{schema_version}, but the schema in use is "
            f"'{schema.name}' v{schema.version} ({schema.source}); pick the matching --schema or mapping",
        )
    valid_targets = set(schema.columns)

    columns: dict[str, str] = {}
    ctab = root.sub("columns", required=False)
    if ctab is not None:
        targets: dict[str, str] = {}
        for src, dst in ctab.data.items():
            if not isinstance(dst, str):
                raise ctab.fail(src, f"expected the schema column name as a string, got {dst!r}")
            if dst not in valid_targets:
                raise ctab.fail(src, f"'{dst}' is not a column of schema {schema.key}; valid: {', '.join(schema.columns)}")
            if dst in targets:
                raise ctab.fail(src, f"'{dst}' is already the target of '{targets[dst]}'")
            targets[dst] = src
            columns[src] = dst

    recode: dict[str, dict[str, Any]] = {}
    rtab = root.sub("recode", required=False)
    if rtab is not None:
        for col in rtab.data:
            if col not in valid_targets:
                raise rtab.fail(col, f"'{col}' is not a column of schema {schema.key} (recode tables are keyed by schema column)")
            sub = rtab.sub(col)
            for value, target in sub.data.items():
                if not isinstance(target, (str, int, float)) or isinstance(target, bool):
                    raise sub.fail(value, f"expected a string or number, got {target!r}")
                _check_recode_target(sub, value, target, col, schema)
            recode[col] = dict(sub.data)

    affine = _read_affine(root, schema)
    delimiter, drop_leading = _read_read(root.sub("read", required=False))

    ignore: tuple[str, ...] = ()
    itab = root.sub("ignore", required=False)
    if itab is not None:
        itab.reject_unknown(["columns"])
        cols = itab.get("columns", list)
        if not all(isinstance(c, str) for c in cols):
            raise itab.fail("columns", "expected a list of column names")
        ignore = tuple(cols)

    return Mapping(name=name, schema=schema_name, schema_version=schema_version,
                   description=head.get("description", str, ""), columns=columns,
                   recode=recode, affine=affine, ignore=ignore, source=str(path), delimiter=delimiter,
                   drop_leading_column=drop_leading)


def _read_affine(root: Table, schema: Schema) -> dict[str, Affine]:
    """``[scale]``, ``[offset]`` and ``[unstandardise.<column>]`` → one :class:`Affine` per column."""
    scales = _column_numbers(root.sub("scale", required=False), schema, ("numeric",))
    offsets = _column_numbers(root.sub("offset", required=False), schema, ("numeric", "ordinal"))
    out: dict[str, Affine] = {}
    for col, factor in scales.items():
        if not factor > 0:
            raise root.fail(f"scale.{col}", f"scale factor must be positive, got {factor:g}")
    for col, shift in offsets.items():
        if schema.feature(col).kind == "ordinal" and not float(shift).is_integer():
            raise root.fail(f"offset.{col}", f"'{col}' is ordinal: its offset must be a whole number (levels stay "
                                            f"whole), got {shift:g}")
    for col in {**scales, **offsets}:
        out[col] = Affine(scales.get(col, 1.0), offsets.get(col, 0.0))
    utab = root.sub("unstandardise", required=False)
    for col in (utab.data if utab is not None else {}):
        sub = utab.sub(col)
        _check_numeric_target(utab, col, schema, ("numeric",))
        if col in out:
            raise utab.fail(col, f"'{col}' also has a [scale] or [offset] entry; use one of the two ways")
        sub.reject_unknown(["mean", "sd"])
        mean, sd = sub.get("mean", float), sub.get("sd", float, describe="the standard deviation the values were "
                                                                           "divided by")
        if not (math.isfinite(sd) and sd > 0) or not math.isfinite(mean):
            raise sub.fail("sd", f"needs a positive finite sd and a finite mean, got sd {sd:g}, mean {mean:g}")
        out[col] = Affine(sd, mean, "unstandardise")
    return out


def _column_numbers(t: Table | None, schema: Schema, kinds: tuple[str, ...]) -> dict[str, float]:
    if t is None:
        return {}
    out = {}
    for col in t.data:
        _check_numeric_target(t, col, schema, kinds)
        value = t.get(col, float)
        if not math.isfinite(value):
            raise t.fail(col, f"expected a finite number, got {value}")
        out[col] = value
    return out


def _check_numeric_target(t: Table, col: str, schema: Schema, kinds: tuple[str, ...]) -> None:
    allowed = " or ".join(kinds)
    if col == schema.label.name:
        raise t.fail(col, f"only {allowed} features can be transformed; '{col}' is the label (recode its values "
                          f"in [recode.{col}])")
    if col not in schema.feature_names:
        raise t.fail(col, f"'{col}' is not a numeric column of schema {schema.key} (keys are schema column names)")
    kind = schema.feature(col).kind
    if kind not in kinds:
        raise t.fail(col, f"only {allowed} features can be transformed here ('{col}' is {kind})")


def _read_read(t: Table | None) -> tuple[str, bool]:
    """``[read]``: ``delimiter`` and ``drop_leading_column``."""
    if t is None:
        return "auto", False
    t.reject_unknown(["delimiter", "drop_leading_column"])
    return t.choice("delimiter", DELIMITER_CHOICES, "auto"), t.get("drop_leading_column", bool, False)


def _check_recode_target(t: Table, value: str, target: Any, col: str, schema: Schema) -> None:
    if col == schema.id_column:
        return
    if target == "" and col != schema.label.name:
        return  # a missing value: the feature's missing policy applies
    if col == schema.label.name:
        allowed = [schema.label.positive, schema.label.negative]
        if target not in allowed:
            raise t.fail(value, f"label values must be {allowed[0]!r} (default) or {allowed[1]!r}, got {target!r}")
        return
    f = schema.feature(col)
    if f.kind == "categorical" and target not in (f.categories or ()):
        raise t.fail(value, f"'{target}' is not a category of '{col}' ({f.valid_values()})")
    if f.kind != "categorical" and not isinstance(target, (int, float)):
        raise t.fail(value, f"'{col}' is {f.kind}; recode it to a number, got {target!r}")


def apply_mapping(frame, mapping: Mapping | None):
    """Rename and recode a raw table (all cells as read); returns a new DataFrame.

    Recoding matches each cell's text form (``"1"`` matches ``1`` and ``1.0``), else its numeric
    value (see the module docstring), so the same mapping works for CSV and Parquet sources.
    The affine maps are left to validation (it must see numbers first) — see :func:`affine_for`.
    """
    if mapping is None:
        return frame
    out = frame.drop(columns=[c for c in mapping.ignore if c in frame.columns])
    out = out.rename(columns={s: d for s, d in mapping.columns.items() if s in out.columns})
    for col, table in mapping.recode.items():
        if col not in out.columns or isinstance(out[col], type(out)):
            continue  # missing or duplicated columns are reported by validation
        recoded = _recode_column(out[col], RecodeKeys(table))
        if recoded is not None:
            out[col] = recoded
    return out


class RecodeKeys:
    """The keys of one ``[recode.<column>]`` table, matched by text, else by numeric value.

    A key that is a plain number also matches by value: an integer key (``"2"``, ``"-1"``)
    matches exactly that value; a key with ``d`` decimals matches values within half a unit of its
    last decimal (``"-0.7043"``: |v + 0.7043| < 0.00005); a key with an exponent matches its value
    exactly. Where several keys match by value, the one with the most decimals wins.
    """

    def __init__(self, table: dict[str, Any]):
        self.by_text = {str(k).strip(): v for k, v in table.items()}
        numeric = []
        for key, target in self.by_text.items():
            value, decimals = _key_number(key)
            if value is not None:
                numeric.append((decimals, value, target))
        self.by_value = sorted(numeric, key=lambda e: -e[0])

    def lookup(self, text: str) -> tuple[bool, Any]:
        """``(matched, target)`` for a cell's text form."""
        if text in self.by_text:
            return True, self.by_text[text]
        if not self.by_value:
            return False, None
        value, _ = _key_number(text)
        if value is None:
            return False, None
        for decimals, key_value, target in self.by_value:
            tolerance = 0.0 if decimals == 0 else 0.5 * 10.0 ** -decimals * (1 + 1e-9)
            if abs(value - key_value) <= tolerance:
                return True, target
        return False, None


def _key_number(text: str) -> tuple[float | None, int]:
    """``(value, decimals)`` of a plain number written as text (``"-0.7043"`` → (-0.7043, 4);
    ``"1e-3"`` → (0.001, 0)); ``(None, 0)`` for anything else (words, NaN, infinities)."""
    import re

    t = text.strip()
    m = re.fullmatch(r"[+-]?(\d+)?(?:\.(\d*))?([eE][+-]?\d+)?", t)
    if not t or m is None or not (m.group(1) or m.group(2)):
        return None, 0
    value = float(t)
    if not math.isfinite(value):
        return None, 0
    decimals = 0 if m.group(3) else len((m.group(2) or "").rstrip("0"))
    return value, decimals


def _recode_column(column, keys: RecodeKeys):
    """``column`` with every cell that matches a key replaced by its target (object dtype);
    None when no cell matches.

    The match is computed once per distinct value (a column of a million cells holds a handful
    of codes), then spread back to the cells. Object columns, whose distinct values may compare
    equal across types (``1 == 1.0 == True``), are grouped by their text form instead.
    """
    import numpy as np
    import pandas as pd

    if column.dtype == object:
        codes, uniques = pd.factorize(column.map(_cell_text), use_na_sentinel=False)
        texts = list(uniques)
        unique_values = None
    else:
        codes, uniques = pd.factorize(column, use_na_sentinel=False)
        unique_values = np.asarray(uniques, dtype=object)
        texts = [_cell_text(v) for v in unique_values]
    found = [keys.lookup(t) for t in texts]
    hits = np.array([hit for hit, _ in found], dtype=bool)
    if not hits.any():
        return None
    if unique_values is None:
        values = column.to_numpy(dtype=object, copy=True)
        cell_hit = hits[codes]
        targets = np.array([target for _, target in found], dtype=object)
        values[cell_hit] = targets[codes[cell_hit]]
        return pd.Series(values, index=column.index, dtype=object)
    replaced = unique_values.copy()
    for i in np.flatnonzero(hits):
        replaced[i] = found[i][1]
    return pd.Series(replaced[codes], index=column.index, dtype=object)


def _cell_text(value: Any) -> str:
    """Text form used to match recode keys: integral floats lose their '.0'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if text.endswith(".0") and text[:-2].lstrip("+-").isdigit():
        return text[:-2]  # "2.0" written by a float-formatted CSV export is the code 2, as in Parquet
    return text


def scale_factor(mapping: Mapping | None, column: str) -> float:
    """The factor of ``column``'s affine map (1 without one)."""
    return affine_for(mapping, column).scale


def affine_for(mapping: Mapping | None, column: str) -> Affine:
    """``column``'s affine map from the institution's unit to the schema's (identity without one)."""
    return (mapping.affine.get(column) if mapping is not None else None) or Affine()
