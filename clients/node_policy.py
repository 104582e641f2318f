"""An institution's node policy: which table, which budget, which releases — from the node config.

Node config keys (deployment, ``flower-supernode --node-config``)
-----------------------------------------------------------------
``data-path`` (required) · ``institution-id`` (default: file name) · ``mapping`` · ``schema``
(default ``consumer-credit-v1``) · ``state-dir`` (required: lifetime privacy state) ·
``max-epsilon`` (required for DP releases) · ``delta`` (default: the largest power of ten
≤ 1/(10·n̂), n̂ the node's released row count; kept once chosen) · ``release-eval`` =
``noised`` (default) | ``off`` · ``allow-non-private`` = false (default) · ``split-seed`` (0) ·
``holdout-fraction`` (0.2) · ``accountant`` = rdp | prv.

The run config (the coordinator's) can only ask for less than the node config allows; it never
sets the budget, δ or the release policy of a deployed node.

Simulation: a virtual node only has ``partition-id`` / ``num-partitions``; it takes file
``partition-id`` of the run's ``data-dir`` (sorted) or synthesises institution ``partition-id``,
keeps its privacy state under ``state-root/<institution-id>``, its budget from
``sim-budgets`` (its own entry) or ``sim-max-epsilon``, its data minimum from ``min-rows`` /
``min-positives``, releases exact evaluations and may train without DP (``dp = false``).
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs.errors import UserError

DEPLOYMENT_RELEASE_MODES = ("noised", "off")
DATA_SUFFIXES = (".csv", ".parquet", ".pq", ".tsv", ".txt")


@dataclass(frozen=True)
class NodePolicy:
    institution_id: str
    source: str  # a file path, or "synthetic:<index>/<count>"
    mapping: str | None
    schema: str
    state_dir: Path
    max_epsilon: float | None
    delta: float | None
    release_eval: str
    allow_non_private: bool
    split_seed: int
    holdout_fraction: float
    accountant: str
    simulation: bool
    synthetic_scale: float = 1.0
    synthetic_seed: int = 0
    #: the table's minimum rows / defaults (``fedcredit data validate``'s); simulation: run config
    #: ``min-rows`` / ``min-positives`` (research mode, see simulation.research_mode)
    min_rows: int = 500
    min_positives: int = 50


def _get(cfg: dict, key: str, default: Any = None) -> Any:
    v = cfg.get(key, default)
    return default if v == "" else v


def policy_from_context(node_config: dict, run_config: dict, run_id: str = "") -> NodePolicy:
    """Resolve the node's policy: node config in deployment, run config for virtual nodes."""
    node_config = dict(node_config or {})
    run_config = dict(run_config or {})
    if "data-path" in node_config:
        path = str(node_config["data-path"])
        state = _get(node_config, "state-dir")
        if not state:
            raise UserError("node config: 'state-dir' is required (the node's lifetime privacy state lives there)")
        release = str(_get(node_config, "release-eval", "noised"))
        if release not in DEPLOYMENT_RELEASE_MODES:
            hint = " (exact evaluation releases are for simulation only)" if release == "exact" else ""
            raise UserError(f"node config: 'release-eval' must be one of {', '.join(DEPLOYMENT_RELEASE_MODES)}, "
                            f"got '{release}'{hint}")
        max_eps = _get(node_config, "max-epsilon")
        return NodePolicy(
            institution_id=str(_get(node_config, "institution-id", Path(path).stem)),
            source=path, mapping=_get(node_config, "mapping"),
            schema=str(_get(node_config, "schema", "consumer-credit-v1")),
            state_dir=Path(str(state)).expanduser(),
            max_epsilon=float(max_eps) if max_eps is not None else None,
            delta=float(_get(node_config, "delta")) if _get(node_config, "delta") is not None else None,
            release_eval=release,
            allow_non_private=str(_get(node_config, "allow-non-private", "false")).lower() == "true",
            split_seed=int(_get(node_config, "split-seed", 0)),
            holdout_fraction=float(_get(node_config, "holdout-fraction", 0.2)),
            accountant=str(_get(node_config, "accountant", "rdp")), simulation=False)
    if "partition-id" not in node_config:
        raise UserError("node config: give 'data-path' (and 'state-dir', 'max-epsilon') for this institution")
    index, count = int(node_config["partition-id"]), int(node_config.get("num-partitions", 1))
    data_dir = _get(run_config, "data-dir")
    if data_dir:
        files = _data_files(str(data_dir))
        if index >= len(files):
            raise UserError(f"run config: data-dir {data_dir} has {len(files)} data file(s); "
                            f"virtual node {index} has none (use num-supernodes ≤ {len(files)})")
        source, inst = str(files[index]), files[index].stem
    else:
        plan = _synthetic_plan(count, float(_get(run_config, "synthetic-scale", 1.0)))
        source, inst = f"synthetic:{index}/{count}", plan[index].id
    root = _get(run_config, "state-root") or str(Path(tempfile.gettempdir()) / "fedcredit-sim" / (run_id or "run"))
    return NodePolicy(
        institution_id=inst, source=source, mapping=_get(run_config, "mapping"),
        schema=str(_get(run_config, "schema", "consumer-credit-v1")),
        state_dir=Path(root) / inst, max_epsilon=_simulated_budget(run_config, inst),
        delta=None, release_eval="exact", allow_non_private=True, split_seed=0, holdout_fraction=0.2,
        accountant="rdp", simulation=True,
        synthetic_scale=float(_get(run_config, "synthetic-scale", 1.0)),
        synthetic_seed=int(_get(run_config, "synthetic-seed", 0)),
        min_rows=int(_get(run_config, "min-rows", 500)), min_positives=int(_get(run_config, "min-positives", 50)))


def _simulated_budget(run_config: dict, institution: str) -> float:
    """A virtual node's lifetime ε: its entry in ``sim-budgets``, else ``sim-max-epsilon``."""
    from server.settings import parse_sim_budgets

    budgets = parse_sim_budgets(str(_get(run_config, "sim-budgets", "") or ""))
    return float(budgets.get(institution, _get(run_config, "sim-max-epsilon", 3.0)))


def _data_files(data_dir: str) -> tuple[Path, ...]:
    """The data files of a simulation's data directory, sorted (virtual node k takes file k).

    Resolved for every message, so the listing is cached until the directory changes (its
    mtime): a directory of 1,000 files costs ~20 ms to list and sort, per message otherwise.
    """
    import os

    return _data_files_at(data_dir, os.stat(data_dir).st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _data_files_at(data_dir: str, mtime_ns: int) -> tuple[Path, ...]:
    return tuple(sorted(p for p in Path(data_dir).iterdir() if p.suffix.lower() in DATA_SUFFIXES))


def _synthetic_plan(count: int, scale: float):
    """The synthetic consortium's institutions (cached while the archetypes file is unchanged)."""
    import os

    from simulation.archetypes import ARCHETYPES_FILE

    return _synthetic_plan_at(count, scale, os.stat(ARCHETYPES_FILE).st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _synthetic_plan_at(count: int, scale: float, mtime_ns: int):
    from simulation.archetypes import institution_plan, load_archetypes

    return tuple(institution_plan(count, scale, load_archetypes()))


