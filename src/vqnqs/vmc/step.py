"""One parameter update: the VMC step (energy, SR or Adam) and the distillation fit step (L2 to a teacher).

VMC step, ``vmc_step(model, vmc, context, step)`` (``step`` counts completed updates, 1-based; ``vmc`` the
:class:`VMCConfig`; ``context`` the :class:`VMCContext` of what the phase holds fixed)::

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

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class VMCContext:
    """What a VMC phase holds fixed from step to step, besides the model and its :class:`VMCConfig`."""

    hamiltonian: Hamiltonian
    optimizer: torch.optim.Optimizer  # an SR (minSR, SPRING), or any other for the eq. 3 gradient (Adam)
    # This process's sampler stream, or several (draw: an equal part of this process's samples from each, e.g.
    # one process standing in for P ranks).
    streams: torch.Generator | Sequence[torch.Generator]
    chunk_size: int  # configurations per network call of the local energy and the log-derivatives
    engine: str  # the local-energy engine (vqnqs.vmc.log_psi.ENGINES)
    offset: int = 0  # updates before this phase: the schedules run at step - offset
    world: World = field(default_factory=lambda: SINGLE)  # the ranks sharing each batch of VMCConfig.n_samples


# The parts of a VMC step, timed separately: drawing the samples; their local energies; the log-derivatives
# (SR) or the eq. 3 backward pass (Adam); the SR solve and the update; the codebook upkeep (VQ models).
STEP_PARTS = ("sampling", "local_energy", "gradient", "sr", "upkeep")


class StepTimer:
    """Wall time of the parts of one step, ``with timer("sampling"): ...``, and of the collectives inside it."""

    def __init__(self, world: World) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(STEP_PARTS, 0.0)
        self.world, self.waited = world, world.seconds

    @contextlib.contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[part] += time.perf_counter() - start

    @property
    def communication_s(self) -> float:
        return self.world.seconds - self.waited


def vmc_step(model: AutoregressiveTransformer, vmc: VMCConfig, context: VMCContext, step: int) -> VMCStepResult:
    """Update ``step`` (1-based) of ``model`` (module docstring): SR (minSR, SPRING) when the optimiser is an
    :class:`~vqnqs.vmc.optim.SR`, else the eq. 3 gradient for it (Adam); learning rate and diagonal shift from
    ``vmc``'s schedules at ``step - context.offset``."""
    optimizer, world, timer = context.optimizer, context.world, StepTimer(context.world)
    hamiltonian, chunk = context.hamiltonian, context.chunk_size
    lr, diag_shift = vmc.lr_at(step - context.offset), vmc.diag_shift_at(step - context.offset)
    set_lr(optimizer, lr)
    with timer("sampling"):
        s, s_u, w = sample(model, vmc.n_samples, context.streams, world, step)  # (Ns, N), (U, N), (U,)
    with timer("local_energy"):
        log_psi = make_log_psi(model, context.engine)
        e_loc = world.map_rows(lambda x: local_energy(hamiltonian, log_psi, x, chunk_size=chunk), s_u)  # (U,)
    sr = isinstance(optimizer, SR)
    with timer("gradient"):
        stats = energy_statistics(finite_energies(e_loc, step), w, vmc.n_samples)
        optimizer.zero_grad(set_to_none=True)
        if sr:  # O = d log psi(s_u) / dθ, (U, Np) in parameter order
            o = world.map_rows(lambda x: log_derivatives(model, x, chunk), s_u)
        else:  # dE/dθ of eq. 3, (Np,)
            direction = gradient = energy_gradient(model, optimizer, s_u, e_loc, w, stats.mean, world)
    with timer("sr"):
        if sr:  # the minSR / full-S solve with SPRING momentum
            previous = optimizer.previous_direction()
            direction, gradient = sr_direction(o, e_loc, diag_shift, w, previous, vmc.sr_momentum, world=world)
        grad_norm = apply_update(optimizer, direction, gradient, step)
    with timer("upkeep"):
        codebook_upkeep(model, s)
    eloc_rate = log_psi.count / timer.seconds["local_energy"]
    return VMCStepResult(stats, lr, diag_shift, grad_norm, len(s_u), eloc_rate, timer.seconds, timer.communication_s)


def sample(
    model: AutoregressiveTransformer,
    n_samples: int,
    streams: torch.Generator | Sequence[torch.Generator],
    world: World,
    step: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``s (Ns, N)``: ``n_samples`` exact samples of |psi|^2 of all ranks (each rank ``n_samples / P`` from its
    ``streams``, gathered in rank order; the same on every rank), its distinct rows ``s_u (U, N)`` and their
    frequencies ``w (U,)`` (float64, summing to 1). :class:`TrainingError` if ``U == 1`` (a collapsed state:
    every estimate would be of one configuration, with no variance and no direction)."""
    streams = [streams] if isinstance(streams, torch.Generator) else streams
    samples = world.gather(draw(model, n_samples // world.size, streams))
    # Exact samples repeat, the more so the closer psi gets to the ground state: the step evaluates each
    # distinct configuration once, weighted by its frequency; every estimate is that of the full batch.
    distinct, counts = torch.unique(samples, dim=0, return_counts=True)
    if len(distinct) == 1:
        raise TrainingError(
            f"step {step}: all {n_samples} samples are one configuration: the state collapsed (lower lr, or raise "
            "diag_shift)"
        )
    return samples, distinct, counts.to(torch.float64) / n_samples


def finite_energies(e_loc: torch.Tensor, step: int) -> torch.Tensor:
    """``e_loc``, or :class:`TrainingError` naming ``step`` if any local energy is NaN or infinite."""
    if not torch.isfinite(e_loc).all():
        bad = int((~torch.isfinite(e_loc)).sum())
        raise TrainingError(f"step {step}: {bad} of {len(e_loc)} local energies are NaN or infinite")
    return e_loc


def optimized_parameters(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """The parameters of ``optimizer``, group after group: the order of ``O``'s columns and flat gradients."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def energy_gradient(
    model: AutoregressiveTransformer,
    optimizer: torch.optim.Optimizer,
    s_u: torch.Tensor,
    e_loc: torch.Tensor,
    w: torch.Tensor,
    energy: float,
    world: World,
) -> torch.Tensor:
    """dE/dθ ``(Np,)`` of the whole batch (eq. 3): each rank back-propagates the surrogate loss on its share of
    the distinct configurations ``s_u (U, N)``, with their ``e_loc``, weights ``w`` and the energy ``E`` of all
    of them; the ranks' gradients are summed."""
    mine = world.share(s_u)
    energy_loss(model.log_psi(mine), world.share(e_loc), world.share(w), energy).backward()
    return world.sum_(torch.cat([p.grad.reshape(-1) for p in optimized_parameters(optimizer)]))


def apply_update(optimizer: torch.optim.Optimizer, direction: torch.Tensor, gradient: torch.Tensor, step: int) -> float:
    """The optimiser's step along ``direction (Np,)`` (written into the parameters' gradients); returns
    ``|gradient|``. :class:`TrainingError` naming ``step``, before the parameters change, if either is NaN or
    infinite."""
    params = optimized_parameters(optimizer)
    set_gradients(params, direction)
    grad_norm = gradient.norm().item()
    if not math.isfinite(grad_norm) or not all(torch.isfinite(p.grad).all() for p in params):
        raise TrainingError(f"step {step}: the gradient or update direction is NaN or infinite")
    optimizer.step()
    return grad_norm


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
