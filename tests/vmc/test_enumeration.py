"""The enumerated energy of a model equals <psi|H|psi> / <psi|psi> from the dense Kronecker matrix."""

import numpy as np
import pytest
import torch

from vqnqs.models import AutoregressiveTransformer, TransformerConfig
from vqnqs.physics.basis import all_configurations
from vqnqs.physics.exact import dense_hamiltonian
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.vmc.enumeration import exact_energy


@pytest.mark.parametrize(
    ("system", "size", "shape", "sz"), [("heisenberg", "2x4", (2, 4), True), ("tfim", "8", (8,), False)]
)
def test_enumerated_energy_is_the_dense_expectation(system, size, shape, sz):
    torch.manual_seed(4)
    hamiltonian = build_hamiltonian(system, size)
    config = TransformerConfig(shape, 2, d_model=8, n_heads=2, n_blocks=1, n_down=4 if sz else None)
    model = AutoregressiveTransformer(config).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # away from the near-uniform initial state
        psi = model.log_psi(all_configurations(8)).exp().numpy()  # (256,) in code order, 0 outside the sector
    matrix = dense_hamiltonian(hamiltonian)
    expected = psi @ matrix @ psi / (psi @ psi) / 8
    result = exact_energy(hamiltonian, model)
    assert result["energy_per_site"] == pytest.approx(expected, rel=1e-10)
    assert result["norm"] == pytest.approx(1.0, abs=1e-12)
    assert result["n_states"] == (70 if sz else 256)
    assert np.count_nonzero(psi) == result["n_states"]


def test_final_evaluation_adds_the_exact_energy_on_small_lattices(tmp_path, chain):
    from vqnqs.stages.train import Trainer

    from .conftest import tiny_config

    hamiltonian, reference = chain
    trainer = Trainer(hamiltonian, tiny_config(eval_samples=4096), tmp_path, reference)
    metrics = trainer.run(progress=False)
    exact = exact_energy(hamiltonian, trainer.model.double())["energy_per_site"]
    assert metrics["exact_states"] == 256
    assert metrics["exact_energy_per_site"] == pytest.approx(exact, rel=1e-6)  # float32 model vs its float64 copy
    assert metrics["exact_rel_error"] == pytest.approx(abs(exact - reference) / abs(reference), rel=1e-4)
    # the sampled estimate agrees with the exact one within its statistical error
    assert abs(metrics["energy_per_site"] - exact) < 5 * metrics["energy_error"]
