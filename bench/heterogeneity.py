"""Heterogeneous consortia on real credit data: does every member gain from joining, under DP?

The UCI "default of credit card clients" file (30,000 borrowers, configs/mappings/uci-taiwan.toml)
is split into INSTITUTIONS lenders in several ways (simulation.partitioning):

* ``iid``        — a seeded shuffle (sizes and default rates alike);
* ``feature``    — credit-limit bands (covariate skew: each lender serves another segment);
* ``label-0.3``, ``label-1.0`` — Dirichlet(α) label skew: default rates from < 1 % to > 60 %.
  The Dirichlet draw is redrawn (seed + 1, + 2, …) until every institution has at least 500
  rows and 50 rows of each class (the minimum a node validates, and a holdout AUC worth
  reading); the seed used is in the output;
* ``size``       — Dirichlet(1) sizes, default rates alike (quantity skew).

Every setting is a whole simulation run (:func:`simulation.runner.simulate`: the real ServerApp
driver and ClientApps, each node enforcing its budget ε or training without DP) with its
centralised and local-only baselines — by default in process (``--runtime inprocess``: the
messages are delivered in this process, no Ray; ``--runtime flower`` uses Flower's simulation
runtime like ``fedcredit simulate``) — and prints ONE JSON line: per member its rows, default
rate and AUC on its own holdout of the local-only, global and personalised models, the chosen
one (max of global and personalised) and the gain from joining; pooled, the federated AUC, the
members' chosen models pooled, the centralised AUC, the means of the members' own AUCs, and
how many members are worse off than alone (0.005 tolerance). Settings:

* the grid: each partition × each ε (``--epsilons 1,3,none``) with the consortium's recipe
  (:data:`RECIPE`: own intercepts, information weights, personal fine-tune — docs/benchmarks.md);
* ``--compare`` (on label-0.3 at ε = 3): FedAvg as it was before the recipe (random output layer; and with
  only the zero output layer), each ingredient of
  the recipe left out, the server optimisers (FedAvgM, FedAdam, FedYogi, FedProx), the
  personalisation methods (none, calibration, head, full with and without the proximal pull),
  and each node picking its own batch for a per-step noise target (also on size skew).

After the settings, one last JSON line (``"summary": true``) holds the pooled figures of every
setting, the members of the target setting (label-0.3, ε = 3, and without DP), the targets met,
the wall times and the per-member figure it drew (``--plot-out``; bench/run_all.py keeps this
line).

``--seeds 0,1,2`` runs every setting once per seed on the same partitions; the summary gives
means and standard deviations over the seeds (bench/heterogeneity_summary.py).
``--jobs N`` runs N settings at once, each in its own process on one CPU (the settings are
independent; each needs well under 1 GB of memory). ``--only NAME,…`` runs some settings;
``--list`` prints their names. ``--plot FILE.jsonl`` draws the per-member gain figure
(docs/benchmarks/heterogeneity.png) and prints the summary line from earlier output (a run cut
short, or run on another machine) instead of running anything.
``--prepare DIR/partitions`` only writes the partitions (and their ``index.json``);
``--partitions-dir DIR/partitions`` runs on partitions written so — e.g. on another machine that lacks flwr-datasets.

Skips cleanly (one JSON line with "skipped") when the data file is absent. Partitions and run
directories go to a temporary directory, removed at the end, unless ``--keep DIR``.

Usage: python bench/heterogeneity.py --data ../shared/data/UCI_Credit_Card.csv [--jobs 4] [--compare]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.heterogeneity_summary import plot_members, summary_line  # noqa: E402
from bench.scratch import scratch_dir  # noqa: E402
from server.settings import DEFAULTS  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "UCI_Credit_Card.csv"
MAPPING = "uci-taiwan"
PARTITIONS = {
    "iid": {"method": "iid"},
    "feature": {"method": "feature", "feature": "credit_limit"},
    "label-0.3": {"method": "dirichlet", "alpha": 0.3},
    "label-1.0": {"method": "dirichlet", "alpha": 1.0},
    "size": {"method": "quantity", "alpha": 1.0},
}
#: what a heterogeneous consortium runs with (measured: docs/benchmarks.md, "heterogeneity")
#: (personal-proximal-mu 0: over 5 seeds at label-0.3, ε = 3 the members' mean AUC was 0.761 with μ = 0.1 and
#: 0.771 with μ = 0 — the comparison setting "personalize-full-mu0.1" keeps measuring it)
RECIPE = {"local-layers": "output-bias", "output-bias-learning-rate": 0.1, "aggregation-weight": "information",
          "personalize": "full", "personal-epochs": 2, "personal-proximal-mu": 0.0}
#: FedAvg as the consortium ran it before: no local layers, example weights, no personal model
PLAIN = {"local-layers": "none", "output-bias-learning-rate": 0.0, "aggregation-weight": "examples",
         "personalize": "none", "step-noise-target": 0.0, "output-layer-init": "random"}
MIN_ROWS, MIN_CLASS_ROWS = 500, 50
TARGET_CENTRALISED_DP, TARGET_CENTRALISED_NODP = 0.02, 0.01


@dataclass
class Setting:
    name: str
    partition: str
    epsilon: float | None  # None: no DP
    strategy: str = "fedavg"
    run_config: dict = field(default_factory=dict)
    group: str = "grid"


def grid_settings(epsilons: list[float | None]) -> list[Setting]:
    return [Setting(f"{p}/{_eps_name(e)}", p, e, run_config=dict(RECIPE)) for p in PARTITIONS for e in epsilons]


def comparison_settings() -> list[Setting]:
    """Label skew α = 0.3, ε = 3: the recipe against its parts, the server optimisers, the fine-tunes."""
    out = [Setting("compare/fedavg-before", "label-0.3", 3.0, run_config=dict(PLAIN), group="recipe"),
           Setting("compare/fedavg-before-zero-init", "label-0.3", 3.0,
                   run_config={**PLAIN, "output-layer-init": "zero"}, group="recipe")]
    for key, off in (("local-layers", "none"), ("aggregation-weight", "examples"), ("personalize", "none")):
        out.append(Setting(f"compare/recipe-without-{key}", "label-0.3", 3.0,
                           run_config={**RECIPE, key: off}, group="recipe"))
    for strategy, extra in (("fedavgm", {"server-learning-rate": 1.0, "server-momentum": 0.5}),
                            ("fedadam", {"server-learning-rate": 0.01}), ("fedyogi", {"server-learning-rate": 0.01}),
                            ("fedprox", {"proximal-mu": 0.1})):
        out.append(Setting(f"compare/{strategy}", "label-0.3", 3.0, strategy, {**RECIPE, **extra}, group="server"))
    for method in ("calibration", "head"):
        out.append(Setting(f"compare/personalize-{method}", "label-0.3", 3.0,
                           run_config={**RECIPE, "personalize": method}, group="personalize"))
    out.append(Setting("compare/personalize-full-mu0.1", "label-0.3", 3.0,
                       run_config={**RECIPE, "personal-proximal-mu": 0.1}, group="personalize"))
    for part in ("label-0.3", "size"):
        out.append(Setting(f"compare/step-noise-target-{part}", part, 3.0,
                           run_config={**RECIPE, "step-noise-target": 0.006}, group="batch-plan"))
    return out


def _eps_name(e: float | None) -> str:
    return "no-dp" if e is None else f"eps{e:g}"


def parse_epsilons(text: str) -> list[float | None]:
    out: list[float | None] = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        out.append(None if item.lower() in ("none", "no-dp", "nodp") else float(item))
    return out


# ----------------------------------------------------------------------------- partitions
def label_skew_seed(table, label: str, k: int, alpha: float, seed: int, tries: int = 400) -> int:
    """The first seed ≥ ``seed`` whose Dirichlet(α) label split gives every institution ≥ 500 rows
    and ≥ 50 rows of each class."""
    import warnings

    import numpy as np

    from configs.errors import UserError
    from simulation.partitioning import partition_table

    y = table[label].to_numpy()
    for s in range(seed, seed + tries):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                part = partition_table(table, k, "dirichlet", seed=s, label=label, alpha=alpha)
        except UserError:
            continue
        if all(len(ix) >= MIN_ROWS and MIN_CLASS_ROWS <= int(np.sum(y[ix] == 1)) <= len(ix) - MIN_CLASS_ROWS
               for ix in part.indices):
            return s
    raise RuntimeError(f"no Dirichlet(α={alpha}) split of {k} institutions in seeds {seed}…{seed + tries - 1} "
                       f"gives every institution {MIN_ROWS} rows and {MIN_CLASS_ROWS} of each class")


def write_partitions(data: str, names: set[str], k: int, seed: int, work: Path) -> dict[str, dict]:
    """Each needed partition's directory (the source's rows as written: read with the UCI mapping)
    and the seed it was drawn with."""
    from configs.schema import load_schema
    from simulation.partition_files import load_partition_source, write_partition

    schema = load_schema()
    source = load_partition_source(data, schema, MAPPING)
    out = {}
    for name in sorted(names):
        spec = dict(PARTITIONS[name])
        s = seed
        if spec["method"] == "dirichlet":
            s = label_skew_seed(source.table, schema.label.name, k, spec["alpha"], seed)
        d = work / "partitions" / name
        manifest = write_partition(source, d, k=k, seed=s, force=True, **spec)
        out[name] = {"dir": name, "seed": s, **spec,
                     "default_rates": [e["default_rate"] for e in manifest["institutions"]],
                     "rows": [e["rows"] for e in manifest["institutions"]]}
    (work / "partitions" / "index.json").write_text(json.dumps(out, indent=1) + "\n")
    return read_partitions(work / "partitions")


def read_partitions(root: Path) -> dict[str, dict]:
    """The partitions ``write_partitions`` left in ``root`` (``index.json``), with absolute directories."""
    index = json.loads((Path(root) / "index.json").read_text())
    return {name: {**p, "dir": str((Path(root) / p["dir"]).resolve())} for name, p in index.items()}


# ------------------------------------------------------------------------------- one run
def run_setting(setting: Setting, part: dict, rounds: int, seed: int, work: str, runtime: str = "inprocess") -> dict:
    """One ``simulate`` run with baselines; the JSON line of the setting."""
    from simulation.runner import SimulationOptions, simulate

    t0 = time.time()
    out_dir = Path(work) / "runs" / f"{setting.name.replace('/', '_')}_seed{seed}"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    opts = SimulationOptions(data_dir=part["dir"], mapping=MAPPING, out=str(out_dir), rounds=rounds, seed=seed, cpus=1,
                             strategy=setting.strategy, dp=setting.epsilon is not None,
                             epsilon=setting.epsilon if setting.epsilon is not None else DEFAULTS["sim-max-epsilon"],
                             run_config=dict(setting.run_config), runtime=runtime)
    s = simulate(opts)
    line = setting_line(setting, part, s, rounds, seed, time.time() - t0)
    history = json.loads((out_dir / "metrics.json").read_text()).get("history") or []
    line["global_by_round"] = [{"round": r["round"], **{k: (r.get("global") or {}).get(k) for k in ("auc", "mean_pd")}}
                               for r in history if r.get("global")]
    return line


def setting_line(setting: Setting, part: dict, s: dict, rounds: int, seed: int, wall: float) -> dict:
    members = [{k: r.get(k) for k in ("id", "rows", "default_rate", "auc_local_only", "auc_federated",
                                      "auc_personalized", "chosen_model", "gain_from_joining",
                                      "auc_centralized", "epsilon_spent")}
               for r in s["institutions"]]
    chosen = [max(v for v in (m["auc_federated"], m["auc_personalized"]) if v is not None)
              for m in members if m["auc_federated"] is not None or m["auc_personalized"] is not None]
    cen, pooled = s.get("auc_centralized"), s.get("auc_personalized_pooled")
    tol = TARGET_CENTRALISED_DP if setting.epsilon is not None else TARGET_CENTRALISED_NODP
    line = {
        "bench": "heterogeneity", "setting": setting.name, "group": setting.group, "partition": setting.partition,
        "partition_seed": part["seed"], "epsilon": setting.epsilon, "dp": setting.epsilon is not None,
        "strategy": setting.strategy, "run_config": setting.run_config, "rounds": rounds, "seed": seed,
        "status": s["status"], "members": members,
        "auc_federated_pooled": s.get("auc_federated"), "auc_chosen_pooled": pooled,
        "auc_centralized_pooled": cen, "auc_chosen_mean": (sum(chosen) / len(chosen)) if chosen else None,
        "auc_centralized_mean": s.get("auc_centralized_mean"), "auc_local_only_mean": s.get("auc_local_only_mean"),
        "members_worse_than_local_only": s.get("members_worse_than_local_only"),
        "target_no_member_worse": s.get("members_worse_than_local_only") == 0,
        "target_pooled_within": tol,
        "target_pooled_met": (pooled is not None and cen is not None and pooled >= cen - tol),
        "target_mean_met": (s.get("auc_centralized_mean") is not None and chosen
                            and sum(chosen) / len(chosen) >= s["auc_centralized_mean"] - tol),
        "wall_s": round(wall, 1), "machine": machine_name(),
    }
    return line


def machine_name() -> str:
    """CPU model, cores and Python of the machine a setting ran on (settings may run elsewhere: --plot)."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


