"""Figures from DP-noised evaluation releases tell the truth (server side).

The setting the issue found: three holdouts of 300–600 rows, each released through the real
Gaussian mechanism (privacy.dp_release.release_evaluation, σ = 20). Unclipped, the pooled
figures came out as a negative default rate, a mean PD above 1 and a pooled n far from the real
one. Here: every figure stays in its valid range, carries its noise's standard deviation, that
standard deviation matches the spread of the figure over independent releases, and the model
card raises no warning that the noise alone explains.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedcredit import protocol as P
from models.fairness import COUNT_COLUMNS, fairness_metrics, group_labels
from models.metrics import EvaluationSums
from privacy.dp_release import EVALUATION_NOISE_MULTIPLIER, release_evaluation
from server.evaluation import pool_evaluations
from server.card_warnings import card_warnings
from server.replies import SortedReplies

HOLDOUTS = {"bank-a": 300, "bank-b": 450, "lender-c": 600}
CUTOFF = 0.2


def _holdout(rows: int, seed: int, schema):
    """Exact evaluation sums and fairness counts of one holdout (PDs from a model with AUC ≈ 0.75)."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-1.6, 1.1, rows)
    pd_true = 1 / (1 + np.exp(-logit))
    y = (rng.random(rows) < pd_true).astype(int)
    pd_model = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.5, rows))))
    groups = {}
    for f in schema.protected_features:
        g = rng.integers(len(group_labels(f)), size=rows)
        declined = pd_model >= CUTOFF
        cols = [np.ones(rows), y, declined, declined & (y == 1)]
        groups[f.name] = np.stack([np.bincount(g, weights=c.astype(float), minlength=len(group_labels(f)))
                                   for c in cols], axis=1)
    return EvaluationSums.from_scores(pd_model, y), groups


@pytest.fixture(scope="module")
def holdouts(schema):
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity  # Flower private name (flwr pinned to 1.42.*)

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 2, 1, SUPERLINK_NODE_ID  # Message() needs it
    return {who: _holdout(rows, k, schema) for k, (who, rows) in enumerate(HOLDOUTS.items())}


def _noised_replies(holdouts, seed: int) -> SortedReplies:
    accepted, metrics = {}, {}
    for node, (who, (sums, groups)) in enumerate(holdouts.items(), start=1):
        noisy, noisy_groups, _ = release_evaluation(sums, EVALUATION_NOISE_MULTIPLIER,
                                                    np.random.default_rng([seed, node]), groups=groups)
        arrays = {**noisy.to_arrays(), **{f"fair/{k}": v for k, v in noisy_groups.items()}}
        m = {"num-examples": float(sums.n), "noise-multiplier": EVALUATION_NOISE_MULTIPLIER}
        accepted[node] = Message(RecordDict({P.EVAL: P.to_array_record(arrays), P.METRICS: MetricRecord(m),
                                             P.NODE: ConfigRecord({"institution-id": who, "release": "noised"})}),
                                 dst_node_id=node, message_type="evaluate")
        metrics[node] = m
    return SortedReplies(accepted=accepted, metrics=metrics)


def _pool(holdouts, schema, seed: int) -> dict:
    names = dict(enumerate(holdouts, start=1))
    return pool_evaluations(_noised_replies(holdouts, seed), names.__getitem__, schema)


def _truth(holdouts) -> dict:
    total = EvaluationSums()
    for sums, _ in holdouts.values():
        total = total + sums
    return total.metrics()


def test_noised_figures_stay_in_their_valid_ranges(holdouts, schema):
    raw_rates = []
    for seed in range(25):
        out = _pool(holdouts, schema, seed)
        pooled = out["_pooled_eval"]
        raw_rates.append(pooled.positives / pooled.n)  # what the server used to report
        g = out["global"]
        for key in ("auc", "ks", "brier", "mean_pd", "default_rate"):
            assert g[key] is None or 0.0 <= g[key] <= 1.0, (seed, key, g[key])
        assert g["n"] >= 0 and (g["log_loss"] is None or g["log_loss"] >= 0)
        assert g["gini"] is None or -1.0 <= g["gini"] <= 1.0
        for who, inst in out["institutions"].items():
            assert inst["default_rate"] is None or 0.0 <= inst["default_rate"] <= 1.0, (who, inst)
            assert inst["mean_pd"] is None or 0.0 <= inst["mean_pd"] <= 1.0, (who, inst)
        for attr in out["fairness"].values():
            for grp in attr["groups"]:
                for key in ("approval_rate", "tpr", "fpr", "good_approval_rate"):
                    assert grp[key] is None or 0.0 <= grp[key] <= 1.0, (grp, key)
    # the noise really is that large: unclipped, some default rates were impossible
    assert any(not 0.0 <= r <= 1.0 for r in raw_rates), raw_rates


