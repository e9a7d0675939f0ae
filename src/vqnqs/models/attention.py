"""Causal multi-head self-attention: the only layer of the transformer that mixes locations.

``CausalSelfAttention.forward = out_proj(quantizer(attend(*qkv(x))))``: a per-location Q/K/V projection,
the causal mixing per sequence (:class:`CausalMixing`, i.e. :func:`causal_attention` per head), the
``quantizer`` slot and ``W_O``, each callable on its own for engines that reorganise the forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

KVCache = tuple[Tensor, Tensor]  # keys, values of the positions seen so far: (B, T_past, d) each


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal softmax attention of one head-major batch: ``q (..., Tq, e)``, ``k, v (..., Tk, e)`` -> ``(..., Tq, e)``.

    The queries are the LAST ``Tq`` of the ``Tk`` positions; query j (absolute position ``Tk - Tq + j``)
    sees the keys up to and including its own position. The arithmetic of :class:`CausalMixing`.
    """
    t_q, t_k = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (..., Tq, Tk)
    # Every row keeps its own position, so the -inf fill never leaves a row without a finite score.
    q_pos = torch.arange(t_k - t_q, t_k, device=q.device)
    future = torch.arange(t_k, device=q.device)[None, :] > q_pos[:, None]  # (Tq, Tk)
    scores = scores.masked_fill(future, float("-inf"))
    # Softmax over the keys with the keys moved to the front: a reduction over the leading dim of a
    # contiguous tensor vectorises over everything else, while one over a last dim of a few keys
    # (T = 4..16 here) runs nearly scalar. The weights stay a strided view, which the matmul reads as is.
    weights = scores.movedim(-1, 0).contiguous().softmax(dim=0).movedim(0, -1)  # (..., Tq, Tk)
    return weights @ v  # (..., Tq, e)


@dataclass
class AttentionSums:
    """Causal attention of one head-major batch kept as its max-stabilised sums (the incremental engine's
    cache): ``output = numerator / denominator``, the same value as :func:`causal_attention`."""

    scores: Tensor  # (..., T, T) q.k / sqrt(e), -inf in the future
    max: Tensor  # (..., T) the largest score of each row
    denominator: Tensor  # (..., T) sum_j exp(score_ij - max_i)
    numerator: Tensor  # (..., T, e) sum_j exp(score_ij - max_i) v_j

    @property
    def output(self) -> Tensor:
        """``(..., T, e)``: the attention output."""
        return self.numerator / self.denominator[..., None]


