"""The run in the ServerApp's log: one fedcredit line per step (what `flwr log` / `flwr run --stream` show)."""

from __future__ import annotations

import logging
import re

from server.run_log import end_line, round_line, statistics_line
from tests.inprocess_runs import _execute, _grid, _run_config

STAMP = re.compile(r"^fedcredit \d\d:\d\d:\d\dZ ")


def test_a_run_logs_statistics_every_round_with_refusals_and_epsilon_and_its_end(tmp_path, caplog):
    rc = _run_config(tmp_path, "log", **{"num-server-rounds": 2, "dp": True, "fraction-evaluate": 1.0,
                                          "sim-max-epsilon": 3.0, "sim-budgets": "card-issuer-1=0.02",
                                          "synthetic-scale": 0.15,
                                          "round-timeout": 120.0, "local-epochs": 1, "batch-size": 128})
    with caplog.at_level(logging.INFO, logger="flwr"):
        summary, _ = _execute(rc, _grid(rc))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fedcredit ")]
    assert summary["status"] == "completed", summary["stop_detail"]
    # round 1's evaluation went with round 2's train messages (fold-evaluation): its own line, after round 1's
    assert len(lines) == 5 and all(STAMP.match(line) for line in lines), lines
    stats, r1, e1, r2, end = lines
    assert "statistics | 2 answered: national-bank-1, regional-bank-1" in stats
    assert "refused: card-issuer-1 (budget-exhausted: " in stats
    for rnd, line in ((1, r1), (2, r2)):
        assert f" round {rnd}/2 | trained 2 of 3: national-bank-1, regional-bank-1 |" in line, line
        assert "refused: card-issuer-1 (budget-exhausted: " in line
        assert "rejected: none" in line and "dropped: none" in line
        low, high = (float(x) for x in re.search(r"ε spent (\d\.\d\d)[–-]?(\d\.\d\d)?", line).groups(default="nan"))
        spent = [p["epsilon_spent"] for p in summary["history"][rnd - 1]["privacy"].values()]
        assert abs(low - min(spent)) < 0.006 and (high != high or abs(high - max(spent)) < 0.006), (line, spent)
        assert re.search(r"\| \d+\.\d s$", line)
    assert "evaluated with round 2's train messages" in r1 and "AUC" not in r1
    assert " round 1/2 evaluation | evaluated by 3: card-issuer-1, national-bank-1, regional-bank-1 |" in e1, e1
    for line, record in ((e1, summary["history"][0]), (r2, summary["history"][1])):
        auc = record["global"]["auc"]
        assert f"AUC {auc:.3f}" in line and "±" not in line  # exact releases in simulation: no ± to show
    assert f"run 7 completed | 2/2 rounds | final AUC {summary['final']['auc']:.3f}" in end
    assert f"ledger head {summary['ledger_head'][:16]}" in end


def test_round_line_shows_the_noise_of_noised_figures_and_a_stop():
    record = {"round": 3, "sampled": ["a", "b", "c"], "participants": ["a"],
              "refused": {"b": {"reason": "budget-exhausted", "detail": "ε 1.4954 of max 1.5 is spent " + "x" * 300}},
              "rejected": {"c": "update norm 80 exceeds the bound max-update-norm = 10"}, "dropped": {},
              "evaluation_failed": {"a": "no reply before the round timeout"},
              "privacy": {"a": {"epsilon_spent": 0.8123}}, "privacy_after_evaluation": {"a": 0.8456},
              "global": {"auc": 0.7421, "auc_sd": 0.0312, "ks": 0.38, "ks_sd": 0.045}, "stopped": "too-few-nodes",
              "wall_s": 4.21}
    line = round_line(record, 5)
    assert " round 3/5 | trained 1 of 3: a |" in line
    assert "refused: b (budget-exhausted: ε 1.4954 of max 1.5 is spent x" in line and "…)" in line
    assert len(line) < 700  # long details are cut
    assert "rejected: c (update norm 80 exceeds the bound max-update-norm = 10)" in line
    assert "dropped: a (evaluation) (no reply before the round timeout)" in line
    assert "ε spent 0.85" in line  # the evaluation's release counts too
    assert "AUC 0.742 ± 0.031, KS 0.380 ± 0.045" in line and "run stops: too-few-nodes" in line
    assert line.endswith("| 4.2 s")
    assert "ε spent: not reported (no DP)" in round_line({"round": 1, "privacy": {"a": {}}}, 1)
    assert "not evaluated" in round_line({"round": 1}, 1)


def test_a_folded_evaluation_has_its_own_line_and_the_round_line_says_where_it_went():
    from server.run_log import evaluation_line

    assert round_line({"round": 2, "evaluation_in": "round 3's train messages"}, 5).endswith(
        "| evaluated with round 3's train messages")
    line = evaluation_line({"round": 2, "institutions": {"a": {}, "b": {}}, "evaluation_refused": {
        "c": {"reason": "budget-exhausted", "detail": "holdout side"}}, "privacy": {"a": {"epsilon_spent": 0.5}},
        "privacy_after_evaluation": {"a": 0.61, "b": 0.7}, "global": {"auc": 0.7, "auc_sd": 0.02}}, 5)
    assert STAMP.match(line) and " round 2/5 evaluation | evaluated by 2: a, b |" in line
    assert "refused: c (budget-exhausted: holdout side)" in line and "ε spent 0.61–0.70" in line
    assert "AUC 0.700 ± 0.020" in line


def test_statistics_and_end_lines():
    stats = statistics_line({"contributors": ["a", "b"], "refused": {"c": "policy: schema differs"},
                             "rejected": {}, "dropped": {"d": "no reply before the round timeout"}})
    assert "statistics | 2 answered: a, b | refused: c (policy: schema differs) | rejected: none | dropped: d (" in stats
    end = end_line({"run_id": "9", "status": "stopped", "stop_reason": "budget-exhausted", "stop_detail": "round 2: …",
                    "rounds_completed": 1, "rounds_planned": 3, "final": None, "run_dir": "/runs/9", "wall_s": 12.3})
    assert "run 9 stopped (budget-exhausted: round 2: …) | 1/3 rounds | final figures: none released" in end
    assert end.endswith("| 12 s")
