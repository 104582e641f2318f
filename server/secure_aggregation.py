"""Secure aggregation (SecAgg+) of one training round: the operator sees only the sum.

With ``secure-aggregation = true`` a training round runs Flower's SecAgg+ protocol
(:class:`flwr.server.workflow.SecAggPlusWorkflow` on the server, ``secaggplus_mod`` on every
node) instead of collecting each node's weights. Each node trains as usual (DP-SGD, its own
budget), computes its **update** Δᵢ = wᵢ − w (new weights minus the global weights) and hands
it to the mod, which

1. scales it by its weight rᵢ = nᵢ / M (nᵢ its number of training examples, M the round's
   ``max_weight``), clips every coordinate to ±c (``secagg-clipping-range``) and quantises it
   stochastically to integers in [0, 2²²);
2. adds pairwise masks agreed with the other nodes (Diffie–Hellman) and a private mask, modulo
   2³², and uploads only the masked vector [rᵢ, rᵢΔᵢ];
3. sends Shamir shares of its secrets so the server can remove the masks of the nodes that
   answered (and those of nodes that dropped after sharing keys), as long as at least the
   reconstruction threshold of each node's neighbours answer.

The server only ever holds Σᵢ rᵢΔᵢ and Σᵢ rᵢ; their ratio is the FedAvg mean update
Σ nᵢΔᵢ / Σ nᵢ, up to quantisation (|error| ≤ k·2c/2²² / Σ rᵢ per coordinate for k nodes). The
new global model is w + mean update, handed to the run's strategy as one aggregated reply, so
FedAvg, FedProx and FedAdam behave as without secure aggregation.

How the server still learns who took part: a node's reply to the masked-vector stage carries,
in the clear, the legacy ``fitres.num_examples`` and ``fitres.metrics`` (institution id, refusal
reason, ε spent, training loss, …). A node that refuses (exhausted budget, policy, invalid data)
or whose update is not finite still completes the protocol, with weight 0 and a zero update,
so it adds nothing to the sum, and reports why in its metrics.

What it protects and what it does not (see docs/operator.md):

* it hides each institution's individual update from the operator (commercial
  confidentiality) against an *honest-but-curious* operator that runs the protocol as written;
* it is **not** the DP guarantee (that comes from each node's DP-SGD) and adds none;
* number of examples, metrics, ε spent and refusals stay visible; the feature statistics and
  evaluation histograms are sent individually (DP-noised) as without it;
* the operator together with at least ``threshold`` of a node's neighbours can reconstruct
  that node's masks, and Flower's implementation does not stop a *malicious* operator from
  telling some nodes that a node dropped out and others that it did not; with two nodes each
  learns the other's update from the sum and its own;
* update checks the server cannot make on a sum (norm bound, robust aggregation) are refused
  in combination with it; each coordinate of each update is bounded by c instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedcredit import protocol as P
from server.exchange import Exchange, exchange

#: quantisation of each coordinate of rᵢΔᵢ ∈ [−c, c] to integers in [0, QUANTIZATION_RANGE)
QUANTIZATION_RANGE = P.SECAGG_QUANTIZATION_RANGE
#: masks are drawn modulo this (a power of two > k · QUANTIZATION_RANGE for k ≤ 1023 nodes)
MODULUS_RANGE = 2**32
#: a node's secrets can be rebuilt from this fraction of its neighbours' shares (at least 2)
RECONSTRUCTION_FRACTION = 2 / 3
#: M when the server knows no node's number of examples yet
DEFAULT_MAX_WEIGHT = 100_000.0


@dataclass
class SecureRound:
    """What the server learns from one SecAgg+ round (no individual update)."""

    mean_update: dict[str, np.ndarray] | None  # Σ nᵢΔᵢ / Σ nᵢ over the contributing nodes
    examples: float  # Σ nᵢ of the contributing nodes
    contributors: list[int]
    params: dict[str, Any]
    clipped: dict[int, float] = field(default_factory=dict)
    halted: str = ""

    def strategy_replies(self, before: dict[str, np.ndarray], accepted: list[Message]) -> list[Message]:
        """One reply carrying w + mean update, weighted by Σ nᵢ, for the strategy's aggregate_train."""
        arrays = {k: (before[k].astype(np.float64) + self.mean_update[k]).astype(before[k].dtype) for k in before}
        metrics: dict[str, float] = {"num-examples": float(self.examples)}
        losses = [(float(m.content[P.METRICS]["num-examples"]), float(m.content[P.METRICS]["train-loss"]))
                  for m in accepted if "train-loss" in m.content[P.METRICS]]
        if losses and len(losses) == len(accepted):
            metrics["train-loss"] = sum(n * v for n, v in losses) / max(sum(n for n, _ in losses), 1.0)
        return [Message(RecordDict({P.ARRAYS: P.to_array_record(arrays), P.METRICS: MetricRecord(metrics)}),
                        reply_to=accepted[0])]

    def summary(self, name: Callable[[int], str]) -> dict:
        out = {**self.params, "contributors": [name(n) for n in self.contributors]}
        if self.clipped:
            out["clipped_fraction"] = {name(n): v for n, v in self.clipped.items()}
        if self.halted:
            out["halted"] = self.halted
        return out


