"""bench/run_all.py (the benchmark list, the document, the exit code) and the clean-up of the
benchmarks' temporary directories — cheap: nothing here runs a benchmark."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_main(bench, monkeypatch, *args: str):
    """``bench.main()`` with ``args`` on its command line."""
    monkeypatch.setattr(sys, "argv", [bench.__file__, *args])
    return bench.main()


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run_all():
    return load_bench("run_all")


ENV = {"cpu": "Test CPU 9000 @ 3.0GHz", "cores": 2, "memory_gb": 7.8, "os": "Test Linux 1 (kernel 6.1)",
       "python": "3.11.9", "packages": {"torch": "2.13.0", "flwr": "1.42.0", "opacus": "1.5.4", "ray": "2.50.0",
                                        "numpy": "2.1.0", "pandas": "2.2.3", "pyarrow": "18.0.0",
                                        "scikit-learn": "1.6.0", "matplotlib": "3.10.0"},
       "commit": "0123456789abcdef", "uncommitted_changes": False}

RESULTS = {
    "synth_speed": {"rows": 1_000_000, "generate_rows_per_s": 250_000, "write_csv_rows_per_s": 400_000,
                    "oracle_auc": 0.8},
    "score_throughput": {"rows": 1_000_000, "rows_per_s": 200_000, "target_rows_per_s": 100_000, "ok": True},
    "dp_overhead": {"rows": 20_000, "plain_epoch_s": 1.0, "dp_epoch_s": 1.2, "ratio": 1.2, "ratio_cpu": 1.1,
                    "target_ratio": 1.3, "ok": True},
    "sim_overhead": {"institutions": 10, "rows": 10_000, "rounds": 20, "flower_rounds_s": 30.0,
                     "plain_rounds_s": 25.0, "ratio": 1.2, "ratio_total": 1.5, "flower_warmup_s": 12.0,
                     "auc_flower": 0.77, "auc_plain": 0.77},
    "quality_uci": {"institutions": 5, "partition": "feature", "auc_centralized_hgb": 0.78,
                    "auc_centralized_mlp": 0.77, "auc_local_only_mean": 0.74, "auc_federated_nodp": 0.77,
                    "auc_federated_dp": {"1": 0.766}, "auc_local_only_dp_mean": {"1": 0.7}},
}


def entry(run_all, name: str, status: str = "ok", result: dict | None = None) -> dict:
    argv = next(b for b in run_all.BENCHES if b.name == name).argv(
        run_all.Ctx(quick=False, uci=REPO / "README.md", work=Path("/nonexistent"),  # any existing file
                    img=Path("/nonexistent")))
    e = {"name": name, "status": status, "started": "2025-01-01T00:00:00+00:00", "commit": "0123456",
         "wall_s": 12.5, "load_avg_before": 0.5, "load_avg_after": 1.0}
    if isinstance(argv, list):
        e["command"] = " ".join("python" if a == sys.executable else str(a).replace(str(REPO) + "/", "")
                                for a in argv)
    if status == "ok":
        e["result"] = result or {}
    else:
        e["reason"] = "exit code 1; see runs/benchmarks-work/logs/x.log"
    return e


def test_the_listed_benchmarks_are_all_run(run_all):
    names = [b.name for b in run_all.BENCHES]
    assert len(names) == len(set(names))
    for wanted in ("synth_speed", "sim_overhead", "dp_overhead", "quality_uci", "poisoning", "score_throughput",
                   "scale"):
        assert wanted in names
        assert (REPO / "bench" / f"{wanted}.py").is_file()


def test_render_only_writes_hardware_versions_seeds_and_commands(run_all, tmp_path):
    doc = tmp_path / "doc" / "benchmarks.md"
    img = doc.parent / "benchmarks"
    img.mkdir(parents=True)
    benchmarks = {n: entry(run_all, n, result=r) for n, r in RESULTS.items()}
    benchmarks["poisoning"] = entry(run_all, "poisoning", status="failed")
    (img / "results.json").write_text(json.dumps({"environment": ENV, "command": "python bench/run_all.py",
                                                  "benchmarks": benchmarks}))
    rc = run_all.main(["--render-only", "--doc", str(doc), "--work", str(tmp_path / "work")])
    assert rc == 0
    text = doc.read_text()
    # hardware
    assert "Test CPU 9000 @ 3.0GHz, 2 cores, 7.8 GiB RAM; Test Linux 1 (kernel 6.1)" in text
    # versions
    assert "Python 3.11.9, torch 2.13.0, Flower 1.42.0, Opacus 1.5.4" in text
    # seeds
    assert f"seed {run_all.SEED}" in text
    # the run's command and each benchmark's exact command
    assert "one run of `python bench/run_all.py`" in text
    for name in benchmarks:
        assert f"## {name.replace('_', '-')}" in text
        assert f"Command: `{benchmarks[name]['command']}`" in text, name
    assert "Command: `python bench/synth_speed.py --rows 1000000 --seed 0`" in text
    assert "**failed**: exit code 1" in text  # a failure is stated, not hidden
    stored = json.loads((img / "results.json").read_text())
    assert stored["environment"] == ENV and set(stored["benchmarks"]) == set(benchmarks)


def test_exit_code_is_non_zero_when_a_benchmark_fails(run_all, tmp_path, monkeypatch, capsys):
    outcome = {"status": "failed"}
    monkeypatch.setattr(run_all, "run_bench",
                        lambda b, ctx: entry(run_all, b.name, outcome["status"], RESULTS.get(b.name)))
    args = ["--only", "synth_speed,dp_overhead", "--work", str(tmp_path / "work"),
            "--doc", str(tmp_path / "doc" / "benchmarks.md")]
    assert run_all.main(args) == 1
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ok"] is False and summary["failed"] == ["synth_speed", "dp_overhead"]
    outcome["status"] = "ok"
    assert run_all.main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ok"] is True



def _section(text: str, name: str) -> str:
    start = text.index(f"\n## {name}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_rerunning_one_benchmark_keeps_the_sections_whose_work_files_are_gone(run_all, tmp_path, monkeypatch):
    """The sweep's per-point table and plots live under --work; once that is cleaned, ``--only``
    another benchmark (or ``--render-only``) still renders them, from results.json and the images."""
    sweep = tmp_path / "work" / "sweep-privacy-utility"
    sweep_result = {"ok": True, "points": 2, "ran": 2, "skipped": 0, "failed": [], "table": str(sweep / "results.csv"),
                    "plots": [str(sweep / "plots" / "privacy_utility.png"), str(sweep / "plots" / "auc_by_round.png")]}

    def run_bench(b, ctx):
        if b.name == "privacy_utility":  # what the sweep leaves in its --out directory
            (sweep / "plots").mkdir(parents=True)
            (sweep / "results.csv").write_text(
                "epsilon,status,auc_federated,auc_local_only_mean,auc_centralized,epsilon_spent_max,point_wall_s,"
                "run_dir\n1.0,completed,0.72501,0.68384,0.79471,0.9951,13.84,/x/eps1\n"
                ",completed,0.79042,0.72361,0.79733,,12.31,/x/nodp\n")
            for png in ("privacy_utility.png", "auc_by_round.png"):
                (sweep / "plots" / png).write_bytes(b"\x89PNG " + png.encode())
        return entry(run_all, b.name, result=sweep_result if b.name == "privacy_utility" else RESULTS[b.name])

    monkeypatch.setattr(run_all, "run_bench", run_bench)
    doc = tmp_path / "doc" / "benchmarks.md"
    args = ["--work", str(tmp_path / "work"), "--doc", str(doc)]
    assert run_all.main(["--only", "privacy_utility,quality_uci", *args]) == 0
    before = doc.read_text()
    section = _section(before, "privacy-utility")
    assert "| 1.0 | completed | 0.7250 | 0.6838 | 0.7947 | 0.995 | 13.8 |" in section
    assert "| no DP | completed | 0.7904 | 0.7236 | 0.7973 | — | 12.3 |" in section
    assert "](benchmarks/privacy_utility.png)" in section and "](benchmarks/auc_by_round.png)" in section
    assert (doc.parent / "benchmarks" / "auc_by_round.png").read_bytes() == b"\x89PNG auc_by_round.png"

    import shutil

    shutil.rmtree(tmp_path / "work")  # the working files are gone
    assert run_all.main(["--only", "synth_speed", *args]) == 0
    after = doc.read_text()
    for name in ("privacy-utility", "quality-uci"):
        assert _section(after, name) == _section(before, name), name
    assert "## synth-speed" in after
    assert run_all.main(["--render-only", *args]) == 0
    assert doc.read_text() == after


def test_commands_are_shown_as_they_ran_with_the_data_path_as_given(run_all, tmp_path, monkeypatch):
    uci = tmp_path / "UCI_Credit_Card.csv"
    uci.write_text("ID\n1\n")
    relative = Path(os.path.relpath(uci, REPO))  # as given to --uci, from the repository root
    ctx = run_all.Ctx(quick=False, uci=relative, work=tmp_path, img=tmp_path)
    assert run_all.shown_command(run_all._uci(ctx)) == f"python bench/quality_uci.py --data {relative} --seed 0"
    seen = []
    monkeypatch.setattr(run_all, "run_bench", lambda b, c: seen.append(c.uci) or entry(run_all, b.name, "skipped"))
    run_all.main(["--only", "quality_uci", "--work", str(tmp_path / "w"), "--doc", str(tmp_path / "d" / "b.md")])
    assert seen == [Path("../shared/data/UCI_Credit_Card.csv")]  # the default stays relative

    doc = tmp_path / "doc" / "benchmarks.md"
    (doc.parent / "benchmarks").mkdir(parents=True)
    stored = {"quality_uci": entry(run_all, "quality_uci", result=RESULTS["quality_uci"]),
              "synth_speed": entry(run_all, "synth_speed", result=RESULTS["synth_speed"])}
    stored["quality_uci"]["command"] = "python bench/quality_uci.py --data ../shared/data/UCI_Credit_Card.csv --seed 0"
    absolute = f"python bench/synth_speed.py --out {REPO.parent}/elsewhere/x.csv --seed 0"
    stored["synth_speed"]["command"] = absolute
    (doc.parent / "benchmarks" / "results.json").write_text(json.dumps(
        {"environment": ENV, "command": "python bench/run_all.py", "benchmarks": stored}))
    assert run_all.main(["--render-only", "--doc", str(doc), "--work", str(tmp_path / "work")]) == 0
    text = doc.read_text()
    assert "Command: `python bench/quality_uci.py --data ../shared/data/UCI_Credit_Card.csv --seed 0` (" in text
    assert f"Command: `{absolute}` (" in text  # not rewritten for where this checkout happens to be



def test_monitor_speed_section_states_the_ratios_to_score_and_the_missed_targets(run_all):
    r = {"bench": "monitor_speed", "rows": 1_000_000, "repeats": 3, "target_rows_per_s": 100_000,
         "score": {"wall_s": 10.0, "command_s": 7.0, "rows_per_s": 100_000},
         "monitor": {"wall_s": 8.0, "command_s": 6.0, "rows_per_s": 125_000, "status": "stable"},
         "monitor_page": {"wall_s": 12.5, "command_s": 10.0, "rows_per_s": 80_000},
         "backtest": {"wall_s": 12.5, "command_s": 11.0, "rows_per_s": 80_000, "auc": 0.5},
         "monitor_vs_score": 1.25, "monitor_page_vs_score": 0.8, "backtest_vs_score": 0.8, "ok": False,
         "cpus": 2, "load_avg_1min": 3.5}
    assert run_all.headline("monitor_speed", r) == ("monitor 125,000 rows/s (1.25× score), backtest 80,000 rows/s "
                                                    "(0.8× score), score 100,000; target ≥ 100,000 and ≥ 1× score")
    note = " ".join(run_all.notes("monitor_speed", r))
    assert "score 7.0 of 10.0 s, monitor 6.0 of 8.0 s, monitor --out 10.0 of 12.5 s, backtest 11.0 of 12.5 s" in note
    assert "Targets missed: backtest ≥ 1× score (0.8); backtest ≥ 100,000 rows/s (80,000)." in note
    r.update(backtest={"wall_s": 9.0, "command_s": 8.0, "rows_per_s": 111_111}, backtest_vs_score=1.111)
    assert "Both targets are met." in " ".join(run_all.notes("monitor_speed", r))



def test_deploy_latency_shows_the_deployed_final_aucs_noise_beside_it(run_all):
    """The deployed run releases noised evaluation figures (fresh noise each run), the simulation
    exact ones: the deployed AUC is shown with its noise's standard deviation, so that a gap between
    the two is read against it."""
    r = {"benchmark": "deploy_latency", "deployed_final_auc": 0.5919, "deployed_final_auc_sd": 0.0412,
         "simulated_final_auc": 0.6657}
    rows = dict(run_all.key_figures("deploy_latency", r))
    key = "final AUC deployed (± its release noise's sd) / simulated (exact release)"
    assert rows[key] == "0.5919 ± 0.0412 / 0.6657"
    del r["deployed_final_auc_sd"]  # a result measured before the sd was reported
    assert dict(run_all.key_figures("deploy_latency", r))[key] == "0.5919 / 0.6657"

# ----------------------------------------------------------------- temporary directories
@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """tempfile's directory for the test, and SIGTERM handlers left alone."""
    import signal

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(signal, "signal", lambda *a: None)
    return tmp


