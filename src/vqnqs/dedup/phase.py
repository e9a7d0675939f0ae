"""The phase network ``phi(s)`` (:mod:`vqnqs.models.phase`) through the dedup layers (:mod:`vqnqs.dedup.layers`).

The encoder has no prefix structure: its attention is bidirectional, so a location's state depends on every
token of the sequence and prefix reuse does not apply. What the engine can reuse::

    embed      key (position, token)                      -> I, V: the embedding of the unique keys
    block      attention once per location of each DISTINCT id-sequence (dedup.prefix.sequence_partition)
      with VQ: key (previous id, code tuple) -> new ids; W_O on the unique code tuples; ff on the unique rows
      without: one state per attention row; ff on them
    output     head(ln_f(V)) on the unique rows -> gather by I -> mean over positions    (K,)

Without quantisers only the embedding is shared (after the first attention every location of a distinct
sequence is its own row); with quantisers every per-location op runs on the unique rows, as in the
autoregressive network. Connected configurations are distinct sequences, so the attention itself is never
saved there: the encoder's attention costs ``O(T^2 d)`` per configuration whatever the engine (the incremental
engine, :mod:`vqnqs.dedup.incremental`, evaluates the phase through this module).

Ids come from integer keys only, so this is the dense :meth:`PhaseNetwork.forward` reorganised: the same codes,
the same ``phi`` up to floating-point reassociation (the mean of per-location heads is summed in another order).
"""

from __future__ import annotations

from torch import Tensor

from vqnqs.dedup.layers import block_stage, embed_stage
from vqnqs.dedup.policy import DEFAULT_POLICY, Execution, ExecutionPolicy
from vqnqs.dedup.prefix import sequence_partition
from vqnqs.models.phase import PhaseNetwork


def phase_forward(phase: PhaseNetwork, s: Tensor, run: Execution) -> Tensor:
    """``phi(s) (K,)`` for ``s (K, N)`` through the compressed forward (module docstring)."""
    tokens = phase.patching.to_tokens(s.to(phase.head.weight.device))  # (K, T)
    states = embed_stage(phase, tokens, phase.patching.vocab_size)
    for block in phase.blocks:
        rows = states.prefixes if states.prefixes is not None else sequence_partition(states.ids)
        states = block_stage(block, states, rows, run).states
    heads = run.map_rows(lambda x: phase.head(phase.ln_f(x)), states.table)[:, 0]  # (U,)
    return heads[states.ids].mean(dim=-1)  # (K, T) -> (K,)


def dedup_phase(phase: PhaseNetwork, s: Tensor, policy: ExecutionPolicy = DEFAULT_POLICY) -> Tensor:
    """``phi(s) (K,)`` through the dedup layers, under ``policy`` (chunks and threads; never the result)."""
    with policy.applied() as run:
        return phase_forward(phase, s, run)
