"""``fedcredit schema infer``: drafted schemas and mapping stubs that validate the table they came from.

The tables have the shapes of public credit datasets (tests/public_tables.py): standardised
heavy-tailed numerics with a label coded 0 = default, coded categoricals with 1 = good / 2 = bad,
a table in three parties' files with a junk header name; plus missing-value words, row counters,
constant and free-text columns, and Parquet.
"""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pandas as pd
import pytest

from configs.schema import load_schema
from fedcredit.cli import main
from tests import public_tables as pt


def infer(capsys, *args) -> dict:
    assert main(["schema", "infer", *map(str, args), "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def validates(capsys, file, schema, mapping=None, *extra) -> dict:
    args = ["data", "validate", str(file), "--schema", str(schema), "--min-rows", "0", "--min-positives", "0",
            "--json", *extra]
    if mapping:
        args += ["--mapping", str(mapping)]
    code = main(args)
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out.strip().splitlines()[-1])


def features(result: dict) -> dict:
    return {f["name"]: f for f in result["features"]}


def test_standardised_heavy_tailed_numerics_get_signed_log1p_and_the_label_zero_is_default(tmp_path, capsys):
    src = tmp_path / "standardised.txt"
    pt.write_aligned(pt.standardised_table(4000), src)
    r = infer(capsys, src, "--out", tmp_path / "s.toml")
    assert r["label"] == {"name": "Y", "positive": 0, "negative": 1}  # the rarer value, ≈ 7 %
    assert r["read"]["delimiter"] == "whitespace"
    fs = features(r)
    assert set(fs) == {f"X{j}" for j in range(1, 11)}
    assert all(f["kind"] == "numeric" and f["transform"] == "signed-log1p" for f in fs.values())
    assert all(f["range"][0] < 0 < 10 < f["range"][1] for f in fs.values())  # z-scores with heavy tails
    assert all(f["bins"] >= 128 for f in fs.values())  # the bulk sits within a few hundredths of 0
    summary = validates(capsys, src, tmp_path / "s.toml")
    assert summary["rows"] == 4000 and summary["default_rate"] == pytest.approx(r["validated"][0]["default_rate"])
    assert summary["default_rate"] < 0.15  # 0 = default, not inverted
    text = (tmp_path / "s.toml").read_text()
    assert "# 'Y' has two values" in text and "CHECK IT" in text and "spreads the rows over" in text
    mapping = tomllib.loads((tmp_path / "s.mapping.toml").read_text())
    assert mapping["read"] == {"delimiter": "whitespace"} and mapping["columns"]["X1"] == "X1"


def test_coded_categoricals_with_one_good_two_bad(tmp_path, capsys):
    src = tmp_path / "german.csv"
    pt.coded_categorical_table().to_csv(src, sep=";", index=False)
    r = infer(capsys, src, "--out", tmp_path / "g.toml")
    assert r["label"] == {"name": "creditability", "positive": 2, "negative": 1}
    fs = features(r)
    assert fs["status"]["kind"] == "categorical" and fs["status"]["categories"] == ["A10", "A11", "A12", "A13"]
    assert fs["purpose"]["kind"] == "categorical" and "A410" in fs["purpose"]["categories"]
    assert fs["installment_rate"] == {"name": "installment_rate", "kind": "ordinal", "range": [1, 4],
                                      "missing": "reject"}
    assert fs["amount"]["kind"] == "numeric" and fs["amount"]["transform"] == "log1p"
    assert fs["amount"]["range"][0] >= 0 and fs["amount"]["range"][1] >= 18424
    assert fs["duration"]["range"] == [int(x) for x in fs["duration"]["range"]]  # whole months, whole bounds
    summary = validates(capsys, src, tmp_path / "g.toml")
    assert 0.25 < summary["default_rate"] < 0.35
    stub = (tmp_path / "g.mapping.toml").read_text()
    assert "# [recode.status]" in stub and '# "A11" = "A11"' in stub


def test_three_parties_with_a_junk_header_name_are_drafted_together(tmp_path, capsys):
    files = []
    for i, frame in enumerate(pt.three_party_tables()):
        files.append(tmp_path / f"party-{i + 1}.csv")
        pt.write_with_title_column(frame, files[-1])
    assert main(["schema", "infer", str(files[0]), "--out", str(tmp_path / "x.toml")]) == 2
    assert "--drop-leading-column" in capsys.readouterr().err
    r = infer(capsys, *files, "--drop-leading-column", "--out", tmp_path / "p.toml")
    assert r["label"] == {"name": "defaulted", "positive": "yes", "negative": "no"}  # the word, not the rarer value
    assert r["id"] == "customer_id" and r["read"]["drop_leading_column"] is True
    fs = features(r)
    assert fs["channel"]["categories"] == ["branch", "broker", "online"]
    assert fs["income"]["transform"] == "log1p"
    assert len(r["validated"]) == 3
    for f in files:  # the stub's [read] table reads each party's file
        validates(capsys, f, tmp_path / "p.toml", tmp_path / "p.mapping.toml")


def test_missing_words_counters_constants_and_free_text(tmp_path, capsys):
    rng = np.random.default_rng(3)
    n = 800
    income = rng.lognormal(10, 0.5, n).round(2).astype(str)
    income[::17] = "NA"
    income[5::23] = ""
    frame = pd.DataFrame({"row": np.arange(1, n + 1), "income": income, "region": rng.choice(["n", "s", ""], n),
                          "product": "card", "note": [f"free text {i}" for i in range(n)],
                          "bad": rng.choice(["0", "1"], n, p=[0.8, 0.2])})
    src = tmp_path / "loans.csv"
    frame.to_csv(src, index=False)
    r = infer(capsys, src, "--out", tmp_path / "l.toml", "--label", "bad")
    assert set(r["ignored"]) == {"row", "product", "note"}
    assert "counts the rows" in r["ignored"]["row"] and "single value" in r["ignored"]["product"]
    fs = features(r)
    assert fs["income"]["missing"] == "impute" and fs["region"]["missing"] == "impute"
    mapping = tomllib.loads((tmp_path / "l.mapping.toml").read_text())
    assert mapping["recode"]["income"] == {"NA": ""} and mapping["ignore"]["columns"] == ["row", "product", "note"]
    summary = validates(capsys, src, tmp_path / "l.toml", tmp_path / "l.mapping.toml")
    assert summary["features"]["income"]["imputed"] == int((income == "NA").sum() + (income == "").sum())


def test_parquet_and_an_explicit_positive(tmp_path, capsys):
    frame = pt.coded_categorical_table(600)
    frame["creditability"] = np.where(frame["creditability"] == 2, "bad", "good")
    src = tmp_path / "g.parquet"
    frame.to_parquet(src, index=False)
    r = infer(capsys, src, "--out", tmp_path / "g.toml", "--positive", "good")
    assert r["label"]["positive"] == "good" and r["read"]["delimiter"] is None
    schema = load_schema(tmp_path / "g.toml")
    assert schema.label.positive == "good" and schema.feature("age").kind == "numeric"


@pytest.mark.parametrize("frame, args, words", [
    (pd.DataFrame({"a": [1, 2, 3] * 10, "b": [0.5, 1.5, 2.5] * 10}), [], "Give --label COLUMN"),
    (pd.DataFrame({"a": [1, 2, 3] * 10, "y": [0, 1, 2] * 10}), ["--label", "y"], "exactly two values"),
    (pd.DataFrame({"a": [1, 2, 3] * 10, "y": [0, 1, 1] * 10}), ["--label", "z"], "not a column"),
    (pd.DataFrame({"a": [1, 2, 3] * 10, "y": [0, 1, 1] * 10}), ["--positive", "7"], "not a value of 'y'"),
])
def test_mistakes_exit_2_with_the_fix(tmp_path, capsys, frame, args, words):
    src = tmp_path / "t.csv"
    frame.to_csv(src, index=False)
    assert main(["schema", "infer", str(src), "--out", str(tmp_path / "s.toml"), *args]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_existing_outputs_need_force(tmp_path, capsys):
    src = tmp_path / "german.csv"
    pt.coded_categorical_table(300).to_csv(src, index=False)
    (tmp_path / "g.toml").write_text("keep me")
    assert main(["schema", "infer", str(src), "--out", str(tmp_path / "g.toml")]) == 2
    assert "--force" in capsys.readouterr().err and (tmp_path / "g.toml").read_text() == "keep me"
    infer(capsys, src, "--out", tmp_path / "g.toml", "--force")
    assert load_schema(tmp_path / "g.toml").name == "german"
