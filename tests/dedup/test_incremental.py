"""The incremental engine is the dense forward of the same model, reorganised: every connected configuration
gets the codes and the log P of the dense forward (float64: |dlog P| <= 1e-10), whatever its certificates
and safety recomputations decided."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.dedup.conftest import hamiltonian, random_model
from tests.dedup.test_engine import assert_same_log_prob, transformer_configs
from vqnqs.dedup import ExecutionPolicy, dense_codes
from vqnqs.dedup.incremental import incremental_log_prob
from vqnqs.models import TransformerConfig, VectorQuantizer, VQConfig
from vqnqs.vmc.local_energy import local_energy


def samples(model, system: str, n: int, seed: int, source: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    n_sites, n_down = model.n_sites, model.config.n_down
    if source == "model":
        return model.sample(n, generator=generator)
    if n_down is None:
        return torch.randint(0, 2, (n, n_sites), generator=generator)
    order = torch.rand(n, n_sites, generator=generator).argsort(dim=1)  # uniform in the Sz sector
    return (order < n_down).long()


def check_against_dense(model, system: str, s: torch.Tensor, policy: ExecutionPolicy | None = None):
    """Every valid connected configuration of ``s``: the engine's codes and log P are the dense forward's."""
    conn = hamiltonian(system, model.config.lattice_shape).connected(s)
    kwargs = {} if policy is None else {"policy": policy}
    result = incremental_log_prob(model, s, conn.configs, conn.valid, record_codes=True, **kwargs)
    flat = conn.configs[conn.valid]
    inputs, handles = [], [q.register_forward_hook(lambda m, a, o: inputs.append(a[0])) for q in quantizers(model)]
    try:
        with torch.no_grad():
            assert_same_log_prob(result.log_prob[conn.valid], model.log_prob(flat))
    finally:
        for handle in handles:
            handle.remove()
    assert len(result.codes) == len(inputs)
    for engine_codes, x, quantizer in zip(result.codes, inputs, quantizers(model), strict=True):
        assert_same_codes(engine_codes[conn.valid], x, quantizer)
    return result


def quantizers(model) -> list:
    blocks = [*model.blocks, model.final_block]
    return [block.attn.quantizer for block in blocks if isinstance(block.attn.quantizer, VectorQuantizer)]


def assert_same_codes(codes: torch.Tensor, x: torch.Tensor, quantizer: VectorQuantizer) -> None:
    """``codes (K, T, H)`` are the dense forward's codes of its quantiser inputs ``x (K, T, d)``, except where the
    dense row is itself a tie to rounding (two codewords equidistant to 1e-9 of the squared scale), which the
    rounding of any batch, the dense forward's own included, may resolve either way."""
    dense = quantizer.encode(x)
    differ = codes != dense  # (K, T, H)
    if not differ.any():
        return
    rows = x.reshape(*x.shape[:-1], quantizer.heads, -1)[differ]  # (n, e)
    heads = torch.nonzero(differ)[:, -1]
    w_engine, w_dense = quantizer.codebook[heads, codes[differ]], quantizer.codebook[heads, dense[differ]]
    gap = ((rows - w_engine) ** 2).sum(-1) - ((rows - w_dense) ** 2).sum(-1)
    scale = (rows**2).sum(-1) + (w_engine**2).sum(-1) + (w_dense**2).sum(-1)
    assert (gap.abs() <= 1e-9 * scale).all(), f"{int(differ.sum())} codes differ, not at ties"


@st.composite
def cases(draw):
    config = draw(transformer_configs(0, 3))
    vq = draw(
        st.none()
        | st.builds(VQConfig, heads=st.sampled_from([1, 2, 4]), codes=st.integers(2, 16), quantize_final=st.booleans())
    )
    return config, vq, draw(st.booleans()), draw(st.sampled_from(["heisenberg", "tfim"]))


