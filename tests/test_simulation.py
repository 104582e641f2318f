"""The federated training core end to end through Flower's simulation runtime."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from server.settings import DEFAULTS, parse_run_config
from configs.errors import ConfigError
from tests.conftest import REPO, run_fedcredit
from tests.processes import kill_pids, new_processes, processes


def test_pyproject_run_config_defaults_match_the_code():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert declared == DEFAULTS


@pytest.mark.parametrize("override,key", [
    ({"num-server-rounds": 0}, "num-server-rounds"),
    ({"strategy": "fedsgd"}, "strategy"),
    ({"stratgy": "fedavg"}, "stratgy"),
    ({"dp": "maybe"}, "dp"),
    ({"hidden-layers": "64,x"}, "hidden-layers"),
    ({"min-available-nodes": 1, "min-train-nodes": 2}, "min-available-nodes"),
    ({"min-train-nodes": 0}, "min-train-nodes"),
    ({"fraction-train": 0.0}, "fraction-train"),
    ({"fraction-evaluate": 1.5}, "fraction-evaluate"),
    ({"local-epochs": 0}, "local-epochs"),
    ({"batch-size": -1}, "batch-size"),
    ({"learning-rate": 0.0}, "learning-rate"),
    ({"target-epsilon": -1.0}, "target-epsilon"),
    ({"clipping-norm": 0.0}, "clipping-norm"),
    ({"seed": -1}, "seed"),  # the nodes refuse it; the operator hears it before the run
])
def test_run_config_mistakes_name_the_key(override, key):
    with pytest.raises(ConfigError) as exc:
        parse_run_config(override)
    assert f"'{key}'" in str(exc.value), str(exc.value)  # the key at fault, not a list of keys
    others = {"fraction-train", "fraction-evaluate", "local-epochs", "batch-size", "learning-rate",
              "target-epsilon", "clipping-norm"} - {key}
    assert not any(f"{o} " in str(exc.value) or f"'{o}'" in str(exc.value) for o in others), str(exc.value)


def _summary(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_simulate_three_institutions_two_rounds(tmp_path, process_tag):
    from clients.node import load_node_data
    from models.metrics import auc_score
    from models.package import load_package
    from server.checkpoints import list_checkpoints, load_checkpoint
    from simulation.virtual_nodes import virtual_policy

    before = processes()
    run_dir = tmp_path / "run"
    s = _summary(run_fedcredit("simulate", "--institutions", 3, "--rounds", 2, "--scale", 0.3, "--no-dp",
                               "--seed", 5, "--out", run_dir, "--json", timeout=900))
    assert new_processes(before, tag=process_tag) == {}, "the simulation left processes behind"
    assert s["status"] == "completed" and s["rounds"] == 2
    assert [i["id"] for i in s["institutions"]] == ["national-bank-1", "regional-bank-1", "card-issuer-1"]
    for key in ("auc_federated", "auc_centralized", "auc_local_only_mean", "auc_oracle"):
        assert 0.5 < s[key] < 1.0, key
    assert s["auc_oracle"] > s["auc_federated"]  # the true PD is the ceiling
    for inst in s["institutions"]:
        assert inst["epsilon_spent"] is None and inst["auc_federated"] is not None

    # one checkpoint per round, each verifiable; the model package is the last round's network with
    # the Platt recalibration (fitted on the pooled final histograms) folded into its output layer
    assert list_checkpoints(run_dir) == [1, 2]
    last = load_checkpoint(run_dir, 2)
    pkg = load_package(run_dir / "model")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    from models.calibration import Calibration, calibrate_weights

    cal = Calibration(metrics["calibration"]["slope"], metrics["calibration"]["intercept"])
    assert cal.slope > 0
    expected = calibrate_weights(last.weights, pkg.spec, cal)
    for k in last.weights:
        assert np.allclose(expected[k], pkg.weights[k], atol=1e-6)
    for name in ("metrics.json", "config.resolved.toml", "progress.jsonl"):
        assert (run_dir / name).is_file(), name

    # the federated AUC (from summed histograms) equals scikit-learn's on the pooled holdouts
    run_config = tomllib.loads((run_dir / "config.resolved.toml").read_text())["run-config"]
    ps, ys = [], []
    for k in range(3):
        data = load_node_data(virtual_policy(k, 3, run_config))
        ps.append(pkg.predict_pd(data.split.holdout))
        ys.append(data.split.holdout["default_next_month"].to_numpy())
        assert metrics["institutions"][data.split.institution_id]["eval"]["auc"] == pytest.approx(
            auc_score(ys[-1], ps[-1]), abs=1e-3)
    assert metrics["final"]["auc"] == pytest.approx(auc_score(np.concatenate(ys), np.concatenate(ps)), abs=1e-3)
    assert metrics["history"][1]["model_sha256_before"] == metrics["history"][0]["model_sha256_after"]


@pytest.mark.slow
def test_flwr_run_uses_the_repository_as_the_flower_app(tmp_path, process_tag):
    from simulation.flower_runtime import flwr_run_env

    home = tmp_path / "flwr-home"
    run_dir = tmp_path / "flwr-run"
    before = processes()
    flwr = str(Path(sys.executable).with_name("flwr"))
    try:
        proc = subprocess.run(
            [flwr, "run", ".", "--stream", "--federation-config", "num-supernodes=3 client-resources-num-cpus=1",
             "--run-config", f"dp=false num-server-rounds=2 synthetic-scale=0.3 min-available-nodes=3 "
                             f"run-dir='{run_dir}'"],
            cwd=REPO, env=flwr_run_env(home), capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["rounds_completed"] == 2
        assert len(metrics["institutions"]) == 3
        assert (run_dir / "model" / "weights.safetensors").is_file()
        # the run can be followed from the Flower CLI: a fedcredit line per step (server/run_log.py), in the
        # stream and in `flwr log`
        listing = subprocess.run([flwr, "ls", "--format", "json"], cwd=REPO, env=flwr_run_env(home),
                                 capture_output=True, text=True, timeout=120)
        run_id = json.loads(listing.stdout)["runs"][0]["run-id"]
        log = subprocess.run([flwr, "log", run_id, "--show"], cwd=REPO, env=flwr_run_env(home), capture_output=True,
                             text=True, timeout=120)
        for text in (proc.stdout + proc.stderr, log.stdout + log.stderr):
            assert "statistics | 3 answered" in text and "round 1/2 | trained 3 of 3" in text, text[-3000:]
            assert "round 2/2 | trained 3 of 3" in text and "completed | 2/2 rounds | final AUC" in text
    finally:
        # `flwr run` leaves a local SuperLink running in the background: stop the ones this test started.
        started = [pid for pid, args in processes(tag=process_tag).items() if pid not in before and str(home) in args]
        kill_pids(started)
    assert new_processes(before, settle_s=20, tag=process_tag) == {}


@pytest.mark.slow
def test_a_second_run_on_an_exhausted_budget_is_refused_and_the_server_stops_cleanly(tmp_path):
    from privacy.accountant import read_state

    state = tmp_path / "node-state"
    common = ("--institutions", 3, "--rounds", 2, "--scale", 0.3, "--epsilon", 1, "--state-root", state,
              "--no-baselines", "--json")
    first = _summary(run_fedcredit("simulate", *common, "--out", tmp_path / "run1", timeout=900))
    assert first["status"] == "completed"
    spent = {d.name: read_state(d)[0]["epsilon_spent"] for d in state.iterdir()}
    assert len(spent) == 3 and all(0.9 < e <= 1.0 + 1e-9 for e in spent.values())

    proc = run_fedcredit("simulate", *common, "--out", tmp_path / "run2", timeout=900)
    second = _summary(proc)
    assert second["status"] == "stopped" and second["stop_reason"] == "budget-exhausted"
    assert second["rounds"] == 0
    assert "budget" in proc.stderr and "Traceback" not in proc.stderr
    # refusing cost nothing: every institution's lifetime spend is unchanged
    assert {d.name: read_state(d)[0]["epsilon_spent"] for d in state.iterdir()} == spent
    metrics = json.loads((tmp_path / "run2" / "metrics.json").read_text())
    assert set(metrics["statistics"]["refused"]) == set(spent)
    # each simulation is its own run (its own run id), so the first run's spend counts as spent before this one
    assert all("already spent" in why for why in metrics["statistics"]["refused"].values()), metrics["statistics"]
    assert metrics["run_id"] != json.loads((tmp_path / "run1" / "metrics.json").read_text())["run_id"]
    # the refused institutions' lifetime figures are still in the summary
    for inst in second["institutions"]:
        assert inst["epsilon_budget"] == 1.0 and inst["epsilon_spent"] == pytest.approx(spent[inst["id"]]), inst


def test_sim_budgets_round_trip_and_mistakes_name_the_key():
    from configs.sim_budgets import format_sim_budgets, parse_sim_budgets

    budgets = {"national-bank-1": 8.0, "online-microlender-1": 0.5}
    assert parse_sim_budgets(format_sim_budgets(budgets)) == budgets
    assert parse_sim_budgets("") == {}
    for bad in ("bank", "bank=0", "bank=-1", "bank=x", "=2", "a=1,a=2", "bank=inf"):
        with pytest.raises(ConfigError, match="sim-budgets"):
            parse_run_config({"sim-budgets": bad})


def test_a_virtual_node_takes_its_own_budget_from_sim_budgets(tmp_path):
    from simulation.virtual_nodes import virtual_policy

    rc = {"sim-max-epsilon": 3.0, "sim-budgets": "regional-bank-1=0.7", "synthetic-scale": 0.3,
          "state-root": str(tmp_path)}
    got = {}
    for k in range(3):
        p = virtual_policy(k, 3, rc)
        got[p.institution_id] = p.max_epsilon
    assert got == {"national-bank-1": 3.0, "regional-bank-1": 0.7, "card-issuer-1": 3.0}


@pytest.mark.parametrize("text,needle", [
    ("", "needs a table [max-epsilon]"),
    ("[max-epsilon]\nbank = 0\n", "max-epsilon.bank must be a positive number"),
    ("[max-epsilon]\nbank = \"high\"\n", "max-epsilon.bank must be a positive number"),
    ("[budgets]\nbank = 1\n", "unknown key(s) budgets"),
    ("[max-epsilon\n", "not valid TOML"),
])
def test_budgets_file_mistakes_exit_2_naming_the_key(tmp_path, text, needle):
    f = tmp_path / "budgets.toml"
    f.write_text(text)
    proc = run_fedcredit("simulate", "--institutions", 3, "--budgets", f, "--out", tmp_path / "run")
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_budgets_naming_an_unknown_institution_exit_2(tmp_path):
    f = tmp_path / "budgets.toml"
    f.write_text('[max-epsilon]\n"national-bank-9" = 1.0\n')
    proc = run_fedcredit("simulate", "--institutions", 3, "--scale", 0.3, "--budgets", f, "--out", tmp_path / "run")
    assert proc.returncode == 2, proc.stderr
    assert "max-epsilon.national-bank-9 is not an institution" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_dp_simulation_is_reproducible_for_a_seed_though_each_run_has_its_own_id(tmp_path):
    from models.package import load_package, weights_digest

    args = ("--institutions", 3, "--rounds", 2, "--scale", 0.3, "--epsilon", 2, "--seed", 9, "--no-baselines", "--json")
    runs = [tmp_path / "a", tmp_path / "b"]
    summaries = [_summary(run_fedcredit("simulate", *args, "--out", run, timeout=900)) for run in runs]
    assert summaries[0]["auc_federated"] == summaries[1]["auc_federated"]
    digests = [weights_digest(load_package(run / "model").weights) for run in runs]
    assert digests[0] == digests[1], "same seed, same data: the same DP noise and the same model"
    ids = [json.loads((run / "metrics.json").read_text())["run_id"] for run in runs]
    assert ids[0] != ids[1]


@pytest.mark.parametrize("argv", [["simulate"], ["data", "partition", "--data", "x.csv", "--out", "parts"],
                                  ["privacy", "audit", "--model", "m", "--data", "x.csv"]])
def test_a_negative_seed_is_refused_when_the_arguments_are_read(argv, tmp_path, monkeypatch, capsys):
    """NumPy takes non-negative seeds only and the nodes refuse others: exit 2 naming --seed, before any work
    (``data synth`` says so in its own words: tests/test_synthetic.py)."""
    from fedcredit.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--seed", "-1"])
    assert exc.value.code == 2
    assert "--seed: must be 0 or more, got -1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
