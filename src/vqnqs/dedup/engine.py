"""The dedup engine: ``log P`` of a flat batch of configurations in compressed ``(I, V)`` form.

A batch of hidden states ``(K, T, d)`` is held as ``ids I (K, T)`` int64 into a table ``V (U, d)`` of
unique rows. Every per-location operation runs on ``V`` only; attention mixes the locations of a
sequence, so it runs on the gathered ``(K, T, d)`` and its (quantised) output gives new integer keys::

    input      key (position, input token)          -> I, V = tok_emb + pos_emb of the unique keys
    full block h = ln_attn(V); q, k, v = attn.qkv(h)                          (U rows)
               mixed = attn.attend(q[I], k[I], v[I])                          (K, T, d) per sequence
      with VQ: codes = quantizer.encode(mixed)                                (K, T, H)
               key (previous id, code tuple) -> new I;  V' = V[prev] + W_O(decode(tuple))
                                                        (W_O on the unique code tuples only)
      without: I = arange(K*T) (every location its own state);  V' = V[I] + W_O(mixed)
               V' = V' + ff(ln_ff(V'))                                        (U' rows)
    final half-block: attention, no quantiser (identity ids), no feed-forward
    output     head(ln_f(V)) -> gather by I -> masked_log_softmax (Sz mask) -> gather tokens -> sum

Dedup spans the whole batch (all ``K`` sequences together). Ids come from integer keys only
(:mod:`vqnqs.dedup.keys`), never from comparing floats, so the result is the dense forward of the SAME
model reorganised: same codes, same ``log P`` up to floating-point reassociation.

Submodules are called through ``__call__`` (``block.ln_attn(V)``, ``block.attn.qkv_proj`` via
``block.attn.qkv``, ``quantizer(mixed, codes_only=True)``, ``block.attn.out_proj``, ``block.ff``,
``model.head``...), and the whole forward runs inside :class:`DedupEngine`, a module whose children mirror
the model's (``blocks.<i>.attn.qkv_proj``, ``head``...). So ``torch.utils.flop_counter.FlopCounterMode``
names the components as in the dense forward, with the root's name in front: ``DedupEngine.blocks.0.ff``
here for ``VQTransformer.blocks.0.ff`` there. The causal mixing (``attn.attend``, a method) is counted
under ``DedupEngine.blocks.<i>`` (dense: ``...blocks.<i>.attn``).

A quantiser in the ``attn.quantizer`` slot must offer ``encode(x) -> codes (..., H)``,
``decode(codes) -> (..., d)``, an integer ``codes`` (codebook size) and ``quantizer(x, codes_only=True)``
(= ``encode`` through ``__call__``), as :class:`vqnqs.models.vq.VectorQuantizer` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vqnqs.dedup.keys import pair_ids, tuple_ids
from vqnqs.models.transformer import AutoregressiveTransformer, Block


@dataclass
class Compressed:
    """Hidden states ``(K, T, d)`` as ``table[ids]``."""

    ids: Tensor  # (K, T) int64 in [0, U)
    table: Tensor  # (U, d)

    @property
    def n_unique(self) -> int:
        return self.table.shape[0]

    def dense(self) -> Tensor:
        """The uncompressed ``(K, T, d)``."""
        return self.table[self.ids]


@dataclass(frozen=True)
class LayerStats:
    """Size of the compressed state after one stage of the engine."""

    layer: str  # "embed", "block0", "block1", ..., "final"
    quantized: bool  # the stage's output came from quantised keys (dedup possible)
    unique_rows: int  # U after the stage: rows the next per-location ops run on
    locations: int  # K * T: rows the dense forward runs on
    code_tuples: int | None = None  # distinct code tuples (rows through W_O) in a quantised block

    @property
    def fraction(self) -> float:
        """``unique_rows / locations`` (1 = no savings)."""
        return self.unique_rows / max(self.locations, 1)


@dataclass
class DedupResult:
    log_prob: Tensor  # (K,)
    stats: list[LayerStats]
    codes: list[Tensor] = field(default_factory=list)  # per quantised block (K, T, H), if recorded

    @property
    def log_psi(self) -> Tensor:
        """``log psi = log P / 2`` (real: phase zero for the stoquastic models here)."""
        return 0.5 * self.log_prob


def _quantizer(block: Block) -> nn.Module | None:
    """The block's vector quantiser, or None for an identity slot."""
    quantizer = block.attn.quantizer
    if isinstance(quantizer, nn.Identity):
        return None
    if all(hasattr(quantizer, name) for name in ("encode", "decode", "codes")):
        return quantizer
    raise TypeError(
        f"quantizer {type(quantizer).__name__}: the dedup engine needs nn.Identity or a quantiser with "
        "encode(x) -> codes, decode(codes), an integer `codes` (codebook size) and quantizer(x, codes_only=True)"
    )


