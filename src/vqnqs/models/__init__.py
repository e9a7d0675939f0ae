"""Autoregressive transformer wave functions over patch tokens."""

from vqnqs.models.patches import Patching, validate_patching
from vqnqs.models.transformer import (
    AutoregressiveTransformer,
    Block,
    CausalSelfAttention,
    FeedForward,
    KVCache,
    TransformerConfig,
    default_patch,
)
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
    "AutoregressiveTransformer",
    "Block",
    "CausalSelfAttention",
    "FeedForward",
    "KVCache",
    "Patching",
    "TransformerConfig",
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
