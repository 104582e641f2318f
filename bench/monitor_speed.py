"""Monitoring throughput: ``fedcredit monitor`` and ``backtest`` against ``fedcredit score``, one JSON line.

    python bench/monitor_speed.py [--rows 1000000] [--repeats 1] [--seed 0]

Synthesises ``--rows`` borrowers with outcomes (the card-issuer archetype of
``simulation.synthetic``) and writes them once as CSV; the model package is the one of
``bench/score_throughput.py`` (an MLP (64, 32) over an encoder fitted on the rows), here carrying
a development population (``reference.json``) built from another 200,000 rows, exact, as a
simulation exports it. Then, in fresh processes and alternating in every repetition, on the same
file:

* ``fedcredit score --out scores.csv --json`` (the reference speed; bench/score_throughput.py);
* ``fedcredit monitor --json`` (score PSI, CSI of every feature, data quality);
* ``fedcredit monitor --out DIR --json`` (the same, plus monitor.json and the HTML page with its plots);
* ``fedcredit backtest --json`` (AUC with DeLong CI, calibration by band, Hosmer–Lemeshow, cut-off).

Each is timed from outside (``wall_s``: process start, imports, read, validate, score, the
command's own work, exit) and reports ``rows_per_s`` = rows / wall_s; repeats take the median,
and each repetition starts with the next command (no command always runs first). ``cpu_s`` is the
CPU time the process used (user + system): on a machine shared with other work it moves much
less than the wall time, so it says whether two commands do the same amount of work.
``monitor_vs_score`` and ``backtest_vs_score`` are speed ratios (score's wall time over the
command's, measured side by side: above 1 is faster than score); ``*_vs_score_cpu`` the same
with CPU time. ``ok``: monitor and backtest
reach the target (≥ 100,000 rows/s) and are at least as fast as score.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

TARGET_ROWS_PER_S = 100_000
REFERENCE_ROWS = 200_000


def timed(args: list[str]) -> dict:
    """Run ``python -m fedcredit ARGS --json`` in a fresh process; wall time, the CPU time the
    process used (user + system, from the kernel's accounting of finished children) and the
    command's summary."""
    import resource

    env = dict(os.environ, PYTHONPATH=str(REPO))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fedcredit", *args, "--json"], cwd=REPO, capture_output=True,
                          text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"fedcredit {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "command_s": summary.get("seconds"), "summary": summary}


def package_with_reference(directory: Path, table, reference_table) -> Path:
    """score_throughput's package, carrying ``reference_table`` as its development population."""
    from models.package import load_package, save_package
    from models.reference import reference_from_table
    from score_throughput import make_package

    pkg = load_package(make_package(directory / "plain", table))
    pkg.reference = reference_from_table(reference_table, pkg.schema, pkg.predict_pd(reference_table),
                                         reference_table[pkg.schema.label.name].to_numpy(), source="200,000 rows")
    return save_package(directory / "model", pkg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each command (median reported)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import numpy as np
    from score_throughput import print_figures

    from configs.schema import load_schema
    from simulation.archetypes import load_archetypes
    from simulation.synthetic import generate_institution, write_csv

    schema = load_schema(None)
    arch = next(a for a in load_archetypes() if a.code == "CC")
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    table, _ = generate_institution(arch, args.rows, rng, schema)
    reference_table, _ = generate_institution(arch, REFERENCE_ROWS, rng, schema, id_prefix="DEV")
    out: dict = {"bench": "monitor_speed", "rows": args.rows, "seed": args.seed, "repeats": args.repeats,
                 "target_rows_per_s": TARGET_ROWS_PER_S, "reference_rows": REFERENCE_ROWS}
    with tempfile.TemporaryDirectory(prefix="fedcredit-monitor-bench-") as tmp:
        tmp = Path(tmp)
        data = tmp / "book.csv"
        write_csv(table, data)
        model = package_with_reference(tmp, table, reference_table)
        out["prepare_s"] = round(time.perf_counter() - t0, 2)
        out["csv_mb"] = round(data.stat().st_size / 1e6, 1)
        del table, reference_table
        commands = {
            "score": ["score", "--model", str(model), "--data", str(data), "--out", str(tmp / "scores.csv")],
            "monitor": ["monitor", "--model", str(model), "--data", str(data)],
            "monitor_page": ["monitor", "--model", str(model), "--data", str(data), "--out", str(tmp / "monitoring")],
            "backtest": ["backtest", "--model", str(model), "--data", str(data)],
        }
        runs: dict[str, list[dict]] = {k: [] for k in commands}
        names = list(commands)
        for i in range(args.repeats):
            for name in names[i % len(names):] + names[:i % len(names)]:  # each repetition starts one later
                runs[name].append(timed(commands[name]))
        for name, rs in runs.items():
            wall = statistics.median(r["wall_s"] for r in rs)
            out[name] = {"wall_s": round(wall, 3), "cpu_s": round(statistics.median(r["cpu_s"] for r in rs), 3),
                         "command_s": round(statistics.median(r["command_s"] for r in rs), 3),
                         "rows_per_s": round(args.rows / wall)}
        out["monitor"]["status"] = runs["monitor"][-1]["summary"]["status"]
        out["backtest"]["auc"] = round(runs["backtest"][-1]["summary"]["auc"], 4)
    for name in ("monitor", "monitor_page", "backtest"):
        out[f"{name}_vs_score"] = round(out["score"]["wall_s"] / out[name]["wall_s"], 3)
        out[f"{name}_vs_score_cpu"] = round(out["score"]["cpu_s"] / out[name]["cpu_s"], 3)
    out["ok"] = all(out[n]["rows_per_s"] >= TARGET_ROWS_PER_S and out[f"{n}_vs_score"] >= 1.0
                    for n in ("monitor", "backtest"))
    return print_figures(out)


if __name__ == "__main__":
    sys.exit(main())
