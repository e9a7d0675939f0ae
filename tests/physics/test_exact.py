"""Exact references: free fermions and Lanczos against dense ED and known closed forms."""

import numpy as np
import pytest
import torch

from tests.exact_support import resolved_support, two_lowest
from vqnqs.physics.basis import codes_to_configs, configs_to_codes
from vqnqs.physics.exact import (
    dense_hamiltonian,
    lanczos_ground_state,
    sparse_hamiltonian,
    tfim_critical_energy,
    tfim_free_fermion_energy,
)
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.vmc.local_energy import local_energy


@pytest.mark.parametrize("n", [2, 5, 8, 11])  # odd and even lengths; the Kronecker build costs 4^N
@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_free_fermions_match_dense_ed(n, gamma):
    hamiltonian = build_hamiltonian("tfim", str(n), gamma=gamma)
    exact = np.linalg.eigvalsh(dense_hamiltonian(hamiltonian))[0]
    assert tfim_free_fermion_energy(n, gamma) == pytest.approx(exact, abs=1e-10)


def test_free_fermions_with_coupling():
    hamiltonian = build_hamiltonian("tfim", "9", gamma=0.7, coupling=1.9)
    exact = np.linalg.eigvalsh(dense_hamiltonian(hamiltonian))[0]
    assert tfim_free_fermion_energy(9, 0.7, 1.9) == pytest.approx(exact, abs=1e-10)


@pytest.mark.parametrize("n, energy", [(32, -40.3843131612), (384, -488.5609453922)])
def test_critical_chain_closed_form(n, energy):
    assert tfim_critical_energy(n) == pytest.approx(energy, abs=1e-9)
    assert tfim_free_fermion_energy(n) == pytest.approx(energy, abs=1e-9)


def test_heisenberg_4x4_open():
    ground = lanczos_ground_state(build_hamiltonian("heisenberg", "4x4"))
    assert ground.energy == pytest.approx(-9.189207065, abs=1e-8)
    assert ground.energy / 16 == pytest.approx(-0.5743254416, abs=1e-9)
    assert ground.n_down == 8 and len(ground.codes) == 12870


@pytest.mark.parametrize(
    "system, size, boundary, kwargs",
    [("heisenberg", "3x3", "periodic", {}), ("heisenberg", "2x5", "open", {}), ("tfim", "10", "periodic", {})],
)
def test_lanczos_matches_dense(system, size, boundary, kwargs):
    hamiltonian = build_hamiltonian(system, size, boundary, **kwargs)
    exact = np.linalg.eigvalsh(dense_hamiltonian(hamiltonian))[0]
    assert lanczos_ground_state(hamiltonian).energy == pytest.approx(exact, abs=1e-9)


@pytest.mark.parametrize(
    "system, size, boundary",
    [
        ("heisenberg", "3x4", "open"),
        ("heisenberg", "10", "periodic"),
        ("tfim", "10", "open"),
        ("tfim", "8", "periodic"),
    ],
)
def test_zero_variance_of_exact_ground_state(system, size, boundary):
    """E_loc(s) = E0 for every s of the resolved support (amplitudes the Lanczos vector pins down to the
    tolerance, given its residual and the gap), through the connected-element API."""
    hamiltonian = build_hamiltonian(system, size, boundary)
    ground = lanczos_ground_state(hamiltonian)
    n = hamiltonian.n_sites
    amplitude = dict(zip(ground.codes.tolist(), ground.vector.tolist(), strict=True))

    def log_psi(s: torch.Tensor) -> torch.Tensor:
        values = torch.tensor([amplitude.get(c, 0.0) for c in configs_to_codes(s).tolist()], dtype=torch.float64)
        return torch.log(values.to(torch.complex128))  # complex: handles negative amplitudes

    tol = 1e-7 * abs(ground.energy)
    matrix, _ = sparse_hamiltonian(hamiltonian, ground.n_down)
    support = resolved_support(matrix, two_lowest(matrix), ground.vector, tol)
    samples = codes_to_configs(torch.from_numpy(ground.codes[support]), n)
    e_loc = local_energy(hamiltonian, log_psi, samples, chunk_size=97)
    np.testing.assert_allclose(e_loc.real.numpy(), ground.energy, atol=tol)
    np.testing.assert_allclose(e_loc.imag.numpy(), 0.0, atol=tol)


def test_a_degenerate_ground_state_has_no_resolved_support():
    """3x3 periodic Heisenberg (Sz = 1/2) has a degenerate ground state: which vector of the subspace eigh
    returns is the BLAS's choice, so a zero-variance test on it is refused rather than machine-dependent."""
    hamiltonian = build_hamiltonian("heisenberg", "3x3", "periodic")
    matrix, _ = sparse_hamiltonian(hamiltonian, hamiltonian.n_sites // 2)
    energies, vectors = np.linalg.eigh(matrix.toarray())
    with pytest.raises(AssertionError, match="degenerate ground state"):
        resolved_support(matrix, energies[:2], vectors[:, 0], tol=1e-9)
