"""Reading an institution's table from disk: CSV (any common delimiter and encoding) or Parquet.

:func:`read_table` turns a file into a :class:`RawTable` — the cells exactly as written (CSV
cells as text, Parquet columns with their stored types), the header names exactly as written
(duplicates kept, so validation can report them) and, for every row, its *data row number*:
the first row after the header is data row 1, as a spreadsheet user counts records.

What is decided here, before any schema is involved:

* **file type** — by magic bytes first (``PAR1`` is Parquet; ZIP/XLSX, old Excel, gzip, PDF,
  SQLite and HTML pages are refused with a hint), then by extension (``.parquet``/``.pq``);
  everything else is read as delimited text;
* **encoding** — a UTF-8 (with or without BOM) or UTF-16 (with BOM) file is read as such;
  other bytes fall back to Windows-1252 (then Latin-1) with a warning;
* **binary garbage** — NUL bytes or many control characters mean the file is not text;
* **delimiter** — ``,`` ``;`` tab or ``|``: the one that splits the header and the first
  records into the same, largest number of fields;
* **row shape** — records with fewer or more fields than the header (a cut-off last line, a
  wrong delimiter in some rows, unquoted delimiters inside values) are reported with their
  data row numbers; blank lines are skipped with a warning.

Problems found here are :class:`Problem` objects; a file that cannot be read at all raises
:class:`DataValidationError` at once. Nothing read is written anywhere.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from configs.errors import UserError

DELIMITERS = (",", ";", "\t", "|")
PARQUET_EXTENSIONS = (".parquet", ".pq", ".parq")
SNIFF_BYTES = 1 << 16
ROW_NOTE = "data row 1 is the first row after the header"
MAX_EXAMPLES = 5


# --------------------------------------------------------------------------------------------
# Problems and the error that carries them
# --------------------------------------------------------------------------------------------


@dataclass
class Problem:
    """One finding about an institution's table.

    ``rows`` holds up to five example data row numbers (1-based: the first row after the
    header is data row 1); ``count`` is the number of affected rows (or cells, or columns
    where the problem is about the header). ``message`` is a full sentence that names the
    column and says what to fix.
    """

    severity: str  # "error" | "warning"
    code: str
    column: str | None
    count: int
    rows: list[int]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return f"[{self.code}] {self.message}"


class DataValidationError(UserError):
    """An institution's table failed validation; ``problems`` lists every error found.

    ``str(exc)`` is the full multi-line report (errors, then warnings). ``path`` is the
    file (or ``"<frame>"``), ``rows`` the number of data rows read (None if unreadable).
    """

    def __init__(self, path: str, problems: list[Problem], warnings: list[Problem] | None = None,
                 rows: int | None = None):
        self.path = str(path)
        self.problems = list(problems)
        self.warnings = list(warnings or [])
        self.rows = rows
        super().__init__(self.report())

    def report(self) -> str:
        n = len(self.problems)
        head = f"{self.path}: {n} problem{'s' if n != 1 else ''} found; the table was not accepted"
        if any(p.rows for p in self.problems):
            head += f" ({ROW_NOTE})"
        lines = [head + ":"]
        for i, p in enumerate(self.problems, 1):
            lines.append(f"  {i}. {p.line()}")
        if self.warnings:
            lines.append("warnings:")
            lines.extend(f"  - {w.line()}" for w in self.warnings)
        return "\n".join(lines)

    def summary_for_server(self) -> str:
        """What a node tells the coordinator about its rejected table: the problem codes and the
        schema columns they concern — no values, row numbers, counts or file paths (those
        describe borrowers and stay in the node's own log and ``fedcredit data validate``)."""
        kinds = []
        for p in self.problems:
            kind = p.code + (f" ({p.column})" if p.column else "")
            if kind not in kinds:
                kinds.append(kind)
        n = len(self.problems)
        return (f"the institution's table failed validation ({n} problem{'s' if n != 1 else ''}: "
                f"{'; '.join(kinds)}); the node's log has the full report, and `fedcredit data validate` "
                "at the institution shows it too")

    def to_dict(self) -> dict[str, Any]:
        return {"ok": False, "file": self.path, "rows": self.rows, "default_rate": None,
                "problems": [p.to_dict() for p in self.problems],
                "warnings": [w.to_dict() for w in self.warnings], "features": {}}


def rows_phrase(rows: np.ndarray | list[int], count: int | None = None) -> str:
    """``"data row 3"`` / ``"data rows 3, 17"`` / ``"data rows 3, 4, 5, 6, 7 and 12 more"``."""
    rows = [int(r) for r in list(rows)[:MAX_EXAMPLES]]
    count = len(rows) if count is None else count
    if not rows:
        return ""
    if count == 1:
        return f"data row {rows[0]}"
    text = "data rows " + ", ".join(map(str, rows))
    if count > len(rows):
        text += f" and {count - len(rows)} more"
    return text


def unreadable(path: str | Path, message: str, code: str = "unreadable") -> DataValidationError:
    if not message.endswith((".", "?", "!")):
        message += "."
    return DataValidationError(str(path), [Problem("error", code, None, 0, [], message)])


# --------------------------------------------------------------------------------------------
# The raw table
# --------------------------------------------------------------------------------------------


@dataclass
class RawTable:
    """A table as read: header names as written, cells as written, data row numbers.

    ``column_types`` gives, per column position, the stored type name for Parquet files
    (``"string"`` for every CSV column); validation uses it to refuse e.g. a timestamp column
    where numbers are expected.
    """

    frame: pd.DataFrame
    row_numbers: np.ndarray
    source: str
    format: str  # "csv" | "parquet" | "frame"
    column_types: list[str] = field(default_factory=list)
    encoding: str | None = None
    delimiter: str | None = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    malformed_records: int = 0  # records left out of ``frame`` because their shape is wrong

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, source: str = "<frame>") -> "RawTable":
        """An in-memory table: rows numbered 1..n in their current order."""
        types = [str(frame.iloc[:, i].dtype) for i in range(frame.shape[1])]
        return cls(frame=frame.reset_index(drop=True), row_numbers=np.arange(1, len(frame) + 1),
                   source=source, format="frame", column_types=types)


