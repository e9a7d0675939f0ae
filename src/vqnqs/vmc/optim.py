"""Parameter updates: stochastic reconfiguration (full S and minSR) or Adam, and their schedules.

Stochastic reconfiguration (Sorella 1998; Sorella, Casula & Rocca 2007) preconditions the energy
gradient with the quantum geometric tensor. With centred, scaled per-sample quantities

    Ō[i, k] = (O_k(s_i) - mean_s O_k) / sqrt(Ns),    ε[i] = (E_loc(s_i) - E) / sqrt(Ns),

the metric is ``S = Ō^T Ō`` (Np x Np) and the force ``F = Ō^T ε = (1/2) dE/dθ`` (eq. 3, real case). For a complex
``log psi`` (a phase network; real parameters) ``S = Re Ō^† Ō`` and ``F = Re Ō^† ε``: the same formulas on the
real ``(2 Ns, Np)`` matrix of rows ``[Re Ō; Im Ō]`` and ``[Re ε; Im ε]``, which :func:`centred` returns, so
everything below (minSR's ``2Ns x 2Ns`` solve included) is unchanged. Where each parameter moves only the
log-amplitude or only the phase (two networks), that matrix is block diagonal and the solve splits exactly
into two real ones of ``Ns`` rows each (:func:`separable`, checked on the data);
the update is ``θ <- θ - η δ`` with

    δ = (S + λ I)^{-1} F                         full S: an Np x Np solve              (Sorella)
      = Ō^T (Ō Ō^T + λ I)^{-1} ε                 minSR: an Ns x Ns solve               (Chen & Heyl 2023)

The two lines are equal by the push-through identity ``Ō^T (Ō Ō^T + λ)^{-1} = (Ō^T Ō + λ)^{-1} Ō^T``; the
sample-space form costs ``O(Ns^2 Np)`` instead of ``O(Np^2 Ns + Np^3)``, so it is used whenever the
parameters outnumber the samples. The diagonal shift ``λ > 0`` regularises the directions that the
samples do not resolve; as ``λ -> inf``, ``δ -> F / λ``: plain gradient descent with step ``η / (2 λ)``.

Momentum (SPRING; Goldshlager, Abrahamsen & Lin 2024): δ solves the same least-squares problem
``min |Ō δ - ε|^2 + λ |δ - μ δ_prev|^2``, regularised towards the decayed previous update instead of 0:

    δ = μ δ_prev + Ō^T (Ō Ō^T + λ I)^{-1} (ε - μ Ō δ_prev)       (μ = 0: minSR)

Directions the current samples do not resolve keep ``μ`` times their previous value rather than
dropping to zero, so the noise of a single batch averages out over about ``1 / (1 - μ)`` steps at
the cost of one extra matrix-vector product. The steady-state step is about ``η / (1 - μ)``.

Both optimisers are ``torch.optim`` objects, so schedules and checkpoints treat them alike: SR puts ``δ``
into ``.grad`` and :class:`SR` applies ``θ <- θ - η δ`` and keeps ``δ`` for the next step; Adam gets
the eq. 3 gradient itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from vqnqs.vmc.distributed import SINGLE, World

OPTIMIZERS = ("sr", "adam")
SCHEDULES = ("constant", "cosine", "exponential")
SR_FORMS = ("auto", "full", "min")


def centred(o: Tensor, e_loc: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``O (K, Np)``, ``E_loc (K,)`` -> ``Ō (K, Np)``, ``ε (K,)``: centred and scaled by sqrt(w) = 1/sqrt(Ns).

    With ``weights`` (frequencies of distinct samples, summing to one) row i is scaled by ``sqrt(w_i)``
    instead: ``S = Ō^T Ō`` and ``F = Ō^T ε`` are then exactly those of the batch with its repetitions.
    """
    if weights is None:
        weights = torch.full((o.shape[0],), 1.0 / o.shape[0], dtype=torch.float64, device=o.device)
    scale = weights.sqrt()[:, None]  # (K, 1)
    o_bar = o - weights.to(o.dtype) @ o
    o_bar.mul_(scale.to(o.dtype))  # in place: O is the largest array of the step, one fresh copy is enough
    eps = ((e_loc - weights.to(e_loc.dtype) @ e_loc) * scale[:, 0]).to(o.dtype)
    if o_bar.is_complex():  # complex log psi: the real formulation, rows [Re; Im] (module docstring)
        o_bar, eps = torch.cat([o_bar.real, o_bar.imag]), torch.cat([eps.real, eps.imag])  # (2K, Np), (2K,)
    return o_bar, eps


