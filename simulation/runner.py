"""A whole simulated consortium on one machine: Flower run + baselines + summary.

:func:`simulate` is what ``fedcredit simulate``, the sweeps and the benchmarks call:

1. resolve the institutions (synthetic archetypes, or one file per institution in a
   directory) and validate every file up front, so bad data stops before Flower starts;
2. run the real ServerApp/ClientApp in Flower's simulation runtime
   (:mod:`simulation.flower_runtime`), each virtual node keeping its privacy state under
   ``RUN_DIR/node-state/<institution>`` (or ``--state-root``);
3. train the centralised and local-only baselines with the run's encoder on the nodes' own
   splits (:mod:`simulation.baselines`), and score each node's personal model on its holdout
   (:mod:`simulation.member_gain`: what each member gains from joining);
4. merge everything into ``RUN_DIR/metrics.json``, write ``report.html`` and the model card
   (:mod:`server.report`, :mod:`server.model_card`) and return the summary.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from clients.node import DATA_SUFFIXES, NodeData, load_node_data
from configs.errors import UserError
from configs.sim_budgets import format_sim_budgets, parse_sim_budgets
from fedcredit.atomic_write import write_json_atomic
from models.encoder import FeatureEncoder
from models.network import ModelSpec
from server.settings import DEFAULTS
from simulation.virtual_nodes import virtual_policy


@dataclass
class SimulationOptions:
    institutions: int = 5
    rounds: int = DEFAULTS["num-server-rounds"]
    data_dir: str | None = None
    schema: str = "consumer-credit-v1"
    mapping: str | None = None
    strategy: str = "fedavg"
    dp: bool = True
    epsilon: float = DEFAULTS["sim-max-epsilon"]
    seed: int = 0
    scale: float = 1.0
    out: str | None = None
    state_root: str | None = None
    baselines: bool = True
    cpus: int | None = None
    run_config: dict[str, Any] = field(default_factory=dict)  # any further run-config keys
    verbose: bool = False
    faults: list[str] = field(default_factory=list)  # injected node faults (simulation.faults), e.g. "0:fail@1"
    budgets: dict[str, float] = field(default_factory=dict)  # per-institution ε (simulation.budgets); others: epsilon
    #: each institution's data minimum (run config min-rows / min-positives; below 500 / 50: research
    #: mode, simulation.research_mode); None: the consortium's 500 / 50 with DP, none without
    min_rows: int | None = None
    min_positives: int | None = None
    #: ``time.time()`` when the command began (before its imports); the summary's ``wall_s`` counts
    #: from here. None: from the call of :func:`simulate`
    started_at: float | None = None
    #: "flower": Flower's simulation runtime (Ray); "inprocess": the same ServerApp driver and
    #: ClientApp with the messages delivered in this process (simulation.inprocess_grid; no Ray,
    #: one CPU — for benchmarks that run many simulations side by side)
    runtime: str = "flower"


#: simulation: seconds of round time-out per virtual node (DP planning, training and evaluation of
#: a ~1,000-row institution take well under a second each on one CPU; generous for loaded machines)
SIM_ROUND_SECONDS_PER_NODE = 3.0


def default_run_dir(prefix: str = "sim") -> Path:
    return Path("runs") / f"{prefix}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def count_data_files(data_dir: str) -> int:
    d = Path(data_dir)
    if not d.is_dir():
        raise UserError(f"--data {data_dir}: not a directory (give a directory with one CSV or Parquet file per institution)")
    files = [p for p in d.iterdir() if p.suffix.lower() in DATA_SUFFIXES]
    if len(files) < 2:
        raise UserError(f"--data {data_dir}: found {len(files)} data file(s); a consortium needs at least 2 "
                        f"(one {'/'.join(DATA_SUFFIXES)} file per institution)")
    return len(files)


def build_run_config(o: SimulationOptions, run_dir: Path, n_nodes: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "num-server-rounds": o.rounds, "strategy": o.strategy, "dp": o.dp, "seed": o.seed,
        "sim-max-epsilon": float(o.epsilon), "run-dir": str(run_dir), "schema": o.schema,
        "state-root": str(Path(o.state_root).resolve()) if o.state_root else str(run_dir / "node-state"),
        "synthetic-scale": float(o.scale), "synthetic-seed": o.seed,
        "min-available-nodes": n_nodes, "min-train-nodes": min(n_nodes, max(2, n_nodes // 2)),
        # the virtual nodes take turns on a few CPUs, so a round lasts longer the more nodes there are:
        # a time-out sized for a deployment would drop the last nodes of a large simulated consortium
        "round-timeout": max(float(DEFAULTS["round-timeout"]), SIM_ROUND_SECONDS_PER_NODE * n_nodes),
    }
    if o.data_dir:
        cfg["data-dir"] = str(Path(o.data_dir).resolve())
    if o.mapping:
        cfg["mapping"] = o.mapping
    if o.budgets:
        cfg["sim-budgets"] = format_sim_budgets(o.budgets)
    # the minimum is there for DP training: without DP it does not apply (unless asked for)
    cfg["min-rows"] = o.min_rows if o.min_rows is not None else (DEFAULTS["min-rows"] if o.dp else 0)
    cfg["min-positives"] = (o.min_positives if o.min_positives is not None
                            else (DEFAULTS["min-positives"] if o.dp else 0))
    cfg.update(o.run_config)
    return cfg


def load_all_nodes(run_config: dict, n_nodes: int) -> dict[str, NodeData]:
    """Each virtual node's data exactly as its ClientApp will load it (validated, split)."""
    out = {}
    for k in range(n_nodes):
        policy = virtual_policy(k, n_nodes, run_config)
        out[policy.institution_id] = load_node_data(policy)
    return out


