"""The node owns the budget: what the node enforces whatever the coordinator asks.

These tests call the node's handlers (clients.node — what the ClientApp runs for each message)
with a deployment-style node config and a real file and privacy state dir; the Flower-level
checks are in tests/test_simulation.py and tests/test_deploy.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clients import node as N
from configs.errors import UserError
from privacy.accountant import compute_epsilon, read_state
from tests.node_messages import round_config
from tests.tables import synthetic_bank_csv


@pytest.fixture(scope="module")
def bank_file(tmp_path_factory):
    return synthetic_bank_csv(tmp_path_factory.mktemp("bank"), rows=2500, seed=11)


def policy(bank_file, state_dir, **extra):
    cfg = {"data-path": str(bank_file), "state-dir": str(state_dir), "institution-id": "bank", "max-epsilon": 1.0}
    cfg.update(extra)
    return N.policy_from_context(cfg, {})


def spent(state_dir) -> float:
    (entry,) = read_state(state_dir)
    return float(entry["epsilon_spent"])


def test_run_config_cannot_raise_the_nodes_epsilon(bank_file, tmp_path):
    p = policy(bank_file, tmp_path / "state")
    state: dict = {}
    for rnd in (1, 2, 3):
        # the run asks for far more, and tries the node's own keys and the simulation's budget key
        cfg, w = round_config(p, rnd, 3, **{"target-epsilon": 50.0, "max-epsilon": 50.0, "delta": 0.1,
                                            "sim-max-epsilon": 50.0})
        _, metrics = N.train(p, w, cfg, state)
        assert metrics["epsilon-budget"] == 1.0
        assert metrics["epsilon-spent"] <= 1.0 + 1e-9
    assert 0.9 < spent(tmp_path / "state") <= 1.0 + 1e-9
    # the coordinator asks for a 4th round the node did not plan: refused, nothing more spent
    before = spent(tmp_path / "state")
    cfg, w = round_config(p, 4, 3)
    with pytest.raises(N.NodeRefusal) as exc:
        N.train(p, w, cfg, state)
    assert exc.value.reason == "budget-exhausted"
    assert spent(tmp_path / "state") == before
    # the refusal tells the coordinator the (public) lifetime figures, nothing else
    assert exc.value.metrics == {"epsilon-spent": pytest.approx(before), "epsilon-budget": 1.0}


# what a DP training reply may carry besides the update: the example count and the accounting
# figures docs/privacy.md lists as public (functions of public parameters and n)
PUBLIC_TRAIN_METRICS = {"num-examples", "epsilon-spent", "epsilon-budget", "delta", "noise-multiplier",
                        "sample-rate", "steps"}


def test_a_dp_training_reply_carries_only_public_figures(bank_file, tmp_path):
    p = policy(bank_file, tmp_path / "state")
    cfg, w = round_config(p, 1, 2)
    _, metrics = N.train(p, w, cfg, {})
    assert set(metrics) <= PUBLIC_TRAIN_METRICS, set(metrics) - PUBLIC_TRAIN_METRICS
    assert "train-loss" not in metrics  # an exact function of the private batches: never under DP
    docs = (Path(__file__).parents[1] / "docs" / "privacy.md").read_text()
    assert "ε spent, δ, budget, σ, q, steps" in docs and "number of examples" in docs


def test_target_epsilon_lowers_what_one_run_spends(bank_file, tmp_path):
    p = policy(bank_file, tmp_path / "state", **{"max-epsilon": 4.0})
    state: dict = {}
    for rnd in (1, 2):
        cfg, w = round_config(p, rnd, 2, **{"target-epsilon": 0.5})
        N.train(p, w, cfg, state)
    assert 0.4 < spent(tmp_path / "state") <= 0.5 + 1e-9


def test_reported_epsilon_equals_a_recomputation_from_the_stored_events(bank_file, tmp_path):
    from privacy.accountant import PrivacyEvent

    p = policy(bank_file, tmp_path / "state", **{"max-epsilon": 2.0})
    cfg, w = round_config(p, 1, 2)
    _, metrics = N.answer_statistics(p, cfg)
    _, metrics = N.train(p, w, cfg, {})
    (entry,) = read_state(tmp_path / "state")
    events = [PrivacyEvent.from_dict(e) for e in entry["events"]]
    # the row counts (released once per table version), the statistics, the round
    assert [e.kind for e in events] == ["count", "count", "statistics", "train"]
    assert metrics["epsilon-spent"] == pytest.approx(compute_epsilon(events, entry["delta"]), rel=1e-9)


def test_no_budget_in_node_config_means_no_release(bank_file, tmp_path):
    p = N.policy_from_context({"data-path": str(bank_file), "state-dir": str(tmp_path / "s")}, {})
    cfg, w = round_config(p, 1, 2)
    with pytest.raises(N.NodeRefusal, match="max-epsilon"):
        N.train(p, w, cfg, {})
    with pytest.raises(N.NodeRefusal, match="max-epsilon"):
        N.answer_statistics(p, cfg)


def test_non_private_training_needs_the_nodes_consent(bank_file, tmp_path):
    p = policy(bank_file, tmp_path / "state")
    cfg, w = round_config(p, 1, 2, dp=False)
    with pytest.raises(N.NodeRefusal, match="allow-non-private") as exc:
        N.train(p, w, cfg, {})
    assert exc.value.reason == "policy"
    allowed = policy(bank_file, tmp_path / "state2", **{"allow-non-private": "true"})
    _, metrics = N.train(allowed, w, cfg, {})
    assert "epsilon-spent" not in metrics


def test_deployment_nodes_release_noised_or_no_evaluation(bank_file, tmp_path):
    with pytest.raises(UserError, match="simulation only"):
        policy(bank_file, tmp_path / "s", **{"release-eval": "exact"})
    p = policy(bank_file, tmp_path / "s", **{"max-epsilon": 3.0})
    assert p.release_eval == "noised"
    cfg, w = round_config(p, 1, 2)
    arrays, _, mode = N.evaluate(p, w, cfg)
    assert mode == "noised"
    assert len(arrays["hist-neg"]) < 8000  # coarse, noised histograms
    assert {"fair/sex", "fair/age"} <= set(arrays)
    kinds = [e["kind"] for e in read_state(tmp_path / "s")[0]["events"]]
    # the noisy row counts, then histograms, sums and group counts: one accounted release
    assert kinds == ["count", "count", "evaluation"]
    off = policy(bank_file, tmp_path / "s2", **{"release-eval": "off"})
    arrays, _, mode = N.evaluate(off, w, cfg)
    assert arrays is None and mode == "off"


def test_statistics_are_refused_when_no_training_would_fit(bank_file, tmp_path):
    p = policy(bank_file, tmp_path / "state", **{"max-epsilon": 1.0})
    state: dict = {}
    for rnd in (1, 2):
        cfg, w = round_config(p, rnd, 2)
        N.train(p, w, cfg, state)
    before = spent(tmp_path / "state")
    cfg, _ = round_config(p, 1, 2, **{"run-id": "r2"})
    with pytest.raises(N.NodeRefusal) as exc:
        N.answer_statistics(p, cfg)
    assert exc.value.reason == "budget-exhausted"
    assert spent(tmp_path / "state") == before


def _fresh_rdp(events, delta) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in events]
    return acc.get_epsilon(delta) if events else 0.0


def test_training_and_holdout_releases_compose_in_parallel(bank_file, tmp_path):
    """Training reads only training rows, evaluation only the holdout: a record is on one side,
    so its ε is that side's; the ledger reports the worse side, each from a fresh accountant."""
    p = policy(bank_file, tmp_path / "state", **{"max-epsilon": 3.0})
    state: dict = {}
    cfg, w = round_config(p, 1, 2)
    N.answer_statistics(p, cfg)
    for rnd in (1, 2):
        cfg, w = round_config(p, rnd, 2)
        N.train(p, w, cfg, state)
        N.evaluate(p, w, cfg)
    (entry,) = read_state(tmp_path / "state")
    train_side = [e for e in entry["events"] if e["rows"] == "train"]
    holdout_side = [e for e in entry["events"] if e["rows"] == "holdout"]
    assert [e["kind"] for e in train_side] == ["count", "statistics", "train", "train"]
    assert [e["kind"] for e in holdout_side] == ["count", "evaluation", "evaluation"]
    assert len({e["split"] for e in entry["events"]}) == 1
    expected = max(_fresh_rdp(train_side, entry["delta"]), _fresh_rdp(holdout_side, entry["delta"]))
    assert entry["epsilon_spent"] == pytest.approx(expected, rel=1e-6)
    assert entry["epsilon_spent"] < _fresh_rdp(entry["events"], entry["delta"])  # sequential would be larger


