"""Integer keys -> dense ids, without ever comparing floats.

A hidden state of the dedup engine is named by an int64 id into a table of unique rows. New ids come from
pairs of integers (position and input token; previous id and code tuple), packed into one int64 key by
mixed radix when that cannot overflow, else deduplicated as pairs with ``torch.unique(dim=0)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Mixed-radix keys stay below 2^62: no overflow, and headroom below int64's 2^63.
_MAX_KEY = 2**62


def pair_ids(a: Tensor, n_a: int, b: Tensor, n_b: int) -> tuple[Tensor, Tensor, Tensor]:
    """Dense ids of the distinct pairs ``(a, b)`` with ``0 <= a < n_a``, ``0 <= b < n_b``.

    ``a, b`` int64 of the same shape ``S`` -> ``ids (S)`` in ``[0, U)``, and the pairs themselves as
    ``a_unique (U,)``, ``b_unique (U,)`` (ids are ordered by ``(a, b)``, lexicographically).
    """
    if n_a * n_b <= _MAX_KEY:
        keys = a * n_b + b  # exact in int64
        unique, ids = torch.unique(keys, return_inverse=True)
        return ids, unique // n_b, unique % n_b
    pairs = torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)  # (n, 2)
    unique, ids = torch.unique(pairs, dim=0, return_inverse=True)
    return ids.reshape(a.shape), unique[:, 0], unique[:, 1]


def tuple_ids(codes: Tensor, n_codes: int) -> tuple[Tensor, Tensor]:
    """Dense ids of the distinct code tuples: ``codes (..., H)`` in ``[0, n_codes)`` -> ``ids (...)`` and
    ``unique (U, H)`` (the tuples, ``decode``-ready), ordered lexicographically."""
    heads = codes.shape[-1]
    flat = codes.reshape(-1, heads)  # (n, H)
    if n_codes**heads <= _MAX_KEY:
        radix = n_codes ** torch.arange(heads - 1, -1, -1, device=codes.device)  # (H,) head 0 most significant
        keys = (flat * radix).sum(-1)  # (n,)
        unique_keys, ids = torch.unique(keys, return_inverse=True)
        unique = (unique_keys[:, None] // radix) % n_codes  # (U, H)
    else:
        unique, ids = torch.unique(flat, dim=0, return_inverse=True)
    return ids.reshape(codes.shape[:-1]), unique
