"""Patch tokenisation: hand-checked values, round trips, validation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vqnqs.models import Patching


def test_hand_checked_2d_tokens() -> None:
    # 4x4 lattice, down spins at sites 1, 4, 6, 15. Blocks (row-major): {0,1,4,5} -> bits 0110 = 6,
    # {2,3,6,7} -> 0010 = 2, {8,9,12,13} -> 0, {10,11,14,15} -> 0001 = 1.
    s = torch.zeros(1, 16, dtype=torch.uint8)
    s[0, [1, 4, 6, 15]] = 1
    patching = Patching((4, 4), 2)
    assert patching.n_tokens == 4 and patching.spins_per_token == 4 and patching.vocab_size == 16
    tokens = patching.to_tokens(s)
    assert tokens.dtype == torch.int64
    assert tokens.tolist() == [[6, 2, 0, 1]]


def test_hand_checked_1d_tokens() -> None:
    s = torch.tensor([[1, 0, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0]])
    patching = Patching((12,), 3)
    assert patching.to_tokens(s).tolist() == [[5, 1, 6, 0]]


def test_popcount_table() -> None:
    patching = Patching((2, 4), 2)
    assert patching.popcount.tolist() == [bin(v).count("1") for v in range(16)]


@pytest.mark.parametrize(("shape", "patch"), [((4, 4), 2), ((12,), 3), ((6, 4), 2), ((2, 6), 2), ((8,), 1)])
def test_round_trip(shape: tuple[int, ...], patch: int) -> None:
    patching = Patching(shape, patch)
    s = torch.randint(0, 2, (50, patching.n_sites), generator=torch.Generator().manual_seed(0))
    tokens = patching.to_tokens(s.to(torch.uint8))
    assert tokens.shape == (50, patching.n_tokens)
    assert int(tokens.min()) >= 0 and int(tokens.max()) < patching.vocab_size
    back = patching.from_tokens(tokens)
    assert back.dtype == torch.int64
    assert torch.equal(back, s)
    assert torch.equal(patching.to_tokens(patching.from_tokens(tokens)), tokens)


@settings(max_examples=30, deadline=None)
@given(
    blocks=st.lists(st.integers(1, 3), min_size=1, max_size=2),
    patch=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_round_trip_property(blocks: list[int], patch: int, seed: int) -> None:
    patching = Patching(tuple(b * patch for b in blocks), patch)
    s = torch.randint(0, 2, (7, patching.n_sites), generator=torch.Generator().manual_seed(seed))
    tokens = patching.to_tokens(s)
    assert torch.equal(patching.from_tokens(tokens), s)
    # Down spins are conserved by tokenisation.
    assert torch.equal(patching.popcount[tokens].sum(-1), s.sum(-1))


@pytest.mark.parametrize(("shape", "patch"), [((5, 4), 2), ((10,), 3), ((4, 6), 4)])
def test_indivisible_lattice_rejected(shape: tuple[int, ...], patch: int) -> None:
    with pytest.raises(ValueError, match="lattice_shape"):
        Patching(shape, patch)


def test_bad_patch_rejected() -> None:
    with pytest.raises(ValueError, match="patch"):
        Patching((4,), 0)
