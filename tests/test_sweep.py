"""``fedcredit sweep``: validated sweep files, resumable grids, the results table and the plots.

The fast tests run a tiny grid (2 synthetic institutions, 1 round) in the in-process loop
(runtime = "plain"); the slow test runs a grid through Flower's simulation runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from configs.errors import ConfigError
from simulation.sweep import load_sweep, run_sweep, stored_result

TINY = """
[sweep]
name = "tiny"
runtime = "plain"

[data]
source = "synthetic"
scale = 0.08

[grid]
epsilon = [2, "no-dp"]
rounds = 1
institutions = 2
"""


def write(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("text, where, words", [
    ("[grid]\nepsilons = [1]\n", "grid.epsilons", "did you mean 'epsilon'"),
    ("[grid]\nepsilon = [1, -2]\n", "grid.epsilon[1]", "positive finite"),
    ("[grid]\nepsilon = [1, \"none\"]\n", "grid.epsilon[1]", '"no-dp"'),
    ("[grid]\nepsilon = [1, 1]\n", "grid.epsilon", "repeats 1"),
    ("[grid]\nepsilon = []\n", "grid.epsilon", "is empty"),
    ("[grid]\nrounds = 0\n", "grid.rounds", "at least 1"),
    ("[grid]\nrounds = 2.5\n", "grid.rounds", "whole number"),
    ("[grid]\ninstitutions = [1, 2]\n", "grid.institutions[0]", "at least 2"),
    ("[grid]\nstrategy = \"fedsgd\"\n", "grid.strategy", "fedavg, fedprox, fedadam"),
    ("[sweep]\nruntime = \"plain\"\n[grid]\nstrategy = [\"fedavg\", \"fedadam\"]\n", "grid.strategy[1]",
     'runtime = "flower"'),
    ("[grid]\npartition = \"iid\"\n", "grid.partition", 'source = "table"'),
    ("[sweep]\nruntime = \"ray\"\n", "sweep.runtime", "flower, plain"),
    ("[sweep]\nbaselines = \"yes\"\n", "sweep.baselines", "a boolean"),
    ("[data]\nsource = \"synthetic\"\npath = \"x.csv\"\n", "data.path", 'only for source = "table"'),
    ("[data]\nscale = 0.01\n", "data.scale", "too small"),
    ("[data]\nsource = \"table\"\npath = \"missing.csv\"\n", "data.path", "file not found"),
    ("[run-config]\nnum-server-rounds = 3\n", "run-config.num-server-rounds", "use grid.rounds"),
    ("[run-config]\nbatch-sise = 3\n", "[run-config]", "did you mean 'batch-size'"),
    ("[run-config]\nbatch-size = \"big\"\n", "[run-config]", "whole number"),
    ("[grdi]\n", "grdi", "did you mean 'grid'"),
])
def test_invalid_sweep_files_name_the_key(tmp_path, text, where, words):
    with pytest.raises(ConfigError) as exc:
        load_sweep(write(tmp_path, text))
    msg = str(exc.value)
    assert where in msg and words in msg, msg
    assert str(tmp_path / "sweep.toml") in msg


def test_table_source_needs_partition_and_feature(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match=r"grid\.partition: required for a table source"):
        load_sweep(write(tmp_path, '[data]\nsource = "table"\npath = "t.csv"\n'))
    with pytest.raises(ConfigError, match=r"data\.feature: required when grid\.partition includes \"feature\""):
        load_sweep(write(tmp_path, '[data]\nsource = "table"\npath = "t.csv"\n[grid]\npartition = ["iid", "feature"]\n'))
    cfg = load_sweep(write(tmp_path, '[data]\nsource = "table"\npath = "t.csv"\nfeature = "credit_limit"\n'
                                     '[grid]\npartition = ["iid", "feature"]\nseed = [0, 1]\n'))
    assert cfg.path == (tmp_path / "t.csv").resolve()  # relative to the sweep file
    assert len(cfg.points()) == 4 and {p.partition for p in cfg.points()} == {"iid", "feature"}


def test_grid_is_the_product_of_the_axes(tmp_path):
    cfg = load_sweep(write(tmp_path, "[grid]\nepsilon = [1, 4, \"no-dp\"]\nstrategy = [\"fedavg\", \"fedprox\"]\n"
                                     "seed = [0, 1]\ninstitutions = 5\n"))
    points = cfg.points()
    assert len(points) == 12 and len({p.key for p in points}) == 12
    assert {p.epsilon for p in points} == {1.0, 4.0, None}
    assert "nodp-fedprox-r20-e1-n5-archetypes-s1" in {p.key for p in points}


def test_cli_reports_a_bad_sweep_file_without_traceback(tmp_path, fedcredit_cli):
    bad = write(tmp_path, "[grid]\nepsilon = [0]\n")
    proc = fedcredit_cli("sweep", bad, "--json", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "grid.epsilon[0]" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["ok"] is False


# ------------------------------------------------------------------------ running, resuming
def test_tiny_sweep_table_plots_and_resume(tmp_path):
    cfg = load_sweep(write(tmp_path, TINY))
    out = tmp_path / "out"

    class Stop(KeyboardInterrupt):
        pass

    def interrupt_after_first(stage, point, index, total, result):
        if stage == "done":
            raise Stop  # as if the user pressed Ctrl-C after the first point

    with pytest.raises(Stop):
        run_sweep(cfg, out, on_point=interrupt_after_first)
    first, second = (p.key for p in cfg.points())
    assert (out / "points" / f"{first}.json").is_file()
    assert not (out / "points" / f"{second}.json").exists()
    stamp = (out / "points" / f"{first}.json").stat().st_mtime_ns

    seen = []
    outcome = run_sweep(cfg, out, on_point=lambda stage, p, i, n, r: seen.append((stage, p.key)))
    assert outcome.skipped == [first] and outcome.ran == [second] and not outcome.failed
    assert ("skip", first) in seen and ("start", second) in seen
    assert (out / "points" / f"{first}.json").stat().st_mtime_ns == stamp  # not run again

    table = pd.read_csv(out / "results.csv")
    assert list(table["key"]) == [first, second]
    assert table["status"].tolist() == ["completed", "completed"]
    assert table["dp"].tolist() == [True, False] and table["epsilon"].iloc[0] == 2 and pd.isna(table["epsilon"].iloc[1])
    for col in ("auc_federated", "auc_centralized", "auc_local_only_mean"):
        assert table[col].between(0, 1).all(), col
    assert 0 < table["epsilon_spent_max"].iloc[0] <= 2
    for run_dir in table["run_dir"]:
        assert (Path(run_dir) / "metrics.json").is_file()
    assert pd.read_parquet(out / "results.parquet")["key"].tolist() == [first, second]
    plots = {p.name for p in outcome.plots}
    assert {"privacy_utility.png", "auc_by_round.png"} <= plots
    for p in outcome.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000

    # a third run does nothing but rewrite the table and plots
    again = run_sweep(cfg, out)
    assert again.ran == [] and sorted(again.skipped) == sorted([first, second])

    # other fixed settings: the stored results no longer count
    changed = load_sweep(write(tmp_path, TINY + "\n[run-config]\nbatch-size = 128\n", "changed.toml"))
    assert all(stored_result(out, p, changed.fingerprint()) is None for p in changed.points())


# ------------------------------------------------------------------------------ Flower
@pytest.mark.slow
def test_sweep_through_flower_cli(tmp_path, fedcredit_cli):
    sweep = write(tmp_path, TINY.replace('runtime = "plain"', 'runtime = "flower"').replace("rounds = 1", "rounds = 2"))
    proc = fedcredit_cli("sweep", sweep, "--out", tmp_path / "out", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["ran"] == 2 and summary["points"] == 2
    table = pd.read_csv(summary["table"])
    assert table["status"].tolist() == ["completed", "completed"] and table["rounds_completed"].tolist() == [2, 2]
    for run_dir in table["run_dir"]:
        assert (Path(run_dir) / "model" / "model.json").is_file()  # a full Flower run directory
    again = fedcredit_cli("sweep", sweep, "--out", tmp_path / "out", "--json", timeout=300)
    assert json.loads(again.stdout.strip().splitlines()[-1])["skipped"] == 2


# ------------------------------------------------------------------------ table source
@pytest.fixture(scope="module")
def pooled_csv(tmp_path_factory) -> Path:
    """10,000 synthetic borrowers in one table (the schema's columns)."""
    from simulation.synthetic import generate_consortium, write_csv

    m = generate_consortium(None, scale=0.25, seed=4)
    path = tmp_path_factory.mktemp("pooled") / "pooled.csv"
    write_csv(pd.concat([d.table for d in m["_data"]], ignore_index=True), path)
    return path


def table_sweep(tmp_path: Path, table: Path, name: str = "sweep.toml", **data) -> Path:
    settings = {"alpha": 0.5, "min_rows": 1000, **data}
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    return write(tmp_path, f'[sweep]\nruntime = "plain"\nbaselines = false\n\n[data]\nsource = "table"\n'
                           f'path = "{table}"\n{lines}\n\n[grid]\nepsilon = "no-dp"\nrounds = 1\n'
                           f'institutions = 2\npartition = "dirichlet"\n', name)


def test_changed_partition_settings_repartition_on_resume(tmp_path, pooled_csv, monkeypatch):
    from simulation import sweep_run as sweep

    seen: list[dict[str, bytes]] = []

    def fake_point(cfg, point, run_dir, data_dir, on_event, verbose):  # the split is what matters here
        seen.append({p.name: p.read_bytes() for p in sorted(Path(data_dir).glob("institution-*.csv"))})
        return {"status": "completed", "auc_federated": 0.7}

    monkeypatch.setattr(sweep, "_run_point", fake_point)
    out = tmp_path / "out"
    run_sweep(load_sweep(table_sweep(tmp_path, pooled_csv)), out)
    data_dir = out / "data" / "n2-dirichlet-s0"
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert manifest["params"]["alpha"] == 0.5

    changed = load_sweep(table_sweep(tmp_path, pooled_csv, "alpha5.toml", alpha=5.0))
    outcome = run_sweep(changed, out)  # the point reruns (other settings) — on a new split
    assert outcome.ran == [p.key for p in changed.points()]
    assert len(seen) == 2 and seen[0].keys() == seen[1].keys() and seen[0] != seen[1]
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert manifest["params"]["alpha"] == 5.0
    assert manifest["sweep_fingerprint"] == changed.partition_fingerprint(changed.points()[0])

    # the same settings again: the stored partition is reused, not rewritten
    stamp = (data_dir / "manifest.json").stat().st_mtime_ns
    (out / "points" / f"{changed.points()[0].key}.json").unlink()
    run_sweep(changed, out)
    assert (data_dir / "manifest.json").stat().st_mtime_ns == stamp and seen[2] == seen[1]


def test_min_rows_too_large_for_the_table_is_a_sweep_file_error(tmp_path, pooled_csv, capsys):
    from fedcredit.cli import main

    sweep_file = table_sweep(tmp_path, pooled_csv, min_rows=6000)
    out = tmp_path / "out"
    assert main(["sweep", str(sweep_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "data.min_rows" in err and "grid.institutions" in err and "10000" in err, err
    assert "--min-rows" not in err and "Traceback" not in err
    assert not (out / "points").exists()  # stopped before any point ran


def test_out_that_is_a_file_is_a_user_error(tmp_path, capsys):
    from configs.errors import UserError
    from fedcredit.cli import main

    sweep_file = write(tmp_path, TINY)
    taken = tmp_path / "results.txt"
    taken.write_text("not a directory\n")
    assert main(["sweep", str(sweep_file), "--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert f"--out {taken}" in err and "not a directory" in err and "Traceback" not in err
    assert main(["sweep", str(sweep_file), "--out", str(taken / "sub")]) == 2
    assert "--out" in capsys.readouterr().err
    with pytest.raises(UserError, match="--out"):
        run_sweep(load_sweep(sweep_file), taken)
    assert taken.read_text() == "not a directory\n"


def test_missing_table_is_named_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, '[data]\nsource = "table"\npath = "nope.csv"\n[grid]\npartition = "iid"\n')
    with pytest.raises(ConfigError) as exc:
        load_sweep("sweep.toml")
    assert str(exc.value).endswith("data.path: file not found: nope.csv"), str(exc.value)
