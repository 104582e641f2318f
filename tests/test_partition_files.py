"""``fedcredit data partition`` keeps the source exactly: label coding, values, layout (simulation/partition_files.py).

For each label coding a schema can declare — 1/0, 0 = default, 1 = good / 2 = bad, text — the
institution files must validate with the schema the source was validated with, carry the same
label values, and count the same defaults (the default rate must not be inverted).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from clients.tabular_io import read_table
from clients.validation import load_institution_table
from configs.schema import load_schema
from fedcredit.cli import main

CODINGS = {
    "1 = default, 0 = not": (1, 0),
    "0 = default (positive = 0)": (0, 1),
    "1 = good / 2 = bad": (2, 1),
    "text labels": ("bad", "good"),
}


def toml_value(v) -> str:
    return json.dumps(v)


def write_schema(path, positive, negative) -> str:
    path.write_text(f"""
[schema]
name = "coding-test"
version = "1"

[label]
name = "outcome"
positive = {toml_value(positive)}
negative = {toml_value(negative)}

[[feature]]
name = "amount"
kind = "numeric"
description = "an amount"
range = [-10, 10]
transform = "signed-log1p"

[[feature]]
name = "grade"
kind = "categorical"
description = "a grade"
categories = ["A", "B", "C"]
""")
    return str(path)


def source_frame(positive, negative, n: int = 900, rate: float = 0.0677, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < rate
    return pd.DataFrame({
        "amount": [f"{v:.6f}" for v in rng.standard_t(3, n).clip(-9.5, 9.5)],
        "grade": rng.choice(["A", "B", "C"], n),
        "outcome": [str(positive) if d else str(negative) for d in y],
    })


def partition(src, schema_path, out, *extra) -> dict:
    args = ["data", "partition", str(src), "--schema", schema_path, "-k", "3", "--by", "label", "--alpha", "2",
            "--min-positives", "5", "--out", str(out), "--json", *extra]
    assert main(args) == 0
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("coding", list(CODINGS))
def test_partitions_keep_the_label_coding_and_validate_with_the_same_schema(tmp_path, capsys, coding):
    positive, negative = CODINGS[coding]
    schema_path = write_schema(tmp_path / "schema.toml", positive, negative)
    frame = source_frame(positive, negative)
    src = tmp_path / "source.csv"
    frame.to_csv(src, index=False)
    source_rate = load_institution_table(src, schema_path, min_rows=0, min_positives=0).summary()["default_rate"]
    manifest = partition(src, schema_path, tmp_path / "parts")
    capsys.readouterr()
    assert manifest["label"]["positive"] == positive and manifest["label"]["negative"] == negative
    total_defaults = 0
    cells = []
    for e in manifest["institutions"]:
        path = tmp_path / "parts" / e["file"]
        loaded = load_institution_table(path, schema_path, min_rows=0, min_positives=0)  # the same schema validates
        summary = loaded.summary()
        assert summary["positives"] == e["defaults"] and summary["rows"] == e["rows"]
        labels = set(read_table(path).frame["outcome"])
        assert labels <= {str(positive), str(negative)}, labels
        total_defaults += e["defaults"]
        cells.append(read_table(path).frame)
    joined = pd.concat(cells, ignore_index=True)
    assert total_defaults / len(joined) == pytest.approx(source_rate)  # not inverted (0.0677, not 0.9323)
    assert source_rate < 0.2
    # every value exactly as written, each row once
    key = ["amount", "grade", "outcome"]
    assert sorted(map(tuple, joined[key].to_numpy().tolist())) == sorted(map(tuple, frame[key].to_numpy().tolist()))


def test_a_mapped_whitespace_file_with_a_leading_column_keeps_its_layout(tmp_path, capsys):
    schema_path = write_schema(tmp_path / "schema.toml", 1, 0)
    frame = source_frame(2, 1, n=700)  # the file codes 2 = bad, 1 = good; the mapping recodes
    lines = ["Rows  AMT  GRADE  Y"] + [f"r{i}  {a}  {g}  {y}" for i, (a, g, y) in enumerate(frame.to_numpy())]
    src = tmp_path / "bank.txt"
    src.write_text("\n".join(lines) + "\n")
    mapping = tmp_path / "bank.toml"
    mapping.write_text('[mapping]\nname = "bank"\nschema = "coding-test"\nschema_version = "1"\n'
                       '[columns]\nAMT = "amount"\nGRADE = "grade"\nY = "outcome"\n'
                       '[recode.outcome]\n"2" = 1\n"1" = 0\n'
                       '[read]\ndelimiter = "whitespace"\ndrop_leading_column = true\n')
    manifest = partition(src, schema_path, tmp_path / "parts", "--mapping", str(mapping))
    out = capsys.readouterr().out
    assert manifest["layout"] == "source" and manifest["read"] == {"delimiter": "whitespace",
                                                                   "drop_leading_column": True}
    assert f"--mapping {mapping}" in out
    schema = load_schema(schema_path)
    rows = 0
    for e in manifest["institutions"]:
        path = tmp_path / "parts" / e["file"]
        assert path.suffix == ".txt"
        text = path.read_text().splitlines()
        assert text[0] == lines[0] and set(text[1:]) <= set(lines[1:])  # header and records byte for byte
        t = load_institution_table(path, schema, str(mapping), min_rows=0, min_positives=0).table
        assert int(t["outcome"].sum()) == e["defaults"]
        rows += len(t)
    assert rows == len(frame)


def test_a_parquet_source_gives_parquet_files_with_its_types(tmp_path, capsys):
    schema_path = write_schema(tmp_path / "schema.toml", "bad", "good")
    frame = source_frame("bad", "good", n=600)
    frame["amount"] = frame["amount"].astype(float)
    src = tmp_path / "source.parquet"
    frame.to_parquet(src, index=False)
    manifest = partition(src, schema_path, tmp_path / "parts")
    capsys.readouterr()
    import pyarrow.parquet as pq

    parts = [pq.read_table(tmp_path / "parts" / e["file"]) for e in manifest["institutions"]]
    assert all(p.schema.equals(pq.read_table(src).schema) for p in parts)
    joined = pd.concat([p.to_pandas() for p in parts], ignore_index=True)
    pd.testing.assert_frame_equal(joined.sort_values(["amount", "grade"]).reset_index(drop=True),
                                  frame.sort_values(["amount", "grade"]).reset_index(drop=True))
