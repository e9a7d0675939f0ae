"""FLOP counts pinned to hand-derived formulas; attribution, savings and the power-law fit.

Formulas (``FlopCounterMode``: ``2*M*K*N`` per matrix product), for K configurations of T tokens,
width d, feed-forward width f, vocabulary V, Q codes (any number of heads), one full block + the
attention-only half-block:

    per location   block0: qkv 6d^2, quantiser distances 2Qd, W_O 2d^2, ff 4df;  final: qkv 6d^2, W_O 2d^2;
                   head 2dV
    per sequence   attention 2*T*T*d (q.k) + 2*T*T*d (weights.v) in each of the 2 blocks

The dedup path runs block0's qkv on the U_embed distinct (position, token) rows, block0's W_O on the
distinct code tuples, block0's ff and the final block's qkv on the U_block0 distinct keyed rows. Attention
runs once per distinct prefix of a block's input ids (R_block0, R_final attention rows), each row's query
against the T keys of its representative sequence: 2*T*d (q.k) + 2*T*d (weights.v) per row. The distances
run on block0's R_block0 rows; the final W_O and the head on the R_final rows (U_final = R_final).
"""

import math

import pytest
import torch

from tests.profiling.conftest import tiny_baseline, tiny_vq
from vqnqs.dedup import dedup_log_prob
from vqnqs.physics.hamiltonian import Heisenberg
from vqnqs.physics.lattice import Lattice
from vqnqs.profiling import fit_power_law
from vqnqs.profiling.batches import connected_configs
from vqnqs.profiling.flop_profile import profile_flops
from vqnqs.profiling.flops import COMPONENT_OF_GROUP, COMPONENTS, UNATTRIBUTED, count_flops, local_energy_flops
from vqnqs.profiling.quantized import quantized_cells

MATMUL_COMPONENTS = {"qkv_proj", "attention", "quantizer_distances", "out_proj", "feed_forward", "head"}


def by_component(cells: dict) -> dict[str, int]:
    out = dict.fromkeys(COMPONENTS, 0)
    for (_, group), flops in cells.items():
        out[COMPONENT_OF_GROUP[group]] += flops
    return out


def test_matmul_flops_of_a_one_block_vq_model_match_the_formula(tfim8):
    model = tiny_vq(n_blocks=1, heads=2, codes=4, seed=0)
    d, f, q, vocab, t = 8, 12, 4, 4, 4
    s = model.sample(6, generator=torch.Generator().manual_seed(1))
    configs = connected_configs(tfim8, s)
    k = configs.shape[0]
    assert k == 6 * 9  # TFIM: the sample and its 8 single flips, all valid at Gamma != 0
    stats = {stat.layer: stat for stat in dedup_log_prob(model, configs).stats}
    u_embed, u_block0, tuples = stats["embed"].unique_rows, stats["block0"].unique_rows, stats["block0"].code_tuples
    r_block0, r_final = stats["block0"].attention_rows, stats["final"].attention_rows
    kt = k * t
    assert 1 < u_embed < u_block0 < kt and 1 < tuples <= q * q  # a non-trivial test: reuse, but not total
    # Attention rows: the distinct prefixes of the input tokens (block0), then of block0's ids (final).
    inputs = model.shift_right(model.patching.to_tokens(configs))
    assert r_block0 == len({(i, tuple(row[: i + 1])) for row in inputs.tolist() for i in range(t)})
    assert u_block0 <= r_final <= r_block0 < kt and stats["final"].unique_rows == r_final

    dense = by_component(local_energy_flops(tfim8, model, s, "dense", elementwise=False))
    assert dense == {
        **dict.fromkeys(COMPONENTS, 0),
        "qkv_proj": 2 * 6 * d * d * kt,
        "attention": 2 * 4 * t * t * d * k,
        "quantizer_distances": 2 * q * d * kt,
        "out_proj": 2 * 2 * d * d * kt,
        "feed_forward": 4 * d * f * kt,
        "head": 2 * d * vocab * kt,
    }
    dedup = by_component(local_energy_flops(tfim8, model, s, "dedup", elementwise=False))
    assert dedup == {
        **dict.fromkeys(COMPONENTS, 0),
        "qkv_proj": 6 * d * d * (u_embed + u_block0),
        "attention": 4 * t * d * (r_block0 + r_final),
        "quantizer_distances": 2 * q * d * r_block0,
        "out_proj": 2 * d * d * (tuples + r_final),
        "feed_forward": 4 * d * f * u_block0,
        "head": 2 * d * vocab * r_final,
    }


