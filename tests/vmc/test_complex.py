"""VMC with a complex wave function ``psi = sqrt(P) exp(i phi)``: eq. 3, log-derivatives, SR and zero variance.

Every check is exact (enumeration of the whole Sz sector, float64) against an independent computation: the
autograd derivative of the Rayleigh quotient with the dense Kronecker Hamiltonian, per-sample autograd, the SR
formulas written out with complex matrices, and the exact ground state from dense diagonalisation.
"""

import numpy as np
import pytest
import torch

from tests.exact_support import resolved_support
from tests.vmc.test_gradient import random_model
from vqnqs.models import TransformerConfig
from vqnqs.physics.basis import all_configurations, configs_to_codes, sector_codes
from vqnqs.physics.exact import dense_hamiltonian
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.vmc.gradient import energy_loss, energy_statistics, log_derivatives
from vqnqs.vmc.local_energy import local_energy
from vqnqs.vmc.optim import sr_direction

# Heisenberg without Marshall's sign rule: the ground state has signs, so the phase matters.
CONFIG = TransformerConfig((2, 3), 1, d_model=8, n_heads=2, n_blocks=1, n_down=3, phase_blocks=1)


def sector(config: TransformerConfig, hamiltonian):
    """The sector's configurations (code order) and the dense Hamiltonian restricted to them."""
    n = hamiltonian.n_sites
    configs = all_configurations(n, config.n_down)  # (D, N)
    codes = sector_codes(n, config.n_down)
    return configs, torch.from_numpy(dense_hamiltonian(hamiltonian)[np.ix_(codes, codes)])


