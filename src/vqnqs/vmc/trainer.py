"""VMC training of the autoregressive transformer: configuration, the loop, checkpoints and outputs.

One iteration (``step`` counts completed parameter updates, 1-based)::

    s      = model.sample(n_samples)                       (Ns, N)  exact, independent samples of |psi|^2
    s_u, w = distinct rows of s, their frequencies          (U, N), (U,)
    E_loc  = local_energy(H, model, s_u, dedup=True)       (U,)     float64, through the dedup engine
    SR:    O = d log psi(s_u) / dθ  (U, Np);  δ = minSR / full-S solve;  θ <- θ - η δ
    Adam:  dE/dθ from the surrogate loss of eq. 3;          θ <- Adam(θ, dE/dθ, η)

Out dir (all written atomically)::

    checkpoint.pt   every ``checkpoint_every`` steps and at the end: resume continues the exact trajectory
    history.csv     per-step metrics up to the last checkpoint (:data:`HISTORY_COLUMNS`)
    metrics.json    final evaluation on ``eval_samples`` fresh samples (:data:`METRICS_KEYS` and more)
    model.pt        the trained model for later stages (:func:`vqnqs.vmc.checkpoint.load_model`)

A run that finds ``checkpoint.pt`` in its out dir resumes from it (same config required). With the same
seed on CPU, an interrupted and resumed run ends with bit-identical parameters to an uninterrupted one:
the checkpoint holds the parameters, the optimiser state, every random generator state and the step,
and the schedules are functions of the step alone.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vqnqs.config import check_field_types, config_from_mapping
from vqnqs.dedup import dedup_log_psi
from vqnqs.io import atomic_open, ensure_writable_dir, write_json
from vqnqs.models import AutoregressiveTransformer, TransformerConfig, default_patch
from vqnqs.physics.exact import ground_state_sector
from vqnqs.physics.hamiltonian import Hamiltonian
from vqnqs.tracking import Run
from vqnqs.vmc.checkpoint import (
    CheckpointError,
    StaleCheckpoint,
    load_checkpoint,
    model_config_to_dict,
    save_checkpoint,
    save_model,
)
from vqnqs.vmc.enumeration import exact_metrics
from vqnqs.vmc.gradient import EnergyStats, energy_loss, energy_statistics, log_derivatives
from vqnqs.vmc.local_energy import local_energy
from vqnqs.vmc.optim import OPTIMIZERS, SCHEDULES, SR, make_optimizer, scheduled, set_gradients, sr_direction

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "float64": torch.float64}

CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.pt"

HISTORY_COLUMNS = (
    "step",  # completed updates
    "energy_per_site",  # E / N of this step's samples (before the update)
    "energy_error",  # standard error of E / N
    "variance",  # var E_loc (whole system)
    "rel_error",  # |E / N - reference| / |reference|
    "grad_norm",  # |dE/dθ| (eq. 3)
    "lr",  # learning rate of this update
    "diag_shift",  # SR diagonal shift of this update (empty for Adam)
    "distinct_samples",  # distinct configurations among the n_samples (each is evaluated once)
    "samples_per_s",  # n_samples / wall time of the whole step
    "eloc_configs_per_s",  # connected configurations through the network per second of local energy
    "time_s",  # wall time since the start of training (summed over resumed invocations)
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
)
# Settings that may differ between an interrupted run and its resumption (they leave the trajectory unchanged).
RESUME_MAY_CHANGE = ("checkpoint_every", "eval_samples", "threads")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite energies or gradients); the last checkpoint is left as it was."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; ``train`` in params.yaml and ``--set`` fill it."""

    # --- optimisation ---
    # Parameter updates (VMC iterations). 4x4 Heisenberg with these defaults on one CPU thread: 1800 steps in
    # 13.7 min reach an exact relative error of 9.4e-5 (900 steps: 1.5e-4), enumerating all sector states.
    steps: int = 1800
    # Exact samples of |psi|^2 per iteration. Near convergence the energy variance reached after a given
    # number of steps falls about as 1 / n_samples (4x4 Heisenberg), so this is the knob that buys accuracy.
    n_samples: int = 1024
    # 'sr': stochastic reconfiguration (minSR when parameters outnumber samples); 'adam': Adam on eq. 3.
    optimizer: str = "sr"
    # Peak learning rate η (after warmup). SR: imaginary-time step (about lr / (1 - sr_momentum) per step);
    # Adam: its usual step size (~1e-3).
    lr: float = 0.02
    # Learning rate at the last step, for the 'cosine' and 'exponential' schedules.
    lr_final: float = 0.002
    # Shape of the decay from lr to lr_final: 'constant' | 'cosine' | 'exponential'.
    schedule: str = "cosine"
    # Steps of linear warmup from 0 to lr before the decay starts.
    warmup_steps: int = 0
    # SR diagonal shift λ added to S (or to Ō Ō^T in minSR) at the first step.
    diag_shift: float = 1e-4
    # SR diagonal shift at the last step, on the same schedule shape as the lr (no warmup).
    diag_shift_final: float = 1e-4
    # SR momentum μ (SPRING): each update is regularised towards μ times the previous one; 0: plain minSR.
    # The steady-state step is about lr / (1 - μ), so lower lr accordingly.
    sr_momentum: float = 0.9
    # --- model (the transformer's shape; lattice from the Hamiltonian) ---
    # Spins per token: K consecutive spins on a chain, p x p blocks on a square lattice. None: the paper's
    # 2x2 on a square lattice, K = 4 on a chain (2 or 1 where 4 does not divide N; models.default_patch).
    patch: int | None = None
    # Residual-stream width.
    d_model: int = 32
    # Attention heads (must divide d_model).
    n_heads: int = 4
    # Full transformer blocks (a final attention-only half-block always follows).
    n_blocks: int = 2
    # Feed-forward width; None: 4 * d_model.
    d_ff: int | None = None
    # Sample only the ground state's Sz sector where H conserves Sz (Heisenberg: N/2 down spins).
    sz_sector: bool = True
    # --- numerics and bookkeeping ---
    # Precision of the network: 'float32' | 'float64' (local energies and SR solves are always float64).
    dtype: str = "float32"
    # Local energies through the dedup engine: the same log psi (exactly the dense forward, reorganised), with
    # attention and every later op run once per distinct prefix of the connected configurations: x5 faster for
    # TFIM N=32, x9 (4x4) and x3.7 (6x6) for Heisenberg at the default width on one CPU thread. false: dense.
    dedup: bool = True
    # Samples per batch in the local energy, the per-sample gradients and the final evaluation (memory bound).
    chunk_size: int = 1024
    # Write checkpoint.pt and history.csv every this many steps (and at the last step).
    checkpoint_every: int = 100
    # Fresh samples for the final energy estimate.
    eval_samples: int = 2**15
    # Seed of the parameter initialisation and of the sampler's random stream.
    seed: int = 0
    # 'auto' (CUDA when available) | 'cpu' | 'cuda'.
    device: str = "auto"
    # torch CPU threads; None leaves torch's default.
    threads: int | None = None

    def __post_init__(self) -> None:
        check_field_types(self)
        choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "dtype": tuple(DTYPES), "device": DEVICES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r}: expected one of {', '.join(allowed)}")
        positive = ("steps", "n_samples", "lr", "diag_shift", "diag_shift_final", "d_model", "n_heads")
        positive += ("chunk_size", "checkpoint_every", "eval_samples")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} {getattr(self, name)}: must be positive")
        for name in ("patch", "d_ff", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)}: must be a positive integer or null")
        if not 0 <= self.sr_momentum < 1:
            raise ValueError(f"sr_momentum {self.sr_momentum}: must lie in [0, 1)")
        if self.lr_final < 0 or (self.schedule == "exponential" and self.lr_final == 0):
            raise ValueError(f"lr_final {self.lr_final}: must be >= 0 (> 0 for the exponential schedule)")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps {self.warmup_steps}: must lie in [0, steps={self.steps})")
        for name in ("n_blocks", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)}: must be >= 0")
        if self.n_samples < 2:
            raise ValueError(f"n_samples {self.n_samples}: need at least 2 samples for a variance")

    @classmethod
    def from_mapping(cls, mapping: dict) -> TrainConfig:
        """Build from a params-file mapping; an unknown key raises ``ValueError`` naming it."""
        return config_from_mapping(cls, mapping, "train")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- construction ---------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda': no CUDA device is available")
    return torch.device(name)


