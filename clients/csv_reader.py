"""Reading a delimited text table: encoding, delimiter, header shape and the records.

* **encoding** — a UTF-8 (with or without BOM) or UTF-16 (with BOM) file is read as such;
  other bytes fall back to Windows-1252 (then Latin-1) with a warning;
* **binary garbage** — NUL bytes or many control characters mean the file is not text;
* **delimiter** — ``,`` ``;`` tab ``|`` or *whitespace* (runs of spaces and tabs, as in
  fixed-width or space-separated exports): the one that splits the first records most
  consistently into the most fields (:func:`sniff_delimiter`), unless one is given;
* **leading column** — with :attr:`ReadOptions.drop_leading_column` a row index or junk first
  column is dropped, also when the header has one name more or fewer than the records;
  without it, a header that is off by one name against every record is reported with that hint;
* **row shape** — records with fewer or more fields than the header are reported with their
  data row numbers; blank lines are skipped with a warning.

Every cell is kept as text exactly as written (quotes removed). Nothing read is written anywhere.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from clients.raw_table import (MAX_EXAMPLES, WHITESPACE, Problem, RawTable, ReadOptions, rows_phrase,
                               unreadable)

DELIMITERS = (",", ";", "\t", "|", WHITESPACE)
SNIFF_BYTES = 1 << 16
#: one field of a whitespace-separated line: a run of double-quoted strings (quotes doubled inside)
#: and characters that are neither whitespace nor quotes
_WHITESPACE_FIELD = re.compile(r'(?:[^\s"]+|"(?:[^"]|"")*")+')
#: a control character that text does not hold: below 32 except tab, line feed, form feed and
#: carriage return, or DEL
_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_DELIMITER_WORDS = {"\t": "tab", ",": "','", ";": "';'", "|": "'|'", WHITESPACE: "whitespace"}


def read_csv(p: Path, options: ReadOptions | None = None) -> RawTable:
    """Read a delimited text file (see the module docstring)."""
    options = options or ReadOptions()
    data, encoding, notes = decode_text(p)
    text_head = data[:SNIFF_BYTES].decode("utf-8", errors="ignore")
    _refuse_binary_or_markup(p, text_head)
    if len(data) > SNIFF_BYTES and not any(c in text_head for c in "\n\r"):
        raise unreadable(p, f"the file has no line break in its first {SNIFF_BYTES // 1024} KiB, so it has no header "
                            f"line and is not a CSV table; export the table as CSV (UTF-8) or Parquet")
    delimiter = options.delimiter or sniff_delimiter(text_head)
    parse_delimiter = delimiter
    if delimiter == WHITESPACE:
        data, parse_delimiter = whitespace_to_tabs(data), "\t"
        text_head = data[:SNIFF_BYTES].decode("utf-8", errors="ignore")
    header = _parse_header(text_head, parse_delimiter)
    if header is None:
        raise unreadable(p, "could not read a header line; the first line must name the columns", code="empty")
    names = [h.strip() for h in header]
    width = _typical_record_width(text_head, parse_delimiter)
    names, n_fields, drop_first = _header_shape(p, names, width, options.drop_leading_column)
    if not data.endswith(b"\n"):
        data += b"\n"
    frame, bad = _parse_records(p, data, parse_delimiter, n_fields)
    frame.columns = list(range(n_fields))
    if drop_first:
        frame = frame.iloc[:, 1:]
    frame.columns = names
    total = len(frame) + len(bad)
    kept = np.arange(1, total + 1)
    if bad:
        kept = np.setdiff1d(kept, np.array([b[0] for b in bad], dtype=np.int64), assume_unique=True)
    problems = _bad_row_problems(bad, n_fields, total, delimiter, options.drop_leading_column)
    if b'"' in data and data.count(b'"') % 2 == 1:
        last = int(total) if total else 1
        problems.append(Problem(
            "error", "bad-row", None, 1, [last],
            f"a quoted value is never closed: the file has an odd number of double quotes (\"), and the last "
            f"record (data row {last}) runs to the end of the file — the file is probably truncated, or a "
            f"quote is missing. Export the file again, or close the quote."))
    frame, kept = _skip_blank_rows(frame, kept, notes)
    return RawTable(frame=frame, row_numbers=kept, source=str(p), format="csv",
                    column_types=["string"] * len(names), encoding=encoding, delimiter=delimiter,
                    problems=problems, notes=notes, malformed_records=len(bad),
                    read_options=ReadOptions(delimiter, options.drop_leading_column))


def decode_text(p: Path) -> tuple[bytes, str, list[Problem]]:
    """The file's text as UTF-8 bytes, the encoding it was read with, and an encoding warning
    (if it was not UTF-8). NUL bytes, undecodable UTF-16 and whitespace-only files are refused."""
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
    if not data or data.isspace():  # (no stripped copy of the whole file)
        raise unreadable(p, "the file contains only whitespace; export the table again with a header line and data rows",
                         code="empty")
    if data.isascii():  # ASCII is UTF-8; checking that is ~10x cheaper than decoding
        return data, encoding, notes
    try:
        data.decode("utf-8")
        return data, encoding, notes
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad_byte = data[exc.start]
    for fallback, label in (("cp1252", "Windows-1252"), ("latin-1", "Latin-1 (ISO-8859-1)")):
        try:
            text = data.decode(fallback)
            break
        except UnicodeDecodeError:
            continue
    notes.append(Problem(
        "warning", "encoding", None, 1, [],
        f"the file is not valid UTF-8 (first non-UTF-8 byte 0x{bad_byte:02x} on line {line}); it was read "
        f"as {label}. Check that accented text reads correctly, or save the file as CSV (UTF-8)."))
    return text.encode("utf-8"), fallback, notes


def _refuse_binary_or_markup(p: Path, text: str) -> None:
    sample = text[:SNIFF_BYTES]
    if sample:
        controls = len(_CONTROL_CHARACTER.findall(sample))
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


# --------------------------------------------------------------------------------------------
# delimiters and the header
# --------------------------------------------------------------------------------------------


def _sample_records(text: str, delimiter: str, limit: int = 50) -> list[list[str]]:
    """Up to ``limit`` non-empty records of ``text`` split by ``delimiter`` (quotes respected)."""
    lines = text.splitlines(keepends=True)
    if len(text) >= SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the sample may end mid-record
    lines = lines[:4 * limit]
    if delimiter == WHITESPACE:
        return [f for f in (_WHITESPACE_FIELD.findall(line) for line in lines) if f][:limit]
    try:
        return [r for r in csv.reader(io.StringIO("".join(lines), newline=""), delimiter=delimiter) if r][:limit]
    except csv.Error:
        return []


def sniff_delimiter(text: str) -> str:
    """The delimiter among ``, ; tab |`` and whitespace that splits the first records most consistently.

    Each candidate splits up to 50 records (quotes respected); the winner has the largest share of
    records with the header's field count, then is a real delimiter rather than whitespace, then
    gives the most fields, then comes first in ``, ; tab |``. So whitespace wins only where no real
    delimiter splits the records as consistently (a space-separated file) — never over a CSV with
    spaces after its commas or a tab-separated file with spaces inside its values; a
    space-separated file whose every record holds one comma needs ``--delimiter whitespace``.
    With no candidate giving two or more fields the file has a single column and ``","`` is returned.
    """
    best: tuple[float, bool, int, int] | None = None
    best_delim = ","
    for rank, d in enumerate(DELIMITERS):
        rows = _sample_records(text, d)
        if not rows or len(rows[0]) < 2:
            continue
        width = len(rows[0])
        consistent = sum(1 for r in rows if len(r) == width) / len(rows)
        score = (consistent, d != WHITESPACE, width, -rank)
        if best is None or score > best:
            best, best_delim = score, d
    return best_delim


def whitespace_to_tabs(data: bytes) -> bytes:
    """Whitespace-separated text → tab-separated text, line for line: the fields of each line
    (runs of non-space characters, double-quoted strings kept with their quotes) joined by one
    tab; leading and trailing spaces dropped. Without quotes in the file each line is split by
    ``bytes.split`` (~1 s for 30 MB); with quotes, by a tokeniser that keeps quoted spaces."""
    if b'"' not in data:
        return b"\n".join(b"\t".join(line.split()) for line in data.splitlines())
    lines = data.decode("utf-8").splitlines()
    return "\n".join("\t".join(_WHITESPACE_FIELD.findall(line)) for line in lines).encode("utf-8")


def _parse_header(text: str, delimiter: str) -> list[str] | None:
    try:
        for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter):
            return row
    except csv.Error:
        return None
    return None


def _typical_record_width(text: str, delimiter: str) -> int | None:
    """The most common field count of the first records after the header (None: no records)."""
    rows = _sample_records(text, delimiter, limit=201)[1:]
    if not rows:
        return None
    return Counter(len(r) for r in rows).most_common(1)[0][0]


def _header_shape(p: Path, names: list[str], width: int | None, drop_leading: bool) -> tuple[list[str], int, bool]:
    """``(column names, fields per record, drop the first field)`` for the header ``names``.

    Without ``drop_leading`` the header decides. With it, the records' typical ``width`` says
    which of the three shapes of :class:`ReadOptions` the file has.
    """
    if not drop_leading:
        return names, len(names), False
    n = len(names)
    if width is None or width == n:
        if n < 2:
            raise unreadable(p, "--drop-leading-column: the header has a single column, so nothing would be left; "
                                "check the delimiter (--delimiter)")
        return names[1:], n, True
    if width == n - 1:
        return names[1:], width, False
    if width == n + 1:
        return names, width, True
    raise unreadable(p, f"--drop-leading-column: the header has {n} names but the records have {width} fields — "
                        f"not one more or one fewer, so dropping a leading column does not fit; check the "
                        f"delimiter (--delimiter) and the header line")


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


def _skip_blank_rows(frame: pd.DataFrame, kept: np.ndarray, notes: list[Problem]) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows whose every cell is empty are dropped, with a warning unless they only trail the data."""
    n_cols = frame.shape[1]
    if not len(frame) or not n_cols:
        return frame, kept
    blank = np.array((frame.iloc[:, 0] == "").to_numpy(), dtype=bool)
    for i in range(1, n_cols):
        if not blank.any():  # (usually after the first column: only rows blank so far are compared)
            return frame, kept
        rows = np.flatnonzero(blank)
        blank[rows] = (frame.iloc[rows, i] == "").to_numpy()
    if not blank.any():
        return frame, kept
    last_data = np.flatnonzero(~blank)
    tail_start = (last_data[-1] + 1) if len(last_data) else 0
    inner = np.flatnonzero(blank[:tail_start])
    if len(inner):
        notes.append(Problem(
            "warning", "blank-row", None, len(inner), kept[inner][:MAX_EXAMPLES].tolist(),
            f"{len(inner)} blank line{'s' if len(inner) != 1 else ''} skipped "
            f"({rows_phrase(kept[inner], len(inner))}); delete them if they are not intended."))
    return frame.loc[~blank].reset_index(drop=True), kept[~blank]


