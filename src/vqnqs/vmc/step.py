"""One parameter update: the VMC step (energy, SR or Adam) and the distillation fit step (L2 to a teacher).

VMC step (``step`` counts completed updates, 1-based)::

    s      = model.sample(n_samples)                           (Ns, N)  exact, independent samples of |psi|^2
    s_u, w = distinct rows of s, their frequencies             (U, N), (U,)
    E_loc  = local_energy(H, log_psi(engine), s_u)              (U,)     float64
    SR:    O = d log psi(s_u) / dθ  (U, Np);  δ = minSR / full-S solve (SPRING momentum);  θ <- θ - η δ
    Adam:  dE/dθ from the surrogate loss of eq. 3;             θ <- Adam(θ, dE/dθ, η)
    VQ:    codebook upkeep on s with the updated parameters (data init, dead-code re-seeding, usage)

A VQ model is differentiated in training mode: the straight-through estimator of eq. 8 (its forward is pure;
the codebook changes only through the explicit upkeep, the same under SR and under Adam).

Fit step (distillation)::

    s      = teacher.sample(n_samples)                         (Ns, N)  fresh exact teacher samples
    VQ:    codebook upkeep on s (data init on the first step, dead-code re-seeding, usage)
    loss   = mean_s |log psi_student(s) - log psi_teacher(s)|^2,   θ <- Adam(θ, d loss / dθ, η)
             (with a phase: the 2 pi-periodic fit_distance, log-amplitude and phase both fitted)

Over P processes (:mod:`vqnqs.vmc.distributed`) each rank draws Ns / P of the samples from its own
stream and evaluates its share of the distinct rows; every rank then holds the same batch, ``E_loc``, ``O``
and upkeep inputs, and the Adam gradients are summed over the ranks.

Both raise :class:`TrainingError` naming the step on NaN/Inf, before the parameters change; the VMC step also
when every sample is the same configuration (a collapsed state: SR would divide by a zero variance).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vqnqs.models import AutoregressiveTransformer, codebook_upkeep
from vqnqs.physics.hamiltonian import Hamiltonian
from vqnqs.vmc.config import VMCConfig
from vqnqs.vmc.distributed import SINGLE, World, draw
from vqnqs.vmc.gradient import EnergyStats, energy_loss, energy_statistics, log_derivatives
from vqnqs.vmc.local_energy import local_energy
from vqnqs.vmc.log_psi import make_log_psi
from vqnqs.vmc.optim import SR, set_gradients, sr_direction


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite energies, losses or gradients); the last checkpoint is left as it was."""


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group: ``lr`` times the group's ``lr_scale`` (default 1)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def flat_grad_norm(params: list[torch.nn.Parameter]) -> float:
    """``|(p.grad for p in params)|``, the parameters without a gradient left out (0 when none has one)."""
    grads = [p.grad.reshape(-1) for p in params if p.grad is not None]
    return torch.cat(grads).norm().item() if grads else 0.0


@dataclass(frozen=True)
class VMCStepResult:
    """What one VMC update measured (on the batch drawn before the update)."""

    stats: EnergyStats  # E_loc statistics of the whole system
    lr: float  # learning rate of the update
    diag_shift: float  # SR diagonal shift of the update
    grad_norm: float  # |dE/dθ| (eq. 3)
    distinct_samples: int  # distinct configurations among the samples (each evaluated once)
    eloc_configs_per_s: float  # this rank's connected configurations through the network per second of local energy
    seconds: dict[str, float]  # wall time of each part of the step, keyed by STEP_PARTS
    communication_s: float  # of that, wall time inside collectives (0 on one process)


# The parts of a VMC step, timed separately: drawing the samples; their local energies; the log-derivatives
# (SR) or the eq. 3 backward pass (Adam); the SR solve and the update; the codebook upkeep (VQ models).
STEP_PARTS = ("sampling", "local_energy", "gradient", "sr", "upkeep")


