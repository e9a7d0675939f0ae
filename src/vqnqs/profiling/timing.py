"""Wall-clock time of the local energy, dense vs dedup, on the same batch in one process.

Each repeat times both paths back to back, alternating which goes first, so that a slow drift of the
machine (other jobs on a shared CPU, clock boost) hits both alike; the reported time is the median over
``repeats`` after ``warmup`` untimed rounds. On CUDA every timed call is bracketed by
``torch.cuda.synchronize()``. The result records the device, the intra-op threads, the torch version
and the 1-minute load average before and after (``/proc/loadavg`` where it exists): a timing taken
while other jobs run is polluted, and the load says by how much to distrust it.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from vqnqs.models.transformer import AutoregressiveTransformer
from vqnqs.physics.hamiltonian import Hamiltonian
from vqnqs.vmc.local_energy import local_energy


def load_average() -> float | None:
    """1-minute load average, or None where the OS does not say."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def environment(device: torch.device | str) -> dict:
    """What a timing depends on: device (with the GPU's name), threads, torch version, CPU count, host."""
    device = torch.device(device)
    name = str(device)
    if device.type == "cuda":
        name = f"{device} ({torch.cuda.get_device_name(device)})"
    return {
        "device": name,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "cpu_count": os.cpu_count(),
        "host": platform.node(),
    }


@dataclass
class Timing:
    """Median seconds of one local-energy evaluation of ``n_samples`` samples on each path."""

    dense_s: float
    dedup_s: float
    repeats: int
    warmup: int
    n_samples: int
    dense_all: list[float] = field(default_factory=list)
    dedup_all: list[float] = field(default_factory=list)
    incremental_s: float = float("nan")  # the incremental engine (vqnqs.dedup.incremental)
    incremental_all: list[float] = field(default_factory=list)
    device: str = "cpu"
    threads: int = 1
    torch_version: str = torch.__version__
    load_before: float | None = None
    load_after: float | None = None

    @property
    def speedup(self) -> float:
        return self.dense_s / self.dedup_s if self.dedup_s > 0 else float("nan")

    @property
    def speedup_incremental(self) -> float:
        return self.dense_s / self.incremental_s if self.incremental_s > 0 else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": self.speedup, "speedup_incremental": self.speedup_incremental}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device) -> float:
    """Seconds of one ``fn()`` call (synchronised on CUDA)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def time_local_energy(
    hamiltonian: Hamiltonian,
    model: AutoregressiveTransformer,
    s: torch.Tensor,
    repeats: int = 5,
    warmup: int = 1,
    chunk_size: int | None = None,
) -> Timing:
    """Median wall-clock of ``local_energy(hamiltonian, model, s, chunk_size, engine=...)`` through the dense
    forward, the dedup engine and the incremental engine, the paths taking turns in a rotating order.

    ``s (B, N)`` is moved to the model's device first; every path sees the same batch.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats {repeats}, warmup {warmup}: need repeats >= 1 and warmup >= 0")
    device = model.device
    s = s.to(device)
    paths = ("dense", "dedup", "incremental")
    times: dict[str, list[float]] = {path: [] for path in paths}
    load_before = load_average()
    for round_index in range(warmup + repeats):
        shift = round_index % len(paths)
        for path in paths[shift:] + paths[:shift]:
            elapsed = time_call(
                lambda p=path: local_energy(hamiltonian, model, s, chunk_size=chunk_size, engine=p), device
            )
            if round_index >= warmup:
                times[path].append(elapsed)
    env = environment(device)
    return Timing(
        dense_s=statistics.median(times["dense"]),
        dedup_s=statistics.median(times["dedup"]),
        repeats=repeats,
        warmup=warmup,
        n_samples=s.shape[0],
        dense_all=times["dense"],
        dedup_all=times["dedup"],
        incremental_s=statistics.median(times["incremental"]),
        incremental_all=times["incremental"],
        device=env["device"],
        threads=env["threads"],
        torch_version=env["torch_version"],
        load_before=load_before,
        load_after=load_average(),
    )
