"""The ``distill`` stage: a trained baseline (the teacher) into a VQ-NQS student (paper, sec. 3).

The student is ``make_vq_model(student shape, VQConfig.from_bits(bits, codes))`` on the teacher's lattice,
patch and Sz sector, started from the teacher (:func:`vqnqs.models.from_teacher`: every weight whose name
and shape match is copied, the rest — codebooks, and everything of a wider student — freshly initialised).

- Fit (``steps`` updates, :func:`vqnqs.vmc.step.fit_step`): the L2 distance of log-amplitudes on fresh exact
  teacher samples, Adam, codebook upkeep by the step (data initialisation, dead-code re-seeding).
- Optional VMC fine-tuning (``finetune.steps`` more, :func:`vqnqs.vmc.step.vmc_step` with the VMCConfig
  ``config.finetune``): the student trained on its OWN energy as the teacher was (exact samples, dedup local
  energies, minSR with SPRING), its codes differentiated with the straight-through estimator of eq. 8. The fit
  copies amplitudes, not energy: small log-amplitude errors between neighbouring configurations cost much
  energy. ``step`` runs on through both.
- Evaluation: the student's energy on its own exact samples through the dedup engine; the dense and dedup
  local energies of a float64 copy compared on ``check_samples`` of them (they must agree: the project's
  core invariant); on fresh TEACHER samples the L2 distance, ``mean |Δ log psi|`` and the fidelity.

Out dir: checkpoint.pt, history.csv, model.pt (the VQ student), metrics.json (:data:`METRICS_KEYS` and more).
A checkpoint written for another teacher file is stale (start afresh, saying so); another bandwidth is refused.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from vqnqs.models import from_teacher, make_vq_model
from vqnqs.physics.hamiltonian import Hamiltonian
from vqnqs.stages.config import DTYPES, DistillConfig, check_bits
from vqnqs.stages.driver import METRICS_KEYS as CONTRACT_KEYS
from vqnqs.stages.driver import Stage
from vqnqs.stages.inputs import Teacher, system_info
from vqnqs.vmc.checkpoint import model_config_to_dict, vq_config_to_dict
from vqnqs.vmc.cost import estimate_line, fit_step_flops, measure_rate, vmc_step_flops
from vqnqs.vmc.enumeration import exact_metrics
from vqnqs.vmc.evaluation import dedup_check, energy_metrics, fidelity, relative_error, sampled_energy
from vqnqs.vmc.optim import make_optimizer
from vqnqs.vmc.step import TrainingError, VMCContext, fit_step, vmc_step

# Dense and dedup local energies of the student must agree to this relative difference of their means.
DEDUP_TOLERANCE = 1e-6

HISTORY_COLUMNS = (
    "step",  # completed updates
    "phase",  # 'fit' (L2 to the teacher) or 'vmc' (fine-tuning on the student's energy)
    "loss",  # mean |log psi_student - log psi_teacher|^2 on this step's teacher samples (before the update)
    "mean_abs_dlog_psi",  # mean |log psi_student - log psi_teacher| on the same samples
    "lr",  # learning rate of this update
    "grad_norm",  # |d loss / dθ|
    "code_usage",  # fit: fraction of codes (all quantisers) used by this step's batch
    "energy_per_site",  # fit: every energy_every steps, on energy_samples student samples; vmc: every step
    "energy_error",  # its standard error (per site)
    "rel_error",  # |E / N - reference| / |reference|
    "v_score",  # N var(E_loc) / E^2 of the same samples
    "time_s",  # wall time since the start of distillation (summed over resumed invocations)
)
METRICS_KEYS = (
    *CONTRACT_KEYS,
    "bits",
    "heads",
    "codes",
    "final_loss",
    "mean_abs_dlog_psi",
    "teacher_energy_per_site",
    "student_d_model",
    "teacher_d_model",
    "dedup_check_max_rel_diff",
)


class Distiller(Stage):
    """Teacher, student, optimisers and samplers of one distillation run, restorable from ``out_dir``."""

    name = "distill"
    history_columns = HISTORY_COLUMNS
    final_keys = tuple(key for key in METRICS_KEYS if key not in ("steps", "bits", "heads", "codes"))

    def __init__(
        self,
        hamiltonian: Hamiltonian,
        teacher: Teacher,
        config: DistillConfig,
        bits: int,
        out_dir: str | Path,
        reference: float,
    ) -> None:
        super().__init__(hamiltonian, config, out_dir, reference)
        self.teacher = teacher
        self.bits = bits
        dtype = DTYPES[config.dtype]
        self.student_config = config.student_config(teacher.model.config)
        check_bits(bits, config.codes, self.student_config.d_model)
        self.vq_config = config.vq_config(bits)
        self.teacher_model = copy.deepcopy(teacher.model).to(self.device, dtype).eval()
        for p in self.teacher_model.parameters():
            p.requires_grad_(False)
        torch.manual_seed(config.seed)  # the student's fresh weights (codebooks; unmatched shapes)
        self.student = make_vq_model(self.student_config, self.vq_config).to(self.device, dtype)
        self.copied = from_teacher(self.student, self.teacher_model)  # names of the copied weights
        params = list(self.student.parameters())
        codebooks = [q.codebook for q in self.student.quantizers]
        others = [p for p in params if all(p is not c for c in codebooks)]
        codebook_scale = (config.codebook_lr or config.lr) / config.lr
        groups = [{"params": others, "lr_scale": 1.0}, {"params": codebooks, "lr_scale": codebook_scale}]
        self.optimizer = make_optimizer("adam", groups, config.lr)
        self.vmc_optimizer = make_optimizer(config.finetune.optimizer, params, config.finetune.lr)  # fine-tuning's
        self.generator = torch.Generator(self.device).manual_seed(config.seed)  # teacher samples, then eval
        self.monitor = torch.Generator(self.device).manual_seed(config.seed + 1)  # history energies only
        self.generators = {"sampler": self.generator, "monitor": self.monitor}
        self.fit_metrics: dict = {}  # exact energy of the student at the end of the fit, before fine-tuning

    @property
    def total_steps(self) -> int:
        return self.config.total_steps

    @property
    def label(self) -> str:
        return f"distill {self.bits} bits"

    # --- state ---

    def extendable(self, stored: dict) -> tuple[str, ...]:
        """More fine-tuning updates; more fit steps only where neither run fine-tunes."""
        return ("finetune.steps",) if stored.get("finetune.steps") or self.config.finetune.steps else ("steps",)

    def identity(self) -> dict:
        return {"bits": self.bits, "vq_config": vq_config_to_dict(self.vq_config)}

    def stale_identity(self) -> dict[str, tuple[object, str]]:
        return {"teacher_digest": (self.teacher.digest, "a different teacher model.pt")}

    def state_dict(self) -> dict:
        return {
            "model_config": model_config_to_dict(self.student_config),
            "model": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "vmc_optimizer": self.vmc_optimizer.state_dict(),
            "fit_metrics": self.fit_metrics,
        }

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.vmc_optimizer.load_state_dict(state["vmc_optimizer"])
        self.fit_metrics = state["fit_metrics"]

    # --- one step ---

    def update(self) -> dict:
        """One update of the fit, or of the fine-tuning after ``config.steps``; returns its history row."""
        start = time.perf_counter()
        row = self.fit_update() if self.step < self.config.steps else self.finetune_update()
        return {**row, "time_s": self.wall_time_s + time.perf_counter() - start}

    def fit_update(self) -> dict:
        config, step = self.config, self.step + 1
        lr = self.laid_out(config).lr_at(step)
        result = fit_step(
            self.student,
            self.teacher_model,
            self.optimizer,
            self.generator,
            n_samples=config.n_samples,
            lr=lr,
            step=step,
        )
        self.step = step
        row = {
            "step": step,
            "phase": "fit",
            "loss": result.loss,
            "mean_abs_dlog_psi": result.mean_abs_dlog_psi,
            "lr": lr,
            "grad_norm": result.grad_norm,
            "code_usage": self.student.code_usage(),
        }
        if config.energy_every and (step % config.energy_every == 0 or step == config.steps):
            row.update(self.monitor_energy())
        if step == config.steps and config.finetune.steps:  # what the fine-tuning starts from
            self.fit_metrics = exact_metrics(self.hamiltonian, self.student, self.reference)
        return row

    def finetune_update(self) -> dict:
        step = self.step + 1
        self.student.train()  # straight-through derivatives of the codes (eq. 8)
        finetune = self.laid_out(self.config.finetune, "finetune.steps")
        config = self.config
        context = VMCContext(
            self.hamiltonian, self.vmc_optimizer, self.generator, config.chunk_size, "dedup", offset=config.steps
        )
        result = vmc_step(self.student, finetune, context, step)
        self.step = step
        energy = energy_metrics(result.stats, self.hamiltonian.n_sites, self.reference)
        energy.pop("variance")
        return {"step": step, "phase": "vmc", "lr": result.lr, "grad_norm": result.grad_norm, **energy}

    def monitor_energy(self) -> dict:
        """Student energy on ``energy_samples`` of its own samples (the monitor's stream, not the trajectory's)."""
        self.student.eval()
        config = self.config
        energy = sampled_energy(
            self.hamiltonian, self.student, self.monitor, config.energy_samples, config.chunk_size, "dedup"
        )
        metrics = energy_metrics(energy.stats, self.hamiltonian.n_sites, self.reference)
        return {key: metrics[key] for key in ("energy_per_site", "energy_error", "rel_error", "v_score")}

    # --- evaluation and outputs ---

    def evaluate(self) -> dict:
        """Student energy (dedup engine) on fresh student samples, the dense/dedup check, fidelity diagnostics."""
        config, student = self.config, self.student.eval()
        energy = sampled_energy(
            self.hamiltonian,
            student,
            self.generator,
            config.eval_samples,
            config.chunk_size,
            "dedup",
            keep=config.check_samples,
        )
        # float64 dense forwards of (chunk x connections) configurations are the memory peak: small chunks
        check = dedup_check(self.hamiltonian, student, energy.kept, min(config.chunk_size, 64))
        if not check["mean_rel_diff"] <= DEDUP_TOLERANCE:
            raise TrainingError(
                f"dense and dedup local energies of the student disagree: relative difference of the means "
                f"{check['mean_rel_diff']:.2e} > {DEDUP_TOLERANCE:g} on {config.check_samples} samples"
            )
        teacher_energy = self.teacher.energy_per_site
        return {
            **energy_metrics(energy.stats, self.hamiltonian.n_sites, self.reference),
            "reference_per_site": self.reference,
            "energy": energy.stats.mean,
            "eval_samples": config.eval_samples,
            "eval_eloc_seconds": energy.eloc_seconds,
            "dedup_check_max_rel_diff": check["max_rel_diff"],
            "dedup_check_mean_rel_diff": check["mean_rel_diff"],
            "dedup_check_samples": config.check_samples,
            **fidelity(student, self.teacher_model, self.generator, config.fidelity_samples, config.chunk_size),
            "teacher_energy_per_site": teacher_energy,
            "teacher_rel_error": None if teacher_energy is None else relative_error(teacher_energy, self.reference),
            **exact_metrics(self.hamiltonian, student, self.reference),  # small lattices: no sampling error
        }

    def summary(self, metrics: dict) -> dict:
        fit_rows = [row for row in self.history if row["phase"] == "fit"]
        teacher = self.teacher.model
        return {
            "fit_steps": self.config.steps,
            "finetune_steps": self.config.finetune.steps,
            **{f"fit_{key}": value for key, value in self.fit_metrics.items()},
            "bits": self.bits,
            "heads": self.vq_config.heads,
            "codes": self.vq_config.codes,
            "final_loss": float(fit_rows[-1]["loss"]) if fit_rows else None,
            "student_d_model": self.student_config.d_model,
            "student_n_heads": self.student_config.n_heads,
            "student_n_blocks": self.student_config.n_blocks,
            "student_d_ff": self.student_config.d_ff,
            "teacher_d_model": teacher.config.d_model,
            "teacher_n_params": teacher.n_params,
            "teacher_steps": self.teacher.info.get("steps"),
            "teacher_model": str(self.teacher.path),
            "teacher_digest": self.teacher.digest,
            "copied_from_teacher": len(self.copied),
            "student_tensors": len(self.student.state_dict()),
            "dtype": self.config.dtype,
        }

    def output_model(self, metrics: dict):
        info = {
            **system_info(self.hamiltonian),
            "steps": self.step,
            "bits": self.bits,
            "energy_per_site": metrics["energy_per_site"],
            "teacher_digest": self.teacher.digest,
        }
        return self.student, info

    def cost_estimates(self) -> list[str]:
        config, rate = self.config, measure_rate(self.student)
        fit_left = max(0, config.steps - self.step)
        finetune_left = self.total_steps - max(self.step, config.steps)
        lines = []
        if fit_left:
            flops = fit_step_flops(self.student, self.teacher_model, config.n_samples)
            lines.append(estimate_line(f"{self.label} fit", flops, rate, fit_left))
        if finetune_left:
            flops = vmc_step_flops(self.student, self.hamiltonian, config.finetune.n_samples)
            lines.append(estimate_line(f"{self.label} fine-tuning", flops, rate, finetune_left))
        return lines

    def postfix(self, row: dict) -> str:
        if row["phase"] == "fit":
            return f"loss={row['loss']:.2e}"
        return f"vmc E/N={row['energy_per_site']:.6f} rel={row['rel_error']:.1e}"
