"""Generate ``tests/data/bad_inputs/``: malformed institution files, each with one kind of defect.

Every file is derived from a small deterministic table of made-up borrowers (generated here
with a seeded :class:`random.Random`; nothing is copied from real data) in the UCI-Taiwan
format (validated with ``--mapping uci-taiwan``) or in the consortium schema's own format
(no mapping). ``MANIFEST.json`` records, per file, the mapping to use, extra command-line
arguments, the error codes ``fedcredit data validate`` must report (exactly) and a substring
its message must contain. Its ``readable`` list holds the files that must be *accepted* — one
per delimiter (comma, semicolon, tab, whitespace) and per shape of a leading index column
(with ``--drop-leading-column``) — with the delimiter they must be read with.

The output is byte-identical on every run (tests check that the committed files match a
fresh run, so nobody edits them by hand). Regenerate with::

    python tests/data/make_bad_inputs.py            # writes tests/data/bad_inputs/
    python tests/data/make_bad_inputs.py OUTDIR     # writes elsewhere
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "bad_inputs"
SEED = 20240611
BASE_ROWS = 510  # above the default minimum of 500 rows, so only the intended defect shows

UCI_HEADER = ["ID", "LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE", "PAY_0", "PAY_2", "PAY_3", "PAY_4",
              "PAY_5", "PAY_6", "BILL_AMT1", "BILL_AMT2", "BILL_AMT3", "BILL_AMT4", "BILL_AMT5", "BILL_AMT6",
              "PAY_AMT1", "PAY_AMT2", "PAY_AMT3", "PAY_AMT4", "PAY_AMT5", "PAY_AMT6",
              "default.payment.next.month"]
SCHEMA_HEADER = ["borrower_id", "credit_limit", "sex", "education", "marital_status", "age",
                 "pay_status_1", "pay_status_2", "pay_status_3", "pay_status_4", "pay_status_5", "pay_status_6",
                 "bill_amount_1", "bill_amount_2", "bill_amount_3", "bill_amount_4", "bill_amount_5",
                 "bill_amount_6", "pay_amount_1", "pay_amount_2", "pay_amount_3", "pay_amount_4",
                 "pay_amount_5", "pay_amount_6", "default_next_month"]
SEX = {"1": "male", "2": "female"}
EDUCATION = {"0": "other", "1": "graduate school", "2": "university", "3": "high school", "4": "other",
             "5": "other", "6": "other"}
MARRIAGE = {"0": "other", "1": "married", "2": "single", "3": "other"}
UCI = "uci-taiwan"


def base_rows(n: int = BASE_ROWS, seed: int = SEED, positives_every: int = 5) -> list[list[str]]:
    """``n`` made-up borrowers in the UCI format (all cells as text); every ``positives_every``-th
    row defaults (label 1), the others do not."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        limit = rng.randrange(1, 51) * 10000
        status = [str(rng.choice([-2, -1, -1, 0, 0, 0, 0, 1, 2, 3])) for _ in range(6)]
        bills = [str(rng.randrange(-2000, limit)) for _ in range(6)]
        pays = [str(rng.randrange(0, 20000)) for _ in range(6)]
        label = "1" if i % positives_every == 0 else "0"
        rows.append([str(i + 1), str(limit), rng.choice("12"), rng.choice("0123456"), rng.choice("0123"),
                     str(rng.randrange(21, 71)), *status, *bills, *pays, label])
    return rows


def to_schema(rows: list[list[str]]) -> list[list[str]]:
    """The same borrowers in the consortium schema's own names and codes."""
    out = []
    for r in rows:
        r = list(r)
        r[2], r[3], r[4] = SEX[r[2]], EDUCATION[r[3]], MARRIAGE[r[4]]
        out.append(r)
    return out


def csv_bytes(header: list[str] | None, rows: list[list[str]], delimiter: str = ",", encoding: str = "utf-8",
              quoting: int = csv.QUOTE_MINIMAL) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\n", quoting=quoting)
    if header is not None:
        w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode(encoding)