# -------------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--institutions", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=DEFAULTS["num-server-rounds"])
    ap.add_argument("--epsilons", default="1,3,none", help="comma-separated ε; 'none' = no DP")
    ap.add_argument("--partitions", default=",".join(PARTITIONS), help=f"some of {', '.join(PARTITIONS)}")
    ap.add_argument("--compare", action="store_true", help="also the comparison settings on label-0.3 at ε = 3")
    ap.add_argument("--only", help="comma-separated setting names (see --list)")
    ap.add_argument("--list", action="store_true", help="print the setting names and exit")
    ap.add_argument("--jobs", type=int, default=1, help="settings run at once (one process and one CPU each)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the partitions (and of the runs without --seeds)")
    ap.add_argument("--seeds", help="comma-separated run seeds: every setting runs once per seed on the same "
                                    "partitions (default: --seed)")
    ap.add_argument("--keep", metavar="DIR", help="keep partitions and run directories here")
    ap.add_argument("--plot", metavar="FILE.jsonl",
                    help="draw the per-member figure and print the summary line from earlier output, and exit")
    ap.add_argument("--plot-out", default=str(REPO / "docs" / "benchmarks" / "heterogeneity.png"))
    ap.add_argument("--runtime", choices=["inprocess", "flower"], default="inprocess")
    ap.add_argument("--prepare", metavar="DIR", help="only write the partitions into DIR and exit")
    ap.add_argument("--partitions-dir", metavar="DIR", help="use the partitions --prepare wrote into DIR")
    args = ap.parse_args(argv)
    args.seeds = [int(x) for x in args.seeds.split(",") if x.strip()] if args.seeds else [args.seed]

    if args.plot:
        return summarise_file(Path(args.plot), args)
    wanted = [p for p in args.partitions.split(",") if p]
    unknown = [p for p in wanted if p not in PARTITIONS]
    if unknown:
        ap.error(f"unknown partition(s) {unknown}; choose from {', '.join(PARTITIONS)}")
    settings = [s for s in grid_settings(parse_epsilons(args.epsilons)) if s.partition in wanted]
    if args.compare:
        settings += comparison_settings()
    # the grid first (the target setting first of all), then the comparisons (FedAvg as before first):
    # with --jobs the grid starts in the first wave, so a run cut short keeps it
    settings.sort(key=lambda s: (s.group != "grid", s.partition != "label-0.3", s.epsilon != 3.0))
    if args.only:
        names = set(args.only.split(","))
        settings = [s for s in settings + comparison_settings() if s.name in names]
        settings = list({s.name: s for s in settings}.values())
    if args.list:
        for s in settings:
            print(s.name)
        return 0
    if args.partitions_dir:
        with scratch_dir(args.keep, "fedcredit-heterogeneity-") as work:
            failed = run_all(settings, read_partitions(Path(args.partitions_dir)), args, work)
        return 1 if failed else 0
    if not Path(args.data).is_file():
        print(json.dumps({"bench": "heterogeneity", "skipped": f"data file not found: {args.data}"}))
        return 0
    if args.prepare:
        parts = write_partitions(args.data, {s.partition for s in settings}, args.institutions, args.seed,
                                 _prepare_root(args.prepare))
        print(json.dumps({"bench": "heterogeneity", "prepared": args.prepare,
                          "partitions": {k: {kk: v[kk] for kk in ("seed", "rows", "default_rates")}
                                         for k, v in parts.items()}}))
        return 0
    with scratch_dir(args.keep, "fedcredit-heterogeneity-") as work:
        parts = write_partitions(args.data, {s.partition for s in settings}, args.institutions, args.seed, work)
        failed = run_all(settings, parts, args, work)
    return 1 if failed else 0


