"""The phase network ``phi(s)``: a bidirectional encoder over the same patch tokens, pooled to a scalar.

``psi(s) = sqrt(P(s)) exp(i phi(s))``: ``P`` is the autoregressive transformer (normalised, sampled exactly),
``phi`` is real and needs no normalisation, so it may look at the whole configuration at once (the paper's
section 3)::

    token t_i + position i embedding                                   (B, T, d)   no BOS, no shift
    phase_blocks x Block(causal=False): x = x + W_O(quantizer(attend(qkv(ln(x)))));  x = x + ff(ln(x))
    phi = mean_i head(ln_f(x_i))                                       (B,)        head: Linear(d, 1)

The head is applied per location before the mean over positions: a linear map commutes with the mean, so this
is the paper's "pool, then project to a scalar", written so that every op but the mean acts per location (the
dedup engine then runs them on unique rows only, :mod:`vqnqs.dedup.phase`). A VQ model puts a quantiser in
every encoder block too (:class:`~vqnqs.models.vq.VQTransformer`), as the paper shares the vector-to-vector
map between the two networks.

The modules keep the names of the autoregressive network's (``tok_emb``, ``pos_emb``, ``embed_sum``,
``blocks``, ``ln_f``, ``head``), so FLOP attribution and the dedup layers treat both alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from vqnqs.models.blocks import Add, Block, Role, gpt2_init
from vqnqs.models.patches import Patching


class PhaseNetwork(nn.Module):
    """``phi(s)`` of ``n_blocks`` encoder blocks of width ``d_model`` (module docstring): ``s (B, N) -> (B,)``
    over the tokens of ``patching``; the autoregressive network builds it with its own ``d_model``, ``n_heads``
    and ``d_ff``."""

    def __init__(self, patching: Patching, d_model: int, n_heads: int, d_ff: int, n_blocks: int) -> None:
        super().__init__()
        self.patching = patching
        n_tokens, vocab = patching.n_tokens, patching.vocab_size
        self.tok_emb = nn.Embedding(vocab, d_model)
        self.pos_emb = nn.Embedding(n_tokens, d_model)
        self.embed_sum = Add()
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff, causal=False) for _ in range(n_blocks))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2 init as the autoregressive network's; the head's std is 1/sqrt(d), so the initial phases are
        O(0.1) rad and differ between configurations (a constant phase would hide engine bugs)."""
        gpt2_init(self)
        n_residual_adds = 2 * max(1, len(self.blocks))
        for block in self.blocks:
            nn.init.normal_(block.attn.out_proj.weight, std=0.02 / math.sqrt(n_residual_adds))
            nn.init.normal_(block.ff.fc_out.weight, std=0.02 / math.sqrt(n_residual_adds))
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(self.head.in_features))

    def components(self) -> Iterator[tuple[nn.Module, Role]]:
        """Component modules with their roles, layers ``phase_embed``, ``phase_block{i}``, ``phase_output``."""
        for module in (self.tok_emb, self.pos_emb, self.embed_sum):
            yield module, ("phase_embed", "embedding")
        for i, block in enumerate(self.blocks):
            yield from block.components(f"phase_block{i}")
        yield self.ln_f, ("phase_output", "ln_f")
        yield self.head, ("phase_output", "head")

    def embed(self, tokens: Tensor) -> Tensor:
        """Per location: tokens ``(B, T)`` -> ``(B, T, d)``."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.embed_sum(self.tok_emb(tokens), self.pos_emb(positions))

    def forward(self, s: Tensor) -> Tensor:
        """``s (B, N)`` -> ``phi(s) (B,)`` in radians."""
        tokens = self.patching.to_tokens(s.to(self.head.weight.device))  # (B, T)
        x = self.embed(tokens)
        for block in self.blocks:
            x, _ = block(x)
        return self.head(self.ln_f(x)).squeeze(-1).mean(dim=-1)  # (B, T) -> (B,)
