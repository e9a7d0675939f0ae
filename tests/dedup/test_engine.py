"""The dedup engine is the dense forward of the SAME model, reorganised: same codes, same log P.

Every check compares against the dense forward (``model.log_prob``) in float64; the savings checks
compare unique-row counts against numbers that hold by construction.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.dedup.conftest import brute_force_prefixes, hamiltonian, local_energy_batch, random_model
from vqnqs.dedup import ExecutionPolicy, dedup_log_prob, dedup_log_psi, dense_codes
from vqnqs.models import TransformerConfig, VQConfig
from vqnqs.physics.hamiltonian import Heisenberg
from vqnqs.physics.lattice import Lattice
from vqnqs.vmc.local_energy import local_energy

# (lattice shape, patch): 1D and 2D, one spin per token and several.
LATTICES = [((8,), 1), ((8,), 2), ((6,), 3), ((2, 4), 1), ((2, 4), 2), ((4, 4), 2), ((4, 4), 1)]


def assert_same_log_prob(engine: torch.Tensor, dense: torch.Tensor) -> None:
    """Equal -inf pattern (Sz mask) and |delta log P| <= 1e-10 elsewhere; some value must be finite (every
    batch holds its samples, which lie in the sector), or the comparison would hold vacuously."""
    assert torch.equal(torch.isinf(engine), torch.isinf(dense))
    finite = torch.isfinite(dense)
    assert finite.any(), "no finite log P to compare"
    assert torch.isfinite(engine[finite]).all()
    assert (engine[finite] - dense[finite]).abs().max().item() <= 1e-10


@st.composite
def transformer_configs(draw, min_blocks: int = 1, max_blocks: int = 2) -> TransformerConfig:
    """Small random shapes: 1D and 2D lattices, several patch sizes, with or without the Sz sector."""
    shape, patch = draw(st.sampled_from(LATTICES))
    n_sites = shape[0] * (shape[1] if len(shape) == 2 else 1)
    d_model = draw(st.sampled_from([8, 16]))
    attention = draw(st.sampled_from(["content", "position"]))
    window = draw(st.none() | st.integers(1, 4)) if attention == "position" else None
    return TransformerConfig(
        shape,
        patch,
        d_model=d_model,
        n_heads=draw(st.sampled_from([1, 2])),
        n_blocks=draw(st.integers(min_blocks, max_blocks)),
        d_ff=2 * d_model,
        n_down=n_sites // 2 if draw(st.booleans()) else None,
        attention=attention,
        window=window,
    )


@st.composite
def vq_cases(draw):
    config = draw(transformer_configs())
    vq = VQConfig(
        heads=draw(st.sampled_from([1, 2, 4])), codes=draw(st.integers(2, 16)), quantize_final=draw(st.booleans())
    )
    return (
        config,
        vq,
        draw(st.booleans()),
        draw(st.sampled_from(["heisenberg", "tfim"])),
        draw(st.sampled_from(["model", "uniform"])),
        draw(st.integers(1, 6)),
        draw(st.integers(0, 2**31 - 1)),
    )


@settings(max_examples=30, deadline=None)
@given(case=vq_cases())
def test_vq_engine_matches_dense_forward(case) -> None:
    config, vq, fit, system, source, n_samples, seed = case
    model = random_model(config, vq, seed, fit=fit)
    s = local_energy_batch(model, hamiltonian(system, config.lattice_shape), n_samples, seed, source)
    with torch.no_grad():
        dense = model.log_prob(s)
        reference_codes = dense_codes(model, s)
        result = dedup_log_prob(model, s, record_codes=True)
    # Identical codes, layer by layer.
    assert len(result.codes) == len(reference_codes) == config.n_blocks + vq.quantize_final
    for engine_codes, codes in zip(result.codes, reference_codes, strict=True):
        assert engine_codes.shape == (s.shape[0], model.patching.n_tokens, vq.heads)
        assert torch.equal(engine_codes, codes)
    assert_same_log_prob(result.log_prob, dense)
    torch.testing.assert_close(result.log_psi, 0.5 * result.log_prob)
    # The compressed state never holds more rows than locations, and each quantised layer's rows are
    # bounded by (previous rows) x (distinct code tuples).
    locations = s.shape[0] * model.patching.n_tokens
    for previous, layer in zip(result.stats[:-1], result.stats[1:], strict=True):
        assert layer.unique_rows <= layer.locations == locations
        if layer.quantized:
            assert layer.unique_rows <= previous.unique_rows * layer.code_tuples
    # Attention runs once per distinct prefix: block0's are the prefixes of the input tokens; a block's
    # ids are functions of the previous block's prefixes, so the prefixes only merge from block to block.
    inputs = model.shift_right(model.patching.to_tokens(s))
    blocks = result.stats[1:]
    assert blocks[0].attention_rows == len(brute_force_prefixes(inputs))
    for previous, layer in zip(blocks[:-1], blocks[1:], strict=True):
        assert layer.attention_rows <= previous.attention_rows
    for layer in blocks:
        assert sum(layer.prefixes_per_position) == layer.attention_rows <= locations
        assert layer.unique_rows <= layer.attention_rows  # a state per prefix at most
    final = result.stats[-1]
    assert final.layer == "final" and final.quantized == vq.quantize_final
    if not vq.quantize_final:  # without a quantiser every prefix is its own state
        assert final.unique_rows == final.attention_rows


@settings(max_examples=15, deadline=None)
@given(
    lattice=st.sampled_from(LATTICES),
    n_blocks=st.integers(0, 2),
    sz=st.booleans(),
    system=st.sampled_from(["heisenberg", "tfim"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_baseline_engine_matches_dense_forward(lattice, n_blocks: int, sz: bool, system: str, seed: int) -> None:
    shape, patch = lattice
    n_sites = shape[0] * (shape[1] if len(shape) == 2 else 1)
    config = TransformerConfig(
        shape, patch, d_model=8, n_heads=2, n_blocks=n_blocks, n_down=n_sites // 2 if sz else None
    )
    model = random_model(config, None, seed)
    s = local_energy_batch(model, hamiltonian(system, shape), 4, seed, "model")
    with torch.no_grad():
        result = dedup_log_prob(model, s, record_codes=True)
        assert_same_log_prob(result.log_prob, model.log_prob(s))
    assert result.codes == []
    # No quantiser: after the first block every distinct prefix of the input tokens is its own state.
    prefixes = len(brute_force_prefixes(model.shift_right(model.patching.to_tokens(s))))
    assert all(layer.unique_rows == layer.attention_rows == prefixes for layer in result.stats[1:])
    torch.testing.assert_close(dedup_log_psi(model, s), 0.5 * model.log_prob(s), rtol=0, atol=1e-10)


@settings(max_examples=15, deadline=None)
@given(case=vq_cases(), baseline=st.booleans())
def test_engine_without_prefix_reuse_matches_dense_forward(case, baseline: bool) -> None:
    """The paper's engine (per-location ops deduplicated, attention once per location): same codes and
    log P as the dense forward, one attention row per location in every block."""
    config, vq, fit, system, source, n_samples, seed = case
    model = random_model(config, None if baseline else vq, seed, fit=fit)
    s = local_energy_batch(model, hamiltonian(system, config.lattice_shape), n_samples, seed, source)
    with torch.no_grad():
        result = dedup_log_prob(model, s, record_codes=True, prefix_reuse=False)
        assert_same_log_prob(result.log_prob, model.log_prob(s))
        reference_codes = dense_codes(model, s)
    assert len(result.codes) == len(reference_codes)
    for engine_codes, codes in zip(result.codes, reference_codes, strict=True):
        assert torch.equal(engine_codes, codes)
    locations = s.shape[0] * model.patching.n_tokens
    assert all(layer.attention_rows == locations for layer in result.stats[1:])
    if baseline:  # no quantiser: nothing to deduplicate after the first attention
        assert all(layer.unique_rows == locations for layer in result.stats[1:])


def test_engine_log_prob_is_normalised() -> None:
    """Independent of the dense forward: the engine's P sums to one over all configurations."""
    config = TransformerConfig((2, 4), 1, d_model=16, n_heads=2, n_blocks=2)
    model = random_model(config, VQConfig(heads=2, codes=3), seed=1)
    s = (torch.arange(256)[:, None] >> torch.arange(7, -1, -1)) & 1
    with torch.no_grad():
        log_p = dedup_log_prob(model, s).log_prob
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    assert log_p.std() > 0.3