def model_config(config: TrainConfig, hamiltonian: Hamiltonian) -> TransformerConfig:
    """The transformer for this lattice; raises ``ValueError`` naming the field if the shape does not fit."""
    n_down = ground_state_sector(hamiltonian) if config.sz_sector else None
    return TransformerConfig(
        lattice_shape=hamiltonian.lattice.shape,
        patch=default_patch(hamiltonian.lattice.shape) if config.patch is None else config.patch,
        d_model=config.d_model,
        n_heads=config.n_heads,
        n_blocks=config.n_blocks,
        d_ff=config.d_ff,
        n_down=n_down,
    )


def load_reference(path: str | Path, hamiltonian: Hamiltonian) -> float:
    """``energy_per_site`` of a reference JSON, checked to describe the same system, size and boundary."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"reference {path}: cannot read a JSON record ({err})") from err
    lattice = hamiltonian.lattice
    expected = {"system": hamiltonian.system, "size": lattice.size, "boundary": lattice.boundary}
    for key, value in expected.items():
        if not isinstance(record, dict) or record.get(key) != value:
            found = record.get(key) if isinstance(record, dict) else None
            raise ValueError(f"reference {path}: {key} is {found!r}, the trained system has {value!r}")
    energy = record.get("energy_per_site")
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not math.isfinite(energy):
        raise ValueError(f"reference {path}: energy_per_site {energy!r} is not a finite number")
    return float(energy)


def system_info(hamiltonian: Hamiltonian) -> dict:
    """What identifies the trained system, for metrics.json and model.pt."""
    lattice = hamiltonian.lattice
    return {
        "size": lattice.size,
        "boundary": lattice.boundary,
        "n_sites": hamiltonian.n_sites,
        **hamiltonian.describe(),
    }


class _CountingLogPsi:
    """``log_psi`` (dense or through the dedup engine) that counts the configurations it evaluates."""

    def __init__(self, model: AutoregressiveTransformer, dedup: bool) -> None:
        self.model = model
        self.dedup = dedup
        self.count = 0

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        self.count += s.shape[0]
        return dedup_log_psi(self.model, s) if self.dedup else self.model.log_psi(s)


# --- the loop -------------------------------------------------------------------------------------


def run_steps(stage, desc: str, postfix, tracker: Run | None, progress: bool | None) -> tuple[int, float]:
    """Run ``stage.update()`` until ``stage.step == stage.total_steps``: one history row and MLflow step
    per update, a tqdm bar (``postfix(row)`` beside it), ``stage.save()`` every ``checkpoint_every`` steps
    and at the last. Shared by :class:`Trainer` and the distiller. Returns (updates run, their seconds).
    """
    config = stage.config
    first_step = stage.step
    invocation_start = tick = time.perf_counter()
    disable = None if progress is None else not progress  # None: tqdm shows the bar on a terminal only
    total = stage.total_steps
    with tqdm(total=total, initial=stage.step, desc=desc, disable=disable, dynamic_ncols=True) as bar:
        while stage.step < total:
            row = stage.update()
            stage.history.append(row)
            if tracker is not None:
                numbers = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
                tracker.log_metrics(numbers, step=row["step"])
            bar.update(1)
            bar.set_postfix_str(postfix(row))
            stage.wall_time_s += time.perf_counter() - tick
            tick = time.perf_counter()
            if stage.step % config.checkpoint_every == 0 or stage.step == total:
                stage.save()
                if tracker is not None:
                    tracker.flush()
    return stage.step - first_step, time.perf_counter() - invocation_start


@dataclass(frozen=True)
class VMCStepResult:
    """What one VMC update measured (on the batch drawn before the update)."""

    stats: EnergyStats  # E_loc statistics of the whole system
    grad_norm: float  # |dE/dθ| (eq. 3)
    distinct_samples: int  # distinct configurations among the samples (each evaluated once)
    eloc_configs_per_s: float  # connected configurations through the network per second of local energy

    def energy_row(self, n_sites: int, reference: float) -> dict:
        """``energy_per_site``, ``energy_error``, ``variance``, ``rel_error`` for a history row."""
        energy = self.stats.mean / n_sites
        return {
            "energy_per_site": energy,
            "energy_error": self.stats.error / n_sites,
            "variance": self.stats.variance,
            "rel_error": abs(energy - reference) / abs(reference),
        }


def vmc_step(
    model: AutoregressiveTransformer,
    hamiltonian: Hamiltonian,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    *,
    n_samples: int,
    lr: float,
    diag_shift: float,
    sr_momentum: float,
    chunk_size: int,
    dedup: bool,
    step: int,
) -> VMCStepResult:
    """One VMC update of ``model`` (see the module docstring): SR (minSR, SPRING) when ``optimizer`` is an
    :class:`~vqnqs.vmc.optim.SR`, else the eq. 3 gradient for it (Adam). Shared by the trainer and the
    distiller's fine-tuning phase. Raises :class:`TrainingError` (naming ``step``) on NaN/Inf, before the
    parameters change.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    samples = model.sample(n_samples, generator=generator)  # (Ns, N)
    # Exact samples repeat, the more so the closer psi gets to the ground state: evaluate each distinct
    # configuration once, weighted by its frequency. Every estimate below is that of the full batch.
    distinct, counts = torch.unique(samples, dim=0, return_counts=True)  # (U, N), (U,)
    weights = counts.to(torch.float64) / n_samples
    counted = _CountingLogPsi(model, dedup)
    eloc_start = time.perf_counter()
    e_loc = local_energy(hamiltonian, counted, distinct, chunk_size=chunk_size)  # (U,)
    eloc_time = time.perf_counter() - eloc_start
    if not torch.isfinite(e_loc).all():
        bad = int((~torch.isfinite(e_loc)).sum())
        raise TrainingError(f"step {step}: {bad} of {len(e_loc)} local energies are NaN or infinite")
    stats = energy_statistics(e_loc, weights, n_samples)

    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.zero_grad(set_to_none=True)
    if isinstance(optimizer, SR):
        o = log_derivatives(model, distinct, chunk_size)  # (U, Np), columns in model.parameters() order
        previous = optimizer.previous_direction()
        direction, gradient = sr_direction(o, e_loc, diag_shift, weights, previous, sr_momentum)
        set_gradients(params, direction)
    else:
        loss = energy_loss(model.log_psi(distinct), e_loc, weights)  # eq. 3 through autograd
        loss.backward()
        gradient = torch.cat([p.grad.reshape(-1) for p in params])
    grad_norm = gradient.norm().item()
    if not math.isfinite(grad_norm) or not all(torch.isfinite(p.grad).all() for p in params):
        raise TrainingError(f"step {step}: the gradient or update direction is NaN or infinite")
    optimizer.step()
    return VMCStepResult(stats, grad_norm, len(distinct), counted.count / eloc_time)


