"""Run every benchmark and write docs/benchmarks.md (figures, plots, environment, commands).

    python bench/run_all.py                 # the full run behind docs/benchmarks.md (~1 h on 2 cores)
    python bench/run_all.py --quick         # a short smoke run (a few minutes), written to runs/benchmarks-quick/
    python bench/run_all.py --only scale,score_throughput   # rerun some; the others keep their last results

Each benchmark is a script in bench/ (or a fedcredit command) that prints one JSON line of
figures; this script runs them one after another in fresh processes (so they do not compete
for the two cores), keeps each one's last JSON line, stderr log and wall time, and writes

* ``docs/benchmarks/results.json`` — every benchmark's JSON line, the command that produced
  it, when, on which commit, with what load on the machine;
* ``docs/benchmarks/*.png`` — the plots (privacy–utility curve first);
* ``docs/benchmarks.md`` — the tables and plots, the hardware (CPU model, cores, RAM), the OS,
  the Python / torch / Flower / Opacus versions, seeds and the exact commands.

A benchmark whose script is missing (bench/poisoning.py until it lands) or whose data is
absent (the UCI file) is reported as skipped, with the reason.

The document is rendered from what is stored only: results.json and the PNGs beside it. What a
section needs from a benchmark's working files (the sweep's per-point table, the plots it wrote
under ``--work``) is copied into its results.json entry (``per_point``) and into the image
folder (``plots``) when the benchmark is recorded, so ``--only NAME`` or ``--render-only`` after
the working files are gone keeps every other section as it was. Commands are shown as they ran,
from the repository root (the UCI path as given to ``--uci``, relative by default). This script prints one JSON
line too (what ran, what failed, where the document is) and exits with 1 when a benchmark it
ran failed (0 when all ran or were skipped; ``--render-only`` runs nothing and exits 0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench.heterogeneity_doc renders that benchmark's section
DEFAULT_UCI = "../shared/data/UCI_Credit_Card.csv"  # from the repository root, where the benchmarks run
SEED = 0


@dataclass
class Ctx:
    quick: bool
    uci: Path
    work: Path
    img: Path
    results: dict[str, dict] = field(default_factory=dict)


@dataclass
class Bench:
    name: str
    what: str
    argv: Callable[[Ctx], list[str] | str]  # the command, or a reason to skip
    timeout: float
    quick_timeout: float = 900


def _py(script: str, *args: Any) -> list[str]:
    return [sys.executable, f"bench/{script}", *map(str, args)]


def _sweep_file(ctx: Ctx) -> Path:
    if not ctx.quick:
        return REPO / "configs" / "sweeps" / "privacy-utility.toml"
    path = ctx.work / "privacy-utility-quick.toml"
    path.write_text('[sweep]\nname = "privacy-utility-quick"\nruntime = "plain"\n\n[data]\nsource = "synthetic"\n'
                    'scale = 0.08\n\n[grid]\nepsilon = [1, 4, "no-dp"]\nrounds = 2\ninstitutions = 2\n')
    return path


def _report_run(ctx: Ctx) -> list[str] | str:
    sweep = ctx.results.get("privacy_utility", {}).get("result") or {}
    table = sweep.get("table")
    if not table or not Path(table).is_file():
        return "needs the privacy_utility sweep's run directories (run it first)"
    import csv

    rows = [r for r in csv.DictReader(open(table)) if r["status"] == "completed"]
    runs = [r["run_dir"] for r in rows if (Path(r["run_dir"]) / "model").is_dir()]
    if not runs:
        return "no Flower run directory with a model package in the sweep (quick sweeps use the plain loop)"
    pick = next((r["run_dir"] for r in rows if r["epsilon"] in ("1", "1.0") and r["run_dir"] in runs), runs[0])
    return _py("render_report.py", pick, "--out", ctx.img / "report.png", "--height", 3200)


def _no_uci(ctx: Ctx) -> str | None:
    """Why the UCI benchmarks cannot run (``ctx.uci`` is taken from the repository root), or None."""
    if (REPO / ctx.uci).is_file():
        return None
    return f"the UCI file is not at {ctx.uci} (from the repository root; --uci PATH)"


def _uci(ctx: Ctx, *args: Any) -> list[str] | str:
    if _no_uci(ctx):
        return _no_uci(ctx)
    return _py("quality_uci.py", "--data", ctx.uci, "--seed", SEED, *args)


def _heterogeneity(ctx: Ctx) -> list[str] | str:
    if _no_uci(ctx):
        return _no_uci(ctx)
    jobs = max(1, min(16, (os.cpu_count() or 1)))
    common = ["--data", ctx.uci, "--seed", SEED, "--jobs", jobs, "--plot-out", ctx.img / "heterogeneity.png"]
    if ctx.quick:
        return _py("heterogeneity.py", *common, "--only", "label-0.3/eps3", "--rounds", 2)
    return _py("heterogeneity.py", *common, "--compare")


def _poisoning(ctx: Ctx) -> list[str] | str:
    script = REPO / "bench" / "poisoning.py"
    if not script.is_file():
        return "bench/poisoning.py is not in this checkout yet"
    if not ctx.quick:
        return _py("poisoning.py", "--seed", SEED)
    help_text = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True,
                               timeout=120, check=False).stdout
    if "--quick" in help_text:
        return _py("poisoning.py", "--quick")
    # one attack, two rules, two rounds of small institutions: the smoke-test version
    wanted = {"--rounds": 2, "--scale": 0.25, "--rules": "mean,median", "--attacks": "scale", "--seed": SEED}
    return _py("poisoning.py", *[x for k, v in wanted.items() if k in help_text for x in (k, v)])


BENCHES: list[Bench] = [
    Bench("privacy_utility", "fedcredit sweep configs/sweeps/privacy-utility.toml: AUC vs ε",
          lambda c: [sys.executable, "-m", "fedcredit", "sweep", str(_sweep_file(c)), "--out",
                     str(c.work / "sweep-privacy-utility"), "--json"], 2400),
    Bench("render_report", "a run's report.html rendered in headless Chromium", _report_run, 600),
    Bench("synth_speed", "synthetic consortium generation and CSV writing",
          lambda c: _py("synth_speed.py", "--rows", 100_000 if c.quick else 1_000_000, "--seed", SEED), 900),
    Bench("score_throughput", "fedcredit score, CSV to CSV, end to end (target ≥ 100,000 rows/s)",
          lambda c: _py("score_throughput.py", "--seed", SEED,
                        *(["--rows", 100_000, "--no-stages"] if c.quick else ["--rows", 1_000_000, "--repeats", 3])),
          1800),
    Bench("reason_codes_speed", "fedcredit score with and without adverse-action reasons",
          lambda c: _py("reason_codes_speed.py", "--rows", 20_000 if c.quick else 100_000, "--seed", SEED), 1200),
    Bench("monitor_speed", "fedcredit monitor and backtest against fedcredit score on the same file (target ≥ "
          "100,000 rows/s and at least as fast as score)",
          lambda c: _py("monitor_speed.py", "--seed", SEED,
                        *(["--rows", 100_000] if c.quick else ["--rows", 1_000_000, "--repeats", 3])), 2400),
    Bench("dp_overhead", "DP-SGD epoch time vs non-private (target ratio ≤ 1.3)",
          lambda c: _py("dp_overhead.py", "--seed", SEED,
                        *(["--rows", 5000, "--repeats", 3, "--no-opacus"] if c.quick else [])), 1800),
    Bench("sim_overhead", "Flower's simulation runtime vs the same training in a plain loop",
          lambda c: _py("sim_overhead.py", "--seed", SEED,
                        *(["--institutions", 3, "--rows", 2000, "--rounds", 3] if c.quick else [])), 1800),
    Bench("deploy_latency", "a deployed DP round (TLS, node auth, 3 nodes on loopback) vs the same round simulated "
          "(target ratio ≤ 10)",
          lambda c: _py("deploy_latency.py", "--seed", 11,
                        *(["--rounds", 2, "--node-runtime", "fedcredit"] if c.quick else ["--before-timeout", 300])),
          3600),
    Bench("serve_latency", "fedcredit serve over loopback HTTP at concurrency 1, 8, 32, with and without the "
          "decision trail (targets: no errors or losses; p99 at 8 ≤ 10× in-process; trail ≤ 20 % of throughput)",
          lambda c: _py("serve_latency.py", "--seed", SEED, "--requests", 100 if c.quick else 600), 1800),
    Bench("quality_uci", "AUC on the UCI credit-card file: centralised, local-only, federated, federated + DP",
          lambda c: _uci(c, *(["--epsilons", "1", "--rounds", 3, "--dp-rounds", 3] if c.quick else [])), 3600),
    Bench("poisoning", "poisoned updates vs robust aggregation", _poisoning, 3600),
    Bench("heterogeneity", "heterogeneous consortia on the UCI file (IID, credit-limit bands, label skew α 0.3 / 1.0, "
          "size skew × ε 1, 3, no DP, and comparisons): does every member gain from joining under DP",
          lambda c: _heterogeneity(c), 14400),
    Bench("scale", "100 and 1,000 institutions through Flower's simulation runtime (5 rounds, DP)",
          lambda c: _py("scale.py", "--seed", SEED,
                        *(["--institutions", 10, "--rounds", 2] if c.quick else ["--institutions", "100,1000"])),
          10800),
]


# --------------------------------------------------------------------------------- running
def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30,
                              check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def run_bench(b: Bench, ctx: Ctx) -> dict:
    argv = b.argv(ctx)
    entry: dict[str, Any] = {"name": b.name, "what": b.what, "started": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "commit": _git("rev-parse", "--short", "HEAD"), "load_avg_before": os.getloadavg()[0]}
    if isinstance(argv, str):
        entry.update({"status": "skipped", "reason": argv})
        return entry
    entry["command"] = shown_command(argv)
    log = ctx.work / "logs" / f"{b.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONIOENCODING="utf-8", COLUMNS="150")
    with open(log, "w") as err:
        # its own session, so that a time-out ends the benchmark with everything it started (Ray too)
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=b.quick_timeout if ctx.quick else b.timeout)
            code: Any = proc.returncode
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, _ = proc.communicate()
            code = "timeout"
        except BaseException:
            _kill_group(proc)
            raise
    entry.update({"wall_s": round(time.perf_counter() - t0, 1), "returncode": code, "log": str(log),
                  "load_avg_after": os.getloadavg()[0]})
    result = _last_json(out)
    if result is None:
        entry.update({"status": "failed", "reason": f"no JSON line (exit {code}); see {log}",
                      "stderr_tail": log.read_text()[-1500:]})
    else:
        entry["result"] = result
        entry["status"] = "ok" if code == 0 else "failed"
        if entry["status"] == "failed":
            entry["reason"] = f"exit code {code}; see {log}"
    return entry


def shown_command(argv: list[Any]) -> str:
    """The command as run from the repository root: ``python`` for this interpreter, paths inside the
    repository relative to it, every other argument (``--uci``'s path) as given."""
    return shlex.join("python" if a == sys.executable else str(a).replace(str(REPO) + "/", "") for a in argv)


def keep_section_inputs(name: str, entry: dict, img: Path) -> None:
    """Copy into ``entry`` (and ``img``) what its section needs from the benchmark's working files,
    once, while they exist: the sweep's per-point rows (``per_point``) and the plots the benchmark
    wrote elsewhere (``plots``: names inside ``img``). An entry that has them keeps them."""
    r = entry.get("result") if entry.get("status") == "ok" else None
    if not r:
        return
    if name == "privacy_utility" and "per_point" not in entry:
        table = r.get("table")
        if table and Path(table).is_file():
            import csv

            with open(table, newline="") as f:
                entry["per_point"] = [{k: row.get(k, "") for k in SWEEP_COLUMNS} for row in csv.DictReader(f)]
    if "plots" in entry:
        return
    sources = {"privacy_utility": r.get("plots") or [], "heterogeneity": [r["plot"]] if r.get("plot") else [],
               "render_report": [img / "report.png"]}.get(name)
    if sources is None:
        return
    names = []
    for src in map(Path, sources):
        target = img / src.name
        if src.is_file() and src.resolve() != target.resolve():
            img.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
        if target.is_file():
            names.append(src.name)
    if names:
        entry["plots"] = names


def result_from_file(b: Bench, path: Path) -> dict:
    """A benchmark's entry from the output it printed elsewhere (``--result-from``): its last JSON
    line; a plot it names is looked for beside the file (the other machine's path is not here)."""
    result = _last_json(path.read_text())
    if result is None:
        raise SystemExit(f"--result-from: no JSON line in {path}")
    plot = result.get("plot")
    if plot and not Path(plot).is_file() and (path.parent / Path(plot).name).is_file():
        result["plot"] = str(path.parent / Path(plot).name)
    started = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    return {"name": b.name, "what": b.what, "started": started, "commit": result.get("commit") or _git(
        "rev-parse", "--short", "HEAD"), "command": result.get("command"), "wall_s": result.get("wall_s"),
        "machine": result.get("machine"), "status": "ok", "result": result}


def _kill_group(proc: subprocess.Popen) -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
            return
        except subprocess.TimeoutExpired:
            continue


def environment() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def ver(p):
        try:
            return version(p)
        except PackageNotFoundError:
            return None

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor() or platform.machine())
    mem_kb = int(next(ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal")))
    os_name = platform.platform()
    if Path("/etc/os-release").is_file():
        rel = dict(ln.strip().split("=", 1) for ln in open("/etc/os-release") if "=" in ln)
        os_name = f"{rel.get('PRETTY_NAME', '').strip(chr(34))} (kernel {platform.release()})"
    # what this script writes itself (results.json, plots, the document) is not a change to the code measured
    changed = [ln.split(maxsplit=1)[-1] for ln in _git("status", "--porcelain", "--untracked-files=no").splitlines()
               if ln.strip()]
    dirty = [path for path in changed if not path.startswith(("docs/benchmarks.md", "docs/benchmarks/"))]
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 2**20, 1), "os": os_name,
            "python": platform.python_version(),
            "packages": {p: ver(p) for p in ("torch", "flwr", "opacus", "ray", "numpy", "pandas", "pyarrow",
                                             "scikit-learn", "matplotlib")},
            "commit": _git("rev-parse", "HEAD"), "uncommitted_changes": bool(dirty)}


