"""The message protocol between the ServerApp and the institutions' ClientApps.

One place for the message types and record keys both sides use, and the conversions between
named NumPy arrays and Flower records. Every number that leaves a node is listed in
``docs/privacy.md`` with what protects it; keep that table true when adding a key here.

Messages (server → node, node → server)
---------------------------------------
``query.stats``  config ``stats-config`` (schema key) →
                 arrays ``stats`` (per-feature count vectors, possibly DP-noised),
                 metrics ``metrics`` (num-examples, epsilon-spent, …), config ``node`` (identity).
``train``        arrays ``arrays`` (global weights), config ``config`` (round config, encoder,
                 ``ledger-head``: the audit ledger's head hash, which the node stores) →
                 arrays ``arrays`` (updated weights) + metrics ``metrics`` — or, when the node
                 refuses (budget exhausted, policy), no arrays and ``node.refused`` = reason.
``evaluate``     arrays ``arrays`` + config ``config`` (with ``ledger-head``, the head at that
                 moment: after the last round, the one that covers that round's entry) →
                 arrays ``eval`` (``hist-neg``, ``hist-pos``, ``sums``, ``fair/<attribute>``;
                 absent when the node releases none, ``node.release`` = ``off``, or refuses)
                 + metrics ``metrics``; ``node.release`` = ``exact`` | ``noised`` | ``off``.
``train`` with ``evaluate-received`` = true in its config (and ``cutoff-pd``): the node first
                 evaluates the weights it received (the previous round's global model, reported
                 as round ``server-round`` − 1), then trains; the reply carries the update as
                 above plus the evaluation in ``eval`` (arrays), ``eval-metrics`` (metrics) and
                 ``eval-node`` (``institution-id``, ``refused``, ``detail``, ``release``) — each
                 part released, withheld or refused on its own (:mod:`server.folded_evaluation`).
The server checks every statistics, update and evaluation reply (:mod:`server.update_checks`)
and leaves out, and records, one that does not fit.
Every reply carries the ConfigRecord ``node`` with ``institution-id`` and, on refusal,
``refused`` (a reason code such as ``budget-exhausted``) and ``detail``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # Flower types; imported where used so the node code can use the constants alone
    from flwr.app import ArrayRecord, Message

STATS_MESSAGE = "query.stats"

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
STATS = "stats"
EVAL = "eval"
NODE = "node"
# the evaluation part of a train reply that also evaluated the received weights (EVALUATE_RECEIVED)
EVAL_METRICS = "eval-metrics"
EVAL_NODE = "eval-node"
EVALUATE_RECEIVED = "evaluate-received"  # train config: evaluate the received weights before training

# Secure aggregation (server/secure_aggregation.py): one round of Flower's SecAgg+ protocol. The
# node's train handler gets the legacy ``fitins.*`` records with these extra config keys and
# answers in the legacy ``fitres.*`` layout: its *update* (not its weights), num_examples, and
# the ``node``/``metrics`` fields in ``fitres.metrics`` (plus SECAGG_CLIPPED).
SECAGG_QUANTIZATION_RANGE = 2**22
SECAGG_ARRAY_NAMES = "array-names"  # JSON list: the names of the arrays, in order
SECAGG_MAX_WEIGHT = "secagg-max-weight"  # M: the node's weight is num_examples / M
SECAGG_CLIPPING = "secagg-clipping-range"  # c: each coordinate of the weighted update is clipped to ±c
SECAGG_CLIPPED = "secagg-clipped-fraction"  # node → server: fraction of coordinates the clipping changed
REFUSED_INVALID_UPDATE = "invalid-update"  # the node withholds a non-finite update (weight 0)

REFUSED_BUDGET = "budget-exhausted"
REFUSED_POLICY = "policy"
REFUSED_DATA = "invalid-data"
REFUSED_STATE = "node-state"  # the node's state dir (privacy ledger, ledger heads) cannot be read or written
REFUSED_REQUEST = "invalid-request"  # the coordinator's message failed the node's checks (clients.request_checks)
REFUSED_ERROR = "node-error"  # an unexpected error inside the node: a fixed reply, the traceback stays in its log
REFUSED_APP = "app-not-allowed"  # the run's FAB is not the fedcredit release installed at the node (clients.app_release)


def evaluation_rounds(first: int, last: int, every: int) -> list[int]:
    """Rounds in [first, last] after which the nodes evaluate: every ``every``-th and the last.

    The server follows it and the nodes plan their noised evaluation releases with it.
    """
    return [r for r in range(first, last + 1) if r % every == 0 or r == last]


def to_array_record(arrays: dict[str, np.ndarray]) -> "ArrayRecord":
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_array_record(record: "ArrayRecord") -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def reply(msg: "Message", *, institution_id: str, arrays_key: str | None = None,
          arrays: dict[str, np.ndarray] | None = None, metrics: dict[str, float] | None = None,
          refused: str = "", detail: str = "", extra: dict | None = None) -> "Message":
    """Build a node's reply with the common ``node`` identity record."""
    from flwr.app import Message, RecordDict

    content = RecordDict()
    _put_part(content, (arrays_key, METRICS, NODE), arrays, metrics,
              {"institution-id": institution_id, "refused": refused, "detail": detail, **(extra or {})})
    return Message(content, reply_to=msg)


def add_evaluation(reply_msg: "Message", *, institution_id: str, arrays: dict[str, np.ndarray] | None = None,
                   metrics: dict[str, float] | None = None, refused: str = "", detail: str = "",
                   release: str = "") -> "Message":
    """Add the evaluation part (``eval``, ``eval-metrics``, ``eval-node``) to a train reply whose
    message asked for the evaluation of the received weights (:data:`EVALUATE_RECEIVED`)."""
    _put_part(reply_msg.content, (EVAL, EVAL_METRICS, EVAL_NODE), arrays, metrics,
              {"institution-id": institution_id, "refused": refused, "detail": detail, "release": release})
    return reply_msg


def _put_part(content, keys: tuple[str | None, str, str], arrays, metrics, node: dict) -> None:
    """One part of a reply into ``content``: arrays (when any), metrics and the node record."""
    from flwr.app import ConfigRecord, MetricRecord

    arrays_key, metrics_key, node_key = keys
    if arrays is not None and arrays_key:
        content[arrays_key] = to_array_record(arrays)
    content[metrics_key] = MetricRecord({k: float(v) for k, v in (metrics or {}).items()})
    content[node_key] = ConfigRecord(node)


def node_info(msg: "Message") -> dict:
    """The ``node`` record of a reply as a plain dict ({} when absent, or for an error reply)."""
    if msg.has_error() or NODE not in msg.content.config_records:
        return {}
    return dict(msg.content.config_records[NODE])
