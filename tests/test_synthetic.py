"""simulation/: the synthetic consortium (archetypes, known PDs, files, the `data synth` command)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from configs.errors import ConfigError, UserError
from configs.schema import load_schema
from fedcredit.cli import main
from simulation.archetypes import SIZE_VARIATION, institution_plan, list_archetypes, load_archetypes
from simulation.synthetic import (
    auc,
    calibrate_creditworthiness,
    generate_consortium,
    generate_institution,
    institution_rng,
)

SCHEMA = load_schema()
ARCHETYPES = load_archetypes()


@pytest.fixture(scope="module")
def full():
    """The default consortium (5 institutions, scale 1.0, seed 0), in memory."""
    return generate_consortium(None, seed=0)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "consortium"
    generate_consortium(out, scale=0.25, seed=7)
    return out


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- determinism

def test_same_seed_gives_byte_identical_files(tmp_path, small_dir):
    again = tmp_path / "again"
    generate_consortium(again, scale=0.25, seed=7)
    a, b = _files(small_dir), _files(again)
    assert sorted(a) == sorted(b)
    assert len(a) == 11  # 5 institutions + 5 truth files + manifest
    for name in a:
        assert a[name] == b[name], name


def test_different_seed_gives_different_files(tmp_path, small_dir):
    other = tmp_path / "other"
    generate_consortium(other, scale=0.25, seed=8)
    a, b = _files(small_dir), _files(other)
    for name in a:
        if name.endswith(".csv"):
            assert a[name] != b[name], name


def test_institution_stream_does_not_depend_on_consortium_size():
    five = generate_consortium(None, institutions=5, scale=0.5, seed=3)["_data"]
    seven = generate_consortium(None, institutions=7, scale=0.5, seed=3)["_data"]
    pd.testing.assert_frame_equal(five[0].table, seven[0].table)
    assert [d.id for d in seven] == ["national-bank-1", "regional-bank-1", "card-issuer-1", "consumer-finance-1",
                                     "online-microlender-1", "national-bank-2", "regional-bank-2"]
    assert len(seven[5].table) == round(ARCHETYPES[0].rows * 0.5 * SIZE_VARIATION[1])
    assert not seven[5].table.equals(seven[0].table)


# ----------------------------------------------------------------------------- realism

def test_default_rates_within_declared_tolerance(full):
    by_id = {a.id: a for a in ARCHETYPES}
    for e in full["institutions"]:
        a = by_id[e["archetype"]]
        assert abs(e["default_rate"] - a.target_default_rate) <= a.default_rate_tolerance, e
        # the true PD itself is calibrated tighter than the sampled rate
        assert abs(e["mean_true_pd"] - a.target_default_rate) <= a.default_rate_tolerance / 2, e


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pooled_oracle_auc_is_realistic(seed):
    m = generate_consortium(None, seed=seed)
    assert 0.75 <= m["oracle_auc"] <= 0.85, m["oracle_auc"]
    for e in m["institutions"]:
        assert 0.65 <= e["oracle_auc"] <= 0.9, e


def test_oracle_auc_matches_truth_files_and_labels(small_dir):
    m = json.loads((small_dir / "manifest.json").read_text())
    ys, ps = [], []
    for e in m["institutions"]:
        t = pd.read_csv(small_dir / e["file"], dtype={"borrower_id": str})
        truth = pd.read_csv(small_dir / e["truth_file"], dtype={"borrower_id": str})
        assert list(truth.columns) == ["borrower_id", "true_pd"]
        assert (truth["borrower_id"] == t["borrower_id"]).all()
        assert ((truth["true_pd"] > 0) & (truth["true_pd"] < 1)).all()
        assert auc(t["default_next_month"], truth["true_pd"]) == pytest.approx(e["oracle_auc"], abs=1e-5)
        assert e["rows"] == len(t) and e["defaults"] == int(t["default_next_month"].sum())
        ys.append(t["default_next_month"].to_numpy())
        ps.append(truth["true_pd"].to_numpy())
    assert auc(np.concatenate(ys), np.concatenate(ps)) == pytest.approx(m["oracle_auc"], abs=1e-5)


def test_observed_features_reach_close_to_but_below_oracle(full):
    from sklearn.linear_model import LogisticRegression

    df = pd.concat([d.table for d in full["_data"]], ignore_index=True)
    pd_true = np.concatenate([d.true_pd for d in full["_data"]])
    y = df["default_next_month"].to_numpy()
    X = pd.get_dummies(df.drop(columns=["borrower_id", "default_next_month"]),
                       columns=["sex", "education", "marital_status"], dtype=float)
    X = (X - X.mean()) / X.std()
    test = np.arange(len(df)) % 5 == 0
    lr = LogisticRegression(max_iter=500).fit(X[~test], y[~test])
    achieved = auc(y[test], lr.predict_proba(X[test])[:, 1])
    oracle = auc(y[test], pd_true[test])
    assert oracle - 0.08 < achieved < oracle, (achieved, oracle)


def test_consortium_is_non_iid(full):
    data = {d.archetype: d.table for d in full["_data"]}
    rate = {e["archetype"]: e["default_rate"] for e in full["institutions"]}
    assert rate["online-microlender"] - rate["national-bank"] >= 0.15
    nb, ml = data["national-bank"], data["online-microlender"]
    assert nb["credit_limit"].median() >= 5 * ml["credit_limit"].median()
    late = {k: (t["pay_status_1"] >= 1).mean() for k, t in data.items()}
    assert late["online-microlender"] >= 2 * late["national-bank"]
    assert nb["age"].mean() - ml["age"].mean() >= 5


def test_serially_correlated_repayment_status(full):
    df = pd.concat([d.table for d in full["_data"]], ignore_index=True)
    prev, cur = df["pay_status_2"].to_numpy(), df["pay_status_1"].to_numpy()
    for s in (-2, -1, 0):
        assert (cur[prev == s] == s).mean() > 0.8           # usage persists
    late = prev >= 1
    assert ((cur[late] >= prev[late])).mean() > 0.5          # delays persist or grow
    grown = cur[late] == prev[late] + 1
    assert grown.mean() > 0.2
    assert not ((cur >= 2) & (prev <= 0)).any()              # delays grow one month at a time
    assert set(np.unique(cur)) <= set(range(-2, 10))
    # delays predict default, most recent delay most strongly
    y = df["default_next_month"].to_numpy()
    assert y[cur >= 2].mean() > y[cur == 1].mean() > y[cur == 0].mean()


def test_mild_group_differences(full):
    df = pd.concat([d.table for d in full["_data"]], ignore_index=True)
    by_sex = df.groupby("sex")["default_next_month"].mean()
    assert 0.003 < by_sex["male"] - by_sex["female"] < 0.05
    young = df.loc[df["age"] <= 25, "default_next_month"].mean()
    middle = df.loc[df["age"].between(35, 45), "default_next_month"].mean()
    assert 0.02 < young - middle < 0.15


# ----------------------------------------------------------------------------- schema and truth

def test_every_value_within_schema(small_dir):
    for path in sorted(small_dir.glob("*.csv")):
        t = pd.read_csv(path, dtype={"borrower_id": str})
        assert list(t.columns) == SCHEMA.columns
        assert t["borrower_id"].is_unique and t["borrower_id"].notna().all()
        assert set(t["default_next_month"].unique()) == {0, 1}
        for f in SCHEMA.features:
            col = t[f.name]
            assert col.notna().all(), f.name
            if f.kind == "categorical":
                assert set(col.unique()) <= set(f.categories), f.name
            else:
                lo, hi = f.range
                assert col.between(lo, hi).all(), f.name
                if f.kind == "ordinal":
                    assert (col == col.round()).all(), f.name
        assert (t[[f"bill_amount_{m}" for m in range(1, 7)]] < 0).any().any() or len(t) < 2000


def test_files_pass_the_consortium_validator(small_dir):
    from clients import validation

    for path in sorted(small_dir.glob("*.csv")):
        result = validation.load_institution_table(path, SCHEMA)
        assert len(result.table) >= 500
        assert not result.warnings, [w for w in result.warnings]


def test_true_pd_is_never_in_the_institution_file(small_dir):
    m = json.loads((small_dir / "manifest.json").read_text())
    for e in m["institutions"]:
        t = pd.read_csv(small_dir / e["file"], dtype={"borrower_id": str})
        truth = pd.read_csv(small_dir / e["truth_file"], dtype={"borrower_id": str})["true_pd"].to_numpy()
        assert not any("pd" in c.lower() or "prob" in c.lower() for c in t.columns)
        for c in t.columns:
            if pd.api.types.is_numeric_dtype(t[c]):
                v = t[c].to_numpy(dtype=float)
                assert not np.allclose(v, truth, atol=1e-3), c
                assert abs(np.corrcoef(v, truth)[0, 1]) < 0.9, c


def test_generate_institution_api():
    a = ARCHETYPES[2]
    df, pd_true = generate_institution(a, 1234, np.random.default_rng(5), SCHEMA, id_prefix="X")
    assert list(df.columns) == SCHEMA.columns and len(df) == 1234 == len(pd_true)
    assert df["borrower_id"].iloc[0] == "X-000001"
    df2, pd2 = generate_institution(a, 1234, np.random.default_rng(5), SCHEMA, id_prefix="X")
    pd.testing.assert_frame_equal(df, df2)
    assert np.array_equal(pd_true, pd2)
    again = generate_institution(a, 50, institution_rng(0, 2), SCHEMA)[0]
    assert again["borrower_id"].iloc[0] == f"{a.code}-000001"


def test_archetype_calibration_is_consistent_with_the_model():
    for a in ARCHETYPES:
        mu = calibrate_creditworthiness(a, rows=20_000, seed=1, tol=0.01)
        assert abs(mu - a.creditworthiness_mean) < 0.12, (a.id, mu)


def test_moving_creditworthiness_moves_default_rate():
    a = ARCHETYPES[2]
    good = generate_institution(replace(a, creditworthiness_mean=1.5), 5000, np.random.default_rng(0), SCHEMA)[1]
    bad = generate_institution(replace(a, creditworthiness_mean=-1.5), 5000, np.random.default_rng(0), SCHEMA)[1]
    assert bad.mean() > 2 * good.mean()


# ----------------------------------------------------------------------------- archetypes and plan

def test_list_archetypes_has_parameters():
    items = list_archetypes()
    assert [a["id"] for a in items] == ["national-bank", "regional-bank", "card-issuer", "consumer-finance",
                                        "online-microlender"]
    for a in items:
        assert {"rows", "target_default_rate", "limit_median", "education"} <= set(a)
    assert items[0]["rows"] == max(a["rows"] for a in items)
    assert items[-1]["rows"] == min(a["rows"] for a in items)
    assert 0.05 <= items[0]["target_default_rate"] <= 0.08
    assert 0.20 <= items[-1]["target_default_rate"] <= 0.35
    assert 35_000 <= sum(a["rows"] for a in items) <= 45_000


def test_plan_at_scale_one_meets_dp_minimum():
    for n in (1, 5, 13):
        for p in institution_plan(n, 1.0, ARCHETYPES):
            assert p.rows >= 500 and p.rows * p.archetype.target_default_rate >= 65


def test_plan_rejects_bad_arguments():
    with pytest.raises(UserError, match="at least 1"):
        institution_plan(0, 1.0, ARCHETYPES)
    with pytest.raises(UserError, match="positive"):
        institution_plan(5, 0.0, ARCHETYPES)
    with pytest.raises(UserError, match=r"online-microlender-1 \(200 rows.*--scale 0\.25"):
        institution_plan(5, 0.1, ARCHETYPES)


def test_bad_archetypes_file_names_the_key(tmp_path):
    text = (Path(__file__).resolve().parent.parent / "configs" / "archetypes.toml").read_text()
    bad = tmp_path / "a.toml"
    bad.write_text(text.replace("female_share = 0.55", "female_shar = 0.55", 1))
    with pytest.raises(ConfigError, match=r"archetype\[0\].*female_shar.*did you mean 'female_share'"):
        load_archetypes(bad)
    bad.write_text(text.replace('"other" = 0.03 }', '"other" = 0.3 }', 1))
    with pytest.raises(ConfigError, match="sum to 1"):
        load_archetypes(bad)


# ----------------------------------------------------------------------------- command

def test_synth_command_writes_and_reports(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["data", "synth", "--out", str(out), "--scale", "0.25", "--seed", "1", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["seed"] == 1 and summary["scale"] == 0.25 and summary["schema"] == SCHEMA.key
    assert [i["id"] for i in summary["institutions"]][0] == "national-bank-1"
    manifest = json.loads((out / "manifest.json").read_text())
    for e in manifest["institutions"]:
        assert {"id", "archetype", "rows", "default_rate", "oracle_auc", "file"} <= set(e)
        assert (out / e["file"]).is_file() and (out / "truth" / e["file"]).is_file()
    assert {"oracle_auc", "seed", "scale", "schema", "generator_version"} <= set(manifest)


@pytest.mark.timeout(60)
def test_small_scale_run_completes_quickly(tmp_path):
    m = generate_consortium(tmp_path / "s", institutions=3, scale=0.3, seed=11)
    assert sum(e["rows"] for e in m["institutions"]) == m["rows"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--institutions", "0"], "--institutions must be at least 1"),
    (["--scale", "0"], "--scale must be a positive number"),
    (["--scale", "0.05"], "smallest, online-microlender-1, reaches that at --scale 0.25"),
    (["--seed", "-1"], "--seed must be 0 or more"),
])
def test_synth_command_bad_arguments_exit_2(tmp_path, capsys, argv, message):
    assert main(["data", "synth", "--out", str(tmp_path / "x"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_synth_command_refuses_non_empty_out_unless_force(tmp_path, capsys):
    out = tmp_path / "c"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["data", "synth", "--out", str(out), "--scale", "0.25"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(out), "--scale", "0.25", "--institutions", "7", "--force"]) == 0
    assert (out / "national-bank-2.csv").is_file()
    # a smaller consortium replaces the previous one: stale institution files are removed, others kept
    assert main(["data", "synth", "--out", str(out), "--scale", "0.25", "--force"]) == 0
    assert not (out / "national-bank-2.csv").exists() and not (out / "truth" / "national-bank-2.csv").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert len(list(out.glob("*.csv"))) == 5


def test_synth_help_explains_archetypes_scale_and_files(capsys):
    with pytest.raises(SystemExit):
        main(["data", "synth", "--help"])
    text = capsys.readouterr().out
    for word in ("online-microlender", "national-bank", "--scale", "truth/", "manifest.json", "oracle"):
        assert word in text
