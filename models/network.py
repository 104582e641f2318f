"""The default-prediction networks.

Two architectures over the encoded feature vector (see :mod:`models.encoder`):

* ``mlp`` — a multilayer perceptron ``Linear → SiLU → … → Linear(·, 1)`` producing the logit
  of the probability of default (PD). No BatchNorm (per-sample gradients, which DP-SGD
  needs, are undefined for it) and no dropout (DP noise already regularises).
* ``scorecard`` — logistic regression ``Linear(n_inputs, 1)``: a points-based scorecard once
  the logit is scaled with :mod:`models.scoring`.

Both are plain stacks of ``nn.Linear`` layers, which is what the vectorised DP-SGD path in
:mod:`privacy` relies on, and what Opacus supports natively.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

ARCHITECTURES = ("mlp", "scorecard")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network: architecture, input width, hidden widths."""

    architecture: str
    n_inputs: int
    hidden: tuple[int, ...] = field(default=(64, 32))

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.n_inputs < 1:
            raise ValueError("n_inputs must be positive")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(architecture=d["architecture"], n_inputs=int(d["n_inputs"]),
                   hidden=tuple(int(h) for h in d.get("hidden", ())))


class DefaultNet(nn.Module):
    """Stack of Linear layers with SiLU in between; output: one logit per row."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        widths = [spec.n_inputs, *(spec.hidden if spec.architecture == "mlp" else ()), 1]
        layers: list[nn.Module] = []
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(w_in, w_out))
            if i < len(widths) - 2:
                layers.append(nn.SiLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(-1)

    def linear_layers(self) -> list[nn.Linear]:
        return [m for m in self.layers if isinstance(m, nn.Linear)]


def build_model(spec: ModelSpec, seed: int = 0) -> DefaultNet:
    """A freshly initialised network; the same seed gives the same initial weights."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = DefaultNet(spec)
    finally:
        torch.random.set_rng_state(gen_state)
    return model


def parameter_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Name → shape of every parameter of the network ``spec`` describes (built on PyTorch's
    ``meta`` device: no memory is allocated, so checking a message's weights costs nothing)."""
    with torch.device("meta"):
        model = DefaultNet(spec)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def get_weights(model: nn.Module) -> dict[str, "np.ndarray"]:  # noqa: F821
    """The model's parameters as a name → float32 NumPy array dict (a copy)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def set_weights(model: nn.Module, weights: dict) -> None:
    """Load a name → array dict into the model; shapes and names must match exactly."""
    state = {k: torch.as_tensor(v) for k, v in weights.items()}
    model.load_state_dict(state, strict=True)


@torch.no_grad()
def predict_pd(model: nn.Module, x, batch_size: int = 65536):
    """Probability of default for each row of an encoded matrix (NumPy float32 in, float64 out)."""
    import numpy as np

    model.eval()
    out = np.empty(len(x), dtype=np.float64)
    xt = torch.as_tensor(x, dtype=torch.float32)
    for start in range(0, len(x), batch_size):
        logits = model(xt[start:start + batch_size])
        out[start:start + batch_size] = torch.sigmoid(logits.double()).numpy()
    return out
