"""Research mode for small consortia (simulation/research_mode.py) and ``fedcredit simulate``'s options.

Institutions below the consortium's DP-training minimum (500 rows, 50 defaults) may be simulated
when the researcher lowers the minimum — with a loud warning and a record in the run — and are
refused where DP-SGD's noise would drown all of their defaults (ρ < 1); the refusal's advice must
work as written. A refused run leaves no directory; run-config keys that options also set are
honoured or refused, never silently replaced. A research-mode run end to end (warning, baselines'
progress, timings, the card) is tests/test_bring_your_own_data.py's.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clients.dataset import split_institution
from clients.node import NodeData
from configs.errors import UserError
from configs.schema import load_schema
from fedcredit.cli import main
from server.settings import parse_run_config
from simulation.research_mode import assess_research_mode, dp_signal
from simulation.synthetic import write_csv

SCHEMA = load_schema()
LABEL = SCHEMA.label.name


@pytest.fixture(scope="module")
def pool(synthetic_pool) -> pd.DataFrame:
    """The pooled synthetic consortium of tests/conftest.py (scale 0.25, seed 4)."""
    return synthetic_pool


def small_table(pool: pd.DataFrame, rows: int, defaults: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pos = pool[pool[LABEL] == 1]
    neg = pool[pool[LABEL] == 0]
    parts = [pos.iloc[rng.choice(len(pos), defaults, replace=False)],
             neg.iloc[rng.choice(len(neg), rows - defaults, replace=False)]]
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def nodes_of(tables: dict[str, pd.DataFrame]) -> dict[str, NodeData]:
    return {k: NodeData(SCHEMA, split_institution(t, SCHEMA, k), {}) for k, t in tables.items()}


def settings(**kw):
    return parse_run_config({"num-server-rounds": 5, "min-rows": 100, "min-positives": 3, **kw})


# ----------------------------------------------------------------------------- the criterion
def test_signal_to_noise_is_the_defaults_gradient_over_the_noise_of_the_run():
    from privacy.planning import default_delta

    s = dp_signal(train_rows=800, train_defaults=60, total_rows=1000, epsilon=2.0, batch_size=256, local_epochs=2,
                  rounds=5)
    assert s.sample_rate == pytest.approx(256 / 800) and s.steps == 5 * 2 * 4
    assert s.delta == default_delta(1000)
    assert s.rho == pytest.approx(s.sample_rate * 60 * math.sqrt(40) / s.noise_multiplier)
    looser = dp_signal(800, 60, 1000, 8.0, 256, 2, 5)
    assert looser.noise_multiplier < s.noise_multiplier and looser.rho > s.rho  # more ε, less noise
    assert dp_signal(800, 6, 1000, 2.0, 256, 2, 5).rho == pytest.approx(s.rho / 10)  # a tenth of the defaults
    spent = dp_signal(800, 60, 1000, 0.2, 256, 2, 5)  # the statistics release alone costs more than ε 0.2
    assert spent.rho == 0.0 and "no DP-SGD noise fits" in spent.words() and "exhausted" in spent.words()


def test_large_institutions_are_not_research_mode(pool):
    nodes = nodes_of({"a": small_table(pool, 600, 60), "b": small_table(pool, 700, 80, seed=1)})
    assert assess_research_mode(nodes, settings(), {"a": 1.0, "b": 1.0}) is None


def test_small_institutions_are_allowed_with_a_record_that_names_what_is_short(pool):
    nodes = nodes_of({"small-rows": small_table(pool, 300, 60), "small-defaults": small_table(pool, 900, 40, 1),
                      "big": small_table(pool, 900, 90, 2)})
    record = assess_research_mode(nodes, settings(), {k: 3.0 for k in nodes})
    assert set(record["institutions"]) == {"small-rows", "small-defaults"}
    text = record["summary"]
    assert text.startswith("RESEARCH MODE: 2 institutions below") and "run minimum: 100 rows, 3 defaults" in text
    assert "small-rows: 300 rows (minimum 500); DP signal-to-noise" in text
    assert "small-defaults: 40 defaults (minimum 50); DP" in text
    rho = record["institutions"]["small-rows"]["dp"]["rho"]
    assert rho >= 1 and f"ρ = {rho:.1f}" in text


def test_drowned_defaults_are_refused_with_the_numbers_and_an_epsilon_that_works(pool):
    nodes = nodes_of({"tiny": small_table(pool, 120, 4), "ok": small_table(pool, 400, 60, 1)})
    with pytest.raises(UserError) as info:
        assess_research_mode(nodes, settings(), {"tiny": 0.5, "ok": 0.5})
    message = str(info.value)
    assert message.startswith("refused: DP-SGD cannot meaningfully learn from 1 institution at the chosen ε — tiny:")
    assert re.search(r"noise multiplier σ = [0-9.]+ for \d+ steps", message) and "ρ = 0." in message
    assert "ok:" not in message and "--no-dp" in message
    found = re.search(r"--epsilon ([0-9.]+)", message)
    assert found, message
    record = assess_research_mode(nodes, settings(), {"tiny": float(found[1]), "ok": 0.5})  # the advice works
    assert record["institutions"]["tiny"]["dp"]["rho"] >= 1


def test_without_dp_small_institutions_are_only_recorded(pool):
    nodes = nodes_of({"tiny": small_table(pool, 120, 4)})
    record = assess_research_mode(nodes, settings(dp=False), {"tiny": None})
    assert "tiny: 120 rows (minimum 500) and 4 defaults (minimum 50); trained without DP" in record["summary"]
    assert record["institutions"]["tiny"]["dp"] is None


# ----------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def small_consortium(pool, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("small")
    for i, (rows, defaults) in enumerate([(300, 30), (320, 40), (340, 45)]):
        write_csv(small_table(pool, rows, defaults, seed=i), d / f"bank-{i + 1}.csv")
    return d


def test_below_the_minimum_the_advice_names_the_option_and_no_directory_is_left(small_consortium, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["simulate", "--data", str(small_consortium), "--out", str(out), "--rounds", "1"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "3 institution tables are below the DP-training minimum of 500 rows and 50 defaults" in err
    assert "bank-1 (300 rows, 30 defaults), bank-2 (320 rows, 40 defaults), bank-3 (340 rows, 45 defaults)" in err
    assert "research mode: --min-rows 300 --min-positives 30 " in err and "Traceback" not in err
    assert not out.exists()


def test_a_refused_research_run_leaves_no_directory_and_its_epsilon_advice_passes(small_consortium, tmp_path, capsys,
                                                                                monkeypatch):
    import simulation.flower_runtime as runtime

    out = tmp_path / "run"
    args = ["simulate", "--data", str(small_consortium), "--out", str(out), "--rounds", "2", "--min-rows", "300",
            "--min-positives", "30"]
    assert main(args + ["--epsilon", "0.3"]) == 2  # the statistics release alone spends more
    err = " ".join(capsys.readouterr().err.split())
    assert "refused: DP-SGD cannot meaningfully learn" in err and not out.exists()
    eps = re.search(r"--epsilon ([0-9.]+)", err)[1]

    class Started(Exception):
        pass

    def flower_starts(*a, **k):  # past every check: the run would start here
        raise Started()

    monkeypatch.setattr(runtime, "run_in_simulation", flower_starts)
    with pytest.raises(Started):
        main(args + ["--epsilon", eps])
    err = capsys.readouterr().err
    assert "RESEARCH MODE: 3 institutions below" in " ".join(err.split())


def test_min_rows_is_a_run_config_key_too(small_consortium, tmp_path, capsys, monkeypatch):
    import simulation.flower_runtime as runtime

    seen = {}

    def flower_starts(run_config, n, **k):
        seen.update(run_config)
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime, "run_in_simulation", flower_starts)
    out = tmp_path / "run"
    assert main(["simulate", "--data", str(small_consortium), "--out", str(out), "--rounds", "1", "--epsilon", "3",
                 "--run-config", "min-rows=300", "--run-config", "min-positives=30"]) == 130
    assert seen["min-rows"] == 300 and seen["min-positives"] == 30
    capsys.readouterr()


@pytest.mark.parametrize("extra, words", [
    (["--batch-size", "128", "--run-config", "batch-size=64"], "--run-config batch-size=64 and --batch-size 128"),
    (["--rounds", "3", "--run-config", "num-server-rounds=5"], "num-server-rounds=5 and --rounds 3"),
    (["--min-rows", "10", "--run-config", "min-rows=20"], "min-rows=20 and --min-rows 10"),
    (["--no-dp", "--run-config", "dp=true"], "dp=true and --no-dp"),
    (["--run-config", "resume-from='x'"], "use --resume RUN_DIR"),
    (["--run-config", "batch-size=0"], "'batch-size' must be positive, got 0"),
])
def test_a_key_given_twice_with_two_values_is_refused(extra, words, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["simulate", "--institutions", "2", "--out", str(out), *extra]) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


def test_a_run_config_key_an_option_sets_is_honoured(monkeypatch, tmp_path, capsys):
    import simulation.flower_runtime as runtime

    seen = {}

    def flower_starts(run_config, n, **k):
        seen.update(run_config)
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime, "run_in_simulation", flower_starts)
    assert main(["simulate", "--institutions", "2", "--scale", "0.3", "--out", str(tmp_path / "r"),
                 "--run-config", "batch-size=64", "--run-config", "num-server-rounds=3", "--batch-size", "64",
                 "--run-config", "learning-rate=0.02"]) == 130
    assert (seen["batch-size"], seen["num-server-rounds"], seen["learning-rate"]) == (64, 3, 0.02)
    capsys.readouterr()


def test_the_sweeps_in_process_runtime_refuses_and_records_small_institutions_as_simulate_does(small_consortium,
                                                                                               tmp_path):
    from simulation.plain_runner import simulate_plain
    from simulation.runner import SimulationOptions

    refused = SimulationOptions(data_dir=str(small_consortium), rounds=1, out=str(tmp_path / "refused"),
                                baselines=False)
    with pytest.raises(UserError, match=r"research mode: --min-rows 300 --min-positives 30 "):
        simulate_plain(refused)
    assert not (tmp_path / "refused").exists()
    summary = simulate_plain(SimulationOptions(data_dir=str(small_consortium), rounds=1, out=str(tmp_path / "run"),
                                               baselines=False, min_rows=300, min_positives=30))
    assert summary["research_mode"] is True
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["research_mode"]["institutions"]) == {"bank-1", "bank-2", "bank-3"}