def test_elementwise_costs_layer_norm_and_embedding(tfim8):
    model = tiny_vq(n_blocks=1, seed=3)
    s = model.sample(4, generator=torch.Generator().manual_seed(2))
    configs = connected_configs(tfim8, s)
    kt, d = configs.shape[0] * 4, 8
    u_embed = dedup_log_prob(model, configs).stats[0].unique_rows
    dense = local_energy_flops(tfim8, model, s, "dense")
    dedup = local_energy_flops(tfim8, model, s, "dedup")
    assert dense[("block0", "ln_attn")] == 7 * kt * d  # LayerNorm: 7 per element
    assert dedup[("block0", "ln_attn")] == 7 * u_embed * d
    assert dense[("embed", "embedding")] == kt * d  # token + position: one add per element
    assert dedup[("embed", "embedding")] == u_embed * d
    assert dense[("output", "output")] == dedup[("output", "output")] == 4 * kt * 4  # log_softmax over V = 4
    # The matmul part is unchanged by adding the elementwise ops.
    matmul = local_energy_flops(tfim8, model, s, "dedup", elementwise=False)
    assert matmul[("block0", "qkv_proj")] == dedup[("block0", "qkv_proj")]


def test_attention_and_quantizer_distances_are_counted_on_cpu(tfim8):
    model = tiny_vq(n_blocks=2, seed=4)
    assert model.device.type == "cpu"
    s = model.sample(3, generator=torch.Generator().manual_seed(0))
    for engine in ("dense", "dedup"):
        cells = local_energy_flops(tfim8, model, s, engine, elementwise=False)
        for layer in ("block0", "block1", "final"):
            assert cells.get((layer, "attention"), 0) > 0, (engine, layer)
        for layer in ("block0", "block1"):
            assert cells.get((layer, "quantizer"), 0) > 0, (engine, layer)
        assert ("final", "quantizer") not in cells  # the half-block has no quantiser


def test_baseline_through_the_engine_saves_the_embedding_keys_and_the_shared_prefixes(tfim8):
    """No quantiser: the embedding-keyed first projection runs on the distinct (position, token) rows, and
    every other per-location op and the attention once per distinct prefix of the input tokens (one state
    per prefix: the same rows in every block), so each such cell scales by exactly that prefix fraction."""
    model = tiny_baseline(n_blocks=2, seed=5)
    profile = profile_flops(tfim8, model, batch=8, n_batches=2, seed=0)
    reduced = {("embed", "embedding"), ("block0", "ln_attn"), ("block0", "qkv_proj")}
    per_sequence = {("output", "output"), ("local_energy", "local_energy")}  # Sz-masked softmax, ratios
    fractions = profile.unique_fraction()
    prefix_fraction = fractions["final"]
    assert fractions["embed"] < 1 and all(fractions[name] == prefix_fraction for name in ("block0", "block1"))
    assert prefix_fraction < 0.7
    assert set(profile.dense) == set(profile.dedup)
    for cell, dense in profile.dense.items():
        if cell in reduced:
            assert profile.dedup[cell] < dense, cell
        elif cell in per_sequence:
            assert profile.dedup[cell] == pytest.approx(dense, rel=1e-12), cell
        else:
            assert profile.dedup[cell] == pytest.approx(dense * prefix_fraction, rel=1e-12), cell
    assert profile.total_savings > 1.3
    assert quantized_cells(model) == reduced


def test_without_prefix_reuse_only_the_keyed_per_location_ops_shrink(tfim8):
    """The paper's engine: attention once per location costs exactly the dense attention; for the
    baseline only the embedding-keyed cells shrink, for a VQ model every quantised cell may."""
    for model in (tiny_baseline(n_blocks=2, seed=5), tiny_vq(n_blocks=2, seed=7)):
        profile = profile_flops(tfim8, model, batch=8, n_batches=2, seed=0)
        no_prefix = profile.dedup_no_prefix
        assert set(no_prefix) == set(profile.dense)
        for cell, dense in profile.dense.items():
            if cell in quantized_cells(model):
                assert no_prefix[cell] <= dense, cell
            elif cell[1] != "quantizer":  # distances: the codebook norms are counted once per call
                assert no_prefix[cell] == pytest.approx(dense, rel=1e-12), cell
        attention = profile.by_component_all_paths()["attention"]
        assert attention["dedup_no_prefix"] == pytest.approx(attention["dense"], rel=1e-12)
        assert attention["dedup"] < attention["dense"]
        assert 1 < profile.total_savings_no_prefix < profile.total_savings
        by_path = profile.by_component_all_paths()
        for path in ("dense", "dedup", "dedup_no_prefix", "incremental"):  # every path counted, component by component
            total = sum(paths[path] for paths in by_path.values())
            assert total == pytest.approx(sum(getattr(profile, path).values()), rel=1e-12) and total > 0


