"""Local training of a default-prediction network on one institution's encoded data.

The loop is shared by the Flower ClientApp, the local-only and centralised baselines and the
plain-loop benchmark, so all of them train the same way. What differs is the *gradient rule*:

* :class:`PlainGradients` — shuffled minibatches, gradient of the mean binary cross-entropy;
* ``privacy.dpsgd.DPSGDGradients`` — Poisson-sampled batches, per-sample clipping, Gaussian
  noise (DP-SGD); it is defined in :mod:`privacy` and plugs in here.

FedProx: with ``proximal_mu = μ > 0`` the local objective gains ``μ/2 · ‖w − w_global‖²``. Its
gradient ``μ (w − w_global)`` does not depend on the data, so it is added after the gradient
rule (after clipping and noise under DP) and costs no privacy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np
import torch
from torch import nn

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class LocalTrainConfig:
    """Hyper-parameters of one local training call.

    ``batch_size`` is the (expected, under Poisson sampling) number of rows per step; an epoch
    is ``ceil(n / batch_size)`` steps; ``learning_rate`` is the client optimiser's step size.
    """

    local_epochs: int = 1
    batch_size: int = 256
    learning_rate: float = 2e-3
    optimizer: str = "adam"
    proximal_mu: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}")
        if self.local_epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("local_epochs, batch_size and learning_rate must be positive")

    def steps_per_epoch(self, n_rows: int) -> int:
        return max(1, -(-n_rows // self.batch_size))


class GradientRule(Protocol):
    """How batches are drawn and how a batch's gradient is written into ``p.grad``."""

    def batches(self, n_rows: int, steps: int, rng: np.random.Generator) -> Iterator[np.ndarray]: ...

    def compute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float: ...


class PlainGradients:
    """Non-private: each epoch is a fresh permutation cut into batches of ``batch_size``."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.loss_fn = nn.BCEWithLogitsLoss()

    def batches(self, n_rows: int, steps: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        done = 0
        while done < steps:
            perm = rng.permutation(n_rows)
            for start in range(0, n_rows, self.batch_size):
                if done == steps:
                    return
                yield perm[start:start + self.batch_size]
                done += 1

    def compute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        loss = self.loss_fn(model(x), y)
        loss.backward()
        return float(loss.detach())


def make_optimizer(model: nn.Module, cfg: LocalTrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, momentum=0.9,
                           weight_decay=cfg.weight_decay)


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: LocalTrainConfig,
    rule: GradientRule | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Train ``cfg.local_epochs`` epochs in place; returns ``{"loss", "steps", "examples"}``.

    ``loss`` is the mean training loss over the steps (before the proximal term). With
    ``cfg.proximal_mu > 0`` the weights at entry are the FedProx anchor ``w_global``.
    """
    rule = rule or PlainGradients(cfg.batch_size)
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32).copy())
    yt = torch.as_tensor(np.asarray(y, dtype=np.float32).copy())
    n = len(xt)
    steps = cfg.local_epochs * cfg.steps_per_epoch(n)
    anchor = [p.detach().clone() for p in model.parameters()] if cfg.proximal_mu > 0 else None
    opt = make_optimizer(model, cfg)
    rng = np.random.default_rng(seed)
    model.train()
    losses = []
    for idx in rule.batches(n, steps, rng):
        opt.zero_grad(set_to_none=False)
        index = torch.as_tensor(idx, dtype=torch.long)
        losses.append(rule.compute(model, xt[index], yt[index]))
        if anchor is not None:
            with torch.no_grad():
                for p, p0 in zip(model.parameters(), anchor):
                    p.grad.add_(p.detach() - p0, alpha=cfg.proximal_mu)
        opt.step()
    model.eval()
    finite = [v for v in losses if np.isfinite(v)]
    return {"loss": float(np.mean(finite)) if finite else float("nan"),
            "steps": float(len(losses)), "examples": float(n)}


@torch.no_grad()
def mean_loss(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy of the model on a matrix (for reports)."""
    model.eval()
    logits = model(torch.as_tensor(x, dtype=torch.float32))
    return float(nn.functional.binary_cross_entropy_with_logits(logits, torch.as_tensor(y, dtype=torch.float32)))
