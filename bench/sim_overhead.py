"""What Flower's simulation runtime costs on top of the training itself.

The same consortium training — INSTITUTIONS synthetic institutions of ROWS rows, ROUNDS rounds,
the same run config, data, splits and node code — once through Flower's simulation runtime
(`simulation.flower_runtime.run_in_simulation`, Ray actors, push/pull rounds, checkpoints) and
once through a plain in-process FedAvg loop (`simulation.plain_loop.run_plain`), side by side
in this process. Flower's warm-up (Ray start, actor start-up and imports, the nodes loading
their data, the statistics query: everything before round 1) is reported separately, next to
the plain loop's set-up (loading the same data, the same statistics).

Both are run ``--repeats`` times, interleaved (plain first in even repetitions, Flower first in
odd ones, so drift in the machine's load hits both), on fresh state and run directories, the
plain loop with this process's data cache emptied. Round 1 is warm-up for both: Flower's new
actors import the training code, start torch and load and encode their nodes' data lazily in
their first messages, and the plain loop pays its own first-use costs there too — only once per
process, though, so a later repetition's plain round 1 would be warm while Flower's never is.

Prints one JSON line: ratio = the median over repetitions of Flower's / the plain loop's time
for rounds 2…R (train + aggregate + evaluate, checkpoints and ledger included on Flower's side),
with every repetition's ratio and raw times; flower_warmup_s / plain_warmup_s = start until the
end of round 1 (medians); ratio_cold and ratio_total = the first repetition (both cold) over
rounds 1…R and over the whole run; both final AUCs (they should agree).

Data and run directories go to a temporary directory, removed at the end (also after a failure
or SIGTERM), unless ``--keep DIR`` names where to keep them.

Usage: python bench/sim_overhead.py [--institutions 10] [--rows 10000] [--rounds 20] [--repeats 3] [--dp]
                                   [--keep DIR]
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
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; medians are reported")
    ap.add_argument("--keep", metavar="DIR", help="keep the data and run directories here")
    args = ap.parse_args(argv)
    with scratch_dir(args.keep, "fedcredit-simoverhead-") as work:
        print(json.dumps(measure(args, work)))
    return 0


def measure(args: argparse.Namespace, work: Path) -> dict:
    import statistics

    for old in ("data", "plain-state", "flower-state", "flower-run"):  # a --keep directory used before
        shutil.rmtree(work / old, ignore_errors=True)
    data = work / "data"
    data.mkdir(parents=True)
    write_institutions(data, args.institutions, args.rows, args.seed)
    common = {"num-server-rounds": args.rounds, "dp": args.dp, "data-dir": str(data), "seed": args.seed,
              "min-available-nodes": args.institutions, "min-train-nodes": args.institutions,
              "sim-max-epsilon": 3.0}
    reps = []
    for k in range(max(1, args.repeats)):
        order = (plain_once, flower_once) if k % 2 == 0 else (flower_once, plain_once)
        rep = {}
        for run in order:
            rep.update(run(common, args.institutions, work / f"rep-{k}"))
        reps.append(rep)

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in reps), 3)

    ratios = [r["flower_after_round_1_s"] / r["plain_after_round_1_s"] for r in reps]
    first = reps[0]
    return {
        "bench": "sim_overhead", "institutions": args.institutions, "rows": args.rows, "rounds": args.rounds,
        "dp": args.dp, "repeats": len(reps),
        "flower_rounds_s": median("flower_after_round_1_s"), "plain_rounds_s": median("plain_after_round_1_s"),
        "ratio": round(statistics.median(ratios), 3), "ratios": [round(x, 3) for x in ratios],
        "flower_warmup_s": median("flower_warmup_s"), "plain_warmup_s": median("plain_warmup_s"),
        "ratio_cold": round(first["flower_rounds_all_s"] / first["plain_rounds_all_s"], 3),
        "ratio_total": round(first["flower_wall_s"] / first["plain_wall_s"], 3),
        "repetitions": [{k: round(v, 3) for k, v in r.items() if k.endswith("_s")} for r in reps],
        "auc_flower": first["auc_flower"], "auc_plain": first["auc_plain"],
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "work_dir": str(work) if args.keep else None,
    }


def plain_once(common: dict, institutions: int, work: Path) -> dict:
    """The plain in-process loop: wall, warm-up (to the end of round 1), rounds seconds, final AUC."""
    from clients.node import clear_data_cache
    from simulation.plain_loop import run_plain

    clear_data_cache()  # loaded and encoded afresh in every repetition, as Flower's new actors do
    t0 = time.time()
    plain = run_plain(dict(common, **{"state-root": str(work / "plain-state")}), institutions)
    wall = time.time() - t0
    return {"plain_wall_s": wall, "plain_warmup_s": plain["setup_s"] + plain["round_s"][0],
            "plain_rounds_all_s": plain["rounds_s"], "plain_after_round_1_s": plain["rounds_s"] - plain["round_s"][0],
            "auc_plain": plain["final"]["auc"]}


def flower_once(common: dict, institutions: int, work: Path) -> dict:
    """Flower's simulation runtime: wall, warm-up (to the end of round 1), rounds seconds, final AUC."""
    from simulation.flower_runtime import run_in_simulation

    run_dir = work / "flower-run"
    t0 = time.time()
    run_in_simulation(dict(common, **{"run-dir": str(run_dir), "state-root": str(work / "flower-state")}),
                      institutions)
    wall = time.time() - t0
    events = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]

    def at(kind: str, pick=min, rnd: int | None = None) -> float:
        return pick(datetime.fromisoformat(e["time"]).timestamp() for e in events
                    if e["event"] == kind and (rnd is None or e.get("round") == rnd))

    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"flower_wall_s": wall, "flower_warmup_s": at("round-end", rnd=1) - t0,
            "flower_rounds_all_s": at("round-end", max) - at("round-start"),
            "flower_after_round_1_s": at("round-end", max) - at("round-end", rnd=1),
            "auc_flower": metrics["final"]["auc"]}


if __name__ == "__main__":
    sys.exit(main())
