"""Validating an institution's table against the consortium schema.

``raw table → column mapping (rename, recode, ignore) → checks → clean table``

Every check runs over the whole table (vectorised with pandas/pyarrow) and every problem is
collected before failing, so one run of ``fedcredit data validate`` shows the institution all
it has to fix. Each problem is reported once, naming

* the column — the institution's own name and, where the mapping renamed it, the schema name;
* the number of affected rows and up to five example *data row* numbers (the first row after
  the header is data row 1);
* what to fix.

Checks, in the order they are reported: unreadable bytes and malformed records (from
:mod:`clients.tabular_io`), a missing delimiter, duplicated column names (in the file, or two
columns that the mapping renames to the same schema column), repeated header lines, missing
columns, then per feature: stored type, non-numeric text, out-of-range and infinite values
(after the mapping's affine map: ``[scale]``, ``[offset]``, ``[unstandardise]``), non-integer
ordinal levels (with advice that fits the column: a typo, a column of fractions, or
standardised values), unknown categories and missing
values (an error under ``missing = "reject"``; the declared value is imputed under
``missing = "impute"``); then duplicate or empty borrower ids, label values, a single-class
label, an empty table and the minimum rows / positives DP training needs. Unknown extra
columns, a non-UTF-8 encoding and skipped blank lines are warnings.

The clean table (:class:`InstitutionTable`) has exactly the schema's columns in schema order:
numeric, ordinal and binary features as float64 without NaN, categorical features as Python
strings (object dtype) within the declared categories, the label as int64 (1 = the schema's
positive value, i.e. default), the id (if the file has one) as strings.
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clients.cell_values import (as_text, classify_non_number, equals_text, looks_standardised,
                                 parse_numbers)
from clients.tabular_io import (MAX_EXAMPLES, DataValidationError, Problem, RawTable, ReadOptions, read_table,
                                rows_phrase)
from configs.mapping import Mapping, affine_for, apply_mapping, load_mapping
from configs.schema import Feature, Schema, load_schema

__all__ = ["Problem", "DataValidationError", "InstitutionTable", "load_institution_table",
           "validate_frame", "validate_raw", "DEFAULT_MIN_ROWS", "DEFAULT_MIN_POSITIVES"]

DEFAULT_MIN_ROWS = 500
DEFAULT_MIN_POSITIVES = 50

# Stored types that can never hold a schema value (Parquet/arrow names and pandas dtype names).
_WRONG_TYPE_PREFIXES = ("timestamp", "date", "time", "duration", "interval", "binary", "large_binary",
                        "fixed_size_binary", "list", "large_list", "fixed_size_list", "struct", "map",
                        "datetime64", "timedelta64", "period", "sparse")



@dataclass
class InstitutionTable:
    """A validated institution table.

    ``table`` is the clean table (see the module docstring for its columns and dtypes);
    ``warnings`` the non-fatal findings; ``missing_counts`` / ``imputed_counts`` the number of
    empty cells per feature before imputation and the number imputed.
    """

    table: pd.DataFrame
    schema: Schema
    source: str
    warnings: list[Problem] = field(default_factory=list)
    missing_counts: dict[str, int] = field(default_factory=dict)
    imputed_counts: dict[str, int] = field(default_factory=dict)
    read_options: ReadOptions = ReadOptions()  # how the file was read (the delimiter as found)

    @property
    def has_label(self) -> bool:
        return self.schema.label.name in self.table.columns

    def summary(self) -> dict[str, Any]:
        """Local summary: rows, positives, default rate and per-feature missing/imputed counts,
        min/max (numeric, ordinal, binary) or category counts (categorical). Plain JSON types."""
        t = self.table
        n = len(t)
        positives = int(t[self.schema.label.name].sum()) if self.has_label else None
        features: dict[str, Any] = {}
        for f in self.schema.features:
            entry: dict[str, Any] = {"kind": f.kind, "protected": f.protected,
                                     "missing": int(self.missing_counts.get(f.name, 0)),
                                     "imputed": int(self.imputed_counts.get(f.name, 0))}
            col = t[f.name]
            if f.kind == "categorical":
                counts = col.value_counts()
                entry["categories"] = {c: int(counts.get(c, 0)) for c in f.categories or ()}
            else:
                entry["min"] = float(col.min()) if n else None
                entry["max"] = float(col.max()) if n else None
                entry["mean"] = float(col.mean()) if n else None
            features[f.name] = entry
        return {
            "file": self.source,
            "schema": self.schema.key,
            "rows": n,
            "positives": positives,
            "default_rate": (positives / n if n else None) if positives is not None else None,
            "has_id": bool(self.schema.id_column and self.schema.id_column in t.columns),
            "delimiter": self.read_options.delimiter_name(),
            "drop_leading_column": self.read_options.drop_leading_column,
            "features": features,
        }


def load_institution_table(path: str | Path, schema: Schema | str | Path | None = None,
                           mapping: Mapping | str | Path | None = None, *, require_label: bool = True,
                           min_rows: int = DEFAULT_MIN_ROWS, min_positives: int = DEFAULT_MIN_POSITIVES,
                           read_options: ReadOptions | None = None) -> InstitutionTable:
    """Read ``path`` (CSV or Parquet), map it with ``mapping`` and validate it against ``schema``.

    ``schema`` and ``mapping`` may be objects or names/paths (shipped names are resolved).
    ``require_label=False`` validates an applicant file for scoring: the label column may be
    absent, and there is no minimum of rows or positives. The file is read with the mapping's
    ``[read]`` options and ``read_options`` on top. Raises :class:`DataValidationError` listing
    every problem.
    """
    schema, mapping = _resolve(schema, mapping)
    return validate_raw(read_table(path, mapping_read_options(mapping).merged(read_options)), schema, mapping,
                        require_label=require_label, min_rows=min_rows, min_positives=min_positives)


def mapping_read_options(mapping: Mapping | None) -> ReadOptions:
    """The :class:`ReadOptions` of a mapping's ``[read]`` table (defaults without a mapping)."""
    if mapping is None:
        return ReadOptions()
    return ReadOptions.from_names(mapping.delimiter, mapping.drop_leading_column)