@pytest.mark.parametrize("heads", [1, 2])
def test_one_code_collapses_to_position_and_input_classes(heads: int) -> None:
    """With Q = 1 every quantised state is a function of (position, input token) only: the unique rows
    after each quantised layer equal the number of distinct (position, input) pairs, far below K*T."""
    config = TransformerConfig((4, 4), 2, d_model=16, n_heads=2, n_blocks=2, n_down=8)
    model = random_model(config, VQConfig(heads=heads, codes=1), seed=3)
    s = local_energy_batch(model, Heisenberg(Lattice((4, 4))), 32, 0, "model")
    with torch.no_grad():
        result = dedup_log_prob(model, s)
        assert_same_log_prob(result.log_prob, model.log_prob(s))
    inputs = model.shift_right(model.patching.to_tokens(s))  # (K, T)
    classes = len({(t, int(v)) for row in inputs for t, v in enumerate(row)})
    n_locations = inputs.numel()
    assert classes < n_locations // 10
    embed, *blocks, final = result.stats
    assert embed.unique_rows == classes
    for layer in blocks:
        assert layer.quantized and layer.code_tuples == 1
        assert layer.unique_rows == classes < layer.locations == n_locations
    assert final.unique_rows == final.attention_rows == len(brute_force_prefixes(inputs)) < n_locations