class _Stopwatch:
    """Seconds since the last ``lap``, collected by name: ``watch.lap("sampling")`` after drawing them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(STEP_PARTS, 0.0)
        self.last = time.perf_counter()

    def lap(self, part: str) -> float:
        now = time.perf_counter()
        self.seconds[part] += now - self.last
        self.last = now
        return self.seconds[part]


def vmc_step(
    model: AutoregressiveTransformer,
    hamiltonian: Hamiltonian,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | Sequence[torch.Generator],
    vmc: VMCConfig,
    step: int,
    *,
    chunk_size: int,
    engine: str,
    offset: int = 0,
    world: World = SINGLE,
) -> VMCStepResult:
    """Update ``step`` (1-based, ``offset`` of them before this VMC phase) of ``model`` (module docstring):
    SR (minSR, SPRING) when ``optimizer`` is an :class:`~vqnqs.vmc.optim.SR`, else the eq. 3 gradient for it
    (Adam); learning rate and diagonal shift from ``vmc``'s schedules at ``step - offset``.

    ``generator``: this process's sampler stream, or several (:func:`~vqnqs.vmc.distributed.draw`: an equal
    part of this process's samples from each, e.g. one process standing in for P ranks); ``world``: the
    ranks sharing the batch of ``vmc.n_samples``."""
    n_samples = vmc.n_samples  # of all ranks together
    lr, diag_shift = vmc.lr_at(step - offset), vmc.diag_shift_at(step - offset)
    set_lr(optimizer, lr)
    watch, waited = _Stopwatch(), world.seconds
    streams = [generator] if isinstance(generator, torch.Generator) else generator
    samples = world.gather(draw(model, n_samples // world.size, streams))  # (Ns, N), the same on every rank
    # Exact samples repeat, the more so the closer psi gets to the ground state: evaluate each distinct
    # configuration once, weighted by its frequency. Every estimate below is that of the full batch.
    distinct, counts = torch.unique(samples, dim=0, return_counts=True)  # (U, N), (U,)
    if len(distinct) == 1:  # every estimate below would be of one configuration: no variance, no direction
        raise TrainingError(
            f"step {step}: all {n_samples} samples are one configuration: the state collapsed (lower lr, or raise "
            "diag_shift)"
        )
    weights = counts.to(torch.float64) / n_samples
    log_psi = make_log_psi(model, engine)
    watch.lap("sampling")
    mine = world.share(distinct)  # (U_r, N): this rank's distinct configurations
    e_loc = world.gather_shares(local_energy(hamiltonian, log_psi, mine, chunk_size=chunk_size), len(distinct))  # (U,)
    eloc_time = watch.lap("local_energy")
    if not torch.isfinite(e_loc).all():
        bad = int((~torch.isfinite(e_loc)).sum())
        raise TrainingError(f"step {step}: {bad} of {len(e_loc)} local energies are NaN or infinite")
    stats = energy_statistics(e_loc, weights, n_samples)

    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.zero_grad(set_to_none=True)
    if isinstance(optimizer, SR):
        o = world.gather_shares(log_derivatives(model, mine, chunk_size), len(distinct))  # (U, Np), parameter order
        watch.lap("gradient")
        previous = optimizer.previous_direction()
        direction, gradient = sr_direction(o, e_loc, diag_shift, weights, previous, vmc.sr_momentum, world=world)
        set_gradients(params, direction)
    else:
        loss = energy_loss(model.log_psi(mine), world.share(e_loc), world.share(weights), stats.mean)  # eq. 3
        loss.backward()
        gradient = world.sum_(torch.cat([p.grad.reshape(-1) for p in params]))  # (Np,) of the whole batch
        set_gradients(params, gradient)
        watch.lap("gradient")
    grad_norm = gradient.norm().item()
    if not math.isfinite(grad_norm) or not all(torch.isfinite(p.grad).all() for p in params):
        raise TrainingError(f"step {step}: the gradient or update direction is NaN or infinite")
    optimizer.step()
    watch.lap("sr")  # the solve and the update (Adam: its update alone)
    codebook_upkeep(model, samples)
    watch.lap("upkeep")
    configs_per_s = log_psi.count / eloc_time
    communication = world.seconds - waited
    return VMCStepResult(stats, lr, diag_shift, grad_norm, len(distinct), configs_per_s, watch.seconds, communication)


@dataclass(frozen=True)
class FitStepResult:
    """What one fit update measured (on its teacher samples, before the update)."""

    loss: float  # mean fit_distance(log psi_student - log psi_teacher): |.|^2 for real log psi
    mean_abs_dlog_psi: float  # mean |log psi_student - log psi_teacher|
    grad_norm: float  # |d loss / dθ|


def fit_step(
    student: AutoregressiveTransformer,
    teacher: AutoregressiveTransformer,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    *,
    n_samples: int,
    lr: float,
    step: int,
) -> FitStepResult:
    """One Adam update of ``student`` towards ``teacher``'s log-amplitudes on fresh teacher samples."""
    set_lr(optimizer, lr)
    with torch.no_grad():
        samples = teacher.sample(n_samples, generator=generator)  # (Ns, N)
        target = teacher.log_psi(samples)  # (Ns,)
    student.train()
    codebook_upkeep(student, samples)
    distance = fit_distance(student.log_psi(samples) - target)  # (Ns,) |Δ log psi|^2
    loss = distance.mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = flat_grad_norm(list(student.parameters()))
    if not math.isfinite(loss.item()) or not math.isfinite(grad_norm):
        raise TrainingError(f"step {step}: the loss or its gradient is NaN or infinite")
    optimizer.step()
    return FitStepResult(loss.item(), distance.detach().sqrt().mean().item(), grad_norm)


def fit_distance(delta: torch.Tensor) -> torch.Tensor:
    """Squared distance of two log-amplitudes from their difference ``delta (Ns,)``: ``delta^2`` for real ones;
    ``Re(delta)^2 + 2 (1 - cos Im(delta))`` for complex ones, which is ``|delta|^2`` to second order in the phase
    difference and, like the wave functions, blind to a phase difference of 2 pi."""
    if not delta.is_complex():
        return delta**2
    return delta.real**2 + 2.0 * (1.0 - torch.cos(delta.imag))
