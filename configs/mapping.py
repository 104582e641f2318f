"""Column mappings: an institution's own column names, codes and units → the consortium schema.

A mapping file (``configs/mappings/*.toml``) declares

* ``[mapping]`` — ``name``, ``schema`` (schema name) and ``schema_version`` it targets,
  ``description``;
* ``[columns]`` — ``SOURCE_COLUMN = "schema_column"`` renames. Source columns not listed are
  kept under their own names (and then reported as unknown extra columns by validation);
* ``[recode.<schema_column>]`` — ``"source value" = schema value`` replacements, applied to
  the value's text form after renaming (e.g. undocumented education codes → ``"other"``).
  Values with no entry stay as they are, so validation still reports them;
* ``[scale]`` — ``schema_column = factor``: numeric values are multiplied by the factor (unit
  conversion, e.g. thousands → units);
* ``[ignore] columns = [...]`` — source columns dropped silently (known, deliberately unused).

:func:`load_mapping` validates the file against the schema and names the offending key;
:func:`apply_mapping` turns a raw :class:`pandas.DataFrame` into schema column names and codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configs.schema import Schema
from configs.toml_reader import Table, read_toml, resolve_config_file

MAPPING_DIR = Path(__file__).resolve().parent / "mappings"


@dataclass(frozen=True)
class Mapping:
    name: str
    schema: str
    schema_version: str
    description: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    recode: dict[str, dict[str, Any]] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    source: str = ""

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


def load_mapping(name_or_path: str | Path, schema: Schema) -> Mapping:
    """Load a mapping and check every key against ``schema``."""
    path = resolve_mapping_path(name_or_path)
    root = Table(read_toml(path, "mapping"), path, "")
    root.reject_unknown(["mapping", "columns", "recode", "scale", "ignore"])
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

    scale: dict[str, float] = {}
    stab = root.sub("scale", required=False)
    if stab is not None:
        for col in stab.data:
            if col not in valid_targets or col == schema.id_column:
                raise stab.fail(col, f"'{col}' is not a numeric column of schema {schema.key}")
            if col == schema.label.name or schema.feature(col).kind != "numeric":
                raise stab.fail(col, "only numeric features can be scaled")
            factor = stab.get(col, float)
            if not factor > 0:
                raise stab.fail(col, f"scale factor must be positive, got {factor}")
            scale[col] = factor

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
                   recode=recode, scale=scale, ignore=ignore, source=str(path))


def _check_recode_target(t: Table, value: str, target: Any, col: str, schema: Schema) -> None:
    if col == schema.id_column:
        return
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
    """Rename, recode and rescale a raw table (all cells as read); returns a new DataFrame.

    Recoding compares the text form of each cell (``"1"`` matches ``1`` and ``1.0``), so the
    same mapping works for CSV and Parquet sources. Scaling is left to validation (it must see
    numbers first) — see :func:`scale_factor`.
    """
    if mapping is None:
        return frame
    out = frame.drop(columns=[c for c in mapping.ignore if c in frame.columns])
    out = out.rename(columns={s: d for s, d in mapping.columns.items() if s in out.columns})
    for col, table in mapping.recode.items():
        if col not in out.columns or isinstance(out[col], type(out)):
            continue  # missing or duplicated columns are reported by validation
        keys = {str(k).strip(): v for k, v in table.items()}
        recoded = _recode_column(out[col], keys)
        if recoded is not None:
            out[col] = recoded
    return out


def _recode_column(column, keys: dict[str, Any]):
    """``column`` with every cell whose text form is a key of ``keys`` replaced (object dtype);
    None when no cell matches.

    The text form is computed once per distinct value (a column of a million cells holds a
    handful of codes), then spread back to the cells. Object columns, whose distinct values
    may compare equal across types (``1 == 1.0 == True``), are matched cell by cell.
    """
    import numpy as np
    import pandas as pd

    if column.dtype == object:
        text = column.map(_cell_text)
        hit = text.isin(keys.keys()).to_numpy(dtype=bool)
        if not hit.any():
            return None
        values = column.to_numpy(dtype=object, copy=True)
        values[hit] = text[hit].map(keys).to_numpy(dtype=object)
        return pd.Series(values, index=column.index, dtype=object)
    codes, uniques = pd.factorize(column, use_na_sentinel=False)
    unique_values = np.asarray(uniques, dtype=object)
    texts = [_cell_text(v) for v in unique_values]
    unique_hit = np.array([t in keys for t in texts], dtype=bool)
    if not unique_hit.any():
        return None
    replaced = unique_values.copy()
    for i in np.flatnonzero(unique_hit):
        replaced[i] = keys[texts[i]]
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
    return 1.0 if mapping is None else mapping.scale.get(column, 1.0)
