"""The averaged FLOP profile of one model: local-energy FLOPs per sample, dense vs dedup, and the savings.

Savings (the paper's Table 1): ``total_savings = FLOPs(dense local energy) / FLOPs(local energy with
reuse)``, ``quantized_ops_savings`` = the same ratio over the quantised ops only, both paths counting
the same set of (layer, group) cells.

Two readings of "with reuse". Our engine also runs attention once per distinct *prefix* of ids
(:mod:`vqnqs.dedup.prefix`), a reuse any autoregressive model allows, the baseline included. The paper's
engine deduplicates the per-location ops only. Both are counted, through the engines of
:mod:`vqnqs.vmc.log_psi`: ``dedup`` (ours, the default) and ``dedup_no_prefix`` (attention once per
location), whose ratios (``total_savings_no_prefix``) are the like-for-like comparison with the paper's
numbers. The quantised ops run once per distinct key either way, so ``quantized_ops_savings`` does not
depend on prefix reuse.

The phase network alone (:mod:`vqnqs.models.phase`): its FLOPs are the cells of its layers (``phase_embed``,
``phase_block{i}``, ``phase_output``; :func:`is_phase`), so ``phase(path) = sum_{cell in phase layers}
FLOPs_path(cell)`` per sample; the totals above count both networks.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from vqnqs.dedup import dedup_log_prob
from vqnqs.models.transformer import AutoregressiveTransformer
from vqnqs.physics.hamiltonian import Hamiltonian
from vqnqs.profiling.batches import connected_configs, distinct_samples, draw_samples
from vqnqs.profiling.flops import COMPONENT_OF_GROUP, COMPONENTS, Cell, local_energy_flops
from vqnqs.profiling.quantized import quantized_cells

# The counted paths: the dense forward, the dedup engine (with and without prefix reuse), the incremental engine.
PATHS = ("dense", "dedup", "dedup_no_prefix", "incremental")
PHASE_PREFIX = "phase_"  # the layers of the phase network (PhaseNetwork.components)


def is_phase(cell: Cell) -> bool:
    """Whether a ``(layer, group)`` cell is the phase network's (its layer starts with ``phase_``)."""
    return cell[0].startswith(PHASE_PREFIX)


def layer_names(model: AutoregressiveTransformer) -> list[str]:
    """The dedup engine's stage names: ``embed, block0, .., final``."""
    return ["embed", *(f"block{i}" for i in range(len(model.blocks))), "final"]


