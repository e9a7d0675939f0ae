"""The incremental engine's position path: a block of position attention (:class:`~vqnqs.models.attention.
PositionMixing`) for the connected configurations of samples, touching only the rows near their changes.

Position attention weighs values by ``alpha^h_ij``, the same for every input and 0 outside the window
``i - W < j <= i``. A configuration whose states differ from its sample's at the positions ``C`` (value change
``dv_j = v'_j - v_j``) therefore has the attention outputs::

    a'_i = a_i + sum_{j in C, i - W < j <= i} alpha_ij dv_j        (per head)

and ``a'_i = a_i`` exactly for every row ``i`` that no ``j`` in ``C`` reaches: the dense forward runs the same
arithmetic on the same values there. Only the touched rows, at most ``W |C|`` per configuration whatever the
length of the sequence, are computed (:func:`window_update`: ``O(W |C| d)`` a configuration).

With a quantiser a touched row keeps its sample's code when its output moved less than the sample's certified
radius (:meth:`~vqnqs.models.vq.VectorQuantizer.certify`) minus a rounding allowance; else its code is computed
against its rivals only, the codes whose Voronoi face lies within the move (:func:`vqnqs.models.voronoi.
rival_codes`: ``O(e)`` a rival instead of ``O(e Q)`` a row). A row whose code or input state differs from its
sample's is a changed row of the next block.
Without one every touched row is changed. The new states are keyed and computed as in the content path
(:func:`vqnqs.dedup.incremental_states.next_states`).
"""

from __future__ import annotations

from collections import Counter

import torch
from einops import rearrange
from torch import Tensor

from vqnqs.dedup.incremental_states import ROUNDING_ALLOWANCE, States, next_states
from vqnqs.dedup.layers import quantizer_of
from vqnqs.dedup.policy import Execution
from vqnqs.dedup.slots import SlotRows
from vqnqs.models.attention import PositionMixing
from vqnqs.models.blocks import Block


def window_update(mixing: PositionMixing, rows: SlotRows, dv: Tensor, n_tokens: int) -> tuple[Tensor, Tensor, Tensor]:
    """The output changes of the rows that changed values reach: ``rows`` (R changed rows of configurations),
    ``dv (R, d)`` their value changes -> the touched ``(config (P,), pos (P,))``, sorted by (configuration,
    position), and their output changes ``(P, d)`` (heads concatenated)."""
    n_heads, window = mixing.n_heads, mixing.window
    alpha = mixing.weights(n_tokens)  # (H, T, T)
    target = rows.pos[:, None] + torch.arange(window, device=dv.device)  # (R, W): the rows each change reaches
    r, offset = (target < n_tokens).nonzero(as_tuple=True)  # (R',)
    i, j = target[r, offset], rows.pos[r]
    weight = alpha[:, i, j].T  # (R', H)
    contribution = weight[..., None] * rearrange(dv[r], "r (h e) -> r h e", h=n_heads)  # (R', H, e)
    key = rows.config[r] * n_tokens + i
    touched, inverse = torch.unique(key, return_inverse=True)  # sorted: by (configuration, position)
    change = contribution.new_zeros(touched.shape[0], *contribution.shape[1:]).index_add_(0, inverse, contribution)
    return touched // n_tokens, touched % n_tokens, rearrange(change, "p h e -> p (h e)")


def position_block(
    block: Block, states: States, owner: Tensor, run: Execution, stats: Counter
) -> tuple[States, Tensor | None, Tensor | None]:
    """One block of position attention for the samples and every configuration (as
    :func:`vqnqs.dedup.incremental.config_block`): the states after it, the configurations' codes ``(K, T, Hq)``
    and the samples' ``(B, T, Hq)`` (None without a quantiser)."""
    quantizer = quantizer_of(block)
    mixing = block.attn.mixing
    n_heads, n_tokens = block.attn.n_heads, states.sample_ids.shape[1]
    values = run.map_rows(lambda x: block.attn.qkv_proj(block.ln_attn(x)), states.table)  # (U, d)
    v = rearrange(values[states.sample_ids], "b t (h e) -> b h t e", h=n_heads)
    mixed = rearrange(mixing(v, v, v), "b h t e -> b t (h e)")  # (B, T, d): the samples' outputs
    rows = states.rows
    dv = values[rows.ids] - values[states.sample_ids[owner[rows.config], rows.pos]]  # (R, d)
    config, pos, change = block.attn.engine_mixing(window_update, mixing, rows, dv, n_tokens)  # (P,), (P,), (P, d)
    sample = owner[config]
    x_ids = states.sample_ids[sample, pos]  # (P,) the sample's input states, replaced where the row changed
    slot = torch.searchsorted(
        config * n_tokens + pos, rows.config * n_tokens + rows.pos
    )  # every changed row is touched
    changed = torch.zeros_like(pos, dtype=torch.bool)
    changed[slot] = True
    x_ids[slot] = rows.ids
    stats["rows_touched"] += pos.numel()
    updated = mixed[sample, pos] + change  # (P, d) the touched rows' attention outputs
    if quantizer is None:
        return next_states(block, None, states, config, pos, x_ids, updated, mixed, run, stats), None, None
    sample_codes, face = quantizer(mixed, faces=True)  # (B, T, Hq), (B, T, Hq, Q)
    e = mixed.shape[-1] // quantizer.heads
    v_max = float(rearrange(values, "u (h e) -> u h e", h=n_heads).norm(dim=-1).amax())
    allowance = ROUNDING_ALLOWANCE * torch.finfo(mixed.dtype).eps * (mixing.window + e) * v_max
    moved = rearrange(change, "p (h e) -> p h e", h=quantizer.heads).norm(dim=-1) + allowance  # (P, Hq)
    encoded = ~(moved < face.amin(dim=-1)[sample, pos]).all(dim=-1)  # (P,) not certified
    kept = sample_codes[sample, pos]  # (P, Hq)
    codes = kept.clone()
    # The rivals of row_chunk rows at a time: their (rows, Hq, Q) temporaries stay a few MB.
    for rows in encoded.nonzero().squeeze(-1).split(run.row_chunk):
        rivals = (kept[rows], face[sample[rows], pos[rows]], moved[rows])
        codes[rows] = quantizer(updated[rows], rivals=rivals)
    stats["rows_encoded"] += int(encoded.sum())
    stats["rows_certified"] += pos.numel() - int(encoded.sum())
    differs = changed | (codes != kept).any(dim=-1)  # (P,)
    new = next_states(
        block,
        quantizer,
        states,
        config[differs],
        pos[differs],
        x_ids[differs],
        codes[differs],
        sample_codes,
        run,
        stats,
    )
    config_codes = sample_codes[owner].clone()  # (K, T, Hq)
    config_codes[config, pos] = codes
    return new, config_codes, sample_codes