# --------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def make_plots(results: dict[str, dict], img: Path) -> dict[str, list[str]]:
    """PNG files per benchmark (relative names inside ``img``)."""
    plots: dict[str, list[str]] = {}
    img.mkdir(parents=True, exist_ok=True)

    def res(name):
        e = results.get(name) or {}
        return e.get("result") if e.get("status") == "ok" else None

    for name, e in results.items():  # copied into img when the benchmark was recorded (keep_section_inputs)
        if res(name) and e.get("plots"):
            plots[name] = [p for p in e["plots"] if (img / p).is_file()]
    plt = _plt()
    q = res("quality_uci")
    if q and "skipped" not in q:
        bars = [("centralised, HistGradientBoosting", q.get("auc_centralized_hgb")),
                ("centralised, MLP (pooled, no DP)", q.get("auc_centralized_mlp")),
                ("federated, no DP", q.get("auc_federated_nodp"))]
        bars += [(f"federated + DP, ε = {e}", v) for e, v in (q.get("auc_federated_dp") or {}).items()]
        bars += [("local-only, no DP (mean)", q.get("auc_local_only_mean"))]
        bars += [(f"local-only + DP, ε = {e} (mean)", v) for e, v in (q.get("auc_local_only_dp_mean") or {}).items()]
        bars = [(k, v) for k, v in bars if v is not None]
        fig, ax = plt.subplots(figsize=(8, 0.42 * len(bars) + 1.2), dpi=120)
        ax.barh(range(len(bars)), [v for _, v in bars], color=["#2a6f97" if "federated" in k else "#999999"
                                                                for k, _ in bars])
        ax.set_yticks(range(len(bars)))
        ax.set_yticklabels([k for k, _ in bars], fontsize=8.5)
        ax.invert_yaxis()
        lo = min(v for _, v in bars)
        ax.set_xlim(max(0.5, lo - 0.03), 1.0 if max(v for _, v in bars) > 0.95 else max(v for _, v in bars) + 0.02)
        for i, (_, v) in enumerate(bars):
            ax.text(v, i, f" {v:.3f}", va="center", fontsize=8)
        ax.set_xlabel("AUC (pooled holdouts; local-only: mean of each institution's own holdout)")
        ax.set_title(f"UCI credit-card default: {q.get('institutions')} institutions ({q.get('partition')} partition)",
                     fontsize=10)
        fig.tight_layout()
        fig.savefig(img / "quality_uci.png")
        plt.close(fig)
        plots["quality_uci"] = ["quality_uci.png"]
    s = res("score_throughput")
    if s and s.get("schema", {}).get("stages_s"):
        variants = [v for v in ("schema", "mapping") if v in s]
        stages = list(s["schema"]["stages_s"])
        fig, ax = plt.subplots(figsize=(8, 2.2 + 0.5 * len(variants)), dpi=120)
        for vi, v in enumerate(variants):
            left = 0.0
            for si, st in enumerate(stages):
                w = s[v]["stages_s"].get(st, 0.0)
                ax.barh(vi, w, left=left, color=plt.cm.tab10(si), label=st if vi == 0 else None)
                left += w
            startup = max(0.0, s[v]["wall_s"] - left)
            ax.barh(vi, startup, left=left, color="#cccccc", label="start-up, imports, model load" if vi == 0 else None)
            ax.text(s[v]["wall_s"], vi, f"  {s[v]['rows_per_s']:,} rows/s", va="center", fontsize=8.5)
        ax.set_yticks(range(len(variants)))
        ax.set_yticklabels(["schema format" if v == "schema" else "UCI format + mapping" for v in variants])
        ax.set_xlabel(f"seconds for {s['rows']:,} applicants (wall time of `fedcredit score`)")
        ax.set_xlim(0, max(s[v]["wall_s"] for v in variants) * 1.35)
        ax.legend(fontsize=7.5, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.32), frameon=False)
        fig.tight_layout()
        fig.savefig(img / "score_throughput.png")
        plt.close(fig)
        plots["score_throughput"] = ["score_throughput.png"]
    sc = res("scale")
    if sc and sc.get("results"):
        rows = [r for r in sc["results"] if r.get("wall_s") is not None]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
        labels = [f"{r['institutions']:,}" for r in rows]
        a1.bar(labels, [r["wall_s"] / 60 for r in rows], color="#2a6f97")
        for i, r in enumerate(rows):
            a1.text(i, r["wall_s"] / 60, f"{r['wall_s'] / 60:.1f} min\n{r.get('status', '')}", ha="center",
                    va="bottom", fontsize=8)
        a1.set_ylabel("wall time (minutes)")
        a1.set_xlabel("institutions")
        a1.set_ylim(0, max(r["wall_s"] for r in rows) / 60 * 1.3)
        a2.bar(labels, [r["peak_pss_sum_mb"] / 1024 for r in rows], color="#e07a1f", label="PSS (shared pages split)")
        a2.scatter(labels, [r["peak_rss_sum_mb"] / 1024 for r in rows], color="black", marker="_", s=400,
                   label="RSS sum (upper bound)", zorder=3)
        a2.set_ylabel("peak memory, all processes (GiB)")
        a2.set_xlabel("institutions")
        a2.set_ylim(0, max(r["peak_rss_sum_mb"] for r in rows) / 1024 * 1.45)
        a2.legend(fontsize=7.5, loc="upper left")
        fig.suptitle(f"Flower simulation, {sc.get('rounds')} rounds, DP ε = {sc.get('epsilon'):g}, "
                     f"~{sc.get('rows_per_institution'):,} borrowers per institution", fontsize=10)
        fig.tight_layout()
        fig.savefig(img / "scale.png")
        plt.close(fig)
        plots["scale"] = ["scale.png"]
    return plots