# --- stages ---------------------------------------------------------------------------------------


def embed_stage(model: AutoregressiveTransformer, inputs: Tensor) -> Compressed:
    """Input tokens ``(K, T)`` (BOS at position 0) -> states keyed by (position, input token)."""
    n_seq, n_tokens = inputs.shape
    positions = torch.arange(n_tokens, device=inputs.device).expand(n_seq, n_tokens)  # (K, T)
    ids, pos_u, tok_u = pair_ids(positions, n_tokens, inputs, model.bos + 1)  # (K, T), (U,), (U,)
    table = model.tok_emb(tok_u) + model.pos_emb(pos_u)  # (U, d)
    return Compressed(ids, table)


def attention_stage(block: Block, states: Compressed) -> Tensor:
    """Per-location LayerNorm and Q/K/V on the unique rows, causal mixing per sequence -> ``(K, T, d)``."""
    h = block.ln_attn(states.table)  # (U, d)
    q, k, v = block.attn.qkv(h)  # (U, d) each
    ids = states.ids
    return block.attn.attend(q[ids], k[ids], v[ids])  # (K, T, d)


def quantized_residual_stage(
    block: Block, quantizer: nn.Module, states: Compressed, mixed: Tensor
) -> tuple[Compressed, Tensor, int]:
    """``x + W_O(quantizer(mixed))`` keyed by (previous id, code tuple).

    Returns the new states, the codes ``(K, T, H)`` and the number of distinct code tuples.
    """
    codes = quantizer(mixed, codes_only=True)  # (K, T, H) int64: encode, through __call__
    tuple_of, tuples = tuple_ids(codes, quantizer.codes)  # (K, T), (n_tuples, H)
    n_tuples = tuples.shape[0]
    ids, prev_u, tuple_u = pair_ids(states.ids, states.n_unique, tuple_of, n_tuples)  # (K, T), (U',), (U',)
    projected = block.attn.out_proj(quantizer.decode(tuples))  # (n_tuples, d): W_O on unique codewords only
    table = states.table[prev_u] + projected[tuple_u]  # (U', d)
    return Compressed(ids, table), codes, n_tuples


def dense_residual_stage(block: Block, states: Compressed, mixed: Tensor) -> Compressed:
    """``x + W_O(mixed)`` without a quantiser: every location becomes its own state (ids = arange)."""
    n_seq, n_tokens, d = mixed.shape
    x = states.dense().reshape(n_seq * n_tokens, d)  # (K*T, d)
    table = x + block.attn.out_proj(mixed.reshape(n_seq * n_tokens, d))  # (K*T, d)
    ids = torch.arange(n_seq * n_tokens, device=mixed.device).reshape(n_seq, n_tokens)
    return Compressed(ids, table)


def feed_forward_stage(block: Block, states: Compressed) -> Compressed:
    """``x + ff(ln_ff(x))`` on the unique rows (a full block's second half)."""
    table = states.table + block.ff(block.ln_ff(states.table))  # (U, d)
    return Compressed(states.ids, table)


def block_stage(block: Block, states: Compressed) -> tuple[Compressed, Tensor | None, int | None]:
    """One block (full or half): returns the new states, and the codes and code-tuple count if quantised."""
    mixed = attention_stage(block, states)  # (K, T, d)
    quantizer = _quantizer(block)
    codes, n_tuples = None, None
    if quantizer is None:
        states = dense_residual_stage(block, states, mixed)
    else:
        states, codes, n_tuples = quantized_residual_stage(block, quantizer, states, mixed)
    if block.ff is not None and block.ln_ff is not None:
        states = feed_forward_stage(block, states)
    return states, codes, n_tuples


