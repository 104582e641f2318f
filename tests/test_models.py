"""models/: encoder fitted from statistics, exact federated metrics, scoring, model package."""

from __future__ import annotations

import json
import stat

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score

from configs.errors import UserError
from configs.schema import load_schema
from models.encoder import (
    FeatureEncoder,
    feature_statistics,
    fit_encoder_from_histograms,
    fit_encoder_from_tables,
    quantile_knots,
    statistics_layout,
    sum_statistics,
)
from models.metrics import SCORE_BINS, EvaluationSums, auc_from_histograms, ks_from_histograms
from models.network import ModelSpec, build_model, get_weights, predict_pd
from models.package import ModelPackage, load_package, save_package, sha256_file
from models.scoring import ScoreScale, decisions
from models.training import LocalTrainConfig, train_local
from tests.tables import random_table


@pytest.fixture(scope="module")
def schema():
    return load_schema()


def test_statistics_count_each_row_once_per_feature(schema):
    t = random_table(schema, 300, 1)
    stats = feature_statistics(t, schema)
    layout = statistics_layout(schema)
    assert list(stats) == list(layout)
    for name, counts in stats.items():
        assert counts.shape == (layout[name],)
        assert counts.sum() == 300, name
    assert "sex" not in stats and "age" not in stats  # protected: not model inputs


def test_encoder_from_summed_statistics_equals_pooled_fit(schema):
    a, b = random_table(schema, 200, 2), random_table(schema, 300, 3)
    summed = sum_statistics([feature_statistics(a, schema), feature_statistics(b, schema)])
    fed = fit_encoder_from_histograms(schema, summed)
    pooled = fit_encoder_from_tables(schema, [pd.concat([a, b], ignore_index=True)])
    assert fed.to_dict() == pooled.to_dict()
    x = fed.transform(a)
    assert x.shape == (200, fed.n_outputs) and x.dtype == np.float32
    assert x.min() >= 0 and x.max() <= 1
    # every feature's slice is used, protected attributes are not encoded
    names = [f.name for f in fed.features]
    assert "sex" not in names and "age" not in names
    assert FeatureEncoder.from_json(fed.to_json()).to_dict() == fed.to_dict()


def test_quantile_knots_recover_uniform_quantiles():
    edges = np.linspace(0, 100, 101)
    counts = np.ones(100)
    knots = quantile_knots(counts, edges, 4)
    assert np.allclose(knots, [0, 25, 50, 75, 100])
    # a point mass collapses knots instead of producing zero-width intervals
    counts = np.zeros(100)
    counts[0] = 90
    counts[50:60] = 1
    knots = quantile_knots(counts, edges, 8)
    assert np.all(np.diff(knots) > 0)
    # noise can make counts negative: treated as zero
    assert np.all(np.diff(quantile_knots(counts - 0.5, edges, 8)) > 0)


def test_piecewise_linear_encoding_is_monotone(schema):
    t = random_table(schema, 500, 4)
    enc = fit_encoder_from_tables(schema, [t])
    sl = enc.feature_slices()["credit_limit"]
    grid = t.iloc[:50].copy()
    grid["credit_limit"] = np.linspace(0, 2e7, 50)
    block = enc.transform(grid)[:, sl]
    assert np.all(np.diff(block.sum(axis=1)) >= -1e-6)
    assert block[0].sum() == 0 and block[-1].sum() == block.shape[1]


def test_histogram_auc_counts_tied_scores_as_half_like_scikit_learn():
    # a scorecard-like model: five distinct PDs, so most pairs of a defaulter and a non-defaulter tie
    rng = np.random.default_rng(5)
    levels = np.array([0.02, 0.05, 0.1, 0.2, 0.4])
    p = levels[rng.integers(0, 5, 4000)]
    y = (rng.random(4000) < p * 1.5).astype(int)
    m = EvaluationSums.from_scores(p, y).metrics()
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert m["ks"] == pytest.approx(ks_2samp(p[y == 1], p[y == 0]).statistic, abs=1e-9)
    # all scores equal: no discrimination at all, AUC exactly 0.5
    assert EvaluationSums.from_scores(np.full(500, 0.1), np.arange(500) % 2).metrics()["auc"] == pytest.approx(0.5)


