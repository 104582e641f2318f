"""The in-process counterpart of :func:`simulation.runner.simulate` (a sweep's ``runtime = "plain"``).

Same data, splits, node code, run config, baselines and summary as the Flower run, with the
training rounds of :func:`simulation.plain_loop.run_plain` in place of Flower's runtime.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fedcredit.atomic_write import write_json_atomic
from fedcredit.json_values import json_default


def simulate_plain(o) -> dict:
    """:func:`simulation.runner.simulate` with the in-process loop instead of Flower.

    Same data, splits, node code, run config and baselines; FedAvg (or FedProx's local
    objective) aggregation, no checkpoints, model package or report. Writes
    ``RUN_DIR/metrics.json`` (history, final metrics, baselines, data) and returns the same
    summary as ``simulate``.
    """
    from configs.sim_budgets import parse_sim_budgets
    from server.settings import parse_run_config
    from simulation.baselines import run_baselines
    from simulation.plain_loop import run_plain
    from simulation.research_mode import assess_research_mode, load_nodes
    from simulation.runner import (baseline_settings, build_run_config, count_data_files, data_summary,
                                   load_all_nodes, summarise)

    t_start = time.time()
    n = count_data_files(o.data_dir) if o.data_dir else o.institutions
    run_dir = Path(o.out).resolve()
    run_config = build_run_config(o, run_dir, n)
    settings = parse_run_config(run_config)
    nodes = load_nodes(run_config, n, load_all_nodes)
    budgets = parse_sim_budgets(settings.sim_budgets)
    research = assess_research_mode(nodes, settings, {k: (budgets.get(k, o.epsilon) if settings.dp else None)
                                                      for k in nodes})
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res = run_plain(run_config, n, evaluate_every_round=True)
    wall = time.time() - t0
    metrics: dict[str, Any] = {
        "runtime": "plain", "run_dir": str(run_dir), "status": "completed", "stop_reason": "",
        "rounds_planned": settings.num_server_rounds, "rounds_completed": len(res["history"]),
        "wall_s_flower": wall, "settings": settings.as_run_config(), "history": res["history"], "final": res["final"],
        "institutions": {k: {"privacy": {"epsilon_spent": m.get("epsilon-spent"),
                                         "epsilon_budget": m.get("epsilon-budget")}}
                         for k, m in res["node_metrics"].items()},
    }
    if research:
        metrics["research_mode"] = research
    t_baselines = time.time()
    if o.baselines:
        metrics["baselines"] = run_baselines(nodes, res["encoder"], res["spec"], baseline_settings(settings, o.epsilon))
    metrics["baselines_s"] = time.time() - t_baselines
    metrics["wall_s"] = time.time() - t_start
    metrics["data"] = data_summary(nodes)
    metrics["summary"] = summarise(metrics, nodes, o)
    write_json_atomic(run_dir / "metrics.json", metrics, default=json_default)
    return metrics["summary"]