def test_a_single_code_makes_every_quantised_row_a_function_of_position_and_token(tfim8):
    model = tiny_vq(n_blocks=2, heads=1, codes=1, seed=6)
    profile = profile_flops(tfim8, model, batch=16, n_batches=1, seed=1)
    fractions = profile.unique_fraction()
    assert fractions["block0"] == fractions["block1"] == fractions["embed"] < 0.05
    assert profile.code_tuples == {"block0": 1, "block1": 1}
    assert profile.quantized_ops_savings == pytest.approx(1 / fractions["embed"], rel=0.2)
    assert profile.quantized_ops_savings > 20
    assert profile.total_savings > 2
    # One code: every block's ids are functions of (position, token), so every block attends once per
    # distinct prefix of the input tokens, and the final half-block leaves one state per such prefix.
    by_component = profile.by_component()
    prefix_fraction = fractions["final"]
    assert fractions["embed"] < prefix_fraction < 1
    assert by_component["attention"][1] == pytest.approx(by_component["attention"][0] * prefix_fraction, rel=1e-12)
    assert by_component["head"][1] == pytest.approx(by_component["head"][0] * prefix_fraction, rel=1e-12)


def test_vq_savings_are_the_flop_ratios(tfim8):
    model = tiny_vq(n_blocks=2, seed=7)
    profile = profile_flops(tfim8, model, batch=8, n_batches=2)
    dense = sum(profile.dense.values())
    dedup = sum(profile.dedup.values())
    assert profile.total_savings == pytest.approx(dense / dedup)
    quantized = quantized_cells(model)
    assert ("block1", "feed_forward") in quantized and ("final", "qkv_proj") in quantized
    assert ("final", "out_proj") not in quantized and ("block0", "attention") not in quantized
    q_dense = sum(v for c, v in profile.dense.items() if c in quantized)
    q_dedup = sum(v for c, v in profile.dedup.items() if c in quantized)
    assert profile.quantized_ops_savings == pytest.approx(q_dense / q_dedup)
    assert profile.quantized_ops_savings > profile.total_savings > 1
    components = profile.by_component()
    assert list(components) == list(COMPONENTS)
    assert sum(v[0] for v in components.values()) == pytest.approx(dense)
    assert profile.n_configs == 2 * 8 * 9 and profile.configs_per_sample == 9


def test_engine_flops_scale_with_its_unique_rows():
    """The engine runs the model's own components: each per-location cell is the dense one scaled by the
    rows it ran on, (rows in the engine) / (K*T) exactly."""
    from tests.dedup.conftest import local_energy_batch, random_model
    from vqnqs.models import TransformerConfig, VQConfig

    config = TransformerConfig((4, 4), 2, d_model=16, n_heads=2, n_blocks=2, n_down=8)
    model = random_model(config, VQConfig(heads=2, codes=3), seed=4, fit=True)
    s = local_energy_batch(model, Heisenberg(Lattice((4, 4))), 16, 0, "model")
    with torch.no_grad():
        dense = count_flops(model, lambda: model.log_prob(s), elementwise=False)
        dedup = count_flops(model, lambda: dedup_log_prob(model, s), elementwise=False)
        result = dedup_log_prob(model, s)
    _, block0, block1, _ = result.stats
    locations = block0.locations
    for layer, rows in (("block0", block0.unique_rows), ("block1", block1.unique_rows)):
        assert dedup[(layer, "feed_forward")] * locations == dense[(layer, "feed_forward")] * rows
    assert dedup[("block1", "qkv_proj")] * locations == dense[("block1", "qkv_proj")] * block0.unique_rows
    assert dedup[("block0", "out_proj")] * locations == dense[("block0", "out_proj")] * block0.code_tuples
    # The distances are counted in the quantiser in both paths, on the distinct prefixes in the engine.
    assert dense[("block0", "quantizer")] > 0
    assert dedup[("block0", "quantizer")] * locations == dense[("block0", "quantizer")] * block0.attention_rows
    final = result.stats[-1]  # the final half-block leaves one state per distinct prefix
    assert dedup[("output", "head")] * locations == dense[("output", "head")] * final.unique_rows
    assert final.unique_rows == final.attention_rows < locations
    assert sum(dedup.values()) < sum(dense.values()) / 2


