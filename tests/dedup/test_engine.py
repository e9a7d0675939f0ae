"""The dedup engine is the dense forward of the SAME model, reorganised: same codes, same log P.

Every check compares against the dense forward (``model.log_prob``) in float64; the savings checks
compare unique-row counts against numbers that hold by construction.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vqnqs.dedup import dedup_log_prob, dedup_log_psi, dense_codes, pair_ids, prefix_partition, tuple_ids
from vqnqs.models import AutoregressiveTransformer, TransformerConfig, VQConfig, codebook_upkeep, make_vq_model
from vqnqs.physics.hamiltonian import Heisenberg, TransverseFieldIsing
from vqnqs.physics.lattice import Lattice
from vqnqs.vmc.local_energy import local_energy

# (lattice shape, patch): 1D and 2D, one spin per token and several.
LATTICES = [((8,), 1), ((8,), 2), ((6,), 3), ((2, 4), 1), ((2, 4), 2), ((4, 4), 2), ((4, 4), 1)]


def random_model(config: TransformerConfig, vq: VQConfig | None, seed: int, std: float = 0.5, fit: bool = False):
    """float64, eval, large random weights; a random normal codebook, or with ``fit`` one data-initialised
    (k-means++ on the attention outputs of random configurations: the first codebook upkeep)."""
    model = AutoregressiveTransformer(config) if vq is None else make_vq_model(config, vq)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 1.0 if name.endswith("codebook") else std
            p.copy_(torch.randn(p.shape, generator=generator) * scale)
    model.double()
    if vq is not None:
        for q in model.quantizers:
            q.initialized.fill_(not fit)
        if fit:
            torch.manual_seed(seed)
            codebook_upkeep(model, torch.randint(0, 2, (64, config.n_sites), generator=generator))
            assert all(bool(q.initialized) for q in model.quantizers)
    return model.eval()


def hamiltonian(system: str, shape: tuple[int, ...]):
    lattice = Lattice(shape) if not isinstance(shape, Lattice) else shape
    return Heisenberg(lattice) if system == "heisenberg" else TransverseFieldIsing(lattice, gamma=0.7)


def local_energy_batch(model, ham, n_samples: int, seed: int, source: str) -> torch.Tensor:
    """Samples and all their valid connected configurations, flattened: ``(K, N)``."""
    generator = torch.Generator().manual_seed(seed)
    n_sites, n_down = model.n_sites, model.config.n_down
    if source == "model":
        s = model.sample(n_samples, generator=generator)
    elif n_down is None:
        s = torch.randint(0, 2, (n_samples, n_sites), generator=generator)
    else:  # uniform in the Sz sector
        order = torch.rand(n_samples, n_sites, generator=generator).argsort(dim=1)
        s = (order < n_down).long()
    conn = ham.connected(s)
    return conn.configs[conn.valid]  # (K, N)


def brute_force_prefixes(ids: torch.Tensor) -> dict[tuple, set[int]]:
    """``{(position, ids[k, 0..i]): {k, ...}}`` over all locations of ``ids (K, T)``: the distinct prefixes."""
    prefixes: dict[tuple, set[int]] = {}
    for k, row in enumerate(ids.tolist()):
        for i in range(len(row)):
            prefixes.setdefault((i, tuple(row[: i + 1])), set()).add(k)
    return prefixes


def assert_same_log_prob(engine: torch.Tensor, dense: torch.Tensor) -> None:
    """Equal -inf pattern (Sz mask) and |delta log P| <= 1e-10 elsewhere."""
    assert torch.equal(torch.isinf(engine), torch.isinf(dense))
    finite = torch.isfinite(dense)
    assert torch.isfinite(engine[finite]).all()
    assert (engine[finite] - dense[finite]).abs().max().item() <= 1e-10 if finite.any() else True


@st.composite
def vq_cases(draw):
    shape, patch = draw(st.sampled_from(LATTICES))
    n_sites = 1
    for size in shape:
        n_sites *= size
    d_model = draw(st.sampled_from([8, 16]))
    config = TransformerConfig(
        shape,
        patch,
        d_model=d_model,
        n_heads=draw(st.sampled_from([1, 2])),
        n_blocks=draw(st.integers(1, 2)),
        d_ff=2 * d_model,
        n_down=n_sites // 2 if draw(st.booleans()) else None,
    )
    vq = VQConfig(heads=draw(st.sampled_from([1, 2, 4])), codes=draw(st.integers(2, 16)))
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
    assert len(result.codes) == len(reference_codes) == config.n_blocks
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
    assert final.layer == "final" and final.unique_rows == final.attention_rows


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


# --- integer keys ----------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(0, 60),
    n_a=st.integers(1, 5),
    n_b=st.integers(1, 5),
    huge=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_pair_ids_are_a_bijection_on_distinct_pairs(n: int, n_a: int, n_b: int, huge: bool, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randint(0, n_a, (n,), generator=generator)
    b = torch.randint(0, n_b, (n,), generator=generator)
    if huge:  # radices whose product exceeds 2^62: the unique(dim=0) fallback, values near the top
        a, b, n_a, n_b = a + 2**31, b * 2**38, 2**32, 2**40
    ids, a_u, b_u = pair_ids(a, n_a, b, n_b)
    pairs = sorted(set(zip(a.tolist(), b.tolist(), strict=True)))
    assert list(zip(a_u.tolist(), b_u.tolist(), strict=True)) == pairs
    assert torch.equal(a_u[ids], a) and torch.equal(b_u[ids], b)


@settings(max_examples=30, deadline=None)
@given(
    heads=st.integers(1, 8),
    codes=st.sampled_from([1, 2, 5, 64, 2**20]),
    n=st.integers(0, 50),
    seed=st.integers(0, 2**31 - 1),
)
def test_tuple_ids_round_trip(heads: int, codes: int, n: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    c = torch.randint(0, min(codes, 3), (n, 2, heads), generator=generator) * (codes // 3 if codes > 3 else 1)
    ids, unique = tuple_ids(c, codes)
    assert ids.shape == (n, 2)
    assert torch.equal(unique[ids], c)
    assert unique.shape[0] == len({tuple(row) for row in c.reshape(-1, heads).tolist()})


def test_flop_counter_sees_the_model_components() -> None:
    """Under FlopCounterMode the engine's per-location FLOPs carry the dense forward's component names and
    scale with the unique rows: (rows through ff in the engine) / (K*T) exactly."""
    from torch.utils.flop_counter import FlopCounterMode

    def by_component(counter: FlopCounterMode) -> dict[str, int]:
        # "VQTransformer.blocks.0.ff" / "DedupEngine.blocks.0.ff" -> "blocks.0.ff"
        return {k.split(".", 1)[1]: sum(v.values()) for k, v in counter.get_flop_counts().items() if "." in k}

    config = TransformerConfig((4, 4), 2, d_model=16, n_heads=2, n_blocks=2, n_down=8)
    model = random_model(config, VQConfig(heads=2, codes=3), seed=4, fit=True)
    s = local_energy_batch(model, Heisenberg(Lattice((4, 4))), 16, 0, "model")
    with torch.no_grad():
        with FlopCounterMode(display=False) as dense_counter:
            model.log_prob(s)
        with FlopCounterMode(display=False) as dedup_counter:
            result = dedup_log_prob(model, s)
    dense, dedup = by_component(dense_counter), by_component(dedup_counter)
    _, block0, block1, _ = result.stats
    locations = block0.locations
    for name, rows in (("blocks.0.ff", block0.unique_rows), ("blocks.1.ff", block1.unique_rows)):
        assert dedup[name] * locations == dense[name] * rows
    assert dedup["blocks.1.attn.qkv_proj"] * locations == dense["blocks.1.attn.qkv_proj"] * block0.unique_rows
    assert dedup["blocks.0.attn.out_proj"] * locations == dense["blocks.0.attn.out_proj"] * block0.code_tuples
    # The distances are counted in the quantiser in both paths, on the distinct prefixes in the engine.
    assert dense["blocks.0.attn.quantizer"] > 0
    assert dedup["blocks.0.attn.quantizer"] * locations == dense["blocks.0.attn.quantizer"] * block0.attention_rows
    final = result.stats[-1]  # the final half-block leaves one state per distinct prefix
    assert dedup["head"] * locations == dense["head"] * final.unique_rows
    assert final.unique_rows == final.attention_rows < locations
    assert dedup_counter.get_total_flops() < dense_counter.get_total_flops() / 2


# --- prefix keys ------------------------------------------------------------------------------------


def assert_prefix_ids_consistent(ids: torch.Tensor) -> None:
    """Brute force: equal prefix ids <=> same position and equal ids up to it; rows dense in [0, R);
    each group's rows laid out sequence-major from its start position."""
    partition = prefix_partition(ids)
    n_seq, n_tokens = ids.shape
    prefixes = brute_force_prefixes(ids)
    seen: dict[int, tuple] = {}
    for (i, prefix), sequences in prefixes.items():
        values = {int(partition.rows[k, i]) for k in sequences}
        assert len(values) == 1, (i, prefix)  # equal prefixes -> equal ids
        (value,) = values
        assert value not in seen, (seen.get(value), (i, prefix))  # different prefixes -> different ids
        seen[value] = (i, prefix)
    assert sorted(seen) == list(range(partition.n_rows))
    assert sum(partition.per_position) == partition.n_rows
    assert partition.per_position == tuple(sum(1 for i, _ in prefixes if i == t) for t in range(n_tokens))
    # Each row's representative location holds that prefix; groups cover the rows in order.
    assert torch.equal(partition.rows.reshape(-1)[partition.row_location], torch.arange(partition.n_rows))
    row = 0
    for group in partition.groups:
        n, t_q = group.sequences.shape[0], n_tokens - group.start
        assert group.first_row == row and n > 0
        expected = row + torch.arange(n * t_q).reshape(n, t_q)
        assert torch.equal(partition.rows[group.sequences][:, group.start :], expected)
        row += n * t_q
    assert row == partition.n_rows


