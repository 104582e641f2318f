"""Virtual nodes: where a node without a table of its own gets its policy — from the simulation.

A deployed institution's node config names its table (``data-path``) and everything else about
it (:mod:`clients.node_policy`). One of Flower's simulated SuperNodes has only ``partition-id``
and ``num-partitions``: which table it holds, its institution id, budget and state directory
are the simulation's to decide. So clients/ defines what it needs — :class:`VirtualNodes`, a
source of node policies — and simulation/ implements it (:mod:`simulation.virtual_nodes`). The
policy it returns is plain data (a file path, numbers) plus, for a synthetic institution, the
callable that draws its table (:attr:`clients.node_policy.NodePolicy.draw_table`), so the node
code never imports simulation code (dependency inversion).

How a process gets its source:

* simulation's own runs (``fedcredit simulate``, sweeps, the in-process runners) hand it over:
  their ClientApp is this package's, wrapped with a mod that calls :func:`use_virtual_nodes`
  (:func:`simulation.virtual_nodes.with_virtual_nodes`), and in-process callers build policies
  with :func:`simulation.virtual_nodes.virtual_policy`;
* ``flwr run .`` in simulation mode: Flower's Ray actors load only the app's declared ClientApp
  (``clients.client_app:app``), so the installed distribution declares the source under the
  entry-point group ``fedcredit.virtual_nodes`` (pyproject.toml), looked up on first use.

A node whose node config has ``data-path`` — every deployed node — never asks, and so never
loads simulation code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Protocol

from configs.errors import UserError

if TYPE_CHECKING:
    from clients.node_policy import NodePolicy

#: the entry-point group under which an installation declares its :class:`VirtualNodes`
ENTRY_POINT_GROUP = "fedcredit.virtual_nodes"


class VirtualNodes(Protocol):
    """What a simulation provides for its virtual nodes."""

    def policy(self, node_config: Mapping, run_config: Mapping, run_id: str) -> NodePolicy:
        """The policy of the virtual node with ``node_config`` (``partition-id``, ``num-partitions``)
        in the run with ``run_config`` and ``run_id``; a mistake in either is a ``UserError``."""


_source: VirtualNodes | None = None


def use_virtual_nodes(source: VirtualNodes) -> None:
    """Make ``source`` this process's provider of virtual-node policies."""
    global _source
    _source = source


def virtual_nodes() -> VirtualNodes:
    """This process's provider: the one handed over, else the installation's entry point."""
    global _source
    if _source is None:
        _source = _installed_source()
    return _source


def _installed_source() -> VirtualNodes:
    """The :class:`VirtualNodes` the installed distributions declare. Every distribution's metadata
    on ``sys.path`` is read, not only the first of a name: a source checkout's stale
    ``fedcredit.egg-info`` (first on the path when Python runs from the checkout) must not hide
    the installed one's."""
    from importlib.metadata import distributions

    found = sorted({e.value: e for d in distributions() for e in d.entry_points if e.group == ENTRY_POINT_GROUP}
                   .values(), key=lambda e: e.value)
    if not found:
        raise UserError("node config: this node has only 'partition-id' (a virtual node of a simulation), and no "
                        f"simulation is installed to provide it (entry-point group '{ENTRY_POINT_GROUP}'). A deployed "
                        "node gives 'data-path' (and 'state-dir', 'max-epsilon'); for simulations reinstall fedcredit "
                        "(pip install -e .) so that its entry point is registered")
    if len(found) > 1:
        raise UserError(f"this installation declares {len(found)} providers of virtual nodes "
                        f"(entry-point group '{ENTRY_POINT_GROUP}': {', '.join(e.value for e in found)}); keep one")
    return found[0].load()
