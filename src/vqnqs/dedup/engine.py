"""The dedup engine: ``log P`` of a flat batch of configurations in compressed ``(I, V)`` form.

A batch of hidden states ``(K, T, d)`` is held as ``ids I (K, T)`` int64 into a table ``V (U, d)`` of
unique rows. Every per-location operation runs on ``V`` only. Attention mixes the locations of a
sequence, but causally: its output at position i is a function of the ids ``I[k, 0..i]`` (the prefix),
so it runs once per distinct prefix (:mod:`vqnqs.dedup.prefix`: R rows, integer prefix keys)::

    input      key (position, input token)          -> I, V = tok_emb + pos_emb of the unique keys
    full block prefixes of I -> rows (K, T) in [0, R), one representative location per row
               h = ln_attn(V); q, k, v = attn.qkv_proj(h)                     (U rows, head-major)
               mixed = causal_attention per group of representatives          (R, d) one row per prefix
      with VQ: codes = quantizer(mixed, codes_only=True)                      (R, H)
               key (previous id, code tuple) per row -> new I = ids_of_row[rows]
               V' = V[prev] + W_O(decode(tuple))           (W_O on the unique code tuples only)
      without: I = rows (each prefix its own state);  V' = V[prev of row] + W_O(mixed)   (R rows)
               V' = V' + ff(ln_ff(V'))                                        (U' rows)
    final half-block: attention per prefix, no quantiser (I = rows), no feed-forward
    output     head(ln_f(V)) -> gather by I -> masked_log_softmax (Sz mask) -> gather tokens -> sum

Dedup spans the whole batch (all ``K`` sequences together). Ids and prefix ids come from integer keys only
(:mod:`vqnqs.dedup.keys`, :mod:`vqnqs.dedup.prefix`), never from comparing floats, so the result is the
dense forward of the SAME model reorganised: same codes, same ``log P`` up to floating-point reassociation.

Submodules are called through ``__call__`` (``block.ln_attn(V)``, ``block.attn.qkv_proj``,
``quantizer(mixed, codes_only=True)``, ``block.attn.out_proj``, ``block.ff``, ``model.head``...), and the
whole forward runs inside :class:`DedupEngine`, a module whose children mirror the model's
(``blocks.<i>.attn.qkv_proj``, ``head``...). So ``torch.utils.flop_counter.FlopCounterMode`` names the
components as in the dense forward, with the root's name in front: ``DedupEngine.blocks.0.ff`` here for
``VQTransformer.blocks.0.ff`` there. The causal mixing (:func:`vqnqs.models.transformer.causal_attention`,
a function shared with the dense ``attn.attend``) is counted under ``DedupEngine.blocks.<i>`` (dense:
``...blocks.<i>.attn``): ``4 * d * T`` FLOPs per attention row (each row's query against the ``T`` keys of
its representative sequence, the future masked), against ``4 * d * T`` per location densely.

Execution: the per-location stages run on blocks of ``ROW_CHUNK`` rows, the attention on steps of a few
representative sequences whose outputs go straight to the quantiser (or ``W_O``), so neither the whole
``(R, d)`` attention output nor a ``(U, d_ff)`` hidden layer is materialised; the many small ops run
single-threaded and only the large per-location matmuls on the caller's threads (``SMALL_OP_THREADS``,
``PARALLEL_MIN_ROWS``). None of this changes what is computed, only the order of float operations.

A quantiser in the ``attn.quantizer`` slot must offer ``encode(x) -> codes (..., H)``,
``decode(codes) -> (..., d)``, an integer ``codes`` (codebook size) and ``quantizer(x, codes_only=True)``
(= ``encode`` through ``__call__``), as :class:`vqnqs.models.vq.VectorQuantizer` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vqnqs.dedup.keys import pair_ids, tuple_ids
from vqnqs.dedup.prefix import PrefixPartition, location_partition, prefix_partition
from vqnqs.models.transformer import AutoregressiveTransformer, Block, causal_attention


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


@dataclass(frozen=True)
class LayerStats:
    """Size of the compressed state after one stage of the engine."""

    layer: str  # "embed", "block0", "block1", ..., "final"
    quantized: bool  # the stage's output came from quantised keys (dedup possible)
    unique_rows: int  # U after the stage: rows the next per-location ops run on
    locations: int  # K * T: rows the dense forward runs on
    code_tuples: int | None = None  # distinct code tuples (rows through W_O) in a quantised block
    # Distinct prefixes of the stage's input ids: the rows its attention (and quantiser) ran on.
    attention_rows: int | None = None
    prefixes_per_position: tuple[int, ...] | None = None  # (T,) distinct prefixes ending at each position

    @property
    def fraction(self) -> float:
        """``unique_rows / locations`` (1 = no savings)."""
        return self.unique_rows / max(self.locations, 1)

    @property
    def attention_fraction(self) -> float | None:
        """``attention_rows / locations``: the share of attention rows left after prefix dedup."""
        return None if self.attention_rows is None else self.attention_rows / max(self.locations, 1)


@dataclass
class DedupResult:
    log_prob: Tensor  # (K,)
    stats: list[LayerStats]
    codes: list[Tensor] = field(default_factory=list)  # per quantised block (K, T, H), if recorded

    @property
    def log_psi(self) -> Tensor:
        """``log psi = log P / 2`` (real: phase zero for the stoquastic models here)."""
        return 0.5 * self.log_prob


@dataclass
class BlockOutput:
    """What one block stage returns: the new states and, for the statistics, what it ran on."""

    states: Compressed
    prefixes: PrefixPartition  # of the block's input ids: its attention rows
    codes: Tensor | None = None  # (K, T, H) if quantised and recorded
    n_tuples: int | None = None  # distinct code tuples if quantised


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


# Chunk sizes, in rows (they change only the order of float operations). The per-location stages (LN, Q/K/V,
# feed-forward, head) run on blocks of ROW_CHUNK rows: that bounds their temporaries (the (rows, d_ff)
# hidden layer) and keeps their matmuls few and large, which matters with several threads (each op is
# an OpenMP region, and on a busy machine each region waits for a descheduled worker: 6x6, 2 threads,
# load ~4.5: 3.4 s at 16384 rows against 5.0 s at 4096). The attention steps gather
# ATTENTION_CHUNK_ROWS key rows (sequences x T) at a time: their temporaries stay a few MB, cache-resident
# and recycled by the allocator instead of fresh pages (large allocations are mmapped, and first-touch
# page faults cost about as much as the arithmetic on them).
ROW_CHUNK = 16384  # per-location ops (LayerNorm, Q/K/V, feed-forward, head)
ATTENTION_CHUNK_ROWS = 8192  # key rows (sequences x T) gathered per attention step


def map_rows(fn: Callable[[Tensor], Tensor], x: Tensor, chunk: int | None = None) -> Tensor:
    """``fn(x)`` for a per-row ``fn`` (``(n, ...) -> (n, ...)``, rows independent), in blocks of rows."""
    chunk = ROW_CHUNK if chunk is None else chunk
    n_rows = x.shape[0]
    with _matmul_threads(n_rows):
        if n_rows <= chunk:
            return fn(x)
        first = fn(x[:chunk])
        out = first.new_empty((n_rows, *first.shape[1:]))
        out[:chunk] = first
        for start in range(chunk, n_rows, chunk):
            out[start : start + chunk] = fn(x[start : start + chunk])
    return out


# Intra-op threads. The forward is a couple of thousand small, memory-bound ops (prefix keys, gathers,
# the per-chunk attention and quantiser, residuals, output), each an OpenMP parallel region of its own:
# fork/join gains little on them, and on a busy machine every region waits for a descheduled worker.
# So DedupEngine runs them on SMALL_OP_THREADS threads, and gives the caller's threads back only to the
# per-location matmul stages of at least PARALLEL_MIN_ROWS rows (Q/K/V, feed-forward, head), where
# threads pay off. Measured with 2 threads at load ~5 (d = 256): 6x6 13-24 s with the caller's threads
# for everything, 3.6-4.0 s with them for every matmul stage, 3.0-3.2 s with this split; 4x4 (every
# stage below PARALLEL_MIN_ROWS) 0.85 s -> 0.25-0.3 s. SMALL_OP_THREADS = None: the caller's setting.
SMALL_OP_THREADS: int | None = 1
PARALLEL_MIN_ROWS = 8192
_caller_threads: ContextVar[int | None] = ContextVar("caller_threads", default=None)


@contextmanager
def _intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the enclosed ops on ``threads`` intra-op threads (None or the current count: unchanged)."""
    current = torch.get_num_threads()
    if threads is None or threads == current:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(current)


