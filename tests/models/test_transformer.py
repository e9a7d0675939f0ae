"""Autoregressive transformer: exact normalisation by enumeration, exact sampling, Sz mask, dtypes."""

import copy

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from torch import Tensor, nn

from vqnqs.models import AutoregressiveTransformer, TransformerConfig, default_patch


def all_configs(n_sites: int) -> Tensor:
    """All 2^N configurations ``(2^N, N)``, site 0 the most significant bit."""
    return (torch.arange(2**n_sites)[:, None] >> torch.arange(n_sites - 1, -1, -1)) & 1


def random_model(config: TransformerConfig, seed: int = 0, std: float = 0.5) -> AutoregressiveTransformer:
    """A model with large random weights, so that its distribution is far from uniform."""
    model = AutoregressiveTransformer(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


CASES = [
    pytest.param(TransformerConfig((12,), 3, d_model=16, n_heads=2), id="chain12-K3"),
    pytest.param(TransformerConfig((12,), 2, d_model=16, n_heads=4, n_down=6), id="chain12-K2-sz"),
    pytest.param(TransformerConfig((2, 6), 2, d_model=16, n_heads=2), id="2x6-p2"),
    pytest.param(TransformerConfig((2, 6), 2, d_model=16, n_heads=2, n_down=6), id="2x6-p2-sz"),
    pytest.param(TransformerConfig((12,), 2, d_model=16, n_heads=2, attention="position", window=2), id="chain12-pos"),
    pytest.param(
        TransformerConfig((2, 6), 2, d_model=16, n_heads=2, n_down=6, attention="position"), id="2x6-p2-sz-pos"
    ),
]


@pytest.mark.parametrize("config", CASES)
def test_normalised_over_all_configurations(config: TransformerConfig) -> None:
    model = random_model(config)
    configs = all_configs(config.n_sites)
    with torch.no_grad():
        log_p = model.log_prob(configs)
        conditionals = model.conditional_log_probs(configs)
    assert log_p.shape == (2**config.n_sites,)
    assert not torch.isnan(log_p).any() and not torch.isnan(conditionals).any()
    total = log_p.double().exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-6)
    # Not uniform: the test would not notice a model that ignores its inputs otherwise.
    assert log_p[torch.isfinite(log_p)].std() > 0.5
    if config.n_down is None:
        assert torch.isfinite(log_p).all()
        return
    in_sector = configs.sum(-1) == config.n_down
    assert torch.isneginf(log_p[~in_sector]).all()
    assert torch.isfinite(log_p[in_sector]).all()
    assert log_p[in_sector].double().exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    # Every conditional reached by an in-sector prefix is itself normalised.
    row_sums = conditionals[in_sector].double().exp().sum(-1)
    torch.testing.assert_close(row_sums, torch.ones_like(row_sums))


def test_conditionals_are_causal() -> None:
    config = TransformerConfig((12,), 3, d_model=16, n_heads=2)
    model = random_model(config, seed=1)
    s = torch.randint(0, 2, (20, 12), generator=torch.Generator().manual_seed(0))
    changed = s.clone()
    changed[:, 6:] = 1 - changed[:, 6:]  # flip patches 2 and 3
    with torch.no_grad():
        before, after = model.conditional_log_probs(s), model.conditional_log_probs(changed)
    torch.testing.assert_close(before[:, :3], after[:, :3])  # patch 2's conditional sees patches 0, 1 only
    assert not torch.allclose(before[:, 3], after[:, 3])


