"""Reading institution files: delimiters, encodings, magic bytes, row shapes (clients.tabular_io)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients.tabular_io import DataValidationError, read_table, rows_phrase, sniff_delimiter
from configs.errors import UserError

ROWS = [["id", "amount", "name"], ["1", "10", "ann"], ["2", "20.5", "bob"], ["3", "", "cy"]]


def write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def text(rows, delim=",", end="\n") -> str:
    return end.join(delim.join(r) for r in rows) + end


def problem_codes(exc: DataValidationError) -> list[str]:
    return [p.code for p in exc.problems]


@pytest.mark.parametrize("delim", [",", ";", "\t", "|"])
def test_every_supported_delimiter_is_sniffed(tmp_path, delim):
    p = write(tmp_path, "t.csv", text(ROWS, delim).encode())
    raw = read_table(p)
    assert raw.delimiter == delim
    assert list(raw.frame.columns) == ["id", "amount", "name"]
    assert raw.frame["amount"].tolist() == ["10", "20.5", ""]
    assert raw.row_numbers.tolist() == [1, 2, 3]


def test_sniffer_prefers_semicolon_when_commas_are_decimal_marks():
    sample = "a;b;c\n1,5;2;3\n4;5,25;6\n"
    assert sniff_delimiter(sample) == ";"


def test_cells_are_read_as_text_exactly(tmp_path):
    data = 'id,code,note\n007,NA,"a, quoted ""note"""\n008, 12 ,"two\nlines"\n'
    raw = read_table(write(tmp_path, "t.csv", data.encode()))
    f = raw.frame
    assert f["id"].tolist() == ["007", "008"]  # leading zeros kept: no number parsing here
    assert f["code"].tolist() == ["NA", " 12 "]  # NA is not turned into a missing value
    assert f["note"].tolist() == ['a, quoted "note"', "two\nlines"]
    assert raw.row_numbers.tolist() == [1, 2]  # a quoted newline does not add a data row


def test_utf8_bom_does_not_stick_to_the_first_column(tmp_path):
    raw = read_table(write(tmp_path, "t.csv", b"\xef\xbb\xbf" + text(ROWS).encode()))
    assert list(raw.frame.columns)[0] == "id"
    assert raw.encoding == "utf-8-sig"
    assert raw.notes == []


def test_utf16_with_bom_is_read(tmp_path):
    raw = read_table(write(tmp_path, "t.csv", text(ROWS, "\t").encode("utf-16")))
    assert list(raw.frame.columns) == ["id", "amount", "name"]
    assert raw.frame["name"].tolist() == ["ann", "bob", "cy"]


def test_cp1252_fallback_decodes_and_warns(tmp_path):
    rows = ROWS + [["4", "5", "Zoë €"]]
    raw = read_table(write(tmp_path, "t.csv", text(rows).encode("cp1252")))
    assert raw.frame["name"].tolist()[-1] == "Zoë €"
    assert raw.encoding == "cp1252"
    (note,) = raw.notes
    assert note.code == "encoding" and note.severity == "warning"
    assert "line 5" in note.message and "Windows-1252" in note.message


def test_latin1_fallback_for_bytes_undefined_in_cp1252(tmp_path):
    data = text(ROWS).encode() + b"4,5,x\x81y\n"  # 0x81 is undefined in cp1252
    raw = read_table(write(tmp_path, "t.csv", data))
    assert raw.encoding == "latin-1"
    assert raw.frame["name"].tolist()[-1] == "x\x81y"
    assert "Latin-1" in raw.notes[0].message


def test_header_without_trailing_newline_and_header_only(tmp_path):
    raw = read_table(write(tmp_path, "h.csv", b"a,b,c"))
    assert list(raw.frame.columns) == ["a", "b", "c"] and len(raw.frame) == 0
    raw = read_table(write(tmp_path, "h2.csv", b"a,b,c\r\n1,2,3"))
    assert raw.frame.iloc[0].tolist() == ["1", "2", "3"]


def test_blank_lines_are_skipped_but_keep_row_numbers(tmp_path):
    data = "a,b\n1,2\n\n3,4\n,\n5,6\n\n\n"
    raw = read_table(write(tmp_path, "t.csv", data.encode()))
    assert raw.frame["a"].tolist() == ["1", "3", "5"]
    assert raw.row_numbers.tolist() == [1, 3, 5]
    (note,) = raw.notes  # trailing blank lines are not worth a warning
    assert note.code == "blank-row" and note.rows == [2, 4] and "data rows 2, 4" in note.message


def test_records_with_wrong_field_counts_are_reported_and_later_rows_keep_their_numbers(tmp_path):
    data = "a,b,c\n1,2,3\n4,5\n6,7,8,9\n10,11,12\n"
    raw = read_table(write(tmp_path, "t.csv", data.encode()))
    assert raw.frame["a"].tolist() == ["1", "10"]
    assert raw.row_numbers.tolist() == [1, 4]
    short, long = raw.problems
    assert short.code == long.code == "bad-row"
    assert short.rows == [2] and "data row 2 has 2 fields" in short.message and "fewer" in short.message
    assert long.rows == [3] and "data row 3 has 4 fields" in long.message and "more fields" in long.message
    assert raw.malformed_records == 2