def read_table(path: str | Path) -> RawTable:
    """Read a CSV or Parquet file into a :class:`RawTable`; refuse what cannot be read."""
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
        return _read_parquet(p)
    kind = _foreign_format(head)
    if kind:
        raise unreadable(p, kind)
    if p.suffix.lower() in PARQUET_EXTENSIONS:
        raise unreadable(p, f"the file has a {p.suffix} extension but is not a Parquet file (it does not start with "
                            f"the PAR1 magic bytes); write it again with a Parquet writer, or rename it to .csv "
                            f"if it is a CSV file")
    return _read_csv(p)


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
# CSV
# --------------------------------------------------------------------------------------------


def _read_csv(p: Path) -> RawTable:
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise unreadable(p, f"cannot read {p}: {exc.strerror or exc}") from None
    notes: list[Problem] = []
    encoding = "utf-8"
    if data.startswith(b"\xef\xbb\xbf"):
        encoding = "utf-8-sig"
        data = data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            data = data.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError:
            raise unreadable(p, "the file starts with a UTF-16 byte-order mark but is not valid UTF-16 text; "
                                "save it again as CSV (UTF-8)") from None
        encoding = "utf-16"
    if b"\x00" in data:
        first = data.index(b"\x00")
        line = data.count(b"\n", 0, first) + 1
        raise unreadable(p, f"the file contains NUL bytes (first at line {line}), so it is not a text CSV "
                            f"(random or binary data, a database file, or UTF-16 text without a byte-order mark); "
                            f"export the table as CSV (UTF-8) or Parquet")
    if not data.strip():
        raise unreadable(p, "the file contains only whitespace; export the table again with a header line and data rows",
                         code="empty")
    try:
        if not data.isascii():  # ASCII is UTF-8; checking that is ~10x cheaper than decoding
            data.decode("utf-8")
        text_head = data[:SNIFF_BYTES].decode("utf-8", errors="ignore")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        for fallback, label in (("cp1252", "Windows-1252"), ("latin-1", "Latin-1 (ISO-8859-1)")):
            try:
                text = data.decode(fallback)
                break
            except UnicodeDecodeError:
                continue
        encoding = fallback
        notes.append(Problem(
            "warning", "encoding", None, 1, [],
            f"the file is not valid UTF-8 (first non-UTF-8 byte 0x{data[exc.start]:02x} on line {line}); it was read "
            f"as {label}. Check that accented text reads correctly, or save the file as CSV (UTF-8)."))
        data = text.encode("utf-8")
        text_head = text[:SNIFF_BYTES]
    _refuse_binary_or_markup(p, text_head)
    if len(data) > SNIFF_BYTES and not any(c in text_head for c in "\n\r"):
        raise unreadable(p, f"the file has no line break in its first {SNIFF_BYTES // 1024} KiB, so it has no header "
                            f"line and is not a CSV table; export the table as CSV (UTF-8) or Parquet")

    delimiter = sniff_delimiter(text_head)
    header = _parse_header(text_head, delimiter)
    if header is None:
        raise unreadable(p, "could not read a header line; the first line must name the columns", code="empty")
    names = [h.strip() for h in header]
    n_cols = len(names)
    if not data.endswith(b"\n"):
        data += b"\n"
    frame, bad = _parse_records(p, data, delimiter, n_cols)
    frame.columns = names
    total = len(frame) + len(bad)
    if bad:
        kept = np.setdiff1d(np.arange(1, total + 1), np.array([b[0] for b in bad], dtype=np.int64),
                            assume_unique=True)
    else:
        kept = np.arange(1, total + 1)
    problems = _bad_row_problems(bad, n_cols, total, delimiter)
    if data.count(b'"') % 2 == 1:
        last = int(total) if total else 1
        problems.append(Problem(
            "error", "bad-row", None, 1, [last],
            f"a quoted value is never closed: the file has an odd number of double quotes (\"), and the last "
            f"record (data row {last}) runs to the end of the file — the file is probably truncated, or a "
            f"quote is missing. Export the file again, or close the quote."))

    # Blank lines (every cell empty): skipped, with a warning unless they only trail the data.
    if len(frame) and n_cols:
        blank = np.ones(len(frame), dtype=bool)
        for i in range(n_cols):
            blank &= (frame.iloc[:, i] == "").to_numpy()
        if blank.any():
            last_data = np.flatnonzero(~blank)
            tail_start = (last_data[-1] + 1) if len(last_data) else 0
            inner = np.flatnonzero(blank[:tail_start])
            if len(inner):
                notes.append(Problem(
                    "warning", "blank-row", None, len(inner), kept[inner][:MAX_EXAMPLES].tolist(),
                    f"{len(inner)} blank line{'s' if len(inner) != 1 else ''} skipped "
                    f"({rows_phrase(kept[inner], len(inner))}); delete them if they are not intended."))
            frame = frame.loc[~blank].reset_index(drop=True)
            kept = kept[~blank]
    return RawTable(frame=frame, row_numbers=kept, source=str(p), format="csv",
                    column_types=["string"] * n_cols, encoding=encoding, delimiter=delimiter,
                    problems=problems, notes=notes, malformed_records=len(bad))


