"""Writing a partition: each institution's rows exactly as the source file has them, and a manifest.

A partition must not change the data it splits. Each institution file keeps the source's
column names, label coding (``1``/``0``, ``0`` = default, ``1 = good / 2 = bad``, text labels …),
codes, units and every value as written — so it validates with the same schema, mapping and read
options as the source, and ``fedcredit simulate --data DIR --mapping M`` reads it as the source
would be read:

* a delimited text source → its header line and the records of the institution's rows, byte
  for byte, in source order (UTF-8; a Windows-1252 source is re-encoded, nothing else changes).
  The copies are read back and compared cell by cell with the source's rows; should a file ever
  differ (a record layout the byte copy cannot follow), every file is written instead as a
  plain comma-separated table of the same cells as text — the manifest then says
  ``"layout": "normalised"``, and the leading column and delimiter options no longer apply;
* a Parquet source → a Parquet file of those rows with the source's schema and types.

The label is only *read* (through the schema and mapping) to count each institution's
defaults; ``defaults`` in the manifest counts the schema's positive value, whatever its coding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clients.raw_table import RawTable, ReadOptions
from fedcredit.atomic_write import atomic_path, write_atomic, write_json_atomic
from simulation.partitioning import DEFAULT_ALPHA, DEFAULT_MIN_ROWS, Partition, label_skew, partition_table

PARTITION_GENERATOR = "fedcredit-partition"
#: suffixes an institution file may keep from its source (those a simulation's data directory reads)
KEPT_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")
#: the DP-training minimum of ``fedcredit data validate`` (clients.validation)
DP_MIN_ROWS, DP_MIN_POSITIVES = 500, 50


@dataclass
class PartitionSource:
    """A table to partition: its rows as read (``raw``) and as validated (``table``, clean)."""

    path: Path
    raw: RawTable
    table: pd.DataFrame
    schema: Any
    mapping: str | None = None  # as given: a shipped name or a path

    @property
    def read_options(self) -> ReadOptions:
        return self.raw.read_options


def load_partition_source(path: str | Path, schema, mapping=None, read_options: ReadOptions | None = None
                          ) -> PartitionSource:
    """Read and validate ``path`` (no minimum of rows or defaults: a research table is split first).

    ``mapping`` is a shipped name or a path (or None); its ``[read]`` options apply, with
    ``read_options`` on top. A bad table raises the validation report.
    """
    from clients.tabular_io import read_table
    from clients.validation import mapping_read_options, validate_raw
    from configs.mapping import load_mapping
    from configs.schema import Schema, load_schema

    schema = schema if isinstance(schema, Schema) else load_schema(schema)
    mapping_obj = load_mapping(mapping, schema) if mapping else None
    raw = read_table(path, mapping_read_options(mapping_obj).merged(read_options))
    loaded = validate_raw(raw, schema, mapping_obj, min_rows=0, min_positives=0)
    return PartitionSource(Path(path), raw, loaded.table, schema, str(mapping) if mapping else None)


def write_partition(source: PartitionSource, out_dir, *, k: int, method: str, seed: int = 0,
                    alpha: float = DEFAULT_ALPHA, feature: str | None = None, strictness: float = 1.0,
                    min_rows: int = DEFAULT_MIN_ROWS, min_positives: int = 0, force: bool = False,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Partition ``source`` and write ``institution-<k>.<ext>`` files and ``manifest.json``.

    Returns the manifest. ``extra`` adds keys to the manifest (a sweep records the fingerprint
    of the settings the partition was made with).
    """
    from simulation.synthetic import prepare_out_dir

    schema, table = source.schema, source.table
    label = schema.label.name
    part = partition_table(table, k, method, seed=seed, label=label if label in table.columns else None,
                           alpha=alpha, feature=feature, strictness=strictness, min_rows=min_rows,
                           min_positives=min_positives)
    out = Path(out_dir)
    prepare_out_dir(out, force)
    out.mkdir(parents=True, exist_ok=True)
    names = institution_names(k)
    suffix = source.path.suffix.lower() if source.path.suffix.lower() in KEPT_SUFFIXES else ".csv"
    files = [out / f"{name}{suffix}" for name in names]
    layout = write_institution_files(source, part.indices, files)
    y = table[label].to_numpy() if label in table.columns else None
    entries, notes = [], []
    for i, (name, ix, path) in enumerate(zip(names, part.indices, files)):
        entry = _entry(name, ix, y, path.name, part.groups[i] if part.groups is not None else None)
        notes.extend(_warnings(entry, part.method))
        entries.append(entry)
    manifest = _manifest(source, part, entries, notes, y, layout, seed)
    manifest.update(extra or {})
    write_json_atomic(out / "manifest.json", manifest)
    return manifest


def institution_names(k: int) -> list[str]:
    """``institution-1`` … (zero-padded to the width of ``k``, so the files sort in order)."""
    width = len(str(k))
    return [f"institution-{i + 1:0{width}d}" for i in range(k)]


# --------------------------------------------------------------------------------------------
# the files
# --------------------------------------------------------------------------------------------


