"""The dedup forward layer by layer: one stage per network layer, on hidden states in compressed ``(I, V)`` form.

A batch of hidden states ``(K, T, d)`` is held as ``ids I (K, T)`` int64 into a table ``V (U, d)`` of
unique rows (:class:`Compressed`). Every per-location operation runs on ``V`` only. Attention mixes the
locations of a sequence, but causally: its output at position i is a function of the ids ``I[k, 0..i]``
(the prefix), so it runs once per attention row of a :class:`~vqnqs.dedup.prefix.PrefixPartition` (one
row per distinct prefix, or with the paper's engine one per location)::

    embed      key (position, input token)          -> I, V = tok_emb + pos_emb of the unique keys
    full block h = ln_attn(V); q, k, v = attn.qkv_proj(h)                     (U rows, head-major)
               mixed = attn.mixing per group of representatives               (R, d) one row per prefix
      with VQ: codes = quantizer(mixed, codes_only=True)                      (R, H)
               key (previous id, code tuple) per row -> new I = ids_of_row[rows]
               V' = V[prev] + W_O(decode(tuple))           (W_O on the unique code tuples only)
      without: I = rows (each prefix its own state);  V' = V[prev of row] + W_O(mixed)   (R rows)
               V' = V' + ff(ln_ff(V'))                                        (U' rows)
    final half-block: attention per prefix, no quantiser (I = rows), no feed-forward
    output     head(ln_f(V)) -> gather by I -> masked_log_softmax (Sz mask) -> gather tokens -> sum

Ids come from integer keys only (:mod:`vqnqs.dedup.keys`), never from comparing floats. All arithmetic
runs in the model's component modules (:meth:`~vqnqs.models.transformer.AutoregressiveTransformer.components`),
called through ``__call__`` as in the dense forward: ``model.embed_sum``, ``block.ln_attn``,
``block.attn.qkv_proj``, ``block.attn.mixing``, ``quantizer(mixed, codes_only=True)``,
``block.attn.out_proj``, ``block.residual``, ``block.ff``, ``model.head``..., so module hooks (FLOP
attribution) see the same components in both. Only the Sz-masked normalisation is a method
(``model.masked_log_softmax``), as in the dense ``log_prob``.

The stages that run matmuls take an :class:`~vqnqs.dedup.policy.Execution` (chunk sizes, threads): the
per-location stages run on blocks of rows, the attention on steps of a few representative sequences whose
outputs go straight to the quantiser (or ``W_O``), so neither the whole ``(R, d)`` attention output nor a
``(U, d_ff)`` hidden layer is materialised.

A quantiser in the ``attn.quantizer`` slot must offer ``encode(x) -> codes (..., H)``,
``decode(codes) -> (..., d)``, an integer ``codes`` (codebook size) and ``quantizer(x, codes_only=True)``
(= ``encode`` through ``__call__``), as :class:`vqnqs.models.vq.VectorQuantizer` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vqnqs.dedup.keys import pair_ids, tuple_ids
from vqnqs.dedup.policy import Execution
from vqnqs.dedup.prefix import PrefixPartition
from vqnqs.models.blocks import Block
from vqnqs.models.transformer import AutoregressiveTransformer


@dataclass
class Compressed:
    """Hidden states ``(K, T, d)`` as ``table[ids]``."""

    ids: Tensor  # (K, T) int64 in [0, U)
    table: Tensor  # (U, d)
    # Set when ``ids`` are themselves the prefix ids (rows) of this partition: the next block reuses it.
    prefixes: PrefixPartition | None = None

    @property
    def n_unique(self) -> int:
        return self.table.shape[0]

    def dense(self) -> Tensor:
        """The uncompressed ``(K, T, d)``."""
        return self.table[self.ids]


@dataclass
class BlockOutput:
    """What one block stage returns: the new states and, for the statistics, what it ran on."""

    states: Compressed
    prefixes: PrefixPartition  # of the block's input ids: its attention rows
    codes: Tensor | None = None  # (K, T, H) if quantised and recorded
    n_tuples: int | None = None  # distinct code tuples if quantised


def quantizer_of(block: Block) -> nn.Module | None:
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


def embed_stage(model: nn.Module, inputs: Tensor, n_values: int) -> Compressed:
    """Input tokens ``(K, T)`` in ``[0, n_values)`` -> states keyed by (position, input token), through ``model``'s
    ``tok_emb``, ``pos_emb`` and ``embed_sum`` (the autoregressive network's, BOS at position 0, or the phase
    network's)."""
    n_seq, n_tokens = inputs.shape
    positions = torch.arange(n_tokens, device=inputs.device).expand(n_seq, n_tokens)  # (K, T)
    ids, pos_u, tok_u = pair_ids(positions, n_tokens, inputs, n_values)  # (K, T), (U,), (U,)
    table = model.embed_sum(model.tok_emb(tok_u), model.pos_emb(pos_u))  # (U, d)
    return Compressed(ids, table)


def qkv_stage(block: Block, states: Compressed, run: Execution) -> Tensor:
    """LayerNorm and Q/K/V projection of the unique rows -> head-major ``(3, H, U, e)`` (q, k, v; with position
    attention the values three times, as ``attn.qkv`` gives them)."""
    table = states.table  # (U, d)
    n_unique, d = table.shape
    n_heads, chunk = block.attn.n_heads, run.row_chunk
    qkv = table.new_empty(3, n_heads, n_unique, d // n_heads)  # (3, H, U, e)
    with run.matmul_threads(n_unique):
        for start in range(0, n_unique, chunk):
            rows = torch.stack(block.attn.qkv(block.ln_attn(table[start : start + chunk])))  # (3, c, d): q, k, v
            qkv[:, :, start : start + chunk] = rows.view(3, rows.shape[1], n_heads, -1).transpose(1, 2)
    return qkv


def attention_stage(
    block: Block, states: Compressed, prefixes: PrefixPartition, qkv: Tensor, run: Execution
) -> Iterator[tuple[slice, Tensor]]:
    """Causal mixing once per attention row: yields ``(rows, mixed)``, the outputs ``(len(rows), d)``
    (heads concatenated, before any quantiser or ``W_O``) of the attention rows ``rows``, in order.

    Row r is the attention output of every location whose prefix id is r. Each group of representatives
    (sequences representing positions ``start .. T-1``) runs, a few sequences at a time, as one batched
    ``block.attn.mixing``: their queries at those positions against all ``T`` keys of the sequence.
    """
    q, k, v = qkv  # (H, U, e) each, from qkv_stage
    n_heads, _, e = q.shape
    n_tokens = states.ids.shape[1]
    per_step = max(1, run.attention_chunk_rows // n_tokens)  # sequences per step
    for group in prefixes.groups:
        t_q = n_tokens - group.start
        for first in range(0, group.sequences.shape[0], per_step):
            ids = states.ids[group.sequences[first : first + per_step]]  # (n, T) input ids of the sequences
            n = ids.shape[0]
            keys = ids.reshape(-1)  # (n*T,)
            queries = ids[:, group.start :].reshape(-1)  # (n*Tq,)
            # Heads at dim -3 as in the dense forward (position attention weighs each head its own way).
            out = block.attn.mixing(
                q.index_select(1, queries).view(n_heads, n, t_q, e).transpose(0, 1),  # (n, H, Tq, e)
                k.index_select(1, keys).view(n_heads, n, n_tokens, e).transpose(0, 1),  # (n, H, T, e)
                v.index_select(1, keys).view(n_heads, n, n_tokens, e).transpose(0, 1),  # (n, H, T, e)
            )  # (n, H, Tq, e)
            row = group.first_row + first * t_q
            mixed = out.transpose(1, 2).reshape(n * t_q, n_heads * e)  # (n*Tq, d)
            yield slice(row, row + n * t_q), mixed


def quantized_residual_stage(
    block: Block, quantizer: nn.Module, states: Compressed, prefixes: PrefixPartition, qkv: Tensor, run: Execution
) -> tuple[Compressed, Tensor, int]:
    """``x + W_O(quantizer(attention))`` keyed by (previous id, code tuple), per attention row.

    Returns the new states, the codes of the attention rows ``(R, H)`` and the number of distinct code tuples.
    """
    # Encode through __call__, chunk by chunk as the attention rows come (in order): (R, H) int64.
    mixed_rows = attention_stage(block, states, prefixes, qkv, run)
    codes = torch.cat([quantizer(mixed, codes_only=True) for _, mixed in mixed_rows])
    tuple_of, tuples = tuple_ids(codes, quantizer.codes)  # (R,), (n_tuples, H)
    n_tuples = tuples.shape[0]
    previous = prefixes.at_rows(states.ids)  # (R,) the input id of each row's locations
    row_ids, prev_u, tuple_u = pair_ids(previous, states.n_unique, tuple_of, n_tuples)  # (R,), (U',), (U',)
    projected = block.attn.out_proj(quantizer.decode(tuples))  # (n_tuples, d): W_O on unique codewords only
    table = block.residual(states.table.index_select(0, prev_u), projected.index_select(0, tuple_u))  # (U', d)
    return Compressed(row_ids[prefixes.rows], table), codes, n_tuples


def dense_residual_stage(
    block: Block, states: Compressed, prefixes: PrefixPartition, qkv: Tensor, run: Execution
) -> Compressed:
    """``x + W_O(attention)`` without a quantiser: one state per attention row (ids = the prefix ids)."""
    previous = prefixes.at_rows(states.ids)  # (R,) the input id of each row's locations
    chunks = [
        block.residual(states.table.index_select(0, previous[rows]), block.attn.out_proj(mixed))  # (rows, d)
        for rows, mixed in attention_stage(block, states, prefixes, qkv, run)
    ]
    table = torch.cat(chunks)  # (R, d)
    return Compressed(prefixes.rows, table, prefixes)


def feed_forward_stage(block: Block, states: Compressed, run: Execution) -> Compressed:
    """``x + ff(ln_ff(x))`` on the unique rows (a full block's second half)."""
    table = run.map_rows(lambda x: block.residual(x, block.ff(block.ln_ff(x))), states.table)  # (U, d)
    return Compressed(states.ids, table, states.prefixes)


def block_stage(
    block: Block, states: Compressed, prefixes: PrefixPartition, run: Execution, record_codes: bool = False
) -> BlockOutput:
    """One block (full or half) with its attention on the rows of ``prefixes`` (a partition of the states'
    ids); the codes per location ``(K, T, H)`` if ``record_codes``."""
    quantizer = quantizer_of(block)
    codes, n_tuples = None, None
    qkv = qkv_stage(block, states, run)  # (3, H, U, e)
    if quantizer is None:
        states = dense_residual_stage(block, states, prefixes, qkv, run)
    else:
        states, row_codes, n_tuples = quantized_residual_stage(block, quantizer, states, prefixes, qkv, run)
        codes = row_codes[prefixes.rows] if record_codes else None  # (K, T, H)
    del qkv  # (3, H, U, e): free before the feed-forward
    if block.ff is not None and block.ln_ff is not None:
        states = feed_forward_stage(block, states, run)
    return BlockOutput(states, prefixes, codes, n_tuples)


def output_stage(model: AutoregressiveTransformer, states: Compressed, tokens: Tensor, run: Execution) -> Tensor:
    """Head on the unique rows, then per sequence the masked normalisation -> ``log P (K,)``."""
    logits = run.map_rows(lambda x: model.head(model.ln_f(x)), states.table)  # (U, V)
    logits = logits.index_select(0, states.ids.reshape(-1)).view(*states.ids.shape, -1)  # (K, T, V)
    log_probs = model.masked_log_softmax(logits, model.n_down_before(tokens))  # (K, T, vocab)
    return log_probs.gather(-1, tokens[..., None]).squeeze(-1).sum(dim=-1)  # (K,)