def _bad_row_problems(bad: list[tuple[int, int, str]], n_cols: int, total: int, delimiter: str,
                      dropped_leading: bool) -> list[Problem]:
    """The malformed records (against ``n_cols`` fields) as at most two problems: too few, too many."""
    problems = []
    dname = _DELIMITER_WORDS[delimiter]
    short = [b for b in bad if b[1] < n_cols]
    long = [b for b in bad if b[1] > n_cols]
    off_by_one = _off_by_one_hint(bad, total, n_cols, dropped_leading)

    def describe(records) -> str:
        shown = "; ".join(f"data row {r} has {k} field{'s' if k != 1 else ''}" for r, k, _ in records[:3])
        if len(records) <= 3:
            return shown
        return f"{rows_phrase([b[0] for b in records], len(records))}; e.g. {shown}"

    if short:
        rows = [b[0] for b in short]
        truncated = len(short) == 1 and short[0][0] == total
        hint = off_by_one or (
            "the last line looks cut off: the file is probably truncated — export or copy it again" if truncated else
            f"check that every row uses the delimiter {dname} like the header, and quote values that contain it")
        problems.append(Problem(
            "error", "bad-row", None, len(short), rows[:MAX_EXAMPLES],
            f"{len(short)} record{'s have' if len(short) != 1 else ' has'} fewer fields than the header's {n_cols} "
            f"({describe(short)}); {hint}."))
    if long:
        rows = [b[0] for b in long]
        hint = off_by_one or (f"a value probably contains the delimiter {dname} (a thousands separator or free "
                              f"text) — quote such values or remove the extra delimiters")
        problems.append(Problem(
            "error", "bad-row", None, len(long), rows[:MAX_EXAMPLES],
            f"{len(long)} record{'s have' if len(long) != 1 else ' has'} more fields than the header's {n_cols} "
            f"({describe(long)}); {hint}."))
    return problems