def test_savings_on_a_local_energy_batch() -> None:
    """Two codes, one head, two blocks: at most classes * 2 * 2 rows after the second block, by construction."""
    config = TransformerConfig((4, 4), 2, d_model=16, n_heads=2, n_blocks=2, n_down=8)
    model = random_model(config, VQConfig(heads=1, codes=2), seed=5, fit=True)
    s = local_energy_batch(model, Heisenberg(Lattice((4, 4))), 64, 1, "model")
    with torch.no_grad():
        result = dedup_log_prob(model, s, record_codes=True)
    embed, block0, block1, final = result.stats
    assert embed.unique_rows <= 1 + 3 * 16  # BOS at position 0, 16 tokens at the other 3
    assert block0.unique_rows <= 2 * embed.unique_rows
    assert block1.unique_rows <= 2 * block0.unique_rows
    assert 8 * block1.unique_rows < block1.locations  # here K*T > 2000
    # Both codes are used (so this is not the trivial case in disguise).
    assert all(torch.unique(c).numel() == 2 for c in result.codes)


@pytest.mark.parametrize("shape,patch", [((2, 4), 2), ((4, 4), 2), ((4, 4), 1)])
def test_local_energy_dedup_equals_dense(shape, patch) -> None:
    n_sites = shape[0] * shape[1]
    config = TransformerConfig(shape, patch, d_model=16, n_heads=2, n_blocks=2, n_down=n_sites // 2)
    model = random_model(config, VQConfig(heads=2, codes=4), seed=7, fit=True)
    ham = Heisenberg(Lattice(shape))
    s = model.sample(40, generator=torch.Generator().manual_seed(0))
    dense = local_energy(ham, model.log_psi, s, chunk_size=16)
    via_model = local_energy(ham, model, s, chunk_size=16)
    deduped = local_energy(ham, model, s, chunk_size=16, engine="dedup")
    assert torch.equal(via_model, dense)
    assert torch.isfinite(deduped).all() and deduped.dtype == torch.float64
    torch.testing.assert_close(deduped, dense, rtol=1e-10, atol=1e-10)
    assert dense.std() > 0.1  # not a trivial (constant) local energy


def test_local_energy_dedup_needs_a_model() -> None:
    config = TransformerConfig((4,), 1, d_model=8, n_heads=2, n_blocks=1)
    model = random_model(config, VQConfig(heads=2, codes=2), seed=0)
    with pytest.raises(TypeError, match="dedup"):
        local_energy(Heisenberg(Lattice((4,))), model.log_psi, torch.zeros(2, 4, dtype=torch.long), engine="dedup")


def test_engine_gradients_match_dense() -> None:
    """Not needed by the local energy, but the reorganisation keeps autograd intact (eval mode: no STE, so
    the parameters before a quantiser get no gradient in either path)."""
    config = TransformerConfig((8,), 2, d_model=8, n_heads=2, n_blocks=2)
    model = random_model(config, VQConfig(heads=2, codes=3), seed=2)
    s = local_energy_batch(model, Heisenberg(Lattice((8,))), 3, 0, "model")
    model.log_prob(s).sum().backward()
    dense_grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    assert sum(g is not None for g in dense_grads) > len(dense_grads) // 2
    model.zero_grad(set_to_none=True)
    dedup_log_prob(model, s).log_prob.sum().backward()
    for p, g in zip(model.parameters(), dense_grads, strict=True):
        assert (p.grad is None) == (g is None)
        if g is not None:
            torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12)


