"""The out dir of a step-wise stage, held for the stage's life: created if needed, locked against a second stage
on it, and removed again if the stage leaves it empty (stopped before its first checkpoint, or refused).

The lock is an exclusive ``flock`` of the directory itself, taken by rank 0 alone (under torchrun one lock per
job; every rank learns rank 0's answer) and released by the OS when the process ends, however it ends. While it
is held, :data:`LOCK_FILE` in the directory names the holder's pid for the refusal message; the file goes when the
stage ends (a process killed outright leaves it behind, naming no holder; the next stage writes its own).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from vqnqs.io import OutputError, ensure_writable_dir
from vqnqs.vmc.distributed import SINGLE, World

LOCK_FILE = ".lock"
FREE = -1  # rank 0's answer when it holds the lock


def lock(directory: Path) -> tuple[int | None, int]:
    """``(descriptor, FREE)`` of ``directory`` locked by this process, else ``(None, pid of the holder)`` (0 if it
    has not written its pid yet). A file system that cannot lock a directory: ``(None, FREE)``, saying so."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        text = (directory / LOCK_FILE).read_text().strip() if (directory / LOCK_FILE).is_file() else ""
        return None, int(text) if text.isdigit() else 0
    except OSError as err:
        os.close(descriptor)
        print(f"out dir {directory}: cannot be locked here ({err.strerror or err}); unguarded", file=sys.stderr)
        return None, FREE
    (directory / LOCK_FILE).write_text(f"{os.getpid()}\n")
    return descriptor, FREE


@contextlib.contextmanager
def held_out_dir(directory: str | os.PathLike, world: World = SINGLE) -> Iterator[Path]:
    """``directory``, created if needed and locked for the block; :class:`OutputError` naming the pid of the
    process that holds it. Afterwards the lock is released, and the directories the block created and left
    empty are removed."""
    path = Path(directory)
    created = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    path = ensure_writable_dir(path)
    descriptor, holder = lock(path) if world.is_main else (None, FREE)
    holder = int(world.gather(torch.tensor([holder], device=world.device))[0])  # rank 0's answer, on every rank
    try:
        if holder != FREE:
            pid = f"pid {holder}" if holder else "its pid not yet written"
            raise OutputError(f"output directory {path}: in use by another vqnqs stage ({pid}); choose another")
        yield path
    finally:
        if descriptor is not None:
            (path / LOCK_FILE).unlink(missing_ok=True)
            os.close(descriptor)
            for made in created:
                try:
                    made.rmdir()
                except OSError:  # not empty: the stage wrote there
                    break
