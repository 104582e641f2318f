"""Runs of the real round driver (:class:`server.consortium.ConsortiumRun`) on the real ClientApp in
this process, for the fault, reply-check, robust-aggregation and run-log tests: a small run config
(:func:`_run_config`), a grid of virtual nodes (:func:`_grid`), a run that can "crash" after a
round's replies (:func:`_execute`), and a message as a SuperNode hands it to the ClientApp
(:func:`_message`)."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID

from tests.inprocess_grid import InProcessGrid


class ServerCrash(BaseException):
    """Stands for the ServerApp process dying (not an Exception: nothing in the driver catches it)."""


def _run_config(tmp_path: Path, tag: str, **overrides) -> dict:
    """A small, fast run config (3 rounds, no DP) writing under ``tmp_path/tag``."""
    return {"num-server-rounds": 3, "min-available-nodes": 3, "min-train-nodes": 2,
            "run-dir": str(tmp_path / tag), "dp": False, "synthetic-scale": 0.3, "fraction-evaluate": 0.0,
            "state-root": str(tmp_path / f"{tag}-state"), "round-timeout": 1.0, "seed": 3, **overrides}


def _grid(rc: dict, n: int = 3, app=None, fail=None, grid_cls=InProcessGrid) -> InProcessGrid:
    """``n`` virtual nodes (partitions of the synthetic consortium) on the real ClientApp (or ``app``)."""
    from clients.client_app import app as client_app

    return grid_cls(app or client_app, {11 + k: {"partition-id": k, "num-partitions": n} for k in range(n)}, rc,
                    fail=fail)


def _execute(rc: dict, grid, *, crash_at: int | None = None, monkeypatch=None, resume_from=None, run_id: int = 7):
    """Run (or resume) in process; with ``crash_at`` the 'process dies' in that round after the nodes
    replied, before the checkpoint and the ledger's round entry. Returns (summary or None, run)."""
    from server.consortium import ConsortiumRun

    run = ConsortiumRun(grid, rc, run_id=run_id)
    if crash_at is not None:
        original = ConsortiumRun.checkpoint

        def checkpoint(self, rnd):
            if rnd == crash_at:
                raise ServerCrash(f"server died in round {rnd}")
            original(self, rnd)

        monkeypatch.setattr(ConsortiumRun, "checkpoint", checkpoint)
    try:
        return run.execute(resume_from), run
    except ServerCrash:
        run.audit.close()  # a dead process holds no locks and no open files
        run.recorder.close()
        return None, run
    finally:
        if crash_at is not None:
            monkeypatch.undo()


def _message(content, message_type: str):
    """A message as the SuperNode hands it to the ClientApp."""
    from flwr.supercore.task_identity import TaskIdentity  # Flower private name (flwr pinned to 1.42.*)

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 2, 1, SUPERLINK_NODE_ID
    msg = Message(content, dst_node_id=5, message_type=message_type)
    msg.metadata.__dict__["_message_id"] = str(uuid4())
    return msg
