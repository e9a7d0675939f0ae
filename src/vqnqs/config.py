"""``params.yaml``: loading, validation against the JSON schema, and per-run settings.

The schema (``src/vqnqs/schemas/params.schema.json``, also at ``workflow/schemas/``) is the single
statement of what a params file may hold; the CLI and the Snakefile both enforce it before any work.
A violation raises :class:`ParamsError` whose message names the offending key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

DEFAULT_PARAMS_PATH = Path("params.yaml")


class ParamsError(ValueError):
    """A params file that is missing, unreadable or violates the schema."""


def params_schema() -> dict:
    return json.loads(resources.files("vqnqs").joinpath("schemas/params.schema.json").read_text())


def _key_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "<top level>"


def _check_finite(value: Any, parts: tuple = ()) -> None:
    """JSON schema's ``number`` admits NaN and infinities (YAML ``.nan``, ``.inf``); we do not."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, (*parts, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_finite(item, (*parts, index))
    elif isinstance(value, float) and not math.isfinite(value):
        raise ParamsError(f"{_key_path(parts)}: expected a finite number, got {value}")


def validate_params(params: Any, source: str = "params") -> dict:
    """Validate and fill schema defaults; raise :class:`ParamsError` naming the first bad key."""
    if not isinstance(params, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level")
    validator = jsonschema.Draft202012Validator(params_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        raise ParamsError(f"{source}: {_key_path(error.absolute_path)}: {error.message}")
    _check_finite(params)
    return params


def load_params(path: str | Path = DEFAULT_PARAMS_PATH) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ParamsError(f"params {path}: cannot read ({err.strerror or err})") from err
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ParamsError(f"params {path}: not valid YAML ({err})") from err
    return validate_params(params, str(path))


def run_settings(params: dict, run: str) -> dict:
    """The ``systems.<run>`` entry with schema defaults filled in."""
    systems = params["systems"]
    if run not in systems:
        raise ParamsError(f"systems.{run}: no such run in params (have: {', '.join(systems)})")
    defaults = {"boundary": "open", "gamma": 1.0, "J": 1.0, "sign_rule": None}
    return {**defaults, **systems[run]}


def check_field_types(config: Any) -> None:
    """Each field of the dataclass ``config`` against its annotation, raising ``ValueError`` naming the field.

    Floats also take ints, and text such as ``1e-3``: YAML 1.1 (PyYAML) reads an exponent without a dot
    as a string; such values are stored back as floats. Booleans are never taken for numbers.
    """
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        name, value = field.name, getattr(config, field.name)
        kinds = typing.get_args(hints[name]) or (hints[name],)
        optional = type(None) in kinds
        kind = next(k for k in kinds if k is not type(None))
        expected = f"{kind.__name__}{' or null' if optional else ''}"
        if value is None:
            if optional:
                continue
            raise ValueError(f"{name}: expected {expected}, got null")
        if kind is float and not isinstance(value, bool):
            try:
                value = float(value) if isinstance(value, (int, float, str)) else value
            except ValueError:
                pass
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} {value}: expected a finite number")
            object.__setattr__(config, name, value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ValueError(f"{name} {value!r}: expected {expected}")


def config_from_mapping(cls: type, mapping: dict, what: str) -> Any:
    """``cls(**mapping)`` for a config dataclass; an unknown key raises ``ValueError`` naming it and ``what``."""
    known = [f.name for f in dataclasses.fields(cls)]
    for key in mapping:
        if key not in known:
            raise ValueError(f"{what} setting {key!r}: unknown (known: {', '.join(known)})")
    return cls(**mapping)
