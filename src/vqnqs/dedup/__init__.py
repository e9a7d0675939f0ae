"""The compressed ``(I, V)`` engine: hidden states deduplicated across a batch of configurations."""

from vqnqs.dedup.engine import (
    Compressed,
    DedupEngine,
    DedupResult,
    LayerStats,
    attention_stage,
    block_stage,
    dedup_log_prob,
    dedup_log_psi,
    dense_codes,
    dense_residual_stage,
    embed_stage,
    feed_forward_stage,
    output_stage,
    quantized_residual_stage,
)
from vqnqs.dedup.keys import pair_ids, tuple_ids

__all__ = [
    "Compressed",
    "DedupEngine",
    "DedupResult",
    "LayerStats",
    "attention_stage",
    "block_stage",
    "dedup_log_prob",
    "dedup_log_psi",
    "dense_codes",
    "dense_residual_stage",
    "embed_stage",
    "feed_forward_stage",
    "output_stage",
    "pair_ids",
    "quantized_residual_stage",
    "tuple_ids",
]