def test_truncated_last_line_is_named(tmp_path):
    raw = read_table(write(tmp_path, "t.csv", b"a,b,c\n1,2,3\n4,5,6\n7,"))
    (p,) = raw.problems
    assert p.rows == [3] and "truncated" in p.message


def test_unclosed_quote_is_reported(tmp_path):
    raw = read_table(write(tmp_path, "t.csv", b'"a","b"\n"1","2"\n"3","4'))
    assert any("never closed" in p.message for p in raw.problems)


@pytest.mark.parametrize("data,needle", [
    (b"", "0 bytes"),
    (b"   \n\n", "only whitespace"),
    (b"a,b\n1,\x002\n", "NUL bytes"),
    (bytes(range(1, 32)) * 40, "binary"),
    (b"PK\x03\x04" + b"\x00" * 60, "Excel"),
    (b"\xd0\xcf\x11\xe0" + b"\x00" * 60, "Excel"),
    (b"\x1f\x8b\x08\x00" + b"\x00" * 60, "gzip"),
    (b"%PDF-1.7\n", "PDF"),
    (b"  <!DOCTYPE html><html></html>", "HTML"),
    (b'{"rows": [1, 2]}\n', "JSON"),
])
def test_unreadable_bytes_raise_a_user_error(tmp_path, data, needle):
    p = write(tmp_path, "t.csv", data)
    with pytest.raises(DataValidationError) as info:
        read_table(p)
    assert isinstance(info.value, UserError)
    assert needle in str(info.value)
    assert problem_codes(info.value)[0] in ("unreadable", "empty")
    assert str(p) in str(info.value)


def test_missing_file_and_directory(tmp_path):
    for target in (tmp_path / "nope.csv", tmp_path):
        with pytest.raises(DataValidationError) as info:
            read_table(target)
        assert problem_codes(info.value) == ["not-found"]


def test_file_type_by_magic_bytes_then_extension(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    table = pa.table({"a": [1, 2], "b": ["x", None], "c": [1.5, float("nan")]})
    disguised = tmp_path / "really_parquet.csv"
    pq.write_table(table, disguised)
    raw = read_table(disguised)  # PAR1 magic wins over the .csv extension
    assert raw.format == "parquet"
    assert raw.frame["a"].tolist() == [1, 2]
    assert raw.column_types == ["int64", "string", "double"]
    assert raw.row_numbers.tolist() == [1, 2]

    fake = write(tmp_path, "fake.parquet", b"a,b\n1,2\n")
    with pytest.raises(DataValidationError, match="not a Parquet file"):
        read_table(fake)


def test_corrupt_parquet_is_unreadable(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    good = tmp_path / "g.parquet"
    pq.write_table(pa.table({"a": list(range(100))}), good)
    cut = write(tmp_path, "cut.parquet", good.read_bytes()[:60])
    with pytest.raises(DataValidationError) as info:
        read_table(cut)
    assert problem_codes(info.value) == ["unreadable"] and "Parquet" in str(info.value)


def test_rows_phrase():
    assert rows_phrase([3]) == "data row 3"
    assert rows_phrase([3, 17]) == "data rows 3, 17"
    assert rows_phrase(np.array([1, 2, 3, 4, 5, 6, 7]), 12) == "data rows 1, 2, 3, 4, 5 and 7 more"


def test_large_file_reads_fast_enough_to_be_vectorised(tmp_path):
    # 200k rows: a per-row Python loop would take far longer than the pytest timeout below.
    n = 200_000
    frame = pd.DataFrame({"a": np.arange(n), "b": np.arange(n) * 0.5, "c": ["x"] * n})
    p = tmp_path / "big.csv"
    frame.to_csv(p, index=False)
    raw = read_table(p)
    assert len(raw.frame) == n and raw.row_numbers[-1] == n
    assert raw.frame["b"].iloc[-1] == str((n - 1) * 0.5)


def test_old_mac_line_endings(tmp_path):
    raw = read_table(write(tmp_path, "t.csv", b"a;b;c\r1;2;3\r4;5;6\r"))
    assert list(raw.frame.columns) == ["a", "b", "c"] and raw.frame["c"].tolist() == ["3", "6"]


def test_one_enormous_line_is_not_a_table(tmp_path):
    with pytest.raises(DataValidationError, match="no line break"):
        read_table(write(tmp_path, "t.csv", b"a," * 100_000))


def test_parquet_with_duplicate_column_names_is_read_for_validation_to_report(tmp_path, schema):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clients.validation import validate_raw

    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array([30, 40]), pa.array([31, 41])], names=["age", "age"]), p)
    raw = read_table(p)
    assert list(raw.frame.columns) == ["age", "age"]
    with pytest.raises(DataValidationError) as info:
        validate_raw(raw, schema)
    dup = [x for x in info.value.problems if x.code == "duplicate-column"]
    assert len(dup) == 1 and "columns 1, 2" in dup[0].message


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=300).map(
    lambda b: bytes(b'a,;"\n\r 1\t|.-eE\xe9\x00'[x % 16] for x in b)))
