"""Drift monitoring: PSI/CSI against known populations, ``fedcredit monitor`` end to end.

* the PSI of known distributions equals the analytic value (categories exactly; a log-normal
  credit limit shifted by known amounts through the schema's bins and the equal-mass groups);
* two samples of one population give the sampling floor ``(G − 1)(1/N + 1/M)``; a DP-noised
  reference keeps an undrifted population stable;
* the command's score PSI agrees with an independent computation (development deciles by
  ``np.quantile``), flags the feature that was drifted, writes monitor.json and a page that a real
  browser renders, and ends every user mistake with exit code 2.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from configs.schema import load_schema
from models.stability import (EMPTY_SHARE, characteristic_stability, feature_groups, group_spans, grouped_stability,
                              population_stability_index, psi_sampling_floor, traffic_light)
from tests.conftest import run_fedcredit
from tests.model_packages import cli_in_process as cli
from tests.model_packages import packaged_lender, synthetic_table, write_table


def _psi(e, a) -> float:
    """PSI from its definition, for shares that are all positive."""
    e, a = np.asarray(e, dtype=float), np.asarray(a, dtype=float)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


# ------------------------------------------------------------------------------- the index
def test_psi_of_known_category_shares_is_exact():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    q = np.array([0.35, 0.3, 0.2, 0.15])
    assert population_stability_index(100_000 * p, 7_000 * q) == pytest.approx(_psi(p, q), rel=1e-12)
    assert population_stability_index(p, p) == 0.0
    # an empty reference group counts with the floor share, so the index stays finite
    psi = population_stability_index([50, 50, 0], [45, 45, 10])
    e, a = np.array([0.5, 0.5, EMPTY_SHARE]), np.array([0.45, 0.45, 0.1])
    assert psi == pytest.approx(float(np.sum((a - e) * np.log(a / e))), rel=1e-12)
    with pytest.raises(ValueError):
        population_stability_index([1, 2], [1, 2, 3])


@pytest.mark.parametrize("psi,light", [(0.0, "stable"), (0.099, "stable"), (0.1, "watch"), (0.25, "watch"),
                                       (0.2501, "act"), (float("nan"), "unknown")])
def test_traffic_lights(psi, light):
    assert traffic_light(psi) == light


def test_two_samples_of_one_population_give_the_sampling_floor():
    rng = np.random.default_rng(11)
    p = rng.dirichlet(np.ones(10) * 3)
    n, m = 20_000, 5_000
    psis = [population_stability_index(rng.multinomial(n, p), rng.multinomial(m, p)) for _ in range(400)]
    floor = psi_sampling_floor(10, n, m)
    assert floor == pytest.approx(9 * (1 / n + 1 / m))
    assert np.mean(psis) == pytest.approx(floor, rel=0.12)


def _lognormal_cdf(t: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    """P(credit limit < expm1(t)) for a log-normal limit (t in the schema's log1p space); the
    schema's range ends hold all the mass (values are clipped into the range)."""
    edges = load_schema().feature("credit_limit").bin_edges()
    cdf = norm.cdf((np.log(np.maximum(np.expm1(t), 1e-300)) - mu) / sigma)
    return np.where(t <= edges[0], 0.0, np.where(t >= edges[-1], 1.0, cdf))


@pytest.mark.parametrize("shift,light", [(0.0, "stable"), (0.45, "watch"), (0.9, "act")])
def test_csi_of_a_shifted_lognormal_limit_matches_the_analytic_psi(shift, light):
    f = load_schema().feature("credit_limit")
    edges = f.bin_edges()
    mu, sigma = 11.5, 0.6
    reference = 200_000 * np.diff(_lognormal_cdf(edges, mu, sigma))
    groups, labels = feature_groups(f, reference)
    spans = group_spans(groups)
    assert 7 <= len(spans) <= 10 and len(labels) == len(spans)
    # the analytic PSI over the same groups: reference and shifted shares from the normal CDF
    cur_mu = mu + shift * sigma
    e = [np.diff(_lognormal_cdf(edges[[a, b + 1]], mu, sigma))[0] for a, b in spans]
    a = [np.diff(_lognormal_cdf(edges[[a, b + 1]], cur_mu, sigma))[0] for a, b in spans]
    expected = _psi(e, a)
    assert traffic_light(expected) == light
    # a mean shift of δ standard deviations has symmetric KL δ²; grouping can only lose divergence
    assert 0.85 * shift ** 2 <= expected <= shift ** 2 + 1e-12
    # a sample of 300,000 current limits, counted into the schema cells independently of the code
    sample = np.exp(np.random.default_rng(5).normal(cur_mu, sigma, 300_000))
    current = np.histogram(np.log1p(sample), bins=edges)[0]
    result = grouped_stability(reference, current, groups, labels)
    assert result.psi == pytest.approx(expected, abs=0.002 + 0.03 * expected)
    assert result.light == light


def test_dp_noise_on_the_reference_keeps_an_undrifted_population_stable():
    from models.encoder import feature_statistics
    from models.reference import denoise_counts, estimate_noise_std

    schema = load_schema()
    dev, _ = synthetic_table("card-issuer", 30_000, seed=2)
    now, _ = synthetic_table("card-issuer", 30_000, seed=2, index=1)
    exact = feature_statistics(dev, schema)
    rng = np.random.default_rng(0)
    noise_std = 10 * np.sqrt(len(exact)) * np.sqrt(3)  # the statistics query's noise, summed over 3 nodes
    noisy = {k: v + rng.normal(0, noise_std, v.shape) for k, v in exact.items()}
    s = estimate_noise_std(list(noisy.values()))
    assert s == pytest.approx(noise_std, rel=0.15)
    # clipping every cell at zero keeps the positive noise of the empty cells: phantom rows;
    # denoising does not
    limit = noisy["credit_limit"]
    clipped_excess = np.clip(limit, 0, None).sum() - 30_000
    assert clipped_excess > 15 * noise_std
    assert abs(denoise_counts(limit, s).sum() - 30_000) < min(0.5 * clipped_excess, 0.03 * 30_000)
    current = feature_statistics(now, schema)
    result = characteristic_stability(noisy, current, schema, noise_std=s)
    for name, r in result.items():  # no false alarm; a feature too noisy to judge says so
        assert r.light == ("stable" if r.reliable else "unknown"), (name, r.psi, r.noise_floor)
    assert sum(r.reliable for r in result.values()) >= 17
    # …and the same noise does not hide a real shift
    drifted = now.copy()
    drifted["credit_limit"] = drifted["credit_limit"] * 2.5
    res = characteristic_stability(noisy, feature_statistics(drifted, schema), schema, noise_std=s)
    assert res["credit_limit"].light == "act"


def test_a_reference_too_noisy_for_its_size_says_so_instead_of_raising_alarms():
    from models.encoder import feature_statistics

    schema = load_schema()
    dev, _ = synthetic_table("card-issuer", 3000, seed=2)
    now, _ = synthetic_table("card-issuer", 3000, seed=2, index=1)
    exact = feature_statistics(dev, schema)
    noisy = {k: v + np.random.default_rng(1).normal(0, 80, v.shape) for k, v in exact.items()}
    result = characteristic_stability(noisy, feature_statistics(now, schema), schema, noise_std=80)
    lights = {name: r.light for name, r in result.items()}
    assert "watch" not in lights.values() and "act" not in lights.values()
    noisy_ones = [n for n, r in result.items() if not r.reliable]
    assert len(noisy_ones) >= 5 and all(lights[n] == "unknown" and result[n].noise_floor >= 0.05 for n in noisy_ones)
    # the same reference without noise judges every feature
    exact_result = characteristic_stability(exact, feature_statistics(now, schema), schema)
    assert all(r.reliable and r.noise_floor == 0 for r in exact_result.values())


# ---------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    lender = packaged_lender(tmp_path_factory.mktemp("monitor"), "card-issuer", seed=3, book_rows=6000,
                             book_prefix="S")
    drifted = lender.book.copy()
    drifted["credit_limit"] = (drifted["credit_limit"] * 3).clip(upper=20_000_000)
    lender.write("same.csv", lender.book, label=False)
    lender.write("drifted.csv", drifted, label=False)
    return lender.directory, lender.package, lender.development, lender.book