def _refuse_binary_or_markup(p: Path, text: str) -> None:
    sample = text[:SNIFF_BYTES]
    if sample:
        controls = sum(1 for ch in sample if (ord(ch) < 32 and ch not in "\t\n\r\f") or ch == "\x7f")
        if controls > max(2, len(sample) // 100):
            raise unreadable(p, f"the file is binary, not text ({controls} control characters in its first "
                                f"{len(sample)} characters); export the table as CSV (UTF-8) or Parquet")
    start = sample.lstrip().lower()
    if start.startswith(("<!doctype html", "<html", "<?xml", "<table")):
        raise unreadable(p, "the file is an HTML/XML page, not a CSV table (a failed download or an error page "
                            "saved as .csv?); download or export the table again")
    if start.startswith(("{", "[")) and not start.startswith("[["):
        first = start.splitlines()[0] if start else ""
        if first in ("{", "[") or first.startswith(('{"', "[{", '["')):
            raise unreadable(p, "the file looks like JSON, not a CSV table; export the table as CSV (UTF-8) or Parquet")


def sniff_delimiter(text: str) -> str:
    """The delimiter among ``, ; tab |`` that splits the first records most consistently.

    Each candidate parses up to 50 records (quotes respected); the winner has the largest
    share of records with the header's field count, then the most fields. With no candidate
    giving two or more fields the file has a single column and ``","`` is returned.
    """
    lines = text.splitlines(keepends=True)
    if len(text) >= SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the sample may end mid-record
    sample = "".join(lines[:200])
    best: tuple[float, int, int] | None = None
    best_delim = ","
    for rank, d in enumerate(DELIMITERS):
        try:
            rows = [r for r in csv.reader(io.StringIO(sample, newline=""), delimiter=d) if r][:50]
        except csv.Error:
            continue
        if not rows or len(rows[0]) < 2:
            continue
        width = len(rows[0])
        consistent = sum(1 for r in rows if len(r) == width) / len(rows)
        score = (consistent, width, -rank)
        if best is None or score > best:
            best, best_delim = score, d
    return best_delim


def _parse_header(text: str, delimiter: str) -> list[str] | None:
    try:
        for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter):
            return row
    except csv.Error:
        return None
    return None


