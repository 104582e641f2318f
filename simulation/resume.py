"""``fedcredit simulate --resume RUN_DIR``: continue a simulation that was killed or stopped.

The run's own settings come from ``RUN_DIR/config.resolved.toml`` (the same data, state root,
budgets and seed); the number of virtual nodes from the checkpoint's statistics round (every
virtual node was asked). Before Flower starts, the checkpoint (every hash) and the audit ledger
(the whole chain) are verified: a damaged checkpoint or ledger ends with the reason and exit
code 2, and nothing is loaded or appended. ``RUN_DIR/checkpoints/round-NNNN`` instead of
``RUN_DIR`` resumes from that (earlier) checkpoint; the rounds after it are trained again.

The ServerApp then resumes as in a deployment (run config ``resume-from``): weights, encoder,
strategy state, round counter and history from the checkpoint, the same ledger continued,
rounds ``last + 1 … num-server-rounds`` trained, and each node re-plans its noise for those
rounds from its own privacy ledger.
"""

from __future__ import annotations

import json
from pathlib import Path

from configs.errors import ConfigError, UserError
from configs.toml_reader import read_toml
from simulation.runner import SimulationOptions, read_simulate_options


def resume_options(path: str | Path, *, cpus: int | None = None, baselines: bool | None = None,
                   verbose: bool = False, faults: list[str] | None = None) -> SimulationOptions:
    """SimulationOptions that continue the simulation in ``path`` (a run dir or one of its checkpoints).
    ``baselines`` None: as the original ``fedcredit simulate`` was asked (``RUN_DIR/simulate.json``)."""
    from server.checkpoints import load_checkpoint, resume_source
    from server.ledger import LEDGER_FILE, verify_ledger

    run_dir, rnd = resume_source(path)
    cfg_path = run_dir / "config.resolved.toml"
    if not cfg_path.is_file():
        raise UserError(f"--resume {path}: {cfg_path} is missing, so this is not the directory of a fedcredit run "
                        "(give the --out directory of the simulation to continue)")
    try:
        rc = dict(read_toml(cfg_path, "resolved run configuration")["run-config"])
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{cfg_path}: not a resolved run configuration ({exc})") from None
    planned = int(rc.get("num-server-rounds", 0))
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        try:
            done = json.loads(metrics_path.read_text())
        except json.JSONDecodeError:
            done = {}
        if done.get("status") == "completed" and int(done.get("rounds_completed", 0)) >= planned and rnd is None:
            raise UserError(f"--resume {path}: the run finished all {planned} rounds; nothing to resume")
    ckpt = load_checkpoint(run_dir, rnd)  # every hash verified; a damaged checkpoint is reported, not loaded
    ledger = run_dir / LEDGER_FILE
    if ledger.is_file():
        res = verify_ledger(ledger)
        if not res.ok:
            raise UserError(f"{ledger}: the audit ledger does not verify — entry {res.first_bad_index}: {res.reason}. "
                            f"The run is not resumed; inspect it with 'fedcredit ledger verify {ledger}'.")
    stats = ckpt.state.get("statistics") or {}
    n_nodes = sum(len(stats.get(k) or []) for k in ("contributors", "refused", "dropped"))
    if n_nodes < 2:
        raise UserError(f"{ckpt.path}: the checkpoint does not say how many institutions took part; "
                        "resume with 'fedcredit simulate --run-config resume-from=...' and the original options")
    if metrics_path.is_file():  # a stopped run's summary: kept beside, the resumed run writes a new one
        metrics_path.replace(run_dir / "metrics.before-resume.json")
    if baselines is None:
        baselines = bool(read_simulate_options(run_dir).get("baselines", True))
    data_dir = rc.get("data-dir") or None
    rc.update({"resume-from": str(ckpt.path if rnd is not None else run_dir), "run-dir": str(run_dir)})
    return SimulationOptions(
        institutions=n_nodes, rounds=planned, data_dir=data_dir, schema=str(rc.get("schema", "consumer-credit-v1")),
        mapping=rc.get("mapping") or None, strategy=str(rc.get("strategy", "fedavg")), dp=bool(rc.get("dp", True)),
        epsilon=float(rc.get("sim-max-epsilon", 3.0)), seed=int(rc.get("seed", 0)),
        scale=float(rc.get("synthetic-scale", 1.0)), out=str(run_dir), state_root=rc.get("state-root") or None,
        baselines=baselines, cpus=cpus, run_config=rc, verbose=verbose, faults=list(faults or []))
