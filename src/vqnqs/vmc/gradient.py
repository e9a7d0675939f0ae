"""The VMC energy estimate, its gradient (eq. 3 of the paper), and per-sample log-derivatives.

Samples ``s_1 .. s_Ns`` are drawn exactly from ``|psi|^2`` (autoregressive sampling: independent, no
autocorrelation), so with ``E_loc(s) = sum_s' H[s, s'] psi(s') / psi(s)``:

    E        = mean_s E_loc(s)                              (unbiased estimate of <psi|H|psi> / <psi|psi>)
    sigma^2  = var_s E_loc(s)                               (0 for an eigenstate: the zero-variance property)
    error    = sqrt(sigma^2 / Ns)                           (standard error of E)
    dE/dθ    = 2 Re mean_s[(E_loc(s) - E)^* O(s)],   O(s) = d log psi(s) / dθ          (eq. 3)

For a complex ``psi = sqrt(P) exp(i phi)`` with real parameters, ``O`` and ``E_loc`` are complex and eq. 3 holds
as written (``Re[(E_loc - E)^* O] = Re[O^* (E_loc - E)]``); ``E`` itself is real (``H`` is Hermitian).

Every function also takes optional ``weights`` ``w(s)`` summing to one in place of the plain mean, for
two uses: the distinct samples of a batch weighted by their frequency (the same numbers as the full
batch, with each repeated configuration evaluated once), and the whole basis weighted by
``|psi(s)|^2``, which gives exact expectation values (used to check eq. 3 against the derivative of
the exact energy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vmap


def _mean(x: Tensor, weights: Tensor | None) -> Tensor:
    """Sample mean, or the expectation ``sum_s P(s) x(s)`` when weights are given."""
    return x.mean() if weights is None else (weights * x).sum()


@dataclass(frozen=True)
class EnergyStats:
    """Statistics of the local energies of one batch, for the whole system (not per site)."""

    mean: float  # E = mean E_loc (real part: H is Hermitian)
    variance: float  # var E_loc
    error: float  # standard error of E: sqrt(var / Ns); 0 for an exact expectation


def energy_statistics(e_loc: Tensor, weights: Tensor | None = None, n_samples: int | None = None) -> EnergyStats:
    """``e_loc (K,)`` -> :class:`EnergyStats`.

    ``n_samples``: the number of samples behind ``weights`` (frequencies of distinct samples); leave it
    None with weights for an exact expectation (error 0). Without weights, the K rows are the samples.
    """
    e_loc = e_loc.detach()
    mean = _mean(e_loc, weights)
    variance = _mean((e_loc - mean).abs() ** 2, weights).real.item()
    n_samples = e_loc.shape[0] if weights is None else n_samples
    error = math.sqrt(variance / n_samples) if n_samples else 0.0
    return EnergyStats(mean=mean.real.item(), variance=variance, error=error)


def energy_loss(log_psi: Tensor, e_loc: Tensor, weights: Tensor | None = None, energy: float | None = None) -> Tensor:
    """Surrogate loss whose gradient is eq. 3: ``L = 2 Re mean[SG(E_loc - E)^* log psi(s)]``.

    ``log_psi (Ns,)`` carries the graph; ``e_loc (Ns,)`` is detached here (SG = stop-gradient), as are
    the samples, so ``dL/dθ = 2 Re mean[(E_loc - E)^* d log psi / dθ]``. Subtracting ``E`` does not change
    the expectation (``mean O`` has zero expectation for a normalised ``|psi|^2``) but removes most of the
    sampling noise. The value of ``L`` itself is 0 on average and carries no meaning.

    ``energy``: ``E`` of the whole batch when these rows are one rank's share of it (``weights`` then the
    share's frequencies in the whole batch, so the ranks' losses add up to the batch's); default: of these rows.
    """
    e_loc = e_loc.detach()
    centred = e_loc - (_mean(e_loc, weights) if energy is None else energy)
    return 2.0 * _mean((centred.conj() * log_psi).real, weights)


class _LogPsi(nn.Module):
    """``model.log_psi`` as a module's forward, so ``torch.func.functional_call`` can swap the parameters."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, s: Tensor) -> Tensor:
        return self.model.log_psi(s)


def log_derivatives(model: nn.Module, s: Tensor, chunk_size: int | None = None) -> Tensor:
    """Per-sample log-derivatives ``O[i, k] = d log psi(s_i) / d θ_k`` as ``(Ns, Np)``.

    Parameters ``θ`` are flattened in the order of ``model.parameters()``. Each row is the gradient of
    one sample's ``log psi``, computed for ``chunk_size`` samples at a time by
    ``vmap(grad(functional_call(...)))`` over the batch: one batched forward and backward per chunk
    instead of ``Ns`` separate backward passes. A complex ``log psi`` (a phase network; the parameters are
    real) gives ``O = d Re log psi / dθ + i d Im log psi / dθ``, complex: the gradients of both parts in one
    ``vmap(jacrev(...))``.
    """
    wrapped = _LogPsi(model)
    params = {name: p.detach() for name, p in wrapped.named_parameters()}
    is_complex = bool(getattr(model, "is_complex", False))

    def single(params: dict[str, Tensor], one: Tensor) -> Tensor:
        value = functional_call(wrapped, params, (one[None],))[0]  # (N,) -> scalar
        return torch.stack([value.real, value.imag]) if is_complex else value  # (2,) or scalar

    per_sample = vmap(jacrev(single) if is_complex else grad(single), in_dims=(None, 0))
    chunk_size = s.shape[0] if chunk_size is None else chunk_size
    rows = []
    for start in range(0, s.shape[0], chunk_size):
        grads = per_sample(params, s[start : start + chunk_size])  # name -> (C, [2,] *p.shape)
        if is_complex:
            grads = {name: torch.complex(g[:, 0], g[:, 1]) for name, g in grads.items()}  # (C, *p.shape)
        rows.append(torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1))  # (C, Np)
    if not rows:  # no samples (a rank's share of a batch with fewer distinct rows than ranks): (0, Np)
        first = next(iter(params.values()))
        dtype = first.dtype.to_complex() if is_complex else first.dtype
        return first.new_zeros(0, sum(p.numel() for p in params.values()), dtype=dtype)
    return torch.cat(rows)
