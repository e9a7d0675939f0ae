"""Shared pieces of the VMC tests: a tiny TFIM chain and a TrainConfig sized for seconds, not minutes."""

import pytest
import torch

from vqnqs.physics.exact import tfim_free_fermion_energy
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.stages.config import TrainConfig

TINY = {
    "steps": 6,
    "n_samples": 32,
    "lr": 0.05,
    "lr_final": 0.01,
    "d_model": 8,
    "n_heads": 2,
    "n_blocks": 1,
    "chunk_size": 16,
    "checkpoint_every": 2,
    "eval_samples": 64,
    "seed": 3,
    "device": "cpu",
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and a second thread only fights the other jobs of a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def chain():
    """Open TFIM chain of 8 sites at Gamma = J = 1 and its exact energy per site."""
    return build_hamiltonian("tfim", "8"), tfim_free_fermion_energy(8) / 8


def tiny_config(**changes) -> TrainConfig:
    return TrainConfig.from_mapping({**TINY, **changes})
