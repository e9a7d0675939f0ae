"""Evaluation of a trained model: sampled energy, relative error, dense-vs-dedup check, fidelity to a teacher.

- :func:`sampled_energy`: ``E = mean E_loc`` on fresh exact samples, drawn and evaluated in chunks, each
  chunk's distinct samples once (weighted by their frequency), through a log-psi engine.
- :func:`energy_metrics`: the figures every stage reports (energy per site, its error, variance, rel_error and
  the V-score ``N Var(E_loc) / E^2`` of Wu et al., Science 2024, which vanishes for an eigenstate).
- :func:`dedup_check`: dense and dedup local energies of a float64 copy of the model must agree (the
  project's core invariant, checked on the model a stage hands on).
- :func:`fidelity`: ``F = |<psi_t|psi_s>|^2 = (mean_{s ~ |psi_t|^2} psi_s(s) / psi_t(s))^2`` and the
  log-amplitude differences on teacher samples.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from vqnqs.models import AutoregressiveTransformer
from vqnqs.physics.hamiltonian import Hamiltonian
from vqnqs.vmc.gradient import EnergyStats, energy_statistics
from vqnqs.vmc.local_energy import local_energy
from vqnqs.vmc.log_psi import make_log_psi
from vqnqs.vmc.step import TrainingError, fit_distance


def relative_error(value: float, reference: float | None) -> float | None:
    """``|value - reference| / |reference|``; None without a (nonzero) reference."""
    if reference is None or reference == 0:
        return None
    return abs(value - reference) / abs(reference)


def v_score(stats: EnergyStats, n_sites: int) -> float | None:
    """``N Var(E_loc) / E^2`` (whole-system E and variance; Wu et al., Science 2024): zero for an eigenstate,
    independent of any reference, so it still ranks states once their error reaches the reference's own."""
    return n_sites * stats.variance / stats.mean**2 if stats.mean != 0 else None


def energy_metrics(stats: EnergyStats, n_sites: int, reference: float | None) -> dict:
    """``energy_per_site``, ``energy_error``, ``variance`` (whole system), ``rel_error`` and ``v_score``."""
    energy = stats.mean / n_sites
    return {
        "energy_per_site": energy,
        "energy_error": stats.error / n_sites,
        "variance": stats.variance,
        "rel_error": relative_error(energy, reference),
        "v_score": v_score(stats, n_sites),
    }


@dataclass(frozen=True)
class SampledEnergy:
    stats: EnergyStats  # of the whole system
    eloc_seconds: float  # wall time in local energies
    configs: int  # connected configurations evaluated
    kept: torch.Tensor  # the first ``keep`` samples drawn (B, N), for later checks

    @property
    def eloc_configs_per_s(self) -> float:
        return self.configs / self.eloc_seconds


@torch.no_grad()
def sampled_energy(
    hamiltonian: Hamiltonian,
    model: AutoregressiveTransformer,
    generator: torch.Generator,
    n_samples: int,
    chunk_size: int,
    engine: str,
    keep: int = 0,
) -> SampledEnergy:
    """Energy statistics on ``n_samples`` fresh samples (``chunk_size`` at a time); raises
    :class:`TrainingError` if a local energy is not finite."""
    log_psi = make_log_psi(model, engine)
    e_locs, all_counts, kept, seconds = [], [], [], 0.0
    for start in range(0, n_samples, chunk_size):
        samples = model.sample(min(chunk_size, n_samples - start), generator=generator)  # (n, N)
        if start < keep:
            kept.append(samples[: keep - start])
        distinct, counts = torch.unique(samples, dim=0, return_counts=True)  # (U, N), (U,)
        tick = time.perf_counter()
        e_locs.append(local_energy(hamiltonian, log_psi, distinct, chunk_size=chunk_size))
        seconds += time.perf_counter() - tick
        all_counts.append(counts)
    e_loc = torch.cat(e_locs)
    if not torch.isfinite(e_loc).all():
        raise TrainingError(f"evaluation: {int((~torch.isfinite(e_loc)).sum())} local energies are not finite")
    weights = torch.cat(all_counts).to(torch.float64) / n_samples
    stats = energy_statistics(e_loc, weights, n_samples)
    return SampledEnergy(stats, seconds, log_psi.count, torch.cat(kept) if kept else torch.empty(0))


def dedup_check(hamiltonian: Hamiltonian, model: AutoregressiveTransformer, s: torch.Tensor, chunk_size: int) -> dict:
    """Dense vs dedup local energies of ``model`` (a float64 copy) on ``s (B, N)``.

    Returns ``max_rel_diff = max |E_dense - E_dedup| / mean |E_dense|`` (per sample) and
    ``mean_rel_diff = |mean E_dense - mean E_dedup| / |mean E_dense|``.
    """
    model64 = copy.deepcopy(model).double().eval()
    dense = local_energy(hamiltonian, model64, s, chunk_size=chunk_size, engine="dense")
    dedup = local_energy(hamiltonian, model64, s, chunk_size=chunk_size, engine="dedup")
    scale = dense.abs().mean().clamp_min(1e-300)
    return {
        "max_rel_diff": float((dense - dedup).abs().max() / scale),
        "mean_rel_diff": float((dense.mean() - dedup.mean()).abs() / dense.mean().abs().clamp_min(1e-300)),
    }


@torch.no_grad()
def fidelity(
    student: AutoregressiveTransformer,
    teacher: AutoregressiveTransformer,
    generator: torch.Generator,
    n_samples: int,
    chunk_size: int,
) -> dict:
    """L2, mean and max ``|Δ log psi|`` and the fidelity (with its error) on fresh teacher samples.

    With a phase, ``|Δ log psi|^2`` is the 2 pi-blind :func:`~vqnqs.vmc.step.fit_distance` and the fidelity
    ``|<psi_t|psi_s>|^2`` (both states are normalised: ``P`` is).
    """
    deltas = []
    for start in range(0, n_samples, chunk_size):
        samples = teacher.sample(min(chunk_size, n_samples - start), generator=generator)
        delta = student.log_psi(samples) - teacher.log_psi(samples)
        deltas.append(delta.to(torch.complex128 if delta.is_complex() else torch.float64))
    delta = torch.cat(deltas)  # log psi_s - log psi_t
    ratio = delta.exp()  # psi_s / psi_t; its mean under |psi_t|^2 is the overlap <psi_t|psi_s>
    overlap = ratio.mean()
    overlap_error = ((ratio - overlap).abs().pow(2).sum() / max(len(ratio) - 1, 1) / len(ratio)).sqrt().item()
    distance = fit_distance(delta)  # |Δ log psi|^2
    return {
        "l2_dlog_psi": distance.mean().item(),
        "mean_abs_dlog_psi": distance.sqrt().mean().item(),
        "max_abs_dlog_psi": distance.sqrt().max().item(),
        "fidelity": abs(overlap.item()) ** 2,
        "fidelity_error": 2 * abs(overlap.item()) * overlap_error,
        "fidelity_samples": n_samples,
    }
