"""Local energies ``E_loc(s) = sum_s' H[s, s'] psi(s') / psi(s)`` through connected elements.

The wave function enters only through ``log_psi``: a callable taking a flat batch of
configurations ``(K, N)`` and returning ``(K,)`` log-amplitudes (real, or complex once a phase is
present). Samples are processed in chunks of ``chunk_size`` so that the ``(chunk, M, N)`` block
of connected configurations bounds the memory at any lattice size; every connected
configuration of a chunk goes to ``log_psi`` in one call, so an engine that reuses work across
configurations (the dedup engine) sees the whole chunk at once.

``log_psi`` may also be the model itself (an :class:`AutoregressiveTransformer`, baseline or VQ) with an
``engine`` name: it is evaluated through :func:`vqnqs.vmc.log_psi.make_log_psi` (``dense``, ``dedup``,
``dedup_no_prefix``, ``incremental``) on each chunk's whole set of valid connected configurations. Same result through
every engine (up to floating-point reassociation); nothing else changes for the caller.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vqnqs.models.transformer import AutoregressiveTransformer
from vqnqs.physics.exact import available_memory_bytes
from vqnqs.physics.hamiltonian import Hamiltonian
from vqnqs.vmc.log_psi import LogPsi, flat_connected, make_log_psi

LogPsiFn = Callable[[torch.Tensor], torch.Tensor]


# Bytes per connected configuration and site while a chunk is evaluated: the int64 configurations, their
# valid subset, and the network's input tokens and one-hot patches (a lower bound on the dense forward's).
BYTES_PER_CONFIG_SITE = 32


def check_chunk_fits(hamiltonian: Hamiltonian, chunk_size: int, memory_fraction: float = 0.5) -> None:
    """``ValueError`` naming the size and ``chunk_size``, before any work, when the connected configurations
    of one chunk of samples (``chunk_size x max_connections x N``) cannot fit in the allowed memory."""
    need = chunk_size * hamiltonian.max_connections * hamiltonian.n_sites * BYTES_PER_CONFIG_SITE
    have = memory_fraction * available_memory_bytes()
    if need > have:
        raise ValueError(
            f"size {hamiltonian.lattice.size}: a local-energy chunk of chunk_size={chunk_size} samples holds "
            f"{chunk_size} x {hamiltonian.max_connections} connected configurations of {hamiltonian.n_sites} spins "
            f"(~{need / 2**30:.3g} GiB), more than the {have / 2**30:.3g} GiB allowed here: lower chunk_size"
        )


def local_energy(
    hamiltonian: Hamiltonian,
    log_psi: LogPsiFn | AutoregressiveTransformer,
    s: torch.Tensor,
    chunk_size: int | None = None,
    dtype: torch.dtype = torch.float64,
    engine: str | None = None,
) -> torch.Tensor:
    """``E_loc`` for each sample ``s: (B, N)`` -> ``(B,)``, without gradients.

    Only valid connections are evaluated; slot 0 of the connected elements is ``s`` itself,
    so ``log_psi(s)`` comes from the same call as its neighbours. ``log_psi`` is a callable
    ``(K, N) -> (K,)`` or a model, evaluated through ``engine`` (default ``dense``; see
    :mod:`vqnqs.vmc.log_psi`): an engine sees each chunk's connected configurations at once (the incremental
    engine with their samples).
    """
    if isinstance(log_psi, AutoregressiveTransformer):
        log_psi = make_log_psi(log_psi, engine or "dense")
    elif engine is not None:
        raise TypeError(f"engine={engine!r} needs the model itself, not {type(log_psi).__name__}")
    batch = s.shape[0]
    chunk_size = batch if chunk_size is None else int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size = {chunk_size}: expected a positive integer")
    out = []
    with torch.no_grad():
        for start in range(0, batch, chunk_size):
            samples = s[start : start + chunk_size]
            conn = hamiltonian.connected(samples, dtype=dtype)  # configs (C, M, N)
            if isinstance(log_psi, LogPsi):
                log_psi_conn = log_psi.connected(samples, conn.configs, conn.valid)  # (C, M), -inf where invalid
            else:
                log_psi_conn = flat_connected(log_psi, conn.configs, conn.valid)
            # Ratios and sums in `dtype` (float64 by default) whatever precision the network runs in.
            log_psi_conn = log_psi_conn.to(torch.complex128 if log_psi_conn.is_complex() else dtype)
            ratio = torch.exp(log_psi_conn - log_psi_conn[:, :1])  # psi(s') / psi(s); 0 where invalid
            ratio = torch.where(conn.valid, ratio, torch.zeros((), dtype=ratio.dtype, device=ratio.device))
            out.append((conn.elements.to(ratio.dtype) * ratio).sum(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=dtype, device=s.device)  # no samples: (0,)
