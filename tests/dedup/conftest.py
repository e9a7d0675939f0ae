"""Random models and local-energy batches for the dedup tests (float64, seconds, one thread)."""

import pytest
import torch

from vqnqs.models import AutoregressiveTransformer, TransformerConfig, VQConfig, codebook_upkeep, make_vq_model
from vqnqs.physics.hamiltonian import Heisenberg, TransverseFieldIsing
from vqnqs.physics.lattice import Lattice


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models: one intra-op thread is fastest, and immune to OpenMP spinning on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_model(config: TransformerConfig, vq: VQConfig | None, seed: int, std: float = 0.5, fit: bool = False):
    """float64, eval, large random weights; a random normal codebook, or with ``fit`` one data-initialised
    (k-means++ on the attention outputs of random configurations: the first codebook upkeep)."""
    model = AutoregressiveTransformer(config) if vq is None else make_vq_model(config, vq)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 1.0 if name.endswith("codebook") else std
            p.copy_(torch.randn(p.shape, generator=generator) * scale)
    model.double()
    if vq is not None:
        for q in model.quantizers:
            q.initialized.fill_(not fit)
        if fit:
            torch.manual_seed(seed)
            codebook_upkeep(model, torch.randint(0, 2, (64, config.n_sites), generator=generator))
            assert all(bool(q.initialized) for q in model.quantizers)
    return model.eval()


def hamiltonian(system: str, shape: tuple[int, ...]):
    lattice = Lattice(shape) if not isinstance(shape, Lattice) else shape
    return Heisenberg(lattice) if system == "heisenberg" else TransverseFieldIsing(lattice, gamma=0.7)


def local_energy_batch(model, ham, n_samples: int, seed: int, source: str) -> torch.Tensor:
    """Samples and all their valid connected configurations, flattened: ``(K, N)``."""
    generator = torch.Generator().manual_seed(seed)
    n_sites, n_down = model.n_sites, model.config.n_down
    if source == "model":
        s = model.sample(n_samples, generator=generator)
    elif n_down is None:
        s = torch.randint(0, 2, (n_samples, n_sites), generator=generator)
    else:  # uniform in the Sz sector
        order = torch.rand(n_samples, n_sites, generator=generator).argsort(dim=1)
        s = (order < n_down).long()
    conn = ham.connected(s)
    return conn.configs[conn.valid]  # (K, N)


def brute_force_prefixes(ids: torch.Tensor) -> dict[tuple, set[int]]:
    """``{(position, ids[k, 0..i]): {k, ...}}`` over all locations of ``ids (K, T)``: the distinct prefixes."""
    prefixes: dict[tuple, set[int]] = {}
    for k, row in enumerate(ids.tolist()):
        for i in range(len(row)):
            prefixes.setdefault((i, tuple(row[: i + 1])), set()).add(k)
    return prefixes
