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

Simulation: a virtual node only has ``partition-id`` / ``num-partitions``; the simulation gives it
its policy (:mod:`clients.virtual_nodes`: which table, institution id, budget, state directory;
:mod:`simulation.virtual_nodes` documents the run config keys it reads). Nothing here imports
simulation or server code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from clients.virtual_nodes import virtual_nodes
from configs.errors import UserError

DEPLOYMENT_RELEASE_MODES = ("noised", "off")
DATA_SUFFIXES = (".csv", ".parquet", ".pq", ".tsv", ".txt")


@dataclass(frozen=True)
class NodePolicy:
    institution_id: str
    source: str  # a file path, or (a virtual node whose table the simulation draws) a description of it
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
    #: a virtual node's table, drawn by the simulation that made this policy (``draw_table(schema)`` →
    #: DataFrame; compared by value: equal callables draw equal tables); None: read the file ``source``
    draw_table: Callable[[Any], Any] | None = None
    #: the table's minimum rows / defaults (``fedcredit data validate``'s); simulation: run config
    #: ``min-rows`` / ``min-positives`` (research mode, see simulation.research_mode)
    min_rows: int = 500
    min_positives: int = 50


def config_value(cfg: dict, key: str, default: Any = None) -> Any:
    """``cfg[key]``; ``default`` when it is missing or empty (Flower's config values are never None)."""
    v = cfg.get(key, default)
    return default if v == "" else v


def policy_from_context(node_config: dict, run_config: dict, run_id: str = "") -> NodePolicy:
    """Resolve the node's policy: node config in deployment, run config for virtual nodes."""
    node_config = dict(node_config or {})
    run_config = dict(run_config or {})
    if is_institution_config(node_config):
        path = str(node_config["data-path"])
        state = config_value(node_config, "state-dir")
        if not state:
            raise UserError("node config: 'state-dir' is required (the node's lifetime privacy state lives there)")
        release = str(config_value(node_config, "release-eval", "noised"))
        if release not in DEPLOYMENT_RELEASE_MODES:
            hint = " (exact evaluation releases are for simulation only)" if release == "exact" else ""
            raise UserError(f"node config: 'release-eval' must be one of {', '.join(DEPLOYMENT_RELEASE_MODES)}, "
                            f"got '{release}'{hint}")
        max_eps = config_value(node_config, "max-epsilon")
        return NodePolicy(
            institution_id=str(config_value(node_config, "institution-id", Path(path).stem)),
            source=path, mapping=config_value(node_config, "mapping"),
            schema=str(config_value(node_config, "schema", "consumer-credit-v1")),
            state_dir=Path(str(state)).expanduser(),
            max_epsilon=float(max_eps) if max_eps is not None else None,
            delta=float(config_value(node_config, "delta")) if config_value(node_config, "delta") is not None else None,
            release_eval=release,
            allow_non_private=str(config_value(node_config, "allow-non-private", "false")).lower() == "true",
            split_seed=int(config_value(node_config, "split-seed", 0)),
            holdout_fraction=float(config_value(node_config, "holdout-fraction", 0.2)),
            accountant=str(config_value(node_config, "accountant", "rdp")), simulation=False)
    if "partition-id" not in node_config:
        raise UserError("node config: give 'data-path' (and 'state-dir', 'max-epsilon') for this institution")
    return virtual_nodes().policy(node_config, run_config, run_id)


def is_institution_config(node_config) -> bool:
    """Whether a node config is an institution's own: it names the table (``data-path``), and with
    it the node's budget and state directory. Otherwise it is a simulation's virtual node, whose
    table, budget and state directory come from the run config."""
    return "data-path" in (node_config or {})


def deployment_policy(node_config: dict) -> NodePolicy:
    """The policy of an institution's deployed node: always from its own node config.

    A node config without ``data-path`` would make :func:`policy_from_context` take the virtual
    node's path, where the table, the budget and the state directory come from the run config —
    the coordinator's. The node runtime (the executor of ``fedcredit node start``) and the node's
    checks refuse such a config."""
    if not is_institution_config(node_config):
        raise UserError("node config: 'data-path' is required — a deployed node reads its own table, budget and "
                        "state directory from its node config ('partition-id' is a simulation's virtual node, "
                        "which takes them from the coordinator's run config)")
    return policy_from_context(node_config, {}, "")
