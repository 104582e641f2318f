"""``fedcredit simulate``: a whole consortium on this machine, compared with its baselines."""

from __future__ import annotations

import argparse
import sys

from fedcredit.arguments import number
from fedcredit.outcome import Outcome

HELP = "run a simulated consortium in Flower's simulation runtime, with baselines"
DESCRIPTION = """\
Run the consortium's real ServerApp and ClientApps in Flower's simulation runtime on this
machine: federated statistics → encoder, then ROUNDS rounds of local training (DP-SGD by
default, each institution enforcing its own budget), exact federated evaluation, a checkpoint
per round and the model package at the end. Then the same network and encoder are trained
centralised (pooled data, non-private) and local-only (each institution alone, DP at the same
budget) on the same splits, and a table compares them per institution. When the run asks the
nodes for personal models (--run-config personalize=full …, see docs/operator.md) each node's
personal model is scored on its own holdout too, and "gain" is max(global, personalised) −
local-only: what joining bought the member (the JSON summary: gain_from_joining per
institution, members_worse_than_local_only). On synthetic data the table also shows the oracle
AUC: the AUC of each borrower's true PD, the ceiling for any model.

Data: --synthetic (default) simulates the archetype consortium (see `fedcredit data synth
--help`); --data DIR takes one CSV/Parquet file per institution (as `data synth` writes them, or
real files with --mapping). Every file is validated first; a bad file stops with the report.

Writes RUN_DIR/: metrics.json (rounds, per-institution figures, baselines), model/,
checkpoints/, progress.jsonl, config.resolved.toml, node-state/ (each institution's privacy
ledger). A run refused before it starts (options, data, budgets, research mode) leaves no
RUN_DIR. With --json the summary is the last line of stdout; its wall_s covers the whole
command (its imports, validation, Flower run, baselines, report), flower_s and baselines_s its
parts.

Resume: --resume RUN_DIR continues a simulation that was killed (or stopped) from its last
checkpoint, with the settings in RUN_DIR/config.resolved.toml (same data, state root, budgets);
RUN_DIR/checkpoints/round-NNNN resumes from that earlier checkpoint. A checkpoint or audit
ledger that fails verification is reported and nothing is loaded (exit 2).

Research mode (small consortia): an institution needs 500 rows and 50 defaults for DP training
(the consortium minimum of `fedcredit data validate`). --min-rows N / --min-positives P (or
--run-config min-rows=N min-positives=P) lower it for this simulation: institutions below 500/50
are then allowed with a loud warning, listed in metrics.json ("research_mode") and the model
card — and refused (exit 2, nothing written) where DP-SGD cannot meaningfully learn from them at
their ε: when the noise over the run exceeds the largest gradient all their defaults can
contribute (signal-to-noise ρ = q·P·√T/σ < 1; the message gives the numbers and the ε that would
do). Without DP (--no-dp) the minimum does not apply.

Run-config keys that an option also sets (batch-size, local-epochs, num-server-rounds, seed,
min-rows, …) are taken from --run-config when the option is not given, and refused when both
are given with different values — never silently replaced.

Fault injection (rehearsal): --inject-fault NODE:KIND[@ROUNDS] makes virtual node NODE (0-based,
the order of the table) fail (KIND=fail) or answer after the round timeout (KIND=straggle) in
the given training rounds (default: all), e.g. --inject-fault 0:fail@1 --inject-fault
2:straggle@2. Simulation only: a deployed node runs the app's ClientApp, which has no faults.

Exit codes: 0 run finished (also when it stopped cleanly, e.g. budgets exhausted — see
"status"); 2 a user mistake (bad options or data, a damaged checkpoint).
"""
JSON = "the run's summary"  # what --json prints (fedcredit.cli adds the option)

#: options --resume takes from the run it continues, not from the command line
RESUME_TAKES_FROM_RUN = ("synthetic", "data", "institutions", "scale", "rounds", "schema", "mapping", "strategy",
                         "epsilon", "no_dp", "seed", "out", "state_root", "local_epochs", "batch_size",
                         "learning_rate", "model", "run_config", "budgets", "min_rows", "min_positives")
