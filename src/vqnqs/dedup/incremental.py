"""The incremental engine: ``log P`` of all connected configurations of samples, from the samples' own forward.

A connected configuration ``s'`` of a sample ``s`` (a term of its local energy) differs from ``s`` in a few
sites. The engine runs ``s`` once, caching per block its input states, ``q, k, v``, attention sums
(:class:`~vqnqs.dedup.incremental_attention.AttentionSums`), codes and certified radii. Every ``s'`` whose
network input differs (``K`` of them, ``owner (K,)`` their samples) then carries the set ``C`` of positions
whose hidden state differs from its sample's, as slot rows (:mod:`vqnqs.dedup.slots`)::

    embed   C = the input positions whose token changed (changed patches, shifted right by one)
    block   slots: ln_attn, Q/K/V on their states (per location, |C| rows)
            attention (updated_attention): rows outside C from the sample's sums and the changed keys,
              O(|C| e) a row; slots in full; rows whose update would cancel become slots and the call is repeated
            quantiser: a row keeps the sample's code when its attention output moved less than the sample's
              certified radius (VectorQuantizer.certify), else its code is computed against its rivals only (the
              codes whose Voronoi face lies within the move, vqnqs.models.voronoi); a row whose
              code differs joins C. Identity slot: every row from the first change on joins C.
            new slots: x + W_O(decode(code)) (W_O once per distinct code tuple), feed-forward
    final   the half-block as a block (no feed-forward); without a quantiser every row from the first change on
            joins C. Position attention runs every block through its own path (dedup.incremental_position).
    output  ln_f and head on the rows of C only; the other rows: the sample's conditionals at the configuration's
            tokens (with an Sz sector the mask runs again where the count of down spins before a row differs)

Rows before the first changed position are the sample's by causality. Every code is the one ``encode`` gives
for the row's attention output (reused only inside its certified radius), so the engine computes the dense
forward of the same model reorganised. Per-location ops run on ``C`` only. The attention runs in chunks of
configurations with similar ``|C|`` (:func:`~vqnqs.dedup.slots.chunks_by_count`, memory bounded by
:attr:`~vqnqs.dedup.policy.ExecutionPolicy.config_elements`); every op runs in one of the model's component
modules (``attn.engine_mixing`` for the sums and their update), so FLOP attribution covers this path too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor

from vqnqs.dedup.incremental_attention import SampleAttention, SlotAttention, causal_attention_sums, updated_attention
from vqnqs.dedup.incremental_position import position_block
from vqnqs.dedup.incremental_states import ROUNDING_ALLOWANCE, States, next_states
from vqnqs.dedup.keys import pair_ids
from vqnqs.dedup.layers import quantizer_of
from vqnqs.dedup.policy import DEFAULT_POLICY, Execution, ExecutionPolicy
from vqnqs.dedup.slots import SlotRows, chunks_by_count, pad, sort_rows
from vqnqs.models.blocks import Block
from vqnqs.models.transformer import AutoregressiveTransformer


@dataclass
class BlockCache:
    """One block's attention of the samples, as the configurations' pass reuses it."""

    attention: SampleAttention  # q, k, v, sums per attention head
    mixed: Tensor  # (B, T, d) attention output, heads concatenated
    codes: Tensor | None  # (B, T, Hq) the quantiser's codes, None for an identity slot
    radius: Tensor | None  # (B, T, Hq) their certified radii
    face: Tensor | None  # (B, T, Hq, Q) the distance to each rival's Voronoi face (the radius is the least)


@dataclass
class Chunk:
    """The attention of a chunk of configurations: what the rest of a block needs of it."""

    members: Tensor  # (K_c,) configuration indices
    mixed: Tensor  # (K_c, T, d) attention output of every row
    x_ids: Tensor  # (K_c, T) input state of every row (an id into the block's input table)
    changed: Tensor  # (K_c, T) bool: the input state differs from the sample's
    v_max: float  # the largest norm of any head's value vector: bounds the outputs' rounding


@dataclass
class IncrementalResult:
    log_prob: Tensor  # (B, M)
    codes: list[Tensor] = field(default_factory=list)  # per quantised block (B, M, T, Hq), if recorded
    stats: Counter = field(default_factory=Counter)  # work done, summed over the batch (see configs_log_prob)


def sample_attention(block: Block, states: States, qkv: Tensor) -> BlockCache:
    """The samples' attention (and codes) from the Q/K/V rows ``qkv (U, 3d)`` of the unique states."""
    q, k, v = (rearrange(y, "b t (h e) -> b h t e", h=block.attn.n_heads) for y in qkv[states.sample_ids].chunk(3, -1))
    sums = block.attn.engine_mixing(causal_attention_sums, q, k, v)
    mixed = rearrange(sums.output, "b h t e -> b t (h e)")
    quantizer = quantizer_of(block)
    if quantizer is None:
        return BlockCache(SampleAttention(q, k, v, sums), mixed, None, None, None)
    codes, face = quantizer(mixed, faces=True)  # (B, T, Hq), (B, T, Hq, Q)
    return BlockCache(SampleAttention(q, k, v, sums), mixed, codes, face.amin(dim=-1), face)


