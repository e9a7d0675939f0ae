"""Distillation of a trained baseline transformer (the teacher) into a VQ-NQS student (paper, sec. 3).

The student is ``make_vq_model(student shape, VQConfig.from_bits(bits, codes))`` on the teacher's lattice,
patch and Sz sector, started from the teacher (:func:`vqnqs.models.from_teacher`: every weight whose name
and shape match is copied, the rest — codebooks, and everything of a wider student — freshly initialised).
One step (``step`` counts completed parameter updates, 1-based)::

    s      = teacher.sample(n_samples)                              (Ns, N)  fresh exact teacher samples
    loss   = mean_s |log psi_student(s) - log psi_teacher(s)|^2     teacher under no_grad, student in
                                                                    train mode (codebook data init,
                                                                    dead-code replacement, STE, eq. 8)
    θ      <- Adam(θ, d loss / dθ, lr(step))

Optional VMC fine-tuning (``finetune_steps > 0``): after the fit, the student is trained on its OWN energy,
as the teacher was (:func:`vqnqs.vmc.trainer.vmc_step`: exact student samples, local energies through the
dedup engine, minSR with SPRING momentum), its codes differentiated with the straight-through estimator of
eq. 8. The fit copies the teacher's amplitudes, not its energy: small log-amplitude errors between
neighbouring configurations cost much energy (4x4, 6 bits: fidelity 0.9995 at 3.2e-4 relative error). The
fine-tuning takes that student to 6.9e-5, below its teacher's 9.4e-5. ``step`` runs on through both phases.

Evaluation (after the last step): the student is normalised and autoregressive, so it is sampled exactly
(``eval_samples``) and its energy estimated with local energies through the dedup engine. On a sub-batch
of ``check_samples`` of those samples the dense and dedup local energies of the student (in float64) are
compared: they must agree (the project's core invariant), else :class:`DistillationError`. On fresh
TEACHER samples: the L2 distance, ``mean |Δ log psi|`` and the fidelity estimate
``F = |<psi_t|psi_s>|^2 = (mean_{s ~ |psi_t|^2} psi_s(s) / psi_t(s))^2``.

Out dir (all written atomically)::

    checkpoint.pt   every ``checkpoint_every`` steps and at the end: resume continues the same trajectory
    history.csv     per-step loss, lr, ... and every ``energy_every`` steps a small-batch student energy
    metrics.json    :data:`METRICS_KEYS` and more (bits, heads, codes, fidelity, teacher energy, ...)
    model.pt        the VQ student (:func:`vqnqs.vmc.checkpoint.load_model` gives back a VQTransformer)

A run that finds ``checkpoint.pt`` in its out dir resumes from it; one written with other settings or
another teacher file is stale (the pipeline reran the stage): the run starts afresh, saying so. Another
bandwidth, system or device is refused (wrong out dir). With the same seed on CPU an interrupted and
resumed run ends with the same parameters as an uninterrupted one: the checkpoint holds the student
(codebooks and quantiser state included), the Adam state, every random generator (the global one drives
k-means++ and dead-code re-seeding), the history and the step.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vqnqs.config import check_field_types, config_from_mapping
from vqnqs.io import atomic_open, ensure_writable_dir, write_json
from vqnqs.models import (
    AutoregressiveTransformer,
    TransformerConfig,
    VQConfig,
    VQTransformer,
    from_teacher,
    make_vq_model,
)
from vqnqs.models.vq import DEFAULT_CODES, INIT_METHODS, vq_shape_from_bits
from vqnqs.physics.hamiltonian import Hamiltonian
from vqnqs.tracking import Run
from vqnqs.vmc.checkpoint import (
    CheckpointError,
    StaleCheckpoint,
    load_checkpoint,
    load_model,
    model_config_to_dict,
    save_checkpoint,
    save_model,
    vq_config_to_dict,
)
from vqnqs.vmc.enumeration import exact_metrics
from vqnqs.vmc.gradient import energy_statistics
from vqnqs.vmc.local_energy import local_energy
from vqnqs.vmc.optim import SCHEDULES, make_optimizer, scheduled
from vqnqs.vmc.trainer import DEVICES, DTYPES, TrainingError, resolve_device, run_steps, system_info, vmc_step

CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.pt"
TEACHER_MODEL_FILE = "model.pt"
TEACHER_METRICS_FILE = "metrics.json"

# Dense and dedup local energies of the student must agree to this relative difference of their means.
DEDUP_TOLERANCE = 1e-6
# SR diagonal shift and SPRING momentum of the fine-tuning: the training defaults (TrainConfig).
FINETUNE_DIAG_SHIFT = 1e-4
FINETUNE_MOMENTUM = 0.9

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
    "time_s",  # wall time since the start of distillation (summed over resumed invocations)
)
METRICS_KEYS = (
    "energy_per_site",
    "energy_error",
    "variance",
    "rel_error",
    "reference_per_site",
    "n_params",
    "steps",
    "wall_time_s",
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
# Settings that may differ between an interrupted run and its resumption (they leave the trajectory unchanged).
RESUME_MAY_CHANGE = (
    "checkpoint_every",
    "eval_samples",
    "check_samples",
    "fidelity_samples",
    "energy_every",
    "energy_samples",
    "threads",
)


class DistillationError(TrainingError):
    """Distillation cannot go on (non-finite loss or gradient), or the dense/dedup check failed (CLI exit 1)."""


@dataclass(frozen=True)
class DistillConfig:
    """Everything a distillation run depends on (besides the teacher and ``bits``); ``distill`` in params.yaml."""

    # --- optimisation ---
    # Adam updates of the student. 4x4 Heisenberg, 6 bits, from a teacher at 9.4e-5 (one CPU thread): 1000 steps
    # in 32 s reach an exact relative error of 1.7e-3 (fidelity 0.9965), 3000 steps in 102 s 6.8e-4 (0.9992).
    steps: int = 3000
    # Fresh exact teacher samples per step (the L2 loss is their mean).
    n_samples: int = 512
    # Peak Adam learning rate (after warmup). Larger rates knock the copied teacher weights about.
    lr: float = 2e-3
    # Learning rate at the last step, for the 'cosine' and 'exponential' schedules.
    lr_final: float = 1e-5
    # Shape of the decay from lr to lr_final: 'constant' | 'cosine' | 'exponential'.
    schedule: str = "cosine"
    # Steps of linear warmup from 0 to lr before the decay starts (lets Adam's moments settle first).
    warmup_steps: int = 50
    # Peak learning rate of the codebooks (fresh, unlike the copied teacher weights); None: lr. Same schedule.
    codebook_lr: float | None = None
    # --- quantiser ---
    # Codes per codebook (head): bits = heads * log2(codes), so 64 codes give 6 bits per head.
    codes: int = DEFAULT_CODES
    # Data-driven codebook initialisation on the first training batch: 'kmeans++' | 'rows' | 'none'.
    vq_init: str = "kmeans++"
    # Re-seed a code unused for this many steps with a row of the current batch; 0 disables.
    dead_after: int = 100
    # --- student shape (None: the teacher's) ---
    # Residual-stream width; a wider student than the teacher gets fresh weights wherever shapes differ.
    d_model: int | None = None
    # Attention heads (must divide d_model).
    n_heads: int | None = None
    # Full transformer blocks (each gets a quantiser; the attention-only half-block never does).
    n_blocks: int | None = None
    # Feed-forward width; None: the teacher's if d_model is the teacher's, else 4 * d_model.
    d_ff: int | None = None
    # --- VMC fine-tuning of the student after the fit (module docstring) ---
    # SR updates on the student's own energy after the ``steps`` fit updates; 0: none. 4x4 Heisenberg, 6 bits,
    # after a 10000-step fit (exact relative error 3.2e-4), 1500 updates on one CPU thread reach 6.9e-5 in
    # 60 min (teacher: 9.4e-5).
    finetune_steps: int = 0
    # Exact student samples per fine-tuning update: the knob that buys accuracy. Same 4x4 run, 1500 updates:
    # 1024 samples 1.6e-4 (12 min), 2048 1.1e-4 (25 min), 4096 6.9e-5 (60 min); 2048 with 3000 updates 1.0e-4.
    finetune_samples: int = 4096
    # Peak SR learning rate of the fine-tuning (cosine decay to finetune_lr_final over finetune_steps).
    finetune_lr: float = 0.01
    # SR learning rate at the last fine-tuning update.
    finetune_lr_final: float = 0.001
    # --- evaluation ---
    # Exact student samples for the final energy (local energies through the dedup engine).
    eval_samples: int = 2**14
    # Of those, samples whose dense and dedup local energies are compared (float64).
    check_samples: int = 256
    # Fresh teacher samples for the final fidelity diagnostics (L2, mean |Δ log psi|, fidelity).
    fidelity_samples: int = 4096
    # Every this many steps, the student energy on energy_samples samples goes to history.csv; 0: never.
    energy_every: int = 100
    # Student samples for that monitoring energy.
    energy_samples: int = 256
    # --- numerics and bookkeeping ---
    # Samples per batch in local energies and evaluations (memory bound).
    chunk_size: int = 256
    # Precision of the student (and of the teacher's log-amplitudes): 'float32' | 'float64'.
    dtype: str = "float32"
    # Seed of the student's fresh weights, the samplers and the quantiser's random choices.
    seed: int = 0
    # 'auto' (CUDA when available) | 'cpu' | 'cuda'.
    device: str = "auto"
    # Write checkpoint.pt and history.csv every this many steps (and at the last step).
    checkpoint_every: int = 100
    # torch CPU threads; None leaves torch's default.
    threads: int | None = None

    def __post_init__(self) -> None:
        check_field_types(self)
        choices = {"schedule": SCHEDULES, "vq_init": INIT_METHODS, "dtype": tuple(DTYPES), "device": DEVICES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r}: expected one of {', '.join(allowed)}")
        if self.codebook_lr is not None and not self.codebook_lr > 0:
            raise ValueError(f"codebook_lr {self.codebook_lr}: must be positive or null")
        positive = ("steps", "n_samples", "lr", "chunk_size", "checkpoint_every", "eval_samples", "check_samples")
        positive += ("fidelity_samples", "energy_samples", "finetune_lr")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} {getattr(self, name)}: must be positive")
        if self.codes < 2 or self.codes & (self.codes - 1):
            raise ValueError(f"codes {self.codes}: must be a power of two >= 2 (bits = heads * log2(codes))")
        for name in ("d_model", "n_heads", "d_ff", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)}: must be a positive integer or null")
        if self.n_blocks is not None and self.n_blocks < 1:
            raise ValueError(f"n_blocks {self.n_blocks}: must be >= 1 (a quantiser sits in each full block) or null")
        if self.lr_final < 0 or (self.schedule == "exponential" and self.lr_final == 0):
            raise ValueError(f"lr_final {self.lr_final}: must be >= 0 (> 0 for the exponential schedule)")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps {self.warmup_steps}: must lie in [0, steps={self.steps})")
        for name in ("dead_after", "energy_every", "seed", "finetune_steps", "finetune_lr_final"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)}: must be >= 0")
        if self.check_samples > self.eval_samples:
            raise ValueError(f"check_samples {self.check_samples}: must be <= eval_samples={self.eval_samples}")
        for name in ("eval_samples", "energy_samples", "finetune_samples"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} {getattr(self, name)}: need at least 2 samples for a variance")

    @classmethod
    def from_mapping(cls, mapping: dict) -> DistillConfig:
        """Build from a params-file mapping; an unknown key raises ``ValueError`` naming it."""
        return config_from_mapping(cls, mapping, "distill")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def vq_config(self, bits: int) -> VQConfig:
        """The student's quantiser for ``bits`` per location; ``ValueError`` naming bits if none fits."""
        return VQConfig.from_bits(bits, self.codes, init=self.vq_init, dead_after=self.dead_after)

    def student_config(self, teacher: TransformerConfig) -> TransformerConfig:
        """The student's shape: the teacher's lattice, patch and Sz sector, with this config's overrides."""
        d_model = teacher.d_model if self.d_model is None else self.d_model
        d_ff = self.d_ff
        if d_ff is None:
            d_ff = teacher.d_ff if d_model == teacher.d_model else 4 * d_model
        return dataclasses.replace(
            teacher,
            d_model=d_model,
            n_heads=teacher.n_heads if self.n_heads is None else self.n_heads,
            n_blocks=teacher.n_blocks if self.n_blocks is None else self.n_blocks,
            d_ff=d_ff,
        )


