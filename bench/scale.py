"""Scale: 100 and 1,000 simulated institutions through Flower's simulation runtime, one JSON line.

    python bench/scale.py [--institutions 100,1000] [--rows 1000] [--rounds 5] [--epsilon 3] [--cpus N]

For each consortium size N: N institution files of about ``--rows`` synthetic borrowers each
(the archetypes in turn, each size ×0.8–1.25 at random; the national bank gets 1.5x the rows
so that it has ~100 defaults),
then the real command in a fresh process::

    fedcredit simulate --data DIR --rounds R --epsilon E --no-baselines --out RUN --json

— N virtual SuperNodes on Ray, DP-SGD at every node, federated statistics, R rounds of
training and exact evaluation, recalibration, checkpoints, ledger, model package and report.
While it runs, this script samples every 0.5 s the memory of the whole process tree (the
command, Ray's GCS, raylet and workers: every descendant) from /proc: the sum of RSS (counts
shared pages once per process, an upper bound) and of PSS (shared pages divided among their
users: the honest total). Reported per size: wall time (process start to exit), the phases
(start-up with loading and validating every institution's file; the statistics query; the
rounds; final evaluation and export; report, model card and exit — from RUN/progress.jsonl),
peak RSS/PSS sums and process
count, the run's status, final AUC and the largest ε spent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.scratch import scratch_dir  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(root: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def memory_of(pids: list[int]) -> tuple[int, int, int]:
    """(sum of RSS, sum of PSS, processes) in bytes over ``pids`` (gone processes count 0)."""
    rss = pss = n = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as fh:
                rss += int(fh.read().split()[1]) * PAGE
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
                        break
            n += 1
        except (OSError, ValueError, IndexError):
            continue
    return rss, pss, n


class TreeSampler(threading.Thread):
    """Peak memory of a process tree, sampled every ``interval`` seconds."""

    def __init__(self, root: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_rss = self.peak_pss = self.peak_procs = 0
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            rss, pss, n = memory_of(process_tree(self.root))
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_procs = max(self.peak_procs, n)
            self.samples += 1
            self.stop.wait(self.interval)


def write_institutions(out: Path, n: int, rows: int, seed: int) -> float:
    """N institution CSV files; returns seconds taken."""
    import numpy as np

    from configs.schema import load_schema
    from simulation.archetypes import load_archetypes
    from simulation.synthetic import generate_institution, institution_rng, write_csv

    t0 = time.perf_counter()
    schema = load_schema()
    archetypes = load_archetypes()
    out.mkdir(parents=True, exist_ok=True)
    width = len(str(n))
    sizes = np.random.default_rng(seed)
    for i in range(n):
        a = archetypes[i % len(archetypes)]
        # sizes vary (×0.8–1.25) as real ones do, so each node plans its own noise (q = batch/n differs)
        size = int(max(rows, np.ceil(100 / a.target_default_rate)) * sizes.uniform(0.8, 1.25))
        table, _ = generate_institution(a, size, institution_rng(seed, i), schema, id_prefix=f"{a.code}{i}")
        write_csv(table, out / f"inst-{i:0{width}d}.csv")
    return time.perf_counter() - t0


def run_one(n: int, args, work: Path) -> dict:
    data = work / f"data-{n}"
    data_s = write_institutions(data, n, args.rows, args.seed)
    run_dir = work / f"run-{n}"
    cmd = [sys.executable, "-m", "fedcredit", "simulate", "--data", str(data), "--rounds", str(args.rounds),
           "--epsilon", str(args.epsilon), "--seed", str(args.seed), "--no-baselines", "--out", str(run_dir),
           "--json"] + (["--cpus", str(args.cpus)] if args.cpus else [])
    log = open(work / f"simulate-{n}.log", "w")
    t0, started = time.perf_counter(), time.time()
    # its own session: on a time-out the command and every process it started (Ray) are ended
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    sampler = TreeSampler(proc.pid, args.interval)
    sampler.start()
    try:
        stdout, _ = proc.communicate(timeout=args.timeout)
    except BaseException:
        import signal

        for pid in reversed(process_tree(proc.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stdout, _ = proc.communicate()
        if not isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
            raise
    wall, ended = time.perf_counter() - t0, time.time()
    sampler.stop.set()
    sampler.join()
    log.close()
    out = {"institutions": n, "rows_total": None, "data_s": round(data_s, 1), "wall_s": round(wall, 1),
           "returncode": proc.returncode, "peak_rss_sum_mb": round(sampler.peak_rss / 2**20),
           "peak_pss_sum_mb": round(sampler.peak_pss / 2**20), "peak_processes": sampler.peak_procs,
           "memory_samples": sampler.samples}
    try:
        summary = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (work / f"simulate-{n}.log").read_text()[-3000:]
        out.update({"status": "error", "error": tail})
        return out
    spent = [i["epsilon_spent"] for i in summary["institutions"] if i.get("epsilon_spent") is not None]
    out.update({"status": summary["status"], "stop_reason": summary.get("stop_reason", ""),
                "rounds": summary["rounds"], "rows_total": sum(i["rows"] for i in summary["institutions"]),
                "auc_federated": summary["auc_federated"], "epsilon_spent_max": max(spent) if spent else None})
    events = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines() if line.strip()]

    def at(kind: str, pick=min):
        times = [datetime.fromisoformat(e["time"]).timestamp() for e in events if e["event"] == kind]
        return pick(times) if times else None

    start, first, last, end = at("run-start"), at("round-start"), at("round-end", max), at("run-end", max)
    if start and first and last and end:
        out["phases_s"] = {"start_load_validate": round(start - started, 1), "statistics": round(first - start, 1),
                           "rounds": round(last - first, 1),
                           "round_mean": round((last - first) / max(1, summary["rounds"]), 1),
                           "final_evaluation_export": round(end - last, 1),
                           "report_model_card_exit": round(ended - end, 1)}
    out["run_dir_mb"] = round(sum(f.stat().st_size for f in run_dir.rglob("*") if f.is_file()) / 2**20, 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--institutions", default="100,1000", help="comma-separated consortium sizes")
    ap.add_argument("--rows", type=int, default=1000, help="borrowers per institution (about)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epsilon", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpus", type=int, default=0, help="CPUs for Flower's runtime (0 = all)")
    ap.add_argument("--interval", type=float, default=0.5, help="memory sampling interval (s)")
    ap.add_argument("--timeout", type=float, default=7200, help="seconds allowed per consortium size")
    ap.add_argument("--keep", metavar="DIR", help="keep data and run directories here")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.institutions.split(",") if s.strip()]
    with scratch_dir(args.keep, "fedcredit-scale-") as work:  # SIGTERM ends the simulation's processes too
        results = [run_one(n, args, work) for n in sizes]
    with open("/proc/meminfo") as fh:
        total_mb = int(fh.readline().split()[1]) // 1024
    print(json.dumps({"bench": "scale", "rounds": args.rounds, "rows_per_institution": args.rows,
                      "epsilon": args.epsilon, "seed": args.seed, "dp": True, "results": results,
                      "ok": all(r.get("status") == "completed" for r in results),
                      "cpus": os.cpu_count(), "memory_total_mb": total_mb, "python": platform.python_version(),
                      "work_dir": str(work) if args.keep else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