@pytest.mark.parametrize("engine", ["dense", "dedup", "dedup_no_prefix", "incremental"])
@pytest.mark.parametrize("kind", ["baseline", "vq", "vq-sz"])
def test_every_flop_lands_in_a_component(tfim8, engine, kind):
    """Every op of the network runs in a component (or in the output softmax / local-energy arithmetic)."""
    heis8 = Heisenberg(Lattice((8,)))
    model, ham = {
        "baseline": lambda: (tiny_baseline(n_blocks=2, seed=5), tfim8),
        "vq": lambda: (tiny_vq(n_blocks=2, seed=7), tfim8),
        "vq-sz": lambda: (tiny_vq(n_blocks=2, seed=8, n_down=4), heis8),
    }[kind]()
    s = model.sample(4, generator=torch.Generator().manual_seed(0))
    cells = local_energy_flops(ham, model, s, engine)
    assert UNATTRIBUTED not in cells and all(group != "other" for _, group in cells)
    layers = {"embed", "block0", "block1", "final", "output", "local_energy"}
    assert {layer for layer, _ in cells} == layers
    groups = {"ln_attn", "qkv_proj", "attention", "out_proj", "residual", "ln_ff", "feed_forward"}
    groups |= set() if kind == "baseline" else {"quantizer"}
    assert {group for layer, group in cells if layer == "block1"} == groups


@pytest.mark.parametrize(
    ("component", "cell"),
    [
        (lambda m: m.blocks[0].attn.mixing, ("block0", "attention")),
        (lambda m: m.blocks[0].attn.engine_mixing, ("block0", "attention")),
        (lambda m: m.blocks[0].residual, ("block0", "residual")),
        (lambda m: m.blocks[1].attn.quantizer, ("block1", "quantizer")),
        (lambda m: m.final_block.attn.out_proj, ("final", "out_proj")),
        (lambda m: m.blocks[1].ff, ("block1", "feed_forward")),
        (lambda m: m.blocks[1].ln_ff, ("block1", "ln_ff")),
        (lambda m: m.head, ("output", "head")),
        (lambda m: m.embed_sum, ("embed", "embedding")),
    ],
)
def test_roles_of_the_components(component, cell):
    model = tiny_vq(n_blocks=2, seed=1)
    roles = dict(model.components())
    assert roles[component(model)] == cell
    assert len(roles) == 3 + 2 * 9 + 7 + 2  # embed, two full blocks, the half-block, output
    assert set(roles.values()) <= {
        (layer, group) for layer in ("embed", "block0", "block1", "final", "output") for group in COMPONENT_OF_GROUP
    }


def test_attribution_goes_by_module_identity_not_by_name(tfim8):
    """A component registered under a second name keeps its role; an op in no component is counted as
    ``other``, never silently in a neighbouring cell (as a block's own ops would be by their path)."""
    model = tiny_vq(n_blocks=1, seed=2)
    s = model.sample(3, generator=torch.Generator().manual_seed(0))
    reference = local_energy_flops(tfim8, model, s, "dense")
    model.blocks[0].attn.w_o = model.blocks[0].attn.out_proj  # the same module under another name too
    assert local_energy_flops(tfim8, model, s, "dense") == reference
    model.blocks[0].register_forward_hook(lambda module, args, output: (output[0] * 1.0, output[1]))
    cells = local_energy_flops(tfim8, model, s, "dense")
    k_t_d = connected_configs(tfim8, s).shape[0] * 4 * 8
    assert cells.pop(UNATTRIBUTED) == k_t_d  # the hook's multiplication: one FLOP per element
    assert cells == reference


