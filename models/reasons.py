"""Adverse-action reason codes: why the model puts an applicant's PD above the typical applicant's.

Attribution
-----------
The model's output is the logit ``f(x)`` of the probability of default. Each applicant ``x``
(an encoded row) is compared with the consortium's *reference applicant* ``r`` — the encoded
typical applicant of :meth:`models.encoder.FeatureEncoder.reference_vector` (medians of the
numeric features, the median level of ordinal ones, the most common category).

*Integrated gradients* (Sundararajan et al., 2017) attribute the difference ``f(x) − f(r)`` to
the encoded columns::

    a_j(x) = (x_j − r_j) · ∫₀¹ ∂f/∂x_j (r + α (x − r)) dα

The integral is evaluated with a fixed ``steps``-point Gauss–Legendre rule on ``[0, 1]`` (exact
for polynomials of degree ≤ 2·steps − 1). With the default 16 points ``Σ_j a_j`` equals
``f(x) − f(r)`` to ~1e-6 logit even for sharply trained SiLU networks (8 points left errors up
to 4e-3 on such a network — above the threshold that makes a contribution a reason). For the
``scorecard`` (logistic regression) the gradient is the constant weight vector, so
``a_j = w_j (x_j − r_j)`` — exact, no quadrature. The rule is deterministic: the same model,
encoder and rows give the same result. A column where the applicant equals the reference gets
exactly 0, so a feature at its typical value is never a reason.

Grouping and wording
--------------------
A feature's contribution is the sum over its encoded columns
(:meth:`~models.encoder.FeatureEncoder.feature_slices`). Features with the same schema
``group`` are summed into that group (the six monthly repayment statuses are one reason);
features without a group stand alone. Only groups that *raise* the PD (contribution
> ``min_logit``) are reasons; they are ordered by contribution, largest first, ties broken by
schema order, and worded with :meth:`configs.schema.Schema.reason_text` (the group's
``reason``, else the feature's description). An applicant with fewer than K adverse reasons
gets empty strings in the remaining places.

Contributions are in logit units: a contribution ``c`` multiplies the odds of default by
``exp(c)`` relative to the reference applicant, and moves the score by ``−c · PDO / ln 2``
points.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from configs.schema import Schema
from models.encoder import FeatureEncoder

DEFAULT_STEPS = 16
DEFAULT_MIN_LOGIT = 1e-3  # contributions below this (odds × 1.001) are not reasons
DEFAULT_CHUNK_ROWS = 1024  # rows per path-integral block: the (rows × steps × hidden) tensors stay in cache


@dataclass(frozen=True)
class ReasonGroups:
    """How encoded columns roll up into reasons.

    ``matrix`` is ``(n_outputs, n_groups)`` with a 1 where a column belongs to a group;
    ``names`` the group keys (schema group, or the feature name when it has none), ``texts``
    their adverse-action wording, ``features`` the features of each group.
    """

    names: tuple[str, ...]
    texts: tuple[str, ...]
    features: tuple[tuple[str, ...], ...]
    matrix: np.ndarray


def reason_groups(encoder: FeatureEncoder, schema: Schema) -> ReasonGroups:
    """Group the encoder's features by their schema ``group`` (first-seen order)."""
    slices = encoder.feature_slices()
    order: list[str] = []
    members: dict[str, list[str]] = {}
    texts: dict[str, str] = {}
    for ef in encoder.features:
        try:
            f = schema.feature(ef.name)
        except KeyError:
            raise ValueError(f"the encoder's feature {ef.name!r} is not in schema {schema.key}") from None
        key = f.group if f.group else f.name
        if key not in members:
            order.append(key)
            members[key] = []
            texts[key] = schema.reason_text(f)
        members[key].append(ef.name)
    matrix = np.zeros((encoder.n_outputs, len(order)), dtype=np.float64)
    for g, key in enumerate(order):
        for name in members[key]:
            matrix[slices[name], g] = 1.0
    return ReasonGroups(tuple(order), tuple(texts[k] for k in order),
                        tuple(tuple(members[k]) for k in order), matrix)


def _gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the ``steps``-point Gauss–Legendre rule on [0, 1]."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (nodes + 1.0) / 2.0, weights / 2.0


def _linear_weights(model: nn.Module) -> np.ndarray | None:
    """The weight vector when the network is a single Linear layer (the scorecard), else None."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    others = [m for m in model.modules() if len(list(m.children())) == 0 and not isinstance(m, nn.Linear)]
    if len(linears) == 1 and not others and linears[0].out_features == 1:
        return linears[0].weight.detach().cpu().double().numpy()[0]
    return None


def _silu_stack(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """``[(W, b), …]`` when the network is Linear → SiLU → … → Linear(·, 1) (DefaultNet), else None."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.Sequential):
        return None
    mods = list(layers)
    if len(mods) < 3 or len(mods) % 2 == 0:
        return None
    for i, m in enumerate(mods):
        if not isinstance(m, nn.Linear if i % 2 == 0 else nn.SiLU):
            return None
    if mods[-1].out_features != 1:
        return None
    return [(m.weight.detach().float(), m.bias.detach().float() if m.bias is not None
             else torch.zeros(m.out_features)) for m in mods[::2]]


