"""What reading an institution's table yields: the raw table, its read options, and problems.

:class:`RawTable` is a table as read — header names and cells exactly as written, with each
row's *data row number* (the first row after the header is data row 1). :class:`ReadOptions`
are the two things a reader cannot always guess: the delimiter and whether the first column
is a row index to drop. :class:`Problem` is one finding about a table; a table that cannot be
used raises :class:`DataValidationError` with all of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from configs.errors import UserError

ROW_NOTE = "data row 1 is the first row after the header"
MAX_EXAMPLES = 5
#: the delimiter name for fields separated by runs of spaces and tabs
WHITESPACE = "whitespace"
#: delimiters by the names a user writes (``--delimiter``, a mapping's ``[read] delimiter``)
DELIMITER_NAMES = {"comma": ",", "semicolon": ";", "tab": "\t", "pipe": "|", WHITESPACE: WHITESPACE}


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
# How to read a file
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadOptions:
    """How to read a delimited text file (Parquet files ignore both).

    ``delimiter``: ``None`` sniffs it (comma, semicolon, tab, ``|`` or whitespace); otherwise one
    of the values of :data:`DELIMITER_NAMES` (``","`` … or ``"whitespace"``: fields separated by
    runs of spaces and tabs, quotes respected).

    ``drop_leading_column``: the first column is a row index or a junk label, not data. It is
    dropped whatever the shape: a header with one name *more* than the records have fields (a
    title over the row labels: the header's first name goes), one name *fewer* (row labels
    without a header name: each record's first field goes), or as many (an index column: the
    whole first column goes).
    """

    delimiter: str | None = None
    drop_leading_column: bool = False

    def __post_init__(self):
        if self.delimiter is not None and self.delimiter not in DELIMITER_NAMES.values():
            raise ValueError(f"unknown delimiter {self.delimiter!r}")

    @classmethod
    def from_names(cls, delimiter: str | None = None, drop_leading_column: bool = False) -> "ReadOptions":
        """From user words: ``delimiter`` is ``auto`` (or None), a name of :data:`DELIMITER_NAMES`
        or the character itself; a :class:`UserError` names the choices otherwise."""
        if delimiter in (None, "", "auto"):
            return cls(None, drop_leading_column)
        if delimiter in DELIMITER_NAMES:
            return cls(DELIMITER_NAMES[delimiter], drop_leading_column)
        if delimiter in DELIMITER_NAMES.values():
            return cls(delimiter, drop_leading_column)
        raise UserError(f"unknown delimiter {delimiter!r}; use auto (sniffed), {', '.join(DELIMITER_NAMES)}")

    def merged(self, other: "ReadOptions | None") -> "ReadOptions":
        """These options, with what ``other`` sets (a given delimiter, a dropped column) on top."""
        if other is None:
            return self
        return ReadOptions(other.delimiter or self.delimiter, self.drop_leading_column or other.drop_leading_column)

    def delimiter_name(self) -> str | None:
        """The delimiter's name (``comma`` … ``whitespace``), None when not set (or Parquet)."""
        return next((k for k, v in DELIMITER_NAMES.items() if v == self.delimiter), None)

    def words(self) -> str:
        """How a user asks for these options on the command line (for messages)."""
        parts = []
        if self.delimiter is not None:
            parts.append(f"--delimiter {self.delimiter_name()}")
        if self.drop_leading_column:
            parts.append("--drop-leading-column")
        return " ".join(parts)


# --------------------------------------------------------------------------------------------
# The raw table
# --------------------------------------------------------------------------------------------


@dataclass
class RawTable:
    """A table as read: header names as written, cells as written, data row numbers.

    ``column_types`` gives, per column position, the stored type name for Parquet files
    (``"string"`` for every CSV column); validation uses it to refuse e.g. a timestamp column
    where numbers are expected. ``delimiter`` is the delimiter found (or given): one of
    ``","``, ``";"``, a tab, ``"|"`` or ``"whitespace"``.
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
    read_options: ReadOptions = ReadOptions()  # how the file was read (delimiter as found)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, source: str = "<frame>") -> "RawTable":
        """An in-memory table: rows numbered 1..n in their current order."""
        types = [str(frame.iloc[:, i].dtype) for i in range(frame.shape[1])]
        return cls(frame=frame.reset_index(drop=True), row_numbers=np.arange(1, len(frame) + 1),
                   source=source, format="frame", column_types=types)