def chi_square_p_value(samples: Tensor, probs: np.ndarray) -> float:
    """Chi-square goodness of fit of ``samples (n, N)`` to ``probs`` over all 2^N states, rare bins pooled."""
    n_sites = samples.shape[1]
    index = (samples * (2 ** torch.arange(n_sites - 1, -1, -1))).sum(-1)
    observed = np.bincount(index.numpy(), minlength=2**n_sites).astype(float)
    expected = probs * len(samples)
    rare = expected < 5
    observed = np.append(observed[~rare], observed[rare].sum())
    expected = np.append(expected[~rare], expected[rare].sum())
    if expected[-1] == 0 and observed[-1] == 0:  # nothing rare: drop the empty pooled bin
        observed, expected = observed[:-1], expected[:-1]
    expected *= observed.sum() / expected.sum()
    return float(chisquare(observed, expected).pvalue)


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(TransformerConfig((8,), 2, d_model=16, n_heads=2), id="chain8"),
        pytest.param(TransformerConfig((2, 4), 2, d_model=16, n_heads=2, n_down=4), id="2x4-sz"),
    ],
)
def test_samples_follow_the_model_distribution(config: TransformerConfig) -> None:
    model = random_model(config, seed=2, std=0.4)
    with torch.no_grad():
        probs = model.log_prob(all_configs(config.n_sites)).double().exp().numpy()
    samples = model.sample(20000, generator=torch.Generator().manual_seed(1234))
    assert samples.shape == (20000, config.n_sites) and samples.dtype == torch.int64
    assert chi_square_p_value(samples, probs) > 1e-3
    # The same test rejects the wrong distribution (uniform over the reachable states).
    uniform = (probs > 0) / (probs > 0).sum()
    assert chi_square_p_value(samples, uniform) < 1e-3
    if config.n_down is not None:
        assert (samples.sum(-1) == config.n_down).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_down", [None, 6])
@pytest.mark.parametrize("attention", ["content", "position"])
def test_cached_and_uncached_sampling_agree(dtype: torch.dtype, n_down: int | None, attention: str) -> None:
    config = TransformerConfig((3, 4), 1, d_model=16, n_heads=4, n_down=n_down, attention=attention)
    model = random_model(config, seed=3).to(dtype)
    cached = model.sample(500, generator=torch.Generator().manual_seed(7), use_cache=True)
    uncached = model.sample(500, generator=torch.Generator().manual_seed(7), use_cache=False)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, model.sample(500, generator=torch.Generator().manual_seed(8)))


