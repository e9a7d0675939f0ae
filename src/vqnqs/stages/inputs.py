"""What the stages read: reference records, trained model directories, and what identifies a system.

Every reader checks its input against the system being run before any work and raises a ``ValueError``
(:class:`~vqnqs.io.InputError` or :class:`~vqnqs.vmc.checkpoint.CheckpointError`) naming the file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from vqnqs.io import InputError, finite_number, read_json
from vqnqs.models import AutoregressiveTransformer, VQTransformer
from vqnqs.physics.hamiltonian import Hamiltonian, with_description_defaults
from vqnqs.vmc.checkpoint import CheckpointError, load_model

MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"


def system_info(hamiltonian: Hamiltonian) -> dict:
    """What identifies a system (size, boundary, sites, system and couplings): in metrics.json and model.pt."""
    lattice = hamiltonian.lattice
    return {
        "size": lattice.size,
        "boundary": lattice.boundary,
        "n_sites": hamiltonian.n_sites,
        **hamiltonian.describe(),
    }


def load_reference(path: str | Path, hamiltonian: Hamiltonian) -> float:
    """``energy_per_site`` of a reference JSON, checked to describe the same Hamiltonian: system, size,
    boundary and every coupling of its ``hamiltonian`` record (Gamma, J, sign rule, ...)."""
    try:
        record = read_json(path)
    except InputError as err:
        raise InputError(f"reference {err}") from err
    return reference_energy(record, f"reference {path}", hamiltonian)


def reference_energy(record: dict, source: str, hamiltonian: Hamiltonian, key: str = "energy_per_site") -> float:
    """``record[key]``, a finite nonzero number, of a record (a reference JSON; a teacher's metrics.json with
    ``reference_per_site``) that describes ``hamiltonian``; an :class:`InputError` naming ``source`` if not."""
    lattice = hamiltonian.lattice
    for name, value in {"system": hamiltonian.system, "size": lattice.size, "boundary": lattice.boundary}.items():
        if record.get(name) != value:
            raise InputError(f"{source}: {name} is {record.get(name)!r}, the trained system has {value!r}")
    described = record.get("hamiltonian", record)  # a reference's couplings are nested, metrics.json's are not
    stored = with_description_defaults(described if isinstance(described, dict) else {})
    for name, value in with_description_defaults(hamiltonian.describe()).items():
        if stored.get(name) != value:
            raise InputError(f"{source}: {name} is {stored.get(name)!r}, the trained system has {value!r}")
    energy = finite_number(record, key)
    if energy is None or energy == 0:
        raise InputError(f"{source}: {key} {record.get(key)!r} is not a finite nonzero number")
    return energy


def system_from_info(info: dict, source: str) -> dict:
    """System settings (as :func:`vqnqs.stages.settings.resolve_system` gives them) from a model file's info."""
    if not isinstance(info.get("system"), str) or not isinstance(info.get("size"), str):
        raise InputError(f"{source}: its info names no system and size; give --run KEY or --system/--size")
    return {
        "system": info["system"],
        "size": info["size"],
        "boundary": info.get("boundary", "open"),
        "gamma": info.get("gamma"),
        "J": info.get("J", 1.0),
        "j2": info.get("J2", 0.0),
        "sign_rule": info.get("sign_rule"),
    }


def check_model_dir(directory: str | Path, what: str) -> tuple[Path, Path]:
    """``(model.pt, metrics.json)`` of a stage out dir; a missing one is an :class:`InputError` naming it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{what} directory {directory}: not found")
    files = directory / MODEL_FILE, directory / METRICS_FILE
    for path in files:
        if not path.is_file():
            raise InputError(f"{what} {path}: file not found")
    return files


def check_model_fits(
    model: AutoregressiveTransformer, info: dict, hamiltonian: Hamiltonian, path: Path, any_size: bool = False
) -> None:
    """The model must describe ``hamiltonian``'s lattice and, where its info says, the same system (with
    ``any_size``, the same system on a lattice of any size and the same dimension)."""
    info = with_description_defaults(info)  # a model of the plain Heisenberg model has no J2 in its info
    for key, value in with_description_defaults(system_info(hamiltonian)).items():
        if key in info and info[key] != value and not (any_size and key in ("size", "n_sites")):
            raise InputError(f"{path}: trained for {key} {info[key]!r}, this run has {value!r}")
    shape, expected = tuple(model.config.lattice_shape), tuple(hamiltonian.lattice.shape)
    if (len(shape) != len(expected)) if any_size else (shape != expected):
        raise InputError(f"{path}: model lattice {shape}, this run has {expected}")


def load_trained(directory: str | Path, what: str, vq: bool, hamiltonian: Hamiltonian | None = None):
    """``(model, info, path)`` of ``directory/model.pt``: a VQ model iff ``vq``, for ``hamiltonian`` if given."""
    path = Path(directory) / MODEL_FILE
    model, info = load_model(path)  # CheckpointError naming the file: missing, truncated, foreign, ...
    if isinstance(model, VQTransformer) != vq:
        hint = (
            "no VQ model; --model-dir takes a distill (or train --bits)"
            if vq
            else "a VQ model; --baseline takes the train"
        )
        raise InputError(f"{what} {path}: holds {hint} stage's out dir")
    if hamiltonian is not None:
        check_model_fits(model, info, hamiltonian, path)
    return model, info, path


@dataclass
class Teacher:
    """A trained baseline model from a train stage out dir, with what its files say about it."""

    model: AutoregressiveTransformer
    info: dict  # model.pt's info (system, steps, energy_per_site)
    metrics: dict  # metrics.json ({} where absent)
    path: Path  # model.pt
    digest: str  # sha256 of model.pt's bytes (a resumed distillation must use the same teacher)

    @property
    def energy_per_site(self) -> float | None:
        return finite_number({**self.info, **self.metrics}, "energy_per_site")


def load_teacher(
    directory: str | Path, hamiltonian: Hamiltonian | None = None, what: str = "teacher", start: bool = False
) -> Teacher:
    """The model of a train stage out dir (``model.pt``, ``metrics.json``); raises ``CheckpointError`` naming
    ``what``. A distillation's teacher is a baseline of the same lattice; the ``start`` of a training
    (``--init-from``) may be a VQ model, and of another lattice size (its position embeddings then start afresh).

    With ``hamiltonian``, the model must have been trained for that system (size, boundary, couplings).
    """
    directory = Path(directory)
    if not directory.is_dir():
        found = "a file; expected a train or distill out dir (holding model.pt)" if directory.exists() else "not found"
        raise CheckpointError(f"{what} directory {directory}: {found}")
    path = directory / MODEL_FILE
    model, info = load_model(path)
    if isinstance(model, VQTransformer) and not start:
        raise CheckpointError(f"{what} {path}: holds a VQ model; the {what} must be a baseline transformer")
    if hamiltonian is not None:
        try:
            check_model_fits(model, info, hamiltonian, path, any_size=start)
        except InputError as err:
            raise CheckpointError(f"{what} {err}") from err
    metrics_path = directory / METRICS_FILE
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Teacher(model=model, info=info, metrics=metrics, path=path, digest=digest)
