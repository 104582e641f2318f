"""The aggregation strategy of a run, built on Flower's Message-API strategies.

``fedavg`` → :class:`flwr.serverapp.strategy.FedAvg`; ``fedprox`` → ``FedProx`` (it adds
``proximal-mu`` to the train config, the nodes add the proximal term); ``fedadam`` →
``FedAdam`` with the run's server learning rate (its moments are strategy state that
checkpoints save and resume restores).

The round driver in :mod:`server.consortium` uses a strategy for what Flower does well —
sampling nodes (``configure_train`` / ``configure_evaluate``) and aggregating weights
(``aggregate_train``) — and does the message exchange, refusal handling and update checks
itself.
"""

from __future__ import annotations

import numpy as np
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from server.settings import RunSettings


def build_strategy(s: RunSettings) -> FedAvg:
    common = dict(
        fraction_train=s.fraction_train,
        fraction_evaluate=s.fraction_evaluate,
        min_train_nodes=s.min_train_nodes,
        min_evaluate_nodes=min(s.min_train_nodes, s.min_available_nodes) if s.fraction_evaluate > 0 else 0,
        min_available_nodes=s.min_available_nodes,
    )
    if s.strategy == "fedprox":
        return FedProx(proximal_mu=s.proximal_mu, **common)
    if s.strategy == "fedadam":
        return FedAdam(eta=s.server_learning_rate, eta_l=s.learning_rate, **common)
    return FedAvg(**common)


def strategy_state(strategy: FedAvg) -> dict[str, np.ndarray]:
    """Arrays a strategy carries between rounds (FedAdam: first and second moments)."""
    out: dict[str, np.ndarray] = {}
    for attr in ("m_t", "v_t"):
        for k, v in (getattr(strategy, attr, None) or {}).items():
            out[f"{attr}/{k}"] = np.asarray(v)
    return out


def restore_strategy_state(strategy: FedAvg, state: dict[str, np.ndarray]) -> None:
    for attr in ("m_t", "v_t"):
        part = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(attr + "/")}
        if part:
            setattr(strategy, attr, part)