def test_sim_overhead_removes_its_temporary_directory(scratch, tmp_path, monkeypatch):
    import simulation.plain_loop

    bench = load_bench("sim_overhead")
    made = []

    def write_institutions(out, institutions, rows, seed):
        made.append(out)
        (out / "000-x.csv").write_text("a\n1\n")

    def boom(*a, **k):
        raise RuntimeError("training failed")

    monkeypatch.setattr(bench, "write_institutions", write_institutions)
    monkeypatch.setattr(simulation.plain_loop, "run_plain", boom)
    with pytest.raises(RuntimeError, match="training failed"):
        run_main(bench, monkeypatch, "--institutions", "2")
    assert made and made[0].is_relative_to(scratch)
    assert list(scratch.iterdir()) == []  # removed after the failure too
    keep = tmp_path / "keep"
    with pytest.raises(RuntimeError):
        run_main(bench, monkeypatch, "--institutions", "2", "--keep", str(keep))
    assert (keep / "data" / "000-x.csv").is_file()


def test_quality_uci_removes_its_temporary_directory(scratch, tmp_path, monkeypatch):
    import simulation.partition_files

    bench = load_bench("quality_uci")
    data = tmp_path / "uci.csv"
    data.write_text("ID\n1\n")
    made = []

    def write_partition(source, out_dir, **kw):
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "institution-1.csv").write_text("a\n1\n")
        made.append(Path(out_dir))
        raise RuntimeError("partition failed")

    monkeypatch.setattr(simulation.partition_files, "load_partition_source", lambda *a, **k: SimpleNamespace(table=None))
    monkeypatch.setattr(simulation.partition_files, "write_partition", write_partition)
    with pytest.raises(RuntimeError, match="partition failed"):
        run_main(bench, monkeypatch, "--data", str(data))
    assert made and made[0].is_relative_to(scratch)
    assert list(scratch.iterdir()) == []
    keep = tmp_path / "keep"
    with pytest.raises(RuntimeError):
        run_main(bench, monkeypatch, "--data", str(data), "--keep", str(keep))
    assert (keep / "institutions" / "institution-1.csv").is_file()