def _summary(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _deciles_psi(dev_pd: np.ndarray, cur_pd: np.ndarray) -> float:
    """Score PSI over development deciles found with np.quantile (no histogram bins involved)."""
    edges = np.quantile(dev_pd, np.linspace(0, 1, 11)[1:-1])
    e = np.bincount(np.searchsorted(edges, dev_pd, side="right"), minlength=10)
    a = np.bincount(np.searchsorted(edges, cur_pd, side="right"), minlength=10)
    return _psi(e, a)


def test_monitor_an_undrifted_population_is_stable(monitored, tmp_path):
    d, pkg, dev, same = monitored
    s = _summary(run_fedcredit("monitor", "--model", d / "model", "--data", d / "same.csv", "--json",
                               "--out", tmp_path / "out", timeout=300))
    assert s["ok"] and s["rows"] == len(same) and s["status"] == "stable"
    expected = _deciles_psi(pkg.predict_pd(dev), pkg.predict_pd(same))
    assert s["score_psi"] == pytest.approx(expected, abs=0.004)
    assert s["score_psi"] < 0.03 and s["score_light"] == "stable"
    assert set(s["csi"]) == {f.name for f in pkg.schema.model_features()}
    assert all(c["light"] == "stable" and c["psi"] < 0.05 for c in s["csi"].values())
    full = json.loads((tmp_path / "out" / "monitor.json").read_text())
    bands = full["score_bands"]
    assert len(bands) == 10 and sum(b["reference_share"] for b in bands) == pytest.approx(1.0)
    assert all(abs(b["reference_share"] - 0.1) < 0.01 for b in bands)  # deciles of the development scores
    assert full["approval_rate"]["reference"] == pytest.approx(float(np.mean(pkg.predict_pd(dev) < 0.15)), abs=0.002)
    assert full["approval_rate"]["current"] == pytest.approx(float(np.mean(pkg.predict_pd(same) < 0.15)), abs=1e-9)


def test_monitor_flags_the_drifted_feature(monitored, capsys):
    d, pkg, dev, same = monitored
    s = _summary(run_fedcredit("monitor", "--model", d / "model", "--data", d / "drifted.csv", "--json", timeout=300))
    assert s["moved_most"][0] == "credit_limit" and s["csi"]["credit_limit"]["light"] == "act"
    assert "credit_limit" in s["features_to_act"] and s["status"] == "act"
    drifted = pd.read_csv(d / "drifted.csv")
    expected = _deciles_psi(pkg.predict_pd(dev), pkg.predict_pd(drifted))
    assert s["score_psi"] == pytest.approx(expected, abs=0.01 + 0.05 * expected)
    # limits tripled beyond the largest development limit lie outside the encoder's knots
    knots = next(f.knots for f in pkg.encoder.features if f.name == "credit_limit")
    t = np.log1p(drifted["credit_limit"].to_numpy(dtype=float))
    beyond = float(np.mean((t < knots[0]) | (t > knots[-1])))
    assert beyond > 0.005 and s["out_of_range_rate"]["credit_limit"] == pytest.approx(beyond)
    assert s["out_of_range_rate"]["credit_limit"] > 10 * max(s["out_of_range_rate"]["bill_amount_1"], 1e-4)
    assert cli(capsys, "monitor", "--model", d / "model", "--data", d / "drifted.csv", "--fail-on", "act").returncode == 3


def test_monitor_reports_missing_values(monitored, tmp_path, capsys):
    d, _, _, same = monitored
    t = same.drop(columns=["default_next_month"]).astype({"education": object})
    t.loc[t.index[:600], "education"] = ""  # education is imputed ("other") when missing
    t.to_csv(tmp_path / "gaps.csv", index=False)
    s = _summary(cli(capsys, "monitor", "--model", d / "model", "--data", tmp_path / "gaps.csv", "--json"))
    assert s["missing_rate"]["education"] == pytest.approx(600 / len(t))
    assert s["missing_rate"]["credit_limit"] == 0.0


def test_monitor_page_renders_in_chromium(monitored, tmp_path, chromium, capsys):
    import importlib.util

    from PIL import Image

    from tests.conftest import REPO

    d, _, _, _ = monitored
    _summary(cli(capsys, "monitor", "--model", d / "model", "--data", d / "drifted.csv", "--json",
                 "--out", tmp_path / "out"))
    spec = importlib.util.spec_from_file_location("render_report", REPO / "bench" / "render_report.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    page = tmp_path / "out" / "monitor.html"
    structure = render.parse_report(page.read_text())
    assert list(structure.sections) == ["summary", "score", "characteristics", "quality", "reference"]
    assert structure.external == []  # self-contained
    assert len(structure.images) == 5 and all(render.decode_png(i["src"]) for i in structure.images)
    shot = tmp_path / "shot.png"
    result = render.screenshot(page, shot, 1280, 2400, chromium=chromium)
    assert result["returncode"] == 0, result
    img = np.asarray(Image.open(shot).convert("RGB").resize((320, 600)))
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # drawn, not blank
    assert "credit_limit" in page.read_text() and "act" in page.read_text()


def test_monitor_escapes_what_comes_from_files(monitored, tmp_path):
    from clients.monitor_page import render_monitor_page

    d, _, _, _ = monitored
    result = json.loads(json.dumps(_summary_result(d)))
    html = render_monitor_page(result, "<script>alert(1)</script>", "<b>model</b>", "data<img src=x>")
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert "<b>model</b>" not in html and "data<img src=x>" not in html


def _summary_result(d):
    from clients.monitoring import assess_drift
    from clients.scored_table import load_scored_table

    scored = load_scored_table(d / "model", d / "same.csv")
    return assess_drift(scored, scored.package.reference, "the package")


def test_monitor_older_package_needs_a_baseline(monitored, tmp_path, capsys):
    d, _, dev, _ = monitored
    old = tmp_path / "old"
    shutil.copytree(d / "model", old)
    meta = json.loads((old / "model.json").read_text())
    meta["files_sha256"].pop("reference.json")  # as packages were written before they carried one
    (old / "reference.json").unlink()
    (old / "model.json").write_text(json.dumps(meta))
    proc = cli(capsys, "monitor", "--model", old, "--data", d / "same.csv", "--json")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--baseline" in proc.stderr and "reference" in proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["ok"] is False
    write_table(dev, tmp_path / "dev.csv")
    s = _summary(cli(capsys, "monitor", "--model", old, "--data", d / "same.csv", "--baseline", tmp_path / "dev.csv",
                     "--json"))
    assert s["status"] == "stable" and s["reference"]["name"].startswith("baseline")


@pytest.mark.parametrize("case", ["missing-file", "missing-column", "tampered-package", "bad-groups", "no-package"])
def test_monitor_user_mistakes_exit_2(monitored, tmp_path, case, capsys):
    d, _, _, same = monitored
    model, data, extra = d / "model", d / "same.csv", []
    if case == "missing-file":
        data = tmp_path / "nowhere.csv"
    elif case == "missing-column":
        data = write_table(same, tmp_path / "no_age.csv", drop=("age",))
    elif case == "tampered-package":
        model = tmp_path / "model"
        shutil.copytree(d / "model", model)
        with open(model / "reference.json", "a") as fh:
            fh.write(" ")
    elif case == "bad-groups":
        extra = ["--groups", "1"]
    else:
        model = tmp_path
    if case == "bad-groups":  # argparse's own error: exit 2 with the option named
        with pytest.raises(SystemExit) as exc:
            cli(capsys, "monitor", "--model", model, "--data", data, *extra)
        assert exc.value.code == 2 and "--groups" in capsys.readouterr().err
        return
    proc = cli(capsys, "monitor", "--model", model, "--data", data, *extra)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    needle = {"missing-file": "nowhere.csv", "missing-column": "age", "tampered-package": "reference.json",
              "bad-groups": "--groups", "no-package": "model.json"}[case]
    assert needle in proc.stderr


# ------------------------------------------------------------------ end to end, from a run
@pytest.mark.slow
def test_a_dp_run_exports_its_development_population_and_monitor_reads_it(tmp_path):
    """A real DP simulation: the package carries the (noised) summed statistics and the exact
    pooled holdout score histograms of the exported model; they are the institutions' own
    training rows and holdouts, so those are stable against it."""
    import tomllib

    from scipy.stats import chi2

    from clients.node import load_node_data
    from models.encoder import feature_statistics
    from models.metrics import SCORE_BINS, score_bin_index
    from models.package import load_package
    from server.checkpoints import load_checkpoint
    from simulation.virtual_nodes import virtual_policy

    run_dir = tmp_path / "run"
    proc = run_fedcredit("simulate", "--institutions", 3, "--rounds", 2, "--scale", 0.3, "--epsilon", 3,
                         "--seed", 8, "--out", run_dir, "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pkg = load_package(run_dir / "model")
    ref = pkg.reference
    assert ref is not None and ref.source["dp"] is True and ref.source["contributors"] == 3 and ref.has_scores
    assert ref.check_layout(pkg.schema) == ""
    # the checkpoint keeps the counts, so a resumed run exports them too
    state = load_checkpoint(run_dir).state
    for name, counts in ref.feature_counts.items():
        np.testing.assert_allclose(state["population_counts"][name], counts)

    run_config = tomllib.loads((run_dir / "config.resolved.toml").read_text())["run-config"]
    train, holdout = [], []
    for k in range(3):
        data = load_node_data(virtual_policy(k, 3, run_config))
        train.append(data.split.train)
        holdout.append(data.split.holdout)
    train, holdout = pd.concat(train, ignore_index=True), pd.concat(holdout, ignore_index=True)
    exact = feature_statistics(train, pkg.schema)
    noise_std = 10 * np.sqrt(len(exact)) * np.sqrt(3)  # σ·√F per node, summed over three nodes
    # the residuals are the Gaussian noise alone, pooled over every count: a z-test on their mean
    # (no bias) and two-sided χ² tests on their spread (the planned σ — not more, not none), at 1e-6
    z = np.concatenate([(counts - exact[name]) / noise_std for name, counts in ref.feature_counts.items()])
    assert abs(z.mean()) * np.sqrt(len(z)) < 5
    assert chi2.sf(z @ z, len(z)) > 1e-6 and chi2.cdf(z @ z, len(z)) > 1e-6, (z @ z, len(z))
    csi = characteristic_stability(ref.feature_counts, exact, pkg.schema, noise_std=ref.feature_noise_std)
    assert ref.feature_noise_std == pytest.approx(noise_std, rel=0.2)
    for name, r in csi.items():  # the rows the counts came from: no false alarm (too noisy ones say so)
        assert r.light in ("stable", "unknown"), (name, r.psi, r.noise_floor)
        assert r.reliable == (r.light == "stable")
    # the score reference is the exported model's scores of the pooled holdouts (exact in simulation)
    mine = np.bincount(score_bin_index(pkg.predict_pd(holdout), SCORE_BINS), minlength=SCORE_BINS)
    assert len(ref.score_neg) == SCORE_BINS and ref.score_counts.sum() == len(holdout)
    assert np.abs(ref.score_counts - mine).sum() <= 0.002 * len(holdout)
    holdout.drop(columns=["default_next_month"]).to_csv(tmp_path / "holdout.csv", index=False)
    s = _summary(run_fedcredit("monitor", "--model", run_dir / "model", "--data", tmp_path / "holdout.csv",
                               "--json", timeout=300))
    assert s["score_psi"] < 0.005 and s["score_light"] == "stable" and s["reference"]["dp"] is True


def test_uniform_bin_index_is_the_binary_search_it_replaces():
    """feature_statistics bins by division with a correction; the bins must be exactly those of
    ``searchsorted(edges, t, side="right") − 1``, at and next to every edge too."""
    from models.encoder import uniform_bin_index

    rng = np.random.default_rng(0)
    checked = []
    for f in load_schema().features:
        if f.kind != "numeric":
            continue
        e = f.bin_edges()
        t = np.concatenate([rng.uniform(e[0], e[-1], 50_000), e, np.nextafter(e, -np.inf), np.nextafter(e, np.inf)])
        t = np.clip(t, e[0], e[-1])
        expected = np.clip(np.searchsorted(e, t, side="right") - 1, 0, len(e) - 2)
        np.testing.assert_array_equal(uniform_bin_index(t, e), expected, err_msg=f.name)
        checked.append(f.name)
    assert len(checked) >= 10  # the default schema has 14 numeric features


def test_feature_counts_of_the_scoring_pass_are_those_of_feature_statistics(monitored, monkeypatch):
    """monitor counts the features in the scoring pass from the values the encoder converts anyway:
    block by block, the counts must be exactly feature_statistics' of the whole table, the PDs
    unchanged — and a feature the encoder converts differently from the schema (another range)
    is counted from the table."""
    import copy

    from clients import score_command
    from clients.scored_table import load_table, package_pd
    from models.encoder import feature_statistics
    from models.package import load_package

    d, _, _, _ = monitored
    pkg = load_package(d / "model")
    data = load_table(d / "drifted.csv", pkg)
    expected, pd_plain = feature_statistics(data.table, pkg.schema), package_pd(pkg, data.table)
    monkeypatch.setattr(score_command, "SCORE_ROWS_PER_BLOCK", 1000)  # several blocks, the last one short
    assert {"credit_limit", "education"} <= pkg.encoder.converted_like_schema(pkg.schema)
    counts = {}
    pd_values, _ = score_command.score_rows(pkg, pkg.model(), data.table, counts=counts)
    np.testing.assert_array_equal(pd_values, pd_plain)
    assert list(counts) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(counts[name], expected[name], err_msg=name)
    other = copy.deepcopy(pkg)
    limit = next(e for e in other.encoder.features if e.name == "credit_limit")
    limit.value_range = [limit.value_range[0], limit.value_range[1] / 100]  # clips where the schema does not
    assert "credit_limit" not in other.encoder.converted_like_schema(other.schema)
    counts = {}
    score_command.score_rows(other, other.model(), data.table, counts=counts)
    for name in expected:
        np.testing.assert_array_equal(counts[name], expected[name], err_msg=name)
