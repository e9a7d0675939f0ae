"""The ``profile`` stage: local-energy cost of the baseline and of a VQ-NQS student, dense vs dedup.

Inputs: a distill out dir (the VQ student's ``model.pt`` and ``metrics.json``) and the train out dir of
its teacher (the baseline's ``model.pt`` and ``metrics.json``). For each of the two models, on batches
of exact samples drawn from that model:

- FLOPs of ``local_energy`` (all valid connected configurations of the batch's distinct samples: repeats
  are dropped first, as the trainer does, on both paths) on the dense path and
  through the dedup engine, by component (:mod:`vqnqs.profiling.flops`), averaged over ``n_batches``;
- savings as in the paper's Table 1: total, and over the quantised ops only; with our engine (attention
  once per distinct prefix) and, like for like with the paper, without prefix reuse (``*_no_prefix``);
- the engine's unique-row fraction after each stage (``embed``, ``block<i>``, ``final``);
- wall-clock of both paths on the first batch (:mod:`vqnqs.profiling.timing`), on each timing device.

Outputs (written atomically): ``OUT.csv``, one row per model (``model`` = ``baseline`` with ``bits`` 0, and
``vq-nqs`` with its bits; the DESIGN.md columns first), and ``OUT_components.csv`` beside it (FLOPs per
sample per component and model). Energies and relative errors are read from the dirs' ``metrics.json``,
never recomputed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vqnqs.io import atomic_open
from vqnqs.models.transformer import AutoregressiveTransformer
from vqnqs.models.vq import VQTransformer
from vqnqs.physics.hamiltonian import Hamiltonian
from vqnqs.profiling.flops import (
    COMPONENTS,
    FlopProfile,
    distinct_samples,
    draw_samples,
    layer_names,
    model_bits,
    profile_flops,
)
from vqnqs.profiling.timing import Timing, time_local_energy

MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
BASELINE_LABEL = "baseline"
VQ_LABEL = "vq-nqs"

# The DESIGN.md profile contract, in this order at the front of every row.
CONTRACT_COLUMNS = (
    "system",
    "size",
    "model",
    "bits",
    "energy_per_site",
    "rel_error",
    "flops_dense",
    "flops_dedup",
    "total_savings",
    "quantized_ops_savings",
    "time_dense_s",
    "time_dedup_s",
)
COMPONENT_COLUMNS = (
    "system",
    "size",
    "n_sites",
    "model",
    "bits",
    "component",
    "flops_dense_per_sample",
    "flops_dedup_per_sample",
    "savings",
    "flops_dedup_no_prefix_per_sample",
)


class ProfileInputError(ValueError):
    """A missing or unusable input of the profile stage; the message names the file."""


@dataclass(frozen=True)
class ProfileConfig:
    """Settings of the profile stage (``profile`` in params.yaml, then ``--set KEY=VALUE``)."""

    # Samples per batch; the local energy of a batch is ONE dedup call (unless chunk_size is smaller).
    batch: int = 512
    # Batches whose FLOPs are averaged (each drawn from the profiled model with seed + index).
    n_batches: int = 4
    # Timed rounds per path (median reported) after `warmup` untimed ones; 0 repeats: no timing.
    repeats: int = 5
    warmup: int = 1
    # Samples per local-energy chunk (None: the whole batch), as in local_energy(chunk_size=...).
    chunk_size: int | None = None
    seed: int = 0
    # Count the dense path on this many samples per batch, scaled by the batch's connected configurations
    # (the dense cost per configuration is fixed, so this is exact for the network's ops); None: all.
    dense_samples: int | None = None
    # Add the elementwise ops (LayerNorm, GELU, softmax, adds...) to the matmul FLOPs.
    elementwise: bool = True
    # Where samples are drawn and FLOPs counted: "auto" (cuda if available, else cpu), "cpu", "cuda".
    device: str = "auto"
    # Where both paths are timed: "auto" (cpu, and cuda when available) or a list such as [cpu] or [cpu, cuda].
    # The first is reported in time_dense_s / time_dedup_s; each gets time_*_s_<device> columns.
    timing_devices: tuple[str, ...] | str = "auto"
    # Intra-op CPU threads during the stage (None: torch's default).
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("batch", "n_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} {value!r}: expected a positive integer")
        for name in ("repeats", "warmup", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} {value!r}: expected a non-negative integer")
        for name in ("chunk_size", "threads", "dense_samples"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} {value!r}: expected a positive integer or null")
        if not isinstance(self.elementwise, bool):
            raise ValueError(f"elementwise {self.elementwise!r}: expected true or false")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device {self.device!r}: expected auto, cpu or cuda")
        devices = self.timing_devices
        if isinstance(devices, str):
            devices = devices if devices == "auto" else tuple(d.strip() for d in devices.split(",") if d.strip())
        else:
            devices = tuple(devices)
        if devices != "auto" and any(d not in ("cpu", "cuda") for d in devices):
            raise ValueError(f"timing_devices {self.timing_devices!r}: expected auto or a list of cpu, cuda")
        object.__setattr__(self, "timing_devices", devices)

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any]) -> ProfileConfig:
        """From a plain mapping (params.yaml, --set); an unknown key is a ValueError naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"unknown setting {unknown[0]!r} (expected one of {', '.join(sorted(known))})")
        return cls(**mapping)

    def to_dict(self) -> dict:
        record = dataclasses.asdict(self)
        if isinstance(record["timing_devices"], tuple):
            record["timing_devices"] = list(record["timing_devices"])
        return record

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda': no CUDA device available")
        return torch.device(self.device)

    def resolved_timing_devices(self) -> list[torch.device]:
        if self.repeats == 0:
            return []
        if self.timing_devices == "auto":
            return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
        if "cuda" in self.timing_devices and not torch.cuda.is_available():
            raise ValueError("timing_devices: cuda requested but no CUDA device available")
        return [torch.device(d) for d in self.timing_devices]