@contextmanager
def _engine_threads() -> Iterator[None]:
    """The whole forward on SMALL_OP_THREADS threads, remembering the caller's count for :func:`_matmul_threads`."""
    token = _caller_threads.set(torch.get_num_threads())
    try:
        with _intra_op_threads(SMALL_OP_THREADS):
            yield
    finally:
        _caller_threads.reset(token)


def _matmul_threads(n_rows: int) -> AbstractContextManager[None]:
    """The caller's threads for a per-location matmul stage on ``n_rows`` rows, if it is large enough."""
    return _intra_op_threads(_caller_threads.get() if n_rows >= PARALLEL_MIN_ROWS else None)


# --- stages ---------------------------------------------------------------------------------------


def embed_stage(model: AutoregressiveTransformer, inputs: Tensor) -> Compressed:
    """Input tokens ``(K, T)`` (BOS at position 0) -> states keyed by (position, input token)."""
    n_seq, n_tokens = inputs.shape
    positions = torch.arange(n_tokens, device=inputs.device).expand(n_seq, n_tokens)  # (K, T)
    ids, pos_u, tok_u = pair_ids(positions, n_tokens, inputs, model.bos + 1)  # (K, T), (U,), (U,)
    table = model.tok_emb(tok_u) + model.pos_emb(pos_u)  # (U, d)
    return Compressed(ids, table)