@dataclass
class FlopProfile:
    """Local-energy FLOPs of one model on ``n_batches`` batches of ``batch`` samples, dense vs dedup.

    ``dense`` / ``dedup`` / ``dedup_no_prefix``: mean FLOPs per SAMPLE (all its valid connected
    configurations) by ``(layer, group)``, the last without prefix reuse; ``unique_rows`` / ``locations``:
    summed over batches per engine stage (``embed``, ``block<i>``, ``final``) and ``code_tuples`` per
    quantised block, from the engine's statistics.
    """

    batch: float  # distinct samples per batch (mean), on which both paths are counted
    n_batches: int
    n_configs: int  # valid connected configurations evaluated, all batches together
    dense: dict[Cell, float]
    dedup: dict[Cell, float]
    quantized: frozenset[Cell]
    drawn: int = 0  # samples drawn per batch, repeats included
    dedup_no_prefix: dict[Cell, float] = field(default_factory=dict)
    incremental: dict[Cell, float] = field(default_factory=dict)  # the incremental engine (vqnqs.dedup.incremental)
    unique_rows: dict[str, int] = field(default_factory=dict)
    locations: dict[str, int] = field(default_factory=dict)
    code_tuples: dict[str, int] = field(default_factory=dict)
    elementwise: bool = True

    @property
    def n_samples(self) -> int:
        return round(self.batch * self.n_batches)

    @property
    def configs_per_sample(self) -> float:
        return self.n_configs / max(self.n_samples, 1)

    @property
    def flops_dense_per_sample(self) -> float:
        return sum(self.dense.values())

    @property
    def flops_dedup_per_sample(self) -> float:
        return sum(self.dedup.values())

    @property
    def flops_dense_per_batch(self) -> float:
        return self.batch * self.flops_dense_per_sample

    @property
    def flops_dedup_per_batch(self) -> float:
        return self.batch * self.flops_dedup_per_sample

    @property
    def quantized_dense_per_sample(self) -> float:
        return sum(v for cell, v in self.dense.items() if cell in self.quantized)

    @property
    def quantized_dedup_per_sample(self) -> float:
        return sum(v for cell, v in self.dedup.items() if cell in self.quantized)

    @property
    def total_savings(self) -> float:
        return savings(self.flops_dense_per_sample, self.flops_dedup_per_sample)

    @property
    def quantized_ops_savings(self) -> float:
        return savings(self.quantized_dense_per_sample, self.quantized_dedup_per_sample)

    @property
    def flops_dedup_no_prefix_per_sample(self) -> float:
        return sum(self.dedup_no_prefix.values())

    @property
    def total_savings_no_prefix(self) -> float:
        return savings(self.flops_dense_per_sample, self.flops_dedup_no_prefix_per_sample)

    @property
    def flops_incremental_per_sample(self) -> float:
        return sum(self.incremental.values())

    @property
    def total_savings_incremental(self) -> float:
        return savings(self.flops_dense_per_sample, self.flops_incremental_per_sample)

    def phase(self, path: str) -> float:
        """FLOPs per sample of the phase network alone on ``path`` (one of :data:`PATHS`): its cells summed."""
        return sum(flops for cell, flops in getattr(self, path).items() if is_phase(cell))

    def unique_fraction(self) -> dict[str, float]:
        """``unique rows / locations`` after each engine stage (1 = no reuse)."""
        return {name: self.unique_rows[name] / max(self.locations[name], 1) for name in self.unique_rows}

    def by_component(self) -> dict[str, tuple[float, float]]:
        """``{component: (dense, dedup)}`` FLOPs per sample, every component of :data:`COMPONENTS` present."""
        return {name: (paths["dense"], paths["dedup"]) for name, paths in self.by_component_all_paths().items()}

    def by_component_all_paths(self, phase_only: bool = False) -> dict[str, dict[str, float]]:
        """``{component: {path: FLOPs per sample}}`` over :data:`PATHS`, every component of :data:`COMPONENTS`;
        ``phase_only``: the phase network's cells only (:func:`is_phase`)."""
        out = {name: dict.fromkeys(PATHS, 0.0) for name in COMPONENTS}
        for path in PATHS:
            for cell, flops in getattr(self, path).items():
                if is_phase(cell) or not phase_only:
                    out[COMPONENT_OF_GROUP[cell[1]]][path] += flops
        return out

    def by_layer_component(self) -> dict[tuple[str, str], tuple[float, float]]:
        """``{(layer, component): (dense, dedup)}`` FLOPs per sample, only the non-zero ones."""
        out: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        for index, table in enumerate((self.dense, self.dedup)):
            for (layer, group), flops in table.items():
                out[(layer, COMPONENT_OF_GROUP[group])][index] += flops
        return {key: (dense, dedup) for key, (dense, dedup) in out.items()}


def savings(dense: float, dedup: float) -> float:
    """``dense / dedup``; NaN when nothing was counted on either side, inf when only the dedup side is 0."""
    if dedup > 0:
        return dense / dedup
    return math.inf if dense > 0 else math.nan