@settings(max_examples=40, deadline=None)
@given(
    case=cases(),
    source=st.sampled_from(["model", "uniform"]),
    n_samples=st.integers(1, 5),
    std=st.sampled_from([0.05, 0.5, 2.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_incremental_engine_matches_dense_forward(case, source: str, n_samples: int, std: float, seed: int) -> None:
    """Random VQ models and baselines (0..3 blocks, TFIM and Heisenberg, 1D and 2D, several patch sizes), weights
    from small (near-uniform attention) to large (a few keys carry most of the weight).

    Large weights saturate the attention, so many of its outputs agree to ~1e-9: a codebook fitted to them
    (k-means++ on data) then holds codewords that close, and the dense forward's own codes depend on the
    rounding of its batch. Those codebooks are drawn with the moderate weights only."""
    config, vq, fit, system = case
    fit = fit and vq is not None
    if fit and std > 1.0:
        std = 0.5
    model = random_model(config, vq, seed, std=std, fit=fit)
    check_against_dense(model, system, samples(model, system, n_samples, seed, source))


def test_keys_carrying_the_weight_are_recomputed() -> None:
    """Large attention scores: the changed key often carries most of a row's weight, so the update would cancel;
    those rows are recomputed in full (counted) and the result is still the dense forward's."""
    config = TransformerConfig((12,), 1, d_model=16, n_heads=2, n_blocks=2, d_ff=32)
    model = random_model(config, VQConfig(heads=2, codes=8), seed=3, std=3.0, fit=True)
    result = check_against_dense(model, "tfim", samples(model, "tfim", 6, 0, "uniform"))
    assert result.stats["rows_redone"] > 0


def test_duplicate_codewords_resolve_alike_on_every_path() -> None:
    """Duplicate codewords (k-means++ repeats rows once the distinct ones are used up): exact ties, which the
    rounding of differently shaped batches could break either way. The lower index wins on every path."""
    config = TransformerConfig((8,), 2, d_model=8, n_heads=1, n_blocks=2, d_ff=16)
    model = random_model(config, VQConfig(heads=1, codes=4), seed=5, std=0.3, fit=True)
    with torch.no_grad():
        for quantizer in model.quantizers:
            quantizer.codebook[:, 2:] = quantizer.codebook[:, 1:2]  # codewords 1, 2, 3 the same
    result = check_against_dense(model, "tfim", samples(model, "tfim", 4, 1, "uniform"))
    assert all(bool((codes < 2).all()) for codes in result.codes)


def test_a_tie_has_radius_zero() -> None:
    """A row equidistant from two distinct codewords is certified nowhere: its radius is 0."""
    quantizer = VectorQuantizer(2, VQConfig(heads=1, codes=2)).double()
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]]))
    codes, radius = quantizer(torch.tensor([[0.0, 3.0], [0.5, 0.0]], dtype=torch.float64), certify=True)
    assert codes.tolist() == [[0], [0]]
    assert radius[0, 0] == 0.0
    assert radius[1, 0] == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_certified_radius_keeps_the_code(dtype) -> None:
    """Any input closer than the certified radius (per head) encodes to the same code: moves of 0.999 radius in
    random directions never change it; the radii are not vacuous (most are positive)."""
    torch.manual_seed(0)
    quantizer = VectorQuantizer(16, VQConfig(heads=2, codes=16)).to(dtype)
    with torch.no_grad():
        quantizer.codebook.normal_()
    x = torch.randn(4000, 16, dtype=dtype)
    codes, radius = quantizer(x, certify=True)
    assert torch.equal(codes, quantizer.encode(x))
    assert (radius > 0).double().mean() > 0.9
    for _ in range(5):
        direction = torch.randn(4000, 2, 8, dtype=dtype)
        direction = direction / direction.norm(dim=-1, keepdim=True)
        moved = x + (0.999 * radius[..., None] * direction).reshape(4000, 16)
        assert torch.equal(quantizer.encode(moved), codes)


@pytest.mark.parametrize("system", ["tfim", "heisenberg"])
def test_local_energy_through_the_incremental_engine(system: str) -> None:
    shape = (4, 4) if system == "heisenberg" else (16,)
    config = TransformerConfig(
        shape, 2, d_model=16, n_heads=2, n_blocks=2, d_ff=32, n_down=8 if system == "heisenberg" else None
    )
    model = random_model(config, VQConfig(heads=2, codes=8), seed=7, fit=True)
    ham = hamiltonian(system, shape)
    s = samples(model, system, 16, 2, "model")
    dense = local_energy(ham, model, s, engine="dense")
    for chunk_size in (None, 5):
        torch.testing.assert_close(
            local_energy(ham, model, s, chunk_size=chunk_size, engine="incremental"), dense, rtol=1e-10, atol=1e-10
        )


