"""The up-front step estimate (vqnqs.vmc.cost): its FLOP formula against the FLOP counter, and its line."""

import pytest
import torch

from vqnqs.models import AutoregressiveTransformer, TransformerConfig
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.profiling.flops import count_flops
from vqnqs.vmc.cost import Rate, estimate_line, forward_flops, measure_rate, vmc_step_flops


@pytest.mark.parametrize(
    "shape, patch, d_model, n_heads, n_blocks, phase_blocks",
    [
        ((12,), 2, 16, 2, 1, 0),
        ((4, 4), 2, 32, 4, 2, 0),
        ((16,), 4, 24, 3, 3, 0),
        ((8,), 1, 8, 1, 0, 0),
        ((4, 4), 2, 16, 2, 1, 2),  # with a phase network
    ],
)
@pytest.mark.parametrize("attention", ["content", "position"])
def test_forward_flops_equal_the_counted_matmuls(shape, patch, d_model, n_heads, n_blocks, phase_blocks, attention):
    config = TransformerConfig(shape, patch, d_model, n_heads, n_blocks, phase_blocks=phase_blocks, attention=attention)
    model = AutoregressiveTransformer(config).double()
    s = model.sample(5, generator=torch.Generator().manual_seed(0))
    counted = sum(count_flops(model, lambda: model.log_psi(s), elementwise=False).values())
    assert forward_flops(model) * len(s) == counted
    if phase_blocks:
        amplitude = sum(count_flops(model, lambda: model.log_prob(s), elementwise=False).values())
        assert forward_flops(model, phase=False) * len(s) == amplitude < counted


def test_estimate_line_names_the_parts_and_scales_with_steps():
    model = AutoregressiveTransformer(TransformerConfig((4, 4), 2, 16, 2, 1))
    hamiltonian = build_hamiltonian("heisenberg", "4x4", "open")
    flops = vmc_step_flops(model, hamiltonian, 64)
    assert flops["local energy"] == 64 * hamiltonian.max_connections * forward_flops(model)
    rate = Rate(flops_per_s=1e9, gram_flops_per_s=1e10, sampling_overhead_s=0.5)
    per_step = (sum(flops.values()) - flops["SR"]) / 1e9 + flops["SR"] / 1e10 + 0.5
    assert rate.seconds(flops) == pytest.approx(per_step)
    line = estimate_line("train", flops, rate, 120)
    assert line.startswith("train: estimated at most ~") and "for 120 steps" in line
    assert all(part in line for part in ("sampling", "local energy", "gradient", "SR"))


def test_measure_rate_leaves_the_model_and_global_stream_alone():
    model = AutoregressiveTransformer(TransformerConfig((4, 4), 2, 16, 2, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.random.get_rng_state()
    rate = measure_rate(model)
    assert rate.flops_per_s > 0 and rate.gram_flops_per_s > 0 and rate.sampling_overhead_s >= 0
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