#: run-config keys an option of this command also sets: key → (option's attribute, option)
OPTION_KEYS = {"num-server-rounds": ("rounds", "--rounds"), "strategy": ("strategy", "--strategy"),
               "local-epochs": ("local_epochs", "--local-epochs"), "batch-size": ("batch_size", "--batch-size"),
               "learning-rate": ("learning_rate", "--learning-rate"), "model": ("model", "--model"),
               "seed": ("seed", "--seed"), "schema": ("schema", "--schema"), "mapping": ("mapping", "--mapping"),
               "sim-max-epsilon": ("epsilon", "--epsilon"), "synthetic-scale": ("scale", "--scale"),
               "data-dir": ("data", "--data"), "state-root": ("state_root", "--state-root"),
               "run-dir": ("out", "--out"), "min-rows": ("min_rows", "--min-rows"),
               "min-positives": ("min_positives", "--min-positives"), "dp": ("no_dp", "--no-dp"),
               "sim-budgets": ("budgets", "--budgets")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from server.settings import DEFAULTS as D
    from server.settings import STRATEGIES

    src = p.add_mutually_exclusive_group()
    src.add_argument("--synthetic", action="store_true", help="simulate synthetic institutions (default)")
    src.add_argument("--data", metavar="DIR", help="directory with one CSV/Parquet file per institution")
    p.add_argument("--institutions", type=int, default=5, metavar="N", help="number of synthetic institutions")
    p.add_argument("--scale", type=float, default=1.0, help="size multiplier of the synthetic institutions")
    p.add_argument("--rounds", type=int, default=D["num-server-rounds"], metavar="R", help="training rounds")
    p.add_argument("--schema", default="consumer-credit-v1", help="schema name or path")
    p.add_argument("--mapping", help="column mapping for --data files (name or path)")
    p.add_argument("--strategy", choices=list(STRATEGIES), default=D["strategy"],
                   help="server-side aggregation: FedAvg, FedProx, or a server optimiser (FedAdam, FedAvgM, FedYogi)")
    dp = p.add_mutually_exclusive_group()
    dp.add_argument("--epsilon", type=float, default=D["sim-max-epsilon"], metavar="E",
                    help="each institution's lifetime privacy budget ε (DP-SGD)")
    dp.add_argument("--no-dp", action="store_true", help="train without differential privacy (research only)")
    p.add_argument("--budgets", metavar="FILE",
                   help="per-institution budgets: a TOML file with a table [max-epsilon] of institution = ε; "
                        "institutions not listed get --epsilon (see simulation/budgets.py)")
    p.add_argument("--seed", type=number(int, minimum=0), default=D["seed"], help="seed of data synthesis, initialisation and sampling")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/sim-<time>)")
    p.add_argument("--state-root", metavar="DIR",
                   help="keep the institutions' privacy state here across runs (default RUN_DIR/node-state)")
    p.add_argument("--local-epochs", type=int, default=D["local-epochs"])
    p.add_argument("--batch-size", type=int, default=D["batch-size"])
    p.add_argument("--learning-rate", type=float, default=D["learning-rate"])
    p.add_argument("--model", choices=["mlp", "scorecard"], default=D["model"])
    p.add_argument("--min-rows", type=int, default=None, metavar="N",
                   help="research mode: fewest rows an institution may have (default 500 with DP, none without)")
    p.add_argument("--min-positives", type=int, default=None, metavar="N",
                   help="research mode: fewest defaults an institution may have (default 50 with DP, none without)")
    p.add_argument("--run-config", action="append", default=[], metavar="KEY=VALUE",
                   help="any further run-config key (see docs/operator.md); repeatable; a key an option also "
                        "sets is taken from here when the option is not given")
    p.add_argument("--no-baselines", action="store_true", help="skip the centralised and local-only baselines (--resume skips them when the "
                   "original run did)")
    p.add_argument("--cpus", type=int, help="CPUs for the simulation runtime (default: all)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the killed or stopped simulation in RUN_DIR (or from RUN_DIR/checkpoints/round-NNNN) "
                        "with its own settings")
    p.add_argument("--inject-fault", action="append", default=[], metavar="NODE:KIND[@ROUNDS]",
                   help="simulation only: virtual node NODE fails (fail) or straggles past the round timeout "
                        "(straggle) in those training rounds; repeatable")
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")


