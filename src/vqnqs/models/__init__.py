"""Autoregressive transformer wave functions over patch tokens."""

from vqnqs.models.attention import CausalMixing, CausalSelfAttention, KVCache, causal_attention
from vqnqs.models.blocks import Add, Block, FeedForward
from vqnqs.models.patches import Patching, validate_patching
from vqnqs.models.transformer import AutoregressiveTransformer, TransformerConfig, default_patch
from vqnqs.models.vq import (
    VectorQuantizer,
    VQConfig,
    VQTransformer,
    codebook_upkeep,
    from_teacher,
    make_vq_model,
    vq_shape_from_bits,
)

__all__ = [
    "Add",
    "AutoregressiveTransformer",
    "Block",
    "CausalMixing",
    "CausalSelfAttention",
    "FeedForward",
    "KVCache",
    "Patching",
    "TransformerConfig",
    "causal_attention",
    "default_patch",
    "validate_patching",
    "VectorQuantizer",
    "VQConfig",
    "VQTransformer",
    "codebook_upkeep",
    "from_teacher",
    "make_vq_model",
    "vq_shape_from_bits",
]
