"""The aggregation strategy of a run, built on Flower's Message-API strategies.

``strategy`` chooses how the global model moves:

* ``fedavg`` → :class:`flwr.serverapp.strategy.FedAvg`;
* ``fedprox`` → ``FedProx`` (it adds ``proximal-mu`` to the train config, the nodes add the
  proximal term);
* ``fedadam`` → ``FedAdam`` with the run's server learning rate (its moments are strategy
  state that checkpoints save and resume restores);
* ``fedyogi`` → ``FedYogi`` (Adam's second moment with Yogi's additive update), the same way;
* ``fedavgm`` → ``FedAvgM``: server momentum ``server-momentum`` on the pseudo-gradient
  (aggregate − global), step ``server-learning-rate``.

The server-side optimisers are post-processing of the nodes' DP updates: no privacy cost.
``docs/benchmarks.md`` compares them under DP on a label-skewed consortium.

Aggregation weight (``aggregation-weight``): ``examples`` weights each update by its number of
examples (FedAvg); ``information`` by the ``aggregation-weight`` each node sends — 4 n π̃ (1 − π̃)
from its DP-noised number of defaults (:mod:`clients.personalization`), so a portfolio with few
defaults does not outweigh the ones that hold the information about default. A reply without a
valid weight (missing, not finite, negative, above its number of examples) counts with its
number of examples: a node cannot weigh more than it would under FedAvg.

``aggregation`` chooses how the round's updates are combined; the robust rules are Flower's own
strategies (all FedAvg subclasses), sized by ``max-malicious-nodes`` = f:

* ``mean`` — the weighted mean (weights = number of examples);
* ``trimmed-mean`` → ``FedTrimmedAvg``: per coordinate, drop the f largest and f smallest
  values, average the rest (unweighted);
* ``median`` → ``FedMedian``: coordinate-wise median (unweighted);
* ``krum`` → ``Krum``: the one update with the smallest sum of squared distances to its
  n − f − 2 nearest neighbours;
* ``multi-krum`` → ``MultiKrum``: the n − f updates with the best Krum scores, averaged
  (weighted by examples).

How the two combine: with ``fedavg`` the robust strategy is used as is; with ``fedprox`` and
``fedadam`` a class is composed from both (``FedProx`` + rule: the nodes' proximal term and the
robust combination; ``FedAdam`` + rule: the robust aggregate takes the place of the mean, so
the pseudo-gradient FedAdam feeds its moments with is *robust aggregate − global weights*).
Python's method resolution does this with Flower's classes unchanged: ``FedAdam.aggregate_train``
calls ``super().aggregate_train``, which is the robust rule's.

The round loop in :mod:`server.consortium` uses a strategy for what Flower does well —
sampling nodes (``configure_train`` / ``configure_evaluate``) and aggregating weights
(:func:`aggregate_updates`) — and does the message exchange, refusal handling and update
checks itself (:mod:`server.replies`). Server-side clipping (``clip-update-norm``) is a wrapper
around the strategy (:mod:`server.clipping`), as Flower's DP wrappers are. It checks node availability itself too, so the strategy is
built with ``min_available_nodes = 1`` (Flower's sampler would otherwise wait forever for a
node that died).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (FedAdam, FedAvg, FedAvgM, FedMedian, FedProx, FedTrimmedAvg, FedYogi, Krum,
                                     MultiKrum)

from fedcredit import protocol as P
from server.clipping import ServerSideClipping, unwrap
from server.settings import RunSettings

ROBUST_RULES: dict[str, type[FedAvg]] = {
    "trimmed-mean": FedTrimmedAvg, "median": FedMedian, "krum": Krum, "multi-krum": MultiKrum}


def strategy_class(strategy: str, aggregation: str) -> type[FedAvg]:
    """The Flower strategy class for ``strategy`` combined with ``aggregation``."""
    base = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam, "fedyogi": FedYogi, "fedavgm": FedAvgM}[strategy]
    if aggregation == "mean":
        return base
    rule = ROBUST_RULES[aggregation]
    if base is FedAvg:
        return rule
    return type(f"{base.__name__}With{rule.__name__}", (base, rule), {})


def build_strategy(s: RunSettings) -> FedAvg:
    """The run's strategy; wrapped in :class:`server.clipping.ServerSideClipping` when the server
    clips updates (``clip-update-norm`` > 0)."""
    common = dict(
        fraction_train=s.fraction_train,
        fraction_evaluate=s.fraction_evaluate,
        min_train_nodes=s.min_train_nodes,
        min_evaluate_nodes=min(s.min_train_nodes, s.min_available_nodes) if s.fraction_evaluate > 0 else 0,
        min_available_nodes=1,  # the driver waits for nodes itself (ConsortiumRun.wait_for_nodes)
        weighted_by_key=WEIGHT_KEY if s.aggregation_weight == "information" else "num-examples",
    )
    cls = strategy_class(s.strategy, s.aggregation)
    if issubclass(cls, FedProx):
        strategy = cls(proximal_mu=s.proximal_mu, **common)
    elif issubclass(cls, (FedAdam, FedYogi)):
        strategy = cls(eta=s.server_learning_rate, eta_l=s.learning_rate, **common)
    elif issubclass(cls, FedAvgM):
        strategy = cls(server_learning_rate=s.server_learning_rate, server_momentum=s.server_momentum, **common)
    else:
        strategy = cls(**common)
    if isinstance(strategy, MultiKrum):
        strategy.num_malicious_nodes = s.max_malicious_nodes
    if s.clip_update_norm > 0:
        return ServerSideClipping(strategy, s.clip_update_norm)
    return strategy


def aggregate_updates(strategy: FedAvg, s: RunSettings, rnd: int, replies: list[Message]
                      ) -> tuple[ArrayRecord | None, MetricRecord | None, dict]:
    """Aggregate the accepted replies of round ``rnd``; returns (arrays, metrics, what the rule did).

    The robust rules are sized per round from the number n of updates: trimmed-mean drops
    f = ``max-malicious-nodes`` values from each end of every coordinate, multi-krum keeps n − f.
    ``strategy`` may be wrapped (:class:`server.clipping.ServerSideClipping`); the rule is the
    innermost strategy, and (Multi-)Krum's choice is read from the replies as they were
    aggregated (clipped, when the server clips).
    """
    rule = unwrap(strategy)
    n, f = len(replies), s.max_malicious_nodes
    info: dict = {"rule": s.aggregation, "updates": n}
    if rule.weighted_by_key == WEIGHT_KEY:
        info["weights"] = settle_weights(replies)
    if isinstance(rule, FedTrimmedAvg):
        rule.beta = min(f / n + 1e-9, 0.4999999) if f else 0.0  # Flower trims int(beta · n) per end
        info["trimmed_per_end"] = int(rule.beta * n)
    elif isinstance(rule, MultiKrum):
        rule.num_malicious_nodes = f
        if not isinstance(rule, Krum):
            rule.num_nodes_to_select = max(1, n - f)
    arrays, metrics = strategy.aggregate_train(rnd, replies)
    if isinstance(rule, MultiKrum):
        info["selected"] = _krum_selection(replies, f, rule.num_nodes_to_select)
    return arrays, metrics, info


WEIGHT_KEY = "aggregation-weight"


def settle_weights(replies: list[Message]) -> list[float]:
    """Make every reply's ``aggregation-weight`` usable (see the module docstring); returns them.

    A weight that is missing, not finite, negative or above the reply's number of examples is
    replaced by the number of examples (what FedAvg would use).
    """
    out = []
    for msg in replies:
        metrics = msg.content[P.METRICS]
        n = float(metrics.get("num-examples", 0.0))
        w = metrics.get(WEIGHT_KEY)
        ok = isinstance(w, (int, float)) and not isinstance(w, bool) and np.isfinite(w) and 0 <= w <= n
        metrics[WEIGHT_KEY] = float(w) if ok else n
        out.append(float(metrics[WEIGHT_KEY]))
    return out


def _krum_selection(replies: list[Message], f: int, m: int) -> list[int]:
    """Indices (into ``replies``) of the updates (Multi-)Krum keeps — the same choice Flower makes."""
    from flwr.serverapp.strategy.multikrum import select_multikrum

    contents = [r.content for r in replies]
    chosen = select_multikrum(contents, num_malicious_nodes=f, num_nodes_to_select=m)
    return sorted(next(i for i, c in enumerate(contents) if c is x) for x in chosen)


def strategy_state(strategy: FedAvg) -> dict[str, np.ndarray]:
    """Arrays a strategy carries between rounds (FedAdam/FedYogi: first and second moments;
    FedAvgM: the momentum, a list in the model's array order)."""
    out: dict[str, np.ndarray] = {}
    base = unwrap(strategy)
    for attr in ("m_t", "v_t"):
        for k, v in (getattr(base, attr, None) or {}).items():
            out[f"{attr}/{k}"] = np.asarray(v)
    for i, v in enumerate(getattr(base, "momentum_vector", None) or []):
        out[f"momentum_vector/{i:06d}"] = np.asarray(v)
    return out


def restore_strategy_state(strategy: FedAvg, state: dict[str, np.ndarray],
                           global_weights: dict[str, np.ndarray]) -> None:
    """Put a checkpoint's strategy state (and, for FedAdam/FedYogi, the global weights it steps
    from) back into the innermost strategy. FedAvgM keeps its model as an ArrayRecord that it
    sets itself from the first round it configures, so it gets None."""
    base = unwrap(strategy)
    for attr in ("m_t", "v_t"):
        part = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(attr + "/")}
        if part:
            setattr(base, attr, part)
    momentum = [v for k, v in sorted(state.items()) if k.startswith("momentum_vector/")]
    if momentum and isinstance(base, FedAvgM):
        base.momentum_vector = momentum
    if isinstance(base, FedAvgM):
        base.current_arrays = None
    elif hasattr(base, "current_arrays"):
        base.current_arrays = dict(global_weights)


def snapshot_grid(grid, node_ids: Iterable[int]):
    """``grid`` whose ``get_node_ids`` returns ``node_ids`` — what a strategy samples from.

    The driver decides which nodes are available; Flower's sampler then cannot block on a node
    that disappeared between that decision and the sampling.
    """
    return _SnapshotGrid(grid, list(node_ids))


class _SnapshotGrid:
    def __init__(self, grid, node_ids: list[int]):
        self._grid, self._nodes = grid, node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name):
        return getattr(self._grid, name)
