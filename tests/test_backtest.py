"""Backtesting on realised outcomes: intervals, Hosmer–Lemeshow and ``fedcredit backtest`` on known PDs.

Outcomes drawn as Bernoulli(PD) from the package's own PDs make the package calibrated by
construction; drawn from doubled PDs, it under-predicts by a known factor. The intervals are
checked against their closed forms and their coverage; the Hosmer–Lemeshow statistic against
its χ² distribution with one degree of freedom per band on outcomes the model was not fitted on.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import beta, chi2, norm

from models.backtest import binomial_interval, binomial_intervals, calibration_by_band, cutoff_figures, hosmer_lemeshow
from models.score_bands import bands_from_scores
from models.scoring import ScoreScale
from tests.conftest import run_fedcredit
from tests.model_packages import cli_in_process as cli
from tests.model_packages import outcomes_from_pd, packaged_lender, write_table


# ------------------------------------------------------------------------------ intervals
def test_clopper_pearson_and_wilson_match_their_closed_forms():
    k, n, conf = 3, 50, 0.95
    lo, hi = binomial_interval(k, n, conf, "exact")
    assert lo == pytest.approx(beta.ppf(0.025, k, n - k + 1), rel=1e-6)
    assert hi == pytest.approx(beta.ppf(0.975, k + 1, n - k), rel=1e-6)
    z, p = norm.ppf(0.975), k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert binomial_interval(k, n, conf, "wilson") == pytest.approx((centre - half, centre + half), rel=1e-6)
    assert binomial_interval(0, 40)[0] == 0.0 and np.isnan(binomial_interval(0, 0)[0])
    # and scipy's own binomtest agrees (an implementation independent of the closed forms)
    from scipy.stats import binomtest

    for k, n in ((0, 30), (7, 90), (90, 90), (450, 1000)):
        for method in ("exact", "wilson"):
            ci = binomtest(k, n).proportion_ci(0.9, method=method)
            assert binomial_interval(k, n, 0.9, method) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_clopper_pearson_covers_at_least_its_level():
    rng = np.random.default_rng(1)
    p, n = 0.04, 300
    k = rng.binomial(n, p, 4000)
    lo, hi = binomial_intervals(k, np.full(len(k), n))
    assert np.mean((lo <= p) & (p <= hi)) >= 0.95


# ------------------------------------------------------------------ calibration and H–L
def _known_pds(rng, n):
    return 1 / (1 + np.exp(-rng.normal(-2.2, 1.0, n)))


def test_hosmer_lemeshow_is_chi_square_with_one_df_per_band_on_calibrated_pds():
    rng = np.random.default_rng(2)
    stats = []
    for _ in range(300):
        p = _known_pds(rng, 4000)
        y = rng.random(len(p)) < p
        bands = bands_from_scores(p, 10)
        table = calibration_by_band(p, y, bands.band_of(p), bands.labels(ScoreScale()))
        stats.append(hosmer_lemeshow(table).statistic)
    # χ²(10): mean 10, variance 20; the mean of 300 draws has standard error ~0.26
    assert np.mean(stats) == pytest.approx(10, abs=1.0)
    assert np.mean(np.array(stats) > chi2.ppf(0.95, 10)) < 0.09


def test_calibration_by_band_on_known_pds():
    rng = np.random.default_rng(3)
    p = _known_pds(rng, 60_000)
    y = rng.random(len(p)) < p
    bands = bands_from_scores(p, 10)
    table = calibration_by_band(p, y, bands.band_of(p), bands.labels(ScoreScale()))
    assert sum(b.n for b in table) == len(p) and sum(b.defaults for b in table) == int(y.sum())
    # the bands are deciles of the PDs: compare with np.quantile deciles
    order = np.argsort(p)
    for b, chunk in zip(table, np.array_split(order, 10)):
        assert abs(b.n - len(chunk)) < 0.01 * len(p)
        assert b.mean_pd == pytest.approx(p[chunk].mean(), rel=0.05)
    assert sum(b.verdict == "within" for b in table) >= 8
    assert hosmer_lemeshow(table).p_value > 0.01
    # PDs halved: every band's observed rate is above its PD, the test rejects
    half = calibration_by_band(p / 2, y, bands.band_of(p), bands.labels(ScoreScale()))
    assert all(b.verdict == "under-predicts" for b in half)
    assert hosmer_lemeshow(half).p_value < 1e-12


def test_cutoff_figures():
    p = np.array([0.01, 0.05, 0.1, 0.2, 0.3, 0.6])
    y = np.array([0, 1, 0, 0, 1, 1])
    c = cutoff_figures(p, y, 0.2)
    assert (c.approved, c.declined, c.approval_rate) == (3, 3, 0.5)
    assert c.bad_rate_approved == pytest.approx(1 / 3) and c.bad_rate_declined == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def backtested(tmp_path_factory):
    from models.metrics import EvaluationSums
    from models.package import save_package

    lender = packaged_lender(tmp_path_factory.mktemp("backtest"), "regional-bank", seed=4, book_rows=12_000,
                             book_prefix="B", package_dir="trained")
    d, pkg = lender.directory, lender.package
    p = pkg.predict_pd(lender.book)
    calibrated = outcomes_from_pd(lender.book, p, seed=7)
    doubled = outcomes_from_pd(lender.book, np.minimum(1.0, 2 * p), seed=7)
    # the development figures of the card: the package's AUC on outcomes drawn from its PDs
    card = {k: float(v) for k, v in EvaluationSums.from_scores(p, calibrated["default_next_month"]).metrics().items()}
    pkg.meta["final_metrics"] = card
    save_package(d / "model", pkg)
    lender.write("calibrated.csv", calibrated)
    lender.write("doubled.csv", doubled)
    return d, pkg, calibrated, doubled, card


def test_backtest_of_a_calibrated_package(backtested, tmp_path):
    from sklearn.metrics import roc_auc_score

    d, pkg, calibrated, _, card = backtested
    proc = run_fedcredit("backtest", "--model", d / "model", "--data", d / "calibrated.csv", "--json",
                         "--out", tmp_path / "out", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(proc.stdout.strip().splitlines()[-1])
    y = calibrated["default_next_month"].to_numpy()
    p = pkg.predict_pd(calibrated)
    assert s["rows"] == len(y) and s["defaults"] == int(y.sum())
    assert s["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert s["auc_ci"][0] < s["auc"] < s["auc_ci"][1] and s["auc_ci"][1] - s["auc_ci"][0] < 0.06
    assert s["gini"] == pytest.approx(2 * s["auc"] - 1)
    assert s["hosmer_lemeshow"]["p_value"] > 0.01 and s["bands_within"] >= 8
    assert s["cutoff"]["approval_rate"] == pytest.approx(float(np.mean(p < 0.15)))
    assert s["cutoff"]["bad_rate_approved"] == pytest.approx(float(y[p < 0.15].mean()))
    assert s["findings"][0].startswith("Discrimination holds") and s["findings"][1].startswith("Calibration holds")
    full = json.loads((tmp_path / "out" / "backtest.json").read_text())
    auc_row = next(r for r in full["comparison"] if r["figure"] == "auc")
    assert auc_row["development"] == pytest.approx(card["auc"]) and auc_row["development_inside_ci"] is True
    assert {"approval_rate", "bad_rate_approved"} <= {r["figure"] for r in full["comparison"]}


def test_backtest_finds_pds_that_are_half_the_realised_rate(backtested, capsys):
    d, pkg, _, doubled, _ = backtested
    proc = cli(capsys, "backtest", "--model", d / "model", "--data", d / "doubled.csv", "--json",
               "--interval", "wilson")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout.strip().splitlines()[-1])
    assert s["hosmer_lemeshow"]["p_value"] < 1e-6 and s["bands_within"] <= 3
    assert s["default_rate"] / s["mean_pd"] == pytest.approx(
        float(np.mean(np.minimum(1, 2 * pkg.predict_pd(doubled))) / np.mean(pkg.predict_pd(doubled))), rel=0.08)
    assert s["findings"][1].startswith("Calibration fails")


@pytest.mark.parametrize("case", ["missing-file", "no-label", "single-class", "wrong-column", "tampered"])
def test_backtest_user_mistakes_exit_2(backtested, tmp_path, case, capsys):
    import shutil

    d, _, calibrated, _, _ = backtested
    model, data = d / "model", d / "calibrated.csv"
    if case == "missing-file":
        data = tmp_path / "outcomes.csv"
    elif case == "no-label":
        data = write_table(calibrated, tmp_path / "x.csv", drop=("default_next_month",))
    elif case == "single-class":
        t = calibrated.copy()
        t["default_next_month"] = 0
        data = write_table(t, tmp_path / "x.csv")
    elif case == "wrong-column":
        data = write_table(calibrated.rename(columns={"pay_status_1": "pay_status_one"}), tmp_path / "x.csv")
    else:
        model = tmp_path / "model"
        shutil.copytree(d / "model", model)
        (model / "encoder.json").write_text((model / "encoder.json").read_text().replace("0", "1", 1))
    proc = cli(capsys, "backtest", "--model", model, "--data", data, "--json")
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["ok"] is False
    needle = {"missing-file": "outcomes.csv", "no-label": "default_next_month", "single-class": "default_next_month",
              "wrong-column": "pay_status_1", "tampered": "encoder.json"}[case]
    assert needle in proc.stderr