# --------------------------------------------------------------------------------- document
def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "—"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return "—" if v is None else str(v)


def key_figures(name: str, r: dict) -> list[tuple[str, Any]]:
    """(label, value) pairs for the summary and the benchmark's section."""
    if name == "heterogeneity":
        from bench import heterogeneity_doc

        return heterogeneity_doc.key_figures(r)
    if name == "synth_speed":
        return [("rows", r.get("rows")), ("generate rows/s", r.get("generate_rows_per_s")),
                ("write CSV rows/s", r.get("write_csv_rows_per_s")), ("oracle AUC", r.get("oracle_auc"))]
    if name == "score_throughput":
        out = [("rows", r.get("rows")), ("rows/s end to end (schema format)", r.get("rows_per_s"))]
        if "rows_per_s_mapping" in r:
            out.append(("rows/s end to end (UCI format + mapping)", r.get("rows_per_s_mapping")))
        out += [("target rows/s", r.get("target_rows_per_s")), ("target met", r.get("ok"))]
        for v in ("schema", "mapping"):
            if isinstance(r.get(v), dict):
                out.append((f"{v}: wall s / command s", f"{r[v]['wall_s']} / {r[v]['command_s']}"))
                if "stages_s" in r[v]:
                    out.append((f"{v}: stages (s)", ", ".join(f"{k} {x}" for k, x in r[v]["stages_s"].items())))
        return out
    if name == "monitor_speed":
        out = [("rows", r.get("rows")), ("repetitions (alternating)", r.get("repeats"))]
        for cmd, words in (("score", "score --out scores.csv"), ("monitor", "monitor"),
                           ("monitor_page", "monitor --out DIR (JSON + HTML page)"), ("backtest", "backtest")):
            if isinstance(r.get(cmd), dict):
                out.append((f"{words}: rows/s (wall s)", f"{_fmt(r[cmd]['rows_per_s'])} ({r[cmd]['wall_s']})"))
        out += [("monitor / backtest speed ÷ score speed", f"{r.get('monitor_vs_score')} / {r.get('backtest_vs_score')}")]
        if "monitor_vs_score_cpu" in r:
            out.append(("the same in CPU time (score's CPU s ÷ the command's)",
                        f"{r['monitor_vs_score_cpu']} / {r['backtest_vs_score_cpu']} (CPU s: "
                        + ", ".join(f"{c} {r[c]['cpu_s']}" for c in ("score", "monitor", "backtest")) + ")"))
        out += [("target rows/s", r.get("target_rows_per_s")), ("target met", r.get("ok"))]
        return out
    if name == "reason_codes_speed":
        return [("rows", r.get("rows")), ("score rows/s", r.get("score_rows_per_s")),
                ("score --explain rows/s", r.get("score_explain_rows_per_s")),
                ("explain / plain time", r.get("explain_over_plain"))]
    if name == "dp_overhead":
        return [("rows", r.get("rows")), ("plain epoch s", r.get("plain_epoch_s")), ("DP epoch s", r.get("dp_epoch_s")),
                ("DP / plain (wall)", r.get("ratio")), ("DP / plain (CPU)", r.get("ratio_cpu")),
                ("Opacus hooks / plain", r.get("opacus_ratio")), ("target ≤", r.get("target_ratio")),
                ("target met", r.get("ok"))]
    if name == "sim_overhead":
        return [("institutions × rows × rounds", f"{r.get('institutions')} × {r.get('rows')} × {r.get('rounds')}"),
                ("repetitions (interleaved)", r.get("repeats")),
                ("rounds 2…R: Flower s / plain s (medians)", f"{r.get('flower_rounds_s')} / {r.get('plain_rounds_s')}"),
                ("ratio, rounds 2…R (median)", r.get("ratio")),
                ("ratio per repetition", ", ".join(map(str, r.get("ratios") or [])) or None),
                ("warm-up to the end of round 1: Flower s / plain s",
                 f"{r.get('flower_warmup_s')} / {r.get('plain_warmup_s')}"),
                ("first repetition (both cold): ratio rounds 1…R / whole run",
                 f"{r.get('ratio_cold')} / {r.get('ratio_total')}"),
                ("AUC Flower / plain", f"{_fmt(r.get('auc_flower'))} / {_fmt(r.get('auc_plain'))}")]
    if name == "serve_latency":
        out = [("one application in process, no HTTP or trail (ms, p50 / p99)",
                f"{r['in_process_ms']['p50']} / {r['in_process_ms']['p99']}")]
        for level, v in (r.get("levels") or {}).items():
            for variant in ("trail", "no_trail"):
                x = v[variant]
                out.append((f"concurrency {level}, {variant.replace('_', ' ')}: p50 / p99 ms, decisions/s, errors",
                            f"{x['p50_ms']} / {x['p99_ms']}, {x['decisions_per_s']}, {x['errors']}"))
            out.append((f"concurrency {level}: throughput the trail costs", f"{v['trail_cost']:.1%}"))
        t = r.get("trail") or {}
        out += [("answered with the trail / lost / trail verifies", f"{t.get('answered')} / {t.get('lost')} / "
                                                                     f"{_fmt(t.get('trail_ok'))}"),
                ("trail service: groups, syncs, decisions per sync, mean sync ms",
                 f"{t.get('groups')}, {t.get('syncs')}, {t.get('decisions_per_sync')}, {t.get('sync_ms_mean')}"),
                ("p99 at concurrency 8 ÷ in-process p50 (target ≤ 10)", r.get("p99_c8_over_in_process")),
                ("largest trail cost (target ≤ 20 %)", f"{r.get('trail_cost_max', 0):.1%}"),
                ("targets met", ", ".join(f"{k}: {_fmt(v)}" for k, v in (r.get("ok") or {}).items())),
                ("load average during the run", r.get("load_avg"))]
        return out
    if name == "deploy_latency":
        ph, before = r.get("phases_s") or {}, r.get("before") or {}
        out = [("institutions × rows × rounds", f"{r.get('institutions')} × {r.get('rows')} × {r.get('rounds')}"),
               ("evaluate-every", r.get("evaluate_every")),
               ("node runtime", r.get("node_runtime")), ("nodes ready (s)", r.get("nodes_ready_s")),
               ("submit / app start / statistics (s)",
                f"{ph.get('submit')} / {ph.get('app_start')} / {ph.get('statistics')}"),
               ("rounds (s)", ", ".join(map(str, ph.get("rounds") or []))), ("final (s)", ph.get("final")),
               ("deployed round s / simulated round s (medians, rounds 2…R)",
                f"{r.get('deployed_round_s')} / {r.get('simulated_round_s')}"),
               ("ratio deployed ÷ simulated (target ≤ 10)", r.get("ratio")), ("ratio, all rounds", r.get("ratio_all"))]
        if before:
            bph = before.get("phases_s") or {}
            out += [("before (raw flower-supernode): rounds (s)", ", ".join(map(str, bph.get("rounds") or []))),
                    ("before: app start / statistics / final (s)",
                     f"{bph.get('app_start')} / {bph.get('statistics')} / {bph.get('final')}"),
                    ("before: status; round s, ratio",
                     f"{before.get('status')}; {before.get('round_s')}, {before.get('ratio')}"),
                    ("speed-up of a round (before ÷ after)", r.get("speedup"))]
        sd = r.get("deployed_final_auc_sd")
        out.append(("final AUC deployed (± its release noise's sd) / simulated (exact release)",
                    f"{_fmt(r.get('deployed_final_auc'))}{f' ± {_fmt(sd)}' if sd is not None else ''} / "
                    f"{_fmt(r.get('simulated_final_auc'))}"))
        return out
    if name == "privacy_utility":
        return [("points", r.get("points")), ("ran / skipped / failed",
                                              f"{r.get('ran')} / {r.get('skipped')} / {len(r.get('failed') or [])}")]
    if name == "render_report":
        return [("report bytes", r.get("report_bytes")), ("sections", len(r.get("sections") or [])),
                ("images (decoded)", f"{r.get('images')} ({r.get('images_decoded')})"),
                ("external references", len(r.get("external_references") or []))]
    if name == "quality_uci":
        if "skipped" in r:
            return [("skipped", r["skipped"])]
        out = [("AUC centralised HGB", r.get("auc_centralized_hgb")), ("AUC centralised MLP", r.get("auc_centralized_mlp")),
               ("AUC local-only (mean)", r.get("auc_local_only_mean")), ("AUC federated, no DP", r.get("auc_federated_nodp"))]
        out += [(f"AUC federated + DP, ε = {e}", v) for e, v in (r.get("auc_federated_dp") or {}).items()]
        out += [(f"AUC local-only + DP, ε = {e} (mean)", v) for e, v in (r.get("auc_local_only_dp_mean") or {}).items()]
        return out
    if name == "scale":
        out = []
        for x in r.get("results", []):
            n = x["institutions"]
            out.append((f"{n} institutions: status", x.get("status")))
            out.append((f"{n}: wall time", f"{x.get('wall_s')} s"))
            out.append((f"{n}: peak memory PSS / RSS sum", f"{x.get('peak_pss_sum_mb'):,} / {x.get('peak_rss_sum_mb'):,} MiB"))
            if x.get("phases_s"):
                ph = x["phases_s"]
                out.append((f"{n}: phases: start + load, statistics, rounds (mean), final + export, report + exit",
                            f"{ph.get('start_load_validate', '—')}, {ph['statistics']}, {ph['rounds']} "
                            f"({ph['round_mean']}), {ph['final_evaluation_export']}, "
                            f"{ph.get('report_model_card_exit', '—')} s"))
            out.append((f"{n}: final AUC, max ε spent", f"{_fmt(x.get('auc_federated'))}, {_fmt(x.get('epsilon_spent_max'))}"))
        return out
    if name == "poisoning":
        return [("institutions", r.get("institutions")), ("attacker (share of rows)",
                                                          f"{r.get('attacker')} ({r.get('attacker_share_of_rows')})"),
                ("rounds", r.get("rounds")), ("DP", r.get("dp")), ("clip-update-norm", r.get("clip_update_norm"))]
    return [(k, v) for k, v in r.items() if isinstance(v, (int, float, str, bool)) and k != "bench"][:14]