def test_events_of_another_split_or_without_a_side_compose_with_both_sides():
    from privacy.accountant import PrivacyEvent, disjoint_sides

    split = "row-hash/v2 fraction=0.2 seed=0"
    a = PrivacyEvent("train", 1.0, 0.1, 100, rows="train", split=split, data="v1")
    b = PrivacyEvent("evaluation", 5.0, 1.0, 1, rows="holdout", split=split, data="v1")
    c = PrivacyEvent("evaluation", 5.0, 1.0, 1, rows="holdout", split="row-hash/v2 fraction=0.2 seed=1", data="v1")
    legacy = PrivacyEvent("train", 1.0, 0.1, 100)
    assert disjoint_sides([a, b]) is not None
    assert compute_epsilon([a, b], 1e-5) == pytest.approx(
        max(compute_epsilon([a], 1e-5), compute_epsilon([b], 1e-5)))
    # an event of another split is another "version": a borrower may be on the holdout side there
    # and on the training side here, so the worst case composes a with c (and b with c)
    assert disjoint_sides([a, b, c]) is None
    assert compute_epsilon([a, b, c], 1e-5) == pytest.approx(_fresh_rdp([a.to_dict(), c.to_dict()], 1e-5), rel=1e-6)
    # an event without a side reads every row: it composes with both sides
    assert disjoint_sides([a, b, legacy]) is None
    assert compute_epsilon([a, b, legacy], 1e-5) == pytest.approx(
        max(_fresh_rdp([a.to_dict(), legacy.to_dict()], 1e-5), _fresh_rdp([b.to_dict(), legacy.to_dict()], 1e-5)),
        rel=1e-6)