class Trainer:
    """Model, optimiser and sampler of one run, restorable from a checkpoint in ``out_dir``."""

    def __init__(self, hamiltonian: Hamiltonian, config: TrainConfig, out_dir: str | Path, reference: float) -> None:
        self.hamiltonian = hamiltonian
        self.config = config
        self.out_dir = ensure_writable_dir(out_dir)
        self.reference = reference
        self.device = resolve_device(config.device)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.model_config = model_config(config, hamiltonian)
        torch.manual_seed(config.seed)  # parameter initialisation
        self.model = AutoregressiveTransformer(self.model_config).to(self.device, DTYPES[config.dtype])
        self.params = list(self.model.parameters())
        self.optimizer = make_optimizer(config.optimizer, self.params, config.lr)
        self.generator = torch.Generator(self.device).manual_seed(config.seed)  # the sampler's stream
        self.step = 0
        self.wall_time_s = 0.0  # training time of earlier invocations, restored on resume
        self.history: list[dict] = []

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_FILE

    @property
    def total_steps(self) -> int:
        return self.config.steps

    # --- checkpoints ---

    def save(self) -> None:
        save_checkpoint(
            self.checkpoint_path,
            {
                "step": self.step,
                "wall_time_s": float(self.wall_time_s),
                "device": self.device.type,
                "system": system_info(self.hamiltonian),
                "model_config": model_config_to_dict(self.model_config),
                "train_config": self.config.to_dict(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                # The per-step curve travels with the checkpoint: history.csv is rewritten from it, so a
                # pipeline that deletes an interrupted stage's history.csv loses none of the curve.
                "history": [dict(row) for row in self.history],
                "rng": {
                    "torch": torch.get_rng_state(),
                    "sampler": self.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
                },
            },
        )
        with atomic_open(self.out_dir / HISTORY_FILE) as handle:
            writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS)
            writer.writeheader()
            writer.writerows(self.history)

    def restore(self) -> None:
        """Continue from ``checkpoint.pt``: parameters, optimiser, random streams, step, history."""
        path = self.checkpoint_path
        state = load_checkpoint(path, map_location=self.device)
        stored = state["train_config"]
        for key, value in self.config.to_dict().items():
            if key not in RESUME_MAY_CHANGE and stored.get(key) != value:
                raise StaleCheckpoint(
                    f"checkpoint {path}: written with {key}={stored.get(key)!r}, this run has {key}={value!r}"
                )
        for key, value in (("system", system_info(self.hamiltonian)), ("device", self.device.type)):
            if state[key] != value:
                raise CheckpointError(f"checkpoint {path}: written for {key} {state[key]}, this run has {value}")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"]["torch"].cpu())
            self.generator.set_state(state["rng"]["sampler"].cpu())
            if self.device.type == "cuda":
                torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            reason = str(err).strip().splitlines()[0]
            raise CheckpointError(f"checkpoint {path}: does not fit this run's model or optimiser ({reason})") from err
        self.step = state["step"]
        self.wall_time_s = state["wall_time_s"]
        self.history = [row for row in state.get("history", []) if int(row["step"]) <= self.step]

    # --- one iteration ---

    def update(self) -> dict:
        """Sample, estimate the energy, update the parameters once; returns the history row of this step."""
        config, step = self.config, self.step + 1
        lr = scheduled(step, config.steps, config.lr, config.lr_final, config.schedule, config.warmup_steps)
        shift = scheduled(step, config.steps, config.diag_shift, config.diag_shift_final, config.schedule)
        start = time.perf_counter()
        result = vmc_step(
            self.model,
            self.hamiltonian,
            self.optimizer,
            self.generator,
            n_samples=config.n_samples,
            lr=lr,
            diag_shift=shift,
            sr_momentum=config.sr_momentum,
            chunk_size=config.chunk_size,
            dedup=config.dedup,
            step=step,
        )
        self.step = step
        elapsed = time.perf_counter() - start
        return {
            "step": step,
            **result.energy_row(self.hamiltonian.n_sites, self.reference),
            "grad_norm": result.grad_norm,
            "lr": lr,
            "diag_shift": shift if config.optimizer == "sr" else None,
            "distinct_samples": result.distinct_samples,
            "samples_per_s": config.n_samples / elapsed,
            "eloc_configs_per_s": result.eloc_configs_per_s,
            "time_s": self.wall_time_s + elapsed,
        }

    # --- evaluation ---

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Energy on ``eval_samples`` fresh samples (continuing the sampler's stream), in chunks."""
        config, n_sites = self.config, self.hamiltonian.n_sites
        counted = _CountingLogPsi(self.model, config.dedup)
        e_locs, all_counts, eloc_time = [], [], 0.0
        for start in range(0, config.eval_samples, config.chunk_size):
            n = min(config.chunk_size, config.eval_samples - start)
            distinct, counts = torch.unique(self.model.sample(n, generator=self.generator), dim=0, return_counts=True)
            eloc_start = time.perf_counter()
            e_locs.append(local_energy(self.hamiltonian, counted, distinct, chunk_size=config.chunk_size))
            eloc_time += time.perf_counter() - eloc_start
            all_counts.append(counts)
        weights = torch.cat(all_counts).to(torch.float64) / config.eval_samples
        stats = energy_statistics(torch.cat(e_locs), weights, config.eval_samples)
        energy = stats.mean / n_sites
        return {
            "energy_per_site": energy,
            "energy_error": stats.error / n_sites,
            "variance": stats.variance,
            "rel_error": abs(energy - self.reference) / abs(self.reference),
            "reference_per_site": self.reference,
            "energy": stats.mean,
            "eval_samples": config.eval_samples,
            "eval_eloc_configs_per_s": counted.count / eloc_time,
            **exact_metrics(self.hamiltonian, self.model, self.reference),  # small lattices: no sampling error
        }

    # --- the whole run ---

    def run(self, tracker: Run | None = None, resume: bool = True, progress: bool | None = None) -> dict:
        """Train to ``config.steps`` (resuming from a checkpoint when there is one), evaluate, write outputs.

        ``progress``: show the tqdm bar (None: only on a terminal). Returns the metrics of metrics.json.
        """
        config = self.config
        if resume and self.checkpoint_path.exists():
            try:
                self.restore()
                print(
                    f"train: resuming from step {self.step} of {config.steps} ({self.checkpoint_path})", file=sys.stderr
                )
            except StaleCheckpoint as stale:  # the pipeline reran this stage because its settings changed
                print(f"train: {stale}; starting afresh", file=sys.stderr)
        postfix = lambda row: f"E/N={row['energy_per_site']:.6f} rel={row['rel_error']:.1e}"  # noqa: E731
        steps_run, train_time = run_steps(self, "train", postfix, tracker, progress)

        eval_start = time.perf_counter()
        metrics = self.evaluate()
        self.wall_time_s += time.perf_counter() - eval_start
        metrics.update(
            {
                "n_params": self.model.n_params,
                "steps": self.step,
                "wall_time_s": self.wall_time_s,
                "seconds_per_step": train_time / steps_run if steps_run else None,
                "eloc_configs_per_s": _mean_of(self.history, "eloc_configs_per_s"),
                "samples_per_s": _mean_of(self.history, "samples_per_s"),
                "optimizer": config.optimizer,
                "device": self.device.type,
                "threads": torch.get_num_threads(),
                **system_info(self.hamiltonian),
            }
        )
        write_json(self.out_dir / METRICS_FILE, metrics)
        info = {**system_info(self.hamiltonian), "steps": self.step, "energy_per_site": metrics["energy_per_site"]}
        save_model(self.out_dir / MODEL_FILE, self.model, info)
        if tracker is not None:
            tracker.log_metrics({f"final_{key}": metrics[key] for key in METRICS_KEYS if key != "steps"})
            tracker.flush()
            for name in (METRICS_FILE, HISTORY_FILE, CHECKPOINT_FILE, MODEL_FILE):
                tracker.log_artifact(self.out_dir / name)
        return metrics


def _mean_of(rows: list[dict], key: str) -> float | None:
    values = [float(row[key]) for row in rows if row.get(key) not in (None, "")]
    return sum(values) / len(values) if values else None