def max_weight_from(statistics: dict, history: list[dict]) -> float:
    """M for a round: twice the largest number of training examples any node reported.

    The weight rᵢ = nᵢ/M must stay ≤ 1 (else rᵢΔᵢ may be clipped and the sums may overflow)
    yet not be tiny (the quantisation error of the mean grows like M / Σ nᵢ); twice the largest
    known nᵢ leaves room for a node that joins later with more rows.
    """
    known = [float(m.get("num-examples", 0.0)) for m in (statistics.get("node_metrics") or {}).values()]
    for r in history:
        known += [float(p.get("num_examples", 0.0)) for p in (r.get("privacy") or {}).values()]
    known = [n for n in known if math.isfinite(n) and n > 0]
    return 2.0 * max(known) if known else DEFAULT_MAX_WEIGHT


class _FastGrid:
    """The run's grid for the workflow: ``send_and_receive`` polls quickly (:func:`exchange`) and
    remembers which node failed at which stage."""

    def __init__(self, grid: Grid, timeout: float):
        self.grid = grid
        self.timeout = timeout
        self.lost: dict[int, str] = {}
        self.stage2: dict[int, Message] = {}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

        messages = list(messages)
        stage = ""
        if messages and RECORD_KEY_CONFIGS in messages[0].content.config_records:
            stage = str(messages[0].content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE, ""))
        ex: Exchange = exchange(self.grid, messages, timeout or self.timeout)
        for node, why in ex.errors.items():
            self.lost.setdefault(node, f"secure aggregation stage '{stage}': {why}")
        for node in ex.missing:
            self.lost.setdefault(node, f"secure aggregation stage '{stage}': no reply before the round timeout")
        if stage == "collect_masked_vectors":
            self.stage2.update(ex.ok)
        return list(ex.replies.values())

    def __getattr__(self, name: str):
        return getattr(self.grid, name)


def _legacy_strategy(node_ids: list[int], fitins_for: Callable[[int], Any], grid, run_id: int):
    """A legacy Strategy that samples exactly ``node_ids`` and keeps the aggregated vector."""
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.strategy import Strategy

    class _OneSecureRound(Strategy):
        aggregated = None

        def initialize_parameters(self, client_manager):
            return None

        def configure_fit(self, server_round, parameters, client_manager):
            return [(GridClientProxy(n, grid, run_id), fitins_for(n)) for n in node_ids]

        def aggregate_fit(self, server_round, results, failures):
            # SecAggPlusWorkflow sets every result's parameters to the unmasked aggregate
            self.aggregated = results[0][1].parameters if results else None
            return self.aggregated, {}

        def configure_evaluate(self, server_round, parameters, client_manager):
            return []

        def aggregate_evaluate(self, server_round, results, failures):
            return None, {}

        def evaluate(self, server_round, parameters):
            return None

    return _OneSecureRound()