def notes(name: str, r: dict) -> list[str]:
    """A paragraph that reads a benchmark's figures (what they mean, which target is missed and why)."""
    if name == "deploy_latency":
        return deploy_latency_notes(r)
    if name == "monitor_speed":
        return monitor_speed_notes(r)
    if name != "serve_latency" or not r.get("levels"):
        return []
    lv = r["levels"]
    costs = [v["trail_cost"] for v in lv.values()]
    one, eight = lv.get("1", {}).get("trail"), lv.get("8", {}).get("trail")
    t = r.get("trail") or {}
    text = ["The service decides the applications that arrive together as one group (one validation pass, one "
            "scoring pass); a committer thread syncs the trail once for the groups written meanwhile and then "
            "answers them, while the next group is decided."]
    if one and eight:
        text.append(f"So at concurrency 8 it answers {eight['decisions_per_s'] / one['decisions_per_s']:.1f}× the "
                    f"decisions per second of concurrency 1, with p99 {r['p99_c8_over_in_process']}× the time of "
                    "deciding one application in process.")
    top = max(lv, key=int)
    text.append(f"Beyond that the machine's {r.get('cores')} cores are saturated — the HTTP client runs on the same "
                f"cores — and latency grows with the queue (concurrency {top}: p50 {lv[top]['trail']['p50_ms']} ms, "
                f"p99 {lv[top]['trail']['p99_ms']} ms).")
    sync = (f" (here {t['sync_ms_mean']} ms on average, one per {t['decisions_per_sync']} decisions)"
            if t.get("sync_ms_mean") is not None else "")
    text.append(f"What the trail costs is an Ed25519 signature and a line of JSON per decision and an fdatasync per "
                f"group{sync}; the measured throughput difference per level was {', '.join(f'{c:.1%}' for c in costs)}"
                + (" (negative: the trail-less service was the slower one in its turns)" if min(costs) < 0 else "")
                + ", and it moves by several points from run to run on a shared machine.")
    missed = [k for k, ok in (r.get("ok") or {}).items() if not ok]
    text.append(f"Targets missed: {', '.join(missed)}." if missed else "All three targets are met.")
    text.append(f"The load average was {r.get('load_avg')} on {r.get('cores')} cores during the run, so absolute "
                "times are several times an idle machine's; the targets are ratios measured side by side.")
    return ["", " ".join(text)]


