"""The engines' cost in forward passes per sample: dense is the connected configurations per sample, the
counts come from the FLOP counter and the incremental engine's own work counts."""

import pytest

from tests.profiling.conftest import tiny_baseline, tiny_vq
from vqnqs.profiling.batches import distinct_samples, draw_samples
from vqnqs.profiling.engine_cost import ENGINES, engine_costs


@pytest.mark.parametrize(
    "make", [lambda: tiny_baseline(2), lambda: tiny_vq(2), lambda: tiny_vq(2, attention="position", window=2)]
)
def test_dense_costs_one_forward_a_configuration(make, tfim8) -> None:
    model = make()
    s = distinct_samples(draw_samples(model, 16, 0))
    cost = engine_costs(tfim8, model, s, ENGINES, dense_samples=4, repeats=1)
    assert cost["configs_per_sample"] == 9.0  # the sample and its 8 single flips
    assert cost["forwards_per_sample"]["dense"] == pytest.approx(9.0, rel=1e-12)
    assert cost["rows_per_config"]["dense"] == 4 * 3  # 4 tokens through 2 blocks and the final half-block
    assert cost["rows_per_config"]["dedup"] is None
    assert 0 < cost["rows_per_config"]["incremental"] <= 12
    for engine in ENGINES:
        flops = cost["flops_per_sample"][engine]
        assert flops["total"] == pytest.approx(sum(v for k, v in flops.items() if k != "total"))
        assert cost["seconds_per_sample"][engine] > 0
    assert 0 < cost["forwards_per_sample"]["incremental"] < 9.0  # it reuses the sample's forward