def test_every_noised_figure_carries_a_standard_deviation_that_matches_its_spread(holdouts, schema):
    pools = [_pool(holdouts, schema, seed) for seed in range(80)]
    for key in ("auc", "ks", "n", "mean_pd", "default_rate", "brier"):
        values = np.array([p["global"][key] for p in pools if p["global"][key] is not None], dtype=float)
        reported = np.array([p["global"][f"{key}_sd"] for p in pools if p["global"].get(f"{key}_sd") is not None])
        assert len(reported) == len(values) > 70, key  # every noised figure (not undefined) has its sd beside it
        spread = float(np.std(values, ddof=1))
        ratio = float(np.median(reported)) / spread
        assert 0.6 < ratio < 1.6, (key, float(np.median(reported)), spread)
    truth = _truth(holdouts)
    n_sd = np.array([p["global"]["n_sd"] for p in pools])
    n = np.array([p["global"]["n"] for p in pools])
    assert np.mean(np.abs(n - truth["n"]) <= 2 * n_sd) > 0.85  # the unbiased count is covered by ±2 sd
    for p in pools[:3]:
        assert set(p["evaluation_noise"]["noised"]) == set(HOLDOUTS)
        assert p["evaluation_noise"]["noise_share"] == pytest.approx(p["global"]["n_sd"] / p["global"]["n"])
        inst = p["institutions"]["bank-a"]
        assert inst["auc_sd"] > 0 and inst["release"] == "noised"
        grp = next(iter(p["fairness"].values()))["groups"][0]
        assert grp["approval_rate_sd"] > 0 and "n_sd" in grp


def test_exact_releases_carry_no_sd_and_are_unchanged(holdouts, schema):
    accepted = {}
    for node, (who, (sums, groups)) in enumerate(holdouts.items(), start=1):
        arrays = {**sums.to_arrays(), **{f"fair/{k}": v for k, v in groups.items()}}
        accepted[node] = Message(RecordDict({P.EVAL: P.to_array_record(arrays),
                                             P.NODE: ConfigRecord({"institution-id": who, "release": "exact"})}),
                                 dst_node_id=node, message_type="evaluate")
    names = dict(enumerate(holdouts, start=1))
    out = pool_evaluations(SortedReplies(accepted=accepted), names.__getitem__, schema)
    truth = _truth(holdouts)
    assert not any(k.endswith("_sd") for k in out["global"]) and "evaluation_noise" not in out
    for key, value in truth.items():
        assert out["global"][key] == pytest.approx(value)
    counts = {k: sum(g[k] for _, g in holdouts.values()) for k in next(iter(holdouts.values()))[1]}
    assert out["fairness"] == fairness_metrics(counts, schema)
    assert COUNT_COLUMNS == ("n", "defaults", "declined", "declined_defaults")


def _card(global_figures: dict, institutions: dict | None = None, fairness: dict | None = None) -> dict:
    return {"run": {"status": "completed"}, "privacy": {"dp": True, "institutions": {}},
            "metrics": {"global": global_figures, "institutions": institutions or {}},
            "fairness": fairness, "ledger": None}


