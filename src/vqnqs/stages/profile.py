"""The ``profile`` stage: local-energy cost of the baseline and of a VQ-NQS student, dense vs dedup.

Inputs: a distill out dir (the VQ student's ``model.pt`` and ``metrics.json``) and the train out dir of
its teacher (the baseline's). For each of the two models, on batches of exact samples drawn from that model:

- FLOPs of the local energy (all valid connected configurations of the batch's distinct samples) on the
  dense path and through the dedup engine, with and without prefix reuse, by component, averaged over
  ``n_batches`` (:func:`vqnqs.profiling.flop_profile.profile_flops`): the paper's Table 1 savings;
- of these, the phase network's FLOPs alone (``flops_phase_*``), for a model with one;
- the engine's unique-row fraction after each stage;
- wall-clock of both paths on the first batch (:mod:`vqnqs.profiling.timing`), on each timing device.

Outputs (written atomically; :mod:`vqnqs.profiling.table`): ``OUT.csv``, one row per model (``baseline`` with
``bits`` 0, ``vq-nqs`` with its bits), and ``OUT_components.csv`` beside it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from vqnqs.io import finite_number, read_json
from vqnqs.models.transformer import AutoregressiveTransformer
from vqnqs.physics.hamiltonian import Hamiltonian
from vqnqs.profiling.batches import distinct_samples, draw_samples
from vqnqs.profiling.flop_profile import FlopProfile, profile_flops
from vqnqs.profiling.quantized import model_bits
from vqnqs.profiling.table import (
    BASELINE_LABEL,
    COMPONENT_COLUMNS,
    CONTRACT_COLUMNS,
    VQ_LABEL,
    component_rows,
    components_path,
    profile_row,
    write_csv,
)
from vqnqs.profiling.timing import Timing, time_local_energy
from vqnqs.stages.config import ProfileConfig
from vqnqs.stages.inputs import InputError, check_model_dir, load_trained


@dataclass
class ProfileResult:
    rows: list[dict]
    components: list[dict]
    out: Path
    components_out: Path


def measure_model(
    hamiltonian: Hamiltonian, model: AutoregressiveTransformer, config: ProfileConfig
) -> tuple[FlopProfile, dict[str, Timing]]:
    """FLOP profile on ``config.device`` and timings on each timing device (model returned to the CPU)."""
    model = model.to(config.resolved_device()).eval()
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
    inputs = []
    for directory, what, vq in ((baseline_dir, "baseline", False), (model_dir, "model", True)):
        metrics_path = check_model_dir(directory, what)[1]
        metrics = read_json(metrics_path)
        if finite_number(metrics, "energy_per_site") is None:
            raise InputError(f"{metrics_path}: no finite energy_per_site")
        inputs.append((directory, metrics_path, metrics, vq, what))
    config.resolved_device()  # a device that is not there fails now, before any work
    config.resolved_timing_devices()
    models = [load_trained(directory, what, vq, hamiltonian)[0] for directory, _, _, vq, what in inputs]
    student, (_, student_metrics_path, student_metrics, _, _) = models[1], inputs[1]
    stated = finite_number(student_metrics, "bits")
    if stated is not None and not math.isclose(stated, model_bits(student)):
        raise InputError(
            f"{student_metrics_path}: bits {stated:g}, but its model.pt quantises to {model_bits(student):g} bits"
        )

    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        rows, components = [], []
        for label, model, (directory, _, metrics, _, _) in zip((BASELINE_LABEL, VQ_LABEL), models, inputs, strict=True):
            flops, timings = measure_model(hamiltonian, model, config)
            device, dense_samples = config.resolved_device(), config.dense_samples
            row = profile_row(
                label, model, metrics, flops, timings, system, device, dense_samples, reference_per_site, str(directory)
            )
            rows.append(row)
            components.extend(component_rows(row, flops))
    finally:
        torch.set_num_threads(threads)
    components_out = components_path(out)
    write_csv(components_out, components, COMPONENT_COLUMNS)
    write_csv(out, rows, CONTRACT_COLUMNS)
    return ProfileResult(rows, components, out, components_out)


def summary_line(result: ProfileResult) -> str:
    """One line per model for the terminal (with the phase network's share when the model has one)."""
    lines = []
    for row in result.rows:
        time, quantized, phase = "", "", ""
        if row.get("flops_phase_dense_per_sample") is not None:
            phase = (
                f" (phase network: {row['flops_phase_dense_per_sample']:.3g} -> "
                f"{row['flops_phase_dedup_per_sample']:.3g} FLOPs/sample)"
            )
        if row.get("quantized_ops_savings") is not None:
            quantized = f", quantised ops x{row['quantized_ops_savings']:.2f}"
        if row.get("time_dense_s") is not None:
            time = f", time {row['time_dense_s']:.3g} s -> {row['time_dedup_s']:.3g} s (x{row['time_speedup']:.2f})"
        lines.append(
            f"{row['system']} {row['size']} {row['model']} ({row['bits']} bits): FLOPs/sample "
            f"{row['flops_dense_per_sample']:.3g} -> {row['flops_dedup_per_sample']:.3g}{phase}, total savings "
            f"x{row['total_savings']:.2f} (x{row['total_savings_no_prefix']:.2f} without prefix reuse)"
            f"{quantized}{time}"
        )
    return "\n".join(lines)