def set_cells(rows: list[list[str]], col: int, changes: dict[int, str]) -> list[list[str]]:
    """Copy of ``rows`` with ``changes`` {data row number (1-based): new text} in column ``col``."""
    out = [list(r) for r in rows]
    for row_number, value in changes.items():
        out[row_number - 1][col] = value
    return out


def parquet_bytes(columns: dict, types: dict | None = None) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = types or {}
    arrays = [pa.array(v, type=types.get(k)) for k, v in columns.items()]
    table = pa.Table.from_arrays(arrays, names=list(columns))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="none")
    return buf.getvalue()


def uci_columns(rows: list[list[str]]) -> dict[str, list]:
    """Typed columns (ints) of UCI rows, for Parquet files."""
    return {name: [int(r[j]) for r in rows] for j, name in enumerate(UCI_HEADER)}


def cases() -> list[dict]:
    """Every corpus file: name, bytes, mapping, extra args, expected codes, message substring."""
    base = base_rows()
    schema_rows = to_schema(base)
    col = {name: j for j, name in enumerate(UCI_HEADER)}
    out: list[dict] = []

    def add(name, data, codes, contains, mapping=UCI, args=(), about=""):
        out.append({"file": name, "data": data, "mapping": mapping, "args": list(args),
                    "codes": sorted(codes), "contains": contains, "about": about})

    add("wrong_delimiter_colon.txt", csv_bytes(UCI_HEADER, base, delimiter=":"),
        ["bad-delimiter"], "only one column", about="fields separated by colons (not a supported delimiter)")

    junk_header = csv_bytes(["Borrowers"] + UCI_HEADER, base)
    add("header_extra_name.csv", junk_header, ["bad-row", "empty"], "--drop-leading-column",
        about="the header has one name more than every record has fields (a title over the row labels); "
              "readable with --drop-leading-column (see readable_header_extra_name.csv)")

    mixed = csv_bytes(UCI_HEADER, base[:199]) + csv_bytes(None, base[199:210], delimiter=";") + csv_bytes(None, base[210:])
    add("mixed_delimiters.csv", mixed, ["bad-row"], "fewer fields than the header",
        about="data rows 200-210 use ';' while the header uses ','")

    latin = set_cells(schema_rows, 4, {5: "mariée", 9: "célibataire"})
    add("latin1_marital_status.csv", csv_bytes(SCHEMA_HEADER, latin, encoding="latin-1"),
        ["unknown-category"], "'mariée'", mapping=None,
        about="Latin-1 bytes (read as Windows-1252 with a warning) in an unknown category; schema format")

    dup_ids = set_cells(base, col["ID"], {40: "7", 41: "7", 300: "12"})
    add("bom_duplicate_ids.csv", b"\xef\xbb\xbf" + csv_bytes(UCI_HEADER, dup_ids),
        ["duplicate-id"], "column 'ID' (schema column 'borrower_id')",
        about="UTF-8 BOM (must not stick to the first column name) and duplicated ids")

    thousands = set_cells(base, col["LIMIT_BAL"], {3: "20,000", 17: "150,000", 18: "1,000,000"})
    add("thousands_separators.csv", csv_bytes(UCI_HEADER, thousands), ["non-numeric"],
        "Remove thousands separators", about="quoted numbers with thousands separators")

    nans = set_cells(base, col["BILL_AMT1"], {2: "NaN", 4: "null", 6: "—"})
    nans = set_cells(nans, col["AGE"], {8: "NA"})
    add("nan_strings.csv", csv_bytes(UCI_HEADER, nans), ["non-numeric"], "'NaN'",
        about="NaN / null / em dash / NA written into numeric cells")

    ages = set_cells(base, col["AGE"], {10: "-5", 20: "250", 30: "999", 31: "3"})
    add("negative_and_absurd_ages.csv", csv_bytes(UCI_HEADER, ages), ["out-of-range"],
        "column 'AGE' (schema column 'age')", about="ages -5, 250, 999 and 3")

    inf = set_cells(base, col["BILL_AMT2"], {11: "inf", 12: "-Infinity"})
    inf = set_cells(inf, col["PAY_AMT1"], {13: "1e999"})
    add("infinite_values.csv", csv_bytes(UCI_HEADER, inf), ["non-numeric", "out-of-range"], "infinite",
        about="'inf' words and a number that overflows to infinity")

    edu = set_cells(base, col["EDUCATION"], {14: "7", 15: "9", 16: "7"})
    add("unknown_education_code.csv", csv_bytes(UCI_HEADER, edu), ["unknown-category"],
        "[recode.education]", about="education codes 7 and 9 the mapping does not know")

    sex = set_cells(schema_rows, 2, {1: "M", 2: "F", 3: "Male"})
    add("unknown_sex_values.csv", csv_bytes(SCHEMA_HEADER, sex), ["unknown-category"],
        "'Male' should be 'male'", mapping=None, about="M/F/Male instead of male/female; schema format")

    rep = csv_bytes(UCI_HEADER, base[:299]) + csv_bytes(UCI_HEADER, base[299:])
    add("duplicated_header_line.csv", rep, ["repeated-header"], "data row 300",
        about="two exports appended: the header line appears again as data row 300")

    dup_col_header = UCI_HEADER + ["AGE"]
    dup_col_rows = [r + [r[col["AGE"]]] for r in base]
    add("duplicated_column.csv", csv_bytes(dup_col_header, dup_col_rows), ["duplicate-column"],
        "appears 2 times", about="the AGE column twice")

    both_header = UCI_HEADER + ["credit_limit"]
    both_rows = [r + [r[col["LIMIT_BAL"]]] for r in base]
    add("duplicate_after_mapping.csv", csv_bytes(both_header, both_rows), ["duplicate-column"],
        "both become schema column 'credit_limit'", about="LIMIT_BAL and credit_limit: the same column after mapping")

    add("missing_label_column.csv", csv_bytes(UCI_HEADER[:-1], [r[:-1] for r in base]), ["missing-column"],
        "'default.payment.next.month'", about="no label column")

    renamed = [("PAY_1" if h == "PAY_0" else h) for h in UCI_HEADER]
    add("missing_feature_column.csv", csv_bytes(renamed, base), ["missing-column"], "'PAY_1' is present",
        about="PAY_0 exported as PAY_1")

    one_class = [r[:-1] + ["0"] for r in base]
    add("single_class_label.csv", csv_bytes(UCI_HEADER, one_class), ["single-class"], "single class",
        about="every label is 0")

    bad_label = set_cells(base, col["default.payment.next.month"], {21: "2", 22: "yes", 23: "2"})
    add("bad_label_values.csv", csv_bytes(UCI_HEADER, bad_label), ["bad-label"], "'yes'",
        about="labels 2 and 'yes'")

    empty_label = set_cells(base, col["default.payment.next.month"], {24: "", 25: " "})
    add("missing_label_values.csv", csv_bytes(UCI_HEADER, empty_label), ["missing-value"], "needs its outcome",
        about="empty label cells")

    add("empty.csv", b"", ["empty"], "0 bytes", about="a 0-byte file")

    add("header_only.csv", csv_bytes(UCI_HEADER, []), ["empty"], "no data rows", about="header and nothing else")

    full = csv_bytes(UCI_HEADER, base)
    add("truncated_last_line.csv", full[: full.rindex(b",", 0, len(full) - 40)], ["bad-row"], "truncated",
        about="the file cut off in the middle of its last record")

    quoted = csv_bytes(UCI_HEADER, base, quoting=csv.QUOTE_ALL)
    add("unterminated_quote.csv", quoted[: len(quoted) - 2], ["bad-row"], "never closed",
        about="all values quoted and the file cut inside the last quoted value")

    rng = random.Random(SEED + 1)
    add("random_binary.csv", bytes(rng.randrange(256) for _ in range(4096)), ["unreadable"], "NUL bytes",
        about="4 KiB of random bytes")

    nul = bytearray(full)
    nul[len(full) // 2] = 0
    add("nul_bytes.csv", bytes(nul), ["unreadable"], "NUL bytes", about="a NUL byte in the middle of a valid CSV")

    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for member, text in (("[Content_Types].xml", "<Types/>"), ("xl/workbook.xml", "<workbook/>")):
            info = zipfile.ZipInfo(member, date_time=(2024, 1, 1, 0, 0, 0))
            z.writestr(info, text)
    add("excel_workbook.xlsx", zbuf.getvalue(), ["unreadable"], "Excel", about="an Excel workbook (ZIP)")

    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, filename="") as g:
        g.write(full)
    add("compressed.csv.gz", gz.getvalue(), ["unreadable"], "gzip", about="a gzip-compressed CSV")

    add("html_error_page.csv", b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
        b"<body><h1>Not Found</h1></body></html>\n", ["unreadable"], "HTML", about="an error page saved as .csv")

    add("csv_named_parquet.parquet", full, ["unreadable"], "not a Parquet file", about="a CSV with a .parquet extension")

    cols = uci_columns(base)
    cols["AGE"] = [1_000_000 * (18 + i % 50) * 365 * 86400 for i in range(len(base))]
    import pyarrow as pa
    add("wrong_column_type.parquet", parquet_bytes(cols, {"AGE": pa.timestamp("us")}), ["wrong-type"], "timestamp",
        about="AGE stored as a timestamp column")

    cols = uci_columns(base)
    cols["LIMIT_BAL"] = [str(v) for v in cols["LIMIT_BAL"]]
    cols["LIMIT_BAL"][4] = "20 000"
    cols["LIMIT_BAL"][5] = "n/a"
    add("text_in_numeric.parquet", parquet_bytes(cols), ["non-numeric"], "column 'LIMIT_BAL' (schema column 'credit_limit')",
        about="LIMIT_BAL stored as text, two cells not numbers")

    cols = uci_columns(base)
    cols["AGE"] = [[v] if i % 7 else [] for i, v in enumerate(cols["AGE"])]
    cols["tags"] = [["gold", "web"] if i % 3 else [] for i in range(len(base))]
    add("list_columns.parquet", parquet_bytes(cols), ["wrong-type"], "stored as list",
        about="AGE stored as a list column (some lists empty) and an extra list-valued column 'tags' "
              "(only a warning)")

    few = [r[:-1] + ["1" if i % 2 == 0 else "0"] for i, r in enumerate(base[:120])]
    add("too_few_rows.csv", csv_bytes(UCI_HEADER, few), ["too-few-rows"], "at least 500",
        about="120 rows, 60 of them defaults (default minimums: 500 rows, 50 defaults)")

    few_pos = [r[:-1] + ["1" if i % 30 == 0 else "0"] for i, r in enumerate(base)]
    add("too_few_positives.csv", csv_bytes(UCI_HEADER, few_pos), ["too-few-positives"], "at least 50",
        about="17 defaults (default minimum 50)")

    no_age = set_cells(base, col["AGE"], {50: "", 51: "  ", 400: ""})
    add("missing_values_reject.csv", csv_bytes(UCI_HEADER, no_age), ["missing-value"], "does not accept missing values",
        about="empty AGE cells (schema policy: reject)")

    frac = set_cells(base, col["PAY_0"], {60: "1.5", 61: "0.25"})
    add("non_integer_ordinal.csv", csv_bytes(UCI_HEADER, frac), ["not-integer"], "whole numbers from -2 to 9",
        about="repayment status 1.5 and 0.25")

    big_status = set_cells(base, col["PAY_2"], {70: "12", 71: "-3"})
    add("ordinal_out_of_range.csv", csv_bytes(UCI_HEADER, big_status), ["out-of-range"], "-2 to 9",
        about="repayment status 12 and -3")

    comma = set_cells(base, col["BILL_AMT1"], {80: "1234,5", 81: "99,75"})
    add("decimal_comma_semicolon.csv", csv_bytes(UCI_HEADER, comma, delimiter=";"), ["non-numeric"],
        "decimal separator", about="semicolon-delimited export with decimal commas")

    lines = full.decode().split("\n")
    for k in (90, 91):  # unquoted thousands separators split LIMIT_BAL into two fields
        cells = lines[k].split(",")
        cells[1] = cells[1][:-3] + "," + cells[1][-3:]
        lines[k] = ",".join(cells)
    add("extra_fields.csv", "\n".join(lines).encode(), ["bad-row"], "more fields than the header",
        about="unquoted '150,000' values split a row into 26 fields")

    neg = set_cells(schema_rows, SCHEMA_HEADER.index("pay_amount_1"), {100: "-250"})
    add("negative_payment_schema_format.csv", csv_bytes(SCHEMA_HEADER, neg), ["out-of-range"],
        "column 'pay_amount_1'", mapping=None, about="a negative repayment; schema format")

    units = set_cells(base, col["LIMIT_BAL"], {110: "NT$20000", 111: "50000 TWD"})
    add("currency_symbols.csv", csv_bytes(UCI_HEADER, units), ["non-numeric"], "currency symbols",
        about="amounts with currency symbols or units")
    return out