def _parse_records(p: Path, data: bytes, delimiter: str, n_cols: int) -> tuple[pd.DataFrame, list[tuple[int, int, str]]]:
    """Parse the records after the header as text; return the frame and the bad records.

    A bad record is ``(data row, number of fields, start of its text)``; it is left out of
    the frame (the row numbers of the others account for it).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    bad: list[tuple[int, int, str]] = []

    def on_bad(row) -> str:
        number = row.number - 1 if row.number is not None else -1
        bad.append((number, row.actual_columns, row.text[:60]))
        return "skip"

    placeholders = [f"c{i}" for i in range(n_cols)]
    try:
        table = pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(column_names=placeholders, skip_rows=1, use_threads=False,
                                           block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True,
                                             ignore_empty_lines=False, invalid_row_handler=on_bad),
            # large_string is what pandas' string columns hold: the frame then shares Arrow's buffers
            convert_options=pacsv.ConvertOptions(column_types={c: pa.large_string() for c in placeholders},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, pa.ArrowException) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise unreadable(p, f"the CSV could not be parsed ({msg}); a quote (\") may be left open — often the "
                            f"file was cut off in the middle of a record. Export the file again.") from None
    frame = pd.DataFrame({i: table.column(i).to_pandas() for i in range(n_cols)})
    return frame, sorted(bad)


def _bad_row_problems(bad: list[tuple[int, int, str]], n_cols: int, total: int, delimiter: str) -> list[Problem]:
    problems = []
    dname = {"\t": "tab", ",": "','", ";": "';'", "|": "'|'"}[delimiter]
    short = [b for b in bad if b[1] < n_cols]
    long = [b for b in bad if b[1] > n_cols]

    def describe(records) -> str:
        shown = "; ".join(f"data row {r} has {k} field{'s' if k != 1 else ''}" for r, k, _ in records[:3])
        if len(records) <= 3:
            return shown
        return f"{rows_phrase([b[0] for b in records], len(records))}; e.g. {shown}"

    if short:
        rows = [b[0] for b in short]
        examples = describe(short)
        truncated = len(short) == 1 and short[0][0] == total
        hint = ("the last line looks cut off: the file is probably truncated — export or copy it again"
                if truncated else
                f"check that every row uses the delimiter {dname} like the header, and quote values that "
                f"contain it")
        problems.append(Problem(
            "error", "bad-row", None, len(short), rows[:MAX_EXAMPLES],
            f"{len(short)} record{'s have' if len(short) != 1 else ' has'} fewer fields than the header's {n_cols} "
            f"({examples}); {hint}."))
    if long:
        rows = [b[0] for b in long]
        examples = describe(long)
        problems.append(Problem(
            "error", "bad-row", None, len(long), rows[:MAX_EXAMPLES],
            f"{len(long)} record{'s have' if len(long) != 1 else ' has'} more fields than the header's {n_cols} "
            f"({examples}); a value probably contains the delimiter {dname} "
            f"(a thousands separator or free text) — quote such values or remove the extra delimiters."))
    return problems


# --------------------------------------------------------------------------------------------
# Parquet
# --------------------------------------------------------------------------------------------


def _read_parquet(p: Path) -> RawTable:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(p).read()  # (not pq.read_table: it refuses duplicate column names)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise unreadable(p, f"the Parquet file could not be read ({msg}); it may be truncated or corrupt — "
                            f"write it again") from None
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
                    format="parquet", column_types=types)
