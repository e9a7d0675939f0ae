"""Tiny models and model dirs for the profiling tests (seconds, one thread)."""

import json

import pytest
import torch

from vqnqs.models import AutoregressiveTransformer, TransformerConfig, VQConfig, codebook_upkeep, make_vq_model
from vqnqs.physics.hamiltonian import TransverseFieldIsing, build_hamiltonian
from vqnqs.physics.lattice import Lattice
from vqnqs.stages.inputs import system_info
from vqnqs.vmc.checkpoint import save_model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is fastest and does not fight the other jobs of a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize(model, seed: int, std: float = 0.5, fit: bool = True):
    """float64, eval, large random weights; with ``fit`` each codebook fitted to data (k-means++ on the
    quantiser inputs of one codebook upkeep), so that codes vary across locations."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * (1.0 if name.endswith("codebook") else std))
    model.double()
    if fit and hasattr(model, "quantizers"):
        for q in model.quantizers:
            q.initialized.fill_(False)
        torch.manual_seed(seed)
        codebook_upkeep(model, torch.randint(0, 2, (64, model.n_sites), generator=generator))
    return model.eval()


def tiny_config(n_blocks: int = 1, **changes) -> TransformerConfig:
    """Chain of 8 spins, 2 per token: T = 4 tokens, vocabulary 4."""
    return TransformerConfig((8,), 2, **{"d_model": 8, "n_heads": 2, "n_blocks": n_blocks, "d_ff": 12, **changes})


def tiny_vq(n_blocks: int = 1, heads: int = 2, codes: int = 4, seed: int = 0, **changes):
    return randomize(make_vq_model(tiny_config(n_blocks, **changes), VQConfig(heads=heads, codes=codes)), seed)


def tiny_baseline(n_blocks: int = 1, seed: int = 0, **changes):
    return randomize(AutoregressiveTransformer(tiny_config(n_blocks, **changes)), seed)


@pytest.fixture
def tfim8():
    """Open chain of 8 at Gamma = 0.7: every sample has 1 + 8 valid connections."""
    return TransverseFieldIsing(Lattice((8,)), gamma=0.7)


def write_model_dir(directory, model, hamiltonian, metrics: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    info = {**system_info(hamiltonian), "steps": 1, "energy_per_site": metrics.get("energy_per_site")}
    save_model(directory / "model.pt", model, info)
    (directory / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def model_dirs(tmp_path):
    """A train out dir (baseline) and a distill out dir (4-bit VQ student) of the open TFIM chain of 8."""
    hamiltonian = build_hamiltonian("tfim", "8")
    baseline = tiny_baseline(n_blocks=2, seed=1).float()
    student = tiny_vq(n_blocks=2, heads=2, codes=4, seed=2).float()
    write_model_dir(tmp_path / "train", baseline, hamiltonian, {"energy_per_site": -1.2, "rel_error": 0.01, "steps": 1})
    write_model_dir(
        tmp_path / "distill",
        student,
        hamiltonian,
        {"energy_per_site": -1.1, "rel_error": 0.05, "bits": 4, "steps": 1},
    )
    return tmp_path / "train", tmp_path / "distill", hamiltonian