def validate_frame(raw: pd.DataFrame, schema: Schema | str | Path | None = None,
                   mapping: Mapping | str | Path | None = None, *, source: str = "<frame>",
                   require_label: bool = True, min_rows: int = DEFAULT_MIN_ROWS,
                   min_positives: int = DEFAULT_MIN_POSITIVES) -> InstitutionTable:
    """The same checks on an in-memory raw table (cells as text, or typed); rows are numbered
    1..n in their current order."""
    schema, mapping = _resolve(schema, mapping)
    return validate_raw(RawTable.from_frame(raw, source), schema, mapping, require_label=require_label,
                        min_rows=min_rows, min_positives=min_positives)


def _resolve(schema, mapping) -> tuple[Schema, Mapping | None]:
    if not isinstance(schema, Schema):
        schema = load_schema(schema)
    if mapping is not None and not isinstance(mapping, Mapping):
        mapping = load_mapping(mapping, schema)
    return schema, mapping


def validate_raw(raw: RawTable, schema: Schema, mapping: Mapping | None = None, *,
                 require_label: bool = True, min_rows: int = DEFAULT_MIN_ROWS,
                 min_positives: int = DEFAULT_MIN_POSITIVES) -> InstitutionTable:
    """Validate a :class:`~clients.tabular_io.RawTable`; the workhorse of the two functions above."""
    return _Validator(raw, schema, mapping, require_label, min_rows, min_positives).run()


# --------------------------------------------------------------------------------------------


