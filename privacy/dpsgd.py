"""DP-SGD as a gradient rule for :func:`models.training.train_local`.

One step, exactly Opacus's ``DPOptimizer`` with Poisson sampling (Abadi et al. 2016):

1. **Poisson sampling** — every row joins the batch independently with probability ``q``
   (so a batch may be empty); the privacy analysis (amplification by subsampling) depends on it.
2. **Per-sample clipping** — per-sample gradient ``g_i`` of the example's binary
   cross-entropy, scaled by ``c_i = min(1, C / (‖g_i‖₂ + 1e-6))`` (Opacus's formula).
3. **Noise and averaging** — ``p.grad = (Σ_i c_i g_i + N(0, σ² C² I)) / (q · n)``: the
   denominator is the *expected* batch size, never the realised one (as ``DPOptimizer`` with
   ``loss_reduction="mean"``); a node passes ``q · n̂`` from its released noisy row count, so
   not even the scale of the update depends on the exact count.

Non-finite values (a hostile coordinator's weights can make one row's forward pass overflow):
a row whose logit, per-sample gradient or gradient norm is not finite gets the clip factor 0 —
it contributes the zero vector, exactly as if its gradient had been clipped to norm 0 — and its
activations and output gradients are zeroed before they are multiplied, so ``0 · ∞`` never
makes a NaN. The rule depends on the row alone and keeps every contribution within the clip
norm C, so the sensitivity, the noise and the accounting are unchanged, and nothing is reported
per row: a coordinator learns only the noised sum, as for any other row.

The optimiser (Adam or SGD) then steps on that gradient; anything it does afterwards, and the
FedProx term added by the training loop, is post-processing.

Engines
-------
* ``"vectorised"`` (default) — for stacks of ``nn.Linear`` with parameter-free activations
  (:class:`models.network.DefaultNet`, or an ``nn.Sequential`` ending in one logit). One
  forward pass keeps each Linear layer's input ``a_l``; the per-example gradients of the
  layer's output ``g_l`` come from a hand-written backward pass (SiLU/ReLU/Tanh/Sigmoid) or
  from one ``autograd.grad`` call (any other parameter-free activation). The per-sample
  weight gradient is the outer product ``g_il a_ilᵀ``, so its squared norm is
  ``‖g_il‖² ‖a_il‖²`` (plus ``‖g_il‖²`` for the bias) — the "ghost norm" identity
  (Goodfellow 2015; Li et al. 2022) — and the clipped sum is ``(c ⊙ g_l)ᵀ a_l``. No
  per-sample gradient tensor is ever materialised.
* ``"opacus"`` — Opacus's own ``GradSampleModule`` (hooks) and ``DPOptimizer.pre_step``
  (clip, noise, scale): the reference the vectorised engine is tested against, and the path
  for models that are not Linear stacks.

Randomness
----------
Batch sampling and noise use their own generators, never the training loop's ``rng``
(that one derives from the run config's public seed, and amplification by subsampling needs the
sample to be secret). With ``seed=None`` (deployment) both are seeded from ``os.urandom``;
with a seed (simulation, tests) runs are reproducible. The generators are NumPy's PCG64 and
PyTorch's Mersenne Twister — like Opacus with ``secure_mode=False`` (its default), not a
cryptographically secure RNG: Opacus's ``secure_mode`` needs ``torchcsprng``, which is not
available for current PyTorch, and an ``os.urandom``-based Gaussian sampler measured here costs
~0.3 ms per step, about a third of a whole non-private step of the default network.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from privacy.events import PrivacyEvent

ENGINES = ("vectorised", "opacus")


class _LinearStack:
    """A parsed Linear stack: ``layers`` (Linear, activation-or-None) pairs; last has 1 output."""

    _MANUAL = (nn.SiLU, nn.ReLU, nn.Tanh, nn.Sigmoid)

    def __init__(self, model: nn.Module):
        from models.network import DefaultNet

        if isinstance(model, DefaultNet):
            seq = model.layers
        elif isinstance(model, nn.Sequential):
            seq = model
        else:
            raise ValueError(f"the vectorised DP-SGD engine handles DefaultNet or nn.Sequential Linear stacks, "
                             f"not {type(model).__name__}; use engine='opacus'")
        mods = list(seq)
        for m in mods:
            if not isinstance(m, nn.Linear) and any(True for _ in m.parameters(recurse=True)):
                raise ValueError(f"layer {m} has parameters but is not nn.Linear; use engine='opacus'")
        if not mods or not isinstance(mods[0], nn.Linear):
            raise ValueError("the model must start with an nn.Linear layer; use engine='opacus'")
        self.seq = seq
        self.linears = [m for m in mods if isinstance(m, nn.Linear)]
        if self.linears[-1].out_features != 1:
            raise ValueError("the model must output one logit per row")
        # manual backward: Linear (act Linear)* with known activations, nothing else
        self.pairs: list[tuple[nn.Linear, nn.Module | None]] = []
        manual, i = True, 0
        while i < len(mods):
            lin = mods[i]
            if not isinstance(lin, nn.Linear):
                manual = False
                break
            act = None
            if i + 1 < len(mods) and not isinstance(mods[i + 1], nn.Linear):
                act = mods[i + 1]
                i += 1
                if type(act) not in self._MANUAL:
                    manual = False
            self.pairs.append((lin, act))
            i += 1
        self.manual = manual and self.pairs[-1][1] is None
        self.params = [p for m in self.linears for p in ((m.weight, m.bias) if m.bias is not None else (m.weight,))]
        self.sizes = [p.numel() for p in self.params]
        self.n_params = sum(self.sizes)

    @torch.no_grad()
    def manual_grads(self, x: torch.Tensor, y: torch.Tensor):
        """Inputs ``a_l`` and per-example output gradients ``g_l`` of Σ_i BCE_i; and the logits.

        The backward pass uses ATen's own activation-backward kernels (the ones autograd runs).
        """
        acts, saved = [], []
        h = x
        for lin, act in self.pairs:
            acts.append(h)
            z = torch.addmm(lin.bias, h, lin.weight.t()) if lin.bias is not None else h @ lin.weight.t()
            if act is None:
                h = z
            elif isinstance(act, nn.SiLU):
                h = F.silu(z)
            else:
                h = act(z)
            saved.append(z if isinstance(act, nn.SiLU) else h)
        logits = h[:, 0]
        g = (torch.sigmoid(logits) - y).unsqueeze(1)  # d BCE_i / d logit_i
        gs = [g]
        aten = torch.ops.aten
        for l in range(len(self.pairs) - 2, -1, -1):
            g = g @ self.pairs[l + 1][0].weight
            act, t = self.pairs[l][1], saved[l]
            if isinstance(act, nn.SiLU):
                g = aten.silu_backward(g, t)
            elif isinstance(act, nn.ReLU):
                g = aten.threshold_backward(g, t, 0)
            elif isinstance(act, nn.Tanh):
                g = aten.tanh_backward(g, t)
            else:  # Sigmoid
                g = aten.sigmoid_backward(g, t)
            gs.append(g)
        gs.reverse()
        return acts, gs, logits

    def autograd_grads(self, x: torch.Tensor, y: torch.Tensor):
        acts, outs = [], []
        with torch.enable_grad():
            h = x
            for m in self.seq:
                if isinstance(m, nn.Linear):
                    acts.append(h.detach())
                    z = F.linear(h, m.weight.detach(), m.bias.detach() if m.bias is not None else None)
                    if not z.requires_grad:
                        z.requires_grad_(True)
                    outs.append(z)
                    h = z
                else:
                    h = m(h)
            logits = h.reshape(-1)
            loss = F.binary_cross_entropy_with_logits(logits, y, reduction="sum")
            gs = torch.autograd.grad(loss, outs)
        return acts, list(gs), logits.detach()


class DPSGDGradients:
    """DP-SGD gradient rule (see the module docstring); implements ``models.training.GradientRule``.

    ``noise_multiplier`` σ: noise std / clipping norm; ``max_grad_norm`` C: per-sample L2 clip;
    ``sample_rate`` q: Poisson sampling probability. The expected batch size ``q · n`` is set by
    :meth:`batches` (or :meth:`set_dataset_size`) before :meth:`compute` is called, unless
    ``expected_batch_size`` fixes it (a node: ``q · n̂`` of its released count). ``steps`` fixes
    the number of steps :meth:`batches` draws, whatever the training loop asks for (a node: the
    accounted steps, from n̂).
    """

    def __init__(self, noise_multiplier: float, max_grad_norm: float, sample_rate: float, *,
                 seed: int | None = None, engine: str = "vectorised", steps: int | None = None,
                 expected_batch_size: float | None = None):
        if not noise_multiplier >= 0 or not np.isfinite(noise_multiplier):
            raise ValueError(f"noise_multiplier must be ≥ 0, got {noise_multiplier}")
        if not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        if expected_batch_size is not None and not expected_batch_size > 0:
            raise ValueError(f"expected_batch_size must be positive, got {expected_batch_size}")
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.fixed_steps = None if steps is None else int(steps)
        self.fixed_expected_batch_size = None if expected_batch_size is None else float(expected_batch_size)
        self.sample_rate = float(sample_rate)
        self.engine = engine
        self.seed = seed
        if seed is None:
            seq = np.random.SeedSequence(int.from_bytes(os.urandom(16), "little"))
        else:
            seq = np.random.SeedSequence(int(seed))
        sample_seq, noise_seq = seq.spawn(2)
        self._sampler = np.random.default_rng(sample_seq)
        self.generator = torch.Generator()
        self.generator.manual_seed(int(noise_seq.generate_state(1, np.uint64)[0]))
        self.n_rows: int | None = None
        self.expected_batch_size: float | None = self.fixed_expected_batch_size
        self.steps_done = 0
        self._stack: tuple[int, _LinearStack] | None = None
        self._opacus: tuple[int, object, object] | None = None

    # -- sampling ----------------------------------------------------------------------
    def set_dataset_size(self, n_rows: int) -> None:
        if n_rows < 1:
            raise ValueError("the dataset is empty")
        self.n_rows = int(n_rows)
        self.expected_batch_size = self.fixed_expected_batch_size or self.sample_rate * self.n_rows

    def batches(self, n_rows: int, steps: int, rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
        """``steps`` Poisson samples of row indices (each row with probability q; may be empty).

        ``rng`` (the training loop's generator, seeded from the public run config) is ignored:
        the sample is drawn from this rule's own secret generator. With ``steps`` fixed at
        construction, that many samples are drawn instead of ``steps``.
        """
        self.set_dataset_size(n_rows)
        for _ in range(self.fixed_steps if self.fixed_steps is not None else int(steps)):
            k = int(self._sampler.binomial(n_rows, self.sample_rate))
            # a uniformly random k-subset given K = k ~ Bin(n, q): the same law as n Bernoulli(q) draws
            yield np.sort(self._sampler.choice(n_rows, size=k, replace=False))

    # -- one step ----------------------------------------------------------------------
    def compute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        """Write the noised, clipped, averaged gradient into ``p.grad``; return the batch's mean BCE."""
        if self.expected_batch_size is None:
            raise RuntimeError("call batches() or set_dataset_size() before compute()")
        self.steps_done += 1
        if self.engine == "opacus":
            return self._compute_opacus(model, x, y)
        return self._compute_vectorised(model, x, y)

    def _stack_for(self, model: nn.Module) -> _LinearStack:
        if self._stack is None or self._stack[0] != id(model):
            self._stack = (id(model), _LinearStack(model))
        return self._stack[1]

    def _noise(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        std = self.noise_multiplier * self.max_grad_norm
        if std == 0:
            return torch.zeros(n, dtype=dtype)
        return torch.normal(0.0, std, size=(n,), generator=self.generator, dtype=dtype)

    @torch.no_grad()
    def _compute_vectorised(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        stack = self._stack_for(model)
        dtype = stack.params[0].dtype
        inv = 1.0 / self.expected_batch_size
        noise = self._noise(stack.n_params, dtype).split(stack.sizes)
        if len(x) == 0:
            for p, nz in zip(stack.params, noise):
                p.grad = (nz * inv).view_as(p)
            return float("nan")
        x = x.to(dtype)
        y = y.to(dtype)
        acts, gs, logits = (stack.manual_grads if stack.manual else stack.autograd_grads)(x, y)
        clip = self.clip_factors(stack, acts, gs)  # 0 for a row whose gradient is not finite
        ok = clip > 0
        if not bool(ok.all()):  # such rows contribute exactly nothing: no 0 · ∞ in the products below
            acts, gs = _zero_rows(acts, gs, ok)
        k = 0
        for a, g, lin in zip(acts, gs, stack.linears):
            # (noise + Σ_i c_i g_i a_iᵀ) / (q·n), and (noise + Σ_i c_i g_i) / (q·n) for the bias
            lin.weight.grad = torch.addmm(noise[k].view_as(lin.weight), (g * clip.unsqueeze(1)).t(), a,
                                          beta=inv, alpha=inv)
            k += 1
            if lin.bias is not None:
                lin.bias.grad = torch.addmv(noise[k], g.t(), clip, beta=inv, alpha=inv)
                k += 1
        return float(F.binary_cross_entropy_with_logits(logits[ok], y[ok])) if bool(ok.any()) else float("nan")

    def clip_factors(self, stack: _LinearStack, acts, gs) -> torch.Tensor:
        """``min(1, C / (‖g_i‖ + 1e-6))`` from the ghost norms ``Σ_l ‖g_il‖² (‖a_il‖² + 1[bias])``;
        0 for a row whose squared norm is not finite — which is the case exactly when one of its
        activations or output gradients is NaN or infinite (``0 · ∞`` and ``NaN`` propagate into
        the sum), or the norm overflows (module docstring)."""
        sq = None
        for a, g, lin in zip(acts, gs, stack.linears):
            gn, an = torch.linalg.vecdot(g, g), torch.linalg.vecdot(a, a)
            if sq is None:
                sq = torch.addcmul(gn, gn, an) if lin.bias is not None else gn.mul_(an)
            else:
                if lin.bias is not None:
                    sq.add_(gn)
                sq.addcmul_(gn, an)
        factor = torch.div(self.max_grad_norm, sq.sqrt_().add_(1e-6)).clamp_(max=1.0)
        return torch.where(torch.isfinite(sq), factor, torch.zeros_like(factor))

    def per_sample_norms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example gradient norms ‖g_i‖₂ (ghost norms), for tests and diagnostics."""
        stack = self._stack_for(model)
        acts, gs, _ = (stack.manual_grads if stack.manual else stack.autograd_grads)(x, y)
        sq = torch.zeros(len(x), dtype=acts[0].dtype)
        for a, g, lin in zip(acts, gs, stack.linears):
            sq += g.square().sum(1) * (a.square().sum(1) + (1.0 if lin.bias is not None else 0.0))
        return sq.sqrt()

    def _compute_opacus(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        import warnings

        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        params = [p for p in model.parameters() if p.requires_grad]
        if len(x) == 0:  # Opacus needs a batch to run hooks on; the step is pure noise
            with torch.no_grad():
                inv = 1.0 / self.expected_batch_size
                for p in params:
                    p.grad = (self._noise(p.numel(), p.dtype) * inv).view_as(p)
            return float("nan")
        if self._opacus is None or self._opacus[0] != id(model):
            self.close()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
                dpopt = DPOptimizer(torch.optim.SGD(params, lr=0.0), noise_multiplier=self.noise_multiplier,
                                    max_grad_norm=self.max_grad_norm, expected_batch_size=self.expected_batch_size,
                                    loss_reduction="mean", generator=self.generator)
            self._opacus = (id(model), gsm, dpopt)
        _, gsm, dpopt = self._opacus
        dpopt.expected_batch_size = self.expected_batch_size
        dpopt.zero_grad(set_to_none=False)
        logits = gsm(x).reshape(-1)
        loss = F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))
        with warnings.catch_warnings():  # "full backward hook firing ... no inputs require gradients": expected
            warnings.simplefilter("ignore", UserWarning)
            loss.backward()
        _zero_non_finite_grad_samples(params, logits.detach())
        dpopt.pre_step()  # clip_and_accumulate, add_noise, scale_grad → p.grad
        return float(loss.detach())

    def close(self) -> None:
        """Remove Opacus hooks from the model (opacus engine); the vectorised engine adds none."""
        if self._opacus is not None:
            _, gsm, _ = self._opacus
            try:
                gsm._close()
            except Exception:  # pragma: no cover - best effort
                pass
            self._opacus = None

    # -- accounting --------------------------------------------------------------------
    def events(self, steps: int, run_id: str = "", round: int | None = None) -> PrivacyEvent:
        """The privacy event of ``steps`` DP-SGD steps with this rule's (σ, q)."""
        if self.noise_multiplier <= 0:
            raise ValueError("a rule without noise (σ = 0) is not differentially private and has no privacy event")
        return PrivacyEvent("train", self.noise_multiplier, self.sample_rate, int(steps), run_id=run_id, round=round,
                            detail=f"C={self.max_grad_norm:g}")


def _finite_rows(t: torch.Tensor) -> torch.Tensor:
    """Per row (first dimension): are all its entries finite?"""
    return torch.isfinite(t.reshape(len(t), -1)).all(dim=1)


def _zero_rows(acts, gs, ok: torch.Tensor):
    """Activations and output gradients with the rows not in ``ok`` set to 0 (the vectorised
    engine's fixed treatment of non-finite rows, module docstring)."""
    keep = ok.unsqueeze(1)
    return ([torch.where(keep, a, torch.zeros_like(a)) for a in acts],
            [torch.where(keep, g, torch.zeros_like(g)) for g in gs])


def _zero_non_finite_grad_samples(params, logits: torch.Tensor) -> None:
    """The Opacus engine's fixed treatment of non-finite rows: their per-sample gradients set to 0
    (norm 0, so clipping keeps them 0); the same rule as the vectorised engine's."""
    ok = torch.isfinite(logits.reshape(-1))
    for p in params:
        if getattr(p, "grad_sample", None) is not None:
            ok &= _finite_rows(p.grad_sample)
    squared = sum(p.grad_sample.reshape(len(ok), -1).double().square().sum(1) for p in params
                  if getattr(p, "grad_sample", None) is not None)
    ok &= torch.isfinite(torch.as_tensor(squared))
    if bool(ok.all()):
        return
    for p in params:
        if getattr(p, "grad_sample", None) is not None:
            mask = ok.reshape(-1, *([1] * (p.grad_sample.dim() - 1)))
            p.grad_sample = torch.where(mask, p.grad_sample, torch.zeros_like(p.grad_sample))
