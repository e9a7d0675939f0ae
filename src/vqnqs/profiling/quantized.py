"""The paper's *quantised ops*: the ``(layer, group)`` cells whose FLOPs the quantisers make reusable.

An op is *quantised* iff it acts on each location separately and its input row at a location is a
function of that location's integer key only: ``(position, input token)`` after the embedding, then
``(previous key, code tuple)`` after each quantiser. These are exactly the ops the dedup engine can run
once per distinct key (on the table ``V``). In order through the network:

- the embedding (key: position, token);
- ``ln_attn`` and ``qkv_proj`` of a block while the residual stream is still a function of keys (always
  for block 0, whose input is the embedding; for block i > 0 iff blocks 0..i-1 all have a quantiser;
  the attention-only final block included);
- ``out_proj`` (W_O) of a block with a quantiser (it acts on the codewords);
- ``residual``, ``ln_ff``, ``feed_forward`` of a block with a quantiser whose input stream is keyed.

Never quantised: attention (it mixes locations), the quantiser's distances (its input is the attention
output), the final block's ``out_proj`` and residual, ``ln_f``, the head, the output softmax, and the
local-energy arithmetic. For the baseline (no quantiser) the quantised ops are only the embedding and
block 0's ``ln_attn``/``qkv_proj`` (their input is the (position, token) embedding, which the engine
dedups too).

Also here: a model's quantiser bandwidth in bits (:func:`model_bits`).
"""

from __future__ import annotations

import torch

from vqnqs.models.transformer import AutoregressiveTransformer
from vqnqs.profiling.flops import Cell


def has_quantizer(block: torch.nn.Module) -> bool:
    return not isinstance(block.attn.quantizer, torch.nn.Identity)


def quantized_cells(model: AutoregressiveTransformer) -> frozenset[Cell]:
    """The ``(layer, group)`` cells of quantised ops (inputs a function of the location's integer key only).

    See the module docstring for the definition; this follows the model's structure, not any data.
    """
    cells = {("embed", "embedding")}
    keyed = True  # the residual stream entering the block is a function of integer keys
    for i, block in enumerate(model.blocks):
        layer = f"block{i}"
        if keyed:
            cells |= {(layer, "ln_attn"), (layer, "qkv_proj")}
        quantized = has_quantizer(block)
        if quantized:
            cells.add((layer, "out_proj"))  # W_O on the codewords
        keyed = keyed and quantized
        if keyed:
            cells |= {(layer, "residual"), (layer, "ln_ff"), (layer, "feed_forward")}
    if keyed:
        cells |= {("final", "ln_attn"), ("final", "qkv_proj")}
    return frozenset(cells)


def model_bits(model: AutoregressiveTransformer) -> float:
    """Quantiser bandwidth in bits (``heads * log2(codes)`` of the first quantiser); 0 for the baseline."""
    for block in model.blocks:
        if has_quantizer(block):
            return float(block.attn.quantizer.bits)
    return 0.0