def monitor_speed_notes(r: dict) -> list[str]:
    """Where each command's time goes (its own seconds against process start-up) and which target is missed."""
    cmds = [c for c in ("score", "monitor", "monitor_page", "backtest") if isinstance(r.get(c), dict)]
    if "score" not in cmds:
        return []
    words = {"score": "score", "monitor": "monitor", "monitor_page": "monitor --out", "backtest": "backtest"}
    text = [f"Each command ran in a fresh process, in turn, {r.get('repeats')} time(s) on the same file; of the "
            "median wall times, the command's own seconds (as it reports them: read, validate, score and its own "
            "work) were " + ", ".join(f"{words[c]} {r[c]['command_s']} of {r[c]['wall_s']} s" for c in cmds)
            + "; the rest is process start-up (imports, model load)."]
    missed = [f"{words[c]} ≥ 1× score ({r.get(f'{c}_vs_score')})" for c in ("monitor", "backtest")
              if c in cmds and (r.get(f"{c}_vs_score") or 0) < 1]
    missed += [f"{words[c]} ≥ {r.get('target_rows_per_s'):,} rows/s ({r[c]['rows_per_s']:,})"
               for c in ("monitor", "backtest") if c in cmds and r[c]["rows_per_s"] < (r.get("target_rows_per_s") or 0)]
    text.append(f"Targets missed: {'; '.join(missed)}." if missed else "Both targets are met.")
    if r.get("load_avg_1min") is not None:
        text.append(f"The 1-minute load average was {r['load_avg_1min']} at the end on {r.get('cpus')} cores shared "
                    "with other work, so rows/s are below an idle machine's; the ratios to score are measured side "
                    "by side.")
    return ["", " ".join(text)]