def test_cached_forward_matches_full_forward() -> None:
    model = random_model(TransformerConfig((12,), 2, d_model=16, n_heads=2), seed=4)
    inputs = torch.randint(0, model.bos + 1, (5, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, _ = model(inputs)
        _, cache = model(inputs[:, :2])
        rest, cache = model(inputs[:, 2:5], cache)
        last, cache = model(inputs[:, 5:], cache)
    torch.testing.assert_close(torch.cat([rest, last], dim=1), full[:, 2:])
    assert cache[0][0].shape == (5, 6, 16)


def test_float64_model() -> None:
    config = TransformerConfig((2, 6), 2, d_model=16, n_heads=2, n_down=6)
    model32 = random_model(config, seed=5, std=0.3)
    model64 = copy.deepcopy(model32).double()
    for name, tensor in [*model64.named_parameters(), *model64.named_buffers()]:
        assert not tensor.is_floating_point() or tensor.dtype == torch.float64, name
    s = all_configs(12)[all_configs(12).sum(-1) == 6][:100]
    with torch.no_grad():
        log_p32, log_p64 = model32.log_prob(s), model64.log_prob(s)
    assert log_p32.dtype == torch.float32 and log_p64.dtype == torch.float64
    assert model64.log_psi(s).dtype == torch.float64
    torch.testing.assert_close(log_p32.double(), log_p64, rtol=1e-5, atol=1e-5)


def test_log_psi_is_half_log_prob_and_gradients_are_finite() -> None:
    model = random_model(TransformerConfig((4, 2), 2, d_model=8, n_heads=2, n_down=4), seed=6)
    s = model.sample(64, generator=torch.Generator().manual_seed(0))
    log_psi = model.log_psi(s)
    torch.testing.assert_close(log_psi, 0.5 * model.log_prob(s))
    log_psi.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_initial_distribution_is_close_to_uniform() -> None:
    torch.manual_seed(0)
    model = AutoregressiveTransformer(TransformerConfig((12,), 3))
    with torch.no_grad():
        log_p = model.log_prob(all_configs(12)[:256])
    # Logits ~0.02 per token: a few tenths at most over 4 tokens, from log P = -12 log 2 of the uniform.
    torch.testing.assert_close(log_p, torch.full_like(log_p, -12 * np.log(2)), atol=0.3, rtol=0)
    assert log_p.std() > 0  # but not exactly constant


def test_quantizer_slot_sits_before_w_o() -> None:
    class Zero(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.zeros_like(x)

    config = TransformerConfig((8,), 2, d_model=16, n_heads=4, n_blocks=2)
    model = random_model(config, seed=7)
    seen: list[tuple[int, ...]] = []
    model.blocks[0].attn.quantizer.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape))
    s = torch.randint(0, 2, (3, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.log_prob(s)
    assert seen == [(3, 4, 16)]  # (B, T, d): per-head outputs concatenated
    assert isinstance(model.final_block.attn.quantizer, nn.Identity) and model.final_block.ff is None
    # Zeroing the quantizer output leaves W_O's bias: the same as zeroing W_O's weight.
    zero_quantized, zero_weight = copy.deepcopy(model), copy.deepcopy(model)
    for block_a, block_b in zip(zero_quantized.blocks, zero_weight.blocks, strict=True):
        block_a.attn.quantizer = Zero()
        nn.init.zeros_(block_b.attn.out_proj.weight)
    with torch.no_grad():
        torch.testing.assert_close(zero_quantized.log_prob(s), zero_weight.log_prob(s))
        assert not torch.allclose(zero_quantized.log_prob(s), model.log_prob(s))


def test_paper_shape() -> None:
    config = TransformerConfig.paper((4, 4), n_down=8)
    assert (config.d_model, config.n_heads, config.n_blocks, config.patch, config.d_ff) == (256, 8, 3, 2, 1024)
    model = AutoregressiveTransformer(config)
    assert len(model.blocks) == 3 and model.final_block.ff is None
    assert model.n_params == sum(p.numel() for p in model.parameters())
    assert model.patching.vocab_size == 16 and model.patching.n_tokens == 4
    assert TransformerConfig.paper((16,)).patch == 4


@pytest.mark.parametrize("shape,patch", [((4, 4), 2), ((6, 6), 2), ((32,), 4), ((10,), 2), ((7,), 1)])
def test_default_patch_tiles_the_lattice(shape, patch) -> None:
    assert default_patch(shape) == patch
    TransformerConfig(shape, default_patch(shape))  # validates the tiling


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lattice_shape": (5, 4), "patch": 2}, "lattice_shape"),
        ({"lattice_shape": (10,), "patch": 3}, "lattice_shape"),
        ({"lattice_shape": (12,), "patch": 3, "d_model": 30, "n_heads": 4}, "n_heads"),
        ({"lattice_shape": (12,), "patch": 3, "n_blocks": -1}, "n_blocks"),
        ({"lattice_shape": (12,), "patch": 3, "n_down": 13}, "n_down"),
        ({"lattice_shape": (12,), "patch": 3, "d_ff": 0}, "d_ff"),
        ({"lattice_shape": (12,), "patch": 3, "window": 2}, "window"),
        ({"lattice_shape": (12,), "patch": 3, "attention": "position", "window": 0}, "window"),
        ({"lattice_shape": (12,), "patch": 3, "attention": "local"}, "attention"),
    ],
)
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TransformerConfig(**kwargs)


def test_config_accepts_lists() -> None:
    config = TransformerConfig([2, 6], 2)  # e.g. from YAML
    assert config.lattice_shape == (2, 6) and config.d_ff == 4 * config.d_model


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda() -> None:
    config = TransformerConfig((2, 6), 2, d_model=16, n_heads=2, n_down=6)
    model = random_model(config, seed=8).cuda().double()
    samples = model.sample(100, generator=torch.Generator(device="cuda").manual_seed(0))
    assert samples.device.type == "cuda" and (samples.sum(-1) == 6).all()
    with torch.no_grad():
        total = model.log_prob(all_configs(12).cuda()).exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-9)
    assert model.cpu().sample(50, generator=torch.Generator().manual_seed(0)).shape == (50, 12)