def parse_key_values(items: list[str]) -> dict:
    from configs.errors import UserError
    from configs.toml_reader import parse_toml_value

    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--run-config {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_toml_value(value)
    return out


def take_option_keys(args: argparse.Namespace, run_config: dict) -> dict:
    """Move the run-config keys that an option also sets onto ``args``; return the other keys.

    A key is taken when its option is at its default; when the option was given too, the two
    must agree, else a :class:`UserError` names both. ``resume-from`` is refused (--resume does it).
    """
    from configs.errors import UserError

    defaults = argparse.ArgumentParser()
    add_arguments(defaults)
    rest = {}
    for key, raw in run_config.items():
        if key == "resume-from":
            raise UserError("--run-config resume-from: use --resume RUN_DIR (it verifies the checkpoint and the ledger)")
        if key not in OPTION_KEYS:
            rest[key] = raw
            continue
        attr, flag = OPTION_KEYS[key]
        value = _option_value(key, raw)
        current, default = getattr(args, attr), defaults.get_default(attr)
        if current != default and current != value:
            shown = flag if isinstance(current, bool) else f"{flag} {current}"
            written = str(raw).lower() if isinstance(raw, bool) else raw
            raise UserError(f"--run-config {key}={written} and {shown} ask for different values; give it once")
        setattr(args, attr, value)
    return rest


def check_options(args: argparse.Namespace) -> None:
    """The options' own ranges (again after --run-config keys were taken onto them)."""
    from configs.errors import UserError

    for name, value, low in (("--rounds", args.rounds, 1), ("--institutions", args.institutions, 2),
                             ("--local-epochs", args.local_epochs, 1), ("--batch-size", args.batch_size, 1),
                             ("--min-rows", args.min_rows, 0), ("--min-positives", args.min_positives, 0)):
        if value is not None and value < low:
            raise UserError(f"{name} must be at least {low}, got {value}")
    if args.scale <= 0 or (not args.no_dp and args.epsilon <= 0):
        raise UserError("--scale and --epsilon must be positive")


def _budgets(args: argparse.Namespace) -> dict[str, float]:
    """Per-institution budgets: from --budgets FILE, or a run-config sim-budgets text taken onto it."""
    from pathlib import Path

    from configs.sim_budgets import parse_sim_budgets
    from simulation.budgets import load_budgets

    if not args.budgets:
        return {}
    if "=" in args.budgets and not Path(args.budgets).is_file():
        return parse_sim_budgets(args.budgets)
    return load_budgets(args.budgets)


def _option_value(key: str, raw):
    """A run-config value as its option holds it (typed and checked like the run config)."""
    from server.settings import parse_run_config

    typed = getattr(parse_run_config({key: raw}), key.replace("-", "_"))
    if key == "dp":
        return not typed  # the option is --no-dp
    if key == "sim-budgets":
        return typed or None  # a budgets text instead of a file: read below
    if isinstance(typed, str):
        return typed or None
    return typed


def run(args: argparse.Namespace) -> int:
    import time

    started = time.time()  # wall_s covers the whole command: the imports below take seconds too
    import logging

    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from configs.errors import UserError
    from configs.mapping import mapping_reference
    from simulation.runner import SimulationOptions, simulate

    check_options(args)
    resumed_at = ""
    if args.resume:
        from datetime import datetime, timezone

        from simulation.resume import resume_options

        defaults = argparse.ArgumentParser()
        add_arguments(defaults)
        given = [name for name in RESUME_TAKES_FROM_RUN if getattr(args, name) != defaults.get_default(name)]
        if given:
            raise UserError(f"--resume takes the run's own settings from its config.resolved.toml; drop "
                            f"{', '.join('--' + g.replace('_', '-') for g in given)}")
        opts = resume_options(args.resume, cpus=args.cpus, baselines=False if args.no_baselines else None,
                              verbose=args.verbose, faults=args.inject_fault)
        opts.started_at = started
        resumed_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    else:
        extra = take_option_keys(args, parse_key_values(args.run_config))
        check_options(args)
        extra.update({"local-epochs": args.local_epochs, "batch-size": args.batch_size,
                      "learning-rate": args.learning_rate, "model": args.model})
        opts = SimulationOptions(institutions=args.institutions, rounds=args.rounds, data_dir=args.data,
                                 schema=args.schema, mapping=mapping_reference(args.mapping) if args.mapping else None,
                                 strategy=args.strategy, dp=not args.no_dp, epsilon=args.epsilon, seed=args.seed,
                                 scale=args.scale, out=args.out, state_root=args.state_root,
                                 baselines=not args.no_baselines, cpus=args.cpus, run_config=extra,
                                 verbose=args.verbose, faults=args.inject_fault, budgets=_budgets(args),
                                 min_rows=args.min_rows, min_positives=args.min_positives, started_at=started)
        if opts.budgets and not opts.dp:
            raise UserError("--budgets sets privacy budgets; it cannot go with --no-dp")
    if not args.verbose:
        from flwr.common.logger import FLOWER_LOGGER

        FLOWER_LOGGER.setLevel(logging.WARNING)
    err = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err, transient=False) as bar:
        task = bar.add_task("starting Flower simulation", total=opts.rounds, info="")

        def on_event(e: dict) -> None:
            if resumed_at and str(e.get("time", "")) < resumed_at:
                return  # the progress of the run before it was killed
            kind = e.get("event")
            if kind == "statistics-end":
                bar.update(task, description="training", info=f"statistics from {len(e.get('contributors', []))} nodes")
            elif kind == "round-end":
                auc = e.get("auc")
                bar.update(task, completed=e["round"],
                           info=f"AUC {auc:.4f}" if isinstance(auc, (int, float)) else "")
            elif kind in ("refusal", "dropout", "rejected-update", "rejected-reply"):
                where = e.get("stage") or f"round {e.get('round')}"
                if e.get("stage") and e.get("round") is not None:
                    where = f"round {e.get('round')} {e['stage']}"
                err.print(f"  {where}: {kind} — {e.get('institution')}: {e.get('reason')} {e.get('detail', '')[:160]}")
            elif kind == "resumed":
                bar.update(task, description="training (resumed)", completed=e.get("from_round", 0),
                           info=f"from checkpoint round {e.get('from_round')}")
            elif kind == "run-stopped":
                err.print(f"[yellow]run stopped: {e.get('reason')} — {e.get('detail')}")
            elif kind == "research-mode":
                err.print(Panel(escape(e["summary"]), title="research mode", border_style="bold red"))
            elif kind == "baselines-start":
                bar.update(task, description="federated run finished")
                baselines[0] = bar.add_task("baselines (centralised, local-only)", total=e["total"], info="")
            elif kind == "baseline-end":
                bar.update(baselines[0], completed=e["done"], info=f"{e['name']} trained")

        baselines = [None]
        try:
            summary = simulate(opts, on_event)
        except UserError:
            bar.update(task, visible=False)  # refused before it started: no bar that says it was starting
            raise
        bar.update(task, description="done")
    print_table(summary)
    return Outcome(summary)


