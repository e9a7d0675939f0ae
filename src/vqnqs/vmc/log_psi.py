"""One factory for log-psi evaluators: the dense forward, or the dedup engine with or without prefix reuse.

Every caller that needs ``log psi`` of a model on a flat batch of configurations (local energies in training,
distillation, profiling, benchmarks) gets it here, by engine name::

    dense            model.log_psi(s): the plain forward
    dedup            the dedup engine, attention once per distinct id-prefix (ours; the default in training)
    dedup_no_prefix  the dedup engine, attention once per location (the paper's engine)

All three compute the same ``log psi`` (the engines are the dense forward reorganised); only the cost differs.
An evaluator counts the configurations it was given, for throughput figures.
"""

from __future__ import annotations

from vqnqs.models.transformer import AutoregressiveTransformer

ENGINES = ("dense", "dedup", "dedup_no_prefix")


class LogPsi:
    """``(K, N) -> (K,)`` log psi of ``model`` through ``engine``; ``count`` sums the K of every call."""

    def __init__(self, model: AutoregressiveTransformer, engine: str = "dense") -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
        self.model = model
        self.engine = engine
        self.count = 0

    def __call__(self, s):
        self.count += s.shape[0]
        if self.engine == "dense":
            return self.model.log_psi(s)
        from vqnqs.dedup import dedup_log_psi  # local: the engine imports the models, not vmc

        return dedup_log_psi(self.model, s, prefix_reuse=self.engine == "dedup")


def make_log_psi(model: AutoregressiveTransformer, engine: str = "dense") -> LogPsi:
    """The log-psi evaluator of ``model`` through ``engine`` (one of :data:`ENGINES`)."""
    return LogPsi(model, engine)
