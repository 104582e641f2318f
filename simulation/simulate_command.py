"""``fedcredit simulate``: a whole consortium on this machine, compared with its baselines."""

from __future__ import annotations

import argparse
import sys

from fedcredit.outcome import Outcome

HELP = "run a simulated consortium in Flower's simulation runtime, with baselines"
DESCRIPTION = """\
Run the consortium's real ServerApp and ClientApps in Flower's simulation runtime on this
machine: federated statistics → encoder, then ROUNDS rounds of local training (DP-SGD by
default, each institution enforcing its own budget), exact federated evaluation, a checkpoint
per round and the model package at the end. Then the same network and encoder are trained
centralised (pooled data, non-private) and local-only (each institution alone, DP at the same
budget) on the same splits, and a table compares them per institution. On synthetic data the
table also shows the oracle AUC: the AUC of each borrower's true PD, the ceiling for any model.

Data: --synthetic (default) simulates the archetype consortium (see `fedcredit data synth
--help`); --data DIR takes one CSV/Parquet file per institution (as `data synth` writes them, or
real files with --mapping). Every file is validated first; a bad file stops with the report.

Writes RUN_DIR/: metrics.json (rounds, per-institution figures, baselines), model/,
checkpoints/, progress.jsonl, config.resolved.toml, node-state/ (each institution's privacy
ledger). With --json the summary is the last line of stdout.

Resume: --resume RUN_DIR continues a simulation that was killed (or stopped) from its last
checkpoint, with the settings in RUN_DIR/config.resolved.toml (same data, state root, budgets);
RUN_DIR/checkpoints/round-NNNN resumes from that earlier checkpoint. A checkpoint or audit
ledger that fails verification is reported and nothing is loaded (exit 2).

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
                         "learning_rate", "model", "run_config", "budgets")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from server.settings import DEFAULTS as D

    src = p.add_mutually_exclusive_group()
    src.add_argument("--synthetic", action="store_true", help="simulate synthetic institutions (default)")
    src.add_argument("--data", metavar="DIR", help="directory with one CSV/Parquet file per institution")
    p.add_argument("--institutions", type=int, default=5, metavar="N", help="number of synthetic institutions")
    p.add_argument("--scale", type=float, default=1.0, help="size multiplier of the synthetic institutions")
    p.add_argument("--rounds", type=int, default=D["num-server-rounds"], metavar="R", help="training rounds")
    p.add_argument("--schema", default="consumer-credit-v1", help="schema name or path")
    p.add_argument("--mapping", help="column mapping for --data files (name or path)")
    p.add_argument("--strategy", choices=["fedavg", "fedprox", "fedadam"], default="fedavg")
    dp = p.add_mutually_exclusive_group()
    dp.add_argument("--epsilon", type=float, default=D["sim-max-epsilon"], metavar="E",
                    help="each institution's lifetime privacy budget ε (DP-SGD)")
    dp.add_argument("--no-dp", action="store_true", help="train without differential privacy (research only)")
    p.add_argument("--budgets", metavar="FILE",
                   help="per-institution budgets: a TOML file with a table [max-epsilon] of institution = ε; "
                        "institutions not listed get --epsilon (see simulation/budgets.py)")
    p.add_argument("--seed", type=int, default=D["seed"], help="seed of data synthesis, initialisation and sampling")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/sim-<time>)")
    p.add_argument("--state-root", metavar="DIR",
                   help="keep the institutions' privacy state here across runs (default RUN_DIR/node-state)")
    p.add_argument("--local-epochs", type=int, default=D["local-epochs"])
    p.add_argument("--batch-size", type=int, default=D["batch-size"])
    p.add_argument("--learning-rate", type=float, default=D["learning-rate"])
    p.add_argument("--model", choices=["mlp", "scorecard"], default=D["model"])
    p.add_argument("--run-config", action="append", default=[], metavar="KEY=VALUE",
                   help="any further run-config key (see docs/operator.md); repeatable")
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


def run(args: argparse.Namespace) -> int:
    import logging

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from configs.errors import UserError
    from simulation.budgets import load_budgets
    from simulation.runner import SimulationOptions, simulate

    for name, value, low in (("--rounds", args.rounds, 1), ("--institutions", args.institutions, 2),
                             ("--local-epochs", args.local_epochs, 1), ("--batch-size", args.batch_size, 1)):
        if value < low:
            raise UserError(f"{name} must be at least {low}, got {value}")
    if args.scale <= 0 or (not args.no_dp and args.epsilon <= 0):
        raise UserError("--scale and --epsilon must be positive")
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
        resumed_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    else:
        extra = parse_key_values(args.run_config)
        extra.update({"local-epochs": args.local_epochs, "batch-size": args.batch_size,
                      "learning-rate": args.learning_rate, "model": args.model})
        opts = SimulationOptions(institutions=args.institutions, rounds=args.rounds, data_dir=args.data,
                                 schema=args.schema, mapping=args.mapping, strategy=args.strategy, dp=not args.no_dp,
                                 epsilon=args.epsilon, seed=args.seed, scale=args.scale, out=args.out,
                                 state_root=args.state_root, baselines=not args.no_baselines, cpus=args.cpus,
                                 run_config=extra, verbose=args.verbose, faults=args.inject_fault,
                                 budgets=load_budgets(args.budgets) if args.budgets else {})
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

        summary = simulate(opts, on_event)
        bar.update(task, description="done")
    print_table(summary)
    return Outcome(summary)


def print_table(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def f(v, fmt="{:.4f}"):
        return "—" if v is None else fmt.format(v)

    t = Table(title=f"fedcredit simulation — {s['rounds']} round(s), status {s['status']}"
                    + (f" ({s['stop_reason']})" if s.get("stop_reason") else ""))
    oracle = s.get("auc_oracle") is not None
    for col in ("institution", "rows", "default rate", "AUC local-only", "AUC federated", "AUC centralised",
                *(("AUC oracle",) if oracle else ()), "ε spent / budget"):
        t.add_column(col, justify="left" if col == "institution" else "right")
    for r in s["institutions"]:
        eps = "no DP" if r["epsilon_budget"] is None and not s["dp"] else \
            f"{f(r['epsilon_spent'], '{:.3f}')} / {f(r['epsilon_budget'], '{:.2f}')}"
        t.add_row(r["id"], str(r["rows"]), f(r["default_rate"], "{:.3f}"), f(r["auc_local_only"]),
                  f(r["auc_federated"]), f(r["auc_centralized"]), *((f(r["auc_oracle"]),) if oracle else ()), eps)
    t.add_section()
    t.add_row("all (pooled holdouts)", str(sum(r["rows"] for r in s["institutions"])), "",
              f(s["auc_local_only_mean"]) + " (mean)", f(s["auc_federated"]), f(s["auc_centralized"]),
              *((f(s["auc_oracle"]),) if oracle else ()), "")
    console = Console() if sys.stdout.isatty() else Console(width=132)
    console.print(t)
    print(f"run directory: {s['run_dir']}")
    sys.stdout.flush()