def check_bits(bits: int, codes: int, d_model: int) -> tuple[int, int]:
    """``(heads, codes)`` for ``bits``; ``ValueError`` (starting "bits B:") unless heads divides d_model."""
    heads, codes = vq_shape_from_bits(bits, codes)
    if d_model % heads:
        raise ValueError(f"bits {bits}: gives {heads} heads of {codes} codes, which must divide d_model={d_model}")
    return heads, codes


# --- the teacher ----------------------------------------------------------------------------------


@dataclass
class Teacher:
    """A trained baseline model from a train stage out dir, with what its files say about it."""

    model: AutoregressiveTransformer
    info: dict  # model.pt's info (system, steps, energy_per_site)
    metrics: dict  # metrics.json ({} where absent)
    path: Path  # model.pt
    digest: str  # sha256 of model.pt's bytes (a resumed distillation must use the same teacher)

    @property
    def energy_per_site(self) -> float | None:
        value = self.metrics.get("energy_per_site", self.info.get("energy_per_site"))
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def load_teacher(directory: str | Path, hamiltonian: Hamiltonian | None = None) -> Teacher:
    """The teacher of a train stage out dir (``model.pt``, ``metrics.json``); raises ``CheckpointError``.

    With ``hamiltonian``, the teacher must have been trained for that system (size, boundary, couplings).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"teacher directory {directory}: not found")
    path = directory / TEACHER_MODEL_FILE
    model, info = load_model(path)  # CheckpointError naming the file: missing, truncated, foreign, ...
    if isinstance(model, VQTransformer):
        raise CheckpointError(f"teacher {path}: holds a VQ model; the teacher must be a baseline transformer")
    if hamiltonian is not None:
        for key, value in system_info(hamiltonian).items():
            if key in info and info[key] != value:
                raise CheckpointError(f"teacher {path}: trained for {key} {info[key]!r}, this run has {value!r}")
        if tuple(model.config.lattice_shape) != tuple(hamiltonian.lattice.shape):
            raise CheckpointError(
                f"teacher {path}: lattice {model.config.lattice_shape}, this run has {hamiltonian.lattice.shape}"
            )
    metrics: dict = {}
    metrics_path = directory / TEACHER_METRICS_FILE
    if metrics_path.exists():
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"teacher metrics {metrics_path}: cannot read a JSON record ({err})") from err
        if not isinstance(metrics, dict):
            raise CheckpointError(f"teacher metrics {metrics_path}: expected a JSON object")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Teacher(model=model, info=info, metrics=metrics, path=path, digest=digest)


# --- diagnostics ----------------------------------------------------------------------------------


def code_usage(model: VQTransformer) -> float:
    """Fraction of all codes (every quantiser) used by the last training batch (``unused_steps == 0``)."""
    used = [(q.unused_steps == 0).double().mean() for q in model.quantizers]
    return float(torch.stack(used).mean()) if used else 1.0


def dedup_check(hamiltonian: Hamiltonian, model: AutoregressiveTransformer, s: torch.Tensor, chunk_size: int) -> dict:
    """Dense vs dedup local energies of ``model`` (a float64 copy) on ``s (B, N)``.

    Returns ``max_rel_diff = max |E_dense - E_dedup| / mean |E_dense|`` (per sample) and
    ``mean_rel_diff = |mean E_dense - mean E_dedup| / |mean E_dense|``.
    """
    model64 = copy.deepcopy(model).double().eval()
    dense = local_energy(hamiltonian, model64, s, chunk_size=chunk_size, dedup=False)
    dedup = local_energy(hamiltonian, model64, s, chunk_size=chunk_size, dedup=True)
    scale = dense.abs().mean().clamp_min(1e-300)
    return {
        "max_rel_diff": float((dense - dedup).abs().max() / scale),
        "mean_rel_diff": float((dense.mean() - dedup.mean()).abs() / dense.mean().abs().clamp_min(1e-300)),
    }


# --- the loop -------------------------------------------------------------------------------------


class Distiller:
    """Teacher, student, optimiser and samplers of one distillation run, restorable from ``out_dir``."""

    def __init__(
        self,
        hamiltonian: Hamiltonian,
        teacher: Teacher,
        config: DistillConfig,
        bits: int,
        out_dir: str | Path,
        reference: float,
    ) -> None:
        self.hamiltonian = hamiltonian
        self.teacher = teacher
        self.config = config
        self.bits = bits
        self.out_dir = ensure_writable_dir(out_dir)
        self.reference = reference
        self.device = resolve_device(config.device)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        dtype = DTYPES[config.dtype]
        self.student_config = config.student_config(teacher.model.config)
        check_bits(bits, config.codes, self.student_config.d_model)
        self.vq_config = config.vq_config(bits)
        self.teacher_model = copy.deepcopy(teacher.model).to(self.device, dtype).eval()
        for p in self.teacher_model.parameters():
            p.requires_grad_(False)
        torch.manual_seed(config.seed)  # the student's fresh weights (codebooks; unmatched shapes)
        self.student = make_vq_model(self.student_config, self.vq_config).to(self.device, dtype)
        self.copied = from_teacher(self.student, self.teacher_model)
        self.params = list(self.student.parameters())
        codebooks = [q.codebook for q in self.student.quantizers]
        others = [p for p in self.params if all(p is not c for c in codebooks)]
        groups = [{"params": others, "lr_scale": 1.0}]
        groups.append({"params": codebooks, "lr_scale": (config.codebook_lr or config.lr) / config.lr})
        self.optimizer = make_optimizer("adam", groups, config.lr)
        self.vmc_optimizer = make_optimizer("sr", self.params, config.finetune_lr)  # the fine-tuning's
        self.generator = torch.Generator(self.device).manual_seed(config.seed)  # teacher samples, then eval
        self.monitor = torch.Generator(self.device).manual_seed(config.seed + 1)  # history energies only
        self.step = 0
        self.wall_time_s = 0.0
        self.history: list[dict] = []
        self.fit_metrics: dict = {}  # exact energy of the student at the end of the fit, before fine-tuning

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_FILE

    @property
    def total_steps(self) -> int:
        """Updates of the whole run: the fit, then the fine-tuning."""
        return self.config.steps + self.config.finetune_steps

    # --- checkpoints ---

    def _identity(self) -> dict:
        """What a resumed run must share with the checkpoint besides the config."""
        return {
            "bits": self.bits,
            "vq_config": vq_config_to_dict(self.vq_config),
            "teacher_digest": self.teacher.digest,
        }

    def save(self) -> None:
        save_checkpoint(
            self.checkpoint_path,
            {
                "step": self.step,
                "wall_time_s": float(self.wall_time_s),
                "device": self.device.type,
                "system": system_info(self.hamiltonian),
                "model_config": model_config_to_dict(self.student_config),
                "train_config": self.config.to_dict(),
                "model": self.student.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "vmc_optimizer": self.vmc_optimizer.state_dict(),
                "fit_metrics": self.fit_metrics,
                "history": [dict(row) for row in self.history],  # history.csv is rewritten from this
                "rng": {
                    "torch": torch.get_rng_state(),
                    "sampler": self.generator.get_state(),
                    "monitor": self.monitor.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
                },
                "stage": "distill",
                **self._identity(),
            },
        )
        with atomic_open(self.out_dir / HISTORY_FILE) as handle:
            writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS)
            writer.writeheader()
            writer.writerows(self.history)

    def restore(self) -> None:
        """Continue from ``checkpoint.pt``: student, optimiser, random streams, step, history."""
        path = self.checkpoint_path
        state = load_checkpoint(path, map_location=self.device)
        if state.get("stage") != "distill":
            raise CheckpointError(f"checkpoint {path}: not a distillation checkpoint (use another --out-dir)")
        stored = state["train_config"]
        for key, value in self.config.to_dict().items():
            if key not in RESUME_MAY_CHANGE and stored.get(key) != value:
                raise StaleCheckpoint(
                    f"checkpoint {path}: written with {key}={stored.get(key)!r}, this run has {key}={value!r}"
                )
        expected = {**self._identity(), "system": system_info(self.hamiltonian), "device": self.device.type}
        for key, value in expected.items():
            if state.get(key) != value:
                what = "a different teacher model.pt" if key == "teacher_digest" else f"{key} {state.get(key)}"
                raise (StaleCheckpoint if key == "teacher_digest" else CheckpointError)(
                    f"checkpoint {path}: written for {what}, this run has {value} (or use --fresh)"
                )
        try:
            self.student.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.vmc_optimizer.load_state_dict(state["vmc_optimizer"])
            torch.set_rng_state(state["rng"]["torch"].cpu())
            self.generator.set_state(state["rng"]["sampler"].cpu())
            self.monitor.set_state(state["rng"]["monitor"].cpu())
            if self.device.type == "cuda":
                torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            reason = str(err).strip().splitlines()[0]
            raise CheckpointError(
                f"checkpoint {path}: does not fit this run's student or optimiser ({reason})"
            ) from err
        self.step = state["step"]
        self.wall_time_s = state["wall_time_s"]
        self.fit_metrics = state["fit_metrics"]
        self.history = [row for row in state.get("history", []) if int(row["step"]) <= self.step]

    # --- one step ---

    def update(self) -> dict:
        """One update of the fit, or of the fine-tuning after ``config.steps``; returns its history row."""
        return self.fit_update() if self.step < self.config.steps else self.finetune_update()

    def fit_update(self) -> dict:
        """Fresh teacher samples, the L2 loss, one Adam update; returns the history row of this step."""
        config, step = self.config, self.step + 1
        lr = scheduled(step, config.steps, config.lr, config.lr_final, config.schedule, config.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        start = time.perf_counter()
        with torch.no_grad():
            samples = self.teacher_model.sample(config.n_samples, generator=self.generator)  # (Ns, N)
            target = self.teacher_model.log_psi(samples)  # (Ns,)
        self.student.train()
        delta = self.student.log_psi(samples) - target  # (Ns,)
        loss = (delta**2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        grad_norm = torch.cat([g.reshape(-1) for g in grads]).norm().item() if grads else 0.0
        if not math.isfinite(loss.item()) or not math.isfinite(grad_norm):
            raise DistillationError(f"step {step}: the loss or its gradient is NaN or infinite")
        self.optimizer.step()
        self.step = step
        row = {
            "step": step,
            "phase": "fit",
            "loss": loss.item(),
            "mean_abs_dlog_psi": delta.detach().abs().mean().item(),
            "lr": lr,
            "grad_norm": grad_norm,
            "code_usage": code_usage(self.student),
            "energy_per_site": None,
            "energy_error": None,
            "rel_error": None,
        }
        if config.energy_every and (step % config.energy_every == 0 or step == config.steps):
            row.update(self.monitor_energy())
        if step == config.steps and config.finetune_steps:  # what the fine-tuning starts from
            self.fit_metrics = exact_metrics(self.hamiltonian, self.student, self.reference)
        row["time_s"] = self.wall_time_s + time.perf_counter() - start
        return row

    def finetune_update(self) -> dict:
        """One SR update of the student on its own energy (straight-through code derivatives, eq. 8)."""
        config, step = self.config, self.step + 1
        lr = scheduled(
            step - config.steps, config.finetune_steps, config.finetune_lr, config.finetune_lr_final, "cosine"
        )
        start = time.perf_counter()
        # Training mode: log_derivatives (under torch.func) takes the straight-through path of eq. 8 and
        # leaves the codebook state alone; sampling and the dedup engine are the same in either mode.
        self.student.train()
        result = vmc_step(
            self.student,
            self.hamiltonian,
            self.vmc_optimizer,
            self.generator,
            n_samples=config.finetune_samples,
            lr=lr,
            diag_shift=FINETUNE_DIAG_SHIFT,
            sr_momentum=FINETUNE_MOMENTUM,
            chunk_size=config.chunk_size,
            dedup=True,
            step=step,
        )
        self.step = step
        energy = result.energy_row(self.hamiltonian.n_sites, self.reference)
        return {
            "step": step,
            "phase": "vmc",
            "lr": lr,
            "grad_norm": result.grad_norm,
            **{key: energy[key] for key in ("energy_per_site", "energy_error", "rel_error")},
            "time_s": self.wall_time_s + time.perf_counter() - start,
        }

    @torch.no_grad()
    def monitor_energy(self) -> dict:
        """Student energy on ``energy_samples`` of its own samples (the monitor's stream, not the trajectory's)."""
        self.student.eval()
        samples = self.student.sample(self.config.energy_samples, generator=self.monitor)
        e_loc = local_energy(self.hamiltonian, self.student, samples, chunk_size=self.config.chunk_size, dedup=True)
        stats = energy_statistics(e_loc)
        energy = stats.mean / self.hamiltonian.n_sites
        return {
            "energy_per_site": energy,
            "energy_error": stats.error / self.hamiltonian.n_sites,
            "rel_error": abs(energy - self.reference) / abs(self.reference),
        }

    # --- evaluation ---

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Student energy (dedup engine) on fresh student samples, the dense/dedup check, fidelity diagnostics."""
        config, n_sites, student = self.config, self.hamiltonian.n_sites, self.student.eval()
        e_locs, check_batch, eloc_time = [], [], 0.0
        for start in range(0, config.eval_samples, config.chunk_size):
            n = min(config.chunk_size, config.eval_samples - start)
            samples = student.sample(n, generator=self.generator)  # (n, N)
            if start < config.check_samples:
                check_batch.append(samples[: config.check_samples - start])
            tick = time.perf_counter()
            e_locs.append(local_energy(self.hamiltonian, student, samples, chunk_size=config.chunk_size, dedup=True))
            eloc_time += time.perf_counter() - tick
        e_loc = torch.cat(e_locs)
        if not torch.isfinite(e_loc).all():
            raise DistillationError(f"evaluation: {int((~torch.isfinite(e_loc)).sum())} local energies are not finite")
        stats = energy_statistics(e_loc)
        # float64 dense forwards of (chunk x connections) configurations are the memory peak: small chunks
        check = dedup_check(self.hamiltonian, student, torch.cat(check_batch), min(config.chunk_size, 64))
        if not check["mean_rel_diff"] <= DEDUP_TOLERANCE:
            raise DistillationError(
                f"dense and dedup local energies of the student disagree: relative difference of the means "
                f"{check['mean_rel_diff']:.2e} > {DEDUP_TOLERANCE:g} on {config.check_samples} samples"
            )

        # Fidelity diagnostics on fresh teacher samples: Δ = log psi_s - log psi_t.
        deltas = []
        for start in range(0, config.fidelity_samples, config.chunk_size):
            n = min(config.chunk_size, config.fidelity_samples - start)
            samples = self.teacher_model.sample(n, generator=self.generator)
            deltas.append((student.log_psi(samples) - self.teacher_model.log_psi(samples)).double())
        delta = torch.cat(deltas)
        ratio = delta.exp()  # psi_s / psi_t; its mean under |psi_t|^2 is the overlap <psi_t|psi_s>
        overlap, overlap_error = ratio.mean().item(), (ratio.std() / math.sqrt(len(ratio))).item()

        energy = stats.mean / n_sites
        teacher_energy = self.teacher.energy_per_site
        return {
            "energy_per_site": energy,
            "energy_error": stats.error / n_sites,
            "variance": stats.variance,
            "rel_error": abs(energy - self.reference) / abs(self.reference),
            "reference_per_site": self.reference,
            "energy": stats.mean,
            "eval_samples": config.eval_samples,
            "eval_eloc_seconds": eloc_time,
            "dedup_check_max_rel_diff": check["max_rel_diff"],
            "dedup_check_mean_rel_diff": check["mean_rel_diff"],
            "dedup_check_samples": config.check_samples,
            "l2_dlog_psi": (delta**2).mean().item(),
            "mean_abs_dlog_psi": delta.abs().mean().item(),
            "max_abs_dlog_psi": delta.abs().max().item(),
            "fidelity": overlap**2,
            "fidelity_error": 2 * abs(overlap) * overlap_error,
            "fidelity_samples": config.fidelity_samples,
            "teacher_energy_per_site": teacher_energy,
            "teacher_rel_error": (
                abs(teacher_energy - self.reference) / abs(self.reference) if teacher_energy is not None else None
            ),
            **exact_metrics(self.hamiltonian, student, self.reference),  # small lattices: no sampling error
        }

    # --- the whole run ---

    def run(self, tracker: Run | None = None, resume: bool = True, progress: bool | None = None) -> dict:
        """Fit (and fine-tune) to ``total_steps`` (resuming from a checkpoint if any), evaluate, write outputs.

        ``progress``: show the tqdm bar (None: only on a terminal). Returns the metrics of metrics.json.
        """
        config = self.config
        if resume and self.checkpoint_path.exists():
            try:
                self.restore()
                print(
                    f"distill: resuming from step {self.step} of {self.total_steps} ({self.checkpoint_path})",
                    file=sys.stderr,
                )
            except StaleCheckpoint as stale:  # the pipeline reran this stage because its settings changed
                print(f"distill: {stale}; starting afresh", file=sys.stderr)

        def postfix(row: dict) -> str:
            if row["phase"] == "fit":
                return f"loss={row['loss']:.2e}"
            return f"vmc E/N={row['energy_per_site']:.6f} rel={row['rel_error']:.1e}"

        steps_run, distill_time = run_steps(self, f"distill {self.bits} bits", postfix, tracker, progress)

        eval_start = time.perf_counter()
        metrics = self.evaluate()
        eval_time = time.perf_counter() - eval_start
        self.wall_time_s += eval_time
        fit_rows = [row for row in self.history if row["phase"] == "fit"]
        last = fit_rows[-1] if fit_rows else {}
        teacher_config = self.teacher.model.config
        metrics.update(
            {
                "n_params": self.student.n_params,
                "steps": self.step,
                "fit_steps": config.steps,
                "finetune_steps": config.finetune_steps,
                **{f"fit_{key}": value for key, value in self.fit_metrics.items()},
                "wall_time_s": self.wall_time_s,
                "eval_time_s": eval_time,
                "seconds_per_step": distill_time / steps_run if steps_run else None,
                "bits": self.bits,
                "heads": self.vq_config.heads,
                "codes": self.vq_config.codes,
                "final_loss": float(last["loss"]) if last else None,
                "student_d_model": self.student_config.d_model,
                "student_n_heads": self.student_config.n_heads,
                "student_n_blocks": self.student_config.n_blocks,
                "student_d_ff": self.student_config.d_ff,
                "teacher_d_model": teacher_config.d_model,
                "teacher_n_params": self.teacher.model.n_params,
                "teacher_steps": self.teacher.info.get("steps"),
                "teacher_model": str(self.teacher.path),
                "teacher_digest": self.teacher.digest,
                "copied_from_teacher": len(self.copied),
                "student_tensors": len(self.student.state_dict()),
                "device": self.device.type,
                "dtype": config.dtype,
                "threads": torch.get_num_threads(),
                **system_info(self.hamiltonian),
            }
        )
        write_json(self.out_dir / METRICS_FILE, metrics)
        info = {
            **system_info(self.hamiltonian),
            "steps": self.step,
            "bits": self.bits,
            "energy_per_site": metrics["energy_per_site"],
            "teacher_digest": self.teacher.digest,
        }
        save_model(self.out_dir / MODEL_FILE, self.student, info)
        if tracker is not None:
            final = {
                f"final_{key}": metrics[key] for key in METRICS_KEYS if key not in ("steps", "bits", "heads", "codes")
            }
            tracker.log_metrics({k: v for k, v in final.items() if isinstance(v, (int, float))})
            tracker.flush()
            for name in (METRICS_FILE, HISTORY_FILE, CHECKPOINT_FILE, MODEL_FILE):
                tracker.log_artifact(self.out_dir / name)
        return metrics