def _hetero_line(setting: str, seed: int, gains: list[float], pooled: float, group: str = "grid") -> dict:
    """A bench/heterogeneity.py setting line: members whose chosen model (the global one) sits ``gains``
    above their local-only AUC of 0.7."""
    members = [{"id": f"institution-{i + 1}", "rows": 1000 * (i + 1), "default_rate": 0.1 * (i + 1),
                "auc_local_only": 0.7, "auc_federated": 0.7 + g, "auc_personalized": 0.69 + g,
                "chosen_model": "global", "gain_from_joining": g, "auc_centralized": 0.8}
               for i, g in enumerate(gains)]
    return {"bench": "heterogeneity", "setting": setting, "group": group, "partition": setting.split("/")[0],
            "partition_seed": 7, "epsilon": 3.0, "strategy": "fedavg", "rounds": 20, "seed": seed,
            "status": "completed", "members": members, "auc_federated_pooled": pooled, "auc_chosen_pooled": pooled,
            "auc_centralized_pooled": 0.77, "auc_chosen_mean": 0.7 + sum(gains) / len(gains),
            "auc_centralized_mean": 0.8, "auc_local_only_mean": 0.7,
            "members_worse_than_local_only": sum(g < -0.005 for g in gains), "target_pooled_met": pooled >= 0.75,
            "wall_s": 20.0, "machine": "Test Xeon, 16 cores, Python 3.12.3",
            "global_by_round": [{"round": 1, "auc": 0.6, "mean_pd": 0.3}]}