def test_arbitrary_bytes_never_escape_as_anything_but_a_user_error(tmp_path, schema, data):
    from clients.validation import load_institution_table

    p = write(tmp_path, "fuzz.csv", data)
    try:
        result = load_institution_table(p, schema, min_rows=0, min_positives=0)
    except DataValidationError as exc:
        assert exc.problems and all(x.message for x in exc.problems)
    else:  # pragma: no cover - would need every schema column
        assert list(result.table.columns) == schema.columns


# ------------------------------------------------------------------ whitespace and leading columns
def test_whitespace_separated_columns_are_sniffed_and_quotes_keep_spaces(tmp_path):
    data = ('  id   amount  name\n'
            '   1     10.5  ann\n'
            '   2    -20    "bob  jr"\n'
            '   3     30    cy\n')
    raw = read_table(write(tmp_path, "t.txt", data.encode()))
    assert raw.delimiter == "whitespace" and raw.problems == []
    assert list(raw.frame.columns) == ["id", "amount", "name"]
    assert raw.frame["amount"].tolist() == ["10.5", "-20", "30"]
    assert raw.frame["name"].tolist() == ["ann", "bob  jr", "cy"]


@pytest.mark.parametrize("data,expected", [
    ("a, b, c\n1, 2, 3\n4, 5, 6\n", ","),  # spaces after the commas: still a CSV
    ('"a","b"\n"1","2"\n"3","4"\n', ","),  # quoted fields: no whitespace in sight
    ("a\tb c\tz\n1\tx y\t2\n3\tp q\t4\n", "\t"),  # spaces inside tab-separated values
    ("a b c\n1 2 3\n4 5 6\n", "whitespace"),
])
def test_whitespace_wins_only_where_no_real_delimiter_splits_as_well(data, expected):
    assert sniff_delimiter(data) == expected


def test_a_given_delimiter_overrides_the_sniffer(tmp_path):
    from clients.raw_table import ReadOptions

    p = write(tmp_path, "t.csv", b"a b;c\n1 2;3\n")
    assert read_table(p).delimiter == ";"
    raw = read_table(p, ReadOptions.from_names("whitespace"))
    assert list(raw.frame.columns) == ["a", "b;c"] and raw.frame.iloc[0].tolist() == ["1", "2;3"]
    with pytest.raises(UserError, match="unknown delimiter 'colon'"):
        ReadOptions.from_names("colon")


LEADING_SHAPES = {
    "index column": ",a,b\n0,1,x\n1,2,y\n",  # pandas' to_csv with its index
    "title over the row labels": "rows,a,b\n1,x\n2,y\n",  # the header has one name more
    "unnamed row labels": "a,b\nr1,1,x\nr2,2,y\n",  # the records have one field more (R's write.table)
}


@pytest.mark.parametrize("shape", list(LEADING_SHAPES))
def test_drop_leading_column_reads_every_shape_to_the_same_table(tmp_path, shape):
    from clients.raw_table import ReadOptions

    raw = read_table(write(tmp_path, "t.csv", LEADING_SHAPES[shape].encode()), ReadOptions(drop_leading_column=True))
    assert raw.problems == []
    assert list(raw.frame.columns) == ["a", "b"]
    assert raw.frame.to_dict("list") == {"a": ["1", "2"], "b": ["x", "y"]}
    assert raw.row_numbers.tolist() == [1, 2]


@pytest.mark.parametrize("shape, words", [("title over the row labels", "one field fewer"),
                                          ("unnamed row labels", "one field more")])
def test_a_header_one_name_off_names_the_option_that_reads_it(tmp_path, shape, words):
    raw = read_table(write(tmp_path, "t.csv", LEADING_SHAPES[shape].encode()))
    (p,) = raw.problems
    assert p.code == "bad-row" and words in p.message and "--drop-leading-column" in p.message


def test_drop_leading_column_that_does_not_fit_the_shape_is_refused(tmp_path):
    from clients.raw_table import ReadOptions

    with pytest.raises(DataValidationError, match="not one more or one fewer"):
        read_table(write(tmp_path, "t.csv", b"a,b,c,d\n1,2\n3,4\n"), ReadOptions(drop_leading_column=True))


def test_record_spans_cut_the_text_where_the_parser_does(tmp_path):
    from clients.csv_reader import record_spans

    data = b'a,b\r\n1,"two\nlines"\r\n3,4\n\n5,"x ""q"" y"'
    starts, ends = record_spans(data)
    records = [data[s:e] for s, e in zip(starts, ends)]
    assert records == [b"a,b", b'1,"two\nlines"', b"3,4", b"", b'5,"x ""q"" y"']
    raw = read_table(write(tmp_path, "t.csv", data))
    assert raw.row_numbers.tolist() == [1, 2, 4]  # the blank record 3 is skipped, the numbering agrees