def whitespace_bytes(header: list[str], rows: list[list[str]]) -> bytes:
    """Fields aligned in columns by runs of spaces (a fixed-width style export), a leading space
    on every line."""
    table = [header] + rows
    widths = [max(len(r[j]) for r in table) for j in range(len(header))]
    return "".join(" " + "  ".join(c.rjust(w) for c, w in zip(r, widths)) + "\n" for r in table).encode()


def readable_cases() -> list[dict]:
    """Files that must be *accepted*: each delimiter, and each shape of a leading index column.
    ``delimiter`` is how the file must be read (``fedcredit data validate --json`` reports it)."""
    base = base_rows()
    out: list[dict] = []

    def add(name, data, delimiter, args=(), about=""):
        out.append({"file": name, "data": data, "mapping": UCI, "args": list(args), "delimiter": delimiter,
                    "rows": len(base), "about": about})

    add("readable_comma.csv", csv_bytes(UCI_HEADER, base), "comma", about="comma-separated")
    add("readable_semicolon.csv", csv_bytes(UCI_HEADER, base, delimiter=";"), "semicolon",
        about="semicolon-separated (a European spreadsheet export)")
    add("readable_tab.tsv", csv_bytes(UCI_HEADER, base, delimiter="\t"), "tab", about="tab-separated")
    add("readable_whitespace.txt", whitespace_bytes(UCI_HEADER, base), "whitespace",
        about="columns aligned with runs of spaces, a leading space on every line")
    add("readable_header_extra_name.csv", csv_bytes(["Borrowers"] + UCI_HEADER, base), "comma",
        ["--drop-leading-column"], about="a header with one name more than the records (dropped)")
    add("readable_unnamed_row_labels.txt",
        csv_bytes(UCI_HEADER, [[f"r{i + 1}"] + r for i, r in enumerate(base)], delimiter=" "),
        "whitespace", ["--drop-leading-column"],
        about="space-separated rows that start with a row label the header does not name (R's write.table)")
    add("readable_index_column.csv", csv_bytes([""] + UCI_HEADER, [[str(i)] + r for i, r in enumerate(base)]),
        "comma", ["--drop-leading-column"], about="a pandas-style unnamed index column (dropped)")
    return out


def generate(outdir: str | Path = DEFAULT_OUT) -> list[dict]:
    """Write every corpus file and MANIFEST.json into ``outdir``; return the manifest entries."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    manifest, readable = [], []
    for case in cases():
        (outdir / case["file"]).write_bytes(case["data"])
        manifest.append({k: v for k, v in case.items() if k != "data"})
    for case in readable_cases():
        (outdir / case["file"]).write_bytes(case["data"])
        readable.append({k: v for k, v in case.items() if k != "data"})
    text = json.dumps({"generator": "tests/data/make_bad_inputs.py", "seed": SEED, "files": manifest,
                       "readable": readable}, indent=1, ensure_ascii=False) + "\n"
    (outdir / "MANIFEST.json").write_text(text, encoding="utf-8")
    return manifest


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    entries = generate(target)
    print(f"wrote {len(entries)} files and MANIFEST.json to {target}")
