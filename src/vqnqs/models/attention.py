"""Causal multi-head self-attention: the only layer of the transformer that mixes locations.

``CausalSelfAttention.forward = out_proj(quantizer(attend(*qkv(x))))``: a per-location Q/K/V projection,
the causal mixing per sequence (:class:`CausalMixing`, i.e. :func:`causal_attention` per head), the
``quantizer`` slot and ``W_O``, each callable on its own for engines that reorganise the forward; an engine
that computes the mixing in a form of its own runs it through ``engine_mixing`` (:class:`EngineMixing`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


class CausalMixing(nn.Module):
    """:func:`causal_attention` as a stateless module, owned by :class:`CausalSelfAttention` (``attn.mixing``).

    Called by the dense forward (:meth:`CausalSelfAttention.attend`, batch = (sequence, head)) and by the
    dedup engine (batch = (head, representative sequence), queries = the positions whose prefixes it
    represents): both run the same arithmetic, and module hooks (FLOP attribution) see it in both.
    """

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``q (..., Tq, e)``, ``k, v (..., Tk, e)`` head-major -> ``(..., Tq, e)``."""
        return causal_attention(q, k, v)


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


class PositionMixing(nn.Module):
    """Causal attention whose weights depend on positions only (``attention: position``), in a window.

    Head ``h`` weighs key ``j`` for query ``i`` by ``alpha^h_ij = softmax_j(b^h_{i-j})`` over the ``window``
    positions ``i - window < j <= i`` (a learned score ``b^h_delta`` per head and distance), and 0 outside::

        a^h_i = sum_j alpha^h_ij v^h_j        (queries and keys are not used: the weights are input-independent)

    So a change of the values at position ``k`` moves the output of row ``i`` by exactly
    ``alpha^h_ik (v'^h_k - v^h_k)``, and not at all outside ``k <= i < k + window``: the incremental engine's
    position path (:mod:`vqnqs.dedup.incremental_position`) updates only those rows. The scores start as an
    ALiBi-like decay ``b^h_delta = -m_h delta`` with slopes ``m_h = 2^(-8 (h+1) / H)``.
    """

    def __init__(self, n_heads: int, window: int) -> None:
        super().__init__()
        self.n_heads, self.window = n_heads, window
        slopes = 2.0 ** (-8.0 * torch.arange(1, n_heads + 1) / n_heads)  # (H,)
        self.scores = nn.Parameter(-slopes[:, None] * torch.arange(window))  # (H, window): b^h_delta

    def weights(self, n_keys: int) -> Tensor:
        """``(H, T, T)``: the weights ``alpha^h_ij`` of ``T = n_keys`` positions (rows sum to 1; 0 outside the
        window)."""
        t = torch.arange(n_keys, device=self.scores.device)
        distance = t[:, None] - t[None, :]  # (T, T): i - j
        inside = (distance >= 0) & (distance < self.window)
        scores = self.scores[:, distance.clamp(0, self.window - 1)]  # (H, T, T)
        return scores.masked_fill(~inside, float("-inf")).softmax(dim=-1)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``v (..., H, Tk, e)`` head-major (heads at dim -3); ``q (..., H, Tq, e)`` gives only the number of
        queries, the LAST ``Tq`` positions; ``k`` is unused -> ``(..., H, Tq, e)``."""
        t_q, t_k = q.shape[-2], v.shape[-2]
        return self.weights(t_k)[:, t_k - t_q :] @ v


class EngineMixing(nn.Module):
    """The block's mixing as an engine reorganises it: ``engine_mixing(rule, *args) = rule(*args)``, stateless.

    An engine that computes a block's attention in a form of its own (the incremental engine's cached sums and
    their update per connected configuration, :mod:`vqnqs.dedup.incremental_attention`) runs it through this
    module (``attn.engine_mixing``), so that module hooks (FLOP attribution) count it as the block's attention.
    """

    def forward(self, rule: Callable[..., Any], *args: Any) -> Any:
        return rule(*args)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with explicit matmuls (so CPU FLOP counters see them).

    ``causal=False`` swaps the mixing for :class:`BidirectionalMixing` (the phase network's encoder; no KV cache
    is ever used there). ``window=W`` swaps it for :class:`PositionMixing` in a window of ``W`` positions; then
    ``qkv_proj`` projects the values only (``(..., d)``) and :meth:`qkv` returns them as q, k and v.

    forward = out_proj(quantizer(attend(*qkv(x)))): the per-head mixed output passes through the
    ``quantizer`` slot (``nn.Identity`` here; the VQ-NQS variant puts its vector quantiser there)
    before ``W_O`` and the residual add of the enclosing block.
    """

    def __init__(self, d_model: int, n_heads: int, causal: bool = True, window: int | None = None) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.values_only = window is not None  # position attention: no queries or keys to project
        self.qkv_proj = nn.Linear(d_model, (1 if self.values_only else 3) * d_model)
        # Content mixings are stateless (no parameters); causal=False: the phase network's encoder.
        self.mixing: nn.Module = (
            PositionMixing(n_heads, window)
            if window is not None
            else CausalMixing()
            if causal
            else BidirectionalMixing()
        )
        self.engine_mixing = EngineMixing()  # stateless: the mixing in an engine's own form
        self.quantizer: nn.Module = nn.Identity()
        self.out_proj = nn.Linear(d_model, d_model)  # W_O

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-location projection ``(..., d) -> q, k, v`` each ``(..., d)`` (heads are split in attend); with
        position attention the values three times (the mixing reads only their number of rows from q)."""
        if self.values_only:
            v = self.qkv_proj(x)
            return v, v, v
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