@settings(max_examples=60, deadline=None)
@given(
    n_seq=st.integers(0, 40),
    n_tokens=st.integers(1, 6),
    n_values=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_prefix_ids_are_consistent(n_seq: int, n_tokens: int, n_values: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, n_values, (n_seq, n_tokens), generator=generator)
    if n_seq > 2:  # repeated rows and shared prefixes, as in a local-energy batch
        ids[n_seq // 2 :, : n_tokens // 2] = ids[0, : n_tokens // 2]
        ids[-1] = ids[1]
    assert_prefix_ids_consistent(ids * 1000 + 7)  # ids need not be dense


def test_prefix_ids_of_a_local_energy_batch() -> None:
    """On real inputs: connected configurations share long prefixes with their sample."""
    config = TransformerConfig((4, 4), 2, d_model=8, n_heads=2, n_blocks=1, n_down=8)
    model = random_model(config, None, seed=0)
    s = local_energy_batch(model, Heisenberg(Lattice((4, 4))), 6, 0, "uniform")
    inputs = model.shift_right(model.patching.to_tokens(s))
    assert_prefix_ids_consistent(inputs)
    assert prefix_partition(inputs).n_rows < 0.6 * inputs.numel()


# --- chunking and threads ---------------------------------------------------------------------------


@pytest.mark.parametrize("baseline", [False, True])
def test_chunked_engine_matches_dense_forward(monkeypatch, baseline: bool) -> None:
    """Tiny chunks (rows through the per-location stages, key rows per attention step) exercise every
    chunk boundary: still the dense forward, codes and gradients included."""
    import vqnqs.dedup.engine as engine

    monkeypatch.setattr(engine, "ROW_CHUNK", 3)
    monkeypatch.setattr(engine, "ATTENTION_CHUNK_ROWS", 5)  # one sequence of T = 4 tokens per step
    config = TransformerConfig((4, 4), 2, d_model=8, n_heads=2, n_blocks=2, n_down=8)
    model = random_model(config, None if baseline else VQConfig(heads=2, codes=3), seed=9, fit=not baseline)
    s = local_energy_batch(model, Heisenberg(Lattice((4, 4))), 5, 0, "model")
    with torch.no_grad():
        result = dedup_log_prob(model, s, record_codes=True)
        assert_same_log_prob(result.log_prob, model.log_prob(s))
        for engine_codes, codes in zip(result.codes, dense_codes(model, s), strict=True):
            assert torch.equal(engine_codes, codes)
    model.log_prob(s).sum().backward()
    dense_grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    dedup_log_prob(model, s).log_prob.sum().backward()
    for p, g in zip(model.parameters(), dense_grads, strict=True):
        assert (p.grad is None) == (g is None)
        if g is not None:
            torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12)


def test_engine_restores_the_callers_threads(monkeypatch) -> None:
    """The engine runs its small ops single-threaded and the big matmul stages on the caller's threads, and
    leaves the caller's setting as it found it (also when the forward raises half-way)."""
    import vqnqs.dedup.engine as engine

    config = TransformerConfig((4, 4), 2, d_model=8, n_heads=2, n_blocks=1, n_down=8)
    model = random_model(config, VQConfig(heads=1, codes=2), seed=1)
    s = local_energy_batch(model, Heisenberg(Lattice((4, 4))), 4, 0, "model")
    monkeypatch.setattr(engine, "PARALLEL_MIN_ROWS", 1)  # every matmul stage counts as big here
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
            dedup_log_prob(model, s)
            assert torch.get_num_threads() == 2
            assert seen["qkv_proj"] == [2] and set(seen["quantizer"]) == {1}
            fail.append(True)
            with pytest.raises(RuntimeError, match="boom"):
                dedup_log_prob(model, s)
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
