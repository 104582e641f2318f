"""``fedcredit sweep``: a grid of simulated consortia — privacy–utility curves and more."""

from __future__ import annotations

import argparse
import sys

from fedcredit.outcome import Outcome

HELP = "run a grid of simulations (ε, strategy, rounds, epochs, institutions, partitioning, seeds)"
DESCRIPTION = """\
Run one simulated consortium per point of the grid in CONFIG.toml — every combination of the
[grid] values of epsilon (and "no-dp"), strategy, rounds, local_epochs, institutions,
partition and seed — each in Flower's simulation runtime (runtime = "flower") or in the
in-process loop (runtime = "plain"), with the centralised and local-only baselines. Example:
configs/sweeps/privacy-utility.toml; the keys are described in simulation/sweep.py.

Writes to --out (default runs/sweep-<name>): points/<key>.json (each result as soon as its
point completes), runs/<key>/ (each point's run directory), results.csv and results.parquet
(one row per point, with its run directory) and plots/*.png — privacy_utility.png (AUC vs ε,
with centralised and local-only references), auc_by_round.png, auc_by_<axis>.png.

Resumable: run the same command again after an interruption; points already done (under the
same data and settings) are skipped, the others run.

Exit codes: 0 every point ran (a run that stopped cleanly, e.g. budget exhausted, counts);
1 some points failed (listed; rerun to retry them); 2 a mistake in the sweep file or the data.
"""
JSON = "a summary"  # what --json prints (fedcredit.cli adds the option)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG.toml", help="sweep file (see configs/sweeps/)")
    p.add_argument("--out", metavar="DIR", help="output directory (default runs/sweep-<name>); rerun into it to resume")
    p.add_argument("--list", action="store_true", help="list the grid points (done or to do) and exit")
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from simulation.sweep import check_out_dir, default_out_dir, load_sweep, run_sweep, stored_result

    cfg = load_sweep(args.config)
    out = check_out_dir(Path(args.out) if args.out else default_out_dir(cfg))
    points = cfg.points()
    if args.list:
        fp = cfg.fingerprint()
        for p in points:
            print(f"{'done' if stored_result(out, p, fp) else 'todo'}  {p.key}")
        return Outcome({"ok": True, "out": str(out), "points": [p.key for p in points]})
    if not args.verbose:
        from flwr.common.logger import FLOWER_LOGGER

        FLOWER_LOGGER.setLevel(logging.WARNING)
    err = Console(stderr=True)
    err.print(f"sweep [bold]{cfg.name}[/bold]: {len(points)} point(s), runtime {cfg.runtime}, "
              f"{cfg.source} data → {out}")
    state = {"done": 0}
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err, transient=False) as bar:
        grid_task = bar.add_task("grid points", total=len(points), info="")
        run_task = bar.add_task("  rounds", total=1, info="", visible=False)

        def on_point(stage, point, index, total, result):
            if stage == "skip":
                state["done"] += 1
                bar.update(grid_task, completed=state["done"], info=f"{point.key}: done before, skipped")
            elif stage == "start":
                bar.update(grid_task, info=f"running {point.key}")
                bar.reset(run_task, total=point.rounds, visible=cfg.runtime == "flower", info="starting")
            else:
                state["done"] += 1
                auc = result.get("auc_federated")
                what = (f"failed: {result.get('error', '')[:120]}" if result["status"] == "failed"
                        else f"AUC {auc:.4f}" if isinstance(auc, (int, float)) else result["status"])
                bar.update(grid_task, completed=state["done"], info=f"{point.key}: {what}")
                bar.update(run_task, visible=False)
                if result["status"] == "failed":
                    err.print(f"[red]point {point.key} failed:[/red] {result.get('error', '')}")

        def on_event(e: dict) -> None:
            if e.get("event") == "round-end":
                auc = e.get("auc")
                bar.update(run_task, completed=e["round"], info=f"AUC {auc:.4f}" if isinstance(auc, float) else "")
            elif e.get("event") == "statistics-end":
                bar.update(run_task, info="training")

        try:
            outcome = run_sweep(cfg, out, on_point=on_point, on_event=on_event, verbose=args.verbose)
        except KeyboardInterrupt:
            err.print(f"[yellow]interrupted after {state['done']} of {len(points)} point(s); run the same command "
                      f"again to resume (finished points are kept in {out / 'points'})")
            raise
    print_results(outcome)
    return Outcome(outcome.summary(), 1 if outcome.failed else 0)


def print_results(outcome) -> None:
    from rich.console import Console
    from rich.table import Table

    from simulation.sweep import results_frame

    frame = results_frame(outcome.results)

    def f(v, fmt="{:.4f}"):
        return "—" if v is None or v != v else fmt.format(v)

    t = Table(title=f"sweep results ({len(outcome.ran)} ran, {len(outcome.skipped)} skipped as done, "
                    f"{len(outcome.failed)} failed)")
    for col in ("point", "ε", "status", "AUC federated", "AUC local-only", "AUC centralised", "ε spent (max)", "wall s"):
        t.add_column(col, justify="left" if col in ("point", "status") else "right")
    for _, r in frame.iterrows():
        status = r["status"] + (f" ({r['stop_reason']})" if r["stop_reason"] else "")
        t.add_row(r["key"], "no DP" if not r["dp"] else f"{r['epsilon']:g}", status, f(r["auc_federated"]),
                  f(r["auc_local_only_mean"]), f(r["auc_centralized"]), f(r["epsilon_spent_max"], "{:.3f}"),
                  f(r["point_wall_s"], "{:.1f}"))
    console = Console() if sys.stdout.isatty() else Console(width=150)
    console.print(t)
    print(f"table: {outcome.table_csv} (and {outcome.table_parquet.name})")
    for p in outcome.plots:
        print(f"plot: {p}")
    sys.stdout.flush()
