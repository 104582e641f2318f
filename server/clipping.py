"""Server-side clipping of each update, as a wrapper around the run's strategy.

Run config ``clip-update-norm`` = C > 0: before the wrapped strategy aggregates a round, each
accepted update's delta from the global model is scaled down to L2 norm C,

    wᵢ ← w + Δᵢ · min(1, C / ‖Δᵢ‖₂),   Δᵢ = wᵢ − w,

so no single node moves the model further than C in one round (:func:`server.update_checks.clip_update`).
The nodes' DP guarantee does not depend on it (it is post-processing of what they released); it
bounds the influence of a faulty or malicious node. Like Flower's
``DifferentialPrivacyServerSideFixedClipping`` (``flwr/serverapp/strategy/dp_fixed_clipping.py``)
it is a policy wrapped around a strategy rather than code inside the round loop: it remembers
the global weights in ``configure_train``, clips in ``aggregate_train``, and delegates
everything else. Unlike Flower's wrapper it adds no noise (the nodes do, with DP-SGD).
"""

from __future__ import annotations

from typing import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedcredit import protocol as P
from server.update_checks import clip_update


class ServerSideClipping(Strategy):
    """``strategy`` with each update's delta clipped to L2 norm ``clipping_norm`` before aggregation.

    After each ``aggregate_train``, :attr:`clipped` maps the source node id of every update that
    was clipped to its norm before clipping. Attributes the wrapper does not have (the wrapped
    strategy's settings and state, e.g. FedAdam's moments) are read from the wrapped strategy.
    """

    def __init__(self, strategy: Strategy, clipping_norm: float):
        if not clipping_norm > 0:
            raise ValueError("clipping_norm must be positive")
        self.strategy = strategy
        self.clipping_norm = float(clipping_norm)
        self.global_arrays: ArrayRecord = ArrayRecord()  # the round's global model (what deltas are taken from)
        self.clipped: dict[int, float] = {}

    def __repr__(self) -> str:
        return f"ServerSideClipping({self.strategy!r}, clipping_norm={self.clipping_norm:g})"

    def __getattr__(self, name: str):
        if name == "strategy":  # not yet set (during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.global_arrays = arrays
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        before = P.from_array_record(self.global_arrays)
        self.clipped = {}
        for reply in replies:
            norm = clip_update(reply, before, self.clipping_norm)
            if norm is not None:
                self.clipped[reply.metadata.src_node_id] = norm
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


def unwrap(strategy: Strategy) -> Strategy:
    """The innermost strategy under any wrappers (what sizes the robust rules and holds state)."""
    while isinstance(strategy, ServerSideClipping):
        strategy = strategy.strategy
    return strategy
