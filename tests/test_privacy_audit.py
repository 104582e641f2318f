"""Membership-inference audit: it sees leakage where there is some, and its ε lower bound is sound.

The ε lower bound (Steinke, Nasr & Jagielski 2023) is a hypothesis test: with probability at
least the confidence it stays at or below the true ε of the mechanism. So the tests are:

* an over-fit non-private model: its true ε is unbounded, the bound must be large — larger than
  the ε = 1 of the DP model below, i.e. the audit must *refute* "this model is as private as the
  DP one". That threshold is the claim being tested, not a tolerance picked from a run;
* the same training on rows whose membership the model never saw: the bound must be 0 and the
  AUC near 0.5 (the audit can fail to find leakage, it does not invent it);
* a DP-SGD model at accounted ε = 1: the bound must stay ≤ 1;
* the bound itself on a mechanism whose ε is known exactly (randomised response): over many
  trials it exceeds the true ε at most about (1 − confidence) of the time, and it is not vacuous.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from clients.dataset import holdout_mask
from configs.errors import UserError
from models.encoder import fit_encoder_from_tables
from models.network import ModelSpec, build_model, get_weights
from models.package import ModelPackage, save_package
from models.training import LocalTrainConfig, train_local
from privacy.audit import AuditSettings, audit_membership, fair_coin_canaries
from privacy.audit_bounds import correct_guesses, epsilon_for, epsilon_lower_bound, guess_grid, p_value
from privacy.dpsgd import DPSGDGradients
from privacy.planning import plan_noise, sample_rate_for, steps_per_epoch
from tests import tables

OVERFIT = LocalTrainConfig(local_epochs=60, batch_size=32, learning_rate=3e-3)
REFERENCE = LocalTrainConfig(local_epochs=20, batch_size=32, learning_rate=3e-3)
DP_EPSILON = 1.0


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def random_table(schema, n: int, seed: int) -> pd.DataFrame:
    """Valid rows in schema format with labels independent of the features: only memorisation fits them."""
    return tables.random_table(schema, n, seed, id_prefix="r", numeric=tables.rounded_amounts)


def encoder_from_other_rows(schema):
    """The encoder comes from other rows (in a run: from DP statistics), so it carries no membership."""
    return fit_encoder_from_tables(schema, [random_table(schema, 1000, 99)])


def trained_model(spec, x, y, cfg=OVERFIT, rule=None):
    net = build_model(spec, seed=0)
    train_local(net, x, y, cfg, rule)
    return net


def node_split(table, schema, fraction=0.5, seed=0):
    """Membership as the node decides it: a row is trained on unless its content hash puts it in
    the holdout (``clients.dataset.holdout_mask``) — an independent draw per row."""
    return ~holdout_mask(table, schema, fraction, seed)


def audit(net, spec, x, y, member, p, references=4, **kw):
    settings = AuditSettings(reference_training=REFERENCE, reference_models=references, **kw)
    return audit_membership(net, spec, x, y, member, p, settings)


# ------------------------------------------------------------------ the audit on trained models
def test_overfit_non_private_model_shows_a_large_epsilon_lower_bound(schema):
    table = random_table(schema, 600, 1)
    member = node_split(table, schema)  # holdout fraction ½: every row is a fair-coin canary
    enc = encoder_from_other_rows(schema)
    x, y = enc.transform(table), table[schema.label.name].to_numpy(np.float32)
    spec = ModelSpec("mlp", enc.n_outputs, (128, 128))
    net = trained_model(spec, x[member], y[member])
    report = audit(net, spec, x, y, member, 0.5)
    assert report["model"]["loss_members"] < 0.1 < 0.69 < report["model"]["loss_non_members"]  # memorised
    assert report["canaries"]["total"] == 600 and report["canaries"]["duplicates_excluded"] == 0
    assert [a["name"] for a in report["attacks"]] == ["loss", "lira"]
    by = {a["name"]: a for a in report["attacks"]}
    for a in report["attacks"]:
        assert a["auc"] > 0.75, a
        assert 0 <= a["tpr_at_0.1pct_fpr"] <= a["tpr_at_1pct_fpr"] <= 1
        assert a["test"]["correct"] <= a["test"]["guesses"] <= 600
    # at 95 % confidence the model is shown not to be as private as the ε = 1 DP model below
    assert report["epsilon_lower_bound"] > DP_EPSILON
    assert report["epsilon_lower_bound"] == max(a["epsilon_lower_bound"] for a in report["attacks"])
    assert report["bound"]["confidence_per_attack"] == pytest.approx(1 - 0.05 / 2)
    # the reported test re-derives the bound from its counts
    best = max(report["attacks"], key=lambda a: a["epsilon_lower_bound"])
    t = best["test"]
    assert epsilon_for(600, t["guesses"], t["correct"], report["delta"], t["alpha_per_candidate"]) == \
        pytest.approx(best["epsilon_lower_bound"])
    assert by["lira"]["epsilon_lower_bound"] > 0


def test_audit_finds_nothing_when_membership_never_reached_the_model(schema):
    """The same over-fit training, but on other rows: the audited rows' membership coins are
    independent of the model, so no attack can beat chance and the bound must be 0."""
    table, other = random_table(schema, 600, 1), random_table(schema, 600, 2)
    enc = encoder_from_other_rows(schema)
    spec = ModelSpec("mlp", enc.n_outputs, (128, 128))
    xo, yo = enc.transform(other), other[schema.label.name].to_numpy(np.float32)
    net = trained_model(spec, xo[node_split(other, schema)], yo[node_split(other, schema)])
    x, y = enc.transform(table), table[schema.label.name].to_numpy(np.float32)
    report = audit(net, spec, x, y, node_split(table, schema), 0.5)
    for a in report["attacks"]:
        assert abs(a["auc"] - 0.5) < 0.08, a  # ±0.08 ≈ 3 standard errors of an AUC on 300 + 300 rows
    assert report["epsilon_lower_bound"] == 0.0


def test_dp_sgd_model_stays_below_its_accounted_epsilon(schema):
    table = random_table(schema, 2000, 3)
    member = node_split(table, schema, fraction=0.2)  # the node's default split: canaries are subsampled
    enc = encoder_from_other_rows(schema)
    x, y = enc.transform(table), table[schema.label.name].to_numpy(np.float32)
    xm, ym = x[member], y[member]
    epochs, batch = 10, 64
    q = sample_rate_for(len(xm), batch)
    plan = plan_noise(prior_events=[], max_epsilon=DP_EPSILON, delta=1e-5, sample_rate=q,
                      steps_per_round=epochs * steps_per_epoch(len(xm), batch), rounds=1)
    accounted = plan.epsilon_after_round[-1]
    assert accounted <= DP_EPSILON
    spec = ModelSpec("mlp", enc.n_outputs, (128, 128))
    net = trained_model(spec, xm, ym, LocalTrainConfig(local_epochs=epochs, batch_size=batch, learning_rate=3e-3),
                        DPSGDGradients(plan.noise_multiplier, 1.0, q, seed=0))
    report = audit(net, spec, x, y, member, 0.8, delta=1e-5)
    canaries = report["canaries"]
    assert canaries["non_members"] == report["non_members"]  # every holdout row, and about as many members
    assert abs(canaries["members"] - canaries["non_members"]) < 4 * math.sqrt(canaries["non_members"])
    assert report["epsilon_lower_bound"] <= accounted
    for a in report["attacks"]:
        assert abs(a["auc"] - 0.5) < 0.1, a


# ------------------------------------------------------------------ the bound
def test_p_value_is_the_binomial_tail_for_pure_dp_and_grows_with_delta():
    for m, r, v, eps in ((1000, 100, 70, 0.5), (500, 40, 40, 2.0), (200, 10, 3, 0.0)):
        q = math.exp(eps) / (1 + math.exp(eps))
        assert p_value(m, r, v, eps, 0.0) == pytest.approx(float(binom.sf(v - 1, r, q)))
        assert p_value(m, r, v, eps, 1e-4) >= p_value(m, r, v, eps, 0.0)
    assert p_value(10, 5, 0, 1.0, 0.0) == 1.0
    with pytest.raises(ValueError):
        p_value(10, 5, 6, 1.0, 0.0)


def test_epsilon_for_perfect_guesses_and_chance():
    # r guesses, all right, δ = 0: rejected while q^r ≤ α, i.e. ε = logit(α^(1/r))
    a = 0.05 ** (1 / 100)
    assert epsilon_for(1000, 100, 100, 0.0, 0.05) == pytest.approx(math.log(a / (1 - a)), abs=1e-5)
    assert epsilon_for(1000, 100, 50, 1e-5, 0.05) == 0.0  # chance
    assert epsilon_for(1000, 100, 60, 1e-5, 0.05) < epsilon_for(1000, 100, 70, 1e-5, 0.05)
    assert epsilon_for(1000, 100, 70, 1e-3, 0.05) < epsilon_for(1000, 100, 70, 0.0, 0.05)  # δ buys slack


def test_guesses_are_counted_from_both_ends():
    score = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    member = np.array([True, False, True, False, False, True])
    assert correct_guesses(score, member, 2, 0) == 1
    assert correct_guesses(score, member, 1, 2) == 1 + 1
    assert correct_guesses(score, member, 3, 3) == 2 + 2
    grid = guess_grid(1000)
    assert len(grid) == len(set(grid)) and all(k1 + k0 <= 1000 for k1, k0 in grid)


def test_bound_is_sound_on_randomised_response():
    """A mechanism with known ε: each canary's score is its membership bit, flipped with
    probability 1/(1 + e^ε) (ε-DP randomised response), plus a tie-breaking jitter. Over 200
    independent audits the 95 % bound may exceed ε in about 5 %; we allow what a Binomial(200,
    0.05) reaches with probability 0.999 (20). The bound must also be informative (> 0) in most."""
    eps, m, trials = 1.0, 1000, 200
    rng = np.random.default_rng(12)
    above, positive = 0, 0
    for _ in range(trials):
        member = rng.random(m) < 0.5
        keep = rng.random(m) < math.exp(eps) / (1 + math.exp(eps))
        score = np.where(keep, member, ~member).astype(float) + 1e-3 * rng.random(m)
        b = epsilon_lower_bound(score, member, delta=0.0, alpha=0.05)["epsilon_lower_bound"]
        above += b > eps
        positive += b > 0
    assert above <= binom.ppf(0.999, trials, 0.05)
    assert positive > trials / 2


# ------------------------------------------------------------------ canaries and settings
def test_canaries_are_fair_coins_from_a_biased_split(schema):
    rng = np.random.default_rng(5)
    n, p = 20000, 0.8
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (rng.random(n) < 0.3).astype(np.float32)
    member = rng.random(n) < p
    x[1] = x[0]  # a duplicated borrower: its two rows share one coin, so neither is a canary
    y[1] = y[0]
    mask, duplicates = fair_coin_canaries(x, y, member, p, np.random.default_rng(0))
    assert duplicates == 2 and not mask[0] and not mask[1]
    assert (mask & ~member).sum() == (~member).sum() - int(not member[0]) - int(not member[1])
    share = member[mask].mean()
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / mask.sum())
    with pytest.raises(UserError, match="training side"):
        fair_coin_canaries(x, y, member, 1.0, rng)


def test_settings_and_small_tables_are_user_errors(schema):
    with pytest.raises(UserError, match="even"):
        AuditSettings(reference_training=REFERENCE, reference_models=3)
    with pytest.raises(UserError, match="confidence"):
        AuditSettings(reference_training=REFERENCE, confidence=1.0)
    table = random_table(schema, 30, 4)
    enc = encoder_from_other_rows(schema)
    x, y = enc.transform(table), table[schema.label.name].to_numpy(np.float32)
    spec = ModelSpec("mlp", enc.n_outputs, (8,))
    with pytest.raises(UserError, match="at least 20"):
        audit(build_model(spec), spec, x, y, node_split(table, schema, 0.2), 0.8, references=0)


# ------------------------------------------------------------------ the command
def save_model(tmp_path, schema, spec, enc, net, run_config: str | None = None):
    run = tmp_path / "run"
    pkg = save_package(run / "model", ModelPackage(spec=spec, encoder=enc, weights=get_weights(net), schema=schema))
    if run_config is not None:
        (run / "config.resolved.toml").write_text(run_config)
    return pkg


def test_audit_command(tmp_path, schema, capsys):
    from clients.validation import load_institution_table
    from fedcredit.cli import main
    from simulation.synthetic import write_csv

    data = tmp_path / "bank.csv"
    write_csv(random_table(schema, 400, 6), data)
    table = load_institution_table(data, schema, min_rows=0, min_positives=0).table  # as a node reads it
    member = node_split(table, schema, fraction=0.5, seed=3)
    enc = encoder_from_other_rows(schema)
    x, y = enc.transform(table), table[schema.label.name].to_numpy(np.float32)
    spec = ModelSpec("mlp", enc.n_outputs, (64, 64))
    net = trained_model(spec, x[member], y[member])
    pkg = save_model(tmp_path, schema, spec, enc, net,
                     '[run-config]\nnum-server-rounds = 3\nlocal-epochs = 2\nbatch-size = 32\nlearning-rate = 0.003\n')
    args = ["privacy", "audit", "--model", str(pkg), "--data", str(data), "--holdout-fraction", "0.5",
            "--split-seed", "3", "--reference-models", "2", "--json"]
    assert main(args) == 0
    out = capsys.readouterr().out
    report = __import__("json").loads(out.strip().splitlines()[-1])
    assert report["ok"] and report["rows"] == 400 and report["members"] == int(member.sum())
    resolved = tmp_path / "run" / "config.resolved.toml"
    assert report["reference_training"] == {"epochs": 6, "batch-size": 32, "learning-rate": 0.003,
                                            "optimizer": "adam", "source": str(resolved)}
    assert report["delta"] == 1e-4  # the node's default for 400 rows: largest power of ten ≤ 1/4000
    assert report["epsilon_lower_bound"] > 0 and "leakage shown" in out and "membership-inference attacks" in out
    # the wrong split seed: the audit grades against coins the model never saw, and finds nothing
    assert main(args[:-4] + ["4", "--reference-models", "0", "--json"]) == 0
    wrong = __import__("json").loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert wrong["epsilon_lower_bound"] == 0.0


@pytest.mark.parametrize("change, message", [
    ({"--model": "{tmp}/nowhere"}, "model.json"),
    ({"--data": "{tmp}/missing.csv"}, "missing.csv"),
    ({"--reference-models": "3"}, "--reference-models must be even"),
    ({"--data": "{tmp}/tiny.csv"}, "tiny.csv: only"),  # too few rows for 20 canaries
    ({"--holdout-fraction": "1"}, "--holdout-fraction"),
    ({"--confidence": "1.5"}, "--confidence"),
])
def test_audit_command_user_errors(tmp_path, schema, capsys, change, message):
    from fedcredit.cli import main
    from simulation.synthetic import write_csv

    table = random_table(schema, 100, 7)
    enc = encoder_from_other_rows(schema)
    spec = ModelSpec("mlp", enc.n_outputs, (8,))
    pkg = save_model(tmp_path, schema, spec, enc, build_model(spec))
    write_csv(table, tmp_path / "bank.csv")
    write_csv(table.iloc[:15], tmp_path / "tiny.csv")
    opts = {"--model": str(pkg), "--data": str(tmp_path / "bank.csv"), "--reference-models": "0", **change}
    argv = ["privacy", "audit", "--json"] + [s.format(tmp=tmp_path) for kv in opts.items() for s in kv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse rejects a bad value itself (exit 2, the option named)
        code = exc.code
    captured = capsys.readouterr()
    assert code == 2
    assert message in captured.err and "Traceback" not in captured.err


def test_reference_training_defaults_are_the_run_defaults():
    """Without the run's resolved config, reference models train like a run with the default
    run config; clients/ may not import server/, so the values are kept equal here."""
    from clients.audit_command import RUN_DEFAULTS
    from server.settings import DEFAULTS

    assert RUN_DEFAULTS == {key: DEFAULTS[key] for key in RUN_DEFAULTS}


@pytest.mark.slow
def test_recalibrated_overfit_model_leaks_through_the_command(tmp_path, schema, capsys):
    """Issue 12's case: realistic rows (a synthetic consumer-finance lender, 1,500 rows), a network
    over-fit on the node's training side, then recalibrated as the server does (Platt scaling fitted
    on the holdout's score histograms, folded into the weights). The loss attack is blinded by the
    recalibration; LiRA with aligned reference models still shows ε > 0 at 95 % — i.e. it rejects
    "this model leaks nothing", which is false for a non-private over-fit model."""
    from clients.validation import load_institution_table
    from fedcredit.cli import main
    from models.calibration import calibrate_weights, fit_platt
    from models.metrics import LOGIT_LIMIT
    from models.network import set_weights
    from privacy.audit_attacks import logits
    from simulation.synthetic import consortium_member, write_csv

    _, generated, _ = consortium_member(3, 5, 0.25, 3, schema)
    write_csv(generated, tmp_path / "lender.csv")
    # the table as the node reads it (validated dtypes): the split hashes these values
    table = load_institution_table(tmp_path / "lender.csv", schema).table
    member = node_split(table, schema, fraction=0.2)
    enc = fit_encoder_from_tables(schema, [table[member]])
    x, y = enc.transform(table), table[schema.label.name].to_numpy(np.float32)
    spec = ModelSpec("mlp", enc.n_outputs, (256, 256))
    recipe = LocalTrainConfig(local_epochs=60, batch_size=64, learning_rate=2e-3)
    net = trained_model(spec, x[member], y[member], recipe)
    z = np.clip(logits(net, x[~member]), -LOGIT_LIMIT + 1e-6, LOGIT_LIMIT - 1e-6)
    bins, yh = np.linspace(-LOGIT_LIMIT, LOGIT_LIMIT, 201), y[~member]
    cal = fit_platt(np.histogram(z[yh == 0], bins)[0], np.histogram(z[yh == 1], bins)[0])
    assert 0 < cal.slope < 0.6  # over-confident: the recalibration shrinks every logit
    recalibrated = build_model(spec)
    set_weights(recalibrated, calibrate_weights(get_weights(net), spec, cal))
    pkg = save_model(tmp_path, schema, spec, enc, recalibrated, "[run-config]\nnum-server-rounds = 1\n"
                     "local-epochs = 60\nbatch-size = 64\nlearning-rate = 0.002\n")
    assert main(["privacy", "audit", "--model", str(pkg), "--data", str(tmp_path / "lender.csv"), "--json"]) == 0
    report = __import__("json").loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["model"]["loss_members"] < report["model"]["loss_non_members"] - 0.1
    by = {a["name"]: a for a in report["attacks"]}
    assert by["lira"]["auc"] > by["loss"]["auc"]
    assert by["lira"]["epsilon_lower_bound"] > 0
