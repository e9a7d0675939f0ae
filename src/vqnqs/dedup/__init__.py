"""The compressed ``(I, V)`` engine: hidden states deduplicated across a batch of configurations."""

from vqnqs.dedup.engine import DedupEngine, DedupResult, LayerStats, dedup_log_prob, dedup_log_psi, dense_codes
from vqnqs.dedup.keys import pair_ids, tuple_ids
from vqnqs.dedup.layers import (
    BlockOutput,
    Compressed,
    attention_stage,
    block_stage,
    dense_residual_stage,
    embed_stage,
    feed_forward_stage,
    output_stage,
    qkv_stage,
    quantized_residual_stage,
)
from vqnqs.dedup.policy import DEFAULT_POLICY, ExecutionPolicy
from vqnqs.dedup.prefix import PrefixGroup, PrefixPartition, location_partition, prefix_partition

__all__ = [
    "DEFAULT_POLICY",
    "BlockOutput",
    "Compressed",
    "DedupEngine",
    "DedupResult",
    "ExecutionPolicy",
    "LayerStats",
    "PrefixGroup",
    "PrefixPartition",
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
    "location_partition",
    "prefix_partition",
    "qkv_stage",
    "quantized_residual_stage",
    "tuple_ids",
]
