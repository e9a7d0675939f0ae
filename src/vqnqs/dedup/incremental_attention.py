"""The incremental engine's attention: the samples' causal attention cached as sums, updated per connected
configuration.

The samples' attention of one block is kept as its max-stabilised sums (:class:`AttentionSums`, built by
:func:`causal_attention_sums`, the same value as :func:`~vqnqs.models.attention.causal_attention`). A connected
configuration brings its slot rows (:class:`SlotAttention`); :func:`updated_attention` turns the sample's sums
(:class:`SampleAttention`) into the configuration's attention outputs. The engine runs both through the block's
``attn.engine_mixing`` (:class:`~vqnqs.models.attention.EngineMixing`), so FLOP attribution counts them as the
block's attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class AttentionSums:
    """Causal attention of one head-major batch kept as its max-stabilised sums (the incremental engine's
    cache): ``output = numerator / denominator``, the same value as
    :func:`~vqnqs.models.attention.causal_attention`."""

    scores: Tensor  # (..., T, T) q.k / sqrt(e), -inf in the future
    max: Tensor  # (..., T) the largest score of each row
    denominator: Tensor  # (..., T) sum_j exp(score_ij - max_i)
    numerator: Tensor  # (..., T, e) sum_j exp(score_ij - max_i) v_j

    @property
    def output(self) -> Tensor:
        """``(..., T, e)``: the attention output."""
        return self.numerator / self.denominator[..., None]


def causal_attention_sums(q: Tensor, k: Tensor, v: Tensor) -> AttentionSums:
    """:func:`~vqnqs.models.attention.causal_attention` of ``q, k, v (..., T, e)`` (queries at every position)
    as its sums."""
    n_tokens = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (..., T, T)
    future = torch.ones(n_tokens, n_tokens, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    row_max = scores.amax(dim=-1)  # (..., T): finite, every row keeps its own position
    weights = torch.exp(scores - row_max[..., None])  # (..., T, T)
    return AttentionSums(scores, row_max, weights.sum(dim=-1), weights @ v)


@dataclass
class SampleAttention:
    """One block's attention of the samples, as the incremental engine caches it."""

    q: Tensor  # (B, H, T, e)
    k: Tensor  # (B, H, T, e)
    v: Tensor  # (B, H, T, e)
    sums: AttentionSums  # scores (B, H, T, T); max, denominator (B, H, T); numerator (B, H, T, e)


@dataclass
class SlotAttention:
    """Connected configurations ``(K,)`` of the samples ``owner (K,)``, and the rows of each that are computed in
    full ("slots", padded to ``W``): their positions and their own queries, keys and values. A ``changed``
    slot's key and value replace the sample's at its position; an unchanged one (a row recomputed for safety,
    its state the sample's) replaces nothing."""

    owner: Tensor  # (K,) int64: the sample each configuration is connected to
    pos: Tensor  # (K, W) int64; padding at any valid position index
    valid: Tensor  # (K, W) bool: a real slot, not padding
    changed: Tensor  # (K, W) bool: its state differs from the sample's
    q: Tensor  # (K, H, W, e)
    k: Tensor  # (K, H, W, e)
    v: Tensor  # (K, H, W, e)
    start: int = 0  # no configuration changes a position before it: its rows are the samples' outputs


# A row is recomputed in full when the keys it loses carry more than this share of its softmax weight (the
# subtraction would cancel), or when a new key's weight exceeds exp(MAX_LOG_WEIGHT) times its old maximum.
REDO_SHARE = 0.9
MAX_LOG_WEIGHT = 60.0


