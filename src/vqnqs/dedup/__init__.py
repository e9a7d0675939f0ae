"""The compressed ``(I, V)`` engine: hidden states deduplicated across a batch of configurations."""

from vqnqs.dedup.engine import (
    BlockOutput,
    Compressed,
    DedupEngine,
    DedupResult,
    LayerStats,
    attention_stage,
    block_prefixes,
    block_stage,
    dedup_log_prob,
    dedup_log_psi,
    dense_codes,
    dense_residual_stage,
    embed_stage,
    feed_forward_stage,
    output_stage,
    qkv_stage,
    quantized_residual_stage,
)
from vqnqs.dedup.keys import pair_ids, tuple_ids
from vqnqs.dedup.prefix import PrefixGroup, PrefixPartition, location_partition, prefix_partition

__all__ = [
    "BlockOutput",
    "Compressed",
    "DedupEngine",
    "DedupResult",
    "LayerStats",
    "PrefixGroup",
    "PrefixPartition",
    "attention_stage",
    "block_prefixes",
    "block_stage",
    "dedup_log_prob",
    "dedup_log_psi",
    "dense_codes",
    "dense_residual_stage",
    "embed_stage",
    "feed_forward_stage",
    "output_stage",
    "pair_ids",
    "location_partition",
    "prefix_partition",
    "qkv_stage",
    "quantized_residual_stage",
    "tuple_ids",
]
