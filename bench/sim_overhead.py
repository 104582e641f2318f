"""What Flower's simulation runtime costs on top of the training itself.

The same consortium training — INSTITUTIONS synthetic institutions of ROWS rows, ROUNDS rounds,
the same run config, data, splits and node code — once through Flower's simulation runtime
(`simulation.flower_runtime.run_in_simulation`, Ray actors, push/pull rounds, checkpoints) and
once through a plain in-process FedAvg loop (`simulation.plain_loop.run_plain`), side by side
in this process. Flower's warm-up (Ray start, actor start-up and imports, the nodes loading
their data, the statistics query: everything before round 1) is reported separately, next to
the plain loop's set-up (loading the same data, the same statistics).

Prints one JSON line: total, set-up and rounds times of both; ratio = Flower's rounds time /
the plain loop's rounds time (the training rounds: train + aggregate + evaluate), and
ratio_total including warm-up; both final AUCs (they should agree).

Data and run directories go to a temporary directory, removed at the end (also after a failure
or SIGTERM), unless ``--keep DIR`` names where to keep them.

Usage: python bench/sim_overhead.py [--institutions 10] [--rows 10000] [--rounds 20] [--dp] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.scratch import scratch_dir  # noqa: E402


def write_institutions(out: Path, institutions: int, rows: int, seed: int) -> None:
    from configs.schema import load_schema
    from simulation.archetypes import load_archetypes
    from simulation.synthetic import generate_institution, institution_rng, write_csv

    schema = load_schema()
    archetypes = load_archetypes()
    for i in range(institutions):
        a = archetypes[i % len(archetypes)]
        table, _ = generate_institution(a, rows, institution_rng(seed, i), schema, id_prefix=f"{a.code}{i}")
        write_csv(table, out / f"{i:03d}-{a.id}.csv")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--institutions", type=int, default=10)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--dp", action="store_true", help="train with DP-SGD (default: non-private)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", metavar="DIR", help="keep the data and run directories here")
    args = ap.parse_args(argv)
    with scratch_dir(args.keep, "fedcredit-simoverhead-") as work:
        print(json.dumps(measure(args, work)))
    return 0


def measure(args: argparse.Namespace, work: Path) -> dict:
    from simulation.flower_runtime import run_in_simulation
    from simulation.plain_loop import run_plain

    for old in ("data", "plain-state", "flower-state", "flower-run"):  # a --keep directory used before
        shutil.rmtree(work / old, ignore_errors=True)
    data = work / "data"
    data.mkdir(parents=True)
    write_institutions(data, args.institutions, args.rows, args.seed)
    common = {"num-server-rounds": args.rounds, "dp": args.dp, "data-dir": str(data), "seed": args.seed,
              "min-available-nodes": args.institutions, "min-train-nodes": args.institutions,
              "sim-max-epsilon": 3.0}

    t0 = time.time()
    plain = run_plain(dict(common, **{"state-root": str(work / "plain-state")}), args.institutions)
    plain_wall = time.time() - t0

    run_dir = work / "flower-run"
    t0 = time.time()
    run_in_simulation(dict(common, **{"run-dir": str(run_dir), "state-root": str(work / "flower-state")}),
                      args.institutions)
    flower_wall = time.time() - t0
    events = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]

    def at(kind: str, pick=min) -> float:
        return pick(datetime.fromisoformat(e["time"]).timestamp() for e in events if e["event"] == kind)

    warmup = at("round-start") - t0
    rounds_s = at("round-end", max) - at("round-start")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "bench": "sim_overhead", "institutions": args.institutions, "rows": args.rows, "rounds": args.rounds,
        "dp": args.dp, "flower_wall_s": round(flower_wall, 2), "flower_warmup_s": round(warmup, 2),
        "flower_rounds_s": round(rounds_s, 2), "plain_wall_s": round(plain_wall, 2),
        "plain_setup_s": round(plain["setup_s"], 2), "plain_rounds_s": round(plain["rounds_s"], 2),
        "ratio": round(rounds_s / plain["rounds_s"], 3), "ratio_total": round(flower_wall / plain_wall, 3),
        "auc_flower": metrics["final"]["auc"], "auc_plain": plain["final"]["auc"],
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "work_dir": str(work) if args.keep else None,
    }


if __name__ == "__main__":
    sys.exit(main())