def test_heterogeneity_summary_averages_each_setting_over_its_seeds():
    summary = load_bench("heterogeneity_summary")
    lines = [_hetero_line("label-0.3/eps3", 0, [0.01, -0.02], 0.76), _hetero_line("label-0.3/eps3", 1, [0.03, 0.0], 0.78),
             _hetero_line("compare/fedavg-before", 0, [-0.05, 0.01], 0.70, group="recipe"),
             {"bench": "heterogeneity", "setting": "iid/eps3", "seed": 1, "error": "RuntimeError: boom"}]
    s = summary.summary_line(lines, SimpleNamespace(institutions=2, rounds=20, seed=0, runtime="inprocess", jobs=16),
                             12.0, None)
    rows = {r["setting"]: r for r in s["settings"]}
    assert [r["setting"] for r in s["settings"]] == ["label-0.3/eps3", "compare/fedavg-before"]  # the grid first
    t = rows["label-0.3/eps3"]
    assert t["seeds"] == [0, 1] and t["members_worse_by_seed"] == [1, 0] and t["min_gain"] == pytest.approx(-0.02)
    assert t["auc_federated_pooled"] == pytest.approx(0.77)
    assert t["auc_federated_pooled_sd"] == pytest.approx(0.0141421356, rel=1e-6)  # sample sd of 0.76, 0.78
    assert t["target_pooled_met_by_seed"] == [True, True]
    assert rows["compare/fedavg-before"]["auc_federated_pooled_sd"] is None  # one seed: no sd
    m1, m2 = s["target"]["label-0.3/eps3"]["members"]
    assert m1["gain_from_joining"] == pytest.approx(0.02) and m1["seeds_worse"] == 0
    assert m2["gain_from_joining"] == pytest.approx(-0.01) and m2["seeds_worse"] == 1
    assert s["seeds"] == [0, 1] and s["failed"] == ["iid/eps3 (seed 1)"] and s["machine"].startswith("Test Xeon")