def deploy_latency_notes(r: dict) -> list[str]:
    """How many messages a deployed round is, whether the ratio meets its target, and the load."""
    if r.get("ratio") is None:
        return []
    text = []
    if r.get("fold_evaluation"):
        text.append("Each round is one message per node: a round's evaluation travels in the next round's train "
                    "message (`fold-evaluation`), so only the last round's evaluation and the final evaluation are "
                    "messages of their own.")
        rounds = (r.get("phases_s") or {}).get("rounds") or []
        if len(rounds) > 2:
            text.append(f"The last round, whose evaluation is a message of its own, took {rounds[-1]} s against a "
                        f"median {statistics.median(rounds[1:-1])} s for the one-message rounds 2…{len(rounds) - 1}.")
    met = r["ratio"] <= r.get("target_ratio", 10)
    text.append(f"The ratio {r['ratio']} {'meets' if met else 'misses'} the target of ≤ {r.get('target_ratio', 10)}"
                + ("." if met else ": the simulated round, too, is one message per round now, and what is left of a "
                   "deployed round is the transport of one message per node through the SuperLink and a SuperNode "
                   "against an in-memory message to a Ray actor of the simulation runtime. Flower moves a message "
                   "as one HTTPS request per object (every array and each of its chunks is an object: a train "
                   "message is ~16 objects, a reply carrying its folded evaluation ~30), so a round with 3 nodes "
                   "makes ~280 requests to the SuperLink, each costing it several milliseconds of CPU; on 2 shared "
                   "cores the round is bound by that CPU, not by waiting (fedcredit already shortens the SuperNode's "
                   "sleeps and Flower's retries of an object still being uploaded: `clients/supernode_launcher.py`, "
                   "`fedcredit/object_pulls.py`)."))
    load = r.get("load_avg")
    if load:
        text.append(f"The 1-minute load average was {load[0]} at the start and {load[-1]} at the end, on "
                    f"{(r.get('machine') or {}).get('cpus')} cores shared with other work: the deployed side (a "
                    "SuperLink, the SuperNodes and their runtimes, the ServerApp) is a dozen processes competing for "
                    "them against the simulation's one, so absolute times and the ratio vary with the load.")
    return ["", " ".join(text)]


def poisoning_table(r: dict) -> list[str]:
    clean, attacks = r.get("clean_auc") or {}, r.get("attack_auc") or {}
    rules = list(clean) or sorted({k for v in attacks.values() for k in v})
    if not rules:
        return []
    out = ["| final AUC (honest holdouts) | " + " | ".join(rules) + " |", "| --- |" + " ---: |" * len(rules)]
    for name, row in [("no attack", clean)] + [(a, v) for a, v in attacks.items()]:
        out.append(f"| {name} | " + " | ".join(_fmt(row.get(x)) for x in rules) + " |")
    return out