def attention_chunks(
    block: Block,
    cache: BlockCache,
    states: States,
    qkv: Tensor,
    owner: Tensor,
    first: Tensor,
    run: Execution,
    stats: Counter,
) -> Iterator[Chunk]:
    """The attention of every configuration, chunk by chunk (configurations of similar slot counts)."""
    rows, n_tokens = states.rows, states.sample_ids.shape[1]
    n_conf, d, n_heads, device = owner.shape[0], states.table.shape[1], block.attn.n_heads, owner.device
    v_max = float(rearrange(qkv.chunk(3, dim=-1)[2], "u (h e) -> u h e", h=n_heads).norm(dim=-1).amax())
    budget = run.policy.config_elements
    for members in chunks_by_count(rows.counts(n_conf), first, n_tokens * d, 2 * n_heads * n_tokens, budget):
        n_chunk, sample = members.shape[0], owner[members]
        local = torch.full((n_conf,), -1, dtype=torch.long, device=device)
        local[members] = torch.arange(n_chunk, device=device)
        index = (local[rows.config] >= 0).nonzero().squeeze(-1)  # rows of this chunk ...
        index = index[sort_rows(local[rows.config[index]], rows.pos[index], n_tokens)]  # ... by (local, position)
        slot_local, slot_pos, slot_ids = local[rows.config[index]], rows.pos[index], rows.ids[index]
        x_ids = states.sample_ids[sample].clone()  # (K_c, T)
        x_ids[slot_local, slot_pos] = slot_ids
        changed = torch.zeros(n_chunk, n_tokens, dtype=torch.bool, device=device)
        changed[slot_local, slot_pos] = True
        slot_changed, slot_qkv = torch.ones_like(slot_pos, dtype=torch.bool), qkv[slot_ids]
        start = int(first[members].min())  # every row before it is its sample's
        slots = _slot_attention(sample, slot_local, slot_pos, slot_changed, slot_qkv, n_heads, start)
        out, redo = block.attn.engine_mixing(updated_attention, cache.attention, slots)
        while redo.any():
            # Rows the update cannot trust become slots too, with the sample's state (so the sample's q, k, v);
            # the configurations that have any are computed again (slots only grow, so this ends).
            redo_local, redo_pos = redo.nonzero(as_tuple=True)
            stats["rows_redone"] += redo_local.numel()
            slot_local, slot_pos = torch.cat([slot_local, redo_local]), torch.cat([slot_pos, redo_pos])
            slot_changed = torch.cat([slot_changed, torch.zeros_like(redo_local, dtype=torch.bool)])
            slot_qkv = torch.cat([slot_qkv, qkv[x_ids[redo_local, redo_pos]]])
            order = sort_rows(slot_local, slot_pos, n_tokens)
            slot_local, slot_pos, slot_changed, slot_qkv = (
                x[order] for x in (slot_local, slot_pos, slot_changed, slot_qkv)
            )
            again = redo.any(dim=-1).nonzero().squeeze(-1)  # (K_r,) local indices, ascending
            renumber = torch.full((n_chunk,), -1, dtype=torch.long, device=device)
            renumber[again] = torch.arange(again.shape[0], device=device)
            keep = renumber[slot_local] >= 0
            slots = _slot_attention(
                sample[again],
                renumber[slot_local[keep]],
                slot_pos[keep],
                slot_changed[keep],
                slot_qkv[keep],
                n_heads,
                start,
            )
            out[again], redo_again = block.attn.engine_mixing(updated_attention, cache.attention, slots)
            redo = torch.zeros_like(redo)
            redo[again] = redo_again
        yield Chunk(members, rearrange(out, "k h t e -> k t (h e)"), x_ids, changed, v_max)


