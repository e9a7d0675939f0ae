"""Connected elements against dense Hamiltonians built from Kronecker products of Pauli matrices."""

import numpy as np
import pytest
import torch

from vqnqs.physics.basis import all_configurations, configs_to_codes
from vqnqs.physics.exact import dense_hamiltonian
from vqnqs.physics.hamiltonian import build_hamiltonian

CASES = [
    ("tfim", "10", "open", {"gamma": 0.7, "coupling": 1.3}),
    ("tfim", "9", "periodic", {"gamma": 1.0}),
    ("tfim", "6", "open", {"gamma": 0.0}),
    ("heisenberg", "10", "open", {"sign_rule": True}),
    ("heisenberg", "10", "open", {"sign_rule": False}),
    ("heisenberg", "10", "periodic", {"sign_rule": True}),
    ("heisenberg", "2x4", "open", {"sign_rule": True}),
    ("heisenberg", "2x4", "periodic", {"sign_rule": False}),
    ("heisenberg", "2x5", "open", {"sign_rule": False, "coupling": 0.8}),
    ("heisenberg", "3x3", "open", {"sign_rule": True}),
    ("heisenberg", "3x3", "periodic", {"sign_rule": False}),  # frustrated: no sign rule possible
]


def matrix_from_connected(hamiltonian, dtype=torch.float64, spin_dtype=torch.int64) -> np.ndarray:
    """Accumulate H[s, s'] from the connected elements of every basis state."""
    n = hamiltonian.n_sites
    configs = all_configurations(n, dtype=spin_dtype)  # (2^N, N), row r has code r
    conn = hamiltonian.connected(configs, dtype=dtype)
    assert conn.configs.shape == (2**n, hamiltonian.max_connections, n)
    assert conn.configs.dtype == spin_dtype and conn.elements.dtype == dtype
    assert torch.equal(conn.configs[:, 0], configs), "slot 0 must be the diagonal"
    rows = torch.arange(2**n).unsqueeze(1).expand_as(conn.elements)
    cols = configs_to_codes(conn.configs)
    matrix = torch.zeros(2**n, 2**n, dtype=torch.float64)
    weights = torch.where(conn.valid, conn.elements.to(torch.float64), 0.0)
    matrix.index_put_((rows.reshape(-1), cols.reshape(-1)), weights.reshape(-1), accumulate=True)
    return matrix.numpy()


@pytest.mark.parametrize("system, size, boundary, kwargs", CASES)
def test_connected_matches_kronecker(system, size, boundary, kwargs):
    hamiltonian = build_hamiltonian(system, size, boundary, **kwargs)
    np.testing.assert_allclose(matrix_from_connected(hamiltonian), dense_hamiltonian(hamiltonian), atol=1e-12)


def test_float32_and_uint8_spins():
    hamiltonian = build_hamiltonian("heisenberg", "2x3")
    np.testing.assert_allclose(
        matrix_from_connected(hamiltonian, torch.float32, torch.uint8), dense_hamiltonian(hamiltonian), atol=1e-6
    )


def test_invalid_slots_have_zero_elements_and_valid_exchanges_keep_sz():
    hamiltonian = build_hamiltonian("heisenberg", "3x4")
    s = torch.randint(0, 2, (64, 12), generator=torch.Generator().manual_seed(0))
    conn = hamiltonian.connected(s)
    assert torch.all(conn.elements[~conn.valid] == 0)
    n_down = conn.configs.sum(-1)  # (B, M)
    assert torch.all(n_down[conn.valid] == s.sum(-1).unsqueeze(1).expand_as(n_down)[conn.valid])


def test_sign_rule_spectrum_unchanged():
    with_rule = dense_hamiltonian(build_hamiltonian("heisenberg", "2x4", sign_rule=True))
    without = dense_hamiltonian(build_hamiltonian("heisenberg", "2x4", sign_rule=False))
    np.testing.assert_allclose(np.linalg.eigvalsh(with_rule), np.linalg.eigvalsh(without), atol=1e-10)
    off_diagonal = with_rule - np.diag(np.diag(with_rule))
    assert off_diagonal.max() <= 0, "Marshall-rotated Heisenberg must be stoquastic"


@pytest.mark.parametrize(
    "args, match",
    [
        (("ising", "8"), "system"),
        (("tfim", "4x4"), "size"),
        (("tfim", "0"), "size"),
        (("heisenberg", "3x3", "periodic", {"sign_rule": True}), "sign_rule"),
        (("tfim", "8", "open", {"gamma": float("nan")}), "gamma"),
        (("heisenberg", "4x4", "twisted"), "boundary"),
    ],
)
def test_bad_input(args, match):
    positional = [a for a in args if not isinstance(a, dict)]
    kwargs = next((a for a in args if isinstance(a, dict)), {})
    with pytest.raises(ValueError, match=match):
        build_hamiltonian(*positional, **kwargs)
