"""The phase network through the dedup stages and every local-energy engine is its dense forward, reorganised.

Float64, random weights far from zero (so a wrong code or a wrong attention row changes phi by O(1)): the
same code tuples in every encoder quantiser, and |delta log psi| <= 1e-10 (log-amplitude and phase) against
``model.log_psi``, for the baseline and VQ models with one or two encoder blocks.
"""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.dedup.conftest import hamiltonian, local_energy_batch, random_model
from tests.dedup.test_engine import LATTICES
from vqnqs.dedup import dedup_log_prob
from vqnqs.dedup.phase import dedup_phase
from vqnqs.dedup.prefix import sequence_partition
from vqnqs.models import TransformerConfig, VQConfig
from vqnqs.vmc.local_energy import local_energy


@st.composite
def phase_cases(draw):
    shape, patch = draw(st.sampled_from(LATTICES))
    n_sites = shape[0] * (shape[1] if len(shape) == 2 else 1)
    d_model = draw(st.sampled_from([8, 16]))
    config = TransformerConfig(
        shape,
        patch,
        d_model=d_model,
        n_heads=draw(st.sampled_from([1, 2])),
        n_blocks=draw(st.integers(0, 1)),
        d_ff=2 * d_model,
        n_down=n_sites // 2 if draw(st.booleans()) else None,
        phase_blocks=draw(st.integers(1, 2)),
    )
    vq = draw(st.sampled_from([None, VQConfig(heads=1, codes=3), VQConfig(heads=2, codes=8)]))
    if vq is not None and config.n_heads % vq.heads:
        vq = VQConfig(heads=config.n_heads, codes=vq.codes)
    return (
        config,
        vq,
        draw(st.sampled_from(["heisenberg", "tfim"])),
        draw(st.integers(1, 5)),
        draw(st.integers(0, 2**31)),
    )


def phase_code_tuples(model, run) -> list[set[tuple[int, ...]]]:
    """The distinct code tuples each encoder quantiser assigned while ``run()`` ran (forward hooks)."""
    seen: list[set] = [set() for _ in model.phase.blocks]
    handles = []
    for index, block in enumerate(model.phase.blocks):
        quantizer = block.attn.quantizer

        def record(module, args, output, index=index):
            codes = module.encode(args[0]) if output.is_floating_point() else output
            seen[index].update(map(tuple, codes.reshape(-1, codes.shape[-1]).tolist()))

        handles.append(quantizer.register_forward_hook(record))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return seen


@settings(max_examples=25, deadline=None)
@given(case=phase_cases())
def test_phase_through_every_engine_matches_the_dense_forward(case) -> None:
    config, vq, system, n_samples, seed = case
    model = random_model(config, vq, seed, fit=vq is not None)
    ham = hamiltonian(system, config.lattice_shape)
    s = local_energy_batch(model, ham, n_samples, seed, "model")  # samples and their connected configurations
    with torch.no_grad():
        dense = model.log_psi(s)
        result = dedup_log_prob(model, s)
        for engine in (result.log_psi, dedup_log_prob(model, s, prefix_reuse=False).log_psi):
            assert engine.is_complex() and engine.dtype == torch.complex128
            finite = torch.isfinite(dense.real)
            assert torch.equal(torch.isfinite(engine.real), finite)
            assert (engine[finite] - dense[finite]).abs().max() <= 1e-10
        if vq is None and torch.unique(s, dim=0).shape[0] > 1:  # (a batch may repeat one configuration)
            assert dense.imag.std() > 1e-3  # phases differ between configurations: a real check
        if vq is not None:
            assert phase_code_tuples(model, lambda: model.phase(s)) == phase_code_tuples(
                model, lambda: dedup_phase(model.phase, s)
            )
        samples = model.sample(max(n_samples, 2), generator=torch.Generator().manual_seed(seed))
        energies = {e: local_energy(ham, model, samples, engine=e) for e in ("dense", "dedup", "incremental")}
    assert energies["dense"].is_complex()
    for engine in ("dedup", "incremental"):
        assert (energies[engine] - energies["dense"]).abs().max() <= 1e-10 * max(1.0, energies["dense"].abs().max())


def test_sequence_partition_has_one_attention_row_per_location_of_each_distinct_sequence() -> None:
    ids = torch.tensor([[0, 1, 2], [3, 1, 2], [0, 1, 2], [0, 1, 4]])
    partition = sequence_partition(ids)
    assert partition.n_rows == 3 * 3  # three distinct sequences
    assert torch.equal(partition.rows[0], partition.rows[2])  # the repeated sequence shares its rows
    assert len(set(partition.rows.reshape(-1).tolist())) == 9
    # Each row's representative location holds the same id as every location of that row.
    flat = ids.reshape(-1)
    assert torch.equal(flat[partition.row_location][partition.rows], ids)


def test_the_encoder_is_bidirectional() -> None:
    """phi depends on every token: changing the LAST token changes it (a causal network's first position would
    not see that change; here every position does)."""
    config = TransformerConfig((8,), 2, d_model=8, n_heads=2, n_blocks=1, phase_blocks=1)
    model = random_model(config, None, seed=1)
    s = torch.zeros(2, 8, dtype=torch.long)
    s[1, -1] = 1
    with torch.no_grad():
        x = model.phase.embed(model.phase.patching.to_tokens(s))
        out, _ = model.phase.blocks[0](x)
    assert (out[0, 0] - out[1, 0]).abs().max() > 1e-6  # position 0 saw the change at the last token
