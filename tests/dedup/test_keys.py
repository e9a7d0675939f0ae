"""Integer keys -> dense ids (``vqnqs.dedup.keys``): bijections on the distinct pairs and code tuples."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vqnqs.dedup import pair_ids, tuple_ids


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