def updated_attention(sample: SampleAttention, slots: SlotAttention) -> tuple[Tensor, Tensor]:
    """The causal attention of connected configurations, updated from their samples' :class:`AttentionSums`:
    the outputs ``(K, H, T, e)`` of every row of every configuration, and ``redo (K, T)``.

    A connected configuration ``s'`` changes the states of a few positions (its ``changed`` slots). A row ``i``
    whose own state is the sample's keeps the sample's query and sees changed keys ``j <= i`` only::

        Z'_i = Z_i - sum_j exp(S_ij - m_i) + sum_j exp(S'_ij - m_i)
        N'_i = N_i - sum_j exp(S_ij - m_i) v_j + sum_j exp(S'_ij - m_i) v'_j,   a'_i = N'_i / Z'_i

    (``j`` over the changed positions ``<= i``: ``O(W e)`` per row instead of ``O(i e)``); rows before the first
    change get ``a'_i = N_i / Z_i``, the sample's output, exactly. Slot rows are computed in full: their
    queries against the sample's keys with the changed ones replaced. ``redo`` flags the other rows where the
    update is not trustworthy (:data:`REDO_SHARE`, :data:`MAX_LOG_WEIGHT`): the caller makes them slots and
    calls again.
    """
    n_heads, n_tokens, e = sample.q.shape[1:]
    n_conf, start = slots.pos.shape[0], slots.start
    owner, scale = slots.owner, e**-0.5
    t = torch.arange(n_tokens, device=owner.device)
    moved = slots.changed & slots.valid  # (K, W): keys that differ from the sample's
    sums = sample.sums
    # Each configuration's sample's tensors (index_select: one contiguous gather each).
    q, k, v = (x.index_select(0, owner) for x in (sample.q, sample.k, sample.v))  # (K, H, T, e)
    row_max, denominator = sums.max.index_select(0, owner), sums.denominator.index_select(0, owner)  # (K, H, T)
    numerator = sums.numerator.index_select(0, owner)  # (K, H, T, e)
    out = numerator / denominator[..., None]  # the samples' outputs; rows from `start` on are updated below

    # Rows whose query is the sample's: remove the old terms of the changed keys, add the new ones.
    rows = t[start:]  # (T',)
    heads = torch.arange(n_heads, device=owner.device)[None, :, None, None]
    flat = ((owner[:, None, None, None] * n_heads + heads) * n_tokens + rows[:, None]) * n_tokens
    s_old = torch.take(sums.scores, flat + slots.pos[:, None, None, :])  # (K, H, T', W): S_ij, j changed
    s_new = torch.einsum("khte,khwe->khtw", q[:, :, start:], slots.k) * scale  # (K, H, T', W)
    hidden = ~(moved[:, None, :] & (slots.pos[:, None, :] <= rows[:, None]))[:, None]  # (K, 1, T', W)
    shift = row_max[:, :, start:, None]
    log_new = (s_new - shift).masked_fill(hidden, float("-inf"))  # exp(-inf) = 0: a key the row cannot see
    w_old = (s_old - shift).masked_fill(hidden, float("-inf")).exp()
    w_new = log_new.exp()
    removed = w_old.sum(-1)  # (K, H, T')
    old_denominator = denominator[:, :, start:]
    redo = ((removed > REDO_SHARE * old_denominator) | (log_new.amax(-1) > MAX_LOG_WEIGHT)).any(dim=1)
    v_old = v.gather(2, slots.pos[:, None, :, None].expand(-1, n_heads, -1, e))  # (K, H, W, e)
    change = torch.einsum(
        "khtw,khwe->khte", torch.cat([w_new, -w_old], dim=-1), torch.cat([slots.v, v_old], dim=2)
    )  # (K, H, T', e)
    updated = (numerator[:, :, start:] + change) / (old_denominator - removed + w_new.sum(-1))[..., None]
    out[:, :, start:] = updated
    redo = torch.cat([redo.new_zeros(n_conf, start), redo], dim=1)  # (K, T)

    # Slot rows in full: their queries against the sample's keys, the changed ones replaced by the new.
    replaced = torch.zeros(n_conf, n_tokens + 1, dtype=torch.bool, device=owner.device)
    replaced.scatter_(1, torch.where(moved, slots.pos, n_tokens), True)  # (K, T + 1); T: a dummy column
    base_ok = (t <= slots.pos[..., None]) & ~replaced[:, None, :n_tokens]  # (K, W, T)
    new_ok = moved[:, None, :] & (slots.pos[:, None, :] <= slots.pos[:, :, None])  # (K, W, W)
    s_base = torch.einsum("khwe,khte->khwt", slots.q, k) * scale
    s_slot = torch.einsum("khwe,khxe->khwx", slots.q, slots.k) * scale
    scores = torch.cat(
        [s_base.masked_fill(~base_ok[:, None], float("-inf")), s_slot.masked_fill(~new_ok[:, None], float("-inf"))],
        dim=-1,
    ).masked_fill(~slots.valid[:, None, :, None], 0.0)  # (K, H, W, T + W); padding rows stay finite
    weights = scores.softmax(dim=-1)
    slot_out = torch.einsum("khwt,khte->khwe", weights[..., :n_tokens], v) + torch.einsum(
        "khwx,khxe->khwe", weights[..., n_tokens:], slots.v
    )  # (K, H, W, e)
    k, w = slots.valid.nonzero(as_tuple=True)
    p = slots.pos[k, w]
    out[k, :, p] = slot_out[k, :, w]
    redo[k, p] = False
    return out, redo
