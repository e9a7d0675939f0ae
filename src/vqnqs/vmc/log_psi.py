"""One factory for log-psi evaluators: the dense forward, or the dedup engine with or without prefix reuse.

Every caller that needs ``log psi`` of a model on a flat batch of configurations (local energies in training,
distillation, profiling, benchmarks) gets it here, by engine name::

    dense            model.log_psi(s): the plain forward
    dedup            the dedup engine, attention once per distinct id-prefix (ours; the default in training)
    dedup_no_prefix  the dedup engine, attention once per location (the paper's engine)
    incremental      each connected configuration from its sample's cached forward (vqnqs.dedup.incremental)

All compute the same ``log psi`` (the engines are the dense forward reorganised); only the cost differs. A
flat batch ``(K, N)`` goes through ``__call__``; the connected configurations of samples, ``(B, M, N)``, through
:meth:`LogPsi.connected`, which the incremental engine needs (it works from each configuration's sample; on a
flat batch it falls back to the dedup engine). An evaluator counts the configurations it was given.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vqnqs.dedup import dedup_log_psi
from vqnqs.dedup.incremental import incremental_log_prob
from vqnqs.dedup.phase import dedup_phase
from vqnqs.models.transformer import AutoregressiveTransformer

ENGINES = ("dense", "dedup", "dedup_no_prefix", "incremental")


class LogPsi:
    """``(K, N) -> (K,)`` log psi of ``model`` through ``engine``; ``count`` sums the K of every call."""

    def __init__(self, model: AutoregressiveTransformer, engine: str = "dense") -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
        self.model = model
        self.engine = engine
        self.count = 0

    def __call__(self, s: Tensor) -> Tensor:
        self.count += s.shape[0]
        if self.engine == "dense":
            return self.model.log_psi(s)
        return dedup_log_psi(self.model, s, prefix_reuse=self.engine != "dedup_no_prefix")

    def connected(self, s: Tensor, configs: Tensor, valid: Tensor) -> Tensor:
        """``log psi (B, M)`` of the configurations ``configs (B, M, N)`` connected to ``s (B, N)``; -inf where
        not ``valid``. Every valid configuration of the batch goes to the engine in one call."""
        if self.engine == "incremental":
            self.count += int(valid.sum())
            log_prob = incremental_log_prob(self.model, s, configs, valid).log_prob.to(valid.device)
            log_psi = torch.where(valid, 0.5 * log_prob, float("-inf"))
            if self.model.phase is None:
                return log_psi
            # The encoder has no prefix structure to update from: its phase goes through the dedup stages.
            phase = flat_connected(lambda x: dedup_phase(self.model.phase, x), configs, valid)  # -inf where invalid
            return torch.complex(log_psi, torch.where(valid, phase, 0.0).to(log_psi.dtype))
        return flat_connected(self, configs, valid)


def flat_connected(log_psi: Callable[[Tensor], Tensor], configs: Tensor, valid: Tensor) -> Tensor:
    """``log psi (B, M)`` of ``configs (B, M, N)`` through a flat evaluator ``(K, N) -> (K,)`` called once on the
    valid ones; -inf where not ``valid``."""
    values = log_psi(configs[valid])  # (K,)
    out = torch.full(valid.shape, float("-inf"), dtype=values.dtype, device=values.device)
    return out.masked_scatter(valid.to(values.device), values)


def make_log_psi(model: AutoregressiveTransformer, engine: str = "dense") -> LogPsi:
    """The log-psi evaluator of ``model`` through ``engine`` (one of :data:`ENGINES`)."""
    return LogPsi(model, engine)
