"""The J1-J2 Heisenberg model: diagonal bonds, connected elements against Kronecker products, exact energies."""

import numpy as np
import pytest
import torch

from tests.physics.test_hamiltonian import matrix_from_connected
from vqnqs.physics.exact import dense_hamiltonian, lanczos_ground_state
from vqnqs.physics.hamiltonian import Heisenberg, build_hamiltonian
from vqnqs.physics.lattice import Lattice
from vqnqs.physics.reference import compute_reference, plan_method


@pytest.mark.parametrize(
    "size, boundary, n_diagonal",
    [
        ("2x2", "open", 2),
        ("2x2", "periodic", 2),  # no wrap along a length-2 dimension: nothing doubled
        ("3x3", "open", 8),  # 2 (L - 1) (W - 1)
        ("3x3", "periodic", 18),  # 2 L W
        ("4x4", "open", 18),
        ("4x4", "periodic", 32),
        ("2x4", "periodic", 8),  # periodic along the 4 only: 2 * 1 * 4
        ("3x5", "open", 16),
        ("1x5", "periodic", 0),
        ("8", "periodic", 0),  # a chain has none
    ],
)
def test_diagonal_bond_counts(size, boundary, n_diagonal):
    lattice = Lattice.from_size(size, boundary)
    bonds = lattice.diagonal_bonds
    assert len(bonds) == len(set(bonds)) == n_diagonal
    assert all(0 <= i < j < lattice.n_sites for i, j in bonds)
    assert not set(bonds) & set(lattice.bonds)


@pytest.mark.parametrize("size, boundary", [("3x4", "open"), ("3x4", "periodic"), ("4x5", "periodic"), ("2x3", "open")])
def test_diagonal_bonds_are_diagonal_steps(size, boundary):
    """Every diagonal bond joins sites one row and one column apart (around the torus when periodic)."""
    lattice = Lattice.from_size(size, boundary)
    rows, cols = lattice.shape

    def distance(a: int, b: int, extent: int) -> int:
        step = abs(a - b)
        return min(step, extent - step) if lattice.periodic and extent > 2 else step

    for i, j in lattice.diagonal_bonds:
        (ri, ci), (rj, cj) = divmod(i, cols), divmod(j, cols)
        assert distance(ri, rj, rows) == 1 and distance(ci, cj, cols) == 1, (i, j)
        assert lattice.sublattice[i] == lattice.sublattice[j] or not lattice.is_bipartite


J1J2_CASES = [
    ("2x2", "open", 0.5, True),
    ("2x3", "open", 0.5, True),
    ("2x3", "periodic", 0.3, False),
    ("2x4", "open", 0.3, True),
    ("2x4", "periodic", 0.5, True),
    ("2x4", "periodic", 0.5, False),
    ("3x3", "open", 0.5, False),
    ("3x3", "periodic", 0.5, False),  # frustrated already at J2 = 0: no sign rule
    ("2x5", "open", 0.3, True),
    ("2x5", "periodic", -0.4, False),
]


@pytest.mark.parametrize("size, boundary, j2, sign_rule", J1J2_CASES)
def test_connected_matches_kronecker(size, boundary, j2, sign_rule):
    hamiltonian = build_hamiltonian("heisenberg", size, boundary, coupling=0.9, sign_rule=sign_rule, j2=j2)
    lattice = hamiltonian.lattice
    assert hamiltonian.max_connections == 1 + len(lattice.bonds) + len(lattice.diagonal_bonds)
    np.testing.assert_allclose(matrix_from_connected(hamiltonian), dense_hamiltonian(hamiltonian), atol=1e-12)


def test_float32_and_uint8_spins():
    hamiltonian = build_hamiltonian("heisenberg", "2x3", j2=0.5)
    np.testing.assert_allclose(
        matrix_from_connected(hamiltonian, torch.float32, torch.uint8), dense_hamiltonian(hamiltonian), atol=1e-6
    )


@pytest.mark.parametrize("size, boundary", [("2x4", "periodic"), ("2x5", "open")])
def test_marshall_rotation_keeps_the_spectrum_but_not_stoquasticity(size, boundary):
    rotated = dense_hamiltonian(build_hamiltonian("heisenberg", size, boundary, sign_rule=True, j2=0.5))
    plain = dense_hamiltonian(build_hamiltonian("heisenberg", size, boundary, sign_rule=False, j2=0.5))
    np.testing.assert_allclose(np.linalg.eigvalsh(rotated), np.linalg.eigvalsh(plain), atol=1e-10)
    off_diagonal = rotated - np.diag(np.diag(rotated))
    assert off_diagonal.max() == pytest.approx(0.25)  # the diagonal hops keep +J2/2
    assert off_diagonal.min() == pytest.approx(-0.5)  # the nearest-neighbour ones become -J1/2


