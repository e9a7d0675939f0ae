"""Position attention (``attention: position``): weights that depend on positions only, zero outside the
window, so a changed input moves nothing beyond it; with ``quantize_final`` the VQ model quantises its final
half-block too."""

import torch

from tests.models.test_transformer import all_configs, random_model
from vqnqs.models import TransformerConfig, VQConfig, make_vq_model
from vqnqs.models.attention import PositionMixing


def test_weights_are_normalised_causal_and_zero_outside_the_window() -> None:
    mixing = PositionMixing(n_heads=3, window=4)
    with torch.no_grad():
        mixing.scores.copy_(torch.randn(3, 4))
    alpha = mixing.weights(10)  # (H, T, T)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(3, 10))
    distance = torch.arange(10)[:, None] - torch.arange(10)[None, :]
    outside = (distance < 0) | (distance >= 4)
    assert (alpha[:, outside] == 0).all() and (alpha[:, ~outside] > 0).all()
    # Rows far from the start see the same window: the same weights per distance.
    torch.testing.assert_close(alpha[:, 5, 2:6], alpha[:, 8, 5:9])


def test_a_changed_value_moves_only_the_rows_of_its_window() -> None:
    mixing = PositionMixing(n_heads=2, window=3).double()
    v = torch.randn(1, 2, 9, 5, dtype=torch.float64)
    moved = v.clone()
    moved[..., 4, :] += 1.0
    before, after = mixing(v, v, v), mixing(moved, moved, moved)  # (1, H, T, e)
    changed = (before != after).any(dim=-1).any(dim=1)[0]  # (T,)
    assert changed.tolist() == [t in (4, 5, 6) for t in range(9)]


def test_conditionals_depend_only_on_the_receptive_field() -> None:
    """No full block, one half-block of window 2: the conditional of token i sees tokens i-2 and i-1 only
    (input position i holds token i-1), and none before."""
    config = TransformerConfig((8,), 1, d_model=8, n_heads=2, n_blocks=0, attention="position", window=2)
    model = random_model(config, seed=1).double()
    s = all_configs(8)[torch.randperm(256, generator=torch.Generator().manual_seed(0))[:20]]
    with torch.no_grad():
        base = model.conditional_log_probs(s)
        for k in range(8):
            flipped = s.clone()
            flipped[:, k] = 1 - flipped[:, k]
            moved = (model.conditional_log_probs(flipped) != base).any(dim=-1).any(dim=0)  # (T,)
            assert moved.tolist() == [i in (k + 1, k + 2) for i in range(8)]


def test_vq_model_with_a_quantised_final_block_is_normalised_and_samples_alike() -> None:
    config = TransformerConfig((10,), 2, d_model=8, n_heads=2, attention="position", window=3)
    model = make_vq_model(config, VQConfig(heads=2, codes=4, quantize_final=True, vq_init="none", init_std=1.0))
    assert model.final_block.attn.quantizer is model.quantizers[-1] and len(model.quantizers) == 3
    model = model.double().eval()
    with torch.no_grad():
        total = model.log_prob(all_configs(10)).exp().sum().item()
    assert abs(total - 1.0) < 1e-10
    cached = model.sample(200, generator=torch.Generator().manual_seed(3))
    uncached = model.sample(200, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(cached, uncached)