class ProgressTail(threading.Thread):
    """Follows RUN_DIR/progress.jsonl while the run is going and calls ``on_event`` per entry."""

    def __init__(self, path: Path, on_event: Callable[[dict], None]):
        super().__init__(daemon=True)
        self.path, self.on_event = path, on_event
        self.stop = threading.Event()

    def run(self) -> None:
        pos = 0
        while not self.stop.is_set():
            pos = self._drain(pos)
            self.stop.wait(0.2)
        self._drain(pos)

    def _drain(self, pos: int) -> int:
        if not self.path.is_file():
            return pos
        with open(self.path) as fh:
            fh.seek(pos)
            for line in fh:
                if line.endswith("\n"):
                    try:
                        self.on_event(json.loads(line))
                    except json.JSONDecodeError:
                        pass
                    pos += len(line.encode())
                else:
                    break
        return pos


SIMULATE_OPTIONS_FILE = "simulate.json"


def write_simulate_options(run_dir: Path, o: SimulationOptions) -> None:
    """Keep what ``fedcredit simulate`` was asked for beyond the run config (``--resume`` reads it)."""
    (run_dir / SIMULATE_OPTIONS_FILE).write_text(json.dumps({"baselines": o.baselines}) + "\n")


def read_simulate_options(run_dir: Path) -> dict:
    try:
        return dict(json.loads((Path(run_dir) / SIMULATE_OPTIONS_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def simulate(o: SimulationOptions, on_event: Callable[[dict], None] | None = None) -> dict:
    """Run the simulation and baselines; return the summary (also in RUN_DIR/metrics.json).

    Everything that can refuse the run — options, run config, data, budgets, faults, research
    mode — is checked before the run directory is made: a refused run leaves nothing behind.
    ``on_event`` receives the run's progress events and ``baselines-start`` / ``baseline-end``.
    """
    from server.settings import parse_run_config
    from simulation.flower_runtime import run_in_simulation
    from simulation.research_mode import assess_research_mode, load_nodes

    t_start = o.started_at or time.time()
    n_nodes = count_data_files(o.data_dir) if o.data_dir else o.institutions
    if n_nodes < 2:
        raise UserError(f"--institutions must be at least 2, got {n_nodes}")
    run_dir = Path(o.out or default_run_dir()).resolve()
    if (run_dir / "metrics.json").exists():
        raise UserError(f"{run_dir} already holds a finished run; choose another --out or remove it")
    run_config = build_run_config(o, run_dir, n_nodes)
    settings = parse_run_config(run_config)  # fail fast on bad keys/values
    nodes = load_nodes(run_config, n_nodes, load_all_nodes)  # fail fast on bad data (all small ones named)
    budgets = parse_sim_budgets(settings.sim_budgets)
    if budgets:
        from simulation.budgets import check_budgets_name_institutions

        check_budgets_name_institutions(budgets, list(nodes), "--budgets")
    from simulation.faults import client_app_with_faults

    client_app = client_app_with_faults(o.faults, n_nodes=n_nodes) if o.faults else None  # bad specs stop here
    epsilon_of = {k: (budgets.get(k, o.epsilon) if settings.dp else None) for k in nodes}
    research = assess_research_mode(nodes, settings, epsilon_of)  # refuses what DP-SGD cannot learn from
    if research and on_event:
        on_event({"event": "research-mode", "summary": research["summary"]})
    run_dir.mkdir(parents=True, exist_ok=True)
    write_simulate_options(run_dir, o)

    tail = ProgressTail(run_dir / "progress.jsonl", on_event) if on_event else None
    if tail:
        tail.start()
    t0 = time.time()
    try:
        if o.runtime == "inprocess":
            from simulation.inprocess_grid import run_in_process

            run_in_process(run_config, n_nodes, client_app=client_app)
        else:
            run_in_simulation(run_config, n_nodes, num_cpus=o.cpus, verbose=o.verbose, client_app=client_app)
    finally:
        if tail:
            tail.stop.set()
            tail.join()
    wall = time.time() - t0
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise RuntimeError(f"the Flower run ended without writing {metrics_path}; see the log above")
    metrics = json.loads(metrics_path.read_text())
    metrics["wall_s_flower"] = wall
    if o.faults:
        metrics["injected_faults"] = list(o.faults)
    if research:
        metrics["research_mode"] = research

    t_baselines = time.time()
    if o.baselines and metrics.get("model_dir"):
        from simulation.baselines import run_baselines

        encoder = FeatureEncoder.from_json((run_dir / "model" / "encoder.json").read_text())
        spec = ModelSpec.from_dict(json.loads((run_dir / "model" / "model.json").read_text())["spec"])
        progress = _baseline_progress(on_event, len(nodes) + 1)
        metrics["baselines"] = run_baselines(nodes, encoder, spec, baseline_settings(settings, o.epsilon),
                                             budgets=budgets, progress=progress)
    metrics["baselines_s"] = time.time() - t_baselines
    if metrics.get("model_dir"):
        metrics["member_gain"] = gains_of_members(metrics, nodes, run_dir, run_config)
    metrics["data"] = data_summary(nodes)
    if not o.data_dir:
        metrics["oracle"] = oracle_aucs(nodes, o, n_nodes)
    metrics["wall_s"] = time.time() - t_start
    metrics["summary"] = summarise(metrics, nodes, o)
    metrics["summary"].update({"report": str(run_dir / "report.html"), "model_card": str(run_dir / "model_card.md")})
    write_json_atomic(metrics_path, metrics, default=float)
    from server.report import write_report

    write_report(run_dir)  # report.html + model_card.md/.json, from the metrics.json just written
    metrics["wall_s"] = metrics["summary"]["wall_s"] = time.time() - t_start  # the report's seconds too
    write_json_atomic(metrics_path, metrics, default=float)
    return metrics["summary"]


def gains_of_members(metrics: dict, nodes: dict[str, NodeData], run_dir: Path, run_config: dict) -> dict:
    """Local-only vs global vs personalised AUC per member (:func:`simulation.member_gain.member_gains`)."""
    from simulation.member_gain import member_gains, node_run_ids

    final_inst = metrics.get("institutions") or {}
    federated = {k: ((final_inst.get(k) or {}).get("eval") or {}).get("auc") for k in nodes}
    local = {k: v.get("auc") for k, v in ((metrics.get("baselines") or {}).get("local_only") or {}).items()}
    return member_gains(nodes, Path(run_config["state-root"]), node_run_ids(run_dir, metrics),
                        Path(metrics["model_dir"]), federated, local)


def _baseline_progress(on_event: Callable[[dict], None] | None, total: int) -> Callable[[str], None] | None:
    """A callback for :func:`simulation.baselines.run_baselines` that reports each finished model
    as a ``baseline-end`` event (after a ``baselines-start`` with the number of models)."""
    if on_event is None:
        return None
    on_event({"event": "baselines-start", "total": total})
    done = [0]

    def progress(name: str) -> None:
        done[0] += 1
        on_event({"event": "baseline-end", "name": name, "done": done[0], "total": total})

    return progress


def data_summary(nodes: dict[str, NodeData]) -> dict[str, dict]:
    """Rows (training, holdout), default rate and data fingerprint of each institution."""
    return {k: {"rows_train": d.split.n_train, "rows_holdout": len(d.split.holdout),
                "rows": d.split.n_train + len(d.split.holdout),
                "default_rate": float(
                    (d.split.train[d.schema.label.name].sum() + d.split.holdout[d.schema.label.name].sum())
                    / (d.split.n_train + len(d.split.holdout))),
                "fingerprint": d.split.fingerprint}
            for k, d in nodes.items()}


def baseline_settings(settings, epsilon: float):
    """The baselines' training settings for a run: the same optimiser, rounds × local epochs,
    DP at the institutions' budget ``epsilon`` when the run is private."""
    from privacy.planning import default_delta
    from simulation.baselines import BaselineSettings

    return BaselineSettings(epochs=settings.num_server_rounds * settings.local_epochs,
                            batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                            optimizer=settings.optimizer, seed=settings.seed, dp=settings.dp,
                            max_epsilon=float(epsilon), clipping_norm=settings.clipping_norm,
                            delta_for=default_delta,
                            output_bias_learning_rate=settings.output_bias_learning_rate,
                            output_layer_init=settings.output_layer_init)


def oracle_aucs(nodes: dict[str, NodeData], o: SimulationOptions, n_nodes: int) -> dict:
    """AUC of the *true* PD on the holdouts of a synthetic consortium: the ceiling any model has.

    The generator knows each borrower's PD; it is looked up by borrower id for the holdout rows
    (the nodes never see it).
    """
    import numpy as np

    from models.metrics import auc_score
    from simulation.synthetic import consortium_member

    per, all_pd, all_y = {}, [], []
    for k in range(n_nodes):
        inst, table, true_pd = consortium_member(k, n_nodes, o.scale, o.seed)
        d = nodes[inst]
        lookup = dict(zip(table[d.schema.id_column], true_pd))
        p = d.split.holdout[d.schema.id_column].map(lookup).to_numpy(dtype=float)
        y = d.split.holdout[d.schema.label.name].to_numpy()
        per[inst] = auc_score(y, p)
        all_pd.append(p)
        all_y.append(y)
    return {"pooled_auc": auc_score(np.concatenate(all_y), np.concatenate(all_pd)), "institutions": per}


def _noise_sd(figures: dict) -> dict:
    """``<figure>_sd`` for each figure that carries the noise sd of a DP-noised evaluation release."""
    return {f"{k}_sd": v for k, v in figures.items() if v is not None}


def summarise(metrics: dict, nodes: dict[str, NodeData], o: SimulationOptions) -> dict:
    """The ``--json`` summary: federated vs local-only vs centralised vs personalised, per institution.

    ``gain_from_joining`` = max(global, personalised) − local-only on the member's own holdout;
    ``members_worse_than_local_only`` counts gains below −0.005 (:mod:`simulation.member_gain`).
    """
    from server.model_card import reported_privacy

    base = metrics.get("baselines") or {}
    final_inst = metrics.get("institutions") or {}
    gain = metrics.get("member_gain") or {}
    rows = []
    for inst, d in metrics["data"].items():
        ev = (final_inst.get(inst) or {}).get("eval") or {}
        pr = reported_privacy(metrics, inst)
        g = (gain.get("institutions") or {}).get(inst) or {}
        rows.append({
            "id": inst, "rows": d["rows"], "rows_holdout": d["rows_holdout"], "default_rate": d["default_rate"],
            "auc_local_only": (base.get("local_only") or {}).get(inst, {}).get("auc"),
            "auc_federated": ev.get("auc"),
            **_noise_sd({"auc_federated": ev.get("auc_sd")}),  # from a DP-noised evaluation release only
            "auc_personalized": g.get("auc_personalized"),
            "chosen_model": g.get("chosen_model"),
            "gain_from_joining": g.get("gain_from_joining"),
            "auc_centralized": (base.get("centralised") or {}).get("institutions", {}).get(inst),
            "epsilon_spent": pr.get("epsilon_spent") if o.dp else None,
            "epsilon_budget": pr.get("epsilon_budget") if o.dp else None,
            "auc_oracle": (metrics.get("oracle") or {}).get("institutions", {}).get(inst),
        })
    final = metrics.get("final") or {}
    return {
        "run_dir": metrics["run_dir"], "status": metrics["status"], "stop_reason": metrics.get("stop_reason", ""),
        "rounds": metrics["rounds_completed"], "wall_s": metrics.get("wall_s", metrics.get("wall_s_flower")),
        "flower_s": metrics.get("wall_s_flower"), "baselines_s": metrics.get("baselines_s"),
        "research_mode": bool(metrics.get("research_mode")),
        "auc_federated": final.get("auc"), "ks_federated": final.get("ks"),
        **_noise_sd({"auc_federated": final.get("auc_sd"), "ks_federated": final.get("ks_sd")}),
        "auc_centralized": (base.get("centralised") or {}).get("pooled_auc"),
        "auc_local_only_mean": base.get("local_only_mean_auc"),
        "auc_personalized_pooled": gain.get("auc_personalized_pooled"),
        "auc_chosen_mean": gain.get("auc_chosen_mean"),
        "auc_centralized_mean": _mean_of((base.get("centralised") or {}).get("institutions")),
        "members_worse_than_local_only": gain.get("members_worse_than_local_only"),
        "auc_oracle": (metrics.get("oracle") or {}).get("pooled_auc"),
        "dp": o.dp, "epsilon": o.epsilon if o.dp else None,
        "institutions": rows,
    }


def _mean_of(values: dict | None) -> float | None:
    import numpy as np

    v = [x for x in (values or {}).values() if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else None
