"""One VMC update: a collapsed state (every sample the same configuration) stops the run, naming the step; a
later phase's schedules start at its first update; the parts of a step are timed."""

import itertools
import types

import pytest
import torch

from vqnqs.models import AutoregressiveTransformer, TransformerConfig
from vqnqs.vmc import step as step_module
from vqnqs.vmc.config import VMCConfig
from vqnqs.vmc.optim import make_optimizer
from vqnqs.vmc.step import STEP_PARTS, TrainingError, VMCContext, vmc_step


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


@pytest.mark.parametrize("optimizer", ["sr", "adam"])
def test_a_later_phase_runs_its_schedules_from_its_own_start(chain, optimizer, monkeypatch):
    """With ``offset`` updates before the phase, update ``offset + 1`` is the phase's first: its peak lr."""
    hamiltonian, _ = chain
    torch.manual_seed(0)
    model = AutoregressiveTransformer(TransformerConfig((8,), patch=2, d_model=8, n_heads=2, n_blocks=1))
    opt = make_optimizer(optimizer, model.parameters(), 0.01)
    vmc = VMCConfig(steps=10, n_samples=16, lr=0.01, lr_final=0.001, diag_shift=1e-3, optimizer=optimizer)
    context = VMCContext(hamiltonian, opt, torch.Generator().manual_seed(1), chunk_size=16, engine="dedup", offset=7)
    # A clock that advances one second per reading: each timed part reads it twice, so it lasts exactly 1 s.
    ticks = itertools.count()
    monkeypatch.setattr(step_module, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    result = vmc_step(model, vmc, context, 8)
    assert (
        (result.lr, result.diag_shift) == (vmc.lr_at(1), vmc.diag_shift_at(1)) != (vmc.lr_at(8), vmc.diag_shift_at(8))
    )
    assert all(group["lr"] == vmc.lr_at(1) for group in opt.param_groups)
    # Each part of the step timed exactly once; one process spends no time in collectives.
    assert result.seconds == dict.fromkeys(STEP_PARTS, 1.0) and result.communication_s == 0
    assert result.eloc_configs_per_s > 0 and 1 < result.distinct_samples <= 16