def headline(name: str, r: dict) -> str:
    try:
        if name == "score_throughput":
            return f"{r['rows_per_s']:,} rows/s (mapping: {r.get('rows_per_s_mapping', 0):,}), target ≥ 100,000"
        if name == "synth_speed":
            return f"{r['generate_rows_per_s']:,} rows/s generated, {r['write_csv_rows_per_s']:,} rows/s to CSV"
        if name == "reason_codes_speed":
            return f"{r['score_explain_rows_per_s']:,} rows/s with 3 reasons ({r['explain_over_plain']}× plain)"
        if name == "monitor_speed":
            return (f"monitor {r['monitor']['rows_per_s']:,} rows/s ({r['monitor_vs_score']}× score), backtest "
                    f"{r['backtest']['rows_per_s']:,} rows/s ({r['backtest_vs_score']}× score), score "
                    f"{r['score']['rows_per_s']:,}; target ≥ 100,000 and ≥ 1× score")
        if name == "dp_overhead":
            return f"DP/plain epoch {r['ratio']} (CPU {r['ratio_cpu']}), target ≤ 1.3"
        if name == "sim_overhead":
            return (f"Flower/plain rounds 2…R {r['ratio']} (median of {r.get('repeats')}); cold, rounds 1…R "
                    f"{r.get('ratio_cold')}; warm-up {r['flower_warmup_s']} s")
        if name == "serve_latency":
            t = r["trail"]
            cost = (f"trail costs ≤ {r['trail_cost_max']:.0%} of throughput" if r["trail_cost_max"] > 0 else
                    "no measurable trail cost (the trail-less service was no faster)")
            return (f"p99 at 8 concurrent {r['levels']['8']['trail']['p99_ms']} ms = {r['p99_c8_over_in_process']}× "
                    f"in-process ({r['in_process_ms']['p50']} ms), target ≤ 10×; {cost} (target ≤ 20 %); "
                    f"{r['errors']} errors, {t['lost']} of {t['answered']} lost")
        if name == "deploy_latency":
            text = (f"deployed/simulated round {r['ratio']} ({r['deployed_round_s']} s / {r['simulated_round_s']} s), "
                    "target ≤ 10")
            before = r.get("before") or {}
            if before.get("ratio"):
                text += f"; before #19 {before['ratio']} ({before['round_s']} s)"
            elif before:
                text += f"; before #19: {before.get('status')}"
            return text
        if name == "privacy_utility":
            return f"{r['points']} runs; see the curve"
        if name == "render_report":
            return f"{r.get('images_decoded')}/{r.get('images')} images, {len(r.get('sections') or [])} sections"
        if name == "quality_uci":
            if "skipped" in r:
                return f"skipped: {r['skipped']}"
            dp = ", ".join(f"ε={e}: {v:.3f}" for e, v in (r.get("auc_federated_dp") or {}).items())
            return f"federated {r['auc_federated_nodp']:.3f} (no DP); {dp}; centralised MLP {r['auc_centralized_mlp']:.3f}"
        if name == "heterogeneity":
            from bench import heterogeneity_doc

            return heterogeneity_doc.headline(r)
        if name == "poisoning":
            parts = [f"{a}: FedAvg {v['fedavg_auc']:.3f} → {v['best_rule']} {v['best_rule_auc']:.3f}"
                     for a, v in (r.get("summary") or {}).items() if v.get("best_rule")]
            return f"clean FedAvg {(r.get('clean_auc') or {}).get('mean', float('nan')):.3f}; " + "; ".join(parts)
        if name == "scale":
            return "; ".join(f"{x['institutions']:,}: {x.get('status')} in {x['wall_s'] / 60:.1f} min, "
                             f"{x['peak_pss_sum_mb'] / 1024:.1f} GiB" for x in r["results"])
    except (KeyError, TypeError, ZeroDivisionError):
        pass
    return ""


SWEEP_COLUMNS = ("epsilon", "status", "auc_federated", "auc_local_only_mean", "auc_centralized",
                 "epsilon_spent_max", "point_wall_s")