def gram(a: Tensor, block: int = 128, world: World = SINGLE) -> Tensor:
    """``a a^T (K, K)`` in float64 from its lower triangle: about half the multiply-adds of one ``a @ a.T``.

    Row block ``i`` is multiplied by the rows up to its own end only; the upper triangle is the mirror image.
    (torch has no symmetric rank-k product; blocks of 128 rows keep each product large enough to run at the
    speed of the full one: 1.7x faster for (946, 30960) float32 on one CPU thread.) Over P ranks (``world``,
    each holding all of ``a``) rank r computes the row blocks ``i = r mod P`` and the blocks are summed
    (all-reduce): the same matrix as one process computes, its work split P ways.
    """
    n = a.shape[0]
    lower = torch.zeros(n, n, dtype=a.dtype, device=a.device)
    for index, start in enumerate(range(0, n, block)):
        if index % world.size == world.rank:
            stop = min(start + block, n)
            lower[start:stop, :stop] = a[start:stop] @ a[:stop].T
    lower = world.sum_(lower).double().tril_()
    return lower + lower.tril(-1).T


def sr_direction(
    o: Tensor,
    e_loc: Tensor,
    diag_shift: float,
    weights: Tensor | None = None,
    previous: Tensor | None = None,
    momentum: float = 0.0,
    form: str = "auto",
    world: World = SINGLE,
) -> tuple[Tensor, Tensor]:
    """SR update direction ``δ (Np,)`` and the energy gradient ``dE/dθ = 2 F (Np,)`` (real log psi).

    ``o (K, Np)``: raw per-sample log-derivatives; ``e_loc (K,)``: local energies (float64); ``weights``:
    see :func:`centred`; ``previous (Np,)``: the last update, pulled in with weight ``momentum`` (SPRING).
    ``form`` picks the solve: ``'full'`` (Np x Np), ``'min'`` (K x K), or ``'auto'``: minSR when ``Np > K``.
    The linear solve runs in float64 whatever the network's precision: ``λ`` can be many orders of
    magnitude below the largest eigenvalue of ``S``. ``world``: ranks that all hold these rows and share the
    minSR Gram matrix's work (:func:`gram`).
    """
    if form not in SR_FORMS:
        raise ValueError(f"form {form!r}: expected one of {', '.join(SR_FORMS)}")
    if not diag_shift > 0:
        raise ValueError(f"diag_shift {diag_shift}: must be positive")
    if o.is_complex() and separable(o):
        return _separate_sr(o, e_loc, diag_shift, weights, previous, momentum, form, world)
    o_bar, eps = centred(o, e_loc, weights)
    n_samples, n_params = o_bar.shape
    force = o_bar.T @ eps  # (Np,)
    anchor = torch.zeros_like(force) if previous is None else momentum * previous.to(force.dtype)  # μ δ_prev
    residual = eps - o_bar @ anchor  # (K,) what the anchor leaves unexplained
    if form == "min" or (form == "auto" and n_params > n_samples):
        t = gram(o_bar, world=world)  # (K, K) = Ō Ō^T
        t.diagonal().add_(diag_shift)
        correction = o_bar.T @ torch.linalg.solve(t, residual.double()).to(o_bar.dtype)  # (Np,)
    else:
        s = (o_bar.T @ o_bar).double()  # (Np, Np) = S
        s.diagonal().add_(diag_shift)
        correction = torch.linalg.solve(s, (o_bar.T @ residual).double()).to(o_bar.dtype)
    return anchor + correction, 2.0 * force


