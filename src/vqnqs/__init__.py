"""vqnqs: autoregressive transformer neural quantum states, and their vector-quantised (VQ-NQS) twins
whose hidden states are deduplicated across the configurations of a local energy."""

__version__ = "0.1.0"
