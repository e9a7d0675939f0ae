"""The profile table: one row per profiled model (the contract columns first) and its components.

:func:`profile_row` turns a model's :class:`~vqnqs.profiling.flops.FlopProfile` and timings into a row of
``OUT.csv`` (energies and relative errors read from the model dir's ``metrics.json``, never recomputed);
:func:`component_rows` gives its FLOPs per sample per component for ``OUT_components.csv``.

Both networks: every FLOP column counts the autoregressive network and the phase network together; the phase
network alone is in ``flops_phase_{dense,dedup}_per_sample`` of ``OUT.csv`` and, per component and path, in
``flops_phase_<path>_per_sample`` of ``OUT_components.csv`` (a share of the row's ``flops_<path>_per_sample``;
blank for a model without a phase network).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vqnqs.io import atomic_open, finite_number
from vqnqs.models.transformer import AutoregressiveTransformer
from vqnqs.models.vq import VQTransformer
from vqnqs.profiling.flop_profile import PATHS, FlopProfile, layer_names
from vqnqs.profiling.flops import COMPONENTS
from vqnqs.profiling.quantized import model_bits
from vqnqs.profiling.timing import Timing
from vqnqs.vmc.evaluation import relative_error

BASELINE_LABEL = "baseline"
VQ_LABEL = "vq-nqs"

# The profile contract that the report reads (docs/design.md), in this order at the front of every row.
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
    "flops_incremental_per_sample",
    *(f"flops_phase_{path}_per_sample" for path in PATHS),
)
# The columns of CONTRACT_COLUMNS and COMPONENT_COLUMNS that hold words; each of the others holds a number or is blank.
TEXT_COLUMNS = ("system", "size", "model", "component")


def bits_value(bits: float) -> int | float:
    """``bits`` as an int where it is whole (6.0 -> 6)."""
    return int(bits) if float(bits).is_integer() else bits


def profile_row(
    label: str,
    model: AutoregressiveTransformer,
    metrics: dict,
    flops: FlopProfile,
    timings: dict[str, Timing],
    system: dict,
    device: torch.device,
    dense_samples: int | None,
    reference_per_site: float | None = None,
    model_dir: str | None = None,
) -> dict:
    """One row of the profile table (contract columns first); ``device``: where the FLOPs were counted,
    ``dense_samples``: the samples per batch the dense path was counted on (None: all)."""
    energy = finite_number(metrics, "energy_per_site")
    rel_error = finite_number(metrics, "rel_error")
    reference = reference_per_site if reference_per_site is not None else finite_number(metrics, "reference_per_site")
    if rel_error is None and energy is not None:
        rel_error = relative_error(energy, reference)
    first = next(iter(timings.values()), None)
    quantized = isinstance(model, VQTransformer)  # a model without quantisers has no quantised ops to count
    phase = model.phase is not None  # a model without a phase network has no phase FLOPs to count
    row: dict[str, Any] = {
        "system": system["system"],
        "size": system["size"],
        "model": label,
        "bits": bits_value(model_bits(model)),
        "energy_per_site": energy,
        "rel_error": rel_error,
        "exact_rel_error": finite_number(metrics, "exact_rel_error"),  # by enumeration, small lattices only
        "v_score": finite_number(metrics, "v_score"),  # N var(E_loc) / E^2 on the stage's evaluation samples
        "flops_dense": flops.flops_dense_per_batch,
        "flops_dedup": flops.flops_dedup_per_batch,
        "total_savings": flops.total_savings,
        "quantized_ops_savings": flops.quantized_ops_savings if quantized else None,
        "time_dense_s": first.dense_s if first else None,
        "time_dedup_s": first.dedup_s if first else None,
        "time_speedup": first.speedup if first else None,
        "flops_dedup_no_prefix": flops.batch * flops.flops_dedup_no_prefix_per_sample,
        "total_savings_no_prefix": flops.total_savings_no_prefix,
        "flops_dense_per_sample": flops.flops_dense_per_sample,
        "flops_dedup_per_sample": flops.flops_dedup_per_sample,
        "flops_phase_dense_per_sample": flops.phase("dense") if phase else None,
        "flops_phase_dedup_per_sample": flops.phase("dedup") if phase else None,
        "flops_incremental": flops.batch * flops.flops_incremental_per_sample,
        "total_savings_incremental": flops.total_savings_incremental,
        "flops_incremental_per_sample": flops.flops_incremental_per_sample,
        "time_incremental_s": first.incremental_s if first else None,
        "time_speedup_incremental": first.speedup_incremental if first else None,
        "flops_quantized_dense_per_sample": flops.quantized_dense_per_sample if quantized else None,
        "flops_quantized_dedup_per_sample": flops.quantized_dedup_per_sample if quantized else None,
        "reference_per_site": reference,
        "n_sites": model.n_sites,
        "n_tokens": model.patching.n_tokens,
        "patch": model.config.patch,
        "d_model": model.config.d_model,
        "n_heads": model.config.n_heads,
        "n_blocks": model.config.n_blocks,
        "d_ff": model.config.d_ff,
        "phase_blocks": model.config.phase_blocks,
        "vq_heads": model.vq_config.heads if isinstance(model, VQTransformer) else 0,
        "vq_codes": model.vq_config.codes if isinstance(model, VQTransformer) else 0,
        "n_params": model.n_params,
        "batch": flops.batch,  # distinct samples per batch (the FLOPs and timings are on these)
        "drawn_batch": flops.drawn,
        "n_batches": flops.n_batches,
        "configs_per_sample": flops.configs_per_sample,
        "flop_ops": "matmul+elementwise" if flops.elementwise else "matmul",
        "dense_samples": dense_samples,
    }
    fractions = flops.unique_fraction()
    for layer in layer_names(model):
        row[f"unique_frac_{layer}"] = fractions.get(layer)
    for layer in layer_names(model)[1:-1]:
        tuples = flops.code_tuples.get(layer)
        row[f"code_tuples_{layer}"] = tuples / flops.n_batches if tuples is not None else None
    row["device"] = str(device)
    row["time_device"] = first.device if first else None
    row["threads"] = torch.get_num_threads()
    row["torch_version"] = torch.__version__
    for name, timing in timings.items():
        row[f"time_dense_s_{name}"] = timing.dense_s
        row[f"time_dedup_s_{name}"] = timing.dedup_s
        row[f"time_speedup_{name}"] = timing.speedup
        row[f"time_incremental_s_{name}"] = timing.incremental_s
        row[f"load_avg_{name}"] = timing.load_before
    row["model_dir"] = model_dir
    return row


def component_rows(row: dict, flops: FlopProfile) -> list[dict]:
    """The per-component rows of one model (every component of :data:`COMPONENTS`, zeros included), each with
    the phase network's share per path (blank without a phase network, ``row["phase_blocks"] == 0``)."""
    rows = []
    phase = flops.by_component_all_paths(phase_only=True) if row["phase_blocks"] else None
    for component, paths in flops.by_component_all_paths().items():
        dense, dedup = paths["dense"], paths["dedup"]
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
                "flops_dedup_no_prefix_per_sample": paths["dedup_no_prefix"],
                "flops_incremental_per_sample": paths["incremental"],
                **{
                    f"flops_phase_{path}_per_sample": phase[component][path] if phase is not None else None
                    for path in PATHS
                },
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
