"""Autoregressive transformer wave function over patch tokens (the VQ-NQS backbone).

``P(s) = prod_i P(t_i | t_<i)`` over the patch tokens ``t`` of ``s`` (see ``patches.py``), so ``P`` is
normalised by construction and sampled exactly; ``log psi(s) = log P(s) / 2``.

Network (pre-LayerNorm, nanoGPT-like)::

    input position i holds t_{i-1}, position 0 holds BOS   -> token + position embedding
    n_blocks x Block:          x = x + W_O(quantizer(attend(qkv(ln(x)))));  x = x + ff(ln(x))
    one attention-only block:  x = x + W_O(attend(qkv(ln(x))))              (its quantizer stays Identity)
    final LayerNorm -> head Linear(d, vocab) -> Sz mask -> log_softmax

The pieces are separately callable modules for engines that reorganise the forward pass (the dedup engine):

- per location, acting on ``(..., d)`` rows independently: ``model.tok_emb``, ``model.pos_emb`` and
  their sum ``model.embed_sum``, ``block.ln_attn``, ``block.attn.qkv_proj`` (Q/K/V projection),
  ``block.attn.quantizer`` (VQ slot), ``block.attn.out_proj`` (W_O), ``block.residual`` (the residual
  adds), ``block.ln_ff``, ``block.ff``, ``model.ln_f``, ``model.head``;
- per sequence: ``block.attn.mixing(q, k, v)`` (causal mixing of head-major tensors, see
  :mod:`vqnqs.models.attention`) and ``model.masked_log_softmax(logits, n_down_before, start)`` (a method:
  Sz mask + normalisation).

:meth:`AutoregressiveTransformer.components` lists these modules with their role ``(layer, group)``; FLOP
attribution (:mod:`vqnqs.profiling.flops`) goes by it. ``model.blocks`` holds the full blocks (the ones
that take a quantiser), ``model.final_block`` the half-block.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vqnqs.knobs import Config, check_knobs, knob, knobs_of
from vqnqs.models.attention import KVCache
from vqnqs.models.blocks import Add, Block, Role, gpt2_init
from vqnqs.models.patches import Patching, validate_patching
from vqnqs.models.phase import PhaseNetwork


@dataclass(frozen=True)
class ModelShape(Config):
    """The transformer's shape apart from the lattice: the knobs of a stage that builds one (train's)."""

    # Spins per token: K consecutive spins on a chain, p x p blocks on a square lattice; the vocabulary has
    # 2^(spins per token) tokens. None: default_patch (2x2 on a square lattice, K = 4 on a chain).
    patch: int | None = knob(None, minimum=1)
    # Residual-stream width d.
    d_model: int = knob(32, minimum=1)
    # Attention heads (must divide d_model); each works on d_model / n_heads channels (and owns one VQ codebook).
    n_heads: int = knob(4, minimum=1)
    # Full blocks (attention + feed-forward); ONE attention-only half-block always follows them.
    n_blocks: int = knob(2, minimum=0)
    # Feed-forward hidden width; None: 4 * d_model.
    d_ff: int | None = knob(None, minimum=1)
    # Encoder blocks of the phase network phi(s) (models.phase: bidirectional, pooled, same d_model, heads and
    # d_ff); 0: no phase network, phi = 0, a real psi, enough where the signs are known (TFIM; Heisenberg
    # with Marshall's sign rule).
    phase_blocks: int = knob(0, minimum=0)
    # Attention weights: 'content' (softmax of q.k, the paper's) | 'position' (learned per head and distance, the
    # same for every input, in a window: a flipped spin moves only the rows of the next `window` tokens, which
    # keeps a VQ model's codes far from the flip, so its local energy costs a few forward passes at any N).
    attention: str = knob("content", choices=("content", "position"))
    # Tokens a row of position attention sees (itself and window - 1 before it); None: the whole sequence.
    window: int | None = knob(None, minimum=1)


@dataclass(frozen=True)
class LatticeShape:
    # (N,) for a chain, (L, W) for a square lattice; sites are numbered row-major.
    lattice_shape: tuple[int, ...]


@dataclass(frozen=True)
class TransformerConfig(ModelShape, LatticeShape):
    """A :class:`ModelShape` on a lattice, with its Sz sector: the model's whole config.

    Fields in order (the bases' in reverse order, then its own): ``lattice_shape``, the shape's ``patch,
    d_model, n_heads, n_blocks, d_ff, phase_blocks, attention, window``, then ``n_down``. ``patch`` and
    ``d_ff`` are resolved at construction (never None after).
    """

    # Sz sector: the exact total number of down spins, enforced by masking the conditionals; None = no mask.
    n_down: int | None = None

    @classmethod
    def of(cls, shape: ModelShape, lattice_shape: tuple[int, ...], n_down: int | None = None) -> TransformerConfig:
        """The knobs of ``shape`` (any :class:`ModelShape`, e.g. a stage's config) on a lattice."""
        return cls(lattice_shape, n_down=n_down, **knobs_of(shape, ModelShape))

    def __post_init__(self) -> None:
        # Frozen, so normalise through object.__setattr__ (lists from YAML become tuples, patch and d_ff get
        # their defaults), then check the shape's knobs (the lattice's facts are checked in check()).
        object.__setattr__(self, "lattice_shape", tuple(int(d) for d in self.lattice_shape))
        if self.patch is None:
            object.__setattr__(self, "patch", default_patch(self.lattice_shape))
        if self.d_ff is None and isinstance(self.d_model, int):  # a d_model of another type: refused below
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        check_knobs(self, ModelShape)
        self.check()

    def check(self) -> None:
        validate_patching(self.lattice_shape, self.patch)
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads {self.n_heads}: must divide d_model={self.d_model}")
        if self.n_down is not None and not 0 <= self.n_down <= self.n_sites:
            raise ValueError(f"n_down {self.n_down}: must lie in [0, {self.n_sites}] (number of sites)")
        if self.window is not None and self.attention != "position":
            raise ValueError(f"window {self.window}: only position attention has a window (set attention=position)")

    @property
    def n_sites(self) -> int:
        return math.prod(self.lattice_shape)

    @classmethod
    def paper(cls, lattice_shape: tuple[int, ...], n_down: int | None = None) -> TransformerConfig:
        """The paper's shape: 3 full blocks + the attention-only half-block, d = 256, 8 heads, 2x2 patches.

        A chain gets K = 4 spins per token (our choice: the same 16-token vocabulary as a 2x2 patch).
        """
        return cls(lattice_shape, d_model=256, n_heads=8, n_blocks=3, n_down=n_down)


def default_patch(lattice_shape: tuple[int, ...]) -> int:
    """Spins per token when none is given: 2x2 blocks on a square lattice, K = 4 on a chain (the same
    16-value vocabulary), or the largest of 2, 1 that tiles a chain whose length 4 does not divide.

    Why 4 on a chain: half the tokens of K = 2, so attention and every per-location op cost about half,
    and each conditional covers more spins (the README has the TFIM runs that compare them).
    """
    shape = tuple(lattice_shape)
    if len(shape) == 2:
        return 2
    return next(k for k in (4, 2, 1) if shape[0] % k == 0)


def _inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """Draw one value per row of ``probs (B, V)`` (float64, rows need not sum to 1) with uniforms ``u (B,)``.

    Picks the first value whose CDF exceeds ``u * total``: a zero-probability value never raises the CDF,
    so it is never picked. ``u * total`` may round up to ``total`` (then every CDF entry is <= it); that
    case falls back to the last value of nonzero probability.
    """
    cdf = probs.cumsum(dim=-1)
    index = (cdf <= (u * cdf[:, -1])[:, None]).sum(dim=-1)
    values = torch.arange(probs.shape[-1], device=probs.device)
    last_possible = torch.where(probs > 0, values, 0).amax(dim=-1)
    return torch.minimum(index, last_possible)


class AutoregressiveTransformer(nn.Module):
    """Normalised autoregressive wave function ``psi(s) = sqrt(P(s)) exp(i phi(s))`` over patch tokens; ``phi``
    is the phase network ``model.phase`` (:mod:`vqnqs.models.phase`) or, without one, 0.

    Device and dtype follow the parameters (``.to(device)``, ``.double()``); every buffer is an
    integer table, so ``.double()`` leaves nothing in float32.
    """

    spins_after: Tensor  # (T,) number of spins in the patches after patch i

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.patching = Patching(config.lattice_shape, config.patch)
        n_tokens, vocab, d = self.patching.n_tokens, self.patching.vocab_size, config.d_model
        self.bos = vocab  # the extra embedding row that starts every sequence
        self.tok_emb = nn.Embedding(vocab + 1, d)
        self.pos_emb = nn.Embedding(n_tokens, d)
        self.embed_sum = Add()
        # Position attention's window in tokens, at most the sequence; None: content attention.
        window = None if config.attention != "position" else min(config.window or n_tokens, n_tokens)
        self.blocks = nn.ModuleList(
            Block(config.d_model, config.n_heads, config.d_ff, window=window) for _ in range(config.n_blocks)
        )
        self.final_block = Block(config.d_model, config.n_heads, config.d_ff, feed_forward=False, window=window)
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        spins_after = self.patching.spins_per_token * torch.arange(n_tokens - 1, -1, -1)
        self.register_buffer("spins_after", spins_after, persistent=False)
        self._init_weights()
        # After the init above, which is the autoregressive network's own.
        self.phase: PhaseNetwork | None = None
        if config.phase_blocks:
            patching = Patching(config.lattice_shape, config.patch)
            self.phase = PhaseNetwork(patching, config.d_model, config.n_heads, config.d_ff, config.phase_blocks)

    def _init_weights(self) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, residual projections scaled by the number of residual
        adds. The head is scaled by 1/sqrt(d) so initial logits are ~0.02: close to uniform over the allowed
        values, yet not exactly uniform (an exactly constant log psi would hide bugs in engines compared to it).
        """
        gpt2_init(self)
        n_residual_adds = 2 * self.config.n_blocks + 1
        for block in [*self.blocks, self.final_block]:
            nn.init.normal_(block.attn.out_proj.weight, std=0.02 / math.sqrt(n_residual_adds))
            if block.ff is not None:
                nn.init.normal_(block.ff.fc_out.weight, std=0.02 / math.sqrt(n_residual_adds))
        nn.init.normal_(self.head.weight, std=0.02 / math.sqrt(self.config.d_model))

    def components(self) -> Iterator[tuple[nn.Module, Role]]:
        """Every component module with its role ``(layer, group)``, in network order.

        Layers: ``embed``, ``block0`` .. ``block{n-1}`` (full blocks), ``final`` (the half-block), ``output``.
        Every op of the forward runs inside one of these modules (or in ``masked_log_softmax``, outside the
        forward): FLOP attribution counts each op under the role of the innermost component running it.
        """
        for module in (self.tok_emb, self.pos_emb, self.embed_sum):
            yield module, ("embed", "embedding")
        for i, block in enumerate(self.blocks):
            yield from block.components(f"block{i}")
        yield from self.final_block.components("final")
        yield self.ln_f, ("output", "ln_f")
        yield self.head, ("output", "head")
        if self.phase is not None:
            yield from self.phase.components()

    @property
    def is_complex(self) -> bool:
        """Whether ``log psi`` is complex (a phase network is present)."""
        return self.phase is not None

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def n_sites(self) -> int:
        return self.patching.n_sites

    def shift_right(self, tokens: Tensor) -> Tensor:
        """Teacher-forcing inputs ``(B, T)``: position i holds ``t_{i-1}``, position 0 holds BOS."""
        bos = torch.full_like(tokens[:, :1], self.bos)
        return torch.cat([bos, tokens[:, :-1]], dim=1)

    def n_down_before(self, tokens: Tensor) -> Tensor:
        """``(B, T)`` tokens -> ``(B, T)`` number of down spins in the patches before each one."""
        down = self.patching.popcount[tokens]
        return down.cumsum(dim=1) - down

    def embed(self, inputs: Tensor, start: int = 0) -> Tensor:
        """Per location: ``(B, T')`` input tokens at positions ``start .. start+T'-1`` -> ``(B, T', d)``."""
        positions = torch.arange(start, start + inputs.shape[1], device=inputs.device)
        return self.embed_sum(self.tok_emb(inputs), self.pos_emb(positions))

    def forward(self, inputs: Tensor, cache: list[KVCache] | None = None) -> tuple[Tensor, list[KVCache]]:
        """Unmasked logits ``(B, T', vocab)`` for input tokens ``(B, T')``, and the per-block KV cache.

        Without a cache the inputs start at position 0; with one (from a previous call) they continue
        right after the cached positions.
        """
        start = 0 if cache is None else cache[0][0].shape[1]
        x = self.embed(inputs, start)
        new_cache = []
        for i, block in enumerate([*self.blocks, self.final_block]):
            x, block_cache = block(x, None if cache is None else cache[i])
            new_cache.append(block_cache)
        return self.head(self.ln_f(x)), new_cache

    def masked_log_softmax(
        self, logits: Tensor, n_down_before: Tensor, start: int = 0, positions: Tensor | None = None
    ) -> Tensor:
        """Normalised conditionals ``(B, T', vocab)`` from logits of patches ``start .. start+T'-1``; or, with
        ``positions (R,)``, ``(R, vocab)`` from logits ``(R, vocab)`` of rows at those patches.

        With ``n_down`` set, value v of patch i (c down spins before it, R spins after it) is allowed iff
        ``c + pop(v) <= n_down <= c + pop(v) + R``; the others get logit -inf before the log_softmax, so
        the conditionals stay exactly normalised over the allowed values.
        """
        n_down = self.config.n_down
        if n_down is None:
            return logits.log_softmax(dim=-1)
        after = self.spins_after[start : start + logits.shape[1]] if positions is None else self.spins_after[positions]
        down = n_down_before[..., None] + self.patching.popcount  # (B, T', vocab) down spins through patch i
        allowed = (down <= n_down) & (down + after[:, None] >= n_down)
        # A prefix already outside the sector leaves no allowed value. Such a row is unreachable: give it
        # -inf everywhere, instead of the NaN an all -inf log_softmax would give.
        reachable = allowed.any(dim=-1, keepdim=True)
        masked = logits.masked_fill(~allowed, float("-inf")).masked_fill(~reachable, 0.0)
        return masked.log_softmax(dim=-1).masked_fill(~reachable, float("-inf"))

    def conditional_log_probs(self, s: Tensor) -> Tensor:
        """``s (B, N)`` -> ``log P(t_i = v | t_<i)`` as ``(B, T, vocab)``, masked and normalised."""
        tokens = self.patching.to_tokens(s.to(self.device))
        logits, _ = self(self.shift_right(tokens))
        return self.masked_log_softmax(logits, self.n_down_before(tokens))

    def log_prob(self, s: Tensor) -> Tensor:
        """``s (B, N)`` -> ``log P(s) (B,)``; -inf outside the Sz sector when ``n_down`` is set."""
        tokens = self.patching.to_tokens(s.to(self.device))
        logits, _ = self(self.shift_right(tokens))
        log_probs = self.masked_log_softmax(logits, self.n_down_before(tokens))  # (B, T, vocab)
        return log_probs.gather(-1, tokens[..., None]).squeeze(-1).sum(dim=-1)

    def log_psi(self, s: Tensor) -> Tensor:
        """``s (B, N)`` -> ``log psi(s) = log P(s) / 2 + i phi(s)`` as ``(B,)``: complex with a phase network,
        else real (phi = 0: the stoquastic systems, TFIM and Heisenberg with Marshall's sign)."""
        half_log_prob = 0.5 * self.log_prob(s)
        if self.phase is None:
            return half_log_prob
        return torch.complex(half_log_prob, self.phase(s))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, use_cache: bool = True) -> Tensor:
        """Exact ancestral sampling: ``n`` independent configurations ``(n, N)`` int64.

        ``generator`` must live on the model's device. Each patch step draws ``torch.rand(n)`` in float64
        from it and inverts the CDF of that step's conditional, so the cached path (one new position per
        step, about one forward pass in total) and the uncached path (the whole prefix re-run each step)
        consume the same random stream and give the same samples.
        """
        n_tokens, device = self.patching.n_tokens, self.device
        tokens = torch.zeros((n, n_tokens), dtype=torch.long, device=device)
        inputs = torch.full((n, n_tokens), self.bos, dtype=torch.long, device=device)  # shifted tokens
        n_down = torch.zeros((n, 1), dtype=torch.long, device=device)
        cache: list[KVCache] | None = None
        for i in range(n_tokens):
            if use_cache:
                logits, cache = self(inputs[:, i : i + 1], cache)
            else:
                logits, _ = self(inputs[:, : i + 1])
            log_probs = self.masked_log_softmax(logits[:, -1:], n_down, start=i)[:, 0]  # (n, vocab)
            u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
            drawn = _inverse_cdf(log_probs.double().exp(), u)  # (n,)
            tokens[:, i] = drawn
            n_down += self.patching.popcount[drawn][:, None]
            if i + 1 < n_tokens:
                inputs[:, i + 1] = drawn
        return self.patching.from_tokens(tokens)