class _Validator:
    def __init__(self, raw: RawTable, schema: Schema, mapping: Mapping | None, require_label: bool,
                 min_rows: int, min_positives: int):
        self.raw = raw
        self.schema = schema
        self.mapping = mapping
        self.require_label = require_label
        self.min_rows = int(min_rows)
        self.min_positives = int(min_positives)
        self.errors: list[Problem] = list(raw.problems)
        self.warnings: list[Problem] = list(raw.notes)
        self.source_name: dict[str, str] = {}  # schema column -> the file's own column name
        self.stored_type: dict[str, str] = {}  # schema column -> stored type (Parquet / frame)
        self.ambiguous: set[str] = set()  # schema columns with duplicate sources (already reported)
        self.missing_counts: dict[str, int] = {}
        self.imputed_counts: dict[str, int] = {}

    # -- naming ------------------------------------------------------------------------------

    def expected_source(self, col: str) -> str:
        return self.mapping.source_column_for(col) if self.mapping else col

    def colname(self, col: str) -> str:
        src = self.source_name.get(col) or self.expected_source(col)
        return f"column '{src}' (schema column '{col}')" if src != col else f"column '{col}'"

    def error(self, code: str, column: str | None, mask_or_rows, message: str, count: int | None = None) -> None:
        self._add(self.errors, "error", code, column, mask_or_rows, message, count)

    def warn(self, code: str, column: str | None, mask_or_rows, message: str, count: int | None = None) -> None:
        self._add(self.warnings, "warning", code, column, mask_or_rows, message, count)

    def _add(self, where, severity, code, column, mask_or_rows, message, count):
        if isinstance(mask_or_rows, np.ndarray) and mask_or_rows.dtype == bool:
            rows = self.rn[mask_or_rows][:MAX_EXAMPLES].tolist()
            count = int(mask_or_rows.sum()) if count is None else count
        else:
            rows = [int(r) for r in list(mask_or_rows or [])][:MAX_EXAMPLES]
            count = len(rows) if count is None else count
        where.append(Problem(severity, code, column, int(count), rows, message))

    def rows_of(self, mask: np.ndarray) -> str:
        return rows_phrase(self.rn[mask][:MAX_EXAMPLES], int(mask.sum()))

    def fail(self) -> DataValidationError:
        return DataValidationError(self.raw.source, self.errors, self.warnings,
                                   rows=getattr(self, "n", None))

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> InstitutionTable:
        frame = self._columns()
        self.n = len(frame)
        mapped = apply_mapping(frame, self.mapping)
        self._unknown_and_missing_columns(mapped)

        clean: dict[str, pd.Series] = {}
        id_col = self.schema.id_column
        if id_col and id_col in mapped.columns:
            ids = self._check_id(mapped[id_col])
            if ids is not None:
                clean[id_col] = ids
        for f in self.schema.features:
            if f.name in mapped.columns:
                values = self._check_feature(f, mapped[f.name])
                if values is not None:
                    clean[f.name] = values
        label = self.schema.label.name
        label_values = None
        if label in mapped.columns:
            label_values = self._check_label(mapped[label])
        self._check_counts(label_values)

        if self.errors:
            raise self.fail()
        table = pd.DataFrame({c: clean[c] for c in self.schema.columns if c in clean}, copy=False)  # no 2-D copy
        if label_values is not None:
            table[label] = label_values
        table.index = pd.RangeIndex(len(table))
        return InstitutionTable(table=table, schema=self.schema, source=self.raw.source, warnings=self.warnings,
                                missing_counts=self.missing_counts, imputed_counts=self.imputed_counts,
                                read_options=self.raw.read_options)

    # -- header ------------------------------------------------------------------------------

    def _columns(self) -> pd.DataFrame:
        """Resolve the header: unnamed, duplicated and colliding columns; repeated header lines."""
        frame = self.raw.frame
        self.rn = np.asarray(self.raw.row_numbers, dtype=np.int64)
        raw_names = [str(c) for c in frame.columns]
        names = [c.strip() for c in raw_names]
        types = list(self.raw.column_types) or [str(frame.iloc[:, i].dtype) for i in range(frame.shape[1])]
        m = self.mapping
        known = set(self.schema.columns) | (set(m.columns) | set(m.ignore) if m else set())

        if self.raw.format == "csv" and len(names) == 1 and names[0] not in known and len(self.schema.columns) > 1:
            shown = names[0] if len(names[0]) <= 80 else names[0][:77] + "..."
            self.error("bad-delimiter", None, [],
                       f"only one column was found: the header line reads '{shown}'. The fields must be "
                       f"separated by a comma, a semicolon, a tab, '|' or spaces (the same on every line); "
                       f"save the file again as CSV with one of these delimiters.", count=1)
            raise self.fail()

        keep: list[int] = []
        for i, name in enumerate(names):
            if name == "":
                col = frame.iloc[:, i]
                if bool((col.isna() | (col.astype("str").str.strip() == "")).all()):
                    self.warn("empty-column", None, [],
                              f"column {i + 1} has neither a name nor values (a delimiter at the end of each "
                              f"line?) and was ignored.", count=1)
                    continue
                names[i] = f"(unnamed column {i + 1})"
            keep.append(i)

        # Duplicate names in the file itself.
        counts = Counter(names[i] for i in keep)
        dropped: set[int] = set()
        for name, k in counts.items():
            if k < 2:
                continue
            positions = [i for i in keep if names[i] == name]
            dropped.update(positions)
            if m and name in m.ignore:
                continue
            target = m.schema_column_for(name) if m else name
            self.ambiguous.add(target)
            self.source_name.setdefault(target, name)
            where = ", ".join(str(i + 1) for i in positions)
            about = self.colname(target) if target in self.schema.columns else f"column '{name}'"
            self.error("duplicate-column", target if target in self.schema.columns else name, [],
                       f"{about} appears {k} times in the header (columns {where}); it is ambiguous which "
                       f"one to use — delete or rename the extra column{'s' if k > 2 else ''}.", count=k)

        # Two different file columns that become the same schema column.
        sources: dict[str, list[int]] = {}
        for i in keep:
            if i in dropped or (m and names[i] in m.ignore):
                continue
            target = m.schema_column_for(names[i]) if m else names[i]
            sources.setdefault(target, []).append(i)
        for target, positions in sources.items():
            if len(positions) < 2:
                continue
            dropped.update(positions)
            self.ambiguous.add(target)
            srcs = " and ".join(f"'{names[i]}'" for i in positions)
            self.error("duplicate-column", target, [],
                       f"columns {srcs} both become schema column '{target}' (the mapping renames "
                       f"'{self.expected_source(target)}' to it); keep only one of them, or remove its entry "
                       f"from the mapping's [columns].", count=len(positions))

        final = [i for i in keep if i not in dropped and not (m and names[i] in m.ignore)]
        for i in final:
            target = m.schema_column_for(names[i]) if m else names[i]
            self.source_name[target] = names[i]
            self.stored_type[target] = types[i] if i < len(types) else "string"

        sub = frame.iloc[:, final] if final else pd.DataFrame(index=frame.index)
        sub.columns = [names[i] for i in final]

        # Header lines repeated inside the data (files appended to one another). A Parquet file
        # stores its column names apart from the values, so only text tables can repeat them.
        if len(sub) and len(final) >= 2 and self.raw.format != "parquet":
            hits = np.zeros(len(sub), dtype=np.int64)
            for j, i in enumerate(final):
                col = sub.iloc[:, j]
                if col.dtype == object or str(col.dtype) in ("str", "string"):
                    hits += equals_text(col, raw_names[i])
            repeated = hits >= max(2, math.ceil(len(final) / 2))
            if repeated.any():
                k = int(repeated.sum())
                self.error("repeated-header", None, repeated,
                           f"the header line appears again inside the data ({self.rows_of(repeated)}) — were "
                           f"several files appended to one another? Delete the repeated header "
                           f"line{'s' if k != 1 else ''}.")
                sub = sub.loc[~repeated].reset_index(drop=True)
                self.rn = self.rn[~repeated]
        return sub

    def _unknown_and_missing_columns(self, mapped: pd.DataFrame) -> None:
        schema_cols = set(self.schema.columns)
        present = set(mapped.columns)
        required = self.schema.feature_names + ([self.schema.label.name] if self.require_label else [])
        missing = [c for c in required if c not in present and c not in self.ambiguous]
        unknown = [c for c in mapped.columns if c not in schema_cols]
        expected_missing = {self.expected_source(c): c for c in missing}

        for c in missing:
            src = self.expected_source(c)
            suggestion = _closest(src, unknown) or _closest(c, unknown)
            hint = f" A column '{suggestion}' is present — is that it (misspelt)?" if suggestion else ""
            if self.mapping and src != c:
                fix = (f"Add the column, or change the mapping's [columns] entry for '{c}' if your file "
                       f"calls it differently.")
            elif self.mapping:
                fix = f"Add the column, or map your own column name to '{c}' in the mapping's [columns] table."
            else:
                fix = (f"Add the column, or rename your column to '{c}' (or give a --mapping that renames "
                       f"it).")
            what = "label" if c == self.schema.label.name else "feature"
            desc = (self.schema.label.description if what == "label" else self.schema.feature(c).description)
            self.error("missing-column", c, [],
                       f"required {what} {self.colname(c)} is missing ({desc}).{hint} {fix}", count=len(mapped))

        for c in unknown:
            suggestion = _closest(c, list(expected_missing))
            hint = f" (did you mean '{suggestion}', which is missing?)" if suggestion else ""
            ignore = (" or list it under [ignore] columns in the mapping" if self.mapping else "")
            self.warn("unknown-column", c, [],
                      f"column '{c}' is not part of schema {self.schema.key} and is ignored{hint}. Remove "
                      f"it{ignore} to silence this warning.", count=1)

    # -- features ----------------------------------------------------------------------------

    def _wrong_type(self, col: str, wanted: str) -> bool:
        stored = self.stored_type.get(col, "string")
        if stored.lower().startswith(_WRONG_TYPE_PREFIXES):
            kind = "file" if self.raw.format == "parquet" else "table"
            self.error("wrong-type", col, [],
                       f"{self.colname(col)} is stored as {stored} in the {kind}; it must hold {wanted} — "
                       f"write the column with that type.", count=self.n)
            return True
        return False

    def _check_feature(self, f: Feature, s: pd.Series):
        if f.kind == "categorical":
            if self._wrong_type(f.name, "category names (text)"):
                return None
            return self._check_categorical(f, s)
        if self._wrong_type(f.name, "numbers (integer or floating point)"):
            return None
        return self._check_numeric(f, s)

    def _check_numeric(self, f: Feature, s: pd.Series):
        values, missing, bad, text = parse_numbers(s)
        ok = True
        if bad.any():
            ok = False
            self._report_non_numeric(f, text, bad)
        raw_values = values
        affine = affine_for(self.mapping, f.name)
        values = affine.apply(values)
        valid = ~missing & ~bad
        lo, hi = f.range  # type: ignore[misc]
        with np.errstate(invalid="ignore"):
            inside = (values >= lo) & (values <= hi)
        zscores = _ZScoreHint(raw_values, valid)  # computed only when a message needs it
        if not self._check_range(f, values, valid & ~inside, affine, zscores):
            ok = False
        if f.kind in ("ordinal", "binary") and not self._check_whole(f, values, valid & inside, valid, zscores):
            ok = False
        if self._missing(f, missing, "fill them in or remove those rows"):
            ok = False
        elif missing.any():
            values = values.copy()
            values[missing] = float(f.impute)
        if not ok:
            return None
        return pd.Series(values.astype(np.float64, copy=False), copy=False)  # (own array: no copy)

    def _check_range(self, f: Feature, values: np.ndarray, out: np.ndarray, affine, zscores: _ZScoreHint) -> bool:
        """Report the values outside the feature's range (after the mapping's affine map); True if none."""
        if not out.any():
            return True
        lo, hi = f.range  # type: ignore[misc]
        vals = values[out]
        infinite = ~np.isfinite(vals)
        shown = _examples(pd.Series(affine.invert(vals[np.isfinite(vals)])).map(_fmt_number), 3)
        if infinite.any():
            shown = ([("infinite" if infinite.sum() == 1 else f"{int(infinite.sum())} infinite values")] + shown)[:3]
        mapped = affine.scale != 1.0 or affine.offset != 0.0
        after = f" {affine.words(f.name)}" if mapped else ""
        inf_note = " Infinite values are never valid." if infinite.any() else ""
        if not mapped and zscores.text:
            fix = (f"The column looks standardised {zscores.text}: map it back to the schema's unit with "
                   f"[unstandardise.{f.name}] mean = …, sd = … in the mapping (the mean and sd it was standardised "
                   f"with), or use a schema written for standardised values (`fedcredit schema infer` drafts one).")
        else:
            fix = (f"Correct the values{' or the mapping' + chr(39) + 's transform' if mapped else ''}, or remove "
                   f"the rows if they are data-entry errors.")
        self.error("out-of-range", f.name, out,
                   f"{self.colname(f.name)}: {int(out.sum())} value{_s(out)} outside the valid range "
                   f"{_fmt_number(lo)} to {_fmt_number(hi)}{after} ({self.rows_of(out)}), e.g. {', '.join(shown)}."
                   f"{inf_note} {fix}")
        return False

    def _check_whole(self, f: Feature, values: np.ndarray, candidates: np.ndarray, valid: np.ndarray,
                     zscores: _ZScoreHint) -> bool:
        """Ordinal and binary values must be whole numbers; True if they are. The advice fits the
        column: a few fractions are typing errors, a column of them is not levels at all."""
        with np.errstate(invalid="ignore"):
            frac = candidates & (values != np.floor(values))
        if not frac.any():
            return True
        lo, hi = f.range  # type: ignore[misc]
        shown = _examples(pd.Series(values[frac]).map(_fmt_number), 3)
        levels = "0 or 1" if f.kind == "binary" else f"whole numbers from {_fmt_number(lo)} to {_fmt_number(hi)}"
        share = float(frac.sum()) / max(1, int(valid.sum()))
        if zscores.text:
            fix = (f"The column looks standardised {zscores.text}, so its values are not levels: map it back with "
                   f"[unstandardise.{f.name}] mean = …, sd = … in the mapping if the original levels are known, or "
                   f"declare '{f.name}' numeric in the schema (`fedcredit schema infer` drafts a schema from the "
                   f"file).")
        elif share > 0.5:
            fix = (f"Most values ({share:.0%}) are fractions, so the column does not hold levels: declare "
                   f"'{f.name}' numeric in the schema, or map the values to levels with [scale]/[offset] or "
                   f"[recode.{f.name}] in the mapping.")
        else:
            fix = "These look like data-entry errors: correct them to the level they stand for, or remove those rows."
        self.error("not-integer", f.name, frac,
                   f"{self.colname(f.name)} is {f.kind}: its values must be {levels}, but {int(frac.sum())} "
                   f"value{_s(frac)} {_are(frac)} not whole ({self.rows_of(frac)}), e.g. {', '.join(shown)}. {fix}")
        return False

    def _report_non_numeric(self, f: Feature, text: pd.Series, bad: np.ndarray) -> None:
        vals = text[bad]
        counts = vals.value_counts()
        uniques = [str(v) for v in counts.index[:200]]
        kinds = {classify_non_number(v) for v in uniques}
        hints = []
        if "thousands" in kinds:
            hints.append("remove thousands separators (write 1000, not '1,000')")
        if "decimal-comma" in kinds:
            hints.append("use a point as the decimal separator (12.5, not '12,5')")
        if "nan-word" in kinds:
            if f.missing == "reject":
                hints.append("words such as 'NaN', 'null', 'NA' or '—' are not numbers, and this feature does "
                             "not accept missing values — put the actual value in those cells")
            else:
                hints.append(f"words such as 'NaN', 'null', 'NA' or '—' are not numbers — leave a missing "
                             f"value's cell empty (it is then filled with {_fmt_number(float(f.impute))})")
        if "infinite" in kinds:
            hints.append("infinite values ('inf') are not allowed — put the actual value")
        if "unit" in kinds:
            hints.append("remove currency symbols, units and percent signs")
        if "boolean" in kinds:
            hints.append("write 1 and 0 instead of true/false or yes/no")
        shown = _examples(vals, 3)
        k = int(bad.sum())
        hint = ("; ".join(hints) + ". ") if hints else ""
        hint = hint[:1].upper() + hint[1:]
        self.error("non-numeric", f.name, bad,
                   f"{self.colname(f.name)}: {k} value{_s(bad)} {_are(bad)} not {'a number' if k == 1 else 'numbers'} "
                   f"({self.rows_of(bad)}), e.g. {', '.join(shown)}. {hint}Write plain numbers: digits, an "
                   f"optional sign and '.' as the decimal point (e.g. 1234.5).")

    def _missing(self, f: Feature, missing: np.ndarray, fix: str) -> bool:
        """Count a feature's missing cells; True (and an error) when its policy rejects them.

        With ``missing = "impute"`` the caller fills the cells with ``f.impute``.
        """
        n_missing = int(missing.sum())
        self.missing_counts[f.name] = n_missing
        if not n_missing:
            return False
        if f.missing == "reject":
            self._report_missing(f.name, missing, f"this feature does not accept missing values "
                                                  f"(missing = \"reject\" in the schema) — {fix}")
            return True
        self.imputed_counts[f.name] = n_missing
        return False

    def _report_missing(self, col: str, missing: np.ndarray, fix: str) -> None:
        k = int(missing.sum())
        self.error("missing-value", col, missing,
                   f"{self.colname(col)}: {k} empty cell{_s(missing)} ({self.rows_of(missing)}); {fix}.")

    def _check_categorical(self, f: Feature, s: pd.Series):
        text = as_text(s)
        missing = (text.isna() | (text == "")).to_numpy(dtype=bool)
        known = text.isin(list(f.categories or ())).to_numpy(dtype=bool)
        unknown = ~missing & ~known
        ok = True
        if unknown.any():
            ok = False
            counts = text[unknown].value_counts()
            listed = ", ".join(f"'{_short(v)}' ({int(c)} row{'s' if c != 1 else ''})" for v, c in counts.iloc[:5].items())
            if len(counts) > 5:
                listed += f" and {len(counts) - 5} other value{'s' if len(counts) - 5 != 1 else ''}"
            lower = {c.lower(): c for c in f.categories or ()}
            case = [(v, lower[str(v).lower()]) for v in counts.index[:50] if str(v).lower() in lower]
            case_hint = (" Categories are case-sensitive: " + ", ".join(f"'{v}' should be '{c}'" for v, c in case[:3]) + "."
                         if case else "")
            if self.mapping is not None:
                fix = (f"Add the codes your file uses to the mapping's [recode.{f.name}] table (or fix the data).")
            else:
                fix = "Correct the values, or give a --mapping with a [recode] table that translates your codes."
            self.error("unknown-category", f.name, unknown,
                       f"{self.colname(f.name)}: {int(unknown.sum())} value{_s(unknown)} {_are(unknown)} not "
                       f"{'a valid category' if int(unknown.sum()) == 1 else 'valid categories'} "
                       f"({self.rows_of(unknown)}): {listed}. Valid values: {f.valid_values()}."
                       f"{case_hint} {fix}")
        if self._missing(f, missing, f"fill them in ({f.valid_values()}) or remove those rows"):
            ok = False
        elif missing.any():
            text = text.where(~missing, str(f.impute))
        if not ok:
            return None
        return pd.Series(text.to_numpy(dtype=object), dtype=object, copy=False)

    # -- id and label ------------------------------------------------------------------------

    def _check_id(self, s: pd.Series):
        col = self.schema.id_column
        assert col is not None
        if self._wrong_type(col, "borrower ids (text or integers)"):
            return None
        text = as_text(s)
        missing = (text.isna() | (text == "")).to_numpy(dtype=bool)
        ok = True
        if missing.any():
            ok = False
            self._report_missing(col, missing, "every row needs its borrower id — fill them in, or drop the id "
                                               "column entirely (it is optional)")
        dup_mask = _duplicated(text, missing)
        if dup_mask.any():
            ok = False
            counts = text[dup_mask].value_counts()
            listed = ", ".join(f"'{_short(v)}' ({int(c)} times)" for v, c in counts.iloc[:3].items())
            self.error("duplicate-id", col, dup_mask,
                       f"{self.colname(col)}: {int(dup_mask.sum())} rows share their id with another row "
                       f"({len(counts)} id{'s' if len(counts) != 1 else ''} repeated; {self.rows_of(dup_mask)}), "
                       f"e.g. {listed}. Each borrower must appear once: remove the duplicated rows or fix the ids.")
        if not ok:
            return None
        return pd.Series(text.to_numpy(dtype=object), dtype=object, copy=False)

    def _check_label(self, s: pd.Series):
        col = self.schema.label.name
        lab = self.schema.label
        if self._wrong_type(col, f"the values {lab.positive!r} and {lab.negative!r}"):
            return None
        if pd.api.types.is_bool_dtype(s.dtype):
            s = s.astype(np.int64)  # a True/False flag is 1/0
        text = as_text(s)
        missing = (text.isna() | (text == "")).to_numpy(dtype=bool)
        if not self.require_label and missing.all():
            if len(text):
                self.warn("empty-label", col, [],
                          f"{self.colname(col)} is empty in every row and was ignored (fine for scoring "
                          f"applicants).", count=len(text))
            return None

        parsed: list = []

        def matches(value) -> np.ndarray:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if not parsed:
                    parsed.extend(parse_numbers(text)[:3])
                nums, _, bad = parsed
                with np.errstate(invalid="ignore"):
                    return (~bad & (nums == float(value))) & ~missing
            return (text == str(value)).to_numpy(dtype=bool, na_value=False)

        is_pos = matches(lab.positive)
        is_neg = matches(lab.negative)
        bad = ~missing & ~is_pos & ~is_neg
        ok = True
        self.positives = int(is_pos.sum())
        self.negatives = int(is_neg.sum())
        self.label_ok = not (missing.any() or bad.any())
        if missing.any():
            ok = False
            self._report_missing(col, missing, f"every training row needs its outcome: {lab.positive!r} (default) "
                                               f"or {lab.negative!r} (no default) — fill them in or remove those rows")
        if bad.any():
            ok = False
            counts = text[bad].value_counts()
            listed = ", ".join(f"'{_short(v)}' ({int(c)} row{'s' if c != 1 else ''})" for v, c in counts.iloc[:5].items())
            recode = (f" or translate them in the mapping's [recode.{col}] table" if self.mapping
                      else " or give a --mapping whose [recode] table translates them")
            self.error("bad-label", col, bad,
                       f"{self.colname(col)}: {int(bad.sum())} value{_s(bad)} {_are(bad)} neither {lab.positive!r} "
                       f"(default) nor {lab.negative!r} (no default) ({self.rows_of(bad)}): {listed}. Correct "
                       f"them{recode}.")
        if not ok:
            return None
        return pd.Series(is_pos.astype(np.int64), copy=False)

    def _check_counts(self, label_values) -> None:
        n = self.n
        if n == 0:
            if self.raw.problems:
                msg = "no readable data rows remain (see the problems above); fix the file and validate again."
            else:
                msg = "the file has a header but no data rows; export the table again with its rows."
            self.error("empty", None, [], msg, count=0)
            return
        label = self.schema.label.name
        if not self.require_label:
            return
        n += self.raw.malformed_records  # malformed records are reported above; do not double-count
        if n < self.min_rows:
            self.error("too-few-rows", None, [],
                       f"the table has {n} data row{'s' if n != 1 else ''}; differentially private training needs "
                       f"at least {self.min_rows} (with fewer, the privacy noise drowns the signal). Add rows (a "
                       f"longer history), or agree a lower minimum with the consortium: --min-rows {n} (`fedcredit "
                       f"simulate --min-rows {n}` is research mode).",
                       count=n)
        pos = getattr(self, "positives", None)
        neg = getattr(self, "negatives", None)
        if pos is None or not getattr(self, "label_ok", False):
            return  # no label, or its values are wrong (reported above): counts would mislead
        lab = self.schema.label
        if pos + neg > 0 and (pos == 0 or neg == 0):
            only = (f"{lab.negative!r} (no default)" if pos == 0 else f"{lab.positive!r} (default)")
            self.error("single-class", label, [],
                       f"{self.colname(label)}: every row with a valid label has the value {only}; a model cannot "
                       f"learn to separate defaulters from a single class. Check that this is the right label "
                       f"column (and the mapping's recode), and include borrowers of both outcomes.", count=pos + neg)
        elif pos < self.min_positives:
            self.error("too-few-positives", label, [],
                       f"{self.colname(label)}: only {pos} row{'s' if pos != 1 else ''} {'have' if pos != 1 else 'has'} "
                       f"the value {lab.positive!r} (default); differentially private training needs at least "
                       f"{self.min_positives} defaults. Add rows (a longer history), or agree a lower minimum with "
                       f"the consortium: --min-positives {pos} (`fedcredit simulate --min-positives {pos}` is "
                       f"research mode).", count=pos)


