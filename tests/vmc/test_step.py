"""One VMC update: a collapsed state (every sample the same configuration) stops the run, naming the step."""

import pytest
import torch

from vqnqs.models import AutoregressiveTransformer, TransformerConfig
from vqnqs.vmc.config import VMCConfig
from vqnqs.vmc.optim import make_optimizer
from vqnqs.vmc.step import TrainingError, VMCContext, vmc_step


@pytest.mark.parametrize("optimizer", ["sr", "adam"])
def test_a_collapsed_state_stops_before_the_update(chain, monkeypatch, optimizer):
    hamiltonian, _ = chain
    model = AutoregressiveTransformer(TransformerConfig((8,), patch=2, d_model=8, n_heads=2, n_blocks=1))
    monkeypatch.setattr(model, "sample", lambda n, generator=None: torch.zeros(n, 8, dtype=torch.long))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    opt = make_optimizer(optimizer, model.parameters(), 0.01)
    vmc = VMCConfig(steps=10, n_samples=16, optimizer=optimizer)
    with pytest.raises(TrainingError, match="step 3: all 16 samples are one configuration"):
        vmc_step(model, vmc, VMCContext(hamiltonian, opt, torch.Generator(), chunk_size=16, engine="dense"), 3)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