def _prepare_root(directory: str) -> Path:
    """``write_partitions`` writes into ``ROOT/partitions``: the root whose partitions folder is ``directory``."""
    d = Path(directory).resolve()
    if d.name != "partitions":
        raise SystemExit(f"--prepare DIR: name the folder 'partitions' (got {d.name})")
    return d.parent


def summarise_file(path: Path, args) -> int:
    """The figure and the summary line from the settings' lines of earlier output (``--plot``): for a
    run cut short (each setting's line is printed as it finishes) or run elsewhere."""
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")]
    lines = [ln for ln in lines if ln.get("bench") == "heterogeneity" and "setting" in ln]
    done = [ln for ln in lines if "members" in ln]
    plot = plot_members(done, Path(args.plot_out), list(PARTITIONS)) if done else None
    if done:  # what the runs themselves recorded, not this invocation's defaults
        args.rounds, args.institutions = done[0]["rounds"], len(done[0]["members"])
    summary = summary_line(lines, args, None, plot)
    summary["from"] = str(path)
    print(json.dumps(summary, default=float), flush=True)
    return 0


def run_all(settings: list[Setting], parts: dict, args, work: Path) -> int:
    """Run the settings; print each one's JSON line as it finishes, then the summary line."""
    t0 = time.time()
    lines: list[dict] = []
    failed = _run_settings(settings, parts, args, work, lines)
    plot = None
    done = [ln for ln in lines if "members" in ln]
    if done:
        try:
            plot = plot_members(done, Path(args.plot_out), list(PARTITIONS))
        except Exception as exc:  # the figures must not be lost for the plot
            print(f"per-member figure not drawn: {type(exc).__name__}: {exc}", file=sys.stderr)
    summary = summary_line(lines, args, time.time() - t0, plot)
    summary["command"] = " ".join(["python bench/heterogeneity.py", *sys.argv[1:]])
    print(json.dumps(summary, default=float), flush=True)
    return failed