@pytest.mark.parametrize("attention", ["content", "position"])
def test_small_steps_and_chunks_change_nothing(attention: str) -> None:
    """The memory policy (samples per step, configurations per attention chunk, rows per chunk of rival
    scoring) only reorders the work."""
    window = {"content": {}, "position": {"attention": "position", "window": 3}}[attention]
    config = TransformerConfig((4, 4), 2, d_model=16, n_heads=2, n_blocks=2, d_ff=32, n_down=8, **window)
    model = random_model(config, VQConfig(heads=2, codes=8), seed=11, fit=True)
    s = samples(model, "heisenberg", 6, 3, "model")
    check_against_dense(model, "heisenberg", s, ExecutionPolicy(config_elements=64, row_chunk=3))


def test_float32_codes_and_local_energies() -> None:
    """float32, a data-initialised model: >= 99.9% of the codes are the dense float32 forward's, and the mean
    local energy is within 1e-6 relative of the dense float64 evaluation."""
    config = TransformerConfig((32,), 4, d_model=32, n_heads=4, n_blocks=2, d_ff=64)
    model64 = random_model(config, VQConfig(heads=4, codes=64), seed=13, std=0.1, fit=True)
    model32 = random_model(config, VQConfig(heads=4, codes=64), seed=13, std=0.1, fit=True).float()
    model32.load_state_dict({k: v.float() for k, v in model64.state_dict().items()})
    ham = hamiltonian("tfim", (32,))
    s = samples(model64, "tfim", 64, 4, "model")
    conn = ham.connected(s)
    result = incremental_log_prob(model32, s, conn.configs, conn.valid, record_codes=True)
    with torch.no_grad():
        reference = dense_codes(model32, conn.configs[conn.valid])
    same = [(c[conn.valid] == r).all(-1).double().mean() for c, r in zip(result.codes, reference, strict=True)]
    assert min(same) >= 0.999
    e32 = local_energy(ham, model32, s, engine="incremental").mean()
    e64 = local_energy(ham, model64, s, engine="dense").mean()
    assert abs(e32 - e64) <= 1e-6 * abs(e64)


def test_certified_codes_are_the_dense_codes() -> None:
    """A random codebook with cells wide against the attention's moves: most rows after a change keep their code
    on the certificate alone, and those codes are the dense forward's; the rows whose state never changes
    stay out of the per-location work (a few slot rows per configuration and block)."""
    config = TransformerConfig((32,), 4, d_model=16, n_heads=2, n_blocks=3, d_ff=32)
    model = random_model(config, VQConfig(heads=2, codes=16), seed=13, std=0.2)
    result = check_against_dense(model, "tfim", samples(model, "tfim", 8, 4, "model"))
    stats = result.stats
    assert stats["rows_certified"] > stats["rows_encoded"] > 0
    n_configs = 8 * 28  # the configurations whose input differs: every flip but the 4 in the last patch
    assert stats["slot_rows"] < 3 * config.n_blocks * n_configs


@pytest.mark.parametrize("std", [0.2, 2.0])
@pytest.mark.parametrize("system", ["tfim", "heisenberg"])
def test_position_path_touches_only_the_window_and_keeps_dense_codes(std: float, system: str) -> None:
    """Position attention in a window of 2 tokens, every block quantised (the final one too): a configuration's
    touched rows per block are at most 2 |C|, so over 64 tokens the work stays near the flip; certified and
    encoded codes alike are the dense forward's, with moderate weights and saturating ones."""
    shape = (64,) if system == "tfim" else (8, 8)
    config = TransformerConfig(
        shape,
        2 if system == "heisenberg" else 1,
        d_model=16,
        n_heads=2,
        n_blocks=2,
        attention="position",
        window=2,
        n_down=None if system == "tfim" else 32,
    )
    model = random_model(config, VQConfig(heads=2, codes=16, quantize_final=True), seed=5, std=std, fit=True)
    result = check_against_dense(model, system, samples(model, system, 4, 1, "model"))
    stats = result.stats
    assert stats["rows_certified"] + stats["rows_encoded"] == stats["rows_touched"]
    assert stats["rows_certified"] > 0 and stats["rows_encoded"] > 0
    n_tokens = model.patching.n_tokens
    n_configs = 4 * hamiltonian(system, shape).max_connections
    assert stats["rows_touched"] < 0.5 * (config.n_blocks + 1) * n_configs * n_tokens  # far rows never touched
