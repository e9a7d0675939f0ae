import pytest

from vqnqs.physics.lattice import Lattice, format_size, parse_size


@pytest.mark.parametrize("text, shape", [("32", (32,)), ("6x6", (6, 6)), ("4x6", (4, 6)), (" 8 ", (8,))])
def test_parse_size_round_trip(text, shape):
    assert parse_size(text) == shape
    assert format_size(shape) == text.strip()


@pytest.mark.parametrize("text", ["0", "3x", "-4", "1", "4x0", "x4", "4x4x4", "abc", ""])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize(
    "size, boundary, n_bonds",
    [
        ("8", "open", 7),
        ("8", "periodic", 8),
        ("2", "periodic", 1),  # a 2-site ring has one bond, not two
        ("4x4", "open", 24),  # 2 * 4 * 3
        ("4x4", "periodic", 32),  # 2 * 16
        ("2x4", "periodic", 12),  # the length-2 direction gets no wrap-around bond
        ("3x5", "open", 22),  # 3 * 4 + 2 * 5
    ],
)
def test_bond_counts(size, boundary, n_bonds):
    lattice = Lattice.from_size(size, boundary)
    assert len(lattice.bonds) == n_bonds
    assert len(set(lattice.bonds)) == n_bonds
    assert all(0 <= i < j < lattice.n_sites for i, j in lattice.bonds)


def test_square_bonds_are_nearest_neighbours_row_major():
    lattice = Lattice.from_size("3x4")  # site = row * 4 + col
    assert (0, 1) in lattice.bonds and (0, 4) in lattice.bonds
    assert (3, 4) not in lattice.bonds  # end of row 0 is not next to start of row 1
    periodic = Lattice.from_size("3x4", "periodic")
    assert (0, 3) in periodic.bonds and (0, 8) in periodic.bonds


@pytest.mark.parametrize(
    "size, boundary, bipartite",
    [
        ("5", "open", True),
        ("5", "periodic", False),
        ("6", "periodic", True),
        ("3x3", "open", True),
        ("3x3", "periodic", False),
        ("4x6", "periodic", True),
    ],
)
def test_bipartite(size, boundary, bipartite):
    assert Lattice.from_size(size, boundary).is_bipartite is bipartite


def test_sublattice_is_checkerboard():
    assert Lattice.from_size("2x3").sublattice == (0, 1, 0, 1, 0, 1)
    assert Lattice.from_size("3x2").sublattice == (0, 1, 1, 0, 0, 1)
