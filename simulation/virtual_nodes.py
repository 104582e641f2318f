"""The virtual nodes of a simulation: which table, institution id, budget and state each one has.

In a simulation, Flower's SuperNodes are virtual: a node config holds only ``partition-id`` and
``num-partitions``. :class:`SimulatedConsortium` is what the node code asks for such a node
(the :class:`clients.virtual_nodes.VirtualNodes` interface; clients/ never imports this module):
a :class:`clients.node_policy.NodePolicy` resolved from the run config —

* its table: file ``partition-id`` of the run's ``data-dir`` (data files, sorted), else
  institution ``partition-id`` of the synthetic consortium (:mod:`simulation.archetypes`,
  ``synthetic-scale``, ``synthetic-seed``), drawn in the node's own process by
  :class:`SyntheticMember`, the callable the policy carries;
* its privacy state under ``state-root/<institution-id>`` (default: a directory per run id in
  the system's temporary directory); its lifetime ε from ``sim-budgets`` (its own entry,
  :mod:`configs.sim_budgets`) or ``sim-max-epsilon``; its data minimum from ``min-rows`` /
  ``min-positives``; δ chosen by the node; exact evaluation releases; training without DP
  allowed (``dp = false``).

How the node gets it (Flower's simulation entry point): :func:`with_virtual_nodes` wraps the
node's ClientApp with a mod that hands :data:`CONSORTIUM` to the node code in the process that
runs it (``fedcredit simulate``, sweeps, the in-process grid); ``flwr run .`` in simulation
mode, which loads the app's declared ClientApp, finds it through the entry point pyproject.toml
declares (``fedcredit.virtual_nodes``). Code that runs virtual nodes in its own process
(:mod:`simulation.runner`, :mod:`simulation.plain_loop`) takes their policies from
:func:`virtual_policy`.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients.node_policy import DATA_SUFFIXES, NodePolicy, config_value
from clients.virtual_nodes import use_virtual_nodes
from configs.errors import UserError
from configs.schema import Schema
from configs.sim_budgets import parse_sim_budgets
from simulation.faults import ClientAppWithMods


@dataclass(frozen=True)
class SyntheticMember:
    """Institution ``index`` of a synthetic consortium of ``count`` at ``scale`` and ``seed``: called
    with the schema, its table (the rows ``data synth`` writes for it). Equal members draw equal tables."""

    index: int
    count: int
    scale: float
    seed: int

    def __call__(self, schema: Schema):
        from simulation.synthetic import consortium_member

        return consortium_member(self.index, self.count, self.scale, self.seed, schema)[1]


class SimulatedConsortium:
    """The policies of a simulation's virtual nodes (:class:`clients.virtual_nodes.VirtualNodes`)."""

    def policy(self, node_config: Mapping, run_config: Mapping, run_id: str = "") -> NodePolicy:
        """The policy of virtual node ``partition-id`` of ``num-partitions`` in the run ``run_config``."""
        index, count = int(node_config["partition-id"]), int(node_config.get("num-partitions", 1))
        run_config = dict(run_config)
        scale = float(config_value(run_config, "synthetic-scale", 1.0))
        data_dir, draw = config_value(run_config, "data-dir"), None
        if data_dir:
            files = data_files(str(data_dir))
            if index >= len(files):
                raise UserError(f"run config: data-dir {data_dir} has {len(files)} data file(s); "
                                f"virtual node {index} has none (use num-supernodes ≤ {len(files)})")
            source, inst = str(files[index]), files[index].stem
        else:
            draw = SyntheticMember(index, count, scale, int(config_value(run_config, "synthetic-seed", 0)))
            source, inst = f"synthetic:{index}/{count}", synthetic_plan(count, scale)[index].id
        root = (config_value(run_config, "state-root")
                or str(Path(tempfile.gettempdir()) / "fedcredit-sim" / (run_id or "run")))
        return NodePolicy(
            institution_id=inst, source=source, mapping=config_value(run_config, "mapping"),
            schema=str(config_value(run_config, "schema", "consumer-credit-v1")),
            state_dir=Path(root) / inst, max_epsilon=simulated_budget(run_config, inst),
            delta=None, release_eval="exact", allow_non_private=True, split_seed=0, holdout_fraction=0.2,
            accountant="rdp", simulation=True, draw_table=draw,
            min_rows=int(config_value(run_config, "min-rows", 500)),
            min_positives=int(config_value(run_config, "min-positives", 50)))


#: the virtual nodes of every fedcredit simulation (also the entry point ``fedcredit.virtual_nodes``)
CONSORTIUM = SimulatedConsortium()


def virtual_policy(partition: int, partitions: int, run_config: Mapping, run_id: str = "") -> NodePolicy:
    """The policy virtual node ``partition`` of ``partitions`` gets in the run ``run_config``."""
    return CONSORTIUM.policy({"partition-id": partition, "num-partitions": partitions}, run_config, run_id)


def provide_virtual_nodes(msg: Message, context: Context, call_next) -> Message:
    """A Flower mod: hands :data:`CONSORTIUM` to the node code of this process, then calls on."""
    use_virtual_nodes(CONSORTIUM)
    return call_next(msg, context)


def with_virtual_nodes(app: ClientApp) -> ClientApp:
    """``app`` (the node's ClientApp, maybe already wrapped) with its virtual nodes provided."""
    return ClientAppWithMods(app, [provide_virtual_nodes])


def simulated_budget(run_config: Mapping, institution: str) -> float:
    """A virtual node's lifetime ε: its entry in ``sim-budgets``, else ``sim-max-epsilon``."""
    budgets = parse_sim_budgets(str(config_value(run_config, "sim-budgets", "") or ""))
    return float(budgets.get(institution, config_value(run_config, "sim-max-epsilon", 3.0)))


def data_files(data_dir: str) -> tuple[Path, ...]:
    """The data files of a simulation's data directory, sorted (virtual node k takes file k).

    Resolved for every message, so the listing is cached until the directory changes (its
    mtime): a directory of 1,000 files costs ~20 ms to list and sort, per message otherwise.
    """
    return _data_files_at(data_dir, os.stat(data_dir).st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _data_files_at(data_dir: str, mtime_ns: int) -> tuple[Path, ...]:
    return tuple(sorted(p for p in Path(data_dir).iterdir() if p.suffix.lower() in DATA_SUFFIXES))


def synthetic_plan(count: int, scale: float):
    """The synthetic consortium's institutions (cached while the archetypes file is unchanged)."""
    from simulation.archetypes import ARCHETYPES_FILE

    return _synthetic_plan_at(count, scale, os.stat(ARCHETYPES_FILE).st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _synthetic_plan_at(count: int, scale: float, mtime_ns: int):
    from simulation.archetypes import institution_plan, load_archetypes

    return tuple(institution_plan(count, scale, load_archetypes()))
