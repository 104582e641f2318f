"""simulation/partitioning.py and `fedcredit data partition`: splitting one table into K institutions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from configs.errors import UserError
from configs.schema import load_schema
from fedcredit.cli import main
from simulation.partitioning import (
    METHODS,
    check_partition,
    dirichlet_partition,
    feature_partition,
    label_skew,
    partition_table,
    quantity_partition,
)
from simulation.synthetic import write_csv

SCHEMA = load_schema()
LABEL = SCHEMA.label.name


@pytest.fixture(scope="module")
def table(synthetic_pool) -> pd.DataFrame:
    """The pooled synthetic consortium of tests/conftest.py (scale 0.25, seed 4)."""
    return synthetic_pool


CASES = [
    ("iid", {}),
    ("dirichlet", {"alpha": 0.5}),
    ("quantity", {"alpha": 0.5}),
    ("feature", {"feature": "credit_limit"}),
    ("feature", {"feature": "age", "strictness": 0.5}),
]


@pytest.mark.parametrize("method, kw", CASES)
def test_every_row_in_exactly_one_institution(table, method, kw):
    part = partition_table(table, 6, method, seed=3, label=LABEL, **kw)
    assert len(part.indices) == 6
    allrows = np.concatenate(part.indices)
    assert len(allrows) == len(table)
    assert np.array_equal(np.sort(allrows), np.arange(len(table)))
    for ix in part.indices:
        assert len(ix) > 0 and np.all(np.diff(ix) > 0)  # sorted, source order kept
    assert sum(len(t) for t in part.tables(table)) == len(table)


def test_categorical_feature_gives_one_institution_per_value(table):
    part = partition_table(table, 4, "feature", seed=0, label=LABEL, feature="education")
    check_partition(part, len(table))
    values = [set(table["education"].iloc[ix]) for ix in part.indices]
    assert all(len(v) == 1 for v in values)
    assert sorted(v.pop() for v in values) == sorted(SCHEMA.feature("education").categories)
    with pytest.raises(UserError, match="4 distinct values.*--institutions 4"):
        partition_table(table, 3, "feature", label=LABEL, feature="education")


@pytest.mark.parametrize("method, kw", CASES)
def test_deterministic_for_a_seed(table, method, kw):
    a = partition_table(table, 5, method, seed=11, label=LABEL, **kw)
    b = partition_table(table, 5, method, seed=11, label=LABEL, **kw)
    assert all(np.array_equal(x, y) for x, y in zip(a.indices, b.indices))


@pytest.mark.parametrize("method, kw", [c for c in CASES if c[1].get("feature") != "credit_limit"])
def test_seed_changes_random_splits(table, method, kw):
    a = partition_table(table, 5, method, seed=1, label=LABEL, **kw)
    b = partition_table(table, 5, method, seed=2, label=LABEL, **kw)
    assert not all(np.array_equal(x, y) for x, y in zip(a.indices, b.indices))


def test_small_alpha_gives_more_label_skew(table):
    y = table[LABEL].to_numpy()
    skewed = [label_skew(dirichlet_partition(table, 5, label=LABEL, alpha=0.1, seed=s), y) for s in range(3)]
    mild = [label_skew(dirichlet_partition(table, 5, label=LABEL, alpha=100.0, seed=s), y) for s in range(3)]
    assert min(skewed) > 3 * max(mild)
    assert max(mild) < 0.03


def test_quantity_skew_varies_sizes_not_labels(table):
    y = table[LABEL].to_numpy()
    part = quantity_partition(table, 5, alpha=0.3, seed=0, min_rows=50)
    sizes = part.sizes
    assert max(sizes) > 3 * min(sizes) and min(sizes) >= 50
    assert label_skew(part, y) < 0.03
    even = quantity_partition(table, 5, alpha=1000.0, seed=0)
    assert max(even.sizes) < 1.2 * min(even.sizes)


def test_numeric_feature_gives_ordered_bands(table):
    part = feature_partition(table, 4, feature="credit_limit", seed=0)
    v = table["credit_limit"].to_numpy()
    for lo, hi in zip(part.indices, part.indices[1:]):
        assert v[lo].max() <= v[hi].min()
    assert [g["max"] for g in part.groups] == sorted(g["max"] for g in part.groups)
    y = table[LABEL].to_numpy()
    assert y[part.indices[0]].mean() > y[part.indices[-1]].mean()  # low limits default more


def test_a_refused_dirichlet_names_an_alpha_and_seed_that_work(table):
    import re

    big = len(table) // 9
    with pytest.raises(UserError, match="gave no partition") as info:
        dirichlet_partition(table, 8, label=LABEL, alpha=0.01, seed=0, min_rows=big)
    found = re.search(r"--alpha ([0-9.e+]+) --seed (\d+) works", str(info.value))
    assert found, str(info.value)
    part = dirichlet_partition(table, 8, label=LABEL, alpha=float(found[1]), seed=int(found[2]), min_rows=big)
    assert min(part.sizes) >= big and part.params["redraws"] == 0  # the advice works as written, first draw
    with pytest.raises(UserError, match="nor with --alpha up to .*Lower --institutions, --min-rows"):
        dirichlet_partition(table, 9, label=LABEL, alpha=0.01, seed=0, min_rows=len(table) // 9)


@pytest.mark.parametrize("kw, message", [
    ({"k": 0, "method": "iid"}, "at least 1"),
    ({"k": 3, "method": "dirichlet", "alpha": 0.0}, "--alpha must be a positive"),
    ({"k": 3, "method": "feature"}, "--feature NAME"),
    ({"k": 3, "method": "feature", "feature": "nope"}, "not a column"),
    ({"k": 3, "method": "shards"}, "unknown partition method"),
])
def test_bad_arguments(table, kw, message):
    k = kw.pop("k")
    method = kw.pop("method")
    with pytest.raises(UserError, match=message):
        partition_table(table, k, method, label=LABEL, **kw)


def test_methods_listed():
    assert METHODS == ("iid", "dirichlet", "quantity", "feature")


# ----------------------------------------------------------------------------- command

def test_partition_command_writes_the_source_rows_as_they_are(tmp_path, table, capsys):
    src = tmp_path / "pooled.csv"
    write_csv(table, src)
    out = tmp_path / "parts"
    rc = main(["data", "partition", str(src), "--institutions", "4", "--by", "dirichlet", "--alpha", "0.3",
               "--seed", "5", "--out", str(out), "--json"])
    assert rc == 0
    manifest = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "dirichlet" and manifest["seed"] == 5 and manifest["params"]["alpha"] == 0.3
    parts = []
    for e in manifest["institutions"]:
        t = pd.read_csv(out / e["file"], dtype={"borrower_id": str})
        assert list(t.columns) == SCHEMA.columns
        assert e["rows"] == len(t) and e["default_rate"] == pytest.approx(t[LABEL].mean(), abs=1e-6)
        assert t["credit_limit"].dtype.kind == "i"  # whole numbers stay whole
        parts.append(t)
    joined = pd.concat(parts).sort_values("borrower_id").reset_index(drop=True)
    original = pd.read_csv(src, dtype={"borrower_id": str}).sort_values("borrower_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(joined, original)
    source_lines = src.read_text().splitlines()
    copied = [line for e in manifest["institutions"] for line in (out / e["file"]).read_text().splitlines()[1:]]
    assert sorted(copied) == sorted(source_lines[1:])  # every record byte for byte, none twice
    assert manifest["layout"] == "source" and manifest["read"] == {"delimiter": "comma", "drop_leading_column": False}
    # same seed again: identical files
    again = tmp_path / "again"
    assert main(["data", "partition", str(src), "-k", "4", "--by", "dirichlet", "--alpha", "0.3", "--seed", "5",
                 "--out", str(again)]) == 0
    for e in manifest["institutions"]:
        assert (out / e["file"]).read_bytes() == (again / e["file"]).read_bytes()


def test_partition_command_errors_exit_2(tmp_path, table, capsys):
    src = tmp_path / "pooled.csv"
    write_csv(table.head(2000), src)
    assert main(["data", "partition", str(src), "-k", "3", "--by", "feature", "--out", str(tmp_path / "o")]) == 2
    assert "--feature NAME" in capsys.readouterr().err
    assert main(["data", "partition", str(src), "-k", "3", "--by", "feature", "--feature", "limit",
                 "--out", str(tmp_path / "o")]) == 2
    assert "not a feature of schema" in capsys.readouterr().err
    assert main(["data", "partition", str(tmp_path / "missing.csv"), "-k", "3", "--out", str(tmp_path / "o")]) == 2
    capsys.readouterr()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    assert main(["data", "partition", str(src), "-k", "3", "--out", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_partition_command_feature_bands_and_warnings(tmp_path, table, capsys):
    src = tmp_path / "pooled.csv"
    write_csv(table, src)
    out = tmp_path / "bands"
    assert main(["data", "partition", str(src), "-k", "20", "--by", "feature", "--feature", "credit_limit",
                 "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    manifest = json.loads(captured.out.strip().splitlines()[-1])
    assert [e["id"] for e in manifest["institutions"]][:2] == ["institution-01", "institution-02"]
    assert all("min" in e["group"] for e in manifest["institutions"])
    assert manifest["warnings"] and "below the DP-training minimum" in captured.err


def test_label_skew_redraws_until_every_institution_has_enough_defaults(tmp_path, table, capsys):
    src = tmp_path / "pooled.csv"
    write_csv(table, src)
    out = tmp_path / "skewed"
    # Dirichlet α = 0.3, seed 5: the first draw gives an institution of 1,132 rows, every one a default
    first = dirichlet_partition(table, 4, label=LABEL, alpha=0.3, seed=5, min_positives=0)
    y = table[LABEL].to_numpy()
    assert first.params["redraws"] >= 1  # even without a minimum, a single-class institution is redrawn
    assert main(["data", "partition", str(src), "-k", "4", "--by", "label", "--alpha", "0.3", "--seed", "5",
                 "--min-positives", "30", "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    manifest = json.loads(captured.out.strip().splitlines()[-1])
    params = manifest["params"]
    assert manifest["method"] == "dirichlet" and params["redraws"] >= 1 and params["draw_seed"] != 5
    assert "after" in captured.out and str(params["draw_seed"]) in captured.out  # the table title says so
    for e in manifest["institutions"]:
        assert 30 <= e["defaults"] <= e["rows"] - 30
    # the recorded draw seed reproduces it: as --seed, the first draw already fits
    again = dirichlet_partition(table, 4, label=LABEL, alpha=0.3, seed=params["draw_seed"], min_positives=30)
    assert again.params["redraws"] == 0
    assert [len(ix) for ix in again.indices] == [e["rows"] for e in manifest["institutions"]]
    assert y.sum() == sum(e["defaults"] for e in manifest["institutions"])


def test_too_few_defaults_for_any_alpha_says_what_to_lower(table):
    with pytest.raises(UserError, match=r"no --alpha or --seed .* Lower --min-positives to at most \d+ or "
                                        r"--institutions to at most \d+"):
        dirichlet_partition(table, 5, label=LABEL, alpha=1.0, min_positives=int(table[LABEL].sum()) // 4)


@pytest.mark.parametrize("rows, defaults, says, not_says", [
    (320, 80, "320 rows (minimum 500)", "defaults (minimum"),
    (900, 41, "41 defaults (minimum 50)", "rows (minimum"),
    (300, 20, "300 rows (minimum 500) and 20 defaults (minimum 50)", None),
    (700, 0, "a single class — no row is a default", None),
])
def test_warnings_name_what_is_below_the_minimum(rows, defaults, says, not_says):
    from simulation.partition_files import _warnings

    text = " ".join(_warnings({"id": "institution-2", "rows": rows, "defaults": defaults}, "iid"))
    assert says in text and (not_says is None or not_says not in text), text
    assert "below 500 rows and 50 defaults" not in text