def causal_attention_sums(q: Tensor, k: Tensor, v: Tensor) -> AttentionSums:
    """:func:`causal_attention` of ``q, k, v (..., T, e)`` (queries at every position) as its sums."""
    n_tokens = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (..., T, T)
    future = torch.ones(n_tokens, n_tokens, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    row_max = scores.amax(dim=-1)  # (..., T): finite, every row keeps its own position
    weights = torch.exp(scores - row_max[..., None])  # (..., T, T)
    return AttentionSums(scores, row_max, weights.sum(dim=-1), weights @ v)


class CausalMixing(nn.Module):
    """:func:`causal_attention` as a stateless module, owned by :class:`CausalSelfAttention` (``attn.mixing``).

    Called by the dense forward (:meth:`CausalSelfAttention.attend`, batch = (sequence, head)) and by the
    dedup engine (batch = (head, representative sequence), queries = the positions whose prefixes it
    represents): both run the same arithmetic, and module hooks (FLOP attribution) see it in both.
    """

    def forward(self, q: Tensor, k: Tensor, v: Tensor, keep_sums: bool = False) -> Tensor | AttentionSums:
        """``q (..., Tq, e)``, ``k, v (..., Tk, e)`` head-major -> ``(..., Tq, e)``; with ``keep_sums`` (queries
        at every position, ``Tq = Tk``) the :class:`AttentionSums` instead (the incremental engine's cache)."""
        return causal_attention_sums(q, k, v) if keep_sums else causal_attention(q, k, v)


def bidirectional_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Softmax attention without a mask: ``q (..., Tq, e)``, ``k, v (..., Tk, e)`` -> ``(..., Tq, e)``; every
    query sees every key (the phase network's encoder)."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (..., Tq, Tk)
    return scores.softmax(dim=-1) @ v


class BidirectionalMixing(nn.Module):
    """:func:`bidirectional_attention` as a stateless module (``attn.mixing`` of the phase network's blocks).

    Called as :class:`CausalMixing` is: by the dense forward and, with one query row per location of each
    distinct sequence, by the dedup engine (:mod:`vqnqs.dedup.phase`).
    """

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return bidirectional_attention(q, k, v)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with explicit matmuls (so CPU FLOP counters see them).

    ``causal=False`` swaps the mixing for :class:`BidirectionalMixing` (the phase network's encoder; no KV cache
    is ever used there).

    forward = out_proj(quantizer(attend(*qkv(x)))): the per-head mixed output passes through the
    ``quantizer`` slot (``nn.Identity`` here; the VQ-NQS variant puts its vector quantiser there)
    before ``W_O`` and the residual add of the enclosing block.
    """

    def __init__(self, d_model: int, n_heads: int, causal: bool = True) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        # Stateless: no parameters, no state_dict entries. causal=False: the phase network's encoder.
        self.mixing: nn.Module = CausalMixing() if causal else BidirectionalMixing()
        self.update = IncrementalMixing()  # stateless: the mixing updated per connected configuration
        self.quantizer: nn.Module = nn.Identity()
        self.out_proj = nn.Linear(d_model, d_model)  # W_O

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-location projection ``(..., d) -> q, k, v`` each ``(..., d)`` (heads are split in attend)."""
        q, k, v = self.qkv_proj(x).chunk(3, dim=-1)
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Causal mixing: ``q (B, Tq, d)`` are the LAST Tq of the ``Tk`` positions of ``k, v (B, Tk, d)``.

        Returns the per-head outputs concatenated, ``(B, Tq, d)``, before any quantiser or ``W_O``.
        """
        q, k, v = (rearrange(x, "b t (h e) -> b h t e", h=self.n_heads) for x in (q, k, v))
        return rearrange(self.mixing(q, k, v), "b h t e -> b t (h e)")

    def forward(self, x: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """``x (B, T, d)`` (already LayerNormed) -> ``(B, T, d)`` to add to the residual, and the updated cache.

        With a cache, ``x`` holds only the new positions and attends to the cached ones as well.
        """
        q, k, v = self.qkv(x)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=1)
            v = torch.cat([cache[1], v], dim=1)
        mixed = self.attend(q, k, v)
        return self.out_proj(self.quantizer(mixed)), (k, v)


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


class IncrementalMixing(nn.Module):
    """The causal mixing of connected configurations, updated from their samples' :class:`AttentionSums`.

    A connected configuration ``s'`` changes the states of a few positions (its ``changed`` slots). A row ``i``
    whose own state is the sample's keeps the sample's query and sees changed keys ``j <= i`` only::

        Z'_i = Z_i - sum_j exp(S_ij - m_i) + sum_j exp(S'_ij - m_i)
        N'_i = N_i - sum_j exp(S_ij - m_i) v_j + sum_j exp(S'_ij - m_i) v'_j,   a'_i = N'_i / Z'_i

    (``j`` over the changed positions ``<= i``: ``O(W e)`` per row instead of ``O(i e)``); rows before the first
    change get ``a'_i = N_i / Z_i``, the sample's output, exactly. Slot rows are computed in full: their
    queries against the sample's keys with the changed ones replaced. ``redo (K, T)`` flags the other rows
    where the update is not trustworthy (:data:`REDO_SHARE`, :data:`MAX_LOG_WEIGHT`): the caller makes them
    slots and calls again. Stateless; a module so that FLOP attribution counts it as the block's attention.
    """

    def forward(self, sample: SampleAttention, slots: SlotAttention) -> tuple[Tensor, Tensor]:
        """-> the attention outputs ``(K, H, T, e)`` of every row of every configuration, and ``redo (K, T)``."""
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