def separable(o: Tensor) -> bool:
    """Whether complex ``o (K, Np)`` has every column purely real or purely imaginary (checked, not assumed)."""
    imaginary = (o.imag != 0).any(dim=0)  # (Np,)
    return not bool((o.real[:, imaginary] != 0).any())


def _separate_sr(o, e_loc, diag_shift, weights, previous, momentum, form, world) -> tuple[Tensor, Tensor]:
    """:func:`sr_direction` of a complex ``o`` whose columns are each purely real or purely imaginary: the
    amplitude's parameters (``Re log psi = log P / 2``) and the phase network's (``Im log psi = phi``).

    The real formulation's rows ``[Re Ō; Im Ō]`` are then ``[[A, 0], [0, B]]``, so ``S`` and the Gram matrix are
    block diagonal and the problem splits exactly into two real ones: ``(A, Re ε)`` for the amplitude columns,
    ``(B, Im ε)`` for the phase columns. Each costs ``K^2`` per parameter in minSR, not ``(2K)^2``.
    """
    imaginary = (o.imag != 0).any(dim=0)  # (Np,): the phase network's columns
    direction = torch.zeros(o.shape[1], dtype=o.real.dtype, device=o.device)
    gradient = torch.zeros_like(direction)
    for columns, part, e_part in ((~imaginary, o.real, e_loc.real), (imaginary, o.imag, e_loc.imag)):
        if columns.any():
            last = None if previous is None else previous[columns]
            d, g = sr_direction(part[:, columns], e_part, diag_shift, weights, last, momentum, form, world)
            direction[columns], gradient[columns] = d, g
    return direction, gradient


def set_gradients(params: Iterable[nn.Parameter], flat: Tensor) -> None:
    """Write a flat ``(Np,)`` vector into ``p.grad``, in the order of ``params`` (that of ``O``'s columns)."""
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype).clone()
        offset += p.numel()
    if offset != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} entries for {offset} parameters")


class SR(torch.optim.Optimizer):
    """Applies an SR direction: ``θ <- θ - η δ`` with ``δ`` in ``.grad`` (see :func:`set_gradients`).

    It keeps ``δ`` in its state (``state[p]["direction"]``), so the next step's momentum and a resumed
    run see it: the state dict holds everything the update rule depends on.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["direction"] = p.grad.clone()
                p.add_(p.grad, alpha=-group["lr"])

    def previous_direction(self) -> Tensor | None:
        """The last ``δ`` flattened in parameter order ``(Np,)``, or None before the first step."""
        params = [p for group in self.param_groups for p in group["params"]]
        if any("direction" not in self.state[p] for p in params):
            return None
        return torch.cat([self.state[p]["direction"].reshape(-1) for p in params])


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """``'sr'``: :class:`SR`, applying ``θ <- θ - η .grad`` (``.grad`` = SR direction); ``'adam'``."""
    if name == "sr":
        return SR(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")


def scheduled(step: int, total: int, start: float, final: float, kind: str, warmup: int = 0) -> float:
    """Value of a decaying hyper-parameter (learning rate, diagonal shift) at update ``step`` (1-based).

    A linear warmup over the first ``warmup`` steps (``start * step / warmup``), then, with progress
    ``p`` going from 0 to 1 over the remaining steps: ``'constant'`` start; ``'cosine'``
    ``final + (start - final) (1 + cos(pi p)) / 2``; ``'exponential'`` ``start (final / start)^p``.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule {kind!r}: expected one of {', '.join(SCHEDULES)}")
    if step <= warmup:
        return start * step / warmup
    progress = min(1.0, (step - warmup - 1) / max(1, total - warmup - 1))
    if kind == "cosine":
        return final + (start - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "exponential":
        return start * (final / start) ** progress
    return start
