"""Certificates of a vector quantiser's code under a bounded move, and the code of a moved row from its rivals.

For a row ``x_h`` of one head with code ``c`` (the lowest-scoring of the encode scores
``s_j(x) = ||W_j||^2 - 2 x.W_j``), the gap ``g_j = s_j(x) - s_c(x) >= 0`` to a rival ``j`` can shrink under a
move ``delta`` by at most ``2 |delta| ||W_j - W_c||``. So ``j`` cannot take the code while

    |delta| < f_j = (g_j - 4 sigma) / (2 ||W_j - W_c||)       (the distance to the face between c and j)

where ``sigma`` bounds the rounding of a score at ``x`` or at the moved row (``e`` products of magnitude at
most ``scale^2``, ``scale = 2 |x_h| + 2 max_j |W_j|``: within ``f_j`` the moved row's norm stays below
``scale``, since the face lies closer to ``x`` than ``W_j`` does). The certified radius is ``min_j f_j``.

A row that moved further than its radius need not be encoded against every code: only its **rivals**, the
codes with ``f_j <= |delta|`` (and ``c`` itself), can win. :func:`rival_codes` scores the moved row against
them alone and takes the best, unless its lead over the second is within the rounding of the moved row's
scores, or it has many rivals (``FEW_RIVALS``), where it encodes the row in full. Either way the code is the
one :meth:`VectorQuantizer.encode` gives the moved row.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

# A row is scored against its rivals alone while each head has at most Q / FEW_RIVALS of them, else encoded:
# a gathered rival costs more time than its share of encode's batched product (benchmarks/README.md).
FEW_RIVALS = 8


def rounding_scale(rows: Tensor, codebook: Tensor) -> Tensor:
    """``sigma (H, n)``: a bound on the rounding of an encode score of ``rows (H, n, e)`` (see the module)."""
    scale = 2.0 * rows.norm(dim=-1) + 2.0 * codebook.norm(dim=-1).amax(dim=-1, keepdim=True)  # (H, n)
    return 4.0 * torch.finfo(rows.dtype).eps * rows.shape[-1] * scale**2


def faces(quantizer, x: Tensor) -> tuple[Tensor, Tensor]:
    """``x (..., d)`` -> ``codes (..., H)`` (as ``encode``) and the face distances ``f (..., H, Q)`` of every
    rival (``+inf`` for the code itself and for a duplicate codeword, 0 at a tie)."""
    heads, n_codes = quantizer.heads, quantizer.codes
    rows = rearrange(x.reshape(-1, quantizer.d_model), "n (h e) -> h n e", h=heads)  # (H, n, e)
    w = quantizer.codebook  # (H, Q, e)
    scores = quantizer._scores(x)  # (H, n, Q), duplicates +inf (never within reach)
    codes = scores.argmin(dim=-1, keepdim=True)  # (H, n, 1)
    gap = scores - scores.gather(-1, codes)  # (H, n, Q) >= 0
    spread = torch.cdist(w, w, compute_mode="donot_use_mm_for_euclid_dist").gather(
        1, codes.expand(-1, -1, n_codes)
    )  # (H, n, Q) ||W_j - W_c||
    sigma = rounding_scale(rows, w)  # (H, n)
    face = (gap - 4.0 * sigma[..., None]) / (2.0 * spread)  # (H, n, Q); j = c gives -inf or nan
    face = face.scatter(-1, codes, float("inf")).nan_to_num(nan=0.0, posinf=float("inf")).clamp_min(0.0)
    lead = x.shape[:-1]
    codes = rearrange(codes.squeeze(-1), "h n -> n h").reshape(*lead, heads)
    return codes, rearrange(face, "h n q -> n h q").reshape(*lead, heads, n_codes)


def rival_codes(quantizer, x: Tensor, codes: Tensor, face: Tensor, moved: Tensor) -> Tensor:
    """The codes ``(n, H)`` that ``encode`` gives the moved rows ``x (n, d)``, from their rivals only.

    ``codes (n, H)`` and ``face (n, H, Q)`` are the unmoved rows' (:func:`faces`), ``moved (n, H)`` bounds each
    head's move (rounding included). A head's rivals are the codes with ``face <= moved`` and its own code;
    the others cannot win (see the module). Rows with more than ``Q / FEW_RIVALS`` rivals in a head, and rows
    whose best rival leads the second by no more than the rounding of their scores, are encoded against the
    whole codebook.
    """
    n_codes = quantizer.codes
    rival = (face <= moved[..., None]).scatter(-1, codes[..., None], True)  # (n, H, Q)
    # Rows with many rivals are cheaper through the one batched product of encode than through gathers.
    few = (rival.sum(dim=-1) <= max(2, n_codes // FEW_RIVALS)).all(dim=-1)  # (n,)
    best = torch.empty_like(codes)
    if (~few).any():
        best[~few] = quantizer.encode(x[~few])
    if few.any():
        best[few] = scored_rivals(quantizer, x[few], rival[few])
    return best


def scored_rivals(quantizer, x: Tensor, rival: Tensor) -> Tensor:
    """``argmin`` of the encode scores of ``x (n, d)`` over the codes marked in ``rival (n, H, Q)``; rows whose
    best two rivals are within the rounding of their scores are encoded in full."""
    w = quantizer.codebook  # (H, Q, e)
    rows = rearrange(x, "n (h e) -> n h e", h=quantizer.heads)  # (n, H, e)
    row, head, code = rival.nonzero(as_tuple=True)  # (m,) each
    cross = (rows[row, head] * w[head, code]).sum(-1)  # (m,)
    scores = torch.full(rival.shape, float("inf"), dtype=x.dtype, device=x.device)
    scores[row, head, code] = (w * w).sum(-1)[head, code] - 2.0 * cross  # (n, H, Q): +inf outside the rivals
    first, best = scores.min(dim=-1)  # (n, H)
    second = scores.scatter(-1, best[..., None], float("inf")).amin(dim=-1)  # (n, H); +inf with one rival
    sigma = rearrange(rounding_scale(rearrange(rows, "n h e -> h n e"), w), "h n -> n h")  # (n, H)
    unsure = (second - first <= 4.0 * sigma).any(dim=-1)  # (n,)
    if unsure.any():
        best[unsure] = quantizer.encode(x[unsure])
    return best
