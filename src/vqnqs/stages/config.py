"""Every knob of the stages, each declared once (:func:`vqnqs.knobs.knob`), composed where knobs recur.

    ScheduleConfig   steps and the learning-rate schedule      (vmc.config; train, distill's fit)
    VMCConfig        + samples per step, optimiser, SR shift and momentum  (vmc.config; train)
    ModelShape       the transformer's shape apart from the lattice  (models; train; the model's
                     TransformerConfig is a ModelShape on a lattice)
    CodebookConfig   codes, their initialisation and upkeep     (models; the model's VQConfig adds heads)
    QuantizerConfig  = CodebookConfig whose codes give whole bits  (train's model 'vq', distill's student)
    ExecutionConfig  seed, device, CPU threads                   (train, distill, profile)
    RunConfig        + precision, memory chunks, checkpoints, evaluation samples  (train, distill)
    TrainConfig      = VMCConfig + ModelShape + QuantizerConfig + RunConfig + the local-energy engine (flat:
                     ``train: {d_model: 32, steps: ...}``)
    StudentShape     ModelShape's knobs, each None = the teacher's   (distill)
    FinetuneConfig   = VMCConfig with distill's defaults            (distill's nested ``finetune`` section)
    DistillConfig    = ScheduleConfig (the L2 fit) + QuantizerConfig + StudentShape + ``finetune`` +
                       evaluation + RunConfig
    ProfileConfig    = ExecutionConfig + the profile stage's batches, timing and timing devices

The params file's ``train``, ``distill`` and ``profiling`` sections are these classes' fields
(``params.schema.json`` is generated from them: :mod:`vqnqs.schema`). Measured effects of the defaults
are in the README, not here.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from vqnqs.knobs import AT_LEAST_TWO, Config, knob, knobs_of, nested
from vqnqs.models import TransformerConfig, VQConfig
from vqnqs.models.transformer import ModelShape
from vqnqs.models.vq import CodebookConfig, vq_shape_from_bits
from vqnqs.physics.exact import ground_state_sector
from vqnqs.physics.hamiltonian import Hamiltonian
from vqnqs.vmc.config import ScheduleConfig, VMCConfig
from vqnqs.vmc.log_psi import ENGINES

DEVICES = ("auto", "cpu", "cuda")
SEED_MAX = 2**63 - 2  # largest seed whose seed + 1 torch.Generator.manual_seed still takes
# A static bound on ``threads`` for the schema: 4 threads per CPU of a 256-CPU node; torch's pool of 10^5
# threads runs out of memory and crashes.
THREADS_MAX = 1024
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class ExecutionConfig(Config):
    """Where a stage runs and from which seed (train, distill, profile)."""

    # Seed of the random streams: parameter initialisation and samplers (the distiller's monitor stream uses
    # seed + 1; the profile's batch i seed + i). torch takes 64 bits.
    seed: int = knob(0, minimum=0, maximum=SEED_MAX)
    # Where the network runs (and the profile draws samples and counts FLOPs): 'auto' (CUDA when available) |
    # 'cpu' | 'cuda'.
    device: str = knob("auto", choices=DEVICES)
    # torch CPU threads; None leaves torch's default. At most THREADS_MAX here, and at the start of a stage
    # at most 4 per CPU of the machine (check_threads).
    threads: int | None = knob(None, minimum=1, maximum=THREADS_MAX)


@dataclass(frozen=True)
class RunConfig(ExecutionConfig):
    # Precision of the network: 'float32' | 'float64' (local energies and SR solves are always float64).
    dtype: str = knob("float32", choices=tuple(DTYPES))
    # Samples per batch in local energies, per-sample gradients and evaluations (memory bound).
    chunk_size: int = knob(1024, minimum=1)
    # Write checkpoint.pt and history.csv every this many steps (and at the last step).
    checkpoint_every: int = knob(100, minimum=1)
    # Fresh exact samples for the final energy estimate.
    eval_samples: int = knob(2**15, minimum=2, why=AT_LEAST_TWO)


@dataclass(frozen=True)
class QuantizerConfig(CodebookConfig):
    """The codebooks of a VQ-NQS model (distill's student; train's model 'vq'); bits come separately."""

    def check(self) -> None:
        super().check()
        if self.codes < 2 or self.codes & (self.codes - 1):
            raise ValueError(f"codes {self.codes}: must be a power of two >= 2 (bits = heads * log2(codes))")

    def vq_config(self, bits: int) -> VQConfig:
        """The quantiser for ``bits`` per location; ``ValueError`` naming bits if none fits."""
        return VQConfig.from_bits(bits, **knobs_of(self, CodebookConfig))


MODELS = ("baseline", "vq")


@dataclass(frozen=True)
class TrainConfig(RunConfig, QuantizerConfig, ModelShape, VMCConfig):
    """Everything a training run depends on; ``train`` in params.yaml and ``--set`` fill it.

    The knobs of the VMC run, the model's shape, its codebooks and the run side by side (the ``train``
    section is flat: ``train: {d_model: 32, steps: 1800}``), hence one base class each.
    """

    section = "train"
    # Local-energy engine (vqnqs.vmc.log_psi), each exactly the dense forward reorganised: 'dedup' (attention
    # once per distinct prefix), 'incremental' (each connected configuration from its sample's cached forward),
    # 'dense', or 'dedup_no_prefix' (the paper's engine).
    engine: str = knob("dedup", choices=ENGINES)
    # Wave function: 'baseline' (the transformer) | 'vq' (VQ-NQS: a quantiser of `bits` bits per location in
    # every full block, trained by VMC through the straight-through estimator, codebooks kept up by the step).
    model: str = knob("baseline", choices=MODELS)
    # Bits per location of model 'vq' (heads x log2(codes)); required by it, refused for the baseline.
    bits: int | None = knob(None, minimum=1)
    # Sample only the ground state's Sz sector where H conserves Sz (Heisenberg: N/2 down spins).
    sz_sector: bool = knob(True)

    @classmethod
    def sections(cls, given: dict) -> tuple[str, ...]:
        """``train``, and for a VQ-NQS trained by VMC (``model=vq`` given) ``train_vq`` merged over it."""
        return ("train", "train_vq") if given.get("model") == "vq" else ("train",)

    def check(self) -> None:
        super().check()
        if self.model == "vq" and self.bits is None:
            raise ValueError("bits null: model 'vq' needs the bits per location (heads x log2(codes))")
        if self.model == "baseline" and self.bits is not None:
            raise ValueError(f"bits {self.bits}: only model 'vq' is quantised (set model=vq, or bits=null)")
        if self.bits is not None:
            check_bits(self.bits, self.codes, self.d_model)

    def transformer_config(self, hamiltonian: Hamiltonian) -> TransformerConfig:
        """The transformer of this shape on the lattice of ``hamiltonian``; ``ValueError`` naming the field if
        the shape does not fit."""
        n_down = ground_state_sector(hamiltonian) if self.sz_sector else None
        return TransformerConfig.of(self, hamiltonian.lattice.shape, n_down)


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


@dataclass(frozen=True)
class StudentShape(ModelShape):
    """The distilled student's shape: ModelShape's knobs (their constraints declared there), each None = the
    teacher's, except that d_ff None is 4 * d_model where d_model differs from the teacher's."""

    patch: int | None = None
    d_model: int | None = None  # a wider student than the teacher gets fresh weights wherever shapes differ
    n_heads: int | None = None
    # Full transformer blocks (each gets a quantiser; the attention-only half-block never does).
    n_blocks: int | None = knob(None, minimum=1, why="must be >= 1 (a quantiser sits in each full block) or null")
    d_ff: int | None = None
    phase_blocks: int | None = None

    def student_config(self, teacher: TransformerConfig) -> TransformerConfig:
        """The student: the teacher's lattice and Sz sector, its shape with this config's overrides."""
        given = {name: value for name, value in knobs_of(self, ModelShape).items() if value is not None}
        if "d_ff" not in given and given.get("d_model", teacher.d_model) != teacher.d_model:
            given["d_ff"] = 4 * given["d_model"]
        return dataclasses.replace(teacher, **given)


@dataclass(frozen=True)
class FinetuneConfig(VMCConfig):
    """Distill's VMC fine-tuning of the student after the fit, on its own energy: a VMCConfig with these
    defaults (``distill: {finetune: {steps: 300}}``, ``--set finetune.steps=300``)."""

    # Updates after the fit's ``steps``; 0: no fine-tuning.
    steps: int = knob(0, minimum=0)
    n_samples: int = 4096
    lr: float = 0.01
    lr_final: float = 0.001

    def check(self) -> None:
        if self.steps:  # no updates, no schedule to check
            super().check()


@dataclass(frozen=True)
class DistillConfig(RunConfig, QuantizerConfig, StudentShape, ScheduleConfig):
    """Everything a distillation run depends on (besides the teacher and ``bits``); ``distill`` in params.yaml."""

    section = "distill"
    # --- the L2 fit (Adam): ScheduleConfig's knobs with these defaults ---
    steps: int = 3000
    lr: float = 2e-3  # larger rates knock the copied teacher weights about
    lr_final: float = 1e-5
    warmup_steps: int = 50  # lets Adam's moments settle first
    # Fresh exact teacher samples per fit step (the L2 loss is their mean).
    n_samples: int = knob(512, minimum=1)
    # Peak learning rate of the codebooks (fresh, unlike the copied teacher weights); None: lr. Same schedule.
    codebook_lr: float | None = knob(None, exclusive_minimum=0)
    # --- the VMC fine-tuning of the student after the fit ---
    finetune: FinetuneConfig = nested(FinetuneConfig)
    # --- evaluation (eval_samples: exact student samples for the final energy, through the dedup engine) ---
    eval_samples: int = 2**14
    # Of those, samples whose dense and dedup local energies are compared (float64).
    check_samples: int = knob(256, minimum=1)
    # Fresh teacher samples for the final fidelity diagnostics (L2, mean |Δ log psi|, fidelity).
    fidelity_samples: int = knob(4096, minimum=1)
    # Every this many steps, the student energy on energy_samples samples goes to history.csv; 0: never.
    energy_every: int = knob(100, minimum=0)
    # Student samples for that monitoring energy.
    energy_samples: int = knob(256, minimum=2, why=AT_LEAST_TWO)
    chunk_size: int = 256

    def check(self) -> None:
        super().check()
        if self.check_samples > self.eval_samples:
            raise ValueError(f"check_samples {self.check_samples}: must be <= eval_samples={self.eval_samples}")

    @property
    def total_steps(self) -> int:
        """Updates of the whole run: the fit, then the fine-tuning."""
        return self.steps + self.finetune.steps


def check_bits(bits: int, codes: int, d_model: int) -> tuple[int, int]:
    """``(heads, codes)`` for ``bits``; ``ValueError`` (starting "bits B:") unless heads divides d_model."""
    heads, codes = vq_shape_from_bits(bits, codes)
    if d_model % heads:
        raise ValueError(f"bits {bits}: gives {heads} heads of {codes} codes, which must divide d_model={d_model}")
    return heads, codes


TIMING_DEVICES_SCHEMA = {
    "oneOf": [{"enum": ["auto", "cpu", "cuda"]}, {"type": "array", "items": {"enum": ["cpu", "cuda"]}, "minItems": 1}]
}


@dataclass(frozen=True)
class ProfileConfig(ExecutionConfig):
    """Settings of the profile stage (``profiling`` in params.yaml, then ``--set KEY=VALUE``)."""

    section = "profiling"
    # Samples per batch; the local energy of a batch is ONE dedup call (unless chunk_size is smaller).
    batch: int = knob(512, minimum=1)
    # Batches whose FLOPs are averaged (each drawn from the profiled model with seed + index).
    n_batches: int = knob(4, minimum=1)
    # Timed rounds per path (median reported) after `warmup` untimed ones; 0 repeats: no timing.
    repeats: int = knob(5, minimum=0)
    warmup: int = knob(1, minimum=0)
    # Samples per local-energy chunk (None: the whole batch), as in local_energy(chunk_size=...).
    chunk_size: int | None = knob(None, minimum=1)
    # Count the dense path on this many samples per batch, scaled by the batch's connected configurations
    # (the dense cost per configuration is fixed, so this is exact for the network's ops); None: all.
    dense_samples: int | None = knob(None, minimum=1)
    # Add the elementwise ops (LayerNorm, GELU, softmax, adds...) to the matmul FLOPs.
    elementwise: bool = knob(True)
    # Where both paths are timed: "auto" (cpu, and cuda when available), one device, or a list such as
    # [cpu, cuda]. The first is reported in time_dense_s / time_dedup_s; each gets time_*_s_<device> columns.
    timing_devices: tuple[str, ...] | str = knob("auto", schema=TIMING_DEVICES_SCHEMA, why="auto, cpu, cuda or a list")

    def check(self) -> None:
        devices = self.timing_devices
        if devices != "auto":  # one device or a list of them -> a tuple
            object.__setattr__(self, "timing_devices", (devices,) if isinstance(devices, str) else tuple(devices))

    def to_dict(self) -> dict:
        record = dataclasses.asdict(self)
        if isinstance(record["timing_devices"], tuple):
            record["timing_devices"] = list(record["timing_devices"])
        return record

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device)

    def resolved_timing_devices(self) -> list[torch.device]:
        if self.repeats == 0:
            return []
        if self.timing_devices == "auto":
            return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
        if "cuda" in self.timing_devices and not torch.cuda.is_available():
            raise ValueError("timing_devices: cuda requested but no CUDA device available")
        return [torch.device(d) for d in self.timing_devices]


def check_threads(threads: int | None) -> None:
    """More threads than 4 per CPU of this machine only oversubscribe it: a ``ValueError`` naming threads."""
    if threads is not None and threads > 4 * (cpus := os.cpu_count() or 1):
        raise ValueError(f"threads {threads}: more than 4 per CPU of this machine ({cpus} CPUs)")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a device is a ``ValueError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda': no CUDA device is available")
    return torch.device(name)


STAGE_CONFIGS = (TrainConfig, DistillConfig, ProfileConfig)