def profile_flops(
    hamiltonian: Hamiltonian,
    model: AutoregressiveTransformer,
    batch: int = 512,
    n_batches: int = 4,
    seed: int = 0,
    chunk_size: int | None = None,
    elementwise: bool = True,
    batches: Iterable[torch.Tensor] | None = None,
    dense_samples: int | None = None,
) -> FlopProfile:
    """Mean local-energy FLOPs per sample, dense vs dedup, over ``n_batches`` batches of ``batch`` samples.

    Batch ``b`` is drawn from ``model`` itself (exact sampling, seed ``seed + b``) unless ``batches`` is
    given. Repeated samples are dropped first (:func:`distinct_samples`), on both paths: a local energy needs
    each distinct configuration once, as the trainer evaluates it, so savings never come from mere
    repetition; "per sample" means per distinct sample, and ``batch`` is their mean number per batch.
    Each chunk of ``chunk_size`` samples (default: the whole batch) is deduplicated on its own, as in
    :func:`vqnqs.vmc.local_energy.local_energy`; the engine's statistics are taken on the same chunks.

    ``dense_samples``: count the dense path on the first ``dense_samples`` samples of each batch only and
    scale by the batch's number of valid connected configurations over theirs: the dense forward costs the
    same for every configuration, so this is exact for every network op (up to per-call constants: the
    codebook norms ``||W||^2``, H*Q*e products per quantiser call with ``elementwise``), and off by a few
    FLOPs per sample for the local-energy arithmetic. None: count the whole batch.
    """
    if batches is None:
        batches = (draw_samples(model, batch, seed + b) for b in range(n_batches))
    dense: dict[Cell, float] = defaultdict(float)
    dedup: dict[Cell, float] = defaultdict(float)
    dedup_no_prefix: dict[Cell, float] = defaultdict(float)
    incremental: dict[Cell, float] = defaultdict(float)
    unique_rows: dict[str, int] = defaultdict(int)
    locations: dict[str, int] = defaultdict(int)
    code_tuples: dict[str, int] = defaultdict(int)
    n_samples = n_configs = count = drawn = 0
    for s in batches:
        count += 1
        drawn += s.shape[0]
        s = distinct_samples(s)
        n_samples += s.shape[0]
        batch_configs = 0
        step = s.shape[0] if chunk_size is None else int(chunk_size)
        for start in range(0, s.shape[0], step):
            configs = connected_configs(hamiltonian, s[start : start + step])
            batch_configs += configs.shape[0]
            with torch.no_grad():
                stats = dedup_log_prob(model, configs).stats
            for stat in stats:
                unique_rows[stat.layer] += stat.unique_rows
                locations[stat.layer] += stat.locations
                if stat.code_tuples is not None:
                    code_tuples[stat.layer] += stat.code_tuples
        n_configs += batch_configs
        s_dense, scale = s, 1.0
        if dense_samples is not None and dense_samples < s.shape[0]:
            s_dense = s[: max(int(dense_samples), 1)]
            scale = batch_configs / max(connected_configs(hamiltonian, s_dense).shape[0], 1)
        for cell, flops in local_energy_flops(hamiltonian, model, s_dense, "dense", chunk_size, elementwise).items():
            dense[cell] += flops * scale
        for engine, table in (("dedup", dedup), ("dedup_no_prefix", dedup_no_prefix), ("incremental", incremental)):
            for cell, flops in local_energy_flops(hamiltonian, model, s, engine, chunk_size, elementwise).items():
                table[cell] += flops
    if count == 0:
        raise ValueError("profile_flops: no batches")
    return FlopProfile(
        batch=n_samples / count,
        drawn=drawn // count,
        n_batches=count,
        n_configs=n_configs,
        dense={cell: flops / n_samples for cell, flops in dense.items()},
        dedup={cell: flops / n_samples for cell, flops in dedup.items()},
        dedup_no_prefix={cell: flops / n_samples for cell, flops in dedup_no_prefix.items()},
        incremental={cell: flops / n_samples for cell, flops in incremental.items()},
        quantized=quantized_cells(model),
        unique_rows=dict(unique_rows),
        locations=dict(locations),
        code_tuples=dict(code_tuples),
        elementwise=elementwise,
    )
