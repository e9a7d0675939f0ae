"""Up-front cost of a training step: FLOPs from the model's shape, seconds from a timed probe on this machine.

A stage prints this before its first step (:meth:`vqnqs.stages.driver.Stage.run`), so a request that would
take hours says so at once instead of staying silent. For a transformer of ``T`` tokens, width ``d``,
feed-forward width ``f``, ``L`` full blocks (plus the attention-only half-block) and ``V`` token values, one
configuration's dense forward costs (multiply-adds counted as 2 FLOPs)::

    F = T (L (8 d^2 + 4 d f) + 8 d^2 + 2 d V)  +  (L + 1) 4 d T^2      projections + attention

(the attention computes the whole masked ``T x T`` score and mixing products; elementwise ops left out).
Position attention projects the values only and has no scores: ``8 d^2`` becomes ``4 d^2`` in both terms and
the attention ``2 d T^2`` a block. These are
the matmul count of :func:`vqnqs.profiling.flops.count_flops` exactly (a test pins it). A phase network of
``L_phi`` encoder blocks adds ``T (L_phi (8 d^2 + 4 d f) + 2 d) + L_phi 4 d T^2`` to every forward but the
sampler's (sampling draws from ``P`` alone).

One VMC step on ``Ns`` samples (:func:`vqnqs.vmc.step.vmc_step`), counting every sample as distinct (an upper
bound: repeated samples are evaluated once) and every connection as valid (an upper bound: ``M`` =
``hamiltonian.max_connections`` includes the sample itself)::

    sampling      Ns F               (the KV cache computes each position once; T sequential calls)
    local energy  Ns M F             (dense forward; the dedup engine computes less)
    gradient      3 Ns F             (forward and backward of the per-sample log-derivatives)
    SR            Ns^2 Np            (the minSR Gram matrix from its lower triangle; its solve is smaller)

Seconds: the network's FLOPs at the rate of one timed forward of a probe batch, plus the sequential sampler's
overhead from one timed probe sample; the SR FLOPs at the rate of one timed matrix product of the Gram's shape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from vqnqs.models import AutoregressiveTransformer
from vqnqs.physics.hamiltonian import Hamiltonian

# Configurations in the timing probe, at most (fewer when one forward is already this many FLOPs).
PROBE_CONFIGS = 64
PROBE_FLOPS = 2e9
# The Gram-matrix probe: (PROBE_ROWS, Np) @ (Np, PROBE_ROWS), its Np capped here.
PROBE_ROWS, PROBE_COLUMNS = 256, 8192


def forward_flops(model: AutoregressiveTransformer, phase: bool = True) -> float:
    """FLOPs of one configuration's dense forward (module docstring); ``phase=False``: of ``P`` alone."""
    config = model.config
    t, d, f, layers = model.patching.n_tokens, config.d_model, config.d_ff, config.n_blocks
    vocab = model.patching.vocab_size
    position = config.attention == "position"
    mix = 4 if position else 8  # qkv_proj (values only, or q, k, v) and W_O
    projections = t * (layers * (mix * d * d + 4 * d * f) + mix * d * d + 2 * d * vocab)
    attention = (layers + 1) * (2 if position else 4) * d * t * t
    encoder = config.phase_blocks if phase else 0
    phase_flops = t * (encoder * (8 * d * d + 4 * d * f) + 2 * d) + encoder * 4 * d * t * t if encoder else 0
    return float(projections + attention + phase_flops)


def vmc_step_flops(model: AutoregressiveTransformer, hamiltonian: Hamiltonian, n_samples: int) -> dict[str, float]:
    """Upper bounds on the FLOPs of one VMC step, by part (module docstring)."""
    flops = forward_flops(model)
    return {
        "sampling": n_samples * forward_flops(model, phase=False),
        "local energy": n_samples * hamiltonian.max_connections * flops,
        "gradient": 3 * n_samples * flops,
        "SR": float(n_samples**2 * model.n_params),
    }


@dataclass(frozen=True)
class Rate:
    """What one probe measured on this machine."""

    flops_per_s: float  # dense forward FLOPs per second
    gram_flops_per_s: float  # FLOPs per second of the SR Gram matrix's product
    sampling_overhead_s: float  # seconds of one sampling call beyond its FLOPs (T sequential steps)

    def seconds(self, flops: dict[str, float]) -> float:
        network = sum(value for part, value in flops.items() if part != "SR") / self.flops_per_s
        return network + flops.get("SR", 0.0) / self.gram_flops_per_s + self.sampling_overhead_s * ("sampling" in flops)


def measure_rate(model: AutoregressiveTransformer, generator_seed: int = 0) -> Rate:
    """Time one forward of a probe batch, one sample of two configurations and one Gram-shaped product (no
    gradients; the model and every random stream of the caller are left as they were)."""
    flops = forward_flops(model)
    n_probe = max(1, min(PROBE_CONFIGS, int(PROBE_FLOPS / flops)))
    generator = torch.Generator(model.device).manual_seed(generator_seed)
    with torch.no_grad():
        start = time.perf_counter()
        probe = model.sample(2, generator=generator)  # (2, N)
        sample_s = time.perf_counter() - start
        sample_flops = 2 * forward_flops(model, phase=False)
        batch = probe[torch.arange(n_probe) % 2]  # (n_probe, N)
        start = time.perf_counter()
        model.log_psi(batch)
        forward_s = time.perf_counter() - start
        o = torch.zeros(
            PROBE_ROWS, min(model.n_params, PROBE_COLUMNS), dtype=model.head.weight.dtype, device=model.device
        )
        start = time.perf_counter()
        o @ o.T
        gram_s = time.perf_counter() - start
    rate = n_probe * flops / max(forward_s, 1e-9)
    gram_rate = 2.0 * o.shape[0] ** 2 * o.shape[1] / max(gram_s, 1e-9)
    return Rate(rate, gram_rate, max(0.0, sample_s - sample_flops / rate))


def describe_seconds(seconds: float) -> str:
    """``12 s``, ``3.4 min``, ``2.1 h``, ``5.0 days``."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.2g} s"


def estimate_line(name: str, flops: dict[str, float], rate: Rate, steps: int) -> str:
    """One line for stderr: seconds per step and for ``steps`` steps, and where the FLOPs go."""
    per_step = rate.seconds(flops)
    total = sum(flops.values())
    parts = ", ".join(f"{part} {value / total:.0%}" for part, value in flops.items())
    return (
        f"{name}: estimated at most ~{describe_seconds(per_step)} per step, ~{describe_seconds(per_step * steps)} "
        f"for {steps} steps ({total / 1e9:.3g} GFLOP per step: {parts}; network at {rate.flops_per_s / 1e9:.3g} "
        f"GFLOP/s, SR at {rate.gram_flops_per_s / 1e9:.3g} GFLOP/s, measured here)"
    )


def fit_step_flops(student: AutoregressiveTransformer, teacher: AutoregressiveTransformer, n_samples: int) -> dict:
    """FLOPs of one distillation fit step (:func:`vqnqs.vmc.step.fit_step`), by part."""
    return {
        # teacher samples (from P alone) and their log-amplitudes
        "sampling": n_samples * (forward_flops(teacher, phase=False) + forward_flops(teacher)),
        "fit": 4 * n_samples * forward_flops(student),  # codebook upkeep forward, then forward and backward
    }