# --- execution policy (chunks and threads) ---------------------------------------------------------------------------


@pytest.mark.parametrize("baseline", [False, True])
def test_chunked_engine_matches_dense_forward(baseline: bool) -> None:
    """Tiny chunks (rows through the per-location stages, key rows per attention step) exercise every
    chunk boundary: still the dense forward, codes and gradients included."""
    policy = ExecutionPolicy(row_chunk=3, attention_chunk_rows=5)  # one sequence of T = 4 tokens per step
    config = TransformerConfig((4, 4), 2, d_model=8, n_heads=2, n_blocks=2, n_down=8)
    model = random_model(config, None if baseline else VQConfig(heads=2, codes=3), seed=9, fit=not baseline)
    s = local_energy_batch(model, Heisenberg(Lattice((4, 4))), 5, 0, "model")
    with torch.no_grad():
        result = dedup_log_prob(model, s, record_codes=True, policy=policy)
        assert_same_log_prob(result.log_prob, model.log_prob(s))
        for engine_codes, codes in zip(result.codes, dense_codes(model, s), strict=True):
            assert torch.equal(engine_codes, codes)
    model.log_prob(s).sum().backward()
    dense_grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    dedup_log_prob(model, s, policy=policy).log_prob.sum().backward()
    for p, g in zip(model.parameters(), dense_grads, strict=True):
        assert (p.grad is None) == (g is None)
        if g is not None:
            torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12)


def test_engine_restores_the_callers_threads() -> None:
    """The engine runs its small ops single-threaded and the big matmul stages on the caller's threads, and
    leaves the caller's setting as it found it (also when the forward raises half-way)."""
    config = TransformerConfig((4, 4), 2, d_model=8, n_heads=2, n_blocks=1, n_down=8)
    model = random_model(config, VQConfig(heads=1, codes=2), seed=1)
    s = local_energy_batch(model, Heisenberg(Lattice((4, 4))), 4, 0, "model")
    policy = ExecutionPolicy(parallel_min_rows=1)  # every matmul stage counts as big here
    seen: dict[str, list[int]] = {"qkv_proj": [], "quantizer": []}
    fail = []

    def record(name):
        def hook(module, args):
            seen[name].append(torch.get_num_threads())
            if fail and name == "quantizer":
                raise RuntimeError("boom")

        return hook

    model.blocks[0].attn.qkv_proj.register_forward_pre_hook(record("qkv_proj"))
    model.blocks[0].attn.quantizer.register_forward_pre_hook(record("quantizer"))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            dedup_log_prob(model, s, policy=policy)
            assert torch.get_num_threads() == 2
            assert seen["qkv_proj"] == [2] and set(seen["quantizer"]) == {1}
            fail.append(True)
            with pytest.raises(RuntimeError, match="boom"):
                dedup_log_prob(model, s, policy=policy)
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_execution_policy_is_validated() -> None:
    assert ExecutionPolicy() == ExecutionPolicy(row_chunk=16384, attention_chunk_rows=8192)
    for bad in ({"row_chunk": 0}, {"attention_chunk_rows": -1}, {"parallel_min_rows": 0}, {"small_op_threads": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ExecutionPolicy(**bad)