def test_a_result_measured_elsewhere_is_rendered_with_its_machine_command_and_targets(run_all, tmp_path):
    summary = load_bench("heterogeneity_summary")
    lines = [_hetero_line("label-0.3/eps3", seed, [0.01, 0.02], 0.76) for seed in (0, 1)]
    line = summary.summary_line(lines, SimpleNamespace(institutions=2, rounds=20, seed=0, runtime="inprocess",
                                                       jobs=16), 30.0, None)
    line["command"] = "python bench/heterogeneity.py --seeds 0,1 --jobs 16"
    out = tmp_path / "elsewhere" / "heterogeneity.jsonl"
    out.parent.mkdir()
    out.write_text("\n".join(json.dumps(x) for x in lines + [line]) + "\n")
    doc = tmp_path / "doc" / "benchmarks.md"
    (doc.parent / "benchmarks").mkdir(parents=True)
    (doc.parent / "benchmarks" / "results.json").write_text(json.dumps(
        {"environment": ENV, "command": "python bench/run_all.py",
         "benchmarks": {"synth_speed": entry(run_all, "synth_speed", result=RESULTS["synth_speed"])}}))
    assert run_all.main(["--result-from", f"heterogeneity={out}", "--doc", str(doc),
                         "--work", str(tmp_path / "work")]) == 0
    text = doc.read_text()
    assert ("Command: `python bench/heterogeneity.py --seeds 0,1 --jobs 16` on Test Xeon, 16 cores, "
            "Python 3.12.3") in text
    assert ("label-0.3/eps3: no member's chosen model more than 0.005 below its local-only model in 2 of 2 seeds; "
            "the members' chosen models, pooled, within 0.02 of the centralised model in 2 of 2 seeds "
            "(0.760 ± 0.000 vs 0.770; the global model alone: 0.760 ± 0.000)") in text
    assert "| label-0.3/eps3 | 3 | 0, 0 |" in text and "## synth-speed" in text  # the stored results stay
    with pytest.raises(SystemExit):
        run_all.main(["--result-from", f"nonsense={out}", "--doc", str(doc)])
