"""The incremental engine's hidden states between blocks, and the keyed new states after a block.

At each depth the samples' rows and the configurations' changed rows are ids into one table of unique states
(:class:`States`); :func:`next_states` builds the next depth's table from a block's attention values or codes,
keyed as in the dedup engine (equal keys, equal states), for the content path
(:func:`vqnqs.dedup.incremental.config_block`) and the position path
(:func:`vqnqs.dedup.incremental_position.position_block`) alike.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vqnqs.dedup.keys import pair_ids, tuple_ids
from vqnqs.dedup.policy import Execution
from vqnqs.dedup.slots import SlotRows, sort_rows
from vqnqs.models.blocks import Block

# Rounding allowance of an updated attention output, in units of eps * (keys + e) * max|v_h| (keys: T for content
# attention, the window for position attention): a code is reused only if the output moved less than the
# certified radius minus this.
ROUNDING_ALLOWANCE = 8.0


@dataclass
class States:
    """The hidden states at one depth of the samples' rows and of the configurations' changed rows, as ids into
    one table of unique states (keyed as in the dedup engine: equal keys, equal states)."""

    table: Tensor  # (U, d)
    sample_ids: Tensor  # (B, T)
    rows: SlotRows  # the configurations' changed rows (config, pos, ids)


def next_states(
    block: Block,
    quantizer: nn.Module | None,
    states: States,
    config: Tensor,
    pos: Tensor,
    x_ids: Tensor,
    value: Tensor,
    sample_value: Tensor,
    run: Execution,
    stats: Counter,
) -> States:
    """The states after ``block``: the samples' rows (attention value ``sample_value (B, T, d | Hq)``) and the
    configurations' output rows ``(config, pos) (R,)`` (input states ``x_ids (R,)``, attention value
    ``value (R, d | Hq)``): the attention output without a quantiser, the code tuple with one.

    A new state is keyed by (input state, code tuple): ``W_O`` runs once per distinct code tuple, the residual
    add and the feed-forward once per distinct key across the whole batch. Without a quantiser every row is its
    own key."""
    n_tokens = states.sample_ids.shape[1]
    order = sort_rows(config, pos, n_tokens)
    config, pos = config[order], pos[order]
    x_ids = torch.cat([states.sample_ids.flatten(), x_ids[order]])  # samples' rows first, then the configurations'
    value = torch.cat([sample_value.flatten(0, 1), value[order]])
    if quantizer is None:
        ids = torch.arange(x_ids.numel(), device=x_ids.device)
        table = block.residual(states.table[x_ids], block.attn.out_proj(value))  # (B*T + R, d)
    else:
        tuple_of, tuples = tuple_ids(value, quantizer.codes)  # (B*T + R,), (n_tuples, Hq)
        ids, x_u, tuple_u = pair_ids(x_ids, states.table.shape[0], tuple_of, tuples.shape[0])
        projected = block.attn.out_proj(quantizer.decode(tuples))  # (n_tuples, d): W_O per distinct code tuple
        table = block.residual(states.table[x_u], projected[tuple_u])  # (U', d)
    if block.ff is not None and block.ln_ff is not None:
        table = run.map_rows(lambda y: block.residual(y, block.ff(block.ln_ff(y))), table)
    stats["slot_rows"] += config.numel()
    stats["unique_rows"] += table.shape[0]
    n_sample_rows = states.sample_ids.numel()
    sample_ids = ids[:n_sample_rows].view_as(states.sample_ids)
    return States(table, sample_ids, SlotRows(config, pos, ids[n_sample_rows:]))
