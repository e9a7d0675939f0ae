"""Autoregressive transformer wave functions over patch tokens."""

from vqnqs.models.patches import Patching, validate_patching
from vqnqs.models.transformer import (
    AutoregressiveTransformer,
    Block,
    CausalSelfAttention,
    FeedForward,
    KVCache,
    TransformerConfig,
)

__all__ = [
    "AutoregressiveTransformer",
    "Block",
    "CausalSelfAttention",
    "FeedForward",
    "KVCache",
    "Patching",
    "TransformerConfig",
    "validate_patching",
]
