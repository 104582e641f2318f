"""`fedcredit score`: applicants in, PD / points / decision out, validated like `data validate`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from configs.schema import load_schema
from models.encoder import fit_encoder_from_tables
from models.network import ModelSpec, build_model, get_weights
from models.package import ModelPackage, save_package
from models.scoring import ScoreScale
from tests.conftest import run_fedcredit


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    from simulation.archetypes import load_archetypes
    from simulation.synthetic import generate_institution, institution_rng
    from models.training import LocalTrainConfig, train_local

    schema = load_schema()
    a = next(x for x in load_archetypes() if x.id == "card-issuer")
    table, _ = generate_institution(a, 3000, institution_rng(3, 0), schema)
    enc = fit_encoder_from_tables(schema, [table])
    spec = ModelSpec("mlp", enc.n_outputs, (16,))
    net = build_model(spec, seed=1)
    train_local(net, enc.transform(table), table[schema.label.name].to_numpy(), LocalTrainConfig(local_epochs=3))
    d = tmp_path_factory.mktemp("pkg")
    pkg = ModelPackage(spec=spec, encoder=enc, weights=get_weights(net), schema=schema, cutoff_pd=0.15)
    save_package(d / "model", pkg)
    apps, _ = generate_institution(a, 400, institution_rng(3, 1), schema, id_prefix="APP")
    apps = apps.drop(columns=[schema.label.name])  # applicants have no outcome yet
    apps.to_csv(d / "applicants.csv", index=False)
    return d, pkg, apps


def test_scores_match_the_package_and_the_pdo_scaling(package, tmp_path):
    d, pkg, apps = package
    proc = run_fedcredit("score", "--model", d / "model", "--data", d / "applicants.csv",
                         "--out", tmp_path / "scores.csv", "--json", timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    out = pd.read_csv(tmp_path / "scores.csv")
    assert list(out.columns) == ["borrower_id", "pd", "score", "decision"]
    assert list(out["borrower_id"]) == list(apps["borrower_id"])
    np.testing.assert_allclose(out["pd"], pkg.predict_pd(apps), atol=1e-6)
    np.testing.assert_allclose(out["score"], ScoreScale().points(out["pd"]), atol=0.06)
    assert ((out["pd"] < 0.15) == (out["decision"] == "approve")).all()  # the package's cut-off
    assert summary["rows"] == 400 and summary["approved"] == int((out["decision"] == "approve").sum())


def test_cutoff_and_scaling_options(package, tmp_path):
    d, _, _ = package
    proc = run_fedcredit("score", "--model", d / "model", "--data", d / "applicants.csv", "--cutoff-pd", "0.5",
                         "--base-score", "500", "--base-odds", "20", "--pdo", "40", timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = pd.read_csv(__import__("io").StringIO(proc.stdout))
    np.testing.assert_allclose(out["score"], ScoreScale(500, 20, 40).points(out["pd"]), atol=0.06)
    assert ((out["pd"] < 0.5) == (out["decision"] == "approve")).all()


def test_invalid_applicants_exit_2_with_the_validation_report(package, tmp_path):
    d, _, apps = package
    bad = apps.copy()
    bad["age"] = bad["age"].astype(object)
    bad.loc[[3, 7], "age"] = "unknown"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    proc = run_fedcredit("score", "--model", d / "model", "--data", tmp_path / "bad.csv", timeout=180)
    assert proc.returncode == 2
    assert "age" in proc.stderr and "4, 8" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_a_damaged_model_package_is_refused(package, tmp_path):
    import shutil

    d, _, _ = package
    shutil.copytree(d / "model", tmp_path / "model")
    (tmp_path / "model" / "encoder.json").write_text("{}")
    proc = run_fedcredit("score", "--model", tmp_path / "model", "--data", d / "applicants.csv", timeout=180)
    assert proc.returncode == 2 and "encoder.json" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("out, words", [
    ("missing/dir/scores.csv", "does not exist; create it first"),
    ("scores.xlsx", "name the file with .csv or .parquet"),
    (".", "a file without a suffix"),
    ("is-a-dir.csv", "is a directory"),
])
def test_an_unwritable_out_is_refused_before_any_scoring(package, tmp_path, monkeypatch, capsys, out, words):
    """`score --out` into a missing directory ended in a traceback after all the scoring; now every output
    path is checked first (load_package is never reached), exit 2 naming the option and the path."""
    import models.package
    from fedcredit.cli import main as cli_main

    d, _, _ = package
    (tmp_path / "is-a-dir.csv").mkdir()

    def no_work(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(models.package, "load_package", no_work)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["score", "--model", str(d / "model"), "--data", str(d / "applicants.csv"), "--out", out,
                     "--json"]) == 2
    captured = capsys.readouterr()
    assert f"--out {out}" in captured.err and words in captured.err, captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["ok"] is False
    assert not (tmp_path / "missing").exists()


def test_model_option_names_the_package_directory(package, tmp_path, capsys):
    from fedcredit.cli import main as cli_main

    d, _, _ = package
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model").symlink_to(d / "model")
    for model, words in ((d / "model" / "model.json", "a file; give the model package directory"),
                         (run_dir, f"a run directory; give its model package, --model {run_dir / 'model'}")):
        assert cli_main(["score", "--model", str(model), "--data", str(d / "applicants.csv")]) == 2
        assert words in capsys.readouterr().err
