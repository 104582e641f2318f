"""The message protocol between the ServerApp and the institutions' ClientApps.

One place for the message types and record keys both sides use, and the conversions between
named NumPy arrays and Flower records. Every number that leaves a node is listed in
``docs/privacy.md`` with what protects it; keep that table true when adding a key here.

Messages (server → node, node → server)
---------------------------------------
``query.stats``  config ``stats-config`` (schema key) →
                 arrays ``stats`` (per-feature count vectors, possibly DP-noised),
                 metrics ``metrics`` (num-examples, epsilon-spent, …), config ``node`` (identity).
``train``        arrays ``arrays`` (global weights), config ``config`` (round config, encoder) →
                 arrays ``arrays`` (updated weights) + metrics ``metrics`` — or, when the node
                 refuses (budget exhausted, policy), no arrays and ``node.refused`` = reason.
``evaluate``     arrays ``arrays`` + config ``config`` →
                 arrays ``eval`` (score histograms and sums; absent when the node releases none)
                 + metrics ``metrics``.
Every reply carries the ConfigRecord ``node`` with ``institution-id`` and, on refusal,
``refused`` (a reason code such as ``budget-exhausted``) and ``detail``.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

STATS_MESSAGE = "query.stats"

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
STATS = "stats"
EVAL = "eval"
NODE = "node"

REFUSED_BUDGET = "budget-exhausted"
REFUSED_POLICY = "policy"
REFUSED_DATA = "invalid-data"


def to_array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def reply(msg: Message, *, institution_id: str, arrays_key: str | None = None,
          arrays: dict[str, np.ndarray] | None = None, metrics: dict[str, float] | None = None,
          refused: str = "", detail: str = "", extra: dict | None = None) -> Message:
    """Build a node's reply with the common ``node`` identity record."""
    content = RecordDict()
    if arrays is not None and arrays_key:
        content[arrays_key] = to_array_record(arrays)
    content[METRICS] = MetricRecord({k: float(v) for k, v in (metrics or {}).items()})
    node = {"institution-id": institution_id, "refused": refused, "detail": detail}
    node.update(extra or {})
    content[NODE] = ConfigRecord(node)
    return Message(content, reply_to=msg)


def node_info(msg: Message) -> dict:
    """The ``node`` record of a reply as a plain dict ({} when absent)."""
    if NODE not in msg.content.config_records:
        return {}
    return dict(msg.content.config_records[NODE])