def _slot_attention(
    owner: Tensor, local: Tensor, pos: Tensor, changed: Tensor, qkv: Tensor, n_heads: int, start: int
) -> SlotAttention:
    """Slot rows of configurations ``local (R,)`` (sorted) with their Q/K/V rows ``(R, 3d)``, padded."""
    padded_pos, valid, (flags, padded_qkv) = pad(local, pos, owner.shape[0], changed, qkv)
    q, k, v = (rearrange(y, "k w (h e) -> k h w e", h=n_heads) for y in padded_qkv.chunk(3, dim=-1))
    return SlotAttention(owner, padded_pos, valid, flags, q, k, v, start)


def chunk_codes(block: Block, cache: BlockCache, chunk: Chunk, owner: Tensor, after: Tensor, stats: Counter) -> Tensor:
    """Codes ``(K_c, T, Hq)`` of a chunk's attention outputs: the sample's where certified (or before the first
    change), else the code the row's rivals give it (:func:`vqnqs.models.voronoi.rival_codes`)."""
    quantizer = quantizer_of(block)
    assert quantizer is not None and cache.codes is not None and cache.radius is not None and cache.face is not None
    n_tokens, e = cache.mixed.shape[1], cache.attention.q.shape[-1]
    allowance = ROUNDING_ALLOWANCE * torch.finfo(chunk.mixed.dtype).eps * (n_tokens + e) * chunk.v_max
    sample = owner[chunk.members]
    moved = rearrange(chunk.mixed - cache.mixed[sample], "k t (h e) -> k t h e", h=quantizer.heads).norm(dim=-1)
    moved = moved + allowance  # (K_c, T, Hq)
    certified = (moved < cache.radius[sample]).all(dim=-1) | ~after  # (K_c, T)
    codes = cache.codes[sample].clone()  # (K_c, T, Hq)
    k, i = (~certified).nonzero(as_tuple=True)
    if k.numel():
        codes[k, i] = quantizer(chunk.mixed[k, i], rivals=(codes[k, i], cache.face[sample[k], i], moved[k, i]))
    stats["rows_certified"] += int((certified & after).sum())
    stats["rows_encoded"] += k.numel()
    return codes


def config_block(
    block: Block, states: States, owner: Tensor, first: Tensor, run: Execution, stats: Counter
) -> tuple[States, Tensor | None, Tensor | None]:
    """One full block for the samples and every configuration -> the states after it, and the codes of the
    configurations ``(K, T, Hq)`` and of the samples ``(B, T, Hq)`` (quantised block). A configuration's output
    rows are those whose output differs from the sample's: their input changed, or (quantiser) their code, or
    (identity slot) their attention.

    A new state is keyed by (input state, code tuple), for the samples' rows and the configurations' alike: the
    per-location ops after the attention (``W_O``, residual, feed-forward) run once per distinct key across the
    whole batch, as in the dedup engine. Without a quantiser every row is its own key."""
    quantizer = quantizer_of(block)
    n_tokens = states.sample_ids.shape[1]
    t = torch.arange(n_tokens, device=owner.device)
    qkv = run.map_rows(lambda x: block.attn.qkv_proj(block.ln_attn(x)), states.table)  # (U, 3d)
    cache = sample_attention(block, states, qkv)
    codes = None if quantizer is None else cache.codes[owner].clone()  # (K, T, Hq)
    sample_value = cache.mixed if quantizer is None else cache.codes  # (B, T, d | Hq)
    parts = [
        (owner.new_zeros(0), t.new_zeros(0), owner.new_zeros(0), sample_value.new_zeros(0, sample_value.shape[-1]))
    ]
    for chunk in attention_chunks(block, cache, states, qkv, owner, first, run, stats):
        after = t >= first[chunk.members][:, None]  # (K_c, T)
        if quantizer is None:
            differs = chunk.changed | after  # every attention output from the first change on moved
            value = chunk.mixed
        else:
            chunk_code = chunk_codes(block, cache, chunk, owner, after, stats)
            codes[chunk.members] = chunk_code
            differs = chunk.changed | (chunk_code != cache.codes[owner[chunk.members]]).any(dim=-1)
            value = chunk_code
        k, i = differs.nonzero(as_tuple=True)
        parts.append((chunk.members[k], i, chunk.x_ids[k, i], value[k, i]))
    config, pos, x_ids, value = (torch.cat(column) for column in zip(*parts, strict=True))
    new = next_states(block, quantizer, states, config, pos, x_ids, value, sample_value, run, stats)
    return new, codes, cache.codes