def output_stage(model: AutoregressiveTransformer, states: Compressed, tokens: Tensor) -> Tensor:
    """Head on the unique rows, then per sequence the masked normalisation -> ``log P (K,)``."""
    logits = model.head(model.ln_f(states.table))[states.ids]  # (U, vocab) -> (K, T, vocab)
    log_probs = model.masked_log_softmax(logits, model.n_down_before(tokens))  # (K, T, vocab)
    return log_probs.gather(-1, tokens[..., None]).squeeze(-1).sum(dim=-1)  # (K,)


# --- the whole forward ----------------------------------------------------------------------------


class _BlockStage(nn.Module):
    """One block's stage as a module: the block's children registered under the same names."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        for name, child in block.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "block", block)  # plain attribute: not a second registration

    def forward(self, states: Compressed) -> tuple[Compressed, Tensor | None, int | None]:
        return block_stage(self.block, states)


class DedupEngine(nn.Module):
    """The dedup forward of ``model`` as a module whose children mirror the model's (for FLOP attribution).

    Holds no parameters of its own: it shares the model's submodules, so it follows the model's weights,
    device and dtype. Build one per model (cheap) and call it: ``DedupEngine(model)(s) -> DedupResult``.
    """

    def __init__(self, model: AutoregressiveTransformer) -> None:
        super().__init__()
        for name, child in model.named_children():
            if name == "blocks":
                self.blocks = nn.ModuleList(_BlockStage(block) for block in model.blocks)
            elif name == "final_block":
                self.final_block = _BlockStage(model.final_block)
            else:
                self.add_module(name, child)
        object.__setattr__(self, "model", model)

    def forward(self, s: Tensor, record_codes: bool = False) -> DedupResult:
        """``s (K, N)`` -> :class:`DedupResult` (``log P (K,)``, per-stage statistics, optional codes)."""
        model = self.model
        tokens = model.patching.to_tokens(s.to(model.device))  # (K, T)
        inputs = model.shift_right(tokens)  # (K, T)
        locations = tokens.numel()
        states = embed_stage(model, inputs)
        stats = [LayerStats("embed", True, states.n_unique, locations)]
        codes_per_block: list[Tensor] = []
        named = [*((f"block{i}", stage) for i, stage in enumerate(self.blocks)), ("final", self.final_block)]
        for name, stage in named:
            states, codes, n_tuples = stage(states)
            stats.append(LayerStats(name, codes is not None, states.n_unique, locations, n_tuples))
            if record_codes and codes is not None:
                codes_per_block.append(codes)
        log_prob = output_stage(model, states, tokens)
        return DedupResult(log_prob, stats, codes_per_block)


def dedup_log_prob(model: AutoregressiveTransformer, s: Tensor, record_codes: bool = False) -> DedupResult:
    """``log P(s)`` for ``s (K, N)`` through the compressed forward, with per-stage statistics.

    Works for the baseline (identity slots: no savings after the embedding) and for VQ models
    (:class:`vqnqs.models.vq.VQTransformer`). Gradients flow as in the dense forward in eval mode, except
    through the (integer) codes; the quantisers' training state is never touched (codes only).
    """
    return DedupEngine(model)(s, record_codes=record_codes)


def dedup_log_psi(model: AutoregressiveTransformer, s: Tensor) -> Tensor:
    """``log psi(s) = log P(s) / 2`` for ``s (K, N)`` through the dedup engine -> ``(K,)``."""
    return dedup_log_prob(model, s).log_psi


def dense_codes(model: AutoregressiveTransformer, s: Tensor) -> list[Tensor]:
    """The codes ``(K, T, H)`` each quantised block of the DENSE forward assigns to ``s (K, N)``.

    Reference for the engine's codes: forward hooks re-encode each quantiser's input (``encode`` is a
    pure function of the input and the codebook, so these are the codes the dense forward used).
    """
    recorded: list[Tensor] = []
    handles = []
    for block in model.blocks:
        quantizer = _quantizer(block)
        if quantizer is not None:
            hook = lambda module, args, output: recorded.append(module.encode(args[0]))  # noqa: E731
            handles.append(quantizer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.log_prob(s)
    finally:
        for handle in handles:
            handle.remove()
    return recorded