# --- inputs ---------------------------------------------------------------------------------------


def check_model_dir(directory: str | os.PathLike, what: str) -> tuple[Path, Path]:
    """``(model.pt, metrics.json)`` of ``directory``; a missing one is a ProfileInputError naming it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ProfileInputError(f"{what} directory {directory}: not found")
    files = directory / MODEL_FILE, directory / METRICS_FILE
    for path in files:
        if not path.is_file():
            raise ProfileInputError(f"{what} {path}: file not found")
    return files


def read_metrics(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ProfileInputError(f"{path}: cannot read a JSON record ({err})") from err
    if not isinstance(record, dict):
        raise ProfileInputError(f"{path}: expected a JSON object")
    return record


def _number(record: dict, key: str) -> float | None:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def system_from_info(info: dict, source: str) -> dict:
    """System settings (as ``vqnqs.cli.resolve_system`` returns them) from a model file's ``info``."""
    if not isinstance(info.get("system"), str) or not isinstance(info.get("size"), str):
        raise ProfileInputError(f"{source}: its info names no system and size; give --run KEY or --system/--size")
    return {
        "system": info["system"],
        "size": info["size"],
        "boundary": info.get("boundary", "open"),
        "gamma": info.get("gamma"),
        "J": info.get("J", 1.0),
        "sign_rule": info.get("sign_rule"),
    }


def system_of_dir(directory: str | os.PathLike) -> dict:
    """System settings from the ``info`` of ``directory/model.pt`` (when no --run or --system is given)."""
    from vqnqs.vmc.checkpoint import load_model  # CheckpointError (a ValueError) names the file

    path = Path(directory) / MODEL_FILE
    _, info = load_model(path)
    return system_from_info(info, str(path))


def stated_bits(directory: str | os.PathLike) -> int | float | None:
    """``bits`` of ``directory/metrics.json`` (None where absent or unreadable): for run tags."""
    try:
        value = _number(read_metrics(Path(directory) / METRICS_FILE), "bits")
    except ProfileInputError:
        return None
    return None if value is None else _bits_value(value)


def check_fits(model: AutoregressiveTransformer, info: dict, hamiltonian: Hamiltonian, path: Path) -> None:
    """The model must describe ``hamiltonian``'s lattice (and, where its info says, the same system)."""
    if tuple(model.config.lattice_shape) != tuple(hamiltonian.lattice.shape):
        raise ProfileInputError(
            f"{path}: model lattice {tuple(model.config.lattice_shape)}, the profiled system has "
            f"{tuple(hamiltonian.lattice.shape)}"
        )
    expected = {"system": hamiltonian.system, "size": hamiltonian.lattice.size}
    for key, value in expected.items():
        if key in info and info[key] != value:
            raise ProfileInputError(f"{path}: trained for {key} {info[key]!r}, the profiled system has {value!r}")


# --- measurement ----------------------------------------------------------------------------------


def _bits_value(bits: float) -> int | float:
    return int(bits) if float(bits).is_integer() else bits


def measure_model(
    hamiltonian: Hamiltonian, model: AutoregressiveTransformer, config: ProfileConfig
) -> tuple[FlopProfile, dict[str, Timing]]:
    """FLOP profile on ``config.device`` and timings on each timing device (model returned to the CPU)."""
    device = config.resolved_device()
    model = model.to(device).eval()
    flops = profile_flops(
        hamiltonian,
        model,
        batch=config.batch,
        n_batches=config.n_batches,
        seed=config.seed,
        chunk_size=config.chunk_size,
        elementwise=config.elementwise,
        dense_samples=config.dense_samples,
    )
    timings: dict[str, Timing] = {}
    timing_devices = config.resolved_timing_devices()
    if timing_devices:
        s = distinct_samples(draw_samples(model, config.batch, config.seed))  # the FLOP profile's first batch
        for timing_device in timing_devices:
            model = model.to(timing_device)
            timings[timing_device.type] = time_local_energy(
                hamiltonian, model, s.to(timing_device), config.repeats, config.warmup, config.chunk_size
            )
    model.to("cpu")
    return flops, timings


