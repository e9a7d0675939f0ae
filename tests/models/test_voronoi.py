"""A moved row's code from its rivals only is the code ``encode`` gives it: at every move size (inside and
outside the certified radius, across faces), at ties and with duplicate codewords, in float64 and float32."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vqnqs.models import VectorQuantizer, VQConfig


def quantizer_with(codebook: torch.Tensor) -> VectorQuantizer:
    heads, codes, e = codebook.shape
    quantizer = VectorQuantizer(heads * e, VQConfig(heads=heads, codes=codes)).to(codebook.dtype)
    with torch.no_grad():
        quantizer.codebook.copy_(codebook)
    return quantizer


def rival_codes_of(quantizer: VectorQuantizer, x: torch.Tensor, moved_x: torch.Tensor) -> torch.Tensor:
    codes, face = quantizer(x, faces=True)
    move = (moved_x - x).reshape(x.shape[0], quantizer.heads, -1).norm(dim=-1)
    return quantizer(moved_x, rivals=(codes, face, move))


def test_faces_give_the_certified_radius() -> None:
    torch.manual_seed(0)
    quantizer = quantizer_with(torch.randn(2, 16, 4, dtype=torch.float64))
    x = torch.randn(500, 8, dtype=torch.float64)
    codes, face = quantizer(x, faces=True)
    certified, radius = quantizer(x, certify=True)
    assert torch.equal(codes, certified) and torch.equal(codes, quantizer.encode(x))
    assert torch.equal(face.amin(dim=-1), radius)
    assert torch.isinf(face.gather(-1, codes[..., None])).all()  # a code is never its own rival


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([0.01, 0.3, 1.0, 3.0, 30.0]),  # move / typical code spacing
    float32=st.booleans(),
    duplicates=st.booleans(),
)
def test_rival_codes_are_the_encoded_codes(seed: int, scale: float, float32: bool, duplicates: bool) -> None:
    """Random moves of every size: from inside the radius (no rival but the code) to far across many faces."""
    dtype = torch.float32 if float32 else torch.float64
    generator = torch.Generator().manual_seed(seed)
    codebook = torch.randn(2, 12, 3, generator=generator, dtype=torch.float64)
    if duplicates:
        codebook[:, 5:8] = codebook[:, 4:5]  # codewords 4..7 the same: only 4 may be chosen
    quantizer = quantizer_with(codebook.to(dtype))
    x = torch.randn(400, 6, generator=generator, dtype=torch.float64).to(dtype)
    moved_x = x + scale * torch.randn(400, 6, generator=generator, dtype=torch.float64).to(dtype)
    assert torch.equal(rival_codes_of(quantizer, x, moved_x), quantizer.encode(moved_x))


@pytest.mark.parametrize("side", [-1e-9, 1e-9])
def test_moves_just_inside_and_outside_a_face(side: float) -> None:
    """A row moved onto a face between two codewords, a hair on either side (and exactly on it: a tie, the
    lower index): the rival scoring agrees with encode."""
    quantizer = quantizer_with(torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.0, 5.0]]], dtype=torch.float64))
    x = torch.tensor([[0.5, 0.1], [0.5, -0.2], [0.9, 0.0]], dtype=torch.float64)
    for offset in (side, 0.0):
        moved_x = x.clone()
        moved_x[:, 0] = offset  # the face between codewords 0 and 1 is x_0 = 0
        codes = rival_codes_of(quantizer, x, moved_x)
        assert torch.equal(codes, quantizer.encode(moved_x))
    assert quantizer.encode(moved_x).tolist() == [[0], [0], [0]]  # the tie goes to the lower index


def test_the_move_bound_prunes_the_rivals() -> None:
    """The rivals are the codes within the move bound, no others: with a bound below the true move the winner
    across the face is not scored (so the engine's bound, the move's norm plus a rounding allowance, is what
    makes it exact, and the pruning is real)."""
    quantizer = quantizer_with(torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]], dtype=torch.float64))
    x = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    moved_x = torch.tensor([[-0.5, 0.0]], dtype=torch.float64)
    codes, face = quantizer(x, faces=True)
    assert quantizer(moved_x, rivals=(codes, face, torch.tensor([[1.0]], dtype=torch.float64))).tolist() == [[1]]
    assert quantizer(moved_x, rivals=(codes, face, torch.tensor([[0.1]], dtype=torch.float64))).tolist() == [[0]]