def output_log_probs(
    model: AutoregressiveTransformer,
    states: States,
    owner: Tensor,
    tokens: Tensor,
    config_tokens: Tensor,
    run: Execution,
    stats: Counter,
) -> tuple[Tensor, Tensor]:
    """The output from the states after the final block: the samples' conditionals ``(B, T, vocab)`` (samples'
    ``tokens (B, T)``) and each configuration's conditionals ``(K, T)`` at its ``config_tokens (K, T)``.

    A configuration's row is its sample's conditional at the configuration's token unless its final state
    differs (a changed row: the head runs on it) or, with an Sz sector, its count of down spins before it does
    (the mask runs again on the logits)."""
    n_conf, n_tokens = config_tokens.shape
    logits = run.map_rows(lambda h: model.head(model.ln_f(h)), states.table)  # (U, vocab)
    sample_conditionals = model.masked_log_softmax(logits[states.sample_ids], model.n_down_before(tokens))
    vocab = sample_conditionals.shape[-1]
    t = torch.arange(n_tokens, device=owner.device)
    flat = (owner[:, None] * n_tokens + t) * vocab + config_tokens  # (K, T) into the samples' conditionals
    out = torch.take(sample_conditionals, flat)  # (K, T)
    rows = states.rows
    config_ids = states.sample_ids[owner]  # (K, T)
    config_ids[rows.config, rows.pos] = rows.ids
    redo = torch.zeros(n_conf, n_tokens, dtype=torch.bool, device=owner.device)
    redo[rows.config, rows.pos] = True
    counts = model.n_down_before(config_tokens)  # (K, T)
    if model.config.n_down is not None:
        redo |= counts != model.n_down_before(tokens)[owner]
    k, i = redo.nonzero(as_tuple=True)
    conditionals = model.masked_log_softmax(logits[config_ids[k, i]], counts[k, i], positions=i)  # (R, vocab)
    out[k, i] = conditionals.gather(-1, config_tokens[k, i, None]).squeeze(-1)
    stats["conditionals"] += int(rows.pos.numel())
    return sample_conditionals, out


def configs_log_prob(
    model: AutoregressiveTransformer, tokens: Tensor, config_tokens: Tensor, run: Execution, record_codes: bool
) -> tuple[Tensor, list[Tensor], Counter]:
    """``log P (B, M)`` of the configurations with tokens ``config_tokens (B, M, T)`` connected to the samples
    with tokens ``(B, T)``; their codes per quantised block; the work done (``slot_rows``: the configurations'
    rows computed per location, summed over blocks; ``unique_rows``: distinct states computed, samples' rows
    included; ``rows_certified``/``rows_encoded``: codes reused by certificate / computed; ``rows_redone``: rows
    recomputed in full for safety; ``conditionals``: output rows computed)."""
    n_batch, n_conn, n_tokens = config_tokens.shape
    inputs = model.shift_right(tokens)  # (B, T)
    config_inputs = model.shift_right(config_tokens.reshape(-1, n_tokens)).view(n_batch, n_conn, n_tokens)
    differs = config_inputs != inputs[:, None]  # (B, M, T)
    b, m = differs.any(dim=-1).nonzero(as_tuple=True)  # the configurations whose network input differs
    owner, moved = b, differs[b, m]  # (K,), (K, T)
    config, pos = moved.nonzero(as_tuple=True)
    first = torch.where(moved, torch.arange(n_tokens, device=moved.device), n_tokens).amin(dim=-1)  # (K,)
    # The embedding keyed by (position, input token), the samples' rows and the changed rows together.
    positions = torch.cat([torch.arange(n_tokens, device=inputs.device).repeat(n_batch), pos])
    ids, pos_u, token_u = pair_ids(
        positions, n_tokens, torch.cat([inputs.flatten(), config_inputs[b[config], m[config], pos]]), model.bos + 1
    )
    table = model.embed_sum(model.tok_emb(token_u), model.pos_emb(pos_u))  # (U, d)
    states = States(table, ids[: inputs.numel()].view_as(inputs), SlotRows(config, pos, ids[inputs.numel() :]))
    stats: Counter = Counter()

    codes_per_block = []
    for block in [*model.blocks, model.final_block]:
        if block.attn.values_only:
            states, codes, sample_codes = position_block(block, states, owner, run, stats)
        else:
            states, codes, sample_codes = config_block(block, states, owner, first, run, stats)
        if codes is not None and record_codes:
            all_codes = sample_codes[:, None].expand(-1, n_conn, -1, -1).clone()  # (B, M, T, Hq)
            all_codes[b, m] = codes
            codes_per_block.append(all_codes)
    sample_conditionals, config_rows = output_log_probs(model, states, owner, tokens, config_tokens[b, m], run, stats)
    per_position = sample_conditionals[:, None].expand(-1, n_conn, -1, -1).gather(-1, config_tokens[..., None])
    per_position = per_position.squeeze(-1)  # (B, M, T): the sample's conditionals at the configuration's tokens
    per_position[b, m] = config_rows
    return per_position.sum(dim=-1), codes_per_block, stats


