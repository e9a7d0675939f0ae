"""Data-parallel VMC on ``torch.distributed``: the process group, each rank's sampler stream, the collectives.

A run of P processes (ranks, started by ``torchrun --nproc-per-node P``) makes one VMC step of Ns samples as::

    rank r draws Ns / P samples from its own stream (seed rank_seed(seed, r))    (Ns/P, N)
    every rank gathers the pieces in rank order: the batch s                     (Ns, N)   the same on every rank
    s_u, w = distinct rows of s and their frequencies                            (U, N), (U,)
    rank r evaluates its contiguous share of s_u (torch.tensor_split)            (~U/P, N)
    E_loc (and for SR the log-derivative rows O) gathered in rank order          (U,), (U, Np)
    Adam: each rank backpropagates its share of eq. 3 (with the global E); the gradients are summed
    minSR: the Gram matrix Ō Ō^T by row blocks, every P-th on each rank, summed   (U, U)   (vqnqs.vmc.optim.gram)

so every rank holds the same batch, energies, SR matrices and codebook-upkeep inputs, and the parameters
stay the same on every rank. A one-process run that draws Ns / P samples from each of the P rank streams in
rank order (:func:`draw`) sees the same batch and makes the same update up to the order of one sum (the
gradient all-reduce). Samples travel as integers (``Ns x N``), the energies as ``U`` floats, SR's rows as
``U x Np`` and its Gram matrix as ``U x U`` floats per step.

The backend is chosen at run time: NCCL for CUDA devices, gloo on CPUs. :class:`World` with ``size == 1``
(:data:`SINGLE`) calls no collective at all, so a one-process run is the plain run.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from vqnqs.vmc.gradient import EnergyStats

# Odd 32-bit constant (2^32 / golden ratio): rank * STREAM_STRIDE differs mod 2^32 for every rank below 2^32,
# and torch's CPU generator (mt19937) keeps only the low 32 bits of a seed.
STREAM_STRIDE = 0x9E3779B9
# A collective that waits longer than this for its peers (a rank died, a node hangs) ends the run with an error.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s sampler stream: ``(seed + rank * STREAM_STRIDE) mod 2^63``.

    Rank 0 keeps ``seed`` itself, so a one-process run draws what it always drew; the ranks of one run get
    distinct seeds modulo 2^32, hence distinct mt19937 (or Philox) streams.
    """
    return (seed + rank * STREAM_STRIDE) % 2**63


def rank_generators(seed: int, ranks: Sequence[int], device: torch.device) -> list[torch.Generator]:
    """The sampler generators of ``ranks`` (a rank's own: ``[rank]``; a one-process emulation: ``range(P)``)."""
    return [torch.Generator(device).manual_seed(rank_seed(seed, rank)) for rank in ranks]


def draw(model: torch.nn.Module, n_samples: int, generators: Sequence[torch.Generator]) -> Tensor:
    """``n_samples / len(generators)`` exact samples from each generator, concatenated in order: ``(n, N)``."""
    per_stream = n_samples // len(generators)
    return torch.cat([model.sample(per_stream, generator=generator) for generator in generators])


def check_split(key: str, value: int, world_size: int) -> None:
    """``ValueError`` naming ``key`` unless ``value`` samples split evenly over ``world_size`` processes."""
    if value % world_size:
        raise ValueError(f"{key} {value}: must be a multiple of the world size {world_size} (processes of torchrun)")


def launched_world() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` that ``torchrun`` put into the environment; ``(0, 1, 0)`` without it."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


@dataclass
class World:
    """The ranks of one run and the collectives of a step; ``seconds``: wall time spent inside collectives
    (waiting for slower ranks included)."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # of the collectives' buffers
    seconds: float = field(default=0.0, compare=False)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, outputs and the MLflow run."""
        return self.rank == 0

    def _timed(self, collective, *args) -> None:
        start = time.perf_counter()
        collective(*args)
        self.seconds += time.perf_counter() - start

    def share(self, rows: Tensor) -> Tensor:
        """This rank's contiguous share of ``rows (U, ...)`` (sizes differ by at most one row across ranks)."""
        return torch.tensor_split(rows, self.size)[self.rank]

    def gather_shares(self, share: Tensor, total: int) -> Tensor:
        """The shares ``(~U/P, ...)`` of all ranks (:meth:`share` of ``total`` rows) in rank order: ``(U, ...)``."""
        if self.size == 1:
            return share
        sizes = [len(piece) for piece in torch.tensor_split(torch.empty(total), self.size)]
        padded = share.new_zeros((max(sizes), *share.shape[1:]))
        padded[: len(share)] = share
        pieces = [torch.empty_like(padded) for _ in range(self.size)]
        self._timed(dist.all_gather, pieces, padded)
        return torch.cat([piece[:size] for piece, size in zip(pieces, sizes, strict=True)])

    def map_rows(self, row_wise: Callable[[Tensor], Tensor], rows: Tensor) -> Tensor:
        """``row_wise(rows)`` of every row ``(U, ...)``, each rank evaluating its :meth:`share`, the results
        gathered in rank order on every rank: ``gather_shares(row_wise(share(rows)), U)``."""
        return self.gather_shares(row_wise(self.share(rows)), len(rows))

    def gather(self, piece: Tensor) -> Tensor:
        """Equal-sized ``piece (n, ...)`` of every rank, concatenated in rank order: ``(P n, ...)``."""
        if self.size == 1:
            return piece
        pieces = [torch.empty_like(piece) for _ in range(self.size)]
        self._timed(dist.all_gather, pieces, piece.contiguous())
        return torch.cat(pieces)

    def sum_(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over the ranks, in place (all-reduce)."""
        if self.size > 1:
            self._timed(dist.all_reduce, tensor)
        return tensor

    def barrier(self) -> None:
        """Wait until every rank is here."""
        if self.size > 1:
            self._timed(dist.barrier)

    def pooled(self, stats: EnergyStats, n_samples: int) -> EnergyStats:
        """Statistics of all ranks' samples from each rank's ``stats`` of its ``n_samples`` (equal counts)::

        E = mean_r E_r,   var = mean_r [var_r + (E_r - E)^2],   error = sqrt(var / (P n))
        """
        if self.size == 1:
            return stats
        moments = self.gather(torch.tensor([[stats.mean, stats.variance]], dtype=torch.float64, device=self.device))
        mean = moments[:, 0].mean()
        variance = (moments[:, 1] + (moments[:, 0] - mean) ** 2).mean().item()
        return EnergyStats(mean.item(), variance, (variance / (self.size * n_samples)) ** 0.5)


SINGLE = World()  # a run of one process: no collectives


def init_world(device_type: str) -> World:
    """Join the process group ``torchrun`` set up (NCCL for ``'cuda'``, else gloo); :data:`SINGLE` without one.

    On CUDA, rank r's device becomes GPU ``LOCAL_RANK`` (``torch.device('cuda')`` then names it).
    """
    rank, size, local_rank = launched_world()
    if size == 1:
        return SINGLE
    device = torch.device("cuda", local_rank) if device_type == "cuda" else torch.device("cpu")
    if device_type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=size, timeout=COLLECTIVE_TIMEOUT)
    return World(rank, size, device)


@contextlib.contextmanager
def joined_world(device_type: str) -> Iterator[World]:
    """:func:`init_world` for the block; the process group is left after it, however the block ends."""
    world = init_world(device_type)
    try:
        yield world
    finally:
        if world.size > 1 and dist.is_initialized():
            dist.destroy_process_group()
