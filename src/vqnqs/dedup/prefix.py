"""Prefix keys: which (sequence, position) locations of a causal layer compute the same thing.

In a causal model the attention output at position ``i`` of a sequence is a function of the hidden states
at positions ``0..i`` only. When the states are integer ids ``I (K, T)`` (see :mod:`vqnqs.dedup.keys`),
that output is a function of the id sequence ``I[k, 0..i]``, its *prefix*. Two locations with equal
prefixes have bit-for-bit equal attention inputs, hence equal attention outputs, equal codes and equal
new ids; so a layer needs its attention (and quantiser) only once per distinct prefix.

Prefix ids are integer keys like the others, defined recursively::

    prefix_0 = key(I_0)        prefix_i = key(prefix_{i-1}, I_i)

Equal prefix ids <=> equal id sequences up to that position (and the same position). They come from
integer comparisons only, never from comparing floats, so deduplicating by them is exact.

How they are computed. Sort the K sequences lexicographically by their ids (stable sorts, last column
first). In that order, the sequences sharing a prefix up to position ``i`` form a contiguous run, and
sequence ``r`` starts a new run at position ``i`` iff it differs from sequence ``r - 1`` somewhere in
``0..i``. Call the first sequence of each run the *representative* of that prefix. If ``r`` represents
its prefix at ``i``, it also represents its (longer) prefix at every ``i' > i`` (the runs at ``i'`` nest
inside the runs at ``i``). So each sequence represents a *suffix* of its positions, ``start_r .. T-1``
(``start_r`` = the first position where it differs from its predecessor; ``T``: it represents nothing).

Attention rows. Each distinct prefix is one row ``0 .. R-1``; the rows are laid out group by group, one
group per ``start`` value ``j``, holding its sequences in sorted order, each with its positions
``j .. T-1``. A group is one batched causal attention: the queries at positions ``j..T-1`` of each of its
sequences against all ``T`` keys of that sequence (the causal mask hides the future), exactly the
``q = the LAST Tq of the Tk positions`` convention of :func:`vqnqs.models.attention.causal_attention`.
``rows (K, T)`` maps every location to the row of its prefix (the prefix id).

Without prefix reuse (:func:`location_partition`) every location is its own row: attention runs once per
location of every sequence, as in the paper's engine, where only the per-location ops are deduplicated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PrefixGroup:
    """Sequences that represent their prefixes from position ``start`` on: rows ``first_row ..
    first_row + len(sequences) * (T - start) - 1``, sequence-major, then position ``start .. T-1``."""

    start: int
    sequences: Tensor  # (n,) int64: indices into the K sequences
    first_row: int


@dataclass(frozen=True)
class PrefixPartition:
    """The distinct prefixes of ``ids (K, T)``: one attention row per prefix, see the module docstring."""

    rows: Tensor  # (K, T) int64 in [0, n_rows): the prefix id of each location (= its attention row)
    row_location: Tensor  # (n_rows,) int64: flat index k * T + i of each row's representative location
    groups: tuple[PrefixGroup, ...]  # by increasing start, only the non-empty ones
    per_position: tuple[int, ...]  # (T,) distinct prefixes ending at each position (sum = n_rows)

    @property
    def n_rows(self) -> int:
        return self.row_location.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.rows.shape)  # type: ignore[return-value]

    def at_rows(self, values: Tensor) -> Tensor:
        """Per-location ``values (K, T, ...)`` that are functions of the prefix -> ``(n_rows, ...)``."""
        return values.reshape(-1, *values.shape[2:])[self.row_location]


def lexicographic_order(ids: Tensor) -> Tensor:
    """``ids (K, T)`` int64 -> the permutation ``(K,)`` sorting the rows lexicographically (stable)."""
    n_seq, n_tokens = ids.shape
    order = torch.arange(n_seq, device=ids.device)
    for i in range(n_tokens - 1, -1, -1):  # least significant column first; stable sorts keep the rest
        order = order[torch.sort(ids[order, i], stable=True).indices]
    return order


def prefix_partition(ids: Tensor) -> PrefixPartition:
    """The prefix ids and attention rows of ``ids (K, T)`` int64 (see the module docstring)."""
    n_seq, n_tokens = ids.shape
    device = ids.device
    order = lexicographic_order(ids)  # (K,) sorted rank -> sequence
    sorted_ids = ids[order]  # (K, T)
    # owner[r, i]: sorted sequence r represents its prefix at position i (differs from r - 1 in 0..i).
    owner = torch.ones((n_seq, n_tokens), dtype=torch.bool, device=device)
    if n_seq > 1:
        owner[1:] = (sorted_ids[1:] != sorted_ids[:-1]).cumsum(dim=1) > 0
    start = n_tokens - owner.sum(dim=1)  # (K,) first represented position (a suffix); T: none
    length = n_tokens - start  # (K,) rows it owns
    by_start = torch.sort(start, stable=True).indices  # (K,) sorted ranks grouped by start
    first_row = torch.empty_like(start)  # (K,) row of position start[r] of sorted sequence r
    first_row[by_start] = length[by_start].cumsum(0) - length[by_start]
    # The representative of location (r, i): the last r' <= r owning position i (runs are contiguous).
    rank = torch.arange(n_seq, device=device)
    rep = torch.where(owner, rank[:, None], 0).cummax(dim=0).values  # (K, T) sorted ranks
    positions = torch.arange(n_tokens, device=device)
    rows = torch.empty_like(rep)
    rows[order] = first_row[rep] + positions - start[rep]  # back to the original sequence order

    counts = torch.bincount(start, minlength=n_tokens + 1).tolist()
    groups, locations, offset, row = [], [], 0, 0
    for j in range(n_tokens):
        n = counts[j]
        if n == 0:
            continue
        sequences = order[by_start[offset : offset + n]]  # (n,)
        groups.append(PrefixGroup(j, sequences, row))
        locations.append((sequences[:, None] * n_tokens + positions[j:]).reshape(-1))  # (n * (T - j),)
        offset += n
        row += n * (n_tokens - j)
    row_location = torch.cat(locations) if locations else torch.zeros(0, dtype=torch.long, device=device)
    per_position = tuple(owner.sum(dim=0).tolist())
    return PrefixPartition(rows, row_location, tuple(groups), per_position)


def location_partition(ids: Tensor) -> PrefixPartition:
    """No prefix reuse: every location ``(k, i)`` of ``ids (K, T)`` is its own attention row ``k * T + i``.

    One group (start 0, all sequences): each sequence's queries at every position against its own keys.
    """
    n_seq, n_tokens = ids.shape
    device = ids.device
    locations = torch.arange(n_seq * n_tokens, device=device)  # (K*T,)
    group = PrefixGroup(0, torch.arange(n_seq, device=device), 0)
    return PrefixPartition(locations.view(n_seq, n_tokens), locations, (group,) if n_seq else (), (n_seq,) * n_tokens)


def sequence_partition(ids: Tensor) -> PrefixPartition:
    """Bidirectional attention (the phase network's encoder): a location's output depends on the WHOLE sequence
    of ids, so the attention rows are the locations of the distinct id-sequences, row ``u * T + i`` for distinct
    sequence ``u`` (in :func:`torch.unique` order) at position ``i``. One group (start 0, each distinct
    sequence's first occurrence): its queries at every position against its own keys."""
    n_seq, n_tokens = ids.shape
    device = ids.device
    if n_seq == 0:
        return location_partition(ids)
    _, inverse = torch.unique(ids, dim=0, return_inverse=True)  # (K,) distinct sequence of each row
    n_distinct = int(inverse.max()) + 1
    first = torch.full((n_distinct,), n_seq, dtype=torch.int64, device=device)
    first.scatter_reduce_(0, inverse, torch.arange(n_seq, device=device), reduce="amin")  # (S,) representatives
    positions = torch.arange(n_tokens, device=device)
    rows = inverse[:, None] * n_tokens + positions  # (K, T)
    row_location = (first[:, None] * n_tokens + positions).reshape(-1)  # (S*T,)
    return PrefixPartition(rows, row_location, (PrefixGroup(0, first, 0),), (n_distinct,) * n_tokens)