@torch.no_grad()
def _silu_stack_path_gradients(stack, r: torch.Tensor, d: torch.Tensor, alphas: torch.Tensor,
                               weights: torch.Tensor) -> torch.Tensor:
    """``Σ_s w_s ∇f(r + α_s d)`` for a Linear/SiLU stack, rows of ``d`` independent; ``(b, n_in)``.

    The first layer is affine in α along the path, so its pre-activation is
    ``z(α) = (W r + b) + α (W d)``: one matmul per row instead of one per quadrature point;
    and the input gradient ``Σ_s w_s g_s W`` takes the last matmul out of the sum over s.
    """
    (w1, b1), rest = stack[0], stack[1:]
    z0 = r @ w1.T + b1  # (h1,)
    dz = d @ w1.T  # (b, h1)
    z = z0 + alphas.view(1, -1, 1) * dz.unsqueeze(1)  # (b, s, h1)
    derivs = []
    for k, (w, b) in enumerate(rest):
        sg = torch.sigmoid(z)
        h = z * sg  # SiLU
        # SiLU'(z) = σ(z) (1 + z (1 − σ(z))) = σ(z) + h (1 − σ(z))
        derivs.append(sg.add_(h * (1 - sg)))
        if k < len(rest) - 1:
            z = torch.addmm(b, h.reshape(-1, h.shape[-1]), w.T).view(h.shape[0], h.shape[1], -1)
    g = derivs[-1] * rest[-1][0].view(1, 1, -1)  # ∂f/∂z_last_hidden
    for i in range(len(derivs) - 2, -1, -1):
        g = (g.reshape(-1, g.shape[-1]) @ rest[i][0]).view_as(derivs[i]).mul_(derivs[i])
    g = (g * weights.view(1, -1, 1)).sum(dim=1)  # (b, h1)
    return g @ w1


@contextlib.contextmanager
def _one_intra_op_thread():
    """Run torch on one intra-op thread, restoring the setting afterwards.

    The path integral is a long series of small tensor operations; with two or more threads
    each one pays a synchronisation, and on a loaded machine (another process on a core) that
    made it 10–20× slower than one thread; on an idle 2-core machine one thread measured about
    as fast as two.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def column_attributions(model: nn.Module, reference: np.ndarray, x: np.ndarray, steps: int = DEFAULT_STEPS,
                        chunk_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray:
    """Integrated-gradient attribution of ``f(x) − f(reference)`` per encoded column, ``(n, n_outputs)``.

    Exact for a single-Linear network; otherwise ``steps``-point Gauss–Legendre quadrature of
    the path integral (see the module docstring). The networks of :mod:`models.network`
    (Linear → SiLU → … → Linear) take a closed-form path (:func:`_silu_stack_path_gradients`,
    no autograd, ~5× faster); any other module falls back to autograd. float64 out, computed
    in blocks of ``chunk_rows`` rows.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D encoded matrix, got shape {x.shape}")
    r = np.asarray(reference, dtype=np.float32).reshape(-1)
    if x.shape[1] != r.shape[0]:
        raise ValueError(f"x has {x.shape[1]} columns, the reference {r.shape[0]}")
    w = _linear_weights(model)
    if w is not None:
        return (x.astype(np.float64) - r.astype(np.float64)) * w
    if steps < 1:
        raise ValueError("steps must be ≥ 1")
    alphas, weights = _gauss_legendre(steps)
    stack = _silu_stack(model)
    if stack is not None:
        out = np.empty(x.shape, dtype=np.float64)
        r_t = torch.as_tensor(r)
        a_t, w_t = torch.as_tensor(alphas, dtype=torch.float32), torch.as_tensor(weights, dtype=torch.float32)
        with _one_intra_op_thread():
            for start in range(0, len(x), chunk_rows):
                d = torch.as_tensor(x[start:start + chunk_rows]) - r_t
                g = _silu_stack_path_gradients(stack, r_t, d, a_t, w_t)
                out[start:start + len(d)] = g.double().numpy() * d.double().numpy()
        return out
    a_t = torch.as_tensor(alphas, dtype=torch.float32).view(1, -1, 1)
    w_t = torch.as_tensor(weights, dtype=torch.float32).view(1, -1, 1)
    r_t = torch.as_tensor(r).view(1, 1, -1)
    was_training = model.training
    model.eval()
    out = np.empty(x.shape, dtype=np.float64)
    try:
        params = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            for start in range(0, len(x), chunk_rows):
                xb = torch.as_tensor(x[start:start + chunk_rows])
                d = (xb.unsqueeze(1) - r_t)  # (b, 1, m)
                path = (r_t + a_t * d).reshape(-1, x.shape[1]).requires_grad_(True)  # (b·steps, m)
                with torch.enable_grad():
                    model(path).sum().backward()
                g = path.grad.view(len(xb), steps, -1)
                avg = (g * w_t).sum(dim=1)  # (b, m): ∫ ∂f/∂x_j dα
                out[start:start + len(xb)] = (avg.double() * d.squeeze(1).double()).numpy()
        finally:
            for p, req in zip(model.parameters(), params):
                p.requires_grad_(req)
    finally:
        model.train(was_training)
    return out


