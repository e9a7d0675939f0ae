"""SR: the minSR and full-S forms, their large-shift limit, and the schedules."""

import math

import numpy as np
import pytest
import torch

from vqnqs.models import AutoregressiveTransformer, TransformerConfig
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.vmc.gradient import energy_loss, log_derivatives
from vqnqs.vmc.local_energy import local_energy
from vqnqs.vmc.optim import gram, scheduled, sr_direction


def random_problem(n_samples: int, n_params: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    o = torch.randn(n_samples, n_params, generator=generator, dtype=torch.float64)
    e_loc = torch.randn(n_samples, generator=generator, dtype=torch.float64)
    return o, e_loc


@pytest.mark.parametrize("n_samples, n_params", [(12, 40), (40, 12)])
def test_min_and_full_forms_agree_with_numpy(n_samples, n_params):
    o, e_loc = random_problem(n_samples, n_params)
    shift = 1e-2
    full, grad_full = sr_direction(o, e_loc, shift, form="full")
    minimal, grad_min = sr_direction(o, e_loc, shift, form="min")
    torch.testing.assert_close(full, minimal, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad_full, grad_min)
    # Independent statement of Sorella's update: (S + λ) δ = F with centred, 1/sqrt(Ns)-scaled O and ε.
    o_np, e_np = o.numpy(), e_loc.numpy()
    o_bar = (o_np - o_np.mean(0)) / math.sqrt(n_samples)
    eps = (e_np - e_np.mean()) / math.sqrt(n_samples)
    expected = np.linalg.solve(o_bar.T @ o_bar + shift * np.eye(n_params), o_bar.T @ eps)
    np.testing.assert_allclose(full.numpy(), expected, rtol=1e-9, atol=1e-12)
    auto, _ = sr_direction(o, e_loc, shift)
    torch.testing.assert_close(auto, minimal if n_params > n_samples else full)


@pytest.mark.parametrize("form", ["full", "min"])
def test_momentum_solves_the_regularised_least_squares(form):
    """SPRING: δ = argmin |Ō δ - ε|^2 + λ |δ - μ δ_prev|^2, i.e. (S + λ) δ = F + λ μ δ_prev."""
    o, e_loc = random_problem(12, 40)
    previous = torch.randn(40, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    shift, momentum = 1e-2, 0.9
    direction, _ = sr_direction(o, e_loc, shift, previous=previous, momentum=momentum, form=form)
    o_np, e_np = o.numpy(), e_loc.numpy()
    o_bar = (o_np - o_np.mean(0)) / math.sqrt(12)
    eps = (e_np - e_np.mean()) / math.sqrt(12)
    rhs = o_bar.T @ eps + shift * momentum * previous.numpy()
    expected = np.linalg.solve(o_bar.T @ o_bar + shift * np.eye(40), rhs)
    np.testing.assert_allclose(direction.numpy(), expected, rtol=1e-8, atol=1e-10)
    plain, _ = sr_direction(o, e_loc, shift, form=form)
    assert not torch.allclose(direction, plain)  # the momentum term matters here


def test_distinct_samples_with_frequencies_equal_the_full_batch():
    """The trainer evaluates each distinct sample once, weighted by its frequency: same δ, same gradient."""
    o_distinct, e_distinct = random_problem(5, 30, seed=1)
    counts = torch.tensor([3, 1, 4, 1, 7])
    o_full, e_full = o_distinct.repeat_interleave(counts, dim=0), e_distinct.repeat_interleave(counts)
    weights = counts.double() / counts.sum()
    for form in ("full", "min"):
        expected = sr_direction(o_full, e_full, 1e-3, form=form)
        weighted = sr_direction(o_distinct, e_distinct, 1e-3, weights=weights, form=form)
        for a, b in zip(weighted, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_large_shift_gives_gradient_over_shift():
    """λ -> inf: δ -> F / λ with F = (1/2) dE/dθ, the eq. 3 gradient from the surrogate loss."""
    hamiltonian = build_hamiltonian("tfim", "6")
    model = AutoregressiveTransformer(TransformerConfig((6,), 2, d_model=8, n_heads=2, n_blocks=1)).double()
    s = model.sample(16, generator=torch.Generator().manual_seed(0))
    e_loc = local_energy(hamiltonian, model.log_psi, s)
    loss = energy_loss(model.log_psi(s), e_loc)
    gradient = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])
    shift = 1e8
    direction, sr_gradient = sr_direction(log_derivatives(model, s), e_loc, shift)
    torch.testing.assert_close(sr_gradient, gradient, rtol=1e-9, atol=1e-12)
    assert gradient.abs().max() > 1e-3
    torch.testing.assert_close(direction * shift, gradient / 2, rtol=1e-5, atol=1e-9)


def test_schedules():
    for kind in ("cosine", "exponential"):
        assert scheduled(1, 100, 0.1, 0.001, kind) == pytest.approx(0.1)
        assert scheduled(100, 100, 0.1, 0.001, kind) == pytest.approx(0.001)
        values = [scheduled(step, 100, 0.1, 0.001, kind) for step in range(1, 101)]
        assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert scheduled(50, 100, 0.1, 0.001, "constant") == 0.1
    assert scheduled(50, 100, 0.1, 0.001, "cosine") == pytest.approx(0.0505, rel=0.05)
    # Warmup: linear ramp to the peak, then the decay starts from the peak.
    assert [scheduled(step, 100, 0.1, 0.0, "cosine", warmup=4) for step in (1, 2, 4, 5)] == pytest.approx(
        [0.025, 0.05, 0.1, 0.1]
    )
    with pytest.raises(ValueError, match="schedule"):
        scheduled(1, 10, 0.1, 0.01, "linear")


@pytest.mark.parametrize("n_samples", [1, 5, 128, 300])
def test_gram_from_its_lower_triangle_is_the_full_product(n_samples):
    """The minSR matrix Ō Ō^T, built block by block from its lower triangle, is the product itself (float64)."""
    o = torch.randn(n_samples, 70, generator=torch.Generator().manual_seed(2), dtype=torch.float32)
    product = gram(o)
    assert product.dtype == torch.float64
    torch.testing.assert_close(product, (o.double() @ o.double().T), rtol=1e-5, atol=1e-5)
    assert torch.equal(product, product.T)
