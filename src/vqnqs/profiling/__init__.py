"""FLOP and wall-clock measurement of the local energy, dense vs dedup (the ``profile`` stage).

- :mod:`vqnqs.profiling.flops`: FLOPs by ``(layer, group)`` of the network (:class:`FlopCounter`);
- :mod:`vqnqs.profiling.quantized`: the paper's quantised ops (:func:`quantized_cells`);
- :mod:`vqnqs.profiling.batches`: exact samples, distinct samples, connected configurations;
- :mod:`vqnqs.profiling.flop_profile`: FLOPs per sample averaged over batches, dense vs dedup, savings;
- :mod:`vqnqs.profiling.timing`: median wall-clock of both paths on the same batch;
- :mod:`vqnqs.profiling.scaling`: :func:`fit_power_law` (cost vs N);
- :mod:`vqnqs.profiling.untrained`: paper-shape VQ models with a data-initialised codebook (benchmarks);
- :mod:`vqnqs.profiling.table`: the profile table's rows (the stage itself: :mod:`vqnqs.stages.profile`).

Only :func:`fit_power_law` is imported eagerly (numpy only); the rest load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from vqnqs.profiling.scaling import fit_power_law

_LAZY = {
    "COMPONENTS": "flops",
    "FlopCounter": "flops",
    "count_flops": "flops",
    "local_energy_flops": "flops",
    "quantized_cells": "quantized",
    "model_bits": "quantized",
    "connected_configs": "batches",
    "distinct_samples": "batches",
    "draw_samples": "batches",
    "FlopProfile": "flop_profile",
    "layer_names": "flop_profile",
    "profile_flops": "flop_profile",
    "savings": "flop_profile",
    "Timing": "timing",
    "time_local_energy": "timing",
    "untrained_vq_model": "untrained",
}

__all__ = ["fit_power_law", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"vqnqs.profiling.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'vqnqs.profiling' has no attribute {name!r}")
