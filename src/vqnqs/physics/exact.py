"""Exact ground-state energies: free fermions, sparse Lanczos, and dense Kronecker products.

- :func:`tfim_free_fermion_energy` — open TFIM chain of any length and coupling (Jordan-Wigner).
- :func:`lanczos_ground_state` — sparse matrix built from the Hamiltonian's own connected
  elements, restricted to a total-Sz sector where the model conserves it, diagonalised by
  ARPACK's Lanczos (``scipy.sparse.linalg.eigsh``).
- :func:`dense_hamiltonian` — the full ``2^N x 2^N`` matrix from Kronecker products of Pauli
  matrices, written independently of ``connected()`` so that tests can check one against the other.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import reduce

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
import torch

from vqnqs.physics.basis import codes_to_configs, configs_to_codes, sector_codes
from vqnqs.physics.hamiltonian import Hamiltonian, Heisenberg, TransverseFieldIsing

# ---------------------------------------------------------------------------------------------
# Free fermions
# ---------------------------------------------------------------------------------------------


def tfim_free_fermion_energy(n_sites: int, gamma: float = 1.0, coupling: float = 1.0) -> float:
    """Ground-state energy of the open chain ``H = -J sum Z_i Z_i+1 - Gamma sum X_i``.

    Jordan-Wigner maps it to free fermions ``H = sum_k e_k (n_k - 1/2)`` whose single-particle
    energies are ``e_k = 2 sigma_k``, with ``sigma_k`` the singular values of the N x N
    bidiagonal matrix with ``Gamma`` on the diagonal and ``J`` above it (Pfeuty 1970;
    Lieb, Schultz & Mattis 1961). Hence ``E0 = -sum_k sigma_k``. At ``J = Gamma = 1`` this
    equals ``1 - csc(pi / (2 (2N + 1)))``.
    """
    if n_sites < 1:
        raise ValueError(f"n_sites = {n_sites}: expected a positive chain length")
    bidiagonal = np.diag(np.full(n_sites, float(gamma))) + np.diag(np.full(n_sites - 1, float(coupling)), k=1)
    return -float(scipy.linalg.svdvals(bidiagonal).sum())


def tfim_critical_energy(n_sites: int) -> float:
    """Closed form at ``J = Gamma = 1``: ``E0 = 1 - csc(pi / (2 (2N + 1)))``."""
    return 1.0 - 1.0 / math.sin(math.pi / (2 * (2 * n_sites + 1)))


# ---------------------------------------------------------------------------------------------
# Sparse Lanczos in a symmetry sector
# ---------------------------------------------------------------------------------------------


def ground_state_sector(hamiltonian: Hamiltonian) -> int | None:
    """Number of down spins of the sector that holds a ground state, or None (no U(1) symmetry).

    The Heisenberg model conserves total Sz and every spin multiplet contains a state with
    ``Sz = 0`` (N even) or ``Sz = 1/2`` (N odd), so ``n_down = floor(N / 2)`` always holds a
    ground state. The transverse field breaks the symmetry, so the TFIM uses the full space.
    """
    if isinstance(hamiltonian, Heisenberg):
        return hamiltonian.n_sites // 2
    return None


def sector_dimension(n_sites: int, n_down: int | None) -> int:
    return 2**n_sites if n_down is None else math.comb(n_sites, n_down)


def lanczos_memory_bytes(hamiltonian: Hamiltonian) -> int:
    """Peak memory estimate of :func:`lanczos_ground_state` (sparse matrix + enumeration)."""
    n = hamiltonian.n_sites
    dim = sector_dimension(n, ground_state_sector(hamiltonian))
    nonzeros_per_row = hamiltonian.max_connections  # upper bound: diagonal + every connection
    sparse_bytes = dim * nonzeros_per_row * 28  # COO build (int32 x2 + float64) and CSR copy
    enumeration_bytes = 2**n * 9  # int64 codes + popcount mask
    return sparse_bytes + enumeration_bytes


def available_memory_bytes() -> int:
    """Physical memory of this machine (the ED feasibility check uses half of it)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def log10_sector_dimension(n_sites: int, n_down: int | None) -> float:
    """``log10`` of :func:`sector_dimension`, without forming the (possibly million-digit) integer."""
    if n_down is None:
        return n_sites * math.log10(2)
    return (math.lgamma(n_sites + 1) - math.lgamma(n_down + 1) - math.lgamma(n_sites - n_down + 1)) / math.log(10)


# Beyond this many spins no sector fits in memory: refused without computing its (huge) dimension.
MAX_ED_SITES = 30


def check_lanczos_feasible(hamiltonian: Hamiltonian, memory_fraction: float = 0.5) -> None:
    """Raise ``ValueError`` before any work when the sparse ED would not fit in memory."""
    have = memory_fraction * available_memory_bytes()
    n_sites, n_down = hamiltonian.n_sites, ground_state_sector(hamiltonian)
    need = None if n_sites > MAX_ED_SITES else lanczos_memory_bytes(hamiltonian)
    if need is None or need > have:
        log_dim = log10_sector_dimension(n_sites, n_down)
        size = "" if need is None else f" (~{need / 2**30:.3g} GiB)"
        j2 = hamiltonian.describe().get("J2", 0.0)
        hint = (
            f"and a literature reference needs a row for j2 = {j2} in the table (--method literature)"
            if j2 != 0.0
            else "use a literature reference instead (--method literature)"
        )
        raise ValueError(
            f"size {hamiltonian.lattice.size}: exact diagonalisation needs a 10^{log_dim:.1f}-dimensional sector"
            f"{size}, more than the {have / 2**30:.3g} GiB allowed here; {hint}"
        )