def profile_row(
    label: str,
    model: AutoregressiveTransformer,
    metrics: dict,
    flops: FlopProfile,
    timings: dict[str, Timing],
    system: dict,
    config: ProfileConfig,
    reference_per_site: float | None = None,
    model_dir: str | None = None,
) -> dict:
    """One row of the profile table (contract columns first)."""
    energy = _number(metrics, "energy_per_site")
    rel_error = _number(metrics, "rel_error")
    reference = reference_per_site if reference_per_site is not None else _number(metrics, "reference_per_site")
    if rel_error is None and energy is not None and reference:
        rel_error = abs(energy - reference) / abs(reference)
    first = next(iter(timings.values()), None)
    row: dict[str, Any] = {
        "system": system["system"],
        "size": system["size"],
        "model": label,
        "bits": _bits_value(model_bits(model)),
        "energy_per_site": energy,
        "rel_error": rel_error,
        "exact_rel_error": _number(metrics, "exact_rel_error"),  # by enumeration, small lattices only
        "flops_dense": flops.flops_dense_per_batch,
        "flops_dedup": flops.flops_dedup_per_batch,
        "total_savings": flops.total_savings,
        "quantized_ops_savings": flops.quantized_ops_savings,
        "time_dense_s": first.dense_s if first else None,
        "time_dedup_s": first.dedup_s if first else None,
        "time_speedup": first.speedup if first else None,
        "flops_dedup_no_prefix": flops.batch * flops.flops_dedup_no_prefix_per_sample,
        "total_savings_no_prefix": flops.total_savings_no_prefix,
        "flops_dense_per_sample": flops.flops_dense_per_sample,
        "flops_dedup_per_sample": flops.flops_dedup_per_sample,
        "flops_quantized_dense_per_sample": flops.quantized_dense_per_sample,
        "flops_quantized_dedup_per_sample": flops.quantized_dedup_per_sample,
        "reference_per_site": reference,
        "n_sites": model.n_sites,
        "n_tokens": model.patching.n_tokens,
        "patch": model.config.patch,
        "d_model": model.config.d_model,
        "n_heads": model.config.n_heads,
        "n_blocks": model.config.n_blocks,
        "d_ff": model.config.d_ff,
        "vq_heads": model.vq_config.heads if isinstance(model, VQTransformer) else 0,
        "vq_codes": model.vq_config.codes if isinstance(model, VQTransformer) else 0,
        "n_params": model.n_params,
        "batch": flops.batch,  # distinct samples per batch (the FLOPs and timings are on these)
        "drawn_batch": flops.drawn,
        "n_batches": flops.n_batches,
        "configs_per_sample": flops.configs_per_sample,
        "flop_ops": "matmul+elementwise" if flops.elementwise else "matmul",
        "dense_samples": config.dense_samples,
    }
    fractions = flops.unique_fraction()
    for layer in layer_names(model):
        row[f"unique_frac_{layer}"] = fractions.get(layer)
    for layer in layer_names(model)[1:-1]:
        tuples = flops.code_tuples.get(layer)
        row[f"code_tuples_{layer}"] = tuples / flops.n_batches if tuples is not None else None
    row["device"] = str(config.resolved_device())
    row["time_device"] = first.device if first else None
    row["threads"] = torch.get_num_threads()
    row["torch_version"] = torch.__version__
    for name, timing in timings.items():
        row[f"time_dense_s_{name}"] = timing.dense_s
        row[f"time_dedup_s_{name}"] = timing.dedup_s
        row[f"time_speedup_{name}"] = timing.speedup
        row[f"load_avg_{name}"] = timing.load_before
    row["model_dir"] = model_dir
    return row


def component_rows(row: dict, flops: FlopProfile) -> list[dict]:
    """The per-component rows of one model (every component of :data:`COMPONENTS`, zeros included)."""
    rows = []
    for component, (dense, dedup, no_prefix) in flops.by_component_all_paths().items():
        rows.append(
            {
                "system": row["system"],
                "size": row["size"],
                "n_sites": row["n_sites"],
                "model": row["model"],
                "bits": row["bits"],
                "component": component,
                "flops_dense_per_sample": dense,
                "flops_dedup_per_sample": dedup,
                "savings": dense / dedup if dedup > 0 else (None if dense == 0 else math.inf),
                "flops_dedup_no_prefix_per_sample": no_prefix,
            }
        )
    assert [r["component"] for r in rows] == list(COMPONENTS)
    return rows