def _run_settings(settings: list[Setting], parts: dict, args, work: Path, lines: list[dict]) -> int:
    """Every setting once per seed, seed after seed (a run cut short keeps whole seeds)."""
    failed = 0
    tasks = [(s, seed) for seed in args.seeds for s in settings]
    if args.jobs <= 1:
        for s, seed in tasks:
            failed += _emit(lambda s=s, seed=seed: run_setting(s, parts[s.partition], args.rounds, seed, str(work),
                                                               args.runtime), s, seed, lines)
        return failed
    import multiprocessing
    import os

    # one CPU per job: the spawned interpreters' BLAS and OpenMP pools start with one thread (inherited
    # environment), torch's intra-op pool is set by the initializer
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    # fresh interpreters: each job starts its own torch (no state forked from this process)
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_one_thread) as pool:
        futures = {pool.submit(run_setting, s, parts[s.partition], args.rounds, seed, str(work), args.runtime):
                   (s, seed) for s, seed in tasks}
        for fut in as_completed(futures):
            failed += _emit(fut.result, *futures[fut], lines)
    return failed


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _emit(result, s: Setting, seed: int, lines: list[dict]) -> int:
    try:
        line = result()
    except Exception as exc:  # one failed setting must not lose the others' lines
        line = {"bench": "heterogeneity", "setting": s.name, "seed": seed, "error": f"{type(exc).__name__}: {exc}",
                "spec": asdict(s)}
    lines.append(line)
    print(json.dumps(line, default=float), flush=True)
    return int("error" in line)


if __name__ == "__main__":
    sys.exit(main())