def group_contributions(model: nn.Module, encoder: FeatureEncoder, schema: Schema, x: np.ndarray,
                        steps: int = DEFAULT_STEPS) -> tuple[np.ndarray, ReasonGroups]:
    """Logit contribution of each reason group, ``(n, n_groups)``, and the grouping used."""
    groups = reason_groups(encoder, schema)
    attr = column_attributions(model, encoder.reference_vector(), x, steps)
    return attr @ groups.matrix, groups


def adverse_action_reasons(model: nn.Module, encoder: FeatureEncoder, schema: Schema, x: np.ndarray, k: int,
                           steps: int = DEFAULT_STEPS, min_logit: float = DEFAULT_MIN_LOGIT,
                           chunk_rows: int = 65536) -> np.ndarray:
    """The ``k`` main adverse-action reasons per row of the encoded matrix ``x``: ``(n, k)`` strings.

    Reason ``j`` of a row is the wording of the group with the ``j``-th largest contribution
    that raises the PD above the reference applicant's by more than ``min_logit``; "" where
    the row has fewer than ``j`` such groups. See the module docstring for the method.
    """
    if k < 0:
        raise ValueError("k must be ≥ 0")
    x = np.asarray(x, dtype=np.float32)
    groups = reason_groups(encoder, schema)
    texts = np.array(list(groups.texts) + [""])
    blank = len(groups.texts)
    n_groups = len(groups.names)
    out = np.full((len(x), k), "", dtype=texts.dtype)
    if k == 0 or len(x) == 0:
        return out
    reference = encoder.reference_vector()
    take = min(k, n_groups)
    for start in range(0, len(x), chunk_rows):
        contrib = column_attributions(model, reference, x[start:start + chunk_rows], steps) @ groups.matrix
        order = np.argsort(-contrib, axis=1, kind="stable")[:, :take]  # ties: schema order
        top = np.take_along_axis(contrib, order, axis=1)
        idx = np.where(top > min_logit, order, blank)
        out[start:start + len(contrib), :take] = texts[idx]
    return out


@dataclass
class Explanation:
    """One applicant's attribution (logit units; see the module docstring)."""

    logit: float
    reference_logit: float
    columns: dict[str, float]  # encoded column → contribution
    features: dict[str, float]  # feature → contribution (sum over its columns)
    groups: list[dict] = field(default_factory=list)  # {group, reason, features, contribution}, largest first
    reasons: list[str] = field(default_factory=list)  # the adverse reasons, in order

    @property
    def completeness_error(self) -> float:
        """|Σ contributions − (f(x) − f(r))|: the quadrature error (0 for the scorecard)."""
        return abs(sum(self.features.values()) - (self.logit - self.reference_logit))


def explain_one(model: nn.Module, encoder: FeatureEncoder, schema: Schema, x_row: np.ndarray,
                steps: int = DEFAULT_STEPS, min_logit: float = DEFAULT_MIN_LOGIT) -> Explanation:
    """All contributions behind one applicant's reasons (encoded row ``x_row``), for docs and tests."""
    x = np.asarray(x_row, dtype=np.float32).reshape(1, -1)
    reference = encoder.reference_vector()
    attr = column_attributions(model, reference, x, steps)[0]
    rg = reason_groups(encoder, schema)
    by_group = attr @ rg.matrix
    with torch.no_grad():
        was_training = model.training
        model.eval()
        both = model(torch.as_tensor(np.stack([x[0], reference]))).double().numpy().reshape(-1)
        model.train(was_training)
    slices = encoder.feature_slices()
    order = np.argsort(-by_group, kind="stable")
    groups = [{"group": rg.names[g], "reason": rg.texts[g], "features": list(rg.features[g]),
               "contribution": float(by_group[g])} for g in order]
    return Explanation(
        logit=float(both[0]), reference_logit=float(both[1]),
        columns={name: float(v) for name, v in zip(encoder.output_names, attr)},
        features={name: float(attr[s].sum()) for name, s in slices.items()},
        groups=groups,
        reasons=[g["reason"] for g in groups if g["contribution"] > min_logit],
    )