def print_table(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def f(v, fmt="{:.4f}", sd=None):  # ± the noise sd of a figure from DP-noised evaluation releases
        return "—" if v is None else fmt.format(v) + ("" if sd is None else " ± " + fmt.format(sd))

    t = Table(title=f"fedcredit simulation — {s['rounds']} round(s), status {s['status']}"
                    + (f" ({s['stop_reason']})" if s.get("stop_reason") else ""))
    oracle = s.get("auc_oracle") is not None
    for col in ("institution", "rows (holdout)", "default rate", "AUC local-only", "AUC federated", "AUC personalised",
                "gain", "AUC centralised", *(("AUC oracle",) if oracle else ()), "ε spent / budget"):
        t.add_column(col, justify="left" if col == "institution" else "right")
    for r in s["institutions"]:
        eps = "no DP" if r["epsilon_budget"] is None and not s["dp"] else \
            f"{f(r['epsilon_spent'], '{:.3f}')} / {f(r['epsilon_budget'], '{:.2f}')}"
        rows = f"{r['rows']} ({r['rows_holdout']})" if r.get("rows_holdout") is not None else str(r["rows"])
        t.add_row(r["id"], rows, f(r["default_rate"], "{:.3f}"), f(r["auc_local_only"]),
                  f(r["auc_federated"], sd=r.get("auc_federated_sd")), f(r.get("auc_personalized")),
                  f(r.get("gain_from_joining"), "{:+.4f}"),
                  f(r["auc_centralized"]), *((f(r["auc_oracle"]),) if oracle else ()), eps)
    t.add_section()
    holdout = [r.get("rows_holdout") for r in s["institutions"]]
    worse = s.get("members_worse_than_local_only")
    t.add_row("all (pooled holdouts)", f"({sum(holdout)})" if None not in holdout else "—", "",
              f(s["auc_local_only_mean"]) + " (mean)",
              f(s["auc_federated"], sd=s.get("auc_federated_sd")), f(s.get("auc_personalized_pooled")) + " (chosen)",
              "" if worse is None else f"{worse} worse", f(s["auc_centralized"]),
              *((f(s["auc_oracle"]),) if oracle else ()), "")
    console = Console() if sys.stdout.isatty() else Console(width=132)
    console.print(t)
    print(f"run directory: {s['run_dir']}")
    sys.stdout.flush()
