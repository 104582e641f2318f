"""Mapping + validation of institution tables (clients.validation) and ``fedcredit data validate``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.cell_values import parse_numbers
from clients.validation import (DataValidationError, InstitutionTable, Problem, load_institution_table,
                                validate_frame)
from configs.errors import UserError
from configs.mapping import load_mapping

REAL_DATA = Path("/work/shared/data/UCI_Credit_Card.csv")
LOOSE = dict(min_rows=0, min_positives=0)


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uci_frame(bad_inputs_generator):
    """510 made-up borrowers in the UCI format, every cell as text."""
    g = bad_inputs_generator
    return pd.DataFrame(g.base_rows(), columns=g.UCI_HEADER, dtype=object)


@pytest.fixture(scope="module")
def schema_frame(bad_inputs_generator):
    g = bad_inputs_generator
    return pd.DataFrame(g.to_schema(g.base_rows()), columns=g.SCHEMA_HEADER, dtype=object)


def fails(frame, schema, mapping=None, **kw) -> DataValidationError:
    with pytest.raises(DataValidationError) as info:
        validate_frame(frame, schema, mapping, **kw)
    return info.value


def only(exc: DataValidationError, code: str) -> Problem:
    found = [p for p in exc.problems if p.code == code]
    assert len(found) == 1, exc.report()
    return found[0]


def with_cells(frame: pd.DataFrame, column: str, changes: dict[int, str]) -> pd.DataFrame:
    """Copy with {data row number (1-based): text} in ``column``."""
    out = frame.copy()
    for row, value in changes.items():
        out.loc[row - 1, column] = value
    return out


# ------------------------------------------------------------------------------------------
# mapping: UCI format → schema
# ------------------------------------------------------------------------------------------


def test_uci_sample_maps_to_schema_columns_with_recodes(schema, uci_mapping):
    header = ["ID", "LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE", "PAY_0", "PAY_2", "PAY_3", "PAY_4",
              "PAY_5", "PAY_6", "BILL_AMT1", "BILL_AMT2", "BILL_AMT3", "BILL_AMT4", "BILL_AMT5", "BILL_AMT6",
              "PAY_AMT1", "PAY_AMT2", "PAY_AMT3", "PAY_AMT4", "PAY_AMT5", "PAY_AMT6",
              "default.payment.next.month"]
    edu = ["0", "1", "2", "3", "4", "5", "6", "1"]
    sex = ["1", "2", "2", "1", "1", "2", "1", "2"]
    mar = ["0", "1", "2", "3", "1", "2", "3", "0"]
    rows = []
    for i in range(8):
        rows.append([str(100 + i), str(10000 * (i + 1)), sex[i], edu[i], mar[i], str(21 + i),
                     str(i - 2), "0", "0", "0", "-1", "-2", str(1000 * i), "5", "-7", "0", "", "3",
                     "100", "0", "0", "0", "0", "1.5e3", str(i % 2)])
    raw = pd.DataFrame(rows, columns=header)
    result = validate_frame(raw, schema, uci_mapping, **LOOSE)
    t = result.table
    assert list(t.columns) == schema.columns
    assert t["education"].tolist() == ["other", "graduate school", "university", "high school", "other",
                                       "other", "other", "graduate school"]
    assert t["sex"].tolist() == ["male", "female", "female", "male", "male", "female", "male", "female"]
    assert t["marital_status"].tolist() == ["other", "married", "single", "other", "married", "single",
                                            "other", "other"]
    assert t["pay_status_1"].tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # from PAY_0
    assert t["pay_status_2"].tolist() == [0.0] * 8  # from PAY_2: the UCI file has no PAY_1
    assert t["credit_limit"].iloc[2] == 30000.0 and t["age"].iloc[7] == 28.0
    assert t["pay_amount_6"].tolist() == [1500.0] * 8
    assert t["borrower_id"].tolist() == [str(100 + i) for i in range(8)]
    assert t["default_next_month"].tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    # bill_amount_5 was empty everywhere: missing = "impute" with 0
    assert t["bill_amount_5"].tolist() == [0.0] * 8
    assert result.summary()["features"]["bill_amount_5"] == {
        "kind": "numeric", "protected": False, "missing": 8, "imputed": 8, "min": 0.0, "max": 0.0, "mean": 0.0}


def test_clean_table_contract(schema, uci_mapping, uci_frame):
    result = validate_frame(uci_frame, schema, uci_mapping)
    assert isinstance(result, InstitutionTable)
    t = result.table
    assert list(t.columns) == schema.columns
    assert isinstance(t.index, pd.RangeIndex) and len(t) == 510
    for f in schema.features:
        if f.kind == "categorical":
            assert t[f.name].dtype == object
            assert set(t[f.name]) <= set(f.categories)
        else:
            assert t[f.name].dtype == np.float64
            assert not t[f.name].isna().any()
            lo, hi = f.range
            assert t[f.name].between(lo, hi).all()
    assert t[schema.label.name].dtype == np.int64
    assert set(t[schema.label.name]) == {0, 1}
    assert t[schema.id_column].dtype == object and isinstance(t[schema.id_column].iloc[0], str)
    assert result.warnings == []
    s = result.summary()
    assert s["rows"] == 510 and s["positives"] == 102 and s["default_rate"] == pytest.approx(0.2)
    assert sum(s["features"]["sex"]["categories"].values()) == 510
    assert json.dumps(s)  # plain JSON types only


def test_schema_format_needs_no_mapping_and_id_is_optional(schema, schema_frame):
    result = validate_frame(schema_frame.drop(columns=["borrower_id"]), schema)
    assert list(result.table.columns) == schema.columns[1:]
    assert not result.summary()["has_id"]


def test_typed_frames_are_accepted(schema, uci_mapping, uci_frame):
    typed = uci_frame.apply(pd.to_numeric)  # ints, as Parquet would store them
    result = validate_frame(typed, schema, uci_mapping)
    assert result.table["sex"].iloc[0] in ("male", "female")
    assert result.table["borrower_id"].iloc[0] == "1"
    floats = typed.astype(float)
    floats.loc[3, "BILL_AMT1"] = np.nan  # impute policy
    result = validate_frame(floats, schema, uci_mapping)
    assert result.table["bill_amount_1"].iloc[3] == 0.0
    assert result.table["borrower_id"].iloc[0] == "1"  # not "1.0"
    assert result.imputed_counts["bill_amount_1"] == 1


def test_spaces_around_values_are_accepted(schema, uci_mapping, uci_frame):
    raw = with_cells(uci_frame, "AGE", {1: " 33 ", 2: "\t40"})
    raw = with_cells(raw, "LIMIT_BAL", {3: " 1e4"})
    t = validate_frame(raw, schema, uci_mapping).table
    assert t["age"].iloc[:2].tolist() == [33.0, 40.0]
    assert t["credit_limit"].iloc[2] == 10000.0


def test_scale_factors_apply_before_range_checks(tmp_path, schema, uci_frame):
    text = (Path(load_mapping("uci-taiwan", schema).source).read_text()
            + "\n[scale]\ncredit_limit = 10\nbill_amount_1 = 0.5\n")
    path = tmp_path / "thousands.toml"
    path.write_text(text)
    mapping = load_mapping(path, schema)
    raw = with_cells(uci_frame, "LIMIT_BAL", {1: "20", 2: "150"})
    raw = with_cells(raw, "BILL_AMT1", {1: "-100"})
    t = validate_frame(raw, schema, mapping).table
    assert t["credit_limit"].iloc[:2].tolist() == [200.0, 1500.0]
    assert t["bill_amount_1"].iloc[0] == -50.0
    # 3e6 * 10 = 3e7 is above the schema's 2e7: reported, naming the factor, showing the file's value
    exc = fails(with_cells(raw, "LIMIT_BAL", {5: "3000000"}), schema, mapping)
    p = only(exc, "out-of-range")
    assert p.column == "credit_limit" and p.rows == [5]
    assert "the mapping's [scale] for 'credit_limit' (× 10)" in p.message and "'3000000'" in p.message


# ------------------------------------------------------------------------------------------
# every kind of problem, with column names and row numbers
# ------------------------------------------------------------------------------------------


def test_non_numeric_values_name_column_rows_and_fix(schema, uci_mapping, uci_frame):
    raw = with_cells(uci_frame, "LIMIT_BAL", {3: "1,000", 17: "20,000"})
    raw = with_cells(raw, "BILL_AMT2", {5: "NaN", 6: "null", 7: "—", 8: "inf", 9: "N/A", 10: "1.2.3"})
    exc = fails(raw, schema, uci_mapping)
    assert {p.code for p in exc.problems} == {"non-numeric"}
    limit = next(p for p in exc.problems if p.column == "credit_limit")
    assert limit.count == 2 and limit.rows == [3, 17]
    assert "column 'LIMIT_BAL' (schema column 'credit_limit')" in limit.message
    assert "data rows 3, 17" in limit.message and "thousands separators" in limit.message
    bill = next(p for p in exc.problems if p.column == "bill_amount_2")
    assert bill.count == 6 and bill.rows == [5, 6, 7, 8, 9]
    assert "and 1 more" in bill.message
    assert "'NaN'" in bill.message and "leave a missing value's cell empty" in bill.message
    assert "infinite" in bill.message
    assert "data row 1 is the first row after the header" in str(exc)


def test_out_of_range_and_infinite(schema, uci_mapping, uci_frame):
    raw = with_cells(uci_frame, "AGE", {2: "-5", 4: "250"})
    raw = with_cells(raw, "PAY_AMT3", {9: "1e999"})
    exc = fails(raw, schema, uci_mapping)
    age = next(p for p in exc.problems if p.column == "age")
    assert age.code == "out-of-range" and age.rows == [2, 4] and "18 to 100" in age.message
    pay = next(p for p in exc.problems if p.column == "pay_amount_3")
    assert pay.code == "out-of-range" and pay.rows == [9] and "Infinite values are never valid" in pay.message


def test_inf_in_a_float_column_is_out_of_range(schema, uci_mapping, uci_frame):
    typed = uci_frame.apply(pd.to_numeric).astype(float)
    typed.loc[0, "BILL_AMT4"] = np.inf
    p = only(fails(typed, schema, uci_mapping), "out-of-range")
    assert p.column == "bill_amount_4" and p.rows == [1]


def test_ordinal_must_be_whole(schema, uci_mapping, uci_frame):
    raw = with_cells(uci_frame, "PAY_3", {11: "1.5", 12: "2.0"})  # 2.0 is the whole level 2
    p = only(fails(raw, schema, uci_mapping), "not-integer")
    assert p.column == "pay_status_3" and p.rows == [11] and "'1.5'" in p.message
    assert "data-entry errors" in p.message and "standardised" not in p.message  # one typo: fix the typo


def _standardised(values: np.ndarray) -> list[str]:
    z = (values - values.mean()) / values.std()
    return [f"{v:.6f}" for v in z]


def test_standardised_levels_get_advice_for_standardised_values(schema, uci_mapping, uci_frame):
    raw = uci_frame.copy()
    raw["PAY_3"] = _standardised(raw["PAY_3"].astype(float).to_numpy())
    p = only(fails(raw, schema, uci_mapping), "not-integer")
    assert "looks standardised (mean 0.00, sd 1.00)" in p.message and "[unstandardise.pay_status_3]" in p.message
    assert "Round them" not in p.message and "data-entry" not in p.message


def test_a_column_of_fractions_is_not_levels(schema, uci_mapping, uci_frame):
    raw = uci_frame.copy()
    raw["PAY_3"] = [f"{(i % 9) + 0.5}" for i in range(len(raw))]  # positive, not centred: not z-scores
    p = only(fails(raw, schema, uci_mapping), "not-integer")
    assert "Most values (100%) are fractions" in p.message and "numeric in the schema" in p.message


def test_standardised_amounts_out_of_range_point_to_unstandardise(schema, uci_mapping, uci_frame):
    raw = uci_frame.copy()
    raw["AGE"] = _standardised(raw["AGE"].astype(float).to_numpy())
    p = only(fails(raw, schema, uci_mapping), "out-of-range")
    assert "looks standardised" in p.message and "[unstandardise.age] mean = …, sd = …" in p.message


def test_unstandardise_and_offset_apply_before_the_range_checks(tmp_path, schema, uci_frame):
    ages = uci_frame["AGE"].astype(float).to_numpy()
    raw = uci_frame.copy()
    raw["AGE"] = [repr(float(v)) for v in (ages - 40.0) / 12.5]
    raw["PAY_0"] = [str(int(v) + 2) for v in uci_frame["PAY_0"]]  # levels 0..11 for the schema's -2..9
    text = (Path(load_mapping("uci-taiwan", schema).source).read_text()
            + "\n[unstandardise.age]\nmean = 40\nsd = 12.5\n[offset]\npay_status_1 = -2\n")
    path = tmp_path / "std.toml"
    path.write_text(text)
    mapping = load_mapping(path, schema)
    t = validate_frame(raw, schema, mapping).table
    np.testing.assert_allclose(t["age"].to_numpy(), ages, atol=1e-9)
    assert t["pay_status_1"].tolist() == uci_frame["PAY_0"].astype(float).tolist()
    bad = with_cells(raw, "AGE", {3: "8.0"})  # 8 × 12.5 + 40 = 140 > 100
    p = only(fails(bad, schema, mapping), "out-of-range")
    assert p.rows == [3] and "[unstandardise.age]" in p.message and "'8'" in p.message


def test_recode_by_numeric_value_names_standardised_codes(tmp_path, schema, uci_frame):
    codes = {"1": -0.9876543, "2": 1.0123457}
    raw = uci_frame.copy()
    raw["SEX"] = [f"{codes[v]:.7f}" for v in uci_frame["SEX"]]
    text = Path(load_mapping("uci-taiwan", schema).source).read_text().replace(
        '[recode.sex]\n"1" = "male"\n"2" = "female"', '[recode.sex]\n"-0.9877" = "male"\n"1.0123" = "female"')
    path = tmp_path / "codes.toml"
    path.write_text(text)
    t = validate_frame(raw, schema, load_mapping(path, schema)).table
    assert t["sex"].tolist() == ["male" if v == "1" else "female" for v in uci_frame["SEX"]]


def test_unknown_categories_and_case_hint(schema, uci_mapping, uci_frame, schema_frame):
    raw = with_cells(uci_frame, "EDUCATION", {4: "7", 5: "7", 6: "x"})
    p = only(fails(raw, schema, uci_mapping), "unknown-category")
    assert p.column == "education" and p.count == 3 and p.rows == [4, 5, 6]
    assert "'7' (2 rows)" in p.message and "[recode.education]" in p.message
    assert "3 values are not valid categories" in p.message
    p = only(fails(with_cells(uci_frame, "EDUCATION", {9: "7"}), schema, uci_mapping), "unknown-category")
    assert "1 value is not a valid category (data row 9)" in p.message
    raw = with_cells(schema_frame, "sex", {2: "Female"})
    p = only(fails(raw, schema), "unknown-category")
    assert "'Female' should be 'female'" in p.message and "column 'sex'" in p.message


def test_missing_values_reject_and_impute(schema, uci_mapping, uci_frame):
    raw = with_cells(uci_frame, "AGE", {3: "", 8: "  "})
    raw = with_cells(raw, "EDUCATION", {4: ""})
    raw = with_cells(raw, "BILL_AMT6", {5: ""})
    p = only(fails(raw, schema, uci_mapping), "missing-value")
    assert p.column == "age" and p.rows == [3, 8] and "missing = \"reject\"" in p.message
    ok = validate_frame(with_cells(raw, "AGE", {3: "30", 8: "31"}), schema, uci_mapping)
    assert ok.table["education"].iloc[3] == "other"
    assert ok.table["bill_amount_6"].iloc[4] == 0.0
    s = ok.summary()["features"]
    assert (s["education"]["missing"], s["education"]["imputed"]) == (1, 1)
    assert (s["bill_amount_6"]["missing"], s["age"]["missing"]) == (1, 0)


def test_duplicate_and_empty_ids(schema, uci_mapping, uci_frame):
    raw = with_cells(uci_frame, "ID", {10: "3", 20: "3", 30: "11"})
    p = only(fails(raw, schema, uci_mapping), "duplicate-id")
    assert p.rows == [3, 10, 11, 20, 30] and p.count == 5
    assert "'3' (3 times)" in p.message and "column 'ID' (schema column 'borrower_id')" in p.message
    p = only(fails(with_cells(uci_frame, "ID", {7: ""}), schema, uci_mapping), "missing-value")
    assert p.column == "borrower_id" and p.rows == [7]


def test_label_problems(schema, uci_mapping, uci_frame):
    label = "default.payment.next.month"
    exc = fails(with_cells(uci_frame, label, {2: "2", 3: "yes", 4: ""}), schema, uci_mapping)
    bad = only(exc, "bad-label")
    assert bad.rows == [2, 3] and "'yes' (1 row)" in bad.message
    assert only(exc, "missing-value").rows == [4]
    assert {p.code for p in exc.problems} == {"bad-label", "missing-value"}  # no misleading count errors
    single = uci_frame.copy()
    single[label] = "1"
    p = only(fails(single, schema, uci_mapping), "single-class")
    assert "1 (default)" in p.message
    # "1.0" is the value 1: a float-formatted export is fine
    assert validate_frame(with_cells(uci_frame, label, {1: "1.0"}), schema, uci_mapping).table[
        "default_next_month"].iloc[0] == 1


def test_a_boolean_label_flag_is_one_and_zero(schema, uci_mapping, uci_frame):
    typed = uci_frame.apply(pd.to_numeric)
    typed["default.payment.next.month"] = typed["default.payment.next.month"].astype(bool)
    t = validate_frame(typed, schema, uci_mapping).table
    assert t["default_next_month"].dtype == np.int64 and t["default_next_month"].sum() == 102


def test_label_recode_in_a_mapping(tmp_path, schema, uci_frame):
    base = Path(load_mapping("uci-taiwan", schema).source).read_text()
    path = tmp_path / "m.toml"
    path.write_text(base + '\n[recode.default_next_month]\n"yes" = 1\n"no" = 0\n')
    label = "default.payment.next.month"
    raw = uci_frame.copy()
    raw[label] = raw[label].map({"1": "yes", "0": "no"})
    t = validate_frame(raw, schema, load_mapping(path, schema)).table
    assert t["default_next_month"].sum() == 102


def test_header_problems(schema, uci_mapping, uci_frame):
    raw = uci_frame.drop(columns=["AGE", "default.payment.next.month"]).rename(columns={"PAY_0": "PAY_1"})
    raw["Extra"] = "1"
    exc = fails(raw, schema, uci_mapping)
    missing = sorted(p.column for p in exc.problems if p.code == "missing-column")
    assert missing == ["age", "default_next_month", "pay_status_1"]
    pay = next(p for p in exc.problems if p.column == "pay_status_1")
    assert "'PAY_1' is present" in pay.message and "column 'PAY_0' (schema column 'pay_status_1')" in pay.message
    assert sorted(w.column for w in exc.warnings if w.code == "unknown-column") == ["Extra", "PAY_1"]
    assert {p.code for p in exc.problems} == {"missing-column"}


def test_unknown_columns_are_a_warning_only(schema, uci_mapping, uci_frame):
    raw = uci_frame.copy()
    raw["branch"] = "north"
    result = validate_frame(raw, schema, uci_mapping)
    assert "branch" not in result.table.columns
    (w,) = result.warnings
    assert w.severity == "warning" and w.code == "unknown-column" and "'branch'" in w.message


def test_list_valued_columns_do_not_crash(schema, uci_mapping, uci_frame):
    # cells that are arrays (some empty) made the repeated-header check raise ValueError
    raw = uci_frame.copy()
    raw["tags"] = pd.Series([np.array(["gold"]) if i % 3 else np.array([]) for i in range(len(raw))], dtype=object)
    result = validate_frame(raw, schema, uci_mapping)
    assert "tags" not in result.table.columns
    (w,) = result.warnings
    assert w.code == "unknown-column" and "'tags'" in w.message
    raw["AGE"] = pd.Series([[int(v)] if i % 2 else [] for i, v in enumerate(uci_frame["AGE"])], dtype=object)
    p = only(fails(raw, schema, uci_mapping), "non-numeric")
    assert p.column == "age"


def test_parquet_with_a_list_column_is_only_a_warning(tmp_path, fedcredit_cli, bad_inputs_generator):
    g = bad_inputs_generator
    cols = g.uci_columns(g.base_rows())
    cols["tags"] = [["gold", "web"] if i % 3 else [] for i in range(len(cols["ID"]))]
    path = tmp_path / "tags.parquet"
    path.write_bytes(g.parquet_bytes(cols))
    result = load_institution_table(path, None, "uci-taiwan")
    assert [w.code for w in result.warnings] == ["unknown-column"] and "tags" not in result.table.columns
    r = fedcredit_cli("data", "validate", path, "--mapping", "uci-taiwan", "--json")
    assert "Traceback" not in r.stderr and r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["ok"] is True and [w["code"] for w in result["warnings"]] == ["unknown-column"]


def test_duplicate_columns_in_file_and_after_mapping(schema, uci_mapping, uci_frame):
    raw = pd.concat([uci_frame, uci_frame[["AGE"]]], axis=1)
    p = only(fails(raw, schema, uci_mapping), "duplicate-column")
    assert p.column == "age" and "appears 2 times" in p.message and "columns 6, 26" in p.message
    raw = uci_frame.copy()
    raw["credit_limit"] = raw["LIMIT_BAL"]
    p = only(fails(raw, schema, uci_mapping), "duplicate-column")
    assert "'LIMIT_BAL' and 'credit_limit'" in p.message


def test_repeated_header_line(schema, uci_mapping, uci_frame):
    raw = uci_frame.copy()
    raw.loc[41] = list(raw.columns)
    p = only(fails(raw, schema, uci_mapping), "repeated-header")
    assert p.rows == [42]


def test_counts_empty_and_minimums(schema, uci_mapping, uci_frame):
    p = only(fails(uci_frame.iloc[:0], schema, uci_mapping), "empty")
    assert "no data rows" in p.message
    exc = fails(uci_frame.iloc[:100], schema, uci_mapping)
    assert [p.code for p in exc.problems] == ["too-few-rows", "too-few-positives"]
    assert "at least 500" in exc.problems[0].message and "only 20 rows" in exc.problems[1].message
    ok = validate_frame(uci_frame.iloc[:100], schema, uci_mapping, min_rows=100, min_positives=20)
    assert len(ok.table) == 100
    p = only(fails(uci_frame.iloc[:100], schema, uci_mapping, min_rows=100, min_positives=21), "too-few-positives")
    assert "at least 21" in p.message


def test_every_problem_is_collected_before_failing(schema, uci_mapping, uci_frame):
    raw = with_cells(uci_frame, "LIMIT_BAL", {1: "1,000"})
    raw = with_cells(raw, "AGE", {2: "7"})
    raw = with_cells(raw, "EDUCATION", {3: "9"})
    raw = with_cells(raw, "PAY_4", {4: "0.5"})
    raw = with_cells(raw, "ID", {5: "1"})
    raw = with_cells(raw, "default.payment.next.month", {6: "maybe"})
    raw = raw.drop(columns=["PAY_AMT2"])
    exc = fails(raw, schema, uci_mapping)
    codes = [p.code for p in exc.problems]
    assert sorted(codes) == sorted(["non-numeric", "out-of-range", "unknown-category", "not-integer",
                                    "duplicate-id", "bad-label", "missing-column"])
    assert len({(p.code, p.column) for p in exc.problems}) == len(exc.problems)  # each reported once
    report = str(exc)
    assert report.count("\n") >= len(codes)
    for p in exc.problems:
        assert p.message in report
    assert isinstance(exc, UserError) and exc.exit_code == 2
    assert exc.to_dict()["problems"][0]["code"] == exc.problems[0].code


def test_wrong_stored_type(schema, uci_mapping, uci_frame):
    typed = uci_frame.apply(pd.to_numeric)
    typed["AGE"] = pd.to_datetime("2000-01-01") + pd.to_timedelta(typed["AGE"], unit="D")
    p = only(fails(typed, schema, uci_mapping), "wrong-type")
    assert p.column == "age" and "datetime64" in p.message


def test_scoring_files_need_no_label(schema, uci_mapping, uci_frame):
    label = "default.payment.next.month"
    result = validate_frame(uci_frame.drop(columns=[label]).iloc[:10], schema, uci_mapping, require_label=False)
    assert schema.label.name not in result.table.columns
    assert result.summary()["positives"] is None and result.summary()["default_rate"] is None
    empty_label = uci_frame.iloc[:10].copy()
    empty_label[label] = ""
    result = validate_frame(empty_label, schema, uci_mapping, require_label=False)
    assert schema.label.name not in result.table.columns and result.warnings[0].code == "empty-label"
    p = only(fails(with_cells(uci_frame.iloc[:10], label, {2: "7"}), schema, uci_mapping, require_label=False),
             "bad-label")
    assert p.rows == [2]
    # the label is required for training
    p = only(fails(uci_frame.drop(columns=[label]), schema, uci_mapping), "missing-column")
    assert p.column == schema.label.name


def test_load_institution_table_reads_files_and_names(tmp_path, uci_frame):
    path = tmp_path / "bank.csv"
    uci_frame.to_csv(path, index=False, sep=";")
    result = load_institution_table(path, "consumer-credit-v1", "uci-taiwan")
    assert result.source == str(path) and len(result.table) == 510
    pq_path = tmp_path / "bank.parquet"
    uci_frame.apply(pd.to_numeric).to_parquet(pq_path, index=False)
    again = load_institution_table(pq_path, None, "uci-taiwan")
    pd.testing.assert_frame_equal(result.table, again.table)


def test_row_numbers_stay_right_after_skipped_lines(tmp_path, schema, uci_mapping, bad_inputs_generator):
    g = bad_inputs_generator
    rows = g.base_rows()
    rows[9][5] = "300"  # AGE of data row 10
    data = g.csv_bytes(g.UCI_HEADER, rows[:4]) + b"\n" + g.csv_bytes(None, rows[4:])
    path = tmp_path / "blank.csv"
    path.write_bytes(data)
    with pytest.raises(DataValidationError) as info:
        load_institution_table(path, schema, uci_mapping)
    p = only(info.value, "out-of-range")
    assert p.rows == [11]  # the blank line is data row 5, so the 10th borrower is data row 11
    assert [w.code for w in info.value.warnings] == ["blank-row"]


# ------------------------------------------------------------------------------------------
# number parsing
# ------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, width=64), st.sampled_from(["", " ", "  ", "\t"]))
def test_any_float_written_plainly_parses_exactly(x, pad):
    values, missing, bad, _ = parse_numbers(pd.Series([pad + repr(x) + pad, "", "12"], dtype=object))
    assert values[0] == x and not bad.any()
    assert missing.tolist() == [False, True, False]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="0123456789,.-+eE nNaAiIfl_$ ", min_size=1, max_size=8))
def test_parse_numbers_agrees_with_a_strict_reading(s):
    import re

    values, missing, bad, _ = parse_numbers(pd.Series([s], dtype=object))
    t = s.strip()
    if not t:
        assert missing[0] and not bad[0]
    elif re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", t):
        assert not bad[0] and values[0] == float(t)
    else:  # includes nan, inf, thousands separators, '1_000'
        assert bad[0] and math.isnan(values[0])


# ------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------


def test_command_good_file_summary_and_json(tmp_path, fedcredit_cli, bad_inputs_generator):
    g = bad_inputs_generator
    rows = g.base_rows()
    path = tmp_path / "good.csv"
    path.write_bytes(g.csv_bytes(g.UCI_HEADER + ["BRANCH"], [r + ["north"] for r in rows]))
    r = fedcredit_cli("data", "validate", path, "--mapping", "uci-taiwan", "--json")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    out = r.stdout.strip().splitlines()
    assert "510 rows" in r.stdout and "default rate 0.2000" in r.stdout
    assert "pay_status_1" in r.stdout and "unknown-column" in r.stdout  # table and warning
    result = json.loads(out[-1])
    assert result["ok"] is True and result["rows"] == 510 and result["default_rate"] == pytest.approx(0.2)
    assert result["problems"] == [] and result["warnings"][0]["column"] == "BRANCH"
    assert set(result["features"]) == {f"pay_status_{i}" for i in range(1, 7)} | {
        "credit_limit", "sex", "education", "marital_status", "age"} | {
        f"{k}_{i}" for k in ("bill_amount", "pay_amount") for i in range(1, 7)}


def test_command_bad_file_and_json(tmp_path, fedcredit_cli, bad_inputs_generator):
    g = bad_inputs_generator
    rows = g.base_rows()
    rows[2][5] = "abc"
    path = tmp_path / "bad.csv"
    path.write_bytes(g.csv_bytes(g.UCI_HEADER, rows))
    r = fedcredit_cli("data", "validate", path, "--mapping", "uci-taiwan", "--json", "--min-rows", "10")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "data row 3" in r.stderr and "'AGE'" in r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["ok"] is False and result["rows"] == 510
    assert [(p["code"], p["column"], p["rows"]) for p in result["problems"]] == [("non-numeric", "age", [3])]
    # without --json: the report on stderr, nothing on stdout
    r = fedcredit_cli("data", "validate", path, "--mapping", "uci-taiwan")
    assert r.returncode == 2 and r.stdout == "" and "non-numeric" in r.stderr


def test_command_config_mistakes_exit_2_in_process(tmp_path, capsys):
    from fedcredit.cli import main

    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    assert main(["data", "validate", str(path), "--mapping", "no-such-mapping", "--json"]) == 2
    out, err = capsys.readouterr()
    assert "mapping file not found" in err
    assert json.loads(out.strip().splitlines()[-1])["problems"][0]["code"] == "config"
    assert main(["data", "validate", str(tmp_path / "missing.csv")]) == 2
    assert "file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["data", "validate", str(path), "--min-rows", "-3"])
    assert info.value.code == 2 and "must be 0 or more" in capsys.readouterr().err


def test_command_scoring_file_with_no_label(tmp_path, capsys, bad_inputs_generator):
    from fedcredit.cli import main

    g = bad_inputs_generator
    path = tmp_path / "applicants.csv"
    path.write_bytes(g.csv_bytes(g.UCI_HEADER[:-1], [r[:-1] for r in g.base_rows()[:7]]))
    assert main(["data", "validate", str(path), "--mapping", "uci-taiwan", "--no-label", "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["ok"] and result["rows"] == 7 and result["default_rate"] is None
    assert "no label column" in out
    assert main(["data", "validate", str(path), "--mapping", "uci-taiwan"]) == 2
    assert "missing-column" in capsys.readouterr().err


def test_command_help_explains_checks_and_exit_codes(fedcredit_cli):
    r = fedcredit_cli("data", "validate", "--help")
    assert r.returncode == 0
    text = r.stdout
    for needle in ("Exit codes", "0  the table is valid", "2  the table", "--mapping", "--json",
                   "thousands separators", "data row 1", "--min-positives"):
        assert needle in text, needle


@pytest.mark.skipif(not REAL_DATA.is_file(), reason="the UCI credit-card CSV is not available here")
def test_real_uci_file_validates(fedcredit_cli):
    r = fedcredit_cli("data", "validate", REAL_DATA, "--mapping", "uci-taiwan", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["rows"] == 30000
    assert round(result["default_rate"], 4) == 0.2212
    assert result["features"]["education"]["categories"]["other"] == 468  # 0, 4, 5, 6 recoded
