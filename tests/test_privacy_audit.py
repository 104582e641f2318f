"""Membership-inference audit: finds leakage in an over-fit model, none in a DP-SGD (ε = 1) model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from configs.errors import UserError
from models.encoder import fit_encoder_from_tables
from models.network import ModelSpec, build_model, get_weights
from models.package import ModelPackage, save_package
from models.training import LocalTrainConfig, train_local
from privacy.audit import _bound, audit_model, clopper_pearson_lower, clopper_pearson_upper
from privacy.dpsgd import DPSGDGradients
from privacy.planning import plan_noise, sample_rate_for, steps_per_epoch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_table(schema, n: int, seed: int) -> pd.DataFrame:
    """Valid rows in schema format with labels independent of the features: only memorisation fits them."""
    rng = np.random.default_rng(seed)
    cols = {schema.id_column: [f"r{seed}-{i}" for i in range(n)]} if schema.id_column else {}
    for f in schema.features:
        if f.kind == "categorical":
            cols[f.name] = rng.choice(list(f.categories), size=n)
        elif f.kind == "ordinal":
            cols[f.name] = rng.integers(int(f.range[0]), int(f.range[1]) + 1, size=n).astype(float)
        elif f.kind == "binary":
            cols[f.name] = rng.integers(0, 2, size=n).astype(float)
        else:
            lo, hi = f.range
            cols[f.name] = np.round(np.clip(rng.lognormal(np.log(max(lo, 1) + 3000), 1.5, size=n), lo, hi))
    cols[schema.label.name] = rng.integers(0, 2, size=n)
    return pd.DataFrame(cols)[schema.columns]


def make_package(tmp_path, schema, members, model_fn, hidden):
    # the encoder comes from other rows (in a run: from DP statistics), so it carries no membership signal
    enc = fit_encoder_from_tables(schema, [random_table(schema, 1000, 99)])
    x = enc.transform(members)
    y = members[schema.label.name].to_numpy(dtype=np.float32)
    spec = ModelSpec("mlp", enc.n_outputs, hidden)
    net = build_model(spec, seed=0)
    model_fn(net, x, y)
    return save_package(tmp_path / "model", ModelPackage(spec=spec, encoder=enc, weights=get_weights(net),
                                                         schema=schema))


def write_sets(tmp_path, schema, members, non_members):
    from simulation.synthetic import write_csv

    write_csv(members, tmp_path / "members.csv")
    write_csv(non_members, tmp_path / "non_members.csv")
    return tmp_path / "members.csv", tmp_path / "non_members.csv"


def test_overfit_non_private_model_leaks(tmp_path, schema):
    t = random_table(schema, 600, 1)
    members, non = t.iloc[:300].reset_index(drop=True), t.iloc[300:].reset_index(drop=True)

    def overfit(net, x, y):
        train_local(net, x, y, LocalTrainConfig(local_epochs=60, batch_size=32, learning_rate=3e-3))

    pkg = make_package(tmp_path, schema, members, overfit, (128, 128))
    m, n = write_sets(tmp_path, schema, members, non)
    report = audit_model(pkg, m, n, reference_epochs=30, seed=0)
    assert report["members"] == 300 and report["non_members"] == 300
    assert report["model"]["loss_members"] < 0.05 < report["model"]["loss_non_members"]
    names = [a["name"] for a in report["attacks"]]
    assert names == ["loss-threshold", "calibrated"]
    by = {a["name"]: a for a in report["attacks"]}
    assert by["loss-threshold"]["auc"] > 0.6
    assert by["calibrated"]["auc"] > 0.6
    assert report["auc"] == max(a["auc"] for a in report["attacks"])
    assert report["epsilon_lower_bound"] > 0.5
    assert 0 <= by["loss-threshold"]["tpr_at_0.1pct_fpr"] <= by["loss-threshold"]["tpr_at_1pct_fpr"] <= 1


def test_dp_sgd_model_at_epsilon_1_does_not_leak(tmp_path, schema):
    t = random_table(schema, 4000, 2)
    members, non = t.iloc[:2000].reset_index(drop=True), t.iloc[2000:].reset_index(drop=True)
    epochs, batch = 10, 64

    def dp_train(net, x, y):
        q = sample_rate_for(len(x), batch)
        steps = epochs * steps_per_epoch(len(x), batch)
        plan = plan_noise(prior_events=[], max_epsilon=1.0, delta=1e-5, sample_rate=q, steps_per_round=steps, rounds=1)
        assert plan.epsilon_after_round[-1] <= 1.0
        train_local(net, x, y, LocalTrainConfig(local_epochs=epochs, batch_size=batch, learning_rate=3e-3),
                    DPSGDGradients(plan.noise_multiplier, 1.0, q, seed=0))

    pkg = make_package(tmp_path, schema, members, dp_train, (128, 128))
    m, n = write_sets(tmp_path, schema, members, non)
    report = audit_model(pkg, m, n, reference_epochs=5, seed=0)
    for attack in report["attacks"]:
        assert attack["auc"] <= 0.55, attack
    assert report["epsilon_lower_bound"] <= 1.0


def test_epsilon_bound_statistics():
    # Clopper–Pearson: exact edge cases and coverage direction
    assert clopper_pearson_lower(0, 10, 0.05) == 0.0 and clopper_pearson_upper(10, 10, 0.05) == 1.0
    assert clopper_pearson_lower(50, 100, 0.025) < 0.5 < clopper_pearson_upper(50, 100, 0.025)
    assert clopper_pearson_upper(0, 100, 0.05) == pytest.approx(1 - 0.05 ** (1 / 100))
    # a perfect test on 100 + 100 rows: ε ≥ ln(TPR_lo / FPR_hi) with FPR_hi = 1 − (α/2)^(1/100)
    alpha = 0.05
    fpr_hi = 1 - (alpha / 2) ** (1 / 100)
    tpr_lo = (alpha / 2) ** (1 / 100)
    assert _bound([100], 100, [0], 100, alpha, 0.0)[0] == pytest.approx(np.log(tpr_lo / fpr_hi))
    # a useless test bounds nothing
    assert _bound([50], 100, [50], 100, alpha, 1e-5)[0] == 0.0


def test_audit_input_errors(tmp_path, schema):
    with pytest.raises(UserError, match="model.json"):
        audit_model(tmp_path, tmp_path / "a.csv", tmp_path / "b.csv")
    t = random_table(schema, 60, 3)
    pkg = make_package(tmp_path, schema, t, lambda *a: None, (8,))
    m, _ = write_sets(tmp_path, schema, t, t)
    tiny = tmp_path / "tiny.csv"
    t.iloc[:5].to_csv(tiny, index=False)
    with pytest.raises(UserError, match="at least 20"):
        audit_model(pkg, m, tiny)
    with pytest.raises(UserError):
        audit_model(pkg, m, tmp_path / "missing.csv")
