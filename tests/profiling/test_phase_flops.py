"""The phase network's FLOPs in the profile: exactly the encoder's own, dense and dedup, and its quantised ops.

The dense local energy evaluates ``log psi = log P / 2 + i phi`` on every valid connected configuration, so
the phase network's dense FLOPs per sample are those of ``model.phase(configs)`` run alone on the same
configurations; their matmul part is ``forward_flops(model) - forward_flops(model, phase=False)`` per
configuration (:mod:`vqnqs.vmc.cost`), plus the quantiser distances ``2 Q d`` per location for a VQ model.
"""

import pytest
import torch

from tests.profiling.conftest import randomize, tiny_baseline
from vqnqs.models import AutoregressiveTransformer, TransformerConfig, VQConfig, make_vq_model
from vqnqs.physics.hamiltonian import Heisenberg
from vqnqs.physics.lattice import Lattice
from vqnqs.profiling.batches import connected_configs, distinct_samples, draw_samples
from vqnqs.profiling.flop_profile import PATHS, is_phase, profile_flops
from vqnqs.profiling.flops import COMPONENTS, count_flops
from vqnqs.profiling.quantized import quantized_cells
from vqnqs.vmc.cost import forward_flops

BATCH, N_BATCHES = 8, 2
D, Q, T = 8, 4, 8  # width, codes, tokens (2x4 lattice, one spin per token)


def phase_model(vq: bool, seed: int = 3) -> AutoregressiveTransformer:
    """2x4 lattice, Sz = 0, one autoregressive block and one encoder block, float64."""
    config = TransformerConfig((2, 4), 1, d_model=D, n_heads=2, n_blocks=1, d_ff=12, n_down=4, phase_blocks=1)
    return randomize(
        make_vq_model(config, VQConfig(heads=2, codes=Q)) if vq else AutoregressiveTransformer(config), seed
    )


@pytest.fixture
def heis():
    return Heisenberg(Lattice((2, 4)), sign_rule=False)


def encoder_alone(model: AutoregressiveTransformer, hamiltonian, elementwise: bool) -> dict:
    """FLOPs of ``model.phase`` run alone on the profile's configurations (the batches of :func:`profile_flops`)."""
    total: dict = {}
    for b in range(N_BATCHES):
        configs = connected_configs(hamiltonian, distinct_samples(draw_samples(model, BATCH, b)))
        with torch.no_grad():
            for cell, flops in count_flops(model, lambda c=configs: model.phase(c), elementwise).items():
                total[cell] = total.get(cell, 0) + flops
    return total


@pytest.mark.parametrize("vq", [False, True], ids=["baseline", "vq"])
def test_phase_flops_are_the_encoders_own(heis, vq):
    model = phase_model(vq)
    for elementwise in (False, True):
        profile = profile_flops(heis, model, batch=BATCH, n_batches=N_BATCHES, seed=0, elementwise=elementwise)
        alone = encoder_alone(model, heis, elementwise)
        assert alone and all(is_phase(cell) for cell in alone)
        assert profile.phase("dense") == pytest.approx(sum(alone.values()) / profile.n_samples, rel=1e-12)
        assert {cell: v for cell, v in profile.dense.items() if is_phase(cell)} == pytest.approx(
            {cell: v / profile.n_samples for cell, v in alone.items()}, rel=1e-12
        )
        assert 0 < profile.phase("dedup") < profile.phase("dense") < profile.flops_dense_per_sample
        assert all(0 < profile.phase(path) <= profile.phase("dense") for path in PATHS)
        if not elementwise:  # the matmul count of vqnqs.vmc.cost, plus the encoder's distances
            per_config = forward_flops(model) - forward_flops(model, phase=False) + (2 * Q * D * T if vq else 0)
            assert profile.phase("dense") == pytest.approx(per_config * profile.configs_per_sample, rel=1e-12)
    by_component = profile.by_component_all_paths(phase_only=True)
    assert list(by_component) == list(COMPONENTS)
    for path in PATHS:
        assert sum(paths[path] for paths in by_component.values()) == pytest.approx(profile.phase(path), rel=1e-12)


def test_without_a_phase_network_there_are_no_phase_flops(tfim8):
    profile = profile_flops(tfim8, tiny_baseline(seed=1), batch=BATCH, n_batches=1)
    assert all(profile.phase(path) == 0 for path in PATHS)


def test_quantised_ops_of_the_encoder(heis):
    """A VQ model quantises its encoder block: every per-location encoder op acts on keyed rows (the head
    included: the encoder has no unquantised half-block), and the engine runs each on fewer rows."""
    phase_cells = {("phase_embed", "embedding")}
    phase_cells |= {
        ("phase_block0", g) for g in ("ln_attn", "qkv_proj", "out_proj", "residual", "ln_ff", "feed_forward")
    }
    phase_cells |= {("phase_output", "ln_f"), ("phase_output", "head")}
    vq = phase_model(vq=True)
    assert {cell for cell in quantized_cells(vq) if is_phase(cell)} == phase_cells
    baseline_cells = {("phase_embed", "embedding"), ("phase_block0", "ln_attn"), ("phase_block0", "qkv_proj")}
    assert {cell for cell in quantized_cells(phase_model(vq=False)) if is_phase(cell)} == baseline_cells
    profile = profile_flops(heis, vq, batch=BATCH, n_batches=N_BATCHES, seed=0)
    for cell in phase_cells:
        assert 0 < profile.dedup[cell] < profile.dense[cell], cell
    for cell in (("phase_block0", "attention"), ("phase_block0", "quantizer")):
        assert cell not in quantized_cells(vq) and profile.dense[cell] > 0
    quantized = quantized_cells(vq)
    q_dense = sum(v for cell, v in profile.dense.items() if cell in quantized)
    q_dedup = sum(v for cell, v in profile.dedup.items() if cell in quantized)
    assert profile.quantized_ops_savings == pytest.approx(q_dense / q_dedup, rel=1e-12) and q_dense > q_dedup
