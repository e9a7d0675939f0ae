"""Training checkpoints and saved models: atomic, ``weights_only``-loadable, checked on load.

A file is one dict of plain Python values and tensors (``torch.load(path, weights_only=True)`` reads
it without executing any code)::

    format, version      what the file is ("vqnqs-checkpoint" or "vqnqs-model") and its layout version
    digest               sha256 over every other entry (tensor bytes, dtypes, shapes, values)
    ...                  the payload; for a checkpoint: step, wall_time_s, device, system, model_config,
                         train_config, model (state_dict), optimizer (state_dict),
                         rng (torch CPU, sampler, CUDA); for a model: model_config, model, info
                         (+ vq_config, the VQConfig as primitives, for a VQ model)

Writes go through :func:`vqnqs.io.atomic_save` (temporary file + rename), so a crash mid-write leaves
the previous file intact. Loading turns every way a file can be wrong — missing, truncated,
corrupted, edited after writing, another program's file, an older layout — into a
:class:`CheckpointError` whose message names the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from vqnqs.io import atomic_save
from vqnqs.models import AutoregressiveTransformer, TransformerConfig, VQConfig, VQTransformer

CHECKPOINT_FORMAT = "vqnqs-checkpoint"
MODEL_FORMAT = "vqnqs-model"
VERSION = 1

# Payload entries each format must hold, with their types (checked on load, before anything is used).
CHECKPOINT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "step": int,
    "wall_time_s": float,
    "device": str,
    "system": dict,
    "model_config": dict,
    "train_config": dict,
    "model": dict,
    "optimizer": dict,
    "rng": dict,
}
MODEL_FIELDS: dict[str, type | tuple[type, ...]] = {"model_config": dict, "model": dict, "info": dict}


class CheckpointError(ValueError):
    """A checkpoint or model file that cannot be used; the message names the file and the reason."""


class StaleCheckpoint(CheckpointError):
    """A sound checkpoint written with other settings (or another teacher) than this run's.

    A stage rerun by the pipeline after its params changed finds one: it starts afresh, saying so.
    """


def model_config_to_dict(config: TransformerConfig) -> dict:
    """Plain primitives (lists, ints), the form stored in files; inverse: ``TransformerConfig(**d)``."""
    record = dataclasses.asdict(config)
    record["lattice_shape"] = list(record["lattice_shape"])
    return record


def vq_config_to_dict(config: VQConfig) -> dict:
    """Plain primitives of a quantiser config (stored beside ``model_config``); inverse: ``VQConfig.from_dict``."""
    return dataclasses.asdict(config)


def _digest(payload: dict) -> str:
    """sha256 over a nested structure of dicts, lists, tensors and primitives, independent of dict order."""
    h = hashlib.sha256()

    def feed(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for key in sorted(x, key=repr):
                feed(key)
                feed(x[key])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for item in x:
                feed(item)
            h.update(b"]")
        else:  # None, bool, int, float, str
            h.update(f"{type(x).__name__}:{x!r};".encode())

    feed(payload)
    return h.hexdigest()


def _save(path: str | os.PathLike, file_format: str, payload: dict) -> None:
    record = {"format": file_format, "version": VERSION, **payload}
    record["digest"] = _digest(payload)
    atomic_save(path, lambda handle: torch.save(record, handle))


def _load(path: str | os.PathLike, file_format: str, fields: dict, map_location: str | torch.device) -> dict:
    path = Path(path)
    what = "checkpoint" if file_format == CHECKPOINT_FORMAT else "model file"
    if not path.is_file():
        raise CheckpointError(f"{what} {path}: file not found")
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only met something other than tensors and plain values
        raise CheckpointError(
            f"{what} {path}: not a vqnqs {what}, refused for safety (it holds Python objects that would run code)"
        ) from err
    except Exception as err:  # truncated zip, flipped bytes, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{what} {path}: unreadable (truncated or corrupted?): {reason}") from err
    if not isinstance(record, dict) or record.get("format") != file_format:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise CheckpointError(f"{what} {path}: not a {file_format} file (format: {found!r})")
    if record.get("version") != VERSION:
        raise CheckpointError(f"{what} {path}: layout version {record.get('version')!r}, this code reads {VERSION}")
    for key, kind in fields.items():
        if key not in record:
            raise CheckpointError(f"{what} {path}: missing entry {key!r}")
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise CheckpointError(f"{what} {path}: entry {key!r} has type {type(record[key]).__name__}")
    payload = {key: value for key, value in record.items() if key not in ("format", "version", "digest")}
    if record.get("digest") != _digest(payload):
        raise CheckpointError(f"{what} {path}: contents do not match their digest (modified after writing?)")
    return payload


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Atomically write a training checkpoint; ``payload`` holds the :data:`CHECKPOINT_FIELDS`."""
    missing = set(CHECKPOINT_FIELDS) - set(payload)
    if missing:
        raise ValueError(f"checkpoint payload lacks {', '.join(sorted(missing))}")
    _save(path, CHECKPOINT_FORMAT, payload)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The checked payload of a training checkpoint; raises :class:`CheckpointError`."""
    return _load(path, CHECKPOINT_FORMAT, CHECKPOINT_FIELDS, map_location)


def save_model(path: str | os.PathLike, model: AutoregressiveTransformer, info: dict) -> None:
    """Atomically write a trained model: its config, its state_dict and ``info`` (primitives: system, steps...).

    A VQ model (:class:`VQTransformer`) also stores its quantiser config as ``vq_config`` (primitives).
    """
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    payload = {"model_config": model_config_to_dict(model.config), "model": state, "info": info}
    if isinstance(model, VQTransformer):
        payload["vq_config"] = vq_config_to_dict(model.vq_config)
    _save(path, MODEL_FORMAT, payload)


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[AutoregressiveTransformer, dict]:
    """Rebuild a model saved by :func:`save_model`: ``(model, info)``, model in its saved dtype, in eval mode.

    A file with a ``vq_config`` entry gives a :class:`VQTransformer`, one without the baseline.
    """
    payload = _load(path, MODEL_FORMAT, MODEL_FIELDS, map_location)
    model = build_from_state(path, payload["model_config"], payload["model"], payload.get("vq_config"))
    return model.to(map_location).eval(), payload["info"]


def build_from_state(
    path: str | os.PathLike, config: dict, state: dict, vq_config: dict | None = None
) -> AutoregressiveTransformer:
    """A model of the stored config carrying the stored weights (in their dtype); a mismatch is a CheckpointError.

    With ``vq_config`` (a stored :class:`VQConfig` as a dict) the model is a :class:`VQTransformer`.
    """
    try:
        if vq_config is None:
            model = AutoregressiveTransformer(TransformerConfig(**config))
        elif not isinstance(vq_config, dict):
            raise TypeError(f"vq_config has type {type(vq_config).__name__}")
        else:
            model = VQTransformer(TransformerConfig(**config), VQConfig.from_dict(vq_config))
        dtypes = {value.dtype for value in state.values() if value.is_floating_point()}
        if len(dtypes) == 1:
            model = model.to(dtypes.pop())
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path}: stored model does not fit its config: {reason}") from err
    return model
