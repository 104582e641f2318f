"""Reading an institution's table from disk: CSV (any common delimiter and encoding) or Parquet.

:func:`read_table` turns a file into a :class:`~clients.raw_table.RawTable` — the cells exactly
as written (CSV cells as text, Parquet columns with their stored types), the header names
exactly as written (duplicates kept, so validation can report them) and, for every row, its
*data row number*: the first row after the header is data row 1, as a spreadsheet user counts
records.

The file type is decided here, before any schema is involved: by magic bytes first (``PAR1``
is Parquet; ZIP/XLSX, old Excel, gzip, PDF, SQLite and HTML pages are refused with a hint),
then by extension (``.parquet``/``.pq``); everything else is delimited text, read by
:mod:`clients.csv_reader` (encoding, delimiter, header shape, row shape) with the
:class:`~clients.raw_table.ReadOptions` given.

Problems found here are :class:`Problem` objects; a file that cannot be read at all raises
:class:`DataValidationError` at once. Nothing read is written anywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from clients.csv_reader import DELIMITERS, SNIFF_BYTES, read_csv, sniff_delimiter
from clients.raw_table import (DELIMITER_NAMES, MAX_EXAMPLES, ROW_NOTE, WHITESPACE, DataValidationError, Problem,
                               RawTable, ReadOptions, rows_phrase, unreadable)

__all__ = ["DELIMITERS", "DELIMITER_NAMES", "MAX_EXAMPLES", "ROW_NOTE", "SNIFF_BYTES", "WHITESPACE",
           "DataValidationError", "Problem", "RawTable", "ReadOptions", "read_table", "rows_phrase",
           "sniff_delimiter", "unreadable"]

PARQUET_EXTENSIONS = (".parquet", ".pq", ".parq")


def read_table(path: str | Path, options: ReadOptions | None = None) -> RawTable:
    """Read a CSV or Parquet file into a :class:`RawTable`; refuse what cannot be read.

    ``options`` (delimited text only): the delimiter (default: sniffed) and whether the first
    column is a row index to drop; see :class:`~clients.raw_table.ReadOptions`.
    """
    p = Path(path)
    if not p.exists():
        raise unreadable(p, f"file not found: {p}; check the path", code="not-found")
    if not p.is_file():
        raise unreadable(p, f"{p} is not a regular file (a directory?); give the path of a CSV or Parquet file",
                         code="not-found")
    try:
        with p.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise unreadable(p, f"cannot read {p}: {exc.strerror or exc}; check the file permissions") from None
    size = p.stat().st_size
    if size == 0:
        raise unreadable(p, "the file is empty (0 bytes); export the table again with a header line and data rows.",
                         code="empty")
    if head.startswith(b"PAR1"):
        return _read_parquet(p, options)
    kind = _foreign_format(head)
    if kind:
        raise unreadable(p, kind)
    if p.suffix.lower() in PARQUET_EXTENSIONS:
        raise unreadable(p, f"the file has a {p.suffix} extension but is not a Parquet file (it does not start with "
                            f"the PAR1 magic bytes); write it again with a Parquet writer, or rename it to .csv "
                            f"if it is a CSV file")
    return read_csv(p, options)


def _foreign_format(head: bytes) -> str | None:
    export = "export the table as CSV (UTF-8) or Parquet and validate that file"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return f"the file is a ZIP archive (an Excel .xlsx workbook is one), not a CSV or Parquet table; {export}"
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        return f"the file is an old-style Excel (.xls) or other Office document, not a CSV or Parquet table; {export}"
    if head.startswith(b"\x1f\x8b"):
        return "the file is gzip-compressed; decompress it first (gunzip) and validate the CSV inside"
    if head.startswith((b"BZh", b"\xfd7zXZ", b"7z\xbc\xaf")):
        return "the file is a compressed archive; extract it first and validate the CSV inside"
    if head.startswith(b"%PDF"):
        return f"the file is a PDF document, not a table; {export}"
    if head.startswith(b"SQLite f"):
        return f"the file is an SQLite database, not a table; {export}"
    return None


# --------------------------------------------------------------------------------------------
# Parquet
# --------------------------------------------------------------------------------------------


def _read_parquet(p: Path, options: ReadOptions | None = None) -> RawTable:
    """A Parquet file with its stored types; ``options.drop_leading_column`` drops its first column
    (the delimiter does not apply)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(p).read()  # (not pq.read_table: it refuses duplicate column names)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise unreadable(p, f"the Parquet file could not be read ({msg}); it may be truncated or corrupt — "
                            f"write it again") from None
    drop = bool(options and options.drop_leading_column)
    if drop:
        if table.num_columns < 2:
            raise unreadable(p, "--drop-leading-column: the file has a single column, so nothing would be left")
        table = table.remove_column(0)
    columns = {}
    types = []
    for i, name in enumerate(table.column_names):
        col = table.column(i)
        t = col.type
        types.append(str(t))
        if pa.types.is_decimal(t):
            col = col.cast(pa.float64())
        try:
            columns[i] = col.to_pandas()
        except Exception:  # exotic types: keep their text form, validation refuses them by type
            columns[i] = pd.Series([str(v) for v in col.to_pylist()], dtype=object)
    frame = pd.DataFrame(columns, index=pd.RangeIndex(table.num_rows))
    frame.columns = [str(n).strip() for n in table.column_names]
    return RawTable(frame=frame, row_numbers=np.arange(1, table.num_rows + 1), source=str(p),
                    format="parquet", column_types=types, read_options=ReadOptions(None, drop))