def block_prefixes(states: Compressed, prefix_reuse: bool = True) -> PrefixPartition:
    """The attention rows of the states' ids: one per distinct prefix (reused when the ids already are
    prefix ids), or with ``prefix_reuse=False`` one per location (the paper's engine: no attention reuse)."""
    if states.prefixes is not None:
        return states.prefixes
    return prefix_partition(states.ids) if prefix_reuse else location_partition(states.ids)


def qkv_stage(block: Block, states: Compressed) -> Tensor:
    """LayerNorm and Q/K/V projection of the unique rows -> head-major ``(3, H, U, e)`` (q, k, v)."""
    table = states.table  # (U, d)
    n_unique, d = table.shape
    n_heads = block.attn.n_heads
    qkv = table.new_empty(3, n_heads, n_unique, d // n_heads)  # (3, H, U, e)
    with _matmul_threads(n_unique):
        for start in range(0, n_unique, ROW_CHUNK):
            rows = block.attn.qkv_proj(block.ln_attn(table[start : start + ROW_CHUNK]))  # (c, 3d): [q | k | v]
            qkv[:, :, start : start + ROW_CHUNK] = rows.view(rows.shape[0], 3, n_heads, -1).permute(1, 2, 0, 3)
    return qkv


def attention_stage(
    block: Block, states: Compressed, prefixes: PrefixPartition, qkv: Tensor
) -> Iterator[tuple[slice, Tensor]]:
    """Causal mixing once per distinct prefix: yields ``(rows, mixed)``, the outputs ``(len(rows), d)``
    (heads concatenated, before any quantiser or ``W_O``) of the attention rows ``rows``, in order.

    Row r is the attention output of every location whose prefix id is r. Each group of representatives
    (sequences representing positions ``start .. T-1``) runs, a few sequences at a time, as one batched
    :func:`causal_attention`: their queries at those positions against all ``T`` keys of the sequence.
    """
    q, k, v = qkv  # (H, U, e) each, from qkv_stage
    n_heads, _, e = q.shape
    n_tokens = states.ids.shape[1]
    per_step = max(1, ATTENTION_CHUNK_ROWS // n_tokens)  # sequences per step
    for group in prefixes.groups:
        t_q = n_tokens - group.start
        for first in range(0, group.sequences.shape[0], per_step):
            ids = states.ids[group.sequences[first : first + per_step]]  # (n, T) input ids of the sequences
            n = ids.shape[0]
            keys = ids.reshape(-1)  # (n*T,)
            queries = ids[:, group.start :].reshape(-1)  # (n*Tq,)
            out = causal_attention(
                q.index_select(1, queries).view(n_heads * n, t_q, e),  # (H*n, Tq, e)
                k.index_select(1, keys).view(n_heads * n, n_tokens, e),  # (H*n, T, e)
                v.index_select(1, keys).view(n_heads * n, n_tokens, e),  # (H*n, T, e)
            )  # (H*n, Tq, e)
            row = group.first_row + first * t_q
            mixed = out.view(n_heads, n, t_q, e).permute(1, 2, 0, 3).reshape(n * t_q, n_heads * e)  # (n*Tq, d)
            yield slice(row, row + n * t_q), mixed


def quantized_residual_stage(
    block: Block, quantizer: nn.Module, states: Compressed, prefixes: PrefixPartition, qkv: Tensor
) -> tuple[Compressed, Tensor, int]:
    """``x + W_O(quantizer(attention))`` keyed by (previous id, code tuple), per attention row.

    Returns the new states, the codes of the attention rows ``(R, H)`` and the number of distinct code tuples.
    """
    # Encode through __call__, chunk by chunk as the attention rows come (in order): (R, H) int64.
    codes = torch.cat([quantizer(mixed, codes_only=True) for _, mixed in attention_stage(block, states, prefixes, qkv)])
    tuple_of, tuples = tuple_ids(codes, quantizer.codes)  # (R,), (n_tuples, H)
    n_tuples = tuples.shape[0]
    previous = prefixes.at_rows(states.ids)  # (R,) the input id of each row's locations
    row_ids, prev_u, tuple_u = pair_ids(previous, states.n_unique, tuple_of, n_tuples)  # (R,), (U',), (U',)
    projected = block.attn.out_proj(quantizer.decode(tuples))  # (n_tuples, d): W_O on unique codewords only
    table = states.table.index_select(0, prev_u) + projected.index_select(0, tuple_u)  # (U', d)
    return Compressed(row_ids[prefixes.rows], table), codes, n_tuples


def dense_residual_stage(block: Block, states: Compressed, prefixes: PrefixPartition, qkv: Tensor) -> Compressed:
    """``x + W_O(attention)`` without a quantiser: one state per prefix (ids = the prefix ids)."""
    previous = prefixes.at_rows(states.ids)  # (R,) the input id of each row's locations
    chunks = [
        states.table.index_select(0, previous[rows]) + block.attn.out_proj(mixed)  # (rows, d)
        for rows, mixed in attention_stage(block, states, prefixes, qkv)
    ]
    table = torch.cat(chunks)  # (R, d)
    return Compressed(prefixes.rows, table, prefixes)


def feed_forward_stage(block: Block, states: Compressed) -> Compressed:
    """``x + ff(ln_ff(x))`` on the unique rows (a full block's second half)."""
    table = map_rows(lambda x: x + block.ff(block.ln_ff(x)), states.table)  # (U, d)
    return Compressed(states.ids, table, states.prefixes)


def block_stage(block: Block, states: Compressed, record_codes: bool = False, prefix_reuse: bool = True) -> BlockOutput:
    """One block (full or half) on the distinct prefixes of its input (every location without
    ``prefix_reuse``); codes per location if ``record_codes``."""
    quantizer = _quantizer(block)
    codes, n_tuples = None, None
    prefixes = block_prefixes(states, prefix_reuse)
    qkv = qkv_stage(block, states)  # (3, H, U, e)
    if quantizer is None:
        states = dense_residual_stage(block, states, prefixes, qkv)
    else:
        states, row_codes, n_tuples = quantized_residual_stage(block, quantizer, states, prefixes, qkv)
        codes = row_codes[prefixes.rows] if record_codes else None  # (K, T, H)
    del qkv  # (3, H, U, e): free before the feed-forward
    if block.ff is not None and block.ln_ff is not None:
        states = feed_forward_stage(block, states)
    return BlockOutput(states, prefixes, codes, n_tuples)


def output_stage(model: AutoregressiveTransformer, states: Compressed, tokens: Tensor) -> Tensor:
    """Head on the unique rows, then per sequence the masked normalisation -> ``log P (K,)``."""
    logits = map_rows(lambda x: model.head(model.ln_f(x)), states.table)  # (U, V)
    logits = logits.index_select(0, states.ids.reshape(-1)).view(*states.ids.shape, -1)  # (K, T, V)
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

    def forward(self, states: Compressed, record_codes: bool = False, prefix_reuse: bool = True) -> BlockOutput:
        return block_stage(self.block, states, record_codes, prefix_reuse)


class DedupEngine(nn.Module):
    """The dedup forward of ``model`` as a module whose children mirror the model's (for FLOP attribution).

    Holds no parameters of its own: it shares the model's submodules, so it follows the model's weights,
    device and dtype. Build one per model (cheap) and call it: ``DedupEngine(model)(s) -> DedupResult``.

    ``prefix_reuse=False`` runs attention once per location instead of once per distinct prefix: only the
    per-location ops are deduplicated, as in the paper (the like-for-like reading of its Table 1 savings).
    """

    def __init__(self, model: AutoregressiveTransformer, prefix_reuse: bool = True) -> None:
        super().__init__()
        for name, child in model.named_children():
            if name == "blocks":
                self.blocks = nn.ModuleList(_BlockStage(block) for block in model.blocks)
            elif name == "final_block":
                self.final_block = _BlockStage(model.final_block)
            else:
                self.add_module(name, child)
        object.__setattr__(self, "model", model)
        self.prefix_reuse = prefix_reuse

    def forward(self, s: Tensor, record_codes: bool = False) -> DedupResult:
        """``s (K, N)`` -> :class:`DedupResult` (``log P (K,)``, per-stage statistics, optional codes)."""
        with _engine_threads():
            return self._forward(s, record_codes)

    def _forward(self, s: Tensor, record_codes: bool) -> DedupResult:
        model = self.model
        tokens = model.patching.to_tokens(s.to(model.device))  # (K, T)
        inputs = model.shift_right(tokens)  # (K, T)
        locations = tokens.numel()
        states = embed_stage(model, inputs)
        stats = [LayerStats("embed", True, states.n_unique, locations)]
        codes_per_block: list[Tensor] = []
        named = [*((f"block{i}", stage) for i, stage in enumerate(self.blocks)), ("final", self.final_block)]
        for name, stage in named:
            out = stage(states, record_codes, self.prefix_reuse)
            states = out.states
            stats.append(
                LayerStats(
                    name,
                    out.n_tuples is not None,
                    states.n_unique,
                    locations,
                    out.n_tuples,
                    out.prefixes.n_rows,
                    out.prefixes.per_position,
                )
            )
            if out.codes is not None:
                codes_per_block.append(out.codes)
        log_prob = output_stage(model, states, tokens)
        return DedupResult(log_prob, stats, codes_per_block)


def dedup_log_prob(
    model: AutoregressiveTransformer, s: Tensor, record_codes: bool = False, prefix_reuse: bool = True
) -> DedupResult:
    """``log P(s)`` for ``s (K, N)`` through the compressed forward, with per-stage statistics.

    Works for the baseline (identity slots: savings from the embedding keys and shared prefixes only) and for VQ models
    (:class:`vqnqs.models.vq.VQTransformer`). Gradients flow as in the dense forward in eval mode, except
    through the (integer) codes; the quantisers' training state is never touched (codes only).
    ``prefix_reuse=False``: attention once per location (only the per-location ops deduplicated).
    """
    return DedupEngine(model, prefix_reuse)(s, record_codes=record_codes)


def dedup_log_psi(model: AutoregressiveTransformer, s: Tensor, prefix_reuse: bool = True) -> Tensor:
    """``log psi(s) = log P(s) / 2`` for ``s (K, N)`` through the dedup engine -> ``(K,)``."""
    return dedup_log_prob(model, s, prefix_reuse=prefix_reuse).log_psi


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
