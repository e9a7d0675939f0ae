"""Computational basis: configurations <-> integer codes, and enumeration of (sector) bases.

The code of a configuration reads its spins as a binary number with site 0 as the most significant
bit, which is the order of a Kronecker product ``op_0 (x) op_1 (x) ... (x) op_{N-1}``: the code of
``s`` is the row index of ``s`` in a dense ``2^N x 2^N`` Hamiltonian built that way.
"""

from __future__ import annotations

import numpy as np
import torch

MAX_ENUMERATED_SITES = 40  # codes must stay exact in int64 and float64 arithmetic


def _check_sites(n_sites: int) -> None:
    if not 1 <= n_sites <= MAX_ENUMERATED_SITES:
        raise ValueError(f"n_sites = {n_sites}: enumeration supports 1..{MAX_ENUMERATED_SITES} sites")


def configs_to_codes(s: torch.Tensor) -> torch.Tensor:
    """``(..., N)`` 0/1 spins -> ``(...)`` int64 codes (site 0 most significant)."""
    n_sites = s.shape[-1]
    _check_sites(n_sites)
    weights = 2 ** torch.arange(n_sites - 1, -1, -1, device=s.device, dtype=torch.int64)
    return (s.to(torch.int64) * weights).sum(dim=-1)


def codes_to_configs(codes: torch.Tensor, n_sites: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """``(D,)`` int64 codes -> ``(D, N)`` 0/1 spins."""
    _check_sites(n_sites)
    shifts = torch.arange(n_sites - 1, -1, -1, device=codes.device, dtype=torch.int64)
    return ((codes.unsqueeze(-1) >> shifts) & 1).to(dtype)


def sector_codes(n_sites: int, n_down: int | None = None) -> np.ndarray:
    """Sorted int64 codes of all configurations, or of those with exactly ``n_down`` down spins."""
    _check_sites(n_sites)
    if n_sites > 30:
        raise ValueError(f"n_sites = {n_sites}: enumerating 2^{n_sites} states is not feasible here")
    codes = np.arange(2**n_sites, dtype=np.int64)
    if n_down is None:
        return codes
    if not 0 <= n_down <= n_sites:
        raise ValueError(f"n_down = {n_down}: expected 0..{n_sites}")
    return codes[np.bitwise_count(codes) == n_down]


def all_configurations(n_sites: int, n_down: int | None = None, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Every configuration (optionally within a sector) as a ``(D, N)`` tensor, in code order."""
    return codes_to_configs(torch.from_numpy(sector_codes(n_sites, n_down)), n_sites, dtype)
