"""``params.yaml``: loading, validation, and per-run settings.

What a params file may hold is the schema (``src/vqnqs/schemas/params.schema.json``), generated from the
stage configs (:mod:`vqnqs.schema`); the CLI and the Snakefile both enforce it before any work, and the CLI
also builds every stage section's config (:mod:`vqnqs.knobs`), so a value gets the same verdict in a params
file and in ``--set``. A violation raises :class:`ParamsError`
whose message names the offending key. YAML is read by :func:`load_yaml` everywhere (params files, ``--set``).
"""

from __future__ import annotations

import functools
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

DEFAULT_PARAMS_PATH = Path("params.yaml")


class ParamsError(ValueError):
    """A params file that is missing, unreadable or violates the schema."""


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(params_schema())


def params_schema() -> dict:
    return json.loads(resources.files("vqnqs").joinpath("schemas/params.schema.json").read_text())


def _key_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "<top level>"


def _check_finite(value: Any, source: str, parts: tuple = ()) -> None:
    """JSON schema's ``number`` admits NaN and infinities (YAML ``.nan``, ``.inf``); we do not."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, source, (*parts, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_finite(item, source, (*parts, index))
    elif isinstance(value, float) and not math.isfinite(value):
        raise ParamsError(f"{source}: {_key_path(parts)}: expected a finite number, got {value}")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` (an exponent without a dot: YAML 1.1 text) as a float, and
    refusing a mapping that repeats a key (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} on line {line}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?([0-9][0-9_]*)?[.]?[0-9]*[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """YAML as the params files and ``--set`` values are read (``yaml.YAMLError`` on bad syntax)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: the problem and where (PyYAML's own message spans several lines)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem}, line {mark.line + 1} column {mark.column + 1}" if mark else problem


def section_mapping(params: dict, entry: dict, sections: tuple[str, ...]) -> dict:
    """The knobs of a run's stage: each of ``sections`` of params, then each of the run's own (``entry``), each
    merged over the ones before (a stage config's ``sections``), a nested section (``finetune``) key by key."""
    merged: dict = {}
    for node in (params, entry):
        for section in sections:
            merged = merged_over(merged, node.get(section) or {})
    return merged


def merged_over(base: dict, top: dict) -> dict:
    """``top`` merged over ``base``, mappings in both merged key by key (recursively)."""
    merged = dict(base)
    for key, value in top.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merged_over(merged[key], value) if both else value
    return merged


def _check_sections(params: dict, source: str) -> None:
    """Build each stage section's config (global and per run): the knob checks of ``--set`` too."""
    from vqnqs.stages.config import (  # local: torch loads only when params are checked
        STAGE_CONFIGS,
        DistillConfig,
        TrainConfig,
    )

    places = [((), params)] + [(("systems", run), entry) for run, entry in params["systems"].items()]
    sections = [(config.section, config) for config in STAGE_CONFIGS] + [("train_vq", TrainConfig)]
    for parts, node in places:
        for section, config in sections:
            if section in node:
                try:
                    config.from_mapping(node[section])
                except ValueError as err:
                    raise ParamsError(f"{source}: {_key_path((*parts, section))}: {err}") from err
    for index, job in enumerate(params.get("train_vq_runs") or []):  # each VQ training, as its job will build it
        where = f"{source}: train_vq_runs[{index}]"
        if job["run"] not in params["systems"]:
            raise ParamsError(f"{where}: run {job['run']!r} is not in systems (have: {', '.join(params['systems'])})")
        given = {"model": "vq", "bits": job["bits"]}
        mapping = {**section_mapping(params, params["systems"][job["run"]], TrainConfig.sections(given)), **given}
        try:
            TrainConfig.from_mapping(mapping)
        except ValueError as err:
            raise ParamsError(f"{where}: {err}") from err
    for run, entry in params["systems"].items():  # each run's sections merged over the global ones, as its jobs
        for config in STAGE_CONFIGS:  # build them: valid alone, a pair can still clash (warmup_steps >= steps)
            try:
                merged = config.from_mapping(section_mapping(params, entry, (config.section,)))
            except ValueError as err:
                where = _key_path(("systems", run, config.section))
                raise ParamsError(f"{source}: {where} over {config.section}: {err}") from err
            if config is DistillConfig:
                distill = merged
        for bits in params["bits"]:  # every bandwidth must give a quantiser for every run
            try:
                distill.vq_config(bits)
            except ValueError as err:
                raise ParamsError(f"{source}: bits: {err} (systems.{run})") from err


def _schema_problem(error: jsonschema.ValidationError) -> str:
    """``key.path: message`` of a schema error; for a setting of another system (a schema nothing satisfies,
    its description saying why) that description."""
    if error.validator == "not" and error.validator_value == {}:
        return f"{_key_path(error.absolute_path)}: {error.schema['description']}"
    return f"{_key_path(error.absolute_path)}: {error.message}"


def validate_params(params: Any, source: str = "params") -> dict:
    """Validate against the schema and the stage configs; raise :class:`ParamsError` naming the first bad key."""
    if not isinstance(params, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level")
    errors = sorted(_validator().iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        raise ParamsError(f"{source}: {_schema_problem(error)}")
    _check_finite(params, source)
    _check_sections(params, source)
    return params


def load_params(path: str | Path = DEFAULT_PARAMS_PATH) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ParamsError(f"params {path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise ParamsError(f"params {path}: cannot read ({err.strerror or err})") from err
    try:
        params = load_yaml(text)
    except yaml.YAMLError as err:
        raise ParamsError(f"params {path}: not valid YAML ({yaml_problem(err)})") from err
    except UnicodeDecodeError as err:
        raise ParamsError(f"params {path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    return validate_params(params, str(path))


def run_settings(params: dict, run: str) -> dict:
    """The ``systems.<run>`` entry with schema defaults filled in."""
    systems = params["systems"]
    if run not in systems:
        raise ParamsError(f"systems.{run}: no such run in params (have: {', '.join(systems)})")
    defaults = {"boundary": "open", "gamma": 1.0, "J": 1.0, "j2": 0.0, "sign_rule": None}
    return {**defaults, **systems[run]}
