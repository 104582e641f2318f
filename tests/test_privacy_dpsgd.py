"""DP-SGD gradient rule: equal to Opacus's hooks + DPOptimizer, noise of the stated size, Poisson batches."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from models.network import ModelSpec, build_model
from models.training import LocalTrainConfig, train_local
from privacy.dpsgd import DPSGDGradients


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def batch(n=300, d=177, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, d, generator=g) < 0.3).float() * torch.rand(n, d, generator=g)
    x = x * torch.linspace(0.05, 4.0, n).unsqueeze(1)  # row norms from small to large: some rows clipped, some not
    y = (torch.rand(n, generator=g) < 0.3).float()
    return x, y


def grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("clip", [0.05, "median", 50.0])
@pytest.mark.parametrize("hidden", [(64, 32), ()])
def test_vectorised_clipped_sum_equals_opacus_hooks(clip, hidden):
    x, y = batch()
    spec = ModelSpec("mlp" if hidden else "scorecard", x.shape[1], hidden)
    base = build_model(spec, seed=3)
    norms = DPSGDGradients(0.0, 1.0, 0.05).per_sample_norms(copy.deepcopy(base), x, y)
    if clip == "median":  # half the rows clipped, half not
        clip = float(norms.median())
    out = {}
    for engine in ("vectorised", "opacus"):
        model = copy.deepcopy(base)
        rule = DPSGDGradients(0.0, clip, 256 / 5000, seed=0, engine=engine)
        rule.set_dataset_size(5000)
        loss = rule.compute(model, x, y)
        out[engine] = (grads(model), loss)
        rule.close()
    (g_vec, loss_vec), (g_op, loss_op) = out["vectorised"], out["opacus"]
    assert loss_vec == pytest.approx(loss_op, rel=1e-6)
    for a, b in zip(g_vec, g_op):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()


def test_per_sample_norms_match_explicit_per_example_gradients():
    x, y = batch(12)
    model = build_model(ModelSpec("mlp", x.shape[1], (16, 8)), seed=1)
    ghost = DPSGDGradients(0.0, 1.0, 0.1).per_sample_norms(model, x, y)
    for i in range(len(x)):
        model.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(x[i:i + 1]), y[i:i + 1], reduction="sum").backward()
        explicit = torch.sqrt(sum(p.grad.square().sum() for p in model.parameters()))
        assert float(ghost[i]) == pytest.approx(float(explicit), rel=1e-4)


def test_other_activations_use_the_autograd_path_and_still_match_opacus():
    x, y = batch(100, 20)
    base = nn.Sequential(nn.Linear(20, 16), nn.GELU(), nn.Linear(16, 1))
    res = []
    for engine in ("vectorised", "opacus"):
        m = copy.deepcopy(base)
        r = DPSGDGradients(0.0, 0.5, 0.1, engine=engine)
        r.set_dataset_size(1000)
        r.compute(m, x, y)
        res.append(grads(m))
        r.close()
    for a, b in zip(*res):
        assert torch.allclose(a, b, atol=1e-5)
    rule = DPSGDGradients(1.0, 1.0, 0.1)
    rule.set_dataset_size(100)
    with pytest.raises(ValueError, match="engine='opacus'"):  # a layer with parameters that is not Linear
        rule.compute(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 1)), torch.ones(3, 4), torch.ones(3))


def test_noise_has_std_sigma_c_over_expected_batch_size():
    x, y = batch(200)
    model = build_model(ModelSpec("mlp", x.shape[1], (64, 32)), seed=2)
    sigma, clip, n, q = 0.8, 0.5, 4000, 0.05
    exact = DPSGDGradients(0.0, clip, q, seed=0)
    exact.set_dataset_size(n)
    exact.compute(model, x, y)
    clean = torch.cat([g.flatten() for g in grads(model)])
    noisy = DPSGDGradients(sigma, clip, q, seed=123)
    noisy.set_dataset_size(n)
    draws = []
    for _ in range(40):
        noisy.compute(model, x, y)
        draws.append(torch.cat([g.flatten() for g in grads(model)]) - clean)
    z = torch.stack(draws).double() * (q * n) / (sigma * clip)  # should be N(0, 1) in every coordinate
    assert abs(float(z.mean())) < 0.01
    assert float(z.std()) == pytest.approx(1.0, abs=0.01)
    # coordinates and steps independent: per-coordinate std across steps also ≈ 1
    assert float(z.std(dim=0).mean()) == pytest.approx(1.0, abs=0.03)


def test_poisson_batches_and_empty_batches():
    rule = DPSGDGradients(1.0, 1.0, 0.02, seed=5)
    sizes = [len(b) for b in rule.batches(5000, 400, rng=None)]
    assert rule.expected_batch_size == pytest.approx(100.0)
    assert np.mean(sizes) == pytest.approx(100, abs=2.5)
    assert np.var(sizes) == pytest.approx(5000 * 0.02 * 0.98, rel=0.25)
    idx = next(DPSGDGradients(1.0, 1.0, 0.5, seed=1).batches(40, 1, None))
    assert np.all(np.diff(idx) > 0) and idx.max() < 40  # distinct rows
    # tiny q: empty batches happen; the step is pure noise and the loss is nan
    rule = DPSGDGradients(1.0, 1.0, 0.001, seed=0)
    assert any(len(b) == 0 for b in rule.batches(200, 50, None))
    model = build_model(ModelSpec("scorecard", 5), seed=0)
    loss = rule.compute(model, torch.zeros(0, 5), torch.zeros(0))
    assert np.isnan(loss)
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in model.parameters())


def test_sampling_ignores_the_public_loop_rng_and_seeds_reproduce():
    a = [b.tolist() for b in DPSGDGradients(1.0, 1.0, 0.1, seed=9).batches(300, 5, np.random.default_rng(0))]
    b = [b.tolist() for b in DPSGDGradients(1.0, 1.0, 0.1, seed=9).batches(300, 5, np.random.default_rng(1))]
    c = [b.tolist() for b in DPSGDGradients(1.0, 1.0, 0.1).batches(300, 5, np.random.default_rng(0))]
    d = [b.tolist() for b in DPSGDGradients(1.0, 1.0, 0.1).batches(300, 5, np.random.default_rng(0))]
    assert a == b
    assert c != d  # seed=None: fresh OS entropy


def test_train_local_with_dpsgd_and_fedprox_learns_and_reports_the_event():
    rng = np.random.default_rng(0)
    x = rng.random((2000, 10)).astype(np.float32)
    y = (x[:, 0] + 0.2 * rng.standard_normal(2000) > 0.5).astype(np.float32)
    model = build_model(ModelSpec("mlp", 10, (16,)), seed=0)
    cfg = LocalTrainConfig(local_epochs=3, batch_size=100, learning_rate=0.01, proximal_mu=0.01)
    rule = DPSGDGradients(0.7, 1.0, 100 / 2000, seed=0)
    with torch.no_grad():
        before = float(nn.functional.binary_cross_entropy_with_logits(model(torch.as_tensor(x)), torch.as_tensor(y)))
    out = train_local(model, x, y, cfg, rule, seed=0)
    with torch.no_grad():
        after = float(nn.functional.binary_cross_entropy_with_logits(model(torch.as_tensor(x)), torch.as_tensor(y)))
    assert out["steps"] == 60 and rule.steps_done == 60
    assert after < before - 0.05
    ev = rule.events(60, "run-7", 3)
    assert (ev.kind, ev.noise_multiplier, ev.sample_rate, ev.steps, ev.run_id, ev.round) == \
        ("train", 0.7, 0.05, 60, "run-7", 3)
    with pytest.raises(ValueError):
        DPSGDGradients(0.0, 1.0, 0.1).events(10)


@pytest.mark.parametrize("engine", ["vectorised", "opacus"])
@pytest.mark.parametrize("poison", ["nan-input", "inf-input", "overflowing-weights"])
def test_a_row_that_turns_non_finite_contributes_nothing_and_the_step_stays_finite(engine, poison):
    """A hostile coordinator's encoder or weights can make one row's forward pass NaN or infinite.
    That row gets clip factor 0 — the zero vector — whichever row it is: the step equals the step
    without that row (σ = 0, the same expected batch size), and is finite."""
    x, y = batch(n=64, d=12)
    base = build_model(ModelSpec("mlp", 12, (8,)), seed=1)
    target = 5
    poisoned = x.clone()
    if poison == "nan-input":
        poisoned[target, 3] = float("nan")
    elif poison == "inf-input":
        poisoned[target, 3] = float("inf")
    else:  # finite weights, but the target's pattern overflows float32
        poisoned[target, 0] = 3e38
    out = {}
    for name, data in (("poisoned", poisoned), ("without", torch.cat([x[:target], x[target + 1:]]))):
        model = copy.deepcopy(base)
        rule = DPSGDGradients(0.0, 1.0, 1.0, engine=engine, expected_batch_size=64.0)
        labels = y if name == "poisoned" else torch.cat([y[:target], y[target + 1:]])
        with torch.no_grad():
            if poison == "overflowing-weights":
                model.layers[0].weight.mul_(1e4)
        rule.compute(model, data, labels)
        out[name] = grads(model)
        rule.close()
    for a, b in zip(out["poisoned"], out["without"]):
        assert torch.isfinite(a).all()
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (a - b).abs().max()


def test_fixed_steps_and_expected_batch_size_come_from_the_released_count():
    """A node draws the accounted number of Poisson samples (from its noisy count n̂), whatever the
    training loop asks, and divides by q·n̂, not by q·n."""
    rule = DPSGDGradients(1.0, 1.0, 0.1, seed=0, steps=7, expected_batch_size=12.5)
    assert len(list(rule.batches(100, 3, np.random.default_rng(0)))) == 7
    assert rule.expected_batch_size == 12.5
