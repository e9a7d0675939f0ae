"""Paper-shape VQ-NQS models for benchmarks: UNTRAINED weights, data-initialised codebooks.

The benchmarks (``benchmarks/tfim_scaling.py``, ``benchmarks/dedup_speedup.py``) need a VQ model at sizes
nobody trained. :func:`untrained_vq_model` builds one with the GPT-2 initialisation of the transformer and
fits each codebook to data the way the first training step does: one codebook upkeep
(:func:`vqnqs.models.vq.codebook_upkeep`) on the model's own exact samples (k-means++ seeding per head,
block after block in the same pass). The
codes a trained model uses, and so its reuse rates, may differ: numbers from these models say what the
engine does with a data-driven codebook, not what a trained VQ-NQS achieves.
"""

from __future__ import annotations

import torch

from vqnqs.models.transformer import TransformerConfig
from vqnqs.models.vq import DEFAULT_CODES, VQConfig, VQTransformer, codebook_upkeep, make_vq_model
from vqnqs.physics.exact import ground_state_sector
from vqnqs.physics.hamiltonian import Hamiltonian


def paper_config(
    hamiltonian: Hamiltonian,
    d_model: int = 256,
    n_heads: int = 8,
    n_blocks: int = 3,
    patch: int | None = None,
    sz_sector: bool = True,
) -> TransformerConfig:
    """The paper's shape (3 full blocks + the half-block, d = 256, 8 heads; 2x2 patches, 4-spin chain tokens).

    ``sz_sector``: restrict to the ground state's Sz sector where the Hamiltonian has one (Heisenberg).
    """
    shape = tuple(hamiltonian.lattice.shape)
    if patch is None:
        patch = 2 if len(shape) == 2 else 4
    n_down = ground_state_sector(hamiltonian) if sz_sector else None
    return TransformerConfig(shape, patch, d_model=d_model, n_heads=n_heads, n_blocks=n_blocks, n_down=n_down)


def untrained_vq_model(
    hamiltonian: Hamiltonian,
    bits: int = 6,
    d_model: int = 256,
    n_heads: int = 8,
    n_blocks: int = 3,
    patch: int | None = None,
    codes: int = DEFAULT_CODES,
    seed: int = 0,
    init_samples: int = 512,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    sz_sector: bool = True,
) -> VQTransformer:
    """An untrained VQ-NQS of the paper's shape whose codebooks are fitted to its own samples (eval mode).

    Deterministic for a given ``seed`` (weights, samples and k-means++ seeding all derive from it).
    """
    config = paper_config(hamiltonian, d_model, n_heads, n_blocks, patch, sz_sector)
    torch.manual_seed(seed)
    model = make_vq_model(config, VQConfig.from_bits(bits, codes)).to(device=device, dtype=dtype)
    generator = torch.Generator(device=model.device).manual_seed(seed + 1)
    with torch.no_grad():
        samples = model.sample(init_samples, generator=generator)
    torch.manual_seed(seed + 2)  # k-means++ draws from the global generator
    codebook_upkeep(model, samples)  # initialises every codebook, block after block
    if not all(bool(q.initialized) for q in model.quantizers):
        raise RuntimeError("untrained_vq_model: a codebook was not initialised by the codebook upkeep")
    return model.eval()
