"""Every knob of the stages, each declared once (:func:`vqnqs.knobs.knob`), composed where knobs recur.

    ScheduleConfig   steps and the learning-rate schedule             (train, distill's fit)
    VMCConfig        + samples per step, optimiser, SR shift and momentum  (train; distill's fine-tuning)
    ModelShape       the transformer's shape on a given lattice        (train)
    RunConfig        precision, memory chunks, checkpoints, evaluation samples, seed, device, threads
    TrainConfig      = VMCConfig + ModelShape + RunConfig + the local-energy engine
    DistillConfig    = ScheduleConfig (the L2 fit) + quantiser + student shape + a VMCConfig for the
                       fine-tuning (its ``finetune_*`` knobs) + evaluation + RunConfig
    ProfileConfig    the profile stage's batches, timing and devices

The params file's ``train``, ``distill`` and ``profiling`` sections are these classes' fields
(``params.schema.json`` is generated from them: :mod:`vqnqs.schema`). Measured effects of the defaults
are in the README, not here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from vqnqs.knobs import AT_LEAST_TWO, knob
from vqnqs.models import TransformerConfig, VQConfig, default_patch
from vqnqs.models.vq import DEFAULT_CODES, INIT_METHODS, vq_shape_from_bits
from vqnqs.physics.exact import ground_state_sector
from vqnqs.physics.hamiltonian import Hamiltonian
from vqnqs.vmc.config import Config, ScheduleConfig, VMCConfig
from vqnqs.vmc.log_psi import ENGINES

DEVICES = ("auto", "cpu", "cuda")
SEED_MAX = 2**63 - 2  # largest seed whose seed + 1 torch.Generator.manual_seed still takes
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class ModelShape(Config):
    # Spins per token: K consecutive spins on a chain, p x p blocks on a square lattice. None: 2x2 on a
    # square lattice, K = 4 on a chain (2 or 1 where 4 does not divide N; models.default_patch).
    patch: int | None = knob(None, minimum=1)
    # Residual-stream width.
    d_model: int = knob(32, minimum=1)
    # Attention heads (must divide d_model).
    n_heads: int = knob(4, minimum=1)
    # Full transformer blocks (a final attention-only half-block always follows).
    n_blocks: int = knob(2, minimum=0)
    # Feed-forward width; None: 4 * d_model.
    d_ff: int | None = knob(None, minimum=1)
    # Sample only the ground state's Sz sector where H conserves Sz (Heisenberg: N/2 down spins).
    sz_sector: bool = knob(True)
    # Encoder blocks of the phase network phi(s) (bidirectional, pooled; same width and heads); 0: phi = 0, a
    # real wave function, enough where the signs are known (TFIM; Heisenberg with Marshall's sign rule).
    phase_blocks: int = knob(0, minimum=0)

    def transformer_config(self, hamiltonian: Hamiltonian) -> TransformerConfig:
        """The transformer for this lattice; ``ValueError`` naming the field if the shape does not fit."""
        shape = hamiltonian.lattice.shape
        return TransformerConfig(
            lattice_shape=shape,
            patch=default_patch(shape) if self.patch is None else self.patch,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_blocks=self.n_blocks,
            d_ff=self.d_ff,
            n_down=ground_state_sector(hamiltonian) if self.sz_sector else None,
            phase_blocks=self.phase_blocks,
        )


@dataclass(frozen=True)
class RunConfig(Config):
    # Precision of the network: 'float32' | 'float64' (local energies and SR solves are always float64).
    dtype: str = knob("float32", choices=tuple(DTYPES))
    # Samples per batch in local energies, per-sample gradients and evaluations (memory bound).
    chunk_size: int = knob(1024, minimum=1)
    # Write checkpoint.pt and history.csv every this many steps (and at the last step).
    checkpoint_every: int = knob(100, minimum=1)
    # Fresh exact samples for the final energy estimate.
    eval_samples: int = knob(2**15, minimum=2, why=AT_LEAST_TWO)
    # Seed of the parameter initialisation and of the samplers' random streams (torch takes 64 bits; the
    # distiller's monitor stream uses seed + 1).
    seed: int = knob(0, minimum=0, maximum=SEED_MAX)
    # 'auto' (CUDA when available) | 'cpu' | 'cuda'.
    device: str = knob("auto", choices=DEVICES)
    # torch CPU threads; None leaves torch's default.
    threads: int | None = knob(None, minimum=1)


@dataclass(frozen=True)
class QuantizerConfig(Config):
    """The codebooks of a VQ-NQS model (distill's student; train's model 'vq'); bits come separately."""

    # Codes per codebook (head): bits = heads * log2(codes), so 64 codes give 6 bits per head.
    codes: int = knob(DEFAULT_CODES, minimum=2)
    # Data-driven codebook initialisation on the first training batch: 'kmeans++' | 'rows' | 'none'.
    vq_init: str = knob("kmeans++", choices=INIT_METHODS)
    # Re-seed a code unused for this many steps with a row of the current batch; 0 disables.
    dead_after: int = knob(100, minimum=0)

    def check(self) -> None:
        super().check()
        if self.codes & (self.codes - 1):
            raise ValueError(f"codes {self.codes}: must be a power of two >= 2 (bits = heads * log2(codes))")

    def vq_config(self, bits: int) -> VQConfig:
        """The quantiser for ``bits`` per location; ``ValueError`` naming bits if none fits."""
        return VQConfig.from_bits(bits, self.codes, init=self.vq_init, dead_after=self.dead_after)


MODELS = ("baseline", "vq")


@dataclass(frozen=True)
class TrainConfig(RunConfig, QuantizerConfig, ModelShape, VMCConfig):
    """Everything a training run depends on; ``train`` in params.yaml and ``--set`` fill it."""

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
class DistillConfig(RunConfig, QuantizerConfig, ScheduleConfig):
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
    # --- student shape (None: the teacher's) ---
    # Residual-stream width; a wider student than the teacher gets fresh weights wherever shapes differ.
    d_model: int | None = knob(None, minimum=1)
    # Attention heads (must divide d_model).
    n_heads: int | None = knob(None, minimum=1)
    # Full transformer blocks (each gets a quantiser; the attention-only half-block never does).
    n_blocks: int | None = knob(None, minimum=1, why="must be >= 1 (a quantiser sits in each full block) or null")
    # Feed-forward width; None: the teacher's if d_model is the teacher's, else 4 * d_model.
    d_ff: int | None = knob(None, minimum=1)
    # --- VMC fine-tuning of the student after the fit: a VMCConfig (finetune_vmc) ---
    # SR updates on the student's own energy after the ``steps`` fit updates; 0: none.
    finetune_steps: int = knob(0, minimum=0)
    # Exact student samples per fine-tuning update.
    finetune_samples: int = knob(4096, minimum=2, why=AT_LEAST_TWO)
    # Peak SR learning rate of the fine-tuning (cosine decay to finetune_lr_final over finetune_steps).
    finetune_lr: float = knob(0.01, exclusive_minimum=0)
    # SR learning rate at the last fine-tuning update.
    finetune_lr_final: float = knob(0.001, minimum=0)
    # SR diagonal shift of the fine-tuning (constant).
    finetune_diag_shift: float = knob(VMCConfig.diag_shift, exclusive_minimum=0)
    # SR momentum (SPRING) of the fine-tuning.
    finetune_sr_momentum: float = knob(VMCConfig.sr_momentum, minimum=0, exclusive_maximum=1)
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
        return self.steps + self.finetune_steps

    def finetune_vmc(self) -> VMCConfig:
        """The fine-tuning as a VMC run: SR, cosine decay, constant diagonal shift (needs finetune_steps > 0)."""
        return VMCConfig(
            steps=self.finetune_steps,
            lr=self.finetune_lr,
            lr_final=self.finetune_lr_final,
            n_samples=self.finetune_samples,
            diag_shift=self.finetune_diag_shift,
            diag_shift_final=self.finetune_diag_shift,
            sr_momentum=self.finetune_sr_momentum,
        )

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


TIMING_DEVICES_SCHEMA = {
    "oneOf": [{"enum": ["auto", "cpu", "cuda"]}, {"type": "array", "items": {"enum": ["cpu", "cuda"]}, "minItems": 1}]
}


@dataclass(frozen=True)
class ProfileConfig(Config):
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
    seed: int = knob(0, minimum=0, maximum=SEED_MAX)
    # Count the dense path on this many samples per batch, scaled by the batch's connected configurations
    # (the dense cost per configuration is fixed, so this is exact for the network's ops); None: all.
    dense_samples: int | None = knob(None, minimum=1)
    # Add the elementwise ops (LayerNorm, GELU, softmax, adds...) to the matmul FLOPs.
    elementwise: bool = knob(True)
    # Where samples are drawn and FLOPs counted: "auto" (cuda if available, else cpu), "cpu", "cuda".
    device: str = knob("auto", choices=DEVICES)
    # Where both paths are timed: "auto" (cpu, and cuda when available), one device, or a list such as
    # [cpu, cuda]. The first is reported in time_dense_s / time_dedup_s; each gets time_*_s_<device> columns.
    timing_devices: tuple[str, ...] | str = knob("auto", schema=TIMING_DEVICES_SCHEMA, why="auto, cpu, cuda or a list")
    # Intra-op CPU threads during the stage (None: torch's default).
    threads: int | None = knob(None, minimum=1)

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


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a device is a ``ValueError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda': no CUDA device is available")
    return torch.device(name)


STAGE_CONFIGS = (TrainConfig, DistillConfig, ProfileConfig)
