"""Exact variational energy of a model by enumeration: no sampling noise, for small lattices.

    <H> = sum_s P(s) E_loc(s)        over every configuration the model can produce

An autoregressive model is exactly normalised (sum_s P(s) = 1), so this is the exact expectation of H in the
model's state. With the Sz mask on, P vanishes outside the ground state's sector, and only that sector is
enumerated (4x4 Heisenberg: 12,870 states). The sampled estimates of the pipeline carry a statistical error;
this one does not, so it tells what the model really reached.
"""

from __future__ import annotations

import copy
import math

import torch

from vqnqs.models.transformer import AutoregressiveTransformer
from vqnqs.physics.basis import all_configurations
from vqnqs.physics.hamiltonian import Hamiltonian
from vqnqs.vmc.evaluation import relative_error
from vqnqs.vmc.local_energy import local_energy

MAX_STATES = 2**22  # enumeration beyond this is a job for sampling


def states_to_enumerate(hamiltonian: Hamiltonian, model: AutoregressiveTransformer) -> int:
    """Configurations with nonzero P: the model's Sz sector (``config.n_down`` down spins) or all 2^N."""
    n_sites, n_down = hamiltonian.n_sites, model.config.n_down
    return math.comb(n_sites, n_down) if n_down is not None else 2**n_sites


def exact_energy(hamiltonian: Hamiltonian, model: AutoregressiveTransformer, chunk_size: int = 1024) -> dict:
    """``{"energy_per_site", "norm", "n_states"}`` of ``model``'s state, summed over every configuration.

    The sum runs over the sector the model samples (``config.n_down``) or the whole space. ``norm`` = sum of
    P over the states enumerated (1 up to float rounding): a check that nothing was left out.
    """
    n_sites, n_down = hamiltonian.n_sites, model.config.n_down
    n_states = states_to_enumerate(hamiltonian, model)
    if n_states > MAX_STATES:
        raise ValueError(f"{n_states:.3g} configurations to enumerate (more than {MAX_STATES}): use sampling")
    s = all_configurations(n_sites, n_down).to(model.device)  # (D, N)
    with torch.no_grad():
        probability = torch.cat([model.log_prob(c).double().exp() for c in s.split(chunk_size)])  # (D,)
        e_loc = local_energy(hamiltonian, model, s, chunk_size=chunk_size, engine="dedup")  # (D,) float64/complex128
    energy = (probability * e_loc).sum().real / probability.sum()  # real: H is Hermitian
    return {
        "energy_per_site": float(energy) / n_sites,
        "norm": float(probability.sum()),
        "n_states": n_states,
    }


# Final evaluations add the exact energy where the enumeration costs about as much as the sampled estimate
# (4x4 Heisenberg: 12,870 sector states, ~1 s; TFIM N = 16: 65,536 states).
EVAL_MAX_STATES = 2**16


def exact_metrics(hamiltonian: Hamiltonian, model: AutoregressiveTransformer, reference: float) -> dict:
    """``exact_energy_per_site``, ``exact_rel_error`` and ``exact_states`` of ``model`` (a float64 copy, so
    that the sum carries no float32 rounding), or ``{}`` where more than :data:`EVAL_MAX_STATES` states."""
    n_states = states_to_enumerate(hamiltonian, model)
    if n_states > EVAL_MAX_STATES:
        return {}
    exact = exact_energy(hamiltonian, copy.deepcopy(model).double().eval())
    energy = exact["energy_per_site"]
    return {
        "exact_energy_per_site": energy,
        "exact_rel_error": relative_error(energy, reference),
        "exact_states": n_states,
    }
