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


def chunks_by_count(
    counts: Tensor, first: Tensor, cost_per_conf: int, cost_per_slot: int, budget: int
) -> Iterator[Tensor]:
    """Configurations in chunks ``(K_c,)`` of similar slot counts ``counts (K,)`` (within a chunk the largest is at
    most twice the smallest, so padding at most doubles the work) and, among those, of similar first changed
    positions ``first (K,)`` (the rows before a chunk's smallest are skipped). Each chunk stays within ``budget``:
    ``K_c`` configurations whose largest slot count is ``W`` cost ``K_c * (cost_per_conf + W * cost_per_slot)``."""
    # Classes of the count: [0, 1], [2, 3], [4, 7], [8, 15], ...; within a class by first change.
    classes = torch.floor(torch.log2(counts.clamp_min(1).double())).long()
    order = torch.argsort(classes * (int(first.max()) + 1 if first.numel() else 1) + first, stable=True)
    bounds = torch.cumsum(torch.bincount(classes[order]), 0).tolist() if order.numel() else []
    start = 0
    for end in bounds:
        width = int(counts[order[start:end]].max()) if end > start else 0  # the largest count of the class
        size = max(1, budget // (cost_per_conf + width * cost_per_slot))
        while start < end:
            yield order[start : min(start + size, end)]
            start = min(start + size, end)
