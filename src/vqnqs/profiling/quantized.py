"""The paper's *quantised ops*: the ``(layer, group)`` cells whose FLOPs the quantisers make reusable.

An op is *quantised* iff it acts on each location separately and its input row at a location is a
function of that location's integer key only: ``(position, input token)`` after the embedding, then
``(previous key, code tuple)`` after each quantiser. These are exactly the ops the dedup engine can run
once per distinct key (on the table ``V``). In order through the autoregressive network:

- the embedding (key: position, token);
- ``ln_attn`` and ``qkv_proj`` of a block while the residual stream is still a function of keys (always
  for block 0, whose input is the embedding; for block i > 0 iff blocks 0..i-1 all have a quantiser;
  the attention-only final block included);
- ``out_proj`` (W_O) of a block with a quantiser (it acts on the codewords);
- ``residual``, ``ln_ff``, ``feed_forward`` of a block with a quantiser whose input stream is keyed.

The phase network (:mod:`vqnqs.models.phase`, layers ``phase_*``) by the same rule, through its encoder:
``("phase_embed", "embedding")``; in ``phase_block{i}`` the same groups as in ``block{i}`` under the same
conditions (its attention is bidirectional, but the keyed ops are per location all the same,
:mod:`vqnqs.dedup.phase`); and, as it has no attention-only half-block, ``ln_f`` and ``head`` of
``phase_output`` when the stream leaving its last block is keyed (every encoder block quantised). A VQ
model quantises every encoder block, so all its encoder ops but attention and the distances count.

Never quantised: attention (it mixes locations), the quantiser's distances (its input is the attention
output), the final block's ``out_proj`` and residual, the autoregressive network's ``ln_f`` and head
(after the unquantised half-block), the output softmax, and the local-energy arithmetic. For the baseline
(no quantiser) the quantised ops are only the embedding and block 0's ``ln_attn``/``qkv_proj`` (their input
is the (position, token) embedding, which the engine dedups too), and the same three cells of the phase
network.

Also here: a model's quantiser bandwidth in bits (:func:`model_bits`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from vqnqs.models.transformer import AutoregressiveTransformer
from vqnqs.profiling.flops import Cell


def has_quantizer(block: torch.nn.Module) -> bool:
    return not isinstance(block.attn.quantizer, torch.nn.Identity)


def keyed_stack_cells(blocks: Iterable[torch.nn.Module], prefix: str) -> tuple[set[Cell], bool]:
    """The quantised cells of a stack of full blocks ``{prefix}{i}`` whose input stream is keyed (an
    embedding), and whether the stream leaving the stack is still keyed (module docstring)."""
    cells: set[Cell] = set()
    keyed = True  # the residual stream entering the block is a function of integer keys
    for i, block in enumerate(blocks):
        layer = f"{prefix}{i}"
        if keyed:
            cells |= {(layer, "ln_attn"), (layer, "qkv_proj")}
        quantized = has_quantizer(block)
        if quantized:
            cells.add((layer, "out_proj"))  # W_O on the codewords
        keyed = keyed and quantized
        if keyed:
            cells |= {(layer, "residual"), (layer, "ln_ff"), (layer, "feed_forward")}
    return cells, keyed


def quantized_cells(model: AutoregressiveTransformer) -> frozenset[Cell]:
    """The ``(layer, group)`` cells of quantised ops (inputs a function of the location's integer key only),
    of both networks. See the module docstring for the definition; this follows the model's structure, not
    any data."""
    blocks, keyed = keyed_stack_cells(model.blocks, "block")
    cells = {("embed", "embedding")} | blocks
    if keyed:
        cells |= {("final", "ln_attn"), ("final", "qkv_proj")}
    if model.phase is not None:
        blocks, keyed = keyed_stack_cells(model.phase.blocks, "phase_block")
        cells |= {("phase_embed", "embedding")} | blocks
        if keyed:
            cells |= {("phase_output", "ln_f"), ("phase_output", "head")}
    return frozenset(cells)


def model_bits(model: AutoregressiveTransformer) -> float:
    """Quantiser bandwidth in bits (``heads * log2(codes)`` of the first quantiser); 0 for the baseline."""
    for block in model.blocks:
        if has_quantizer(block):
            return float(block.attn.quantizer.bits)
    return 0.0
