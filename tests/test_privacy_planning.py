"""Noise planning and the Gaussian releases (statistics, evaluation)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from models.metrics import EvaluationSums
from models.training import LocalTrainConfig
from privacy.accountant import BudgetExceeded, PrivacyEvent, compute_epsilon
from privacy.dp_release import (
    EVALUATION_BINS,
    EVALUATION_NOISE_MULTIPLIER,
    STATISTICS_NOISE_MULTIPLIER,
    release_evaluation,
    release_statistics,
    statistics_sensitivity,
)
from privacy.planning import plan_noise, plan_table, sample_rate_for, steps_per_epoch

DELTA = 1e-5


def test_sample_rate_and_steps_match_the_training_loop():
    for n, b in [(1000, 256), (256, 256), (100, 256), (20001, 64)]:
        assert steps_per_epoch(n, b) == LocalTrainConfig(batch_size=b).steps_per_epoch(n)
        assert sample_rate_for(n, b) == min(1.0, b / n)


def test_fresh_plan_is_opacus_get_noise_multiplier():
    from opacus.accountants.utils import get_noise_multiplier

    q, steps, rounds = 256 / 12000, 47, 8
    plan = plan_noise(prior_events=[], max_epsilon=2.0, delta=DELTA, sample_rate=q, steps_per_round=steps,
                      rounds=rounds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sigma = get_noise_multiplier(target_epsilon=2.0, target_delta=DELTA, sample_rate=q, steps=steps * rounds,
                                     accountant="rdp", epsilon_tolerance=0.01)
    assert plan.noise_multiplier == sigma
    assert 2.0 - 0.01 <= plan.epsilon_after_round[-1] <= 2.0
    assert plan.epsilon_after_round == sorted(plan.epsilon_after_round)
    table = plan_table(plan)
    assert [r["round"] for r in table] == list(range(1, rounds + 1))
    assert table[-1]["epsilon_after"] == plan.epsilon_after_round[-1]


def test_plan_with_history_is_the_smallest_sigma_within_tolerance():
    prior = [PrivacyEvent("statistics", STATISTICS_NOISE_MULTIPLIER, 1.0, 1),
             PrivacyEvent("train", 1.1, 0.03, 300)]
    extra = [PrivacyEvent("evaluation", EVALUATION_NOISE_MULTIPLIER, 1.0, 1)] * 5
    q, steps = 0.03, 34
    plan = plan_noise(prior_events=prior, max_epsilon=4.0, delta=DELTA, sample_rate=q, steps_per_round=steps,
                      rounds=5, extra_events=extra)
    planned = [plan.round_event()] * 5
    eps = compute_epsilon(prior + extra + planned, DELTA)
    assert eps == plan.epsilon_after_round[-1]
    assert 4.0 - 0.01 <= eps <= 4.0
    smaller = [PrivacyEvent("train", plan.noise_multiplier * 0.98, q, steps)] * 5
    assert compute_epsilon(prior + extra + smaller, DELTA) > 4.0  # a visibly smaller σ would not fit
    assert plan.epsilon_run == compute_epsilon(extra + planned, DELTA)
    # a cap on the run's own ε binds before the lifetime budget
    capped = plan_noise(prior_events=prior, max_epsilon=4.0, delta=DELTA, sample_rate=q, steps_per_round=steps,
                        rounds=5, extra_events=extra, run_epsilon_cap=1.0)
    assert capped.noise_multiplier > plan.noise_multiplier
    assert 1.0 - 0.01 <= capped.epsilon_run <= 1.0


def test_plan_refuses_when_nothing_fits():
    with pytest.raises(BudgetExceeded, match="exhausted"):
        plan_noise(prior_events=[PrivacyEvent("train", 0.5, 0.5, 1000)], max_epsilon=1.0, delta=DELTA,
                   sample_rate=0.1, steps_per_round=10, rounds=2)
    with pytest.raises(BudgetExceeded, match="other releases"):  # the reserved evaluations alone exceed it
        plan_noise(prior_events=[], max_epsilon=0.2, delta=DELTA, sample_rate=0.1, steps_per_round=10, rounds=20,
                   extra_events=[PrivacyEvent("evaluation", 2.0, 1.0, 1)] * 20)


def test_prv_plan_fits_the_prv_budget():
    plan = plan_noise(prior_events=[PrivacyEvent("statistics", 10.0, 1.0, 1)], max_epsilon=2.0, delta=DELTA,
                      sample_rate=0.02, steps_per_round=50, rounds=3, accountant="prv")
    eps = compute_epsilon([PrivacyEvent("statistics", 10.0, 1.0, 1)] + [plan.round_event()] * 3, DELTA, "prv")
    assert 2.0 - 0.02 <= eps <= 2.0


# ------------------------------------------------------------------------- releases
def test_statistics_release_noise_and_event():
    stats = {"a": np.full(50, 100.0), "b": np.full(4, 1250.0), "c": np.full(2, 2500.0), "d": np.zeros(3)}
    assert statistics_sensitivity(stats) == 2.0
    rng = np.random.default_rng(0)
    draws = [release_statistics(stats, 3.0, rng) for _ in range(200)]
    noisy, event = draws[0]
    assert set(noisy) == set(stats) and all(noisy[k].shape == stats[k].shape for k in stats)
    resid = np.concatenate([np.concatenate([d[k] - stats[k] for k in stats]) for d, _ in draws])
    assert resid.std() == pytest.approx(3.0 * 2.0, rel=0.03) and abs(resid.mean()) < 0.15
    assert (event.kind, event.noise_multiplier, event.sample_rate, event.steps) == ("statistics", 3.0, 1.0, 1)


def test_evaluation_release_rebins_noises_and_derives_counts():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.01, 0.6, 5000)
    y = (rng.random(5000) < p).astype(float)
    sums = EvaluationSums.from_scores(p, y)
    out, groups, event = release_evaluation(sums, 2.0, np.random.default_rng(2))
    assert groups == {}
    assert len(out.hist_neg) == len(out.hist_pos) == EVALUATION_BINS
    assert out.n == pytest.approx(out.hist_neg.sum() + out.hist_pos.sum())
    assert out.positives == pytest.approx(out.hist_pos.sum())
    assert (event.kind, event.noise_multiplier, event.sample_rate, event.steps) == ("evaluation", 2.0, 1.0, 1)
    # noise std σ·√3 on every released number (no fairness groups)
    draws = [release_evaluation(sums, 2.0, np.random.default_rng(s))[0] for s in range(300)]
    from models.metrics import rebin

    resid = np.concatenate([np.concatenate([d.hist_pos - rebin(sums.hist_pos, EVALUATION_BINS),
                                            [d.sum_pd - sums.sum_pd, d.brier_sum - sums.brier_sum]])
                            for d in draws])
    assert resid.std() == pytest.approx(2.0 * math.sqrt(3), rel=0.04)
    # the metrics stay usable: AUC close to the exact one, log loss estimated from the histograms
    exact = sums.metrics()
    noisy = release_evaluation(sums, EVALUATION_NOISE_MULTIPLIER, np.random.default_rng(3))[0].metrics()
    assert abs(noisy["auc"] - exact["auc"]) < 0.08
    assert abs(noisy["brier"] - exact["brier"]) < 0.02
    # log loss from the noised histograms: unbiased up to the bin approximation
    assert np.mean([d.logloss_sum / d.n for d in draws]) == pytest.approx(exact["log_loss"], abs=0.015)


def test_evaluation_release_with_fairness_groups_widens_the_noise():
    rng = np.random.default_rng(4)
    p = rng.uniform(0.01, 0.6, 3000)
    y = (rng.random(3000) < p).astype(float)
    sums = EvaluationSums.from_scores(p, y)
    counts = {"sex": np.array([[1500.0, 200, 100, 60], [1500.0, 180, 90, 50]]),
              "age": np.ones((6, 4)) * 100}
    resid = []
    for seed in range(200):
        _, g, event = release_evaluation(sums, 2.0, np.random.default_rng(seed), groups=counts)
        resid.append(np.concatenate([(g[k] - counts[k]).ravel() for k in counts]))
    # sensitivity sqrt(3 + 4·2): one record moves one score cell, two sums and four counts per attribute
    assert np.std(resid) == pytest.approx(2.0 * math.sqrt(11), rel=0.05)
    assert "fairness counts of 2" in event.detail


def test_evaluation_noise_is_lowered_only_as_far_as_the_lifetime_epsilon_allows():
    """Evaluations read the holdout only: the plan lowers their σ until the holdout side reaches
    what the training side spends — the lifetime ε stays where the training plan puts it."""
    from privacy.dp_release import count_events
    from privacy.planning import plan_run_noise

    side = {"split": "s", "data": "d"}
    run = count_events(**side) + [PrivacyEvent("statistics", STATISTICS_NOISE_MULTIPLIER, 1.0, 1, rows="train", **side)]
    plan = plan_run_noise(prior_events=[], run_events=run, evaluations=11, max_epsilon=3.0, delta=DELTA,
                          sample_rate=0.016, steps_per_round=63, rounds=10, **side)
    sigma_e = plan.evaluation_noise_multiplier
    assert sigma_e < EVALUATION_NOISE_MULTIPLIER / 2

    def lifetime(s):
        evals = [PrivacyEvent("evaluation", s, 1.0, 11, rows="holdout", **side)]
        train = [PrivacyEvent("train", plan.noise_multiplier, 0.016, 630, rows="train", **side)]
        return compute_epsilon(run + evals + train, DELTA)

    assert lifetime(sigma_e) <= plan.epsilon_after_round[-1] + 1e-12
    assert lifetime(0.97 * sigma_e) > plan.epsilon_after_round[-1]  # the smallest such σ (to the tolerance)


def test_evaluation_bins_follow_the_released_holdout_size():
    from privacy.dp_release import EVALUATION_BIN_CHOICES, evaluation_bins

    assert evaluation_bins(3200, EVALUATION_NOISE_MULTIPLIER, 2) == 20
    assert evaluation_bins(600, 5.5, 2) == 10
    assert evaluation_bins(300, EVALUATION_NOISE_MULTIPLIER, 2) == min(EVALUATION_BIN_CHOICES) == 5
    # the server pools any mix: each length divides the next, and the exact one
    from models.metrics import SCORE_BINS

    for fine, coarse in zip((SCORE_BINS, *EVALUATION_BIN_CHOICES), EVALUATION_BIN_CHOICES):
        assert fine % coarse == 0


def test_the_exhausted_budget_message_states_what_was_spent_and_what_the_run_would_add():
    """(issue 15) The refusal at the statistics query said 'ε 1.5510 of max 1.5 … already spent'
    when 1.4954 was spent: the spent ε and the ε with this run's other releases are told apart."""
    prior = [PrivacyEvent("train", 1.0, 0.05, 320)]
    spent = compute_epsilon(prior, DELTA)
    extra = [PrivacyEvent("statistics", STATISTICS_NOISE_MULTIPLIER, 1.0, 1)]
    budget = round(spent + 0.02, 3)
    with_extra = compute_epsilon(prior + extra, DELTA)
    assert with_extra >= budget - 0.01  # the statistics would leave less than the tolerance
    with pytest.raises(BudgetExceeded) as info:
        plan_noise(prior_events=prior, max_epsilon=budget, delta=DELTA, sample_rate=0.05, steps_per_round=20,
                   rounds=2, extra_events=extra)
    message = str(info.value)
    assert f"ε {spent:.4f} of max {budget:g}" in message and "is spent" in message
    assert f"would bring it to {with_extra:.4f}" in message and "already spent" not in message
    assert info.value.spent == pytest.approx(spent)