@pytest.mark.parametrize("size, boundary", [("4x4", "open"), ("4x4", "periodic"), ("10", "open"), ("3x3", "periodic")])
def test_j2_zero_is_the_plain_model(size, boundary):
    lattice = Lattice.from_size(size, boundary)
    plain = Heisenberg(lattice)
    explicit = build_hamiltonian("heisenberg", size, boundary, j2=0.0)
    assert explicit.max_connections == plain.max_connections == 1 + len(lattice.bonds)
    assert explicit.describe() == plain.describe() and "J2" not in explicit.describe()
    s = torch.randint(0, 2, (64, lattice.n_sites), generator=torch.Generator().manual_seed(3))
    a, b = plain.connected(s), explicit.connected(s)
    assert torch.equal(a.configs, b.configs) and torch.equal(a.elements, b.elements) and torch.equal(a.valid, b.valid)


@pytest.mark.parametrize("j2", [0.3, 0.5, 1.0, 1.5, -0.4])
@pytest.mark.parametrize("boundary", ["open", "periodic"])
def test_plaquette_closed_form(j2, boundary):
    """2x2: ``H = J1 A.B + J2 (S0.S3 + S1.S2)`` with ``A = S0 + S3``, ``B = S1 + S2`` gives
    ``E = J1/2 [S(S+1) - a(a+1) - b(b+1)] + J2/2 [a(a+1) + b(b+1) - 3]``; minimised over a, b, S."""
    levels = [
        0.5 * (s * (s + 1) - a * (a + 1) - b * (b + 1)) + 0.5 * j2 * (a * (a + 1) + b * (b + 1) - 3)
        for a in (0, 1)
        for b in (0, 1)
        for s in range(abs(a - b), a + b + 1)
    ]
    hamiltonian = build_hamiltonian("heisenberg", "2x2", boundary, j2=j2)
    assert np.linalg.eigvalsh(dense_hamiltonian(hamiltonian))[0] == pytest.approx(min(levels), abs=1e-12)
    assert lanczos_ground_state(hamiltonian).energy == pytest.approx(min(levels), abs=1e-12)


@pytest.mark.parametrize(
    "size, boundary, j2",
    [("3x3", "open", 0.5), ("3x3", "periodic", 0.5), ("2x4", "periodic", 0.3), ("2x5", "open", 0.5)],
)
def test_lanczos_matches_dense(size, boundary, j2):
    hamiltonian = build_hamiltonian("heisenberg", size, boundary, j2=j2)
    exact = np.linalg.eigvalsh(dense_hamiltonian(hamiltonian))[0]
    assert lanczos_ground_state(hamiltonian).energy == pytest.approx(exact, abs=1e-9)


# Regression values, each found twice independently: Lanczos in the Sz = 0 sector from connected(), and ARPACK
# on the full 2^16 space of a sparse Hamiltonian built from Kronecker products (agreeing to 1e-15 per site).
# The periodic one agrees with the 4x4 torus value in the J1-J2 literature (E0/N = -0.52862 at J2 = 0.5).
@pytest.mark.parametrize(
    "boundary, j2, per_site",
    [("open", 0.5, -0.469097309380), ("periodic", 0.5, -0.528620209462), ("open", 0.0, -0.5743254416)],
)
def test_4x4_values(boundary, j2, per_site):
    ground = lanczos_ground_state(build_hamiltonian("heisenberg", "4x4", boundary, j2=j2))
    assert ground.energy / 16 == pytest.approx(per_site, abs=1e-10)


def test_reference_of_j1j2_is_lanczos_and_records_j2():
    record = compute_reference(build_hamiltonian("heisenberg", "2x4", j2=0.5))
    assert record["method"] == "lanczos" and record["hamiltonian"]["J2"] == 0.5
    assert record["energy_per_site"] == pytest.approx(-0.455228734321, abs=1e-10)


@pytest.mark.parametrize("method", ["auto", "literature", "lanczos"])
def test_large_j1j2_has_no_reference(method):
    """Beyond exact diagonalisation a J1-J2 lattice the literature table lacks (6x6 OPEN at J2 = 0.5) has no value."""
    with pytest.raises(ValueError, match=r"j2 = 0\.5") as refused:
        plan_method(build_hamiltonian("heisenberg", "6x6", j2=0.5), method)
    assert "6x6" in str(refused.value)


def test_6x6_periodic_j1j2_takes_its_literature_row():
    """The one J1-J2 row of the table: Schulz et al.'s ED of the 6x6 torus at J2 = 0.5; J2 = 0.4 has none."""
    assert plan_method(build_hamiltonian("heisenberg", "6x6", "periodic", j2=0.5)) == "literature"
    record = compute_reference(build_hamiltonian("heisenberg", "6x6", "periodic", j2=0.5))
    assert record["energy_per_site"] == -0.503810 and record["hamiltonian"]["J2"] == 0.5
    with pytest.raises(ValueError, match=r"j2 = 0\.4"):
        plan_method(build_hamiltonian("heisenberg", "6x6", "periodic", j2=0.4))


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("heisenberg", "8"), {"j2": 0.5}, "square lattice"),
        (("tfim", "8"), {"j2": 0.5}, "j2"),
        (("heisenberg", "4x4"), {"j2": float("nan")}, "j2"),
        (("heisenberg", "4x4"), {"j2": float("inf")}, "j2"),
    ],
)
def test_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_hamiltonian(*args, **kwargs)
