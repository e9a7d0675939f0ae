"""Patch tokenisation: spin configurations <-> integer patch tokens.

A configuration ``s: (B, N)`` holds 0/1 spins (0 = up, 1 = down) in row-major site order.
A chain ``(N,)`` is cut into tokens of ``K = patch`` consecutive spins; an ``L x W`` lattice into
``p x p`` blocks (``K = p * p``), tokens ordered row-major over blocks and spins inside a block
row-major. A token's value is ``sum_k s_k 2^(K-1-k)``: the first spin of the patch is the most
significant bit, so the vocabulary is ``2^K``.

Both directions are a fixed gather plus a bit pack/unpack; the site permutation is precomputed once.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def validate_patching(lattice_shape: tuple[int, ...], patch: int) -> None:
    """Raise ``ValueError`` naming the field unless ``patch`` tiles ``lattice_shape``."""
    if len(lattice_shape) not in (1, 2) or any(d < 1 for d in lattice_shape):
        raise ValueError(f"lattice_shape {lattice_shape}: expected (N,) or (L, W) with positive entries")
    if patch < 1:
        raise ValueError(f"patch {patch}: must be a positive integer")
    bad = [d for d in lattice_shape if d % patch]
    if bad:
        raise ValueError(f"lattice_shape {lattice_shape}: every dimension must be divisible by patch={patch}")


class Patching(nn.Module):
    """Maps ``(..., N)`` spin configurations to ``(..., T)`` patch tokens and back.

    An ``nn.Module`` only so that its integer index tables follow ``.to(device)`` of the model that
    owns it (they are non-persistent buffers: derived from the shape, never stored in checkpoints,
    and untouched by ``.double()``). Inputs on another device are still accepted.
    """

    site_order: Tensor  # (N,) site of the j-th spin in token order (token-major, spin-minor)
    inverse_order: Tensor  # (N,) position in token order of each site
    bit_weights: Tensor  # (K,) 2^(K-1-k)
    popcount: Tensor  # (vocab,) number of down spins in each token value

    def __init__(self, lattice_shape: tuple[int, ...], patch: int) -> None:
        super().__init__()
        lattice_shape = tuple(int(d) for d in lattice_shape)
        validate_patching(lattice_shape, patch)
        self.lattice_shape = lattice_shape
        self.patch = patch
        self.spins_per_token = patch if len(lattice_shape) == 1 else patch * patch
        self.n_sites = 1
        for d in lattice_shape:
            self.n_sites *= d
        self.n_tokens = self.n_sites // self.spins_per_token
        self.vocab_size = 2**self.spins_per_token

        sites = torch.arange(self.n_sites)
        if len(lattice_shape) == 2:
            rows, cols = lattice_shape
            # (L, W) -> (block_row, p, block_col, p) -> (block_row, block_col, p, p): row-major blocks,
            # row-major spins inside each block.
            sites = sites.view(rows // patch, patch, cols // patch, patch).permute(0, 2, 1, 3).reshape(-1)
        k = self.spins_per_token
        values = torch.arange(self.vocab_size)
        bits = (values[:, None] >> torch.arange(k - 1, -1, -1)) & 1  # (vocab, K)
        self.register_buffer("site_order", sites, persistent=False)
        self.register_buffer("inverse_order", torch.argsort(sites), persistent=False)
        self.register_buffer("bit_weights", 2 ** torch.arange(k - 1, -1, -1), persistent=False)
        self.register_buffer("popcount", bits.sum(-1), persistent=False)

    def to_tokens(self, s: Tensor) -> Tensor:
        """``(..., N)`` spins of any integer dtype -> ``(..., T)`` int64 token values."""
        order = self.site_order.to(s.device)
        spins = s.long()[..., order].reshape(*s.shape[:-1], self.n_tokens, self.spins_per_token)
        return (spins * self.bit_weights.to(s.device)).sum(-1)

    def from_tokens(self, t: Tensor) -> Tensor:
        """``(..., T)`` token values -> ``(..., N)`` int64 spins (inverse of :meth:`to_tokens`)."""
        shifts = torch.arange(self.spins_per_token - 1, -1, -1, device=t.device)
        spins = (t.long()[..., None] >> shifts) & 1  # (..., T, K)
        return spins.reshape(*t.shape[:-1], self.n_sites)[..., self.inverse_order.to(t.device)]

    def extra_repr(self) -> str:
        return f"lattice_shape={self.lattice_shape}, patch={self.patch}, vocab_size={self.vocab_size}"