def secure_exchange(grid: Grid, messages: list[Message], rnd: int, before: dict[str, np.ndarray], *,
                    timeout: float, clipping_range: float, max_weight: float, run_id: int | str = 0,
                    on_reply: Callable[[int, Message], None] | None = None) -> tuple[Exchange, SecureRound]:
    """Run one SecAgg+ training round for the sampled ``messages`` (the strategy's train messages).

    Returns an :class:`Exchange` whose ok replies carry each answering node's ``node`` and
    ``metrics`` records (no arrays: the server never sees an individual update) and the
    :class:`SecureRound` with the mean update. When the protocol cannot finish (too few nodes
    answered a stage to unmask), every sampled node is reported as failed with the reason.
    """
    from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey

    names = list(before)
    by_node = {m.metadata.dst_node_id: m for m in messages}
    node_ids = list(by_node)
    params = {"num_nodes": len(node_ids), "clipping_range": clipping_range, "quantization_range": QUANTIZATION_RANGE,
              "modulus_range": MODULUS_RANGE, "max_weight": max_weight,
              "reconstruction_fraction": round(RECONSTRUCTION_FRACTION, 4)}
    global_parameters = ndarrays_to_parameters([before[k] for k in names])

    def fitins_for(node: int) -> FitIns:
        cfg = dict(by_node[node].content[P.CONFIG])
        cfg.update({P.SECAGG_ARRAY_NAMES: json.dumps(names), P.SECAGG_MAX_WEIGHT: float(max_weight),
                    P.SECAGG_CLIPPING: float(clipping_range)})
        return FitIns(parameters=global_parameters, config=cfg)

    fast = _FastGrid(grid, timeout)
    strategy = _legacy_strategy(node_ids, fitins_for, fast, int(run_id) if str(run_id).isdigit() else 0)
    base = Context(run_id=int(run_id) if str(run_id).isdigit() else 0, node_id=0, node_config={},
                   state=RecordDict(), run_config={})
    ctx = LegacyContext(context=base, config=ServerConfig(num_rounds=rnd), strategy=strategy)
    ctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: rnd})
    ctx.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(global_parameters, True)
    workflow = SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=RECONSTRUCTION_FRACTION,
                                  max_weight=float(max_weight), clipping_range=float(clipping_range),
                                  quantization_range=QUANTIZATION_RANGE, modulus_range=MODULUS_RANGE,
                                  timeout=timeout)
    halted = ""
    if len(node_ids) < 2:
        halted = "secure aggregation needs at least 2 sampled nodes"
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            try:
                workflow(fast, ctx)
            except ZeroDivisionError:
                strategy.aggregated = None  # every node contributed weight 0 (all refused)
    result = Exchange(sent=list(node_ids))
    contributors, examples, clipped = [], 0.0, {}
    replies: dict[int, Message] = {}
    for node, reply in fast.stage2.items():
        fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
        metrics = dict(fitres.metrics)
        info = {"institution-id": str(metrics.pop("institution-id", "")), "refused": str(metrics.pop("refused", "")),
                "detail": str(metrics.pop("detail", ""))}
        numbers = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != P.SECAGG_CLIPPED}
        numbers["num-examples"] = float(fitres.num_examples)
        if float(metrics.get(P.SECAGG_CLIPPED, 0.0) or 0.0) > 0:
            clipped[node] = float(metrics[P.SECAGG_CLIPPED])
        if not info["refused"] and fitres.num_examples > 0:
            contributors.append(node)
            examples += float(fitres.num_examples)
        replies[node] = Message(RecordDict({P.METRICS: MetricRecord(numbers), P.NODE: ConfigRecord(info)}),
                                reply_to=by_node[node])
    aggregated = strategy.aggregated
    mean = None
    if aggregated is not None and contributors:
        arrays = parameters_to_ndarrays(aggregated)
        if len(arrays) == len(names) and all(np.all(np.isfinite(a)) for a in arrays):
            mean = {k: np.asarray(a, dtype=np.float64).reshape(before[k].shape) for k, a in zip(names, arrays)}
    if not halted and mean is None and contributors:
        lost = "; ".join(sorted(set(fast.lost.values()))) or "the protocol halted"
        halted = f"the masks could not be removed ({lost})"
    for node in node_ids:
        if halted and node in replies and node in contributors:
            result.replies[node] = _error_reply(by_node[node], f"secure aggregation failed: {halted}")
            result.errors[node] = f"secure aggregation failed: {halted}"
        elif node in replies:
            result.replies[node] = replies[node]
        elif node in fast.lost:
            result.replies[node] = _error_reply(by_node[node], fast.lost[node])
            result.errors[node] = fast.lost[node]
        else:
            result.missing.append(node)
    if on_reply is not None:
        for node, reply in result.ok.items():
            on_reply(node, reply)
    return result, SecureRound(mean_update=None if halted else mean, examples=examples,
                               contributors=[] if halted else contributors, params=params, clipped=clipped,
                               halted=halted)


def _error_reply(msg: Message, reason: str) -> Message:
    from flwr.common import Error

    return Message(Error(code=2, reason=reason), reply_to=msg)
