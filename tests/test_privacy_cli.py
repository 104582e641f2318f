"""``fedcredit privacy plan | status | audit``: exit 0 on success, 2 with one clear message on user mistakes."""

from __future__ import annotations

import json

import pytest

from fedcredit.cli import main
from privacy.accountant import PrivacyEvent, PrivacyLedger
from privacy.dp_release import EVALUATION_NOISE_MULTIPLIER, STATISTICS_NOISE_MULTIPLIER, count_events
from privacy.plan_command import DESCRIPTION as PLAN_HELP
from privacy.planning import plan_run_noise

FP = "0f" * 32


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def run(capsys, *args):
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_plan_prints_the_node_plan(capsys):
    code, out, err = run(capsys, "privacy", "plan", "--epsilon", 3, "--rows", 16000, "--batch-size", 256,
                         "--local-epochs", 2, "--rounds", 4, "--delta", 1e-5, "--json")
    assert code == 0, err
    assert "noise multiplier σ" in out and "ε after round" in out
    plan = last_json(out)
    # what a node with this budget and 16,000 (released) training rows plans for this run: the row
    # counts and statistics on the training side, four scheduled evaluations and the final one on
    # the holdout side of one table version
    side = {"split": "s", "data": "d"}
    expected = plan_run_noise(prior_events=[], run_events=count_events(**side) + [PrivacyEvent(
        "statistics", STATISTICS_NOISE_MULTIPLIER, 1.0, 1, rows="train", **side)], evaluations=5, max_epsilon=3.0,
        delta=1e-5, sample_rate=256 / 16000, steps_per_round=126, rounds=4, **side)
    assert plan["ok"] and plan["noise_multiplier"] == expected.noise_multiplier
    assert plan["evaluation_noise_multiplier"] == expected.evaluation_noise_multiplier < EVALUATION_NOISE_MULTIPLIER
    assert plan["steps_per_round"] == 126 and plan["sample_rate"] == 0.016
    eps = [row["epsilon_after"] for row in plan["table"]]
    assert len(eps) == 4 and eps == sorted(eps) and 2.99 <= eps[-1] <= 3.0
    assert plan["reserved_events"] == {"counts": 2, "statistics": 1, "evaluation": 5}
    # the help states the noise the code uses
    assert f"σ = {EVALUATION_NOISE_MULTIPLIER:g}" in PLAN_HELP and f"σ = {STATISTICS_NOISE_MULTIPLIER:g}" in PLAN_HELP


@pytest.mark.parametrize("args, message", [
    (["--epsilon", "0.01", "--rows", "16000"], "exhausted"),
    (["--epsilon", "1", "--rows", "100", "--delta", "0.5"], "not below 1/rows"),
    (["--epsilon", "-1", "--rows", "100"], "positive"),
    (["--epsilon", "1", "--rows", "many"], "whole number"),
    (["--rows", "100"], "--epsilon"),
])
def test_plan_user_mistakes_exit_2(capsys, args, message):
    code, out, err = run(capsys, "privacy", "plan", *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_plan_json_on_error(capsys):
    code, out, err = run(capsys, "privacy", "plan", "--epsilon", "0.01", "--rows", "16000", "--json")
    assert code == 2 and last_json(out) == {"ok": False, "error": err.strip().removeprefix("error: ")}


def test_status_shows_spend_per_side_and_detects_damage(capsys, tmp_path):
    side = {"split": "row-hash/v2 fraction=0.2 seed=0"}
    with PrivacyLedger.open(tmp_path, fingerprint=FP, schema_key="consumer-credit-v1@1", institution_id="bank-z",
                            max_epsilon=2.0, delta=1e-5) as ledger:
        spent = ledger.record([PrivacyEvent("statistics", 10.0, 1.0, 1, run_id="run-1", rows="train", **side),
                               PrivacyEvent("train", 1.2, 0.02, 40, run_id="run-1", round=1, rows="train", **side),
                               PrivacyEvent("evaluation", 20.0, 1.0, 3, run_id="run-1", rows="holdout", **side)])
    code, out, err = run(capsys, "privacy", "status", "--state-dir", tmp_path, "--json")
    assert code == 0, err
    assert "bank-z" in out and "statistics" in out and "training side" in out and "holdout side" in out
    (d,) = last_json(out)["datasets"]
    assert d["epsilon_spent"] == spent and d["max_epsilon"] == 2.0 and d["delta"] == 1e-5
    assert d["epsilon_remaining"] == pytest.approx(2.0 - spent) and len(d["events"]) == 3
    assert d["epsilon_spent"] == pytest.approx(max(d["epsilon_train_side"], d["epsilon_holdout_side"]))
    assert 0 < d["epsilon_holdout_side"] < d["epsilon_train_side"]
    state = tmp_path / "privacy" / "ledger.json"
    state.write_text(state.read_text()[:100])
    code, out, err = run(capsys, "privacy", "status", "--state-dir", tmp_path)
    assert code == 2 and "damaged" in err and str(state) in err
    code, out, err = run(capsys, "privacy", "status", "--state-dir", tmp_path / "nope")
    assert code == 2 and "no such directory" in err


def test_real_command_help_and_exit_codes(fedcredit_cli, tmp_path):
    res = fedcredit_cli("privacy", "--help")
    assert res.returncode == 0
    for name in ("plan", "status", "audit", "new-population"):
        assert name in res.stdout
    res = fedcredit_cli("privacy", "status", "--state-dir", tmp_path)
    assert res.returncode == 2 and "no privacy state" in res.stderr and "Traceback" not in res.stderr


def test_new_population_is_confirmed_recorded_and_shown(capsys, tmp_path):
    with PrivacyLedger.open(tmp_path, fingerprint=FP, institution_id="bank-z", max_epsilon=2.0, delta=1e-5) as ledger:
        spent = ledger.record([PrivacyEvent("train", 1.2, 0.02, 40, run_id="run-1", round=1)])
    code, out, err = run(capsys, "privacy", "new-population", "--state-dir", tmp_path, "--reason", "new line")
    assert code == 2 and "--yes" in err
    code, out, err = run(capsys, "privacy", "new-population", "--state-dir", tmp_path, "--reason", "new line",
                         "--yes", "--json")
    assert code == 0, err
    assert last_json(out)["epsilon_spent_before"] == pytest.approx(spent)
    code, out, err = run(capsys, "privacy", "status", "--state-dir", tmp_path, "--json")
    (d,) = last_json(out)["datasets"]
    assert d["epsilon_spent"] == 0.0 and d["earlier_populations"][0]["epsilon_spent"] == pytest.approx(spent)
    assert "not counted against the current budget" in out
    code, out, err = run(capsys, "privacy", "new-population", "--state-dir", tmp_path / "empty", "--reason", "x",
                         "--yes")
    assert code == 2 and "no such directory" in err
