"""Personalisation of the shared network to one institution's population (the maths).

A consortium under label skew is a mixture of lenders whose default rates differ by orders of
magnitude (a prime bank at 0.5 %, a micro-lender at 60 %). When the borrowers' features relate
to default the same way everywhere and only the base rate differs (prior shift), each lender's
Bayes score is the shared one plus a constant:

    logit P_k(default | x) = f(x) + b_k,    b_k = logit π_k − logit π  (up to the model's centring)

so the shared network ``f`` should learn *ranking* and each institution its own intercept.
This module holds what the node needs for that — all of it plain PyTorch on
:class:`models.network.DefaultNet`, trained by :func:`models.training.train_local` with
whatever gradient rule the caller gives (DP-SGD at a node):

* **Local layers** (FedBN-style, here the output bias — the per-institution prior):
  :func:`local_parameter_names` names the parameters a node keeps for itself between rounds;
  it trains them with DP-SGD like every other parameter, and the server aggregates them too
  (so the global model carries an average intercept), but each node starts every round from
  its *own* values instead of the aggregate.
* **Fine-tuning** after the last round (:func:`fine_tune`), one of :data:`FINE_TUNE_METHODS`:

  ``calibration``  intercept and slope on the shared model's logit, ``logit' = a·z + c``
                   (a 2-parameter logistic regression on ``z``), folded into the last layer;
                   ranking inside the institution is unchanged for a > 0.
  ``head``         the last Linear layer on the frozen body's features (a private head).
  ``full``         every parameter, with a proximal pull ``μ/2 ‖w − w_shared‖²`` towards the
                   shared model (Ditto-style regularised local model; μ = 0: plain fine-tune).

* **Aggregation weights** (:func:`information_weight`): the Fisher information a logistic
  model gets from ``n`` rows at default rate π is proportional to ``n · π (1 − π)``; an
  institution with 12,000 rows and 60 defaults says little about what separates defaulters
  from the rest, however many rows it has. :func:`information_weight` is that, scaled to
  ``n`` for a balanced portfolio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from models.calibration import Calibration, calibrate_weights
from models.network import DefaultNet, get_weights
from models.training import LocalTrainConfig, train_local

LOCAL_LAYERS = ("none", "output-bias")
FINE_TUNE_METHODS = ("none", "calibration", "head", "full")
AGGREGATION_WEIGHTS = ("examples", "information")
MAX_PERSONAL_EPOCHS = 20
MAX_OUTPUT_BIAS_LEARNING_RATE = 10.0
MAX_PERSONAL_MU = 1000.0


class PersonalizationConfigError(ValueError):
    """A personalisation key of the run config has a value the node does not accept."""


@dataclass(frozen=True)
class PersonalSettings:
    """What the run asks of this node besides the shared training (validated)."""

    local_layers: str = "none"
    output_bias_learning_rate: float = 0.0
    aggregation_weight: str = "examples"
    personalize: str = "none"
    personal_epochs: int = 0
    personal_mu: float = 0.0
    step_noise_target: float = 0.0  # σ / B a node aims at when it picks its batch (privacy.batch_plan); 0: off

    def personal_rounds(self, local_epochs: int) -> int:
        """Rounds' worth of DP-SGD steps the fine-tune takes (its epochs in whole local-epoch units)."""
        if self.personalize == "none" or self.personal_epochs < 1:
            return 0
        return -(-self.personal_epochs // max(1, int(local_epochs)))


def personal_settings(cfg: dict) -> PersonalSettings:
    """Read and check the personalisation keys of a round config (see the module docstring)."""
    def choice(key: str, allowed: tuple[str, ...], default: str) -> str:
        v = cfg.get(key, default)
        if not isinstance(v, str) or v not in allowed:
            raise PersonalizationConfigError(f"run config '{key}' must be one of {', '.join(allowed)}, got {v!r}")
        return v

    def number(key: str, low: float, high: float, default: float) -> float:
        v = cfg.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
            raise PersonalizationConfigError(f"run config '{key}' must be a number in [{low:g}, {high:g}], got {v!r}")
        return float(v)

    epochs = number("personal-epochs", 0, MAX_PERSONAL_EPOCHS, 0)
    if epochs != int(epochs):
        raise PersonalizationConfigError(f"run config 'personal-epochs' must be a whole number, got {epochs!r}")
    return PersonalSettings(
        local_layers=choice("local-layers", LOCAL_LAYERS, "none"),
        output_bias_learning_rate=number("output-bias-learning-rate", 0, MAX_OUTPUT_BIAS_LEARNING_RATE, 0.0),
        aggregation_weight=choice("aggregation-weight", AGGREGATION_WEIGHTS, "examples"),
        personalize=choice("personalize", FINE_TUNE_METHODS, "none"),
        personal_epochs=int(epochs),
        personal_mu=number("personal-proximal-mu", 0, MAX_PERSONAL_MU, 0.0),
        step_noise_target=number("step-noise-target", 0, 1, 0.0),
    )


def local_parameter_names(model: DefaultNet, local_layers: str) -> list[str]:
    """State-dict names of the parameters a node keeps for itself under ``local_layers``."""
    if local_layers not in LOCAL_LAYERS:
        raise ValueError(f"local_layers must be one of {LOCAL_LAYERS}, got {local_layers!r}")
    if local_layers == "none":
        return []
    last = model.linear_layers()[-1]
    return [name for name, p in model.named_parameters() if p is last.bias]


def information_weight(n_rows: float, positives: float) -> float:
    """``4 n π (1 − π)`` with ``π = positives / n`` clipped to ``[½/n, 1 − ½/n]``: the rows'
    information about the default boundary, in rows of a balanced portfolio (``= n`` at π = ½,
    ≈ 4 × the number of defaults for a rare class)."""
    n = float(n_rows)
    if not n >= 1:
        return 0.0
    pi = min(max(float(positives) / n, 0.5 / n), 1.0 - 0.5 / n)
    return 4.0 * n * pi * (1.0 - pi)


def fine_tune(model: DefaultNet, x: np.ndarray, y: np.ndarray, method: str, cfg: LocalTrainConfig,
              rule=None, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights of ``model`` adapted to ``(x, y)`` by ``method`` (see the module docstring).

    ``cfg`` gives epochs, batch size, learning rate and, for ``full``, the proximal μ (the
    anchor is the model as given). ``rule`` is the gradient rule (DP-SGD at a node, which
    accounts for ``cfg.local_epochs · ⌈n / batch⌉`` steps whatever the method: the sub-models
    see the same rows). ``model`` itself is left unchanged for ``calibration`` and ``head``.
    """
    if method not in FINE_TUNE_METHODS:
        raise ValueError(f"method must be one of {FINE_TUNE_METHODS}, got {method!r}")
    if method == "none":
        return get_weights(model)
    if method == "full":
        train_local(model, x, y, cfg, rule, seed=seed)
        return get_weights(model)
    if method == "calibration":
        cal = fit_calibration(logits(model, x), y, cfg, rule, seed)
        return calibrate_weights(get_weights(model), model.spec, cal)
    return _fine_tune_head(model, x, y, cfg, rule, seed)


@torch.no_grad()
def logits(model: DefaultNet, x: np.ndarray) -> np.ndarray:
    """The model's logit for each row (float32)."""
    model.eval()
    return model(torch.as_tensor(np.asarray(x, dtype=np.float32))).numpy()


@torch.no_grad()
def body_features(model: DefaultNet, x: np.ndarray) -> np.ndarray:
    """Input of the last Linear layer for each row (the body's output)."""
    model.eval()
    return model.layers[:-1](torch.as_tensor(np.asarray(x, dtype=np.float32))).numpy()


def fit_calibration(z: np.ndarray, y: np.ndarray, cfg: LocalTrainConfig, rule=None, seed: int = 0) -> Calibration:
    """``logit' = a·z + c`` fitted by (DP-)SGD from the identity (a = 1, c = 0).

    A non-positive or non-finite slope would reverse or destroy the ranking; the identity is
    returned then.
    """
    lin = _linear(1)
    with torch.no_grad():
        lin.layers[0].weight.fill_(1.0)
        lin.layers[0].bias.zero_()
    train_local(lin, np.asarray(z, dtype=np.float32).reshape(-1, 1), y, cfg, rule, seed=seed)
    slope, intercept = float(lin.layers[0].weight.item()), float(lin.layers[0].bias.item())
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope <= 0:
        return Calibration()
    return Calibration(slope=slope, intercept=intercept)


def _fine_tune_head(model: DefaultNet, x, y, cfg: LocalTrainConfig, rule, seed: int) -> dict[str, np.ndarray]:
    last = model.linear_layers()[-1]
    head = _linear(last.in_features)
    with torch.no_grad():
        head.layers[0].weight.copy_(last.weight)
        head.layers[0].bias.copy_(last.bias)
    train_local(head, body_features(model, x), y, cfg, rule, seed=seed)
    weights = get_weights(model)
    name = {id(p): n for n, p in model.named_parameters()}
    weights[name[id(last.weight)]] = head.layers[0].weight.detach().numpy().copy()
    weights[name[id(last.bias)]] = head.layers[0].bias.detach().numpy().copy()
    return weights


def _linear(n_inputs: int) -> DefaultNet:
    """A one-layer logistic model (the ``scorecard`` network) on ``n_inputs`` inputs."""
    from models.network import ModelSpec

    return DefaultNet(ModelSpec("scorecard", n_inputs, ()))
