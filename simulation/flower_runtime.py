"""Running the consortium in Flower's simulation runtime, inside this process.

``fedcredit simulate`` runs the real ServerApp and ClientApp of this repository in Flower's
simulation engine (Ray actors for the ClientApps, the ServerApp in a thread). Flower 1.42's
public ``run_simulation`` cannot pass a run config, so this module goes one level down, to the
function ``run_simulation`` itself calls, with a Flower ``Run`` and a ``Context`` carrying the
fused run config (pyproject defaults + overrides), exactly as ``flwr run`` would deliver it.
Ray is started with the given CPUs and shut down on return, so no process is left behind.

Also here: :func:`flwr_run_env`, the environment for ``flwr run .`` (isolated ``FLWR_HOME``,
no runtime dependency installation, no telemetry) used by tests and docs.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from configs.errors import UserError

APP_DIR = Path(__file__).resolve().parent.parent


def quiet_flower_environment() -> None:
    """Environment Flower and Ray read at start-up: no telemetry, no dependency install."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def with_flower_tools_on_path(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this Python's scripts directory first on PATH.

    Flower's processes start their companions by name (``flwr run`` → ``flower-superlink`` →
    ``flower-superexec``; ``flower-supernode`` → ``flower-superexec``), so they must be found
    on PATH even when this virtual environment is not activated.
    """
    import sys

    tools = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    if tools not in path.split(os.pathsep):
        env["PATH"] = tools + (os.pathsep + path if path else "")
    return env


def flwr_run_env(flwr_home: str | Path) -> dict[str, str]:
    """Environment for a Flower CLI or process with its state under ``flwr_home``."""
    env = with_flower_tools_on_path(dict(os.environ))
    env.update({"FLWR_HOME": str(flwr_home), "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_USAGE_STATS_ENABLED": "0"})
    return env


def run_in_simulation(run_config: dict[str, Any], num_supernodes: int, *, num_cpus: int | None = None,
                      cpus_per_client: float = 1.0, run_id: int | None = None, verbose: bool = False,
                      client_app=None) -> None:
    """Run this repository's ServerApp + ClientApp with ``num_supernodes`` virtual nodes.

    ``run_config`` overrides the app's ``[tool.flwr.app.config]`` defaults (unknown keys are an
    error, as with ``flwr run --run-config``). Exceptions from the ServerApp propagate.
    ``run_id`` defaults to a fresh random id, as a SuperLink gives each run its own: nodes key
    their privacy events and stored ledger heads by it (a resumed run keeps the id of the run it
    continues for the nodes, :mod:`server.consortium`).
    ``client_app`` replaces the ClientApp for this simulation only — e.g. one with injected
    faults (:mod:`simulation.faults`) or a malicious node (``bench/poisoning.py``). Either way
    it runs behind :func:`simulation.virtual_nodes.with_virtual_nodes`, which gives each
    virtual node its table, institution id and budget.
    """
    quiet_flower_environment()
    try:
        from flwr.app import Context, RecordDict
        from flwr.common.config import get_fused_config_from_dir
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.simulation.run_simulation import _run_simulation
        from flwr.supercore.constant import NOOP_FEDERATION_ID
        from flwr.supercore.run import Run
        from flwr.supercore.task_identity import TaskIdentity
        from flwr.supercore.telemetry import EventType
    except ImportError as exc:  # pragma: no cover - only with an incompatible Flower
        raise RuntimeError(f"this Flower version lacks the simulation entry point fedcredit uses ({exc}); "
                           "install flwr>=1.42,<2") from exc

    from server.server_app import app as server_app
    from simulation.virtual_nodes import with_virtual_nodes

    if client_app is None:
        from clients.client_app import app as client_app
    # the virtual nodes get their tables and budgets from simulation, through the ClientApp's mod
    client_app = with_virtual_nodes(client_app)

    if run_id is None:
        run_id = secrets.randbelow(2**62) + 1  # a positive int64 with room for the task id run_id + 1
    run = Run.create_empty(run_id=run_id)
    run.override_config = dict(run_config)
    run.primary_task_id = run_id + 1
    run.federation_id = NOOP_FEDERATION_ID
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = run_id + 1, run_id, SUPERLINK_NODE_ID
    try:
        fused = get_fused_config_from_dir(APP_DIR, dict(run_config))
    except Exception as exc:
        raise UserError(f"run config: {exc}") from None
    context = Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=fused)
    cpus = num_cpus or os.cpu_count() or 1
    backend_config = {"init_args": {"num_cpus": cpus, "num_gpus": 0, "logging_level": "ERROR",
                                    "log_to_driver": verbose, "include_dashboard": False},
                      "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0}}
    _run_simulation(num_supernodes=num_supernodes, exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                    client_app=client_app, server_app=server_app, app_dir=str(APP_DIR), is_app=True,
                    run=run, server_app_context=context, backend_config=backend_config,
                    verbose_logging=verbose)
