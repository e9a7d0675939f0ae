"""Prefix ids and attention rows (``vqnqs.dedup.prefix``), checked against brute-force enumeration."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.dedup.conftest import brute_force_prefixes, local_energy_batch, random_model
from vqnqs.dedup import prefix_partition
from vqnqs.models import TransformerConfig
from vqnqs.physics.hamiltonian import Heisenberg
from vqnqs.physics.lattice import Lattice


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
