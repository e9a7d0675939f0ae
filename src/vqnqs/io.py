"""Atomic file output: a reader never sees a half-written file, and a failed write leaves the old one."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any


class OutputError(RuntimeError):
    """An output location that cannot be written (read-only, full, not a directory)."""


class InputError(ValueError):
    """An input file that is missing or unusable; the message names the file."""


def read_json(path: str | os.PathLike) -> dict:
    """The JSON object in ``path``; :class:`InputError` naming the file if missing, unreadable or not an object."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read a JSON record ({err})") from err
    if not isinstance(record, dict):
        raise InputError(f"{path}: expected a JSON object")
    return record


def finite_number(record: dict, key: str) -> float | None:
    """``record[key]`` as a float if it is a finite number (not a bool), else None."""
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def ensure_writable_dir(directory: str | os.PathLike) -> Path:
    """Create ``directory`` if needed and check that files can be created in it, before any work."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise OutputError(f"output directory {path}: cannot write there ({err.strerror or err})") from err
    return path


def check_writable_dir(directory: str | os.PathLike) -> Path:
    """Check, creating nothing, that ``directory`` exists and is writable or can be created (its nearest
    existing parent is a writable directory); :class:`OutputError` naming it otherwise."""
    path = Path(directory)
    existing = next((p for p in (path.absolute(), *path.absolute().parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise OutputError(f"output directory {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {path}: cannot write there ({existing} is not writable)")
    return path


def check_not_an_input(
    outputs: Iterable[str | os.PathLike],
    files: Iterable[str | os.PathLike] = (),
    directories: Iterable[str | os.PathLike] = (),
) -> None:
    """Refuse (:class:`OutputError` naming it) an output that is one of the input ``files`` or would overwrite a
    file of one of the input ``directories``; paths are compared resolved (symlinks, ``./x`` and ``x`` alike)."""
    inputs = {Path(file).resolve(): file for file in files}
    input_dirs = [(Path(directory).resolve(), directory) for directory in directories]
    for output in outputs:
        target = Path(output).resolve()
        if target in inputs:
            raise OutputError(f"output {output}: is the input {inputs[target]}")
        for resolved, directory in input_dirs:
            if target.exists() and target.is_relative_to(resolved):
                raise OutputError(f"output {output}: would overwrite a file of the input directory {directory}")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds."""
    target = Path(path)
    ensure_writable_dir(target.parent if str(target.parent) else ".")
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; an output gets what open() would give it
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(err, OSError):
            raise OutputError(f"{target}: write failed ({err.strerror or err})") from err
        raise


def _umask() -> int:
    """The process's umask (read by setting it, then restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: dict) -> None:
    with atomic_open(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")


def atomic_save(path: str | os.PathLike, save: Callable[[IO[bytes]], None]) -> None:
    """Atomic binary write through a callback, e.g. ``atomic_save(p, lambda f: torch.save(obj, f))``."""
    with atomic_open(path, "wb") as handle:
        save(handle)


@contextlib.contextmanager
def staged_outputs(out_dir: str | os.PathLike, outputs: Sequence[str]) -> Iterator[Path]:
    """A staging directory inside ``out_dir`` to write the entries named ``outputs`` (files or directories) into.

    When the block succeeds, each output written there replaces its namesake in ``out_dir`` whole, in the order of
    ``outputs`` (a file by one rename; a directory by two, the old one set aside first, so that no file of an
    earlier run is left inside it), and each output the block did not write is removed from ``out_dir`` (no
    stale one is left looking current); every other entry of ``out_dir`` is kept. When the block fails,
    ``out_dir`` is left as it was. The staging directory is removed either way.
    """
    out = ensure_writable_dir(out_dir)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        yield staging
        undeclared = sorted(set(os.listdir(staging)) - set(outputs))
        if undeclared:
            raise OutputError(f"{out}: {undeclared[0]} was written but is not among the outputs {', '.join(outputs)}")
        retired = Path(tempfile.mkdtemp(dir=staging, prefix=".retired-"))
        try:
            for name in outputs:
                new, old = staging / name, out / name
                if old.exists() and not (new.is_file() and old.is_file()):
                    os.rename(old, retired / name)
                if new.exists():
                    os.replace(new, old)
        except OSError as err:
            raise OutputError(f"{out}: moving the outputs into place failed ({err.strerror or err})") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
