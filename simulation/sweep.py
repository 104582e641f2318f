"""Sweeps: one simulated consortium per point of a grid — resumable, tabulated, plotted.

A sweep file (TOML; ``configs/sweeps/privacy-utility.toml`` is an example) declares a grid::

    [sweep]
    name = "privacy-utility"     # optional (default: the file name); names the default output directory
    runtime = "flower"           # "flower": the real ServerApp/ClientApps in Flower's simulation
                                 # runtime (simulation.runner.simulate); "plain": the same node code in
                                 # an in-process FedAvg loop (simulation.plain_loop; no fedadam) — fast
    baselines = true             # centralised and local-only reference models at every point
    cpus = 0                     # CPUs for Flower's runtime (0 = all)

    [data]
    source = "synthetic"         # "synthetic": the archetype consortium; "table": one table, partitioned
    scale = 0.25                 # synthetic: size multiplier of the institutions
    # path = "UCI_Credit_Card.csv"   table: CSV or Parquet (relative: to the current directory, else
    # mapping = "uci-taiwan"          to the sweep file); its column mapping (optional)
    # schema = "consumer-credit-v1"
    # alpha = 0.5  feature = "credit_limit"  strictness = 1.0  min_rows = 500   (partition parameters)

    [grid]                       # a value or an array each; every combination is one point
    epsilon = [0.5, 1, 2, 4, 8, "no-dp"]   # each institution's budget ε; "no-dp" trains without DP
    strategy = ["fedavg", "fedprox"]        # fedavg | fedprox | fedadam
    rounds = 10
    local_epochs = 1
    institutions = 5
    # partition = ["iid", "dirichlet", "quantity", "feature"]   (table source only)
    seed = [0, 1, 2]             # repeats: data synthesis / partition, initialisation, sampling, noise

    [run-config]                 # further run-config keys, the same at every point
    batch-size = 256

Every key is checked when the file is read; a mistake names the file and the dotted key.

Output directory (default ``runs/sweep-<name>``)::

    sweep.toml            the sweep file as run
    points/<key>.json     one result per point, written as soon as the point completes
    runs/<key>/           the point's run directory (metrics.json, model/, report.html …)
    data/<partition>/     institution files of each partition of the table (table source): the
                          table's own rows, read by every point with data.mapping; the manifest
                          records the settings' fingerprint, and a partition made under other
                          settings (table, mapping, alpha, feature, …) is made again
    results.csv  results.parquet   the table: one row per point, with its run directory
    plots/privacy_utility.png      AUC vs ε: federated, local-only, centralised, no-DP references
    plots/auc_by_round.png         global AUC after each round, per point
    plots/auc_by_<axis>.png        AUC vs each other varied axis (strategy, rounds, …), per ε

**Resume.** Rerunning the same sweep into the same directory skips every point whose result
is stored under the same settings (the *fingerprint* of data, run config, runtime and
baselines); interrupted and failed points run again (their partial run directory is removed).
A table too small for ``data.min_rows`` rows at each of the most ``grid.institutions`` (Dirichlet
and quantity skew) stops the sweep before any point runs.

The code, one concept per module: :mod:`simulation.sweep_config` (the file, read and checked),
:mod:`simulation.sweep_run` (running and resuming the points), :mod:`simulation.sweep_table`
(the results table) and :mod:`simulation.sweep_plots` (the figures). This module is the entry
point that names them.
"""

from __future__ import annotations

from simulation.sweep_config import GridPoint, SweepConfig, load_sweep
from simulation.sweep_plots import plot_sweep
from simulation.sweep_run import SweepOutcome, check_out_dir, default_out_dir, run_sweep, stored_result
from simulation.sweep_table import TABLE_COLUMNS, results_frame, write_table

__all__ = ["GridPoint", "SweepConfig", "SweepOutcome", "TABLE_COLUMNS", "check_out_dir", "default_out_dir",
           "load_sweep", "plot_sweep", "results_frame", "run_sweep", "stored_result", "write_table"]
