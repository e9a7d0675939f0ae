"""The cost of one local energy of a model through each engine, in scale-free units.

For a batch of samples ``s (B, N)`` of a model and the Hamiltonian's connected configurations of them:

- **forward passes per sample**: an engine's local-energy FLOPs per sample divided by the FLOPs of one dense
  forward of one configuration. The dense engine runs every connected configuration, so its figure is the
  number of connected configurations per sample (``N + 1`` on the TFIM chain); an engine that reuses work
  across configurations comes closer to the floor of about 1 (the sample's own forward);
- **rows per connected configuration**: hidden-state rows computed per configuration, all layers (the full
  blocks and the final half-block). Dense: ``T (n_blocks + 1)`` for ``T`` tokens. Incremental: the distinct
  new states of the configurations' changed rows (``unique_rows`` of :mod:`vqnqs.dedup.incremental`,
  deduplicated across the batch). The dedup engine does not count rows (None);
- **seconds per sample**: median wall-clock of ``local_energy`` per sample, the engines taking turns.

Every engine computes the same local energies (the dense forward reorganised), so the figures compare cost
only.
"""

from __future__ import annotations

import statistics

import torch

from vqnqs.dedup.incremental import incremental_log_prob
from vqnqs.models.transformer import AutoregressiveTransformer
from vqnqs.physics.hamiltonian import Hamiltonian
from vqnqs.profiling.flops import COMPONENT_OF_GROUP, COMPONENTS, local_energy_flops
from vqnqs.profiling.timing import time_call
from vqnqs.vmc.local_energy import local_energy

ENGINES = ("dense", "dedup", "incremental")


def flops_by_component(hamiltonian: Hamiltonian, model: AutoregressiveTransformer, s: torch.Tensor, engine: str):
    """Local-energy FLOPs per sample of ``s (B, N)`` through ``engine``: ``{"total": ..., component: ...}``."""
    parts = dict.fromkeys(COMPONENTS, 0.0)
    for (_, group), flops in local_energy_flops(hamiltonian, model, s, engine).items():
        parts[COMPONENT_OF_GROUP[group]] += flops / s.shape[0]
    return {"total": sum(parts.values()), **parts}


def seconds_per_sample(
    hamiltonian: Hamiltonian, model: AutoregressiveTransformer, batches: dict[str, torch.Tensor], repeats: int
) -> dict[str, float]:
    """Median seconds per sample of ``local_energy`` through each engine of ``batches`` (engine -> its samples),
    after one warm-up call each; the engines take turns, in reversed order every other repeat."""
    engines = list(batches)
    calls = {e: (lambda e=e: local_energy(hamiltonian, model, batches[e], engine=e)) for e in engines}
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {e: [] for e in engines}
    for repeat in range(repeats):
        for e in engines if repeat % 2 == 0 else engines[::-1]:
            times[e].append(time_call(calls[e], model.device) / batches[e].shape[0])
    return {e: statistics.median(values) for e, values in times.items()}


def engine_costs(
    hamiltonian: Hamiltonian,
    model: AutoregressiveTransformer,
    s: torch.Tensor,
    engines: tuple[str, ...] = ENGINES,
    dense_samples: int = 8,
    repeats: int = 3,
) -> dict:
    """Forward passes, rows and seconds per sample of ``s (B, N)`` through each of ``engines`` (see the module).

    The dense engine runs on the first ``dense_samples`` samples only: its cost per configuration does not
    depend on the batch, the others' does (they reuse work across it). ``repeats`` 0 skips the timing.
    Returns ``{"configs_per_sample", "certified_share", "flops_per_sample": {engine: by component},
    "forwards_per_sample", "rows_per_config", "seconds_per_sample": {engine: float | None}}``.
    """
    with torch.no_grad():
        conn = hamiltonian.connected(s)
        configs = int(conn.valid.sum())
        stats = incremental_log_prob(model, s, conn.configs, conn.valid).stats
    on = {e: s[:dense_samples] if e == "dense" else s for e in engines}
    flops = {e: flops_by_component(hamiltonian, model, on[e], e) for e in ("dense", *engines)}
    one_forward = flops["dense"]["total"] / (configs / s.shape[0])  # FLOPs of one dense forward
    rows = {
        "dense": model.patching.n_tokens * (len(model.blocks) + 1),
        "dedup": None,
        "incremental": stats["unique_rows"] / configs,
    }
    decided = stats["rows_certified"] + stats["rows_encoded"]
    return {
        "configs_per_sample": configs / s.shape[0],
        "certified_share": stats["rows_certified"] / decided if decided else None,
        "flops_per_sample": {e: flops[e] for e in engines},
        "forwards_per_sample": {e: flops[e]["total"] / one_forward for e in engines},
        "rows_per_config": {e: rows[e] for e in engines},
        "seconds_per_sample": seconds_per_sample(hamiltonian, model, on, repeats) if repeats else {},
    }
