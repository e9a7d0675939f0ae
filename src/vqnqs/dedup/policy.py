"""How the dedup engine runs on a CPU: chunk sizes and intra-op threads. Never what it computes.

A policy changes only the order of float operations (which rows go through one matmul, which thread
sums what), so every policy gives the same codes and the same ``log P`` up to reassociation.

Threads. The dedup forward is a couple of thousand small, memory-bound ops (prefix keys, gathers, the
per-chunk attention and quantiser, residual adds, the output), each an OpenMP parallel region of its own:
fork/join gains little on them, and on a busy machine every region waits for a descheduled worker. So the
engine runs them on ``small_op_threads`` threads, and gives the caller's threads back only to the
per-location matmul stages (Q/K/V, feed-forward, head) of at least ``parallel_min_rows`` rows, where
threads pay off. ``benchmarks/dedup_speedup.py`` measures the effect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ExecutionPolicy:
    """Chunk sizes (in rows) and intra-op threads of the dedup engine; see the module docstring."""

    # Rows per block of the per-location stages (LayerNorm, Q/K/V, feed-forward, head). Bounds their
    # temporaries (the (rows, d_ff) hidden layer) while keeping their matmuls few and large.
    row_chunk: int = 16384
    # Key rows (sequences x T) gathered per attention step: the step's temporaries stay a few MB,
    # cache-resident and recycled by the allocator (large allocations are fresh, page-faulting memory).
    attention_chunk_rows: int = 8192
    # Elements (samples x connections x T x width) of one step of the incremental engine: it holds a few
    # tensors of that size (width d: every row's updated attention output; with position attention only, the
    # rows' codes), so this bounds its memory.
    config_elements: int = 2**23
    # Intra-op threads of everything but the large per-location matmul stages; None: the caller's setting.
    small_op_threads: int | None = 1
    # A per-location matmul stage on at least this many rows runs on the caller's threads.
    parallel_min_rows: int = 8192

    def __post_init__(self) -> None:
        for name in ("row_chunk", "attention_chunk_rows", "config_elements", "parallel_min_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)}: must be a positive integer")
        if self.small_op_threads is not None and self.small_op_threads < 1:
            raise ValueError(f"small_op_threads {self.small_op_threads}: must be a positive integer or None")

    @contextmanager
    def applied(self) -> Iterator[Execution]:
        """The policy in force for one forward: the small-op threads set, the caller's count remembered for the
        large stages and restored on exit (also when the forward raises)."""
        caller_threads = torch.get_num_threads()
        with intra_op_threads(self.small_op_threads):
            yield Execution(self, caller_threads)


DEFAULT_POLICY = ExecutionPolicy()


@dataclass(frozen=True)
class Execution:
    """A policy in force (:meth:`ExecutionPolicy.applied`): what the stages ask it for."""

    policy: ExecutionPolicy
    caller_threads: int  # intra-op threads of the caller, for the large per-location matmul stages

    @property
    def row_chunk(self) -> int:
        return self.policy.row_chunk

    @property
    def attention_chunk_rows(self) -> int:
        return self.policy.attention_chunk_rows

    def matmul_threads(self, n_rows: int) -> AbstractContextManager[None]:
        """The caller's threads for a per-location matmul stage on ``n_rows`` rows, if it is large enough."""
        return intra_op_threads(self.caller_threads if n_rows >= self.policy.parallel_min_rows else None)

    def map_rows(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """``fn(x)`` for a per-row matmul stage ``fn`` (``(n, ...) -> (n, ...)``, rows independent), in blocks
        of ``row_chunk`` rows, on the threads :meth:`matmul_threads` gives ``n`` rows."""
        chunk, n_rows = self.row_chunk, x.shape[0]
        with self.matmul_threads(n_rows):
            if n_rows <= chunk:
                return fn(x)
            first = fn(x[:chunk])
            out = first.new_empty((n_rows, *first.shape[1:]))
            out[:chunk] = first
            for start in range(chunk, n_rows, chunk):
                out[start : start + chunk] = fn(x[start : start + chunk])
        return out


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the enclosed ops on ``threads`` intra-op threads (None or the current count: unchanged)."""
    current = torch.get_num_threads()
    if threads is None or threads == current:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(current)
