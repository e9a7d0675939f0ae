"""The knobs of the VMC algorithm: steps and the learning-rate schedule, samples, optimiser, SR shift, momentum.

:class:`ScheduleConfig` (also the distillation fit's) and :class:`VMCConfig` are frozen dataclasses of
knobs (:mod:`vqnqs.knobs`: each field's constraints declared once, checked on construction); the stages
compose them (:mod:`vqnqs.stages.config`: train's knobs are a VMCConfig's, distill's fine-tuning is one),
and :func:`vqnqs.vmc.step.vmc_step` reads one.
"""

from __future__ import annotations

from dataclasses import dataclass

from vqnqs.knobs import AT_LEAST_TWO, Config, knob
from vqnqs.vmc.optim import OPTIMIZERS, SCHEDULES, scheduled


@dataclass(frozen=True)
class ScheduleConfig(Config):
    # Parameter updates.
    steps: int = knob(1800, minimum=1)
    # Peak learning rate η (after warmup). SR: imaginary-time step (about lr / (1 - sr_momentum) per step);
    # Adam: its usual step size (~1e-3).
    lr: float = knob(0.02, exclusive_minimum=0)
    # Learning rate at the last step, for the 'cosine' and 'exponential' schedules.
    lr_final: float = knob(0.002, minimum=0)
    # Shape of the decay from lr to lr_final: 'constant' | 'cosine' | 'exponential'.
    schedule: str = knob("cosine", choices=SCHEDULES)
    # Steps of linear warmup from 0 to lr before the decay starts.
    warmup_steps: int = knob(0, minimum=0)

    def check(self) -> None:
        if self.schedule == "exponential" and self.lr_final == 0:
            raise ValueError(f"lr_final {self.lr_final}: must be > 0 for the exponential schedule")
        if not self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps {self.warmup_steps}: must lie in [0, steps={self.steps})")

    def lr_at(self, step: int) -> float:
        """The learning rate of update ``step`` (1-based)."""
        return scheduled(step, self.steps, self.lr, self.lr_final, self.schedule, self.warmup_steps)


@dataclass(frozen=True)
class VMCConfig(ScheduleConfig):
    # Exact samples of |psi|^2 per iteration: the knob that buys accuracy near convergence.
    n_samples: int = knob(1024, minimum=2, why=AT_LEAST_TWO)
    # 'sr': stochastic reconfiguration (minSR when parameters outnumber samples); 'adam': Adam on eq. 3.
    optimizer: str = knob("sr", choices=OPTIMIZERS)
    # SR diagonal shift λ added to S (or to Ō Ō^T in minSR) at the first step.
    diag_shift: float = knob(1e-4, exclusive_minimum=0)
    # SR diagonal shift at the last step, on the same schedule shape as the lr (no warmup).
    diag_shift_final: float = knob(1e-4, exclusive_minimum=0)
    # SR momentum μ (SPRING): each update is regularised towards μ times the previous one; 0: plain minSR.
    # The steady-state step is about lr / (1 - μ), so lower lr accordingly.
    sr_momentum: float = knob(0.9, minimum=0, exclusive_maximum=1)

    def diag_shift_at(self, step: int) -> float:
        """The SR diagonal shift of update ``step`` (1-based)."""
        return scheduled(step, self.steps, self.diag_shift, self.diag_shift_final, self.schedule)
