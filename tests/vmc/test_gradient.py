"""Eq. 3 against the derivative of the exact energy, and the per-sample log-derivatives."""

import numpy as np
import pytest
import torch

from vqnqs.models import AutoregressiveTransformer, TransformerConfig
from vqnqs.physics.basis import all_configurations, sector_codes
from vqnqs.physics.exact import dense_hamiltonian
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.vmc.gradient import energy_loss, energy_statistics, log_derivatives
from vqnqs.vmc.local_energy import local_energy


def random_model(config: TransformerConfig, seed: int = 0, std: float = 0.3) -> AutoregressiveTransformer:
    """float64 model with large random weights: far from uniform, so gradients are far from zero."""
    model = AutoregressiveTransformer(config).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * std)
    return model


CASES = [
    pytest.param("tfim", "4", TransformerConfig((4,), 2, d_model=8, n_heads=2, n_blocks=1), id="tfim4"),
    pytest.param(
        "heisenberg", "2x2", TransformerConfig((2, 2), 1, d_model=8, n_heads=2, n_blocks=1, n_down=2), id="heis2x2-sz"
    ),
]


@pytest.mark.parametrize("system, size, config", CASES)
def test_eq3_equals_gradient_of_exact_energy(system, size, config):
    """2 Re E_P[(E_loc - E) d log psi] over all configurations == d/dθ <psi|H|psi> / <psi|psi> (dense H)."""
    hamiltonian = build_hamiltonian(system, size)
    model = random_model(config)
    n = hamiltonian.n_sites
    configs = all_configurations(n, config.n_down)  # (D, N), the sector's basis in code order
    codes = sector_codes(n, config.n_down)
    dense = torch.from_numpy(dense_hamiltonian(hamiltonian)[np.ix_(codes, codes)])  # H conserves Sz

    # Exact: differentiate the Rayleigh quotient of the (normalised) amplitudes through autograd.
    psi = model.log_psi(configs).exp()
    exact_energy = psi @ dense @ psi / (psi @ psi)
    exact_grad = torch.autograd.grad(exact_energy, list(model.parameters()))

    # VMC formula with exact weights P(s) = |psi(s)|^2 and local energies from the connected elements.
    log_psi = model.log_psi(configs)
    weights = (2 * log_psi).exp().detach()
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    e_loc = local_energy(hamiltonian, model.log_psi, configs)
    assert energy_statistics(e_loc, weights).mean == pytest.approx(exact_energy.item(), abs=1e-12)
    vmc_grad = torch.autograd.grad(energy_loss(log_psi, e_loc, weights), list(model.parameters()))

    flat_exact = torch.cat([g.reshape(-1) for g in exact_grad])
    flat_vmc = torch.cat([g.reshape(-1) for g in vmc_grad])
    assert flat_exact.abs().max() > 1e-3  # a real test: the gradient is not zero
    torch.testing.assert_close(flat_vmc, flat_exact, rtol=1e-9, atol=1e-12)


def test_log_derivatives_match_per_sample_autograd():
    config = TransformerConfig((6,), 2, d_model=8, n_heads=2, n_blocks=1)
    model = random_model(config)
    s = model.sample(5, generator=torch.Generator().manual_seed(1))
    o = log_derivatives(model, s, chunk_size=2)  # chunks of 2, 2, 1
    assert o.shape == (5, model.n_params)
    for i in range(5):
        row = torch.autograd.grad(model.log_psi(s[i : i + 1])[0], list(model.parameters()))
        torch.testing.assert_close(o[i], torch.cat([g.reshape(-1) for g in row]), rtol=1e-10, atol=1e-12)


def test_energy_statistics_of_samples():
    e_loc = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)
    stats = energy_statistics(e_loc)
    assert stats.mean == 3.0
    assert stats.variance == pytest.approx(3.5)  # population variance: mean((e - 3)^2)
    assert stats.error == pytest.approx((3.5 / 4) ** 0.5)
    # The same batch as distinct values with frequencies (how the trainer evaluates it).
    distinct = energy_statistics(torch.tensor([1.0, 2.0, 6.0, 3.0]), torch.tensor([0.25, 0.25, 0.25, 0.25]), 4)
    expected = (stats.mean, stats.variance, stats.error)
    assert (distinct.mean, distinct.variance, distinct.error) == pytest.approx(expected)
    repeated = energy_statistics(torch.tensor([1.0, 3.0]), torch.tensor([0.75, 0.25]), 8)
    assert repeated.mean == 1.5 and repeated.variance == pytest.approx(0.75)
    assert repeated.error == pytest.approx((0.75 / 8) ** 0.5)