def components_path(out: str | os.PathLike) -> Path:
    """``<out stem>_components.csv`` beside ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_components.csv")


def write_csv(path: str | os.PathLike, rows: Sequence[dict], first: Sequence[str] = ()) -> None:
    """Atomically write ``rows`` (union of their keys, ``first`` leading, then first-seen order)."""
    columns: list[str] = list(first)
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    with atomic_open(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n", restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: ("" if value is None else value) for key, value in row.items()})


@dataclass
class ProfileResult:
    rows: list[dict]
    components: list[dict]
    out: Path
    components_out: Path


def load_profiled(model_dir: Path, what: str, hamiltonian: Hamiltonian) -> tuple[AutoregressiveTransformer, dict]:
    from vqnqs.vmc.checkpoint import load_model  # CheckpointError (a ValueError) names the file

    path = model_dir / MODEL_FILE
    model, info = load_model(path)
    is_vq = isinstance(model, VQTransformer)
    if what == "baseline" and is_vq:
        raise ProfileInputError(f"baseline {path}: holds a VQ model; --baseline takes the train stage's out dir")
    if what == "model" and not is_vq:
        raise ProfileInputError(f"model {path}: holds no VQ model; --model-dir takes a distill stage's out dir")
    check_fits(model, info, hamiltonian, path)
    return model, info


def run_profile_stage(
    model_dir: str | os.PathLike,
    baseline_dir: str | os.PathLike,
    out: str | os.PathLike,
    hamiltonian: Hamiltonian,
    system: dict,
    config: ProfileConfig,
    reference_per_site: float | None = None,
) -> ProfileResult:
    """Profile the baseline (``baseline_dir``) and the VQ student (``model_dir``); write ``out`` and its
    components CSV. ``system``: the settings that label the rows (``system``, ``size``)."""
    model_dir, baseline_dir, out = Path(model_dir), Path(baseline_dir), Path(out)
    _, student_metrics_path = check_model_dir(model_dir, "model")
    _, baseline_metrics_path = check_model_dir(baseline_dir, "baseline")
    student_metrics = read_metrics(student_metrics_path)
    baseline_metrics = read_metrics(baseline_metrics_path)
    for path, record in ((student_metrics_path, student_metrics), (baseline_metrics_path, baseline_metrics)):
        if _number(record, "energy_per_site") is None:
            raise ProfileInputError(f"{path}: no finite energy_per_site")
    config.resolved_device()  # a device that is not there fails now, before any work
    config.resolved_timing_devices()
    student, _ = load_profiled(model_dir, "model", hamiltonian)
    baseline, _ = load_profiled(baseline_dir, "baseline", hamiltonian)
    stated_bits = _number(student_metrics, "bits")
    if stated_bits is not None and not math.isclose(stated_bits, model_bits(student)):
        raise ProfileInputError(
            f"{student_metrics_path}: bits {stated_bits:g}, but its model.pt quantises to {model_bits(student):g} bits"
        )

    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        rows, components = [], []
        for label, model, metrics, directory in (
            (BASELINE_LABEL, baseline, baseline_metrics, baseline_dir),
            (VQ_LABEL, student, student_metrics, model_dir),
        ):
            flops, timings = measure_model(hamiltonian, model, config)
            row = profile_row(label, model, metrics, flops, timings, system, config, reference_per_site, str(directory))
            rows.append(row)
            components.extend(component_rows(row, flops))
    finally:
        torch.set_num_threads(threads)
    components_out = components_path(out)
    write_csv(components_out, components, COMPONENT_COLUMNS)
    write_csv(out, rows, CONTRACT_COLUMNS)
    return ProfileResult(rows, components, out, components_out)


def summary_line(result: ProfileResult) -> str:
    """One line per model for the terminal."""
    lines = []
    for row in result.rows:
        time = ""
        if row.get("time_dense_s") is not None:
            time = f", time {row['time_dense_s']:.3g} s -> {row['time_dedup_s']:.3g} s (x{row['time_speedup']:.2f})"
        lines.append(
            f"{row['system']} {row['size']} {row['model']} ({row['bits']} bits): FLOPs/sample "
            f"{row['flops_dense_per_sample']:.3g} -> {row['flops_dedup_per_sample']:.3g}, total savings "
            f"x{row['total_savings']:.2f} (x{row['total_savings_no_prefix']:.2f} without prefix reuse), "
            f"quantised ops x{row['quantized_ops_savings']:.2f}{time}"
        )
    return "\n".join(lines)


__all__ = [
    "ProfileConfig",
    "ProfileInputError",
    "ProfileResult",
    "components_path",
    "measure_model",
    "run_profile_stage",
    "summary_line",
]