def _off_by_one_hint(bad: list[tuple[int, int, str]], total: int, n_header: int, dropped_leading: bool) -> str:
    """The hint for a header that is one name off against *every* record: a leading index column."""
    shaped = [b for b in bad if b[1] > 1]  # (an empty line has one field; it says nothing of the header)
    if dropped_leading or not shaped or len(shaped) < 0.9 * total:
        return ""
    widths = {b[1] for b in shaped}
    if widths == {n_header - 1}:
        return ("every record has one field fewer than the header has names: the header probably starts with an "
                "extra name (a title over the row labels). Read the file with --drop-leading-column (or "
                "drop_leading_column = true in the mapping's [read] table), or delete that name from the header")
    if widths == {n_header + 1}:
        return ("every record has one field more than the header has names: the records probably start with a "
                "row label or index that has no name in the header. Read the file with --drop-leading-column (or "
                "drop_leading_column = true in the mapping's [read] table), or name that column in the header")
    return ""


# --------------------------------------------------------------------------------------------
# where each record is in the file (for copying records as they are)
# --------------------------------------------------------------------------------------------


def record_spans(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, ends)`` byte offsets of every record of UTF-8 CSV text, the header first.

    A record ends at a line break (``\\n``, ``\\r\\n`` or a lone ``\\r``) outside double quotes —
    quotes counted from the start of the text, so a quoted value may span lines. ``ends``
    exclude the line break. Vectorised: ~0.1 s for 50 MB.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    quote_parity = np.cumsum(buf == ord('"')) % 2
    lf = buf == ord("\n")
    cr = buf == ord("\r")
    cr_alone = cr & ~np.concatenate([lf[1:], [False]])
    breaks = np.flatnonzero((lf | cr_alone) & (quote_parity == 0))
    ends = breaks.copy()
    crlf = (ends > 0) & lf[ends] & cr[np.maximum(ends - 1, 0)]
    ends[crlf] -= 1
    starts = np.concatenate([[0], breaks + 1])[: len(breaks)]
    if len(buf) and (not len(breaks) or breaks[-1] < len(buf) - 1):  # a last record without a line break
        starts = np.append(starts, (breaks[-1] + 1) if len(breaks) else 0)
        ends = np.append(ends, len(buf))
    return starts.astype(np.int64), ends.astype(np.int64)