def write_institution_files(source: PartitionSource, indices: list[np.ndarray], paths: list[Path]) -> str:
    """Write each institution's rows (positions in the clean table) to its path; return the layout
    (``"source"``: as the source has them; ``"normalised"``: comma-separated cells as text)."""
    raw = source.raw
    if raw.format == "parquet":
        _write_parquet_rows(source.path, raw, indices, paths)
        return "source"
    if raw.format == "csv":
        if _copy_records(source, indices, paths):
            return "source"
    for ix, path in zip(indices, paths):
        _write_cells(raw.frame.iloc[ix], path)
    return "normalised"


def _copy_records(source: PartitionSource, indices: list[np.ndarray], paths: list[Path]) -> bool:
    """The header and each row's record, byte for byte; read back and compared. False (and
    nothing kept) when the record boundaries found do not give back the rows as read."""
    from clients.csv_reader import decode_text, record_spans
    from clients.tabular_io import read_table

    raw = source.raw
    data, _, _ = decode_text(source.path)
    starts, ends = record_spans(data)
    records = np.asarray(raw.row_numbers, dtype=np.int64)  # data row r is record r (record 0: the header)
    if len(starts) <= int(records.max(initial=0)):
        return False
    header = data[starts[0]:ends[0]]
    for ix, path in zip(indices, paths):
        body = b"".join(data[starts[r]:ends[r]] + b"\n" for r in records[ix])
        write_atomic(path, header + b"\n" + body)
        back = read_table(path, raw.read_options)
        if back.problems or not back.frame.reset_index(drop=True).equals(raw.frame.iloc[ix].reset_index(drop=True)):
            for p in paths:
                p.unlink(missing_ok=True)
            return False
    return True


def _write_parquet_rows(path: Path, raw: RawTable, indices: list[np.ndarray], paths: list[Path]) -> None:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path).read()
    for ix, out in zip(indices, paths):
        with atomic_path(out) as tmp:
            pq.write_table(table.take(np.asarray(raw.row_numbers, dtype=np.int64)[ix] - 1), tmp)


def _write_cells(frame: pd.DataFrame, path: Path) -> None:
    """The cells as text in a comma-separated file (quotes where needed)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    text = pd.DataFrame({str(c): frame.iloc[:, j].astype(str).to_numpy() for j, c in enumerate(frame.columns)})
    with atomic_path(path) as tmp:
        pacsv.write_csv(pa.Table.from_pandas(text, preserve_index=False), tmp,
                        write_options=pacsv.WriteOptions(quoting_style="needed"))


# --------------------------------------------------------------------------------------------
# the manifest
# --------------------------------------------------------------------------------------------


def _entry(name: str, ix: np.ndarray, y: np.ndarray | None, file: str, group: dict | None) -> dict[str, Any]:
    defaults = int((y[ix] == 1).sum()) if y is not None else None
    entry: dict[str, Any] = {
        "id": name, "rows": int(len(ix)), "defaults": defaults,
        "default_rate": round(defaults / len(ix), 6) if defaults is not None and len(ix) else None, "file": file,
    }
    if group is not None:
        entry["group"] = group
    return entry


def _warnings(entry: dict[str, Any], method: str) -> list[str]:
    """An institution below the DP-training minimum (naming what is below it) or with one class."""
    out = []
    rows, defaults, name = entry["rows"], entry["defaults"], entry["id"]
    below = []
    if rows < DP_MIN_ROWS:
        below.append(f"{rows} rows (minimum {DP_MIN_ROWS})")
    if defaults is not None and defaults < DP_MIN_POSITIVES:
        below.append(f"{defaults} defaults (minimum {DP_MIN_POSITIVES})")
    if below:
        out.append(f"{name}: {' and '.join(below)} — below the DP-training minimum of `fedcredit data validate`; "
                   f"usable in research mode (simulate --min-rows / --min-positives) or without DP")
    if defaults is not None and rows and defaults in (0, rows):
        which = "every row is a default (default rate 100%)" if defaults else "no row is a default (default rate 0%)"
        hint = " (a larger --alpha makes this less likely)" if method == "dirichlet" else ""
        out.append(f"{name}: a single class — {which}; a model cannot be trained or evaluated on one class and "
                   f"`fedcredit data validate` refuses such a table{hint}")
    return out


def _manifest(source: PartitionSource, part: Partition, entries: list[dict], notes: list[str],
              y: np.ndarray | None, layout: str, seed: int) -> dict[str, Any]:
    from simulation.synthetic import file_sha256

    schema, opts = source.schema, source.read_options
    label = schema.label
    return {
        "generator": PARTITION_GENERATOR,
        "schema": schema.key,
        "schema_file": schema.source,
        "source": str(source.path),
        "source_sha256": file_sha256(source.path) if source.path.is_file() else None,
        "mapping": source.mapping,
        "label": {"column": label.name, "positive": label.positive, "negative": label.negative,
                  "coding": "as in the source (the files keep the source's values)"},
        "layout": layout,
        "read": {"delimiter": opts.delimiter_name() if layout == "source" else "comma",
                 "drop_leading_column": bool(opts.drop_leading_column and layout == "source")},
        "method": part.method,
        "seed": int(seed),
        "params": part.params,
        "rows": int(len(source.table)),
        "label_skew": round(label_skew(part, y), 6) if y is not None else None,
        "institutions": entries,
        "warnings": notes,
    }