def test_fit_power_law_recovers_exact_data():
    n = [16, 24, 32, 48, 64, 384]
    exponent, prefactor = fit_power_law(n, [3.5 * x**1.7 for x in n])
    assert exponent == pytest.approx(1.7, rel=1e-12)
    assert prefactor == pytest.approx(3.5, rel=1e-10)
    exponent, prefactor = fit_power_law([10, 100], [2e3, 2e4])
    assert (exponent, prefactor) == (pytest.approx(1.0), pytest.approx(200.0))
    assert math.isclose(fit_power_law([2, 4, 8], [5, 5, 5])[0], 0.0, abs_tol=1e-12)


@pytest.mark.parametrize(("n", "y"), [([1, 2], [1, -1]), ([3], [1]), ([2, 2], [1, 3]), ([1, 2], [1, 2, 3])])
def test_fit_power_law_rejects_bad_data(n, y):
    with pytest.raises(ValueError, match="fit_power_law"):
        fit_power_law(n, y)


def test_dense_samples_give_the_same_dense_flops_per_sample(tfim8):
    heis8 = Heisenberg(Lattice((8,)))
    model = tiny_vq(n_blocks=1, seed=8)
    full = profile_flops(tfim8, model, batch=12, n_batches=1, seed=3, elementwise=False)
    part = profile_flops(tfim8, model, batch=12, n_batches=1, seed=3, elementwise=False, dense_samples=2)
    assert part.dense == full.dense  # every TFIM sample has N + 1 connections
    assert part.dedup == full.dedup and part.n_configs == full.n_configs
    # Heisenberg: samples differ in their number of valid connections; the dense cost per configuration does not.
    model = tiny_vq(n_blocks=1, seed=8, n_down=4)
    full = profile_flops(heis8, model, batch=12, n_batches=1, seed=3, elementwise=False)
    part = profile_flops(heis8, model, batch=12, n_batches=1, seed=3, elementwise=False, dense_samples=3)
    assert part.dense == pytest.approx(full.dense, rel=1e-12) and part.dedup == full.dedup
    # Elementwise: only the per-call codebook norms ||W||^2 (H*Q*e products) do not scale with the samples.
    model = tiny_vq(n_blocks=1, seed=8)
    full = profile_flops(tfim8, model, batch=12, n_batches=1, seed=3)
    part = profile_flops(tfim8, model, batch=12, n_batches=1, seed=3, dense_samples=2)
    assert part.flops_dense_per_sample == pytest.approx(full.flops_dense_per_sample, rel=1e-3)


def test_untrained_vq_model_has_data_initialised_codebooks(tfim8):
    from vqnqs.models import VQConfig, make_vq_model
    from vqnqs.profiling.untrained import paper_config, untrained_vq_model

    kwargs = {"bits": 4, "codes": 4, "d_model": 8, "n_heads": 2, "n_blocks": 2, "patch": 2, "init_samples": 16}
    model = untrained_vq_model(tfim8, seed=5, **kwargs)
    again = untrained_vq_model(tfim8, seed=5, **kwargs)
    assert not model.training and all(bool(q.initialized) for q in model.quantizers)
    assert [q.heads for q in model.quantizers] == [2, 2] and model.config.patch == 2
    torch.manual_seed(5)  # the same construction without the data-initialising forward
    raw = make_vq_model(paper_config(tfim8, 8, 2, 2, patch=2), VQConfig.from_bits(4, 4))
    for q, r, before in zip(model.quantizers, again.quantizers, raw.quantizers, strict=True):
        assert torch.equal(q.codebook, r.codebook)  # deterministic for a seed
        assert not torch.equal(q.codebook, before.codebook)  # fitted to data, not the random normal init


def test_repeated_samples_are_counted_once_on_both_paths(tfim8):
    """A local energy needs each distinct configuration once: repeats in a batch buy no savings."""
    from vqnqs.profiling.batches import draw_samples

    model = tiny_vq(n_blocks=1, seed=3)
    s = draw_samples(model, 8, 0)
    once = profile_flops(tfim8, model, batches=[s])
    repeated = profile_flops(tfim8, model, batches=[torch.cat([s, s.flip(0), s])])
    assert (repeated.drawn, repeated.batch) == (3 * s.shape[0], once.batch)
    assert repeated.total_savings == pytest.approx(once.total_savings, rel=1e-12)
    for cell, flops in once.dense.items():
        assert repeated.dense[cell] == pytest.approx(flops, rel=1e-12), cell
