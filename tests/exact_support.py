"""Which amplitudes of a numerically computed ground state are resolved well enough to divide by.

A local energy ``E_loc(s) = sum_s' H_ss' psi(s') / psi(s)`` of an exact eigenvector is ``E_0`` only where
``psi(s)`` is known to better than the test's tolerance. An eigensolver returns ``v`` with residual
``r = ||H v - E_0 v||``; for a ground state separated by a gap ``Delta`` from the rest of the spectrum, the
Davis-Kahan bound puts the computed vector within ``r / Delta`` of the true one (plus rounding). So:

- a degenerate ground state (``Delta`` ~ 0) has no defined support: the solver may return any vector of the
  subspace, with amplitudes that are rounding noise, and which one depends on the BLAS. Refused.
- a configuration is in the resolved support when its amplitude exceeds the error it would put on
  ``E_loc``: ``|psi(s)| > margin * ||H||_inf * error / tol``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

MIN_GAP = 1e-6  # below this a ground state counts as degenerate


def resolved_support(
    matrix: np.ndarray | scipy.sparse.spmatrix, energies: np.ndarray, vector: np.ndarray, tol: float, margin=10.0
) -> np.ndarray:
    """Boolean mask of the configurations whose amplitude in ``vector`` is resolved to ``E_loc`` error ``tol``.

    ``energies`` are the two lowest eigenvalues (ascending); ``vector`` the normalised ground state.
    """
    gap = energies[1] - energies[0]
    assert gap > MIN_GAP * max(1.0, abs(energies[0])), f"degenerate ground state (gap {gap:.3g}): no defined support"
    residual = np.linalg.norm(matrix @ vector - energies[0] * vector)
    error = residual / gap + np.finfo(np.float64).eps * np.sqrt(len(vector))
    row_norm = abs(matrix).sum(axis=1).max()  # ||H||_inf
    support = np.abs(vector) > margin * row_norm * error / tol
    # Not vacuous: the resolved configurations carry the state's weight.
    assert (np.abs(vector[support]) ** 2).sum() > 1 - 1e-6
    return np.asarray(support).reshape(-1)


def two_lowest(matrix: scipy.sparse.spmatrix) -> np.ndarray:
    """The two lowest eigenvalues of a sparse symmetric matrix (dense for small ones)."""
    if matrix.shape[0] <= 2048:
        return np.linalg.eigvalsh(matrix.toarray())[:2]
    start = np.ones(matrix.shape[0]) / np.sqrt(matrix.shape[0])
    return np.sort(scipy.sparse.linalg.eigsh(matrix, k=2, which="SA", v0=start, tol=1e-12)[0])
