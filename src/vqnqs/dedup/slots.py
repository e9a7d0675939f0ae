"""Slots: the rows of each connected configuration that the incremental engine computes per location.

A configuration's slots are the positions whose hidden state differs from its sample's (``changed``), plus
the rows it recomputes for numerical safety (state unchanged). Between blocks they are held flat, sorted by
(configuration, position); for the attention, a chunk of configurations with similar slot counts is padded to
``(K_c, W)`` (:func:`pad`), so that the padding costs little::

    flat     config (R,)  pos (R,)  ids (R,) into a table of unique states (U, d)
    padded   pos (K_c, W)  valid (K_c, W)  and any per-row values (K_c, W, ...)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SlotRows:
    """The changed rows of configurations ``0 .. K-1``, flat, sorted by (configuration, position); their states
    are ids into a table of unique states (deduplicated by integer keys, :mod:`vqnqs.dedup.keys`)."""

    config: Tensor  # (R,) int64
    pos: Tensor  # (R,) int64
    ids: Tensor  # (R,) int64 into the table

    def counts(self, n_conf: int) -> Tensor:
        """``(K,)`` slots per configuration."""
        return torch.bincount(self.config, minlength=n_conf)


def sort_rows(config: Tensor, pos: Tensor, n_tokens: int) -> Tensor:
    """The permutation sorting rows by (configuration, position)."""
    return torch.argsort(config * n_tokens + pos)


def pad(local: Tensor, pos: Tensor, n_conf: int, *values: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Rows of configurations ``local (R,)`` in ``[0, K_c)`` (sorted by it) at positions ``pos (R,)`` ->
    ``pos (K_c, W)``, ``valid (K_c, W)`` and each ``values`` entry ``(R, ...)`` as ``(K_c, W, ...)`` (zeros as
    padding; padding positions are 0)."""
    counts = torch.bincount(local, minlength=n_conf)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    rank = torch.arange(local.shape[0], device=local.device) - (counts.cumsum(0) - counts)[local]
    padded_pos = torch.zeros(n_conf, width, dtype=torch.long, device=local.device)
    padded_pos[local, rank] = pos
    valid = torch.zeros(n_conf, width, dtype=torch.bool, device=local.device)
    valid[local, rank] = True
    padded = []
    for value in values:
        out = value.new_zeros(n_conf, width, *value.shape[1:])
        out[local, rank] = value
        padded.append(out)
    return padded_pos, valid, padded


def chunks_by_count(counts: Tensor, cost_per_conf: int, cost_per_slot: int, budget: int) -> Iterator[Tensor]:
    """Configurations in chunks ``(K_c,)`` of similar slot counts (ascending; within a chunk the largest count is
    at most twice the smallest, so padding at most doubles the work), each within ``budget``: a chunk of ``K_c``
    configurations whose largest slot count is ``W`` costs ``K_c * (cost_per_conf + W * cost_per_slot)``."""
    order = torch.argsort(counts, stable=True)
    sorted_counts = counts[order]
    # Chunks never straddle a power-of-two class of the count: [1], [2, 3], [4, 7], [8, 15], ...
    classes = torch.floor(torch.log2(sorted_counts.clamp_min(1).double())).long()
    bounds = torch.cumsum(torch.bincount(classes), 0).tolist()
    start = 0
    for end in bounds:
        while start < end:
            width = int(sorted_counts[end - 1])  # the largest count of the class
            size = max(1, budget // (cost_per_conf + width * cost_per_slot))
            yield order[start : min(start + size, end)]
            start = min(start + size, end)