def test_no_card_warning_that_the_noise_alone_explains():
    # the case: a mean PD of 14.9 % against a noised default rate of 32.9 % (± 12 points)
    noised = {"mean_pd": 0.149, "mean_pd_sd": 0.03, "default_rate": 0.329, "default_rate_sd": 0.12}
    assert not any("Miscalibrated" in w for w in card_warnings(_card(noised)))
    exact = {"mean_pd": 0.149, "default_rate": 0.329}  # the same figures measured exactly: a real finding
    assert any("Miscalibrated" in w for w in card_warnings(_card(exact)))
    far = {"mean_pd": 0.149, "mean_pd_sd": 0.01, "default_rate": 0.60, "default_rate_sd": 0.05}
    assert any("Miscalibrated" in w and "± 5.0" in w for w in card_warnings(_card(far)))

    def inst(auc, sd=None):
        fed = {"auc": auc, **({"auc_sd": sd} if sd is not None else {})}
        return {"bank-a": {"federated": fed, "local_only_auc": 0.75, "centralised_auc": None, "release": "noised"}}

    worse = "worse off than alone"
    assert not any(worse in w for w in card_warnings(_card({}, inst(0.70, 0.04))))
    assert any(worse in w for w in card_warnings(_card({}, inst(0.70))))
    assert any(worse in w for w in card_warnings(_card({}, inst(0.60, 0.03))))

    def fair(rate, sd=None):
        group = {"group": "all", "n": 400.0, "approval_rate": rate, **({"approval_rate_sd": sd} if sd else {})}
        return {"cutoff_pd": 0.2, "attributes": {"sex": {"groups": [group]}}}

    # noise this large drowns the histograms (the AUC of 0.52): the card says so
    drowned = "largely noise"
    assert any(drowned in w for w in card_warnings({**_card({}), "metrics": {"global": {}, "institutions": {},
                                                                             "noise_share": 0.5}}))
    assert not any(drowned in w for w in card_warnings({**_card({}), "metrics": {"global": {}, "institutions": {},
                                                                                 "noise_share": 0.05}}))

    approves = "barely separates"
    assert not any(approves in w for w in card_warnings(_card({}, fairness=fair(0.99, 0.05))))
    assert any(approves in w for w in card_warnings(_card({}, fairness=fair(0.99))))


@pytest.mark.slow
def test_a_deployment_style_run_reports_noised_figures_with_their_sd(tmp_path):
    """The real ServerApp round loop and ClientApp in process, nodes configured as in deployment (their
    own tables, budgets and noised evaluation releases): metrics.json, the model card and the report
    show every noised figure in range and with its ± sd."""
    from clients.client_app import app as client_app
    from server.consortium import run_consortium
    from server.report import write_report
    from simulation.synthetic import generate_consortium
    from tests.inprocess_grid import InProcessGrid

    generate_consortium(tmp_path / "data", institutions=3, scale=0.1, seed=5)
    files = sorted((tmp_path / "data").glob("*.csv"))
    nodes = {11 + k: {"data-path": str(f), "state-dir": str(tmp_path / f"state-{f.stem}"), "max-epsilon": 4.0,
                      "institution-id": f.stem, "release-eval": "noised"} for k, f in enumerate(files)}
    rc = {"num-server-rounds": 1, "min-available-nodes": 3, "min-train-nodes": 3, "dp": True, "seed": 2,
          "run-dir": str(tmp_path / "run"), "round-timeout": 120.0, "batch-size": 128, "target-epsilon": 2.0}
    summary = run_consortium(InProcessGrid(client_app, nodes, rc), rc, run_id=7)
    assert summary["status"] == "completed", summary["stop_detail"]
    final = summary["final"]
    assert {"auc_sd", "ks_sd", "default_rate_sd", "n_sd"} <= set(final), final
    assert 0 <= final["default_rate"] <= 1 and 0 <= final["mean_pd"] <= 1
    assert set(summary["evaluation_noise"]["noised"]) == {f.stem for f in files}
    assert all(r["release"] == "noised" and "auc_sd" in r for r in summary["history"][0]["institutions"].values())
    report = write_report(tmp_path / "run")
    card = (tmp_path / "run" / "model_card.md").read_text()
    assert f"AUC {final['auc']:.4f} ± {final['auc_sd']:.4f}" in card
    assert "Figures with ± are computed from DP-noised evaluation releases" in card
    html = report.read_text()
    assert f"{final['auc']:.3f} ± {final['auc_sd']:.3f}" in html