def test_eq3_with_a_phase_equals_gradient_of_exact_energy():
    """2 Re E_P[(E_loc - E)^* O] == d/dθ Re(psi^† H psi) / (psi^† psi), through the surrogate loss (Adam's path)
    and through the SR force 2 Re Ō^† ε of the complex log-derivatives (SR's path)."""
    hamiltonian = build_hamiltonian("heisenberg", "2x3", sign_rule=False)
    model = random_model(CONFIG, std=0.8)
    configs, dense = sector(CONFIG, hamiltonian)
    params = list(model.parameters())

    psi = model.log_psi(configs).exp()  # (D,) complex
    assert psi.is_complex()
    exact_energy = (psi.conj() @ dense.to(psi.dtype) @ psi).real / (psi.conj() @ psi).real
    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(exact_energy, params)])

    log_psi = model.log_psi(configs)
    weights = (2 * log_psi.real).exp().detach()
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    e_loc = local_energy(hamiltonian, model, configs)
    assert e_loc.is_complex() and e_loc.imag.abs().max() > 1e-3  # E_loc itself is complex here
    assert energy_statistics(e_loc, weights).mean == pytest.approx(exact_energy.item(), abs=1e-12)
    surrogate = torch.cat([g.reshape(-1) for g in torch.autograd.grad(energy_loss(log_psi, e_loc, weights), params)])

    o = log_derivatives(model, configs, chunk_size=7)  # (D, Np) complex
    _, force_gradient = sr_direction(o, e_loc, diag_shift=1e-3, weights=weights)

    phase_columns = torch.cat([torch.full((p.numel(),), name.startswith("phase."))
                               for name, p in model.named_parameters()])  # fmt: skip
    assert exact[phase_columns].abs().max() > 1e-3 and exact[~phase_columns].abs().max() > 1e-3
    torch.testing.assert_close(surrogate, exact, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(force_gradient, exact, rtol=1e-9, atol=1e-12)


def test_complex_log_derivatives_match_per_sample_autograd():
    model = random_model(CONFIG, seed=2)
    s = model.sample(5, generator=torch.Generator().manual_seed(1))
    o = log_derivatives(model, s, chunk_size=2)
    assert o.shape == (5, model.n_params) and o.is_complex()
    for i in range(5):
        value = model.log_psi(s[i : i + 1])[0]
        real = torch.autograd.grad(value.real, list(model.parameters()), retain_graph=True)
        imag = torch.autograd.grad(value.imag, list(model.parameters()))
        expected = torch.complex(torch.cat([g.reshape(-1) for g in real]), torch.cat([g.reshape(-1) for g in imag]))
        torch.testing.assert_close(o[i], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("form", ["full", "min"])
def test_sr_with_complex_log_derivatives_is_the_real_part_of_the_complex_metric(form):
    """δ = (Re Ō^† Ō + λ)^{-1} Re Ō^† ε, written with complex matrices, equals both solves of sr_direction."""
    generator = torch.Generator().manual_seed(0)
    n_rows, n_params, shift = 6, 9, 1e-2
    o = torch.randn(n_rows, n_params, dtype=torch.complex128, generator=generator)
    e_loc = torch.randn(n_rows, dtype=torch.complex128, generator=generator)
    weights = torch.rand(n_rows, dtype=torch.float64, generator=generator)
    weights /= weights.sum()
    o_bar = (o - weights.to(o.dtype) @ o) * weights.sqrt()[:, None]
    eps = (e_loc - weights.to(e_loc.dtype) @ e_loc) * weights.sqrt()
    metric = (o_bar.conj().T @ o_bar).real
    force = (o_bar.conj().T @ eps).real
    expected = torch.linalg.solve(metric + shift * torch.eye(n_params, dtype=torch.float64), force)
    direction, gradient = sr_direction(o, e_loc, shift, weights, form=form)
    torch.testing.assert_close(direction, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gradient, 2 * force, rtol=1e-12, atol=1e-12)


def exact_ground_state_log_psi(hamiltonian, n_down: int | None, tol: float):
    """``log psi`` of the exact ground state (dense diagonalisation) as a callable ``(K, N) -> (K,)`` complex,
    written as ``log sqrt(P) + i phi`` with ``P = |psi_0|^2`` and ``phi = arg psi_0``; E_0; and the mask of
    the sector's configurations whose amplitude is resolved to local-energy error ``tol``."""
    n = hamiltonian.n_sites
    codes = sector_codes(n, n_down)
    matrix = dense_hamiltonian(hamiltonian)[np.ix_(codes, codes)]
    energies, vectors = np.linalg.eigh(matrix)
    support = resolved_support(matrix, energies[:2], vectors[:, 0], tol)
    psi0 = torch.from_numpy(vectors[:, 0]).to(torch.complex128)
    psi0 = psi0 * np.exp(0.7j)  # an arbitrary global phase: the local energy cannot depend on it
    table = torch.full((2**n,), float("-inf"), dtype=torch.complex128)
    table[torch.from_numpy(codes)] = torch.complex(0.5 * (psi0.abs() ** 2).log(), psi0.angle())

    def log_psi(s: torch.Tensor) -> torch.Tensor:
        return table[configs_to_codes(s)]

    return log_psi, float(energies[0]), torch.from_numpy(support)


@pytest.mark.parametrize(
    "size, boundary, j2",
    [("2x3", "open", 0.0), ("3x3", "open", 0.5), ("2x4", "open", 0.5), ("2x4", "periodic", 0.5)],
)
def test_zero_variance_of_the_exact_ground_state_with_its_phase(size, boundary, j2):
    """E_loc(s) = E_0 on every configuration of the exact ground state's resolved support: its signs are not
    Marshall's here (no sign rule; J1-J2 is frustrated), so the phase is what makes the variance vanish. Each
    case has a non-degenerate ground state (3x3 periodic does not: its basis would be the BLAS's choice)."""
    hamiltonian = build_hamiltonian("heisenberg", size, boundary, sign_rule=False, j2=j2)
    n_down = hamiltonian.n_sites // 2
    log_psi, e0, support = exact_ground_state_log_psi(hamiltonian, n_down, tol=1e-9)
    configs = all_configurations(hamiltonian.n_sites, n_down)[support]
    e_loc = local_energy(hamiltonian, log_psi, configs)
    assert (e_loc - e0).abs().max() < 1e-9
    assert log_psi(configs).imag.max() - log_psi(configs).imag.min() > 3.0  # signs differ


@pytest.mark.parametrize("form", ["full", "min"])
def test_sr_of_two_networks_splits_exactly(form):
    """Columns purely real (amplitude) or purely imaginary (phase): the split solve equals the stacked one."""
    generator = torch.Generator().manual_seed(3)
    n_rows, n_params, shift = 7, 10, 1e-2
    real = torch.randn(n_rows, n_params, dtype=torch.float64, generator=generator)
    phase_columns = torch.arange(n_params) >= 6
    o = torch.complex(real.masked_fill(phase_columns, 0.0), real.masked_fill(~phase_columns, 0.0))
    e_loc = torch.randn(n_rows, dtype=torch.complex128, generator=generator)
    previous = torch.randn(n_params, dtype=torch.float64, generator=generator)
    split = sr_direction(o, e_loc, shift, previous=previous, momentum=0.5, form=form)
    # The same problem with one extra nonzero imaginary entry in an amplitude column is not separable: the
    # stacked solve (the formula of the test above), equal to the split one up to the tiny entry.
    tiny = o.clone()
    tiny[0, 0] += 1e-13j
    stacked = sr_direction(tiny, e_loc, shift, previous=previous, momentum=0.5, form=form)
    for a, b in zip(split, stacked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
