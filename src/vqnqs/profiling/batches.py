"""Batches for profiling: exact samples of a model, their distinct rows, their connected configurations."""

from __future__ import annotations

import torch

from vqnqs.models.transformer import AutoregressiveTransformer
from vqnqs.physics.hamiltonian import Hamiltonian


def draw_samples(model: AutoregressiveTransformer, n: int, seed: int) -> torch.Tensor:
    """``n`` exact samples ``(n, N)`` from ``model`` with a generator seeded ``seed`` (on the model's device)."""
    generator = torch.Generator(device=model.device).manual_seed(int(seed))
    return model.sample(n, generator=generator)


def distinct_samples(s: torch.Tensor) -> torch.Tensor:
    """The distinct rows of ``s (B, N)`` -> ``(U, N)`` (sorted)."""
    return torch.unique(s, dim=0)


def connected_configs(hamiltonian: Hamiltonian, s: torch.Tensor) -> torch.Tensor:
    """All valid connected configurations of ``s (B, N)``, flattened ``(K, N)`` in local_energy's order."""
    conn = hamiltonian.connected(s)
    return conn.configs.reshape(-1, conn.configs.shape[-1])[conn.valid.reshape(-1)]