def test_holdout_membership_depends_on_the_row_alone(bank_file):
    """Adding or removing borrowers never moves another borrower between training and holdout."""
    from clients.dataset import holdout_mask

    data = N.load_node_data(policy(bank_file, "/tmp/unused-state"))
    table = __import__("pandas").concat([data.split.train, data.split.holdout], ignore_index=True)
    full = holdout_mask(table, data.schema)
    part = holdout_mask(table.iloc[100:], data.schema)
    assert np.array_equal(full[100:], part)
    assert 0.17 < full.mean() < 0.23


def test_plan_made_for_the_statistics_is_reused_by_the_first_round_only_when_nothing_changed(
        bank_file, tmp_path, monkeypatch):
    """The statistics query plans the run's σ (to refuse a run it cannot train in); the first
    training round takes that plan instead of searching σ again — the same σ — unless the
    ledger or the run's shape changed in between."""
    from privacy import planning

    calls = []
    real = planning.plan_noise
    monkeypatch.setattr(planning, "plan_noise", lambda **kw: calls.append(kw) or real(**kw))

    def stats_then_train(state_dir, first_round=1, **changed):
        p = policy(bank_file, state_dir)
        cfg, w = round_config(p, first_round, 3)
        stats_cfg = {k: cfg[k] for k in ("run-id", "num-server-rounds", "local-epochs", "batch-size", "dp",
                                         "target-epsilon")}
        state: dict = {}
        N.answer_statistics(p, stats_cfg, state)
        assert state["plan"]["planned-at"] == "statistics"
        _, metrics = N.train(p, w, dict(cfg, **changed), state)
        return metrics["noise-multiplier"], state

    calls.clear()
    sigma, state = stats_then_train(tmp_path / "a")
    assert len(calls) == 1 and "planned-at" not in state["plan"]  # planned once, adopted by round 1
    fresh = real(**calls[0])
    assert sigma == fresh.noise_multiplier

    calls.clear()
    stats_then_train(tmp_path / "b", **{"batch-size": 128})  # another shape: planned again
    assert len(calls) == 2
    calls.clear()
    stats_then_train(tmp_path / "c", first_round=2)  # first trained in round 2: planned for the rounds left
    assert len(calls) == 2


def test_a_virtual_nodes_synthetic_table_and_the_same_rows_read_from_csv_or_parquet_split_alike(tmp_path):
    """The split and the table version hash canonical cell values, not dtypes: the synthetic table a
    virtual node generates (int64, pandas str), the CSV ``data synth`` writes for it (read back as
    float64 / object), a Parquet copy with int32 and categorical columns in another column order —
    every borrower on the same side, one fingerprint (the audit of a synthetic simulation needs it)."""
    import pandas as pd

    from clients.dataset import data_fingerprint, holdout_mask, row_hashes
    from simulation.synthetic import write_csv
    from simulation.virtual_nodes import virtual_policy

    virtual = virtual_policy(1, 3, {"synthetic-scale": 0.1, "synthetic-seed": 7, "state-root": str(tmp_path / "s")})
    generated = N.load_node_data(virtual)
    table = pd.concat([generated.split.train, generated.split.holdout], ignore_index=True)
    assert str(table["credit_limit"].dtype) == "int64"  # what makes a dtype-keyed hash differ
    write_csv(table, tmp_path / "lender.csv")
    read = N.load_node_data(policy(tmp_path / "lender.csv", tmp_path / "state"))
    assert str(read.split.train["credit_limit"].dtype) == "float64"
    assert read.split.fingerprint == generated.split.fingerprint
    sides = {"train": set(generated.split.train["borrower_id"]), "holdout": set(generated.split.holdout["borrower_id"])}
    assert sides == {"train": set(read.split.train["borrower_id"]), "holdout": set(read.split.holdout["borrower_id"])}

    stored = table[list(reversed(table.columns))].copy()
    for c in stored.columns:
        if str(stored[c].dtype) == "int64":
            stored[c] = stored[c].astype("int32")
        elif c != "borrower_id":
            stored[c] = stored[c].astype("category")
    stored.to_parquet(tmp_path / "lender.parquet")
    parquet = pd.read_parquet(tmp_path / "lender.parquet")
    assert np.array_equal(row_hashes(parquet, read.schema), row_hashes(table, read.schema))
    assert data_fingerprint(parquet, read.schema) == read.split.fingerprint
    assert np.array_equal(holdout_mask(parquet, read.schema, 0.3, 5), holdout_mask(table, read.schema, 0.3, 5))
    # the cells still matter: one changed value is another table version and may move that row only
    changed = table.copy()
    changed.loc[0, "credit_limit"] += 10_000
    assert data_fingerprint(changed, read.schema) != read.split.fingerprint
    assert np.array_equal(row_hashes(changed, read.schema)[1:], row_hashes(table, read.schema)[1:])
