"""A Flower Grid that delivers every message to a ClientApp in this process (no Ray, no network).

Each virtual node has its own :class:`flwr.app.Context` (node config, persistent state), as a
SuperNode would hold it, and its table and budget from :mod:`simulation.virtual_nodes`; messages
run through the ClientApp's mods and handlers exactly as in Flower's runtimes (each message
serialised and read back, as the network would deliver it). Good for fast, deterministic tests
of the ServerApp logic, and for research runs that need neither Ray nor processes:
:func:`run_in_process` runs the consortium's ServerApp driver
(:func:`server.consortium.run_consortium`) with the repository's ClientApp, the nodes one after
another on one CPU (``fedcredit simulate`` uses Flower's simulation runtime; bench/heterogeneity.py
runs many settings side by side with this).
"""

from __future__ import annotations

import time
from typing import Iterable
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.common import Error
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid

from simulation.virtual_nodes import with_virtual_nodes


class InProcessGrid(Grid):
    def __init__(self, client_app, node_configs: dict[int, dict], run_config: dict, run_id: int = 7,
                 fail: dict[int, set[str]] | None = None):
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = run_id + 1, run_id, SUPERLINK_NODE_ID
        self.client_app = with_virtual_nodes(client_app)  # virtual nodes: their tables and budgets, from simulation
        self.contexts = {nid: Context(run_id=run_id, node_id=nid, node_config=dict(cfg), state=RecordDict(),
                                      run_config=dict(run_config))
                         for nid, cfg in node_configs.items()}
        self._replies: dict[str, Message] = {}
        self.fail = fail or {}  # node id → message types (or "stage:<secagg stage>") it drops
        self.sent: list[tuple[int, str]] = []
        self.received: list[Message] = []  # every reply the server pulled

    # -- abstract API -------------------------------------------------------------------
    def set_run(self, run) -> None:  # pragma: no cover - not used
        pass

    @property
    def run(self):  # pragma: no cover - not used
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # pragma: no cover
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = str(uuid4())
            msg.metadata.__dict__["_message_id"] = mid
            nid = msg.metadata.dst_node_id
            stage = _secagg_stage(msg)
            self.sent.append((nid, stage or msg.metadata.message_type))
            ids.append(mid)
            drops = self.fail.get(nid, set())
            if msg.metadata.message_type in drops or (stage and f"stage:{stage}" in drops):
                continue  # the node never answers (a dropout)
            try:  # a copy, as the network would deliver it (the ClientApp's mods change what they get)
                reply = self.client_app(_copy(msg), self.contexts[nid])
            except Exception as exc:  # what a SuperNode reports for a crashed ClientApp
                reply = Message(Error(code=2, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            self._replies[mid] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = [self._replies.pop(m) for m in list(message_ids) if m in self._replies]
        self.received.extend(out)
        return out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        time.sleep(0)
        return self.pull_messages(ids)


def _secagg_stage(msg: Message) -> str:
    rec = msg.content.config_records.get("secaggplus_configs")
    return str(rec.get("stage", "")) if rec is not None else ""


def _copy(msg: Message) -> Message:
    from flwr.common.serde import message_from_proto, message_to_proto

    return message_from_proto(message_to_proto(msg))


def run_in_process(run_config: dict, num_supernodes: int, *, client_app=None, run_id: int | None = None) -> None:
    """Run the consortium with ``num_supernodes`` virtual nodes in this process.

    ``run_config`` overrides the app's ``[tool.flwr.app.config]`` defaults, as with
    :func:`simulation.flower_runtime.run_in_simulation`; virtual node k gets the node config
    ``partition-id = k`` (its data and budget come from the run config, simulation-style).
    """
    import secrets

    from configs.errors import UserError
    from server.consortium import run_consortium
    from simulation.flower_runtime import APP_DIR

    if client_app is None:
        from clients.client_app import app as client_app
    from flwr.common.config import get_fused_config_from_dir

    run_id = run_id if run_id is not None else secrets.randbelow(2**62) + 1
    try:
        fused = get_fused_config_from_dir(APP_DIR, dict(run_config))
    except Exception as exc:
        raise UserError(f"run config: {exc}") from None
    nodes = {1000 + k: {"partition-id": k, "num-partitions": num_supernodes} for k in range(num_supernodes)}
    grid = InProcessGrid(client_app, nodes, fused, run_id=run_id)
    run_consortium(grid, dict(fused), run_id=run_id, resume_from=fused.get("resume-from") or None)