@pytest.mark.parametrize("seed,rate", [(0, 0.5), (1, 0.06), (2, 0.3)])
def test_histogram_auc_and_ks_match_pooled_scikit_learn(seed, rate):
    rng = np.random.default_rng(seed)
    parts = []
    all_p, all_y = [], []
    for node in range(4):
        n = int(rng.integers(300, 3000))
        y = (rng.random(n) < rate).astype(int)
        logit = rng.normal(-2.5 + node * 0.3, 1.0, n) + 1.3 * y
        p = 1 / (1 + np.exp(-logit))
        parts.append(EvaluationSums.from_scores(p, y))
        all_p.append(p)
        all_y.append(y)
    pooled = sum(parts[1:], parts[0])
    p, y = np.concatenate(all_p), np.concatenate(all_y)
    m = pooled.metrics()
    assert abs(m["auc"] - roc_auc_score(y, p)) < 1e-3
    assert abs(m["ks"] - ks_2samp(p[y == 1], p[y == 0]).statistic) < 1e-3
    assert m["n"] == len(p) and m["default_rate"] == pytest.approx(y.mean())
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    # the pooled AUC is not the mean of the local AUCs (that is what the histograms avoid)
    local = [s.metrics()["auc"] for s in parts]
    assert abs(np.mean(local) - m["auc"]) > 1e-4
    again = EvaluationSums.from_arrays(pooled.to_arrays())
    assert again.metrics() == pytest.approx(m)


def test_histogram_metrics_handle_a_missing_class():
    neg = np.zeros(SCORE_BINS)
    neg[10] = 5
    assert np.isnan(auc_from_histograms(neg, np.zeros(SCORE_BINS)))
    assert np.isnan(ks_from_histograms(neg, np.zeros(SCORE_BINS)))


def test_score_scaling_points_to_double_the_odds():
    s = ScoreScale()
    # 50:1 good:bad odds scores the base score; doubling the odds adds PDO points
    assert s.points(1 / 51) == pytest.approx(600.0)
    assert s.points(1 / 101) == pytest.approx(620.0)
    assert s.pd_at(600.0) == pytest.approx(1 / 51)
    assert list(decisions([0.1, 0.3], 0.2)) == ["approve", "decline"]


def test_training_reduces_loss_and_is_deterministic(schema):
    t = random_table(schema, 600, 5)
    # make the label depend on a feature so there is something to learn
    t[schema.label.name] = (t["pay_status_1"] >= 2).astype(int)
    enc = fit_encoder_from_tables(schema, [t])
    x, y = enc.transform(t), t[schema.label.name].to_numpy()
    runs = []
    for _ in range(2):
        net = build_model(ModelSpec("mlp", enc.n_outputs), seed=3)
        before = float(np.mean((predict_pd(net, x) > 0.5) == y))
        out = train_local(net, x, y, LocalTrainConfig(local_epochs=5, batch_size=64), seed=11)
        runs.append(get_weights(net))
    after = float(np.mean((predict_pd(net, x) > 0.5) == y))
    assert after > 0.95 > before
    assert out["steps"] == 5 * 10 and out["examples"] == 600
    for k in runs[0]:
        assert np.array_equal(runs[0][k], runs[1][k])