def sparse_hamiltonian(
    hamiltonian: Hamiltonian, n_down: int | None = None, chunk_size: int = 1 << 15
) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """The Hamiltonian on the (sector) basis as CSR, built from ``hamiltonian.connected``.

    Returns ``(H, codes)`` where row ``r`` belongs to the configuration with code ``codes[r]``.
    Connected configurations are located by binary search in the sorted codes (integer keys).
    """
    n = hamiltonian.n_sites
    codes = sector_codes(n, n_down)
    dim = len(codes)
    codes_t = torch.from_numpy(codes)
    rows, cols, values = [], [], []
    for start in range(0, dim, chunk_size):
        block = codes_t[start : start + chunk_size]
        conn = hamiltonian.connected(codes_to_configs(block, n), dtype=torch.float64)
        target = configs_to_codes(conn.configs).numpy()  # (C, M)
        keep = conn.valid.numpy() & (conn.elements.numpy() != 0.0)
        col = np.searchsorted(codes, target[keep])
        if np.any(col >= dim) or np.any(codes[np.minimum(col, dim - 1)] != target[keep]):
            raise RuntimeError("a connected configuration left the symmetry sector")
        row = np.broadcast_to(np.arange(start, start + len(block))[:, None], keep.shape)[keep]
        rows.append(row.astype(np.int32))
        cols.append(col.astype(np.int32))
        values.append(conn.elements.numpy()[keep])
    matrix = scipy.sparse.csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(dim, dim)
    )
    return matrix, codes


@dataclass(frozen=True)
class GroundState:
    energy: float
    vector: np.ndarray  # (D,) normalised, on the basis `codes`
    codes: np.ndarray  # (D,) sorted int64 configuration codes
    n_down: int | None  # sector (None = full space)


def lanczos_ground_state(hamiltonian: Hamiltonian, tol: float = 1e-12) -> GroundState:
    """Lowest eigenpair in the ground state's sector; dense ``eigh`` for tiny sectors."""
    check_lanczos_feasible(hamiltonian)
    n_down = ground_state_sector(hamiltonian)
    matrix, codes = sparse_hamiltonian(hamiltonian, n_down)
    if matrix.shape[0] <= 256:
        energies, vectors = np.linalg.eigh(matrix.toarray())
        energy, vector = energies[0], vectors[:, 0]
    else:
        start = np.ones(matrix.shape[0]) / math.sqrt(matrix.shape[0])  # deterministic start
        energies, vectors = scipy.sparse.linalg.eigsh(matrix, k=1, which="SA", v0=start, tol=tol)
        energy, vector = energies[0], vectors[:, 0]
    # A fixed global sign: largest-magnitude component positive.
    vector = vector * np.sign(vector[np.argmax(np.abs(vector))])
    return GroundState(float(energy), vector, codes, n_down)


# ---------------------------------------------------------------------------------------------
# Dense Kronecker-product Hamiltonians (independent check of the connected elements)
# ---------------------------------------------------------------------------------------------

_PAULI = {
    "I": np.eye(2),
    "X": np.array([[0.0, 1.0], [1.0, 0.0]]),
    "Y": np.array([[0.0, -1.0j], [1.0j, 0.0]]),
    "Z": np.array([[1.0, 0.0], [0.0, -1.0]]),
}


def pauli_string(n_sites: int, ops: dict[int, str]) -> np.ndarray:
    """``op_0 (x) op_1 (x) ...`` with ``ops[i]`` at site i and identity elsewhere."""
    return reduce(np.kron, [_PAULI[ops.get(i, "I")] for i in range(n_sites)])


def dense_hamiltonian(hamiltonian: Hamiltonian) -> np.ndarray:
    """The full matrix, for N up to ~12, from Kronecker products of Pauli matrices."""
    n = hamiltonian.n_sites
    if n > 14:
        raise ValueError(f"n_sites = {n}: dense matrices are for N <= 14")
    bonds = hamiltonian.lattice.bonds
    if isinstance(hamiltonian, TransverseFieldIsing):
        matrix = sum(-hamiltonian.coupling * pauli_string(n, {i: "Z", j: "Z"}) for i, j in bonds)
        matrix = matrix + sum(-hamiltonian.gamma * pauli_string(n, {i: "X"}) for i in range(n))
        return np.real(np.asarray(matrix, dtype=complex))
    if isinstance(hamiltonian, Heisenberg):
        # S_i . S_j = (X X + Y Y + Z Z) / 4, J1 on the nearest-neighbour bonds and J2 on the diagonal ones
        couplings = [(hamiltonian.coupling, i, j) for i, j in bonds]
        couplings += [(hamiltonian.j2, i, j) for i, j in hamiltonian.lattice.diagonal_bonds if hamiltonian.j2 != 0.0]
        matrix = sum(0.25 * c * sum(pauli_string(n, {i: p, j: p}) for p in "XYZ") for c, i, j in couplings)
        matrix = np.real(np.asarray(matrix, dtype=complex))
        if hamiltonian.sign_rule:
            # Marshall rotation U = prod_{i in sublattice 1} Z_i, diagonal with entries +-1: it flips the sign of
            # the exchanges across the sublattices (nearest neighbours), not within one (diagonals).
            rotation = np.diag(pauli_string(n, {i: "Z" for i, p in enumerate(hamiltonian.lattice.sublattice) if p}))
            matrix = rotation[:, None] * matrix * rotation[None, :]
        return matrix
    raise TypeError(f"no dense construction for {type(hamiltonian).__name__}")