# --------------------------------------------------------------------------------------------
# vectorised helpers
# --------------------------------------------------------------------------------------------


class _ZScoreHint:
    """:func:`~clients.cell_values.looks_standardised` of a column's valid values, computed on
    first use: only the advice of a range or whole-number error needs it (a clean column never does)."""

    def __init__(self, values: np.ndarray, valid: np.ndarray):
        self._values, self._valid, self._text = values, valid, None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = looks_standardised(self._values[self._valid])
        return self._text


def _duplicated(text: pd.Series, missing: np.ndarray) -> np.ndarray:
    """Rows whose (present) id another present row shares. Most files have none: counting the
    distinct ids (one hash pass, no per-row result) shows that; only then are the rows marked."""
    present = text[~missing]
    if _distinct_count(present) == len(present):
        return np.zeros(len(text), dtype=bool)
    dup_mask = np.zeros(len(text), dtype=bool)
    dup_mask[~missing] = present.duplicated(keep=False).to_numpy(dtype=bool)
    return dup_mask


def _distinct_count(s: pd.Series) -> int:
    """Number of distinct values (pyarrow's hash table for Arrow-backed text, else pandas')."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arrow = getattr(s.array, "_pa_array", None)  # pandas' Arrow-backed string arrays
    if isinstance(arrow, (pa.Array, pa.ChunkedArray)):
        return len(pc.unique(arrow))
    return int(s.nunique(dropna=False))


def _examples(values: pd.Series, k: int) -> list[str]:
    out = []
    for v in pd.unique(values.to_numpy(dtype=object) if hasattr(values, "to_numpy") else np.asarray(values, dtype=object)):
        out.append(f"'{_short(str(v))}'")
        if len(out) >= k:
            break
    return out


def _short(v: Any, n: int = 30) -> str:
    v = str(v)
    return v if len(v) <= n else v[: n - 3] + "..."


def _fmt_number(x: float) -> str:
    if not math.isfinite(x):
        return "infinite" if x > 0 else "-infinite"
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _s(mask: np.ndarray) -> str:
    return "" if int(mask.sum()) == 1 else "s"


def _are(mask: np.ndarray) -> str:
    return "is" if int(mask.sum()) == 1 else "are"


def _closest(name: str, options: list[str]) -> str | None:
    if not options:
        return None
    lowered = {o.lower().replace(" ", "").replace("_", ""): o for o in options}
    key = name.lower().replace(" ", "").replace("_", "")
    if key in lowered:
        return lowered[key]
    close = difflib.get_close_matches(key, list(lowered), n=1, cutoff=0.75)
    return lowered[close[0]] if close else None