def config_width(model: AutoregressiveTransformer) -> int:
    """Elements per token of a configuration's widest tensor in one step: the content path's updated attention
    outputs (``d``); where every block has position attention, the codes (int64: 2 per quantiser head)."""
    blocks = [*model.blocks, model.final_block]
    if any(not block.attn.values_only for block in blocks):
        return model.config.d_model
    quantizers = [q for q in map(quantizer_of, blocks) if q is not None]
    return 2 * max((q.heads for q in quantizers), default=1)


class IncrementalEngine:
    """``IncrementalEngine(model)(s, configs) -> IncrementalResult``: ``log P`` of the configurations
    ``configs (B, M, N)`` connected to the samples ``s (B, N)`` (entries where ``valid`` is False are taken to be
    the sample itself). Follows the model's weights, device and dtype; holds no state of its own."""

    def __init__(self, model: AutoregressiveTransformer, policy: ExecutionPolicy = DEFAULT_POLICY) -> None:
        self.model = model
        self.policy = policy

    @torch.no_grad()
    def __call__(
        self, s: Tensor, configs: Tensor, valid: Tensor | None = None, record_codes: bool = False
    ) -> IncrementalResult:
        model = self.model
        n_batch, n_conn, n_sites = configs.shape
        tokens = model.patching.to_tokens(s.to(model.device))  # (B, T)
        config_tokens = model.patching.to_tokens(configs.to(model.device).reshape(-1, n_sites))
        config_tokens = config_tokens.view(n_batch, n_conn, -1)  # (B, M, T)
        if valid is not None:
            config_tokens = torch.where(valid.to(model.device)[..., None], config_tokens, tokens[:, None])
        # Samples per step: their configurations' (K, T, width) tensors stay within a few times config_elements.
        # More samples a step also deduplicate more rows across samples (the new states are keyed batch-wide).
        width = config_width(model)
        per_step = max(1, self.policy.config_elements // max(n_conn * tokens.shape[1] * width, 1))
        log_probs, codes, stats = [], [], Counter()
        with self.policy.applied() as run:
            for start in range(0, n_batch, per_step):
                part = slice(start, start + per_step)
                log_prob, part_codes, part_stats = configs_log_prob(
                    model, tokens[part], config_tokens[part], run, record_codes
                )
                log_probs.append(log_prob)
                codes.append(part_codes)
                stats.update(part_stats)
        codes_per_block = [torch.cat(block_codes) for block_codes in zip(*codes, strict=True)] if record_codes else []
        return IncrementalResult(torch.cat(log_probs), codes_per_block, stats)


def incremental_log_prob(
    model: AutoregressiveTransformer,
    s: Tensor,
    configs: Tensor,
    valid: Tensor | None = None,
    *,
    record_codes: bool = False,
    policy: ExecutionPolicy = DEFAULT_POLICY,
) -> IncrementalResult:
    """``log P`` ``(B, M)`` of ``configs (B, M, N)`` connected to ``s (B, N)`` through the incremental engine."""
    return IncrementalEngine(model, policy)(s, configs, valid, record_codes)