def sweep_table(rows: list[dict]) -> list[str]:
    """The sweep's per-point table from the rows stored in its entry (``per_point``)."""
    if not rows:
        return []
    out = ["| ε | status | AUC federated | AUC local-only (mean) | AUC centralised | ε spent (max) | wall s |",
           "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]

    def f(v, d=4):
        try:
            return f"{float(v):.{d}f}"
        except (TypeError, ValueError):
            return "—"

    for x in rows:
        out.append(f"| {x['epsilon'] or 'no DP'} | {x['status']} | {f(x['auc_federated'])} | "
                   f"{f(x['auc_local_only_mean'])} | {f(x['auc_centralized'])} | {f(x['epsilon_spent_max'], 3)} | "
                   f"{f(x['point_wall_s'], 1)} |")
    return out


def _commits(results: dict[str, dict]) -> str:
    commits = sorted({e["commit"] for e in results.values() if e.get("commit") and e.get("command")})
    if len(commits) <= 1:
        return f" `{commits[0]}`" if commits else " (unknown)"
    return "s " + ", ".join(f"`{c}`" for c in commits) + " (each section names its own)"


def write_document(results: dict[str, dict], env: dict, plots: dict[str, list[str]], doc: Path, img: Path,
                   command: str, quick: bool) -> None:
    rel = os.path.relpath(img, doc.parent)
    pk = env["packages"]
    lines = [
        "# Benchmarks" + (" (quick smoke run — not the published figures)" if quick else ""),
        "",
        "<!-- generated by bench/run_all.py; do not edit by hand -->",
        "",
        f"Every figure below comes from one run of `{command}` on commit"
        + _commits(results) + (" (plus uncommitted changes)" if env["uncommitted_changes"] else "")
        + f", started {min((e.get('started', '') for e in results.values() if e.get('started')), default='?')} (UTC). "
        "Each benchmark ran in a fresh process, one after another; its exact command is given in its section, "
        f"and every random choice is seeded (seed {SEED}). The raw JSON lines are in "
        f"[`{rel}/results.json`]({rel}/results.json).",
        "",
        "**Machine.** " + f"{env['cpu']}, {env['cores']} cores, {env['memory_gb']} GiB RAM; {env['os']}. "
        "The machine is shared with other work, so absolute times are noisy; the speed claims are ratios "
        "measured side by side in one process (load averages are recorded per benchmark).",
        "",
        f"**Software.** Python {env['python']}, torch {pk['torch']}, Flower {pk['flwr']}, Opacus {pk['opacus']}, "
        f"Ray {pk['ray']}, NumPy {pk['numpy']}, pandas {pk['pandas']}, pyarrow {pk['pyarrow']}, "
        f"scikit-learn {pk['scikit-learn']}, matplotlib {pk['matplotlib']}.",
        "",
        "**Reproduce.** `make install` (or `pip install -e .[dev]` with torch 2.13 CPU), then `" + command + "` "
        "(the UCI file from `../shared/data/UCI_Credit_Card.csv`, or `--uci PATH`). "
        "`python bench/run_all.py --only NAME` reruns one benchmark and keeps the others' figures.",
        "",
        "## Summary",
        "",
        "| benchmark | what | result | wall |",
        "| --- | --- | --- | ---: |",
    ]
    for b in BENCHES:
        e = results.get(b.name)
        if e is None:
            continue
        if e["status"] == "ok":
            res = headline(b.name, e["result"]) or "see below"
        else:
            res = f"**{e['status']}**: {e.get('reason', '')}"
        lines.append(f"| [{b.name}](#{b.name.replace('_', '-')}) | {b.what} | {res} | "
                     f"{_fmt(e.get('wall_s'))} s |" if e.get("wall_s") is not None else
                     f"| [{b.name}](#{b.name.replace('_', '-')}) | {b.what} | {res} | — |")
    for b in BENCHES:
        e = results.get(b.name)
        if e is None:
            continue
        lines += ["", f"## {b.name.replace('_', '-')}", "", f"{b.what}."]
        if e.get("command") and e.get("machine"):  # run on another machine (--result-from)
            lines += ["", f"Command: `{e['command']}` on {e['machine']} (wall {e.get('wall_s')} s, commit "
                          f"`{e.get('commit')}`, {e.get('started')})."]
        elif e.get("command"):
            lines += ["", f"Command: `{e['command']}` (wall {e.get('wall_s')} s, load average "
                          f"{e.get('load_avg_before', 0):.1f} → {e.get('load_avg_after', 0):.1f}, commit "
                          f"`{e.get('commit')}`, {e.get('started')})."]
        if e["status"] != "ok":
            lines += ["", f"**{e['status']}**: {e.get('reason', '')}"]
            continue
        r = e["result"]
        lines += ["", "| figure | value |", "| --- | ---: |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in key_figures(b.name, r)]
        lines += notes(b.name, r)
        if b.name == "privacy_utility":
            table = sweep_table(e.get("per_point") or [])
            if table:
                lines += ["", "Per point (the sweep's results table):", ""] + table
        if b.name == "poisoning":
            table = poisoning_table(r)
            if table:
                lines += [""] + table
        if b.name == "heterogeneity":
            from bench import heterogeneity_doc

            lines += heterogeneity_doc.tables(r)
        for p in plots.get(b.name, []):
            lines += ["", f"![{b.name}: {p}]({rel}/{p})"]
        lines += ["", "<details><summary>JSON line</summary>", "", "```json", json.dumps(r), "```", "", "</details>"]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run; writes runs/benchmarks-quick/ by default")
    ap.add_argument("--only", help="comma-separated benchmarks to run (the others keep their stored results)")
    ap.add_argument("--skip", default="", help="comma-separated benchmarks not to run")
    ap.add_argument("--uci", default=DEFAULT_UCI,
                    help="the UCI credit-card CSV (quality_uci, heterogeneity); a relative path is taken from the "
                         "repository root and shown as given in the commands (default %(default)s)")
    ap.add_argument("--doc", help="the Markdown file (default docs/benchmarks.md; quick: runs/benchmarks-quick/)")
    ap.add_argument("--work", help="scratch directory for sweeps, runs and logs (default runs/benchmarks-work)")
    ap.add_argument("--render-only", action="store_true",
                    help="run nothing: rewrite the document and plots from the stored results.json")
    ap.add_argument("--result-from", action="append", default=[], metavar="NAME=FILE",
                    help="run nothing: store the last JSON line of FILE as NAME's result (a benchmark run on "
                         "another machine: its line names the machine and the command), then render")
    args = ap.parse_args(argv)
    args.render_only = args.render_only or bool(args.result_from)

    names = [b.name for b in BENCHES]
    only = [s.strip() for s in args.only.split(",")] if args.only else names
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = [n for n in only + list(skip) if n not in names]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    base = REPO / "runs" / "benchmarks-quick" if args.quick else REPO / "docs"
    doc = Path(args.doc) if args.doc else base / "benchmarks.md"
    img = doc.parent / "benchmarks"
    work = Path(args.work) if args.work else REPO / "runs" / ("benchmarks-quick-work" if args.quick else "benchmarks-work")
    work.mkdir(parents=True, exist_ok=True)
    img.mkdir(parents=True, exist_ok=True)
    store = img / "results.json"
    stored = json.loads(store.read_text()) if store.is_file() else {}
    results: dict[str, dict] = dict(stored.get("benchmarks", {}))
    for item in args.result_from:
        name, _, path = item.partition("=")
        if name not in names or not Path(path).is_file():
            ap.error(f"--result-from {item}: NAME must be one of {', '.join(names)} and FILE an existing file")
        results[name] = result_from_file(next(b for b in BENCHES if b.name == name), Path(path))
        keep_section_inputs(name, results[name], img)
    for name, e in results.items():  # entries stored before their sections' inputs were kept
        keep_section_inputs(name, e, img)
    ctx = Ctx(quick=args.quick, uci=Path(args.uci), work=work, img=img, results=results)
    cmd = "python bench/run_all.py" + (" --quick" if args.quick else "")
    for b in BENCHES:
        if b.name not in only or b.name in skip or args.render_only:
            continue
        print(f"[run_all] {b.name} …", file=sys.stderr, flush=True)
        if b.name == "privacy_utility":
            shutil.rmtree(work / "sweep-privacy-utility", ignore_errors=True)  # a fresh sweep, not a resumed one
        results[b.name] = run_bench(b, ctx)
        e = results[b.name]
        keep_section_inputs(b.name, e, img)
        print(f"[run_all] {b.name}: {e['status']} {e.get('reason', '')} ({e.get('wall_s', 0)} s)", file=sys.stderr,
              flush=True)
        store.write_text(json.dumps({"environment": environment(), "benchmarks": results}, indent=2) + "\n")
    env = stored.get("environment") if args.render_only and stored.get("environment") else environment()
    cmd = stored.get("command", cmd) if args.render_only else cmd
    plots = make_plots(results, img)
    store.write_text(json.dumps({"environment": env, "command": cmd, "benchmarks": results}, indent=2) + "\n")
    write_document(results, env, plots, doc, img, cmd, args.quick)
    ran = [] if args.render_only else [n for n in only if n not in skip]
    failed = [n for n in ran if n in results and results[n]["status"] not in ("ok", "skipped")]
    print(json.dumps({"bench": "run_all", "quick": args.quick, "doc": str(doc), "results": str(store),
                      "ran": ran, "status": {n: results[n]["status"] for n in ran if n in results},
                      "failed": failed, "ok": not failed}))
    if failed:
        print(f"[run_all] failed: {', '.join(failed)} (see their sections in {doc} and the logs in "
              f"{work / 'logs'})", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
