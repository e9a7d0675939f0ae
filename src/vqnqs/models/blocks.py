"""The transformer's building blocks, shared by the autoregressive network and the phase network's encoder.

A pre-LayerNorm block of width ``d`` (``(..., T, d) -> (..., T, d)``)::

    x = x + W_O(quantizer(attend(qkv(ln_attn(x)))))   attention: models.attention; quantizer: Identity or a VQ
    x = x + ff(ln_ff(x))                              full blocks only; ff = Linear(d_ff, d) . GELU . Linear(d, d_ff)

:meth:`Block.components` names each module with its role ``(layer, group)`` (FLOP attribution goes by it);
:func:`gpt2_init` is the weight initialisation both networks start from.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn
from torch.nn import functional as F

from vqnqs.models.attention import CausalSelfAttention, KVCache

Role = tuple[str, str]  # (layer, group), e.g. ("block0", "feed_forward")


class Add(nn.Module):
    """``x + y`` as a stateless module: the embedding sum and the residual adds, so that module hooks (FLOP
    attribution) see them as components of their own, in the dense forward and in the dedup engine alike."""

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return x + y


class FeedForward(nn.Module):
    """Per-location MLP ``(..., d) -> (..., d_ff) -> (..., d)``."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff)
        self.fc_out = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))


class Block(nn.Module):
    """Pre-LN block: ``x + attn(ln(x))`` then, for a full block, ``x + ff(ln(x))``; ``causal=False``: an encoder
    block (the phase network's); ``window=W``: position attention in a window of ``W`` positions."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        feed_forward: bool = True,
        causal: bool = True,
        window: int | None = None,
    ) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, causal, window)
        # The attention-only half-block has neither (None rather than Identity: no parameters, no FLOPs).
        self.ln_ff: nn.LayerNorm | None = nn.LayerNorm(d_model) if feed_forward else None
        self.ff: FeedForward | None = FeedForward(d_model, d_ff) if feed_forward else None
        self.residual = Add()

    def forward(self, x: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        attended, cache = self.attn(self.ln_attn(x), cache)
        x = self.residual(x, attended)
        if self.ff is not None and self.ln_ff is not None:
            x = self.residual(x, self.ff(self.ln_ff(x)))
        return x, cache

    def components(self, layer: str) -> Iterator[tuple[nn.Module, Role]]:
        """The block's components with their roles ``(layer, group)``, in network order."""
        yield self.ln_attn, (layer, "ln_attn")
        yield self.attn.qkv_proj, (layer, "qkv_proj")
        yield self.attn.mixing, (layer, "attention")
        yield self.attn.engine_mixing, (layer, "attention")
        yield self.attn.quantizer, (layer, "quantizer")
        yield self.attn.out_proj, (layer, "out_proj")
        yield self.residual, (layer, "residual")
        if self.ff is not None and self.ln_ff is not None:
            yield self.ln_ff, (layer, "ln_ff")
            yield self.ff, (layer, "feed_forward")


def gpt2_init(network: nn.Module) -> None:
    """N(0, 0.02) weights of every Linear and Embedding of ``network``, zero biases (GPT-2's init)."""
    for module in network.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