def test_model_package_round_trip_and_tamper_detection(schema, tmp_path):
    t = random_table(schema, 200, 6)
    enc = fit_encoder_from_tables(schema, [t])
    spec = ModelSpec("mlp", enc.n_outputs, (16, 8))
    net = build_model(spec, seed=1)
    pkg = ModelPackage(spec=spec, encoder=enc, weights=get_weights(net), schema=schema,
                       meta={"run_id": "test"})
    d = save_package(tmp_path / "model", pkg)
    loaded = load_package(d)
    assert np.array_equal(loaded.predict_pd(t), pkg.predict_pd(t))
    assert loaded.meta["run_id"] == "test"

    # one weights format (safetensors), and every file of the package with the same mode
    assert sorted(p.name for p in d.iterdir()) == ["encoder.json", "model.json", "schema.toml", "weights.safetensors"]
    assert len({stat.S_IMODE(p.stat().st_mode) for p in d.iterdir()}) == 1

    meta = json.loads((d / "model.json").read_text())
    assert meta["schema_key"] == schema.key
    raw = bytearray((d / "weights.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (d / "weights.safetensors").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="weights.safetensors"):
        load_package(d)


def test_a_package_of_the_older_layout_with_weights_pt_still_loads_and_is_verified(schema, tmp_path):
    """Packages written before safetensors was the one format also held weights.pt (listed in
    model.json's files_sha256): they load (from safetensors), and weights.pt is still hash-checked."""
    import torch

    t = random_table(schema, 200, 6)
    enc = fit_encoder_from_tables(schema, [t])
    spec = ModelSpec("mlp", enc.n_outputs, (8,))
    pkg = ModelPackage(spec=spec, encoder=enc, weights=get_weights(build_model(spec, seed=2)), schema=schema)
    d = save_package(tmp_path / "model", pkg)
    torch.save({k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in pkg.weights.items()}, d / "weights.pt")
    meta = json.loads((d / "model.json").read_text())
    meta["files_sha256"]["weights.pt"] = sha256_file(d / "weights.pt")
    (d / "model.json").write_text(json.dumps(meta))
    assert np.array_equal(load_package(d).predict_pd(t), pkg.predict_pd(t))
    (d / "weights.pt").write_bytes((d / "weights.pt").read_bytes()[:-1])
    with pytest.raises(UserError, match="weights.pt"):
        load_package(d)
    # writing a package over it replaces the directory whole: the old weights.pt is gone
    save_package(d, pkg)
    assert not (d / "weights.pt").exists() and np.array_equal(load_package(d).predict_pd(t), pkg.predict_pd(t))


def test_a_package_is_never_written_over_a_directory_of_other_files(schema, tmp_path):
    t = random_table(schema, 100, 6)
    enc = fit_encoder_from_tables(schema, [t])
    spec = ModelSpec("scorecard", enc.n_outputs, ())
    pkg = ModelPackage(spec=spec, encoder=enc, weights=get_weights(build_model(spec, seed=2)), schema=schema)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="notes.txt"):
        save_package(tmp_path, pkg)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_platt_recalibration_from_histograms_restores_the_mean_pd(schema):
    from models.calibration import binned_calibration_summary, calibrate_weights, fit_platt

    rng = np.random.default_rng(7)
    true_logit = rng.normal(-2.0, 1.2, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    shrunk = 1 / (1 + np.exp(-(0.6 * true_logit - 1.5)))  # ranks right, PD far too low
    sums = EvaluationSums.from_scores(shrunk, y)
    cal = fit_platt(sums.hist_neg, sums.hist_pos)
    assert cal.slope == pytest.approx(1 / 0.6, rel=0.08)
    fixed = cal.apply(shrunk)
    assert fixed.mean() == pytest.approx(y.mean(), abs=0.005)
    assert roc_auc_score(y, fixed) == pytest.approx(roc_auc_score(y, shrunk), abs=1e-12)
    summary = binned_calibration_summary(sums.hist_neg, sums.hist_pos, cal)
    assert summary["after"]["brier"] < summary["before"]["brier"]
    # folded into the network's last layer, the model outputs the calibrated PD
    t = random_table(schema, 300, 8)
    enc = fit_encoder_from_tables(schema, [t])
    spec = ModelSpec("mlp", enc.n_outputs, (8,))
    net = build_model(spec, seed=2)
    x = enc.transform(t)
    calibrated = build_model(spec)
    from models.network import set_weights

    set_weights(calibrated, calibrate_weights(get_weights(net), spec, cal))
    assert np.allclose(predict_pd(calibrated, x), cal.apply(predict_pd(net, x)), atol=1e-6)
