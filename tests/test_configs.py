"""Schema and mapping files: the shipped ones load; mistakes are refused naming the file and key."""

from __future__ import annotations

import pandas as pd
import pytest

from configs.errors import ConfigError, UserError
from configs.mapping import apply_mapping, load_mapping, scale_factor
from configs.schema import load_schema

HEAD = """
[schema]
name = "mini"
version = "1"

[label]
name = "y"
positive = 1
negative = 0
"""

X = """
[[feature]]
name = "x"
kind = "numeric"
description = "an amount"
range = [0, 10]
"""

COLOUR = """
[[feature]]
name = "colour"
kind = "categorical"
description = "a colour"
categories = ["red", "blue"]
"""


def schema_file(tmp_path, text: str, name: str = "s.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def schema_error(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_schema(schema_file(tmp_path, text))
    assert isinstance(info.value, UserError) and info.value.exit_code == 2
    return str(info.value)


# ------------------------------------------------------------------------------------------
# schemas
# ------------------------------------------------------------------------------------------


def test_shipped_schema_loads(schema):
    assert schema.key == "consumer-credit-v1"
    assert schema.columns[0] == "borrower_id" and schema.columns[-1] == "default_next_month"
    assert len(schema.features) == 23
    assert {f.name for f in schema.protected_features} == {"sex", "age"}
    assert schema.feature("education").impute == "other"
    assert len(schema.fingerprint()) == 64


def test_minimal_schema_loads(tmp_path):
    s = load_schema(schema_file(tmp_path, HEAD + X + COLOUR))
    assert s.columns == ["x", "colour", "y"] and s.id_column is None
    assert s.feature("x").range == (0.0, 10.0) and s.feature("x").missing == "reject"


@pytest.mark.parametrize("text,needles", [
    (HEAD + X + "\n[extra]\na = 1\n", ["extra", "unknown key"]),
    (HEAD + X.replace("[[feature]]", "[[features]]"), ["features", "did you mean 'feature'"]),
    (HEAD.replace('name = "y"\n', ""), ["label.name", "required key is missing"]),
    (HEAD.replace("negative = 0", "negative = 1"), ["label.negative", "must differ"]),
    (HEAD, ["feature", "[[feature]]"]),
    (HEAD + X.replace('"numeric"', '"numerical"'), ["feature[0] ('x').kind", "did you mean 'numeric'"]),
    (HEAD + X.replace("[0, 10]", "[10, 0]"), ["feature[0] ('x').range", "must be below"]),
    (HEAD + X.replace("[0, 10]", "[0]"), ["feature[0] ('x').range", "two numbers"]),
    (HEAD + X.replace("[0, 10]", "[0, inf]"), ["feature[0] ('x').range", "finite"]),
    (HEAD + X.replace("[0, 10]", "[true, 10]"), ["feature[0] ('x').range"]),
    (HEAD + X.replace('description = "an amount"\n', ""), ["feature[0] ('x').description", "required"]),
    (HEAD + X + 'missing = "impute"\nimpute = 11\n', ["feature[0] ('x').impute", "outside"]),
    (HEAD + X + 'missing = "impute"\n', ["feature[0] ('x').impute", "required"]),
    (HEAD + X + "impute = 1\n", ["feature[0] ('x').impute", 'missing = "impute"']),
    (HEAD + X + 'missing = "drop"\n', ["feature[0] ('x').missing", "reject, impute"]),
    (HEAD + X.replace("[0, 10]", "[-5, 10]") + 'transform = "log1p"\n', ["feature[0] ('x').transform", "signed-log1p"]),
    (HEAD + X + "bins = 1\n", ["feature[0] ('x').bins", "2..4096"]),
    (HEAD + X + 'group = "nope"\n', ["feature[0] ('x').group", "[groups.nope]"]),
    (HEAD + X + "protected = true\nbands = [0, 5]\n", ["feature", "every feature is protected"]),
    (HEAD + X + "protected = true\n", ["feature[0] ('x').bands", "needs fairness bands"]),
    (HEAD + X + "bands = [5, 1]\n", ["feature[0] ('x').bands", "ascending"]),
    (HEAD + X + "bands = [0, 10]\n", ["feature[0] ('x').bands", "below the maximum"]),
    (HEAD + X + X, ["feature[1].name", "duplicate feature name 'x'"]),
    (HEAD + X.replace('name = "x"', 'name = "y"'), ["label.name", "also declared as a feature"]),
    (HEAD + X + '\n[id]\nname = "y"\n', ["id.name", "cannot be the label"]),
    (HEAD + COLOUR.replace('["red", "blue"]', '["red"]'), ["feature[0] ('colour').categories", "at least two"]),
    (HEAD + COLOUR.replace('["red", "blue"]', '["red", "red"]'), ["feature[0] ('colour').categories", "duplicate"]),
    (HEAD + COLOUR + "range = [0, 1]\n", ["feature[0] ('colour').range", "categories, not a range"]),
    (HEAD + COLOUR + 'missing = "impute"\nimpute = "green"\n', ["feature[0] ('colour').impute", "not one of"]),
    (HEAD + X.replace('"numeric"', '"ordinal"').replace("[0, 10]", "[0, 2.5]"), ["feature[0] ('x').range", "whole-number"]),
    (HEAD + X.replace('"numeric"', '"ordinal"') + 'transform = "log1p"\n', ["feature[0] ('x').transform", "numeric features only"]),
    (HEAD + X.replace('"numeric"', '"binary"'), ["feature[0] ('x').range", "binary"]),
    (HEAD + X + "\n[groups]\nprofile = \"text\"\n", ["groups.profile", "expected a table"]),
])
def test_schema_mistakes_name_the_key(tmp_path, text, needles):
    message = schema_error(tmp_path, text)
    assert "s.toml" in message
    for needle in needles:
        assert needle in message, message


def test_schema_file_level_errors(tmp_path):
    assert "not valid TOML" in schema_error(tmp_path, HEAD + "[[feature]\n")
    bad = tmp_path / "latin.toml"
    bad.write_bytes(HEAD.encode() + b"# caf\xe9\n" + X.encode())
    with pytest.raises(ConfigError, match="not a UTF-8"):
        load_schema(bad)
    with pytest.raises(ConfigError, match="shipped schemas: consumer-credit-v1"):
        load_schema("no-such-schema")
    assert load_schema("consumer-credit-v1.toml").key == "consumer-credit-v1"


# ------------------------------------------------------------------------------------------
# mappings
# ------------------------------------------------------------------------------------------

MAP_HEAD = """
[mapping]
name = "bank"
schema = "consumer-credit"
schema_version = "1"
"""


def mapping_error(tmp_path, schema, text: str) -> str:
    p = tmp_path / "m.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_mapping(p, schema)
    assert "m.toml" in str(info.value)
    return str(info.value)


def test_shipped_mapping_loads(uci_mapping):
    assert uci_mapping.columns["PAY_0"] == "pay_status_1"
    assert uci_mapping.source_column_for("pay_status_1") == "PAY_0"
    assert uci_mapping.source_column_for("nothing") == "nothing"
    assert uci_mapping.recode["education"]["0"] == "other"
    assert scale_factor(uci_mapping, "credit_limit") == 1.0 and scale_factor(None, "x") == 1.0


@pytest.mark.parametrize("text,needles", [
    (MAP_HEAD.replace('"consumer-credit"', '"other-schema"'), ["mapping.schema", "'other-schema' v1"]),
    (MAP_HEAD.replace('schema_version = "1"', 'schema_version = "2"'), ["mapping.schema", "v2"]),
    (MAP_HEAD + "\n[columns]\nAGE = \"years\"\n", ["columns.AGE", "'years' is not a column"]),
    (MAP_HEAD + "\n[columns]\nAGE = 5\n", ["columns.AGE", "as a string"]),
    (MAP_HEAD + "\n[columns]\nAGE = \"age\"\nYEARS = \"age\"\n", ["columns.YEARS", "already the target of 'AGE'"]),
    (MAP_HEAD + "\n[recode.colour]\n\"1\" = \"red\"\n", ["recode.colour", "keyed by schema column"]),
    (MAP_HEAD + "\n[recode.sex]\n\"1\" = \"man\"\n", ["recode.sex.1", "'man' is not a category"]),
    (MAP_HEAD + "\n[recode.age]\n\"x\" = \"old\"\n", ["recode.age.x", "recode it to a number"]),
    (MAP_HEAD + "\n[recode.sex]\n\"1\" = true\n", ["recode.sex.1", "string or number"]),
    (MAP_HEAD + "\n[recode.default_next_month]\n\"yes\" = 2\n", ["recode.default_next_month.yes", "label values"]),
    (MAP_HEAD + "\n[scale]\nsex = 2.0\n", ["scale.sex", "only numeric features"]),
    (MAP_HEAD + "\n[scale]\npay_status_1 = 2.0\n", ["scale.pay_status_1", "only numeric features"]),
    (MAP_HEAD + "\n[scale]\ndefault_next_month = 2.0\n", ["scale.default_next_month", "only numeric"]),
    (MAP_HEAD + "\n[scale]\nborrower_id = 2.0\n", ["scale.borrower_id", "not a numeric column"]),
    (MAP_HEAD + "\n[scale]\ncredit_limit = -1\n", ["scale.credit_limit", "positive"]),
    (MAP_HEAD + "\n[scale]\ncredit_limit = \"1000\"\n", ["scale.credit_limit", "expected a number"]),
    (MAP_HEAD + "\n[ignore]\ncolumns = [1, 2]\n", ["ignore.columns", "list of column names"]),
    (MAP_HEAD + "\n[offset]\nsex = 1\n", ["offset.sex", "only numeric or ordinal"]),
    (MAP_HEAD + "\n[offset]\npay_status_1 = 0.5\n", ["offset.pay_status_1", "whole number"]),
    (MAP_HEAD + "\n[offset]\nage = \"1\"\n", ["offset.age", "expected a number"]),
    (MAP_HEAD + "\n[unstandardise.age]\nmean = 35\n", ["unstandardise.age.sd", "required"]),
    (MAP_HEAD + "\n[unstandardise.age]\nmean = 35\nsd = 0\n", ["unstandardise.age.sd", "positive"]),
    (MAP_HEAD + "\n[unstandardise.age]\nmean = 35\nsd = 9\nscale = 2\n", ["unstandardise.age.scale",
                                                                          "allowed keys: mean, sd"]),
    (MAP_HEAD + "\n[scale]\nage = 2\n[unstandardise.age]\nmean = 35\nsd = 9\n", ["unstandardise.age",
                                                                                    "one of the two ways"]),
    (MAP_HEAD + "\n[unstandardise.education]\nmean = 1\nsd = 1\n", ["unstandardise.education",
                                                                     "only numeric features"]),
    (MAP_HEAD + "\n[read]\ndelimiter = \"colon\"\n", ["read.delimiter", "whitespace"]),
    (MAP_HEAD + "\n[read]\ndrop_leading_column = \"yes\"\n", ["read.drop_leading_column", "a boolean"]),
    (MAP_HEAD + "\n[ignore]\ncols = [\"A\"]\n", ["ignore.cols", "did you mean 'columns'"]),
    (MAP_HEAD + "\n[renames]\nA = \"age\"\n", ["renames", "unknown key"]),
    (MAP_HEAD.replace('name = "bank"\n', ""), ["mapping.name", "required"]),
])
def test_mapping_mistakes_name_the_key(tmp_path, schema, text, needles):
    message = mapping_error(tmp_path, schema, text)
    for needle in needles:
        assert needle in message, message


def test_mapping_not_found_lists_shipped_ones(schema):
    with pytest.raises(ConfigError, match="shipped mappings: uci-taiwan"):
        load_mapping("nope", schema)


def test_apply_mapping_renames_recodes_and_ignores(tmp_path, schema):
    p = tmp_path / "m.toml"
    p.write_text(MAP_HEAD + '\n[columns]\nGENDER = "sex"\n[recode.sex]\n"1" = "male"\n"2" = "female"\n'
                 '[ignore]\ncolumns = ["NOTES"]\n')
    m = load_mapping(p, schema)
    raw = pd.DataFrame({"GENDER": ["1", " 2 ", "3", ""], "NOTES": ["a", "b", "c", "d"], "age": ["1"] * 4})
    out = apply_mapping(raw, m)
    assert list(out.columns) == ["sex", "age"]
    assert out["sex"].tolist() == ["male", "female", "3", ""]  # unknown codes stay for validation to report
    typed = apply_mapping(pd.DataFrame({"GENDER": [1.0, 2.0, 2.0]}), m)
    assert typed["sex"].tolist() == ["male", "female", "female"]  # '1' matches 1.0 from a typed column
    text = apply_mapping(pd.DataFrame({"GENDER": ["1.0", "2.0", "2.5", "12.0"]}), m)
    assert text["sex"].tolist() == ["male", "female", "2.5", "12.0"]  # ... and "1.0" from a CSV export
    assert apply_mapping(raw, None) is raw


def test_affine_maps_and_read_options_are_loaded(tmp_path, schema):
    from configs.mapping import affine_for

    p = tmp_path / "m.toml"
    p.write_text(MAP_HEAD + '\n[scale]\ncredit_limit = 1000\n[offset]\ncredit_limit = 50\npay_status_1 = -1\n'
                            '[unstandardise.age]\nmean = 35.5\nsd = 9.25\n[read]\ndelimiter = "whitespace"\n'
                            'drop_leading_column = true\n')
    m = load_mapping(p, schema)
    assert affine_for(m, "credit_limit").apply(2.0) == 2050.0
    assert affine_for(m, "pay_status_1").apply(3.0) == 2.0
    age = affine_for(m, "age")
    assert age.apply(-1.0) == 26.25 and age.invert(26.25) == -1.0 and "[unstandardise.age]" in age.words("age")
    assert affine_for(m, "bill_amount_1").apply(7.0) == 7.0 and affine_for(None, "age").apply(7.0) == 7.0
    assert (m.delimiter, m.drop_leading_column) == ("whitespace", True)
    assert scale_factor(m, "credit_limit") == 1000.0 and m.scale == {"credit_limit": 1000.0, "age": 9.25}


@pytest.mark.parametrize("cell, matched", [
    ("1", True), ("1.0", True), ("01", True), ("1e0", True), (" 1 ", True), ("1.4", False), ("11", False),
    ("-0.7043", True), ("-0.70431", True), ("-7.0429e-01", True), ("-0.70425", True), ("-0.7044", False),
    ("-0.704", False), ("A11", True), ("a11", False), ("NaN", False), ("", False),
])
def test_recode_matches_text_then_numeric_value_at_the_precision_written(schema, cell, matched):
    from configs.mapping import RecodeKeys

    keys = RecodeKeys({"1": "one", "-0.7043": "married", "A11": "low"})
    assert keys.lookup(cell.strip())[0] is matched
    if matched:
        assert keys.lookup(cell.strip())[1] in ("one", "married", "low")


def test_recode_by_value_prefers_the_key_with_more_decimals_and_exact_text():
    from configs.mapping import RecodeKeys

    keys = RecodeKeys({"1.2": "coarse", "1.25": "fine", "1.20": "text"})
    assert keys.lookup("1.249") == (True, "fine")
    assert keys.lookup("1.16") == (True, "coarse")
    assert keys.lookup("1.20") == (True, "text")  # the same text wins before any number
