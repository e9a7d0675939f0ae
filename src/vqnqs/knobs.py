"""Knobs: config-dataclass fields whose JSON schema and validation derive from one declaration.

A stage's config is a frozen dataclass whose fields are declared with :func:`knob`::

    steps: int = knob(1800, minimum=1)        # the annotation gives the type, knob() the constraints

From that one declaration come

- the field's JSON schema (:func:`section_schema`), from which ``params.schema.json`` is generated
  (:mod:`vqnqs.schema`): what params files, Snakemake and DVC are held to;
- its validation when a config is built (:func:`check_knobs`, called by ``__post_init__``): what ``--set``
  and the params' mappings are held to, with one-line messages that name the field.

Both read the same constraints, so a value gets the same verdict in params.yaml and on the command line
(``tests/test_knobs.py`` walks every field of every config through both). A subclass may change a
field's default without repeating its constraints: they are looked up through the class hierarchy.
Checks that involve several fields (``warmup_steps < steps``) go in the config's ``check``.

A field whose type is itself a config (declared with :func:`nested`) is a nested section: a mapping in
the params file (``finetune: {steps: 10}``), a dotted key on the command line (``--set finetune.steps=10``),
and its messages name the dotted key.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

import jsonschema

JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}
# Text a float knob takes as a number: YAML 1.1 (PyYAML) reads 1e-3, without a dot, as a string.
AT_LEAST_TWO = "need at least 2 samples for a variance"  # the message of sample-count knobs
NUMBER_TEXT = r"^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$"


@dataclass(frozen=True)
class Knob:
    """Constraints of one field (stored in the dataclass field's metadata)."""

    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None
    exclusive_maximum: float | None = None
    choices: tuple | None = None  # allowed values (an enum)
    why: str | None = None  # what a range violation says instead of the bound, e.g. "need at least 2 samples"
    schema: dict | None = None  # the JSON schema outright, for a type that is not T or T | None


def knob(default: Any, **constraints: Any) -> Any:
    """A dataclass field with ``default`` and the :class:`Knob` constraints ``constraints``."""
    return dataclasses.field(default=default, metadata={"knob": Knob(**constraints)})


def nested(config: type) -> Any:
    """A dataclass field holding a nested config of class ``config``, its defaults by default."""
    return dataclasses.field(default_factory=config)


class Config:
    """Base of the config dataclasses: knobs checked on construction, built from and written to plain mappings."""

    section = ""  # the params-file section (and the word in error messages)

    def __post_init__(self) -> None:
        check_knobs(self)
        self.check()

    def check(self) -> None:
        """Checks that involve several fields (``ValueError`` naming the first)."""

    @classmethod
    def sections(cls, given: dict[str, Any]) -> tuple[str, ...]:
        """The params sections this config is read from, in merge order, given the command line's ``--set``."""
        return (cls.section,)

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any]) -> Any:
        """Build from a params mapping or ``--set`` values; an unknown key raises ``ValueError`` naming it."""
        return config_from_mapping(cls, mapping, cls.section or cls.__name__)

    def to_dict(self) -> dict:
        """The knobs as plain values, a nested section as a nested mapping (the inverse of ``from_mapping``)."""
        return dataclasses.asdict(self)


@functools.cache
def knob_of(cls: type, name: str) -> Knob:
    """The constraints of field ``name``: from the nearest class in ``cls``'s hierarchy that declares them."""
    for klass in cls.__mro__:
        for field in dataclasses.fields(klass) if dataclasses.is_dataclass(klass) else ():
            if field.name == name and "knob" in field.metadata:
                return field.metadata["knob"]
    return Knob()


@functools.cache
def field_type(cls: type, name: str) -> tuple[type, bool]:
    """``(type, optional)`` of field ``name`` from its annotation (``int | None`` -> ``(int, True)``)."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else ()
    kinds = [k for k in args if k is not type(None)] or [hint]
    return kinds[0], type(None) in args


def section_of(cls: type, name: str) -> type | None:
    """The config class of field ``name`` where it is a nested section, else None."""
    kind = field_type(cls, name)[0]
    return kind if isinstance(kind, type) and dataclasses.is_dataclass(kind) else None


def knob_schema(cls: type, name: str) -> dict:
    """The JSON schema of field ``name``."""
    spec = knob_of(cls, name)
    if spec.schema is not None:
        return spec.schema
    nested = section_of(cls, name)
    if nested is not None:
        return section_schema(nested)
    kind, optional = field_type(cls, name)
    if spec.choices is not None:
        return {"enum": [*spec.choices, *([None] if optional else [])]}
    types_ = [JSON_TYPES[kind], *(["string"] if kind is float else []), *(["null"] if optional else [])]
    schema: dict = {"type": types_ if len(types_) > 1 else types_[0]}
    if kind is float:  # numeric text (bounds apply to numbers; check_knob applies them to the text's value)
        schema["pattern"] = NUMBER_TEXT
    bounds = {
        "minimum": spec.minimum,
        "exclusiveMinimum": spec.exclusive_minimum,
        "maximum": spec.maximum,
        "exclusiveMaximum": spec.exclusive_maximum,
    }
    schema.update({key: value for key, value in bounds.items() if value is not None})
    return schema


def section_schema(cls: type) -> dict:
    """The JSON schema of a params section holding (some of) the fields of config dataclass ``cls``."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {field.name: knob_schema(cls, field.name) for field in dataclasses.fields(cls)},
    }


def _coerce(kind: type, value: Any) -> Any:
    """Floats take ints and numeric text (YAML 1.1 reads ``1e-3`` as a string); booleans stay booleans."""
    if kind is float and not isinstance(value, bool):
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str) and re.match(NUMBER_TEXT, value.strip()):
            return float(value)
    return value


def _range_error(spec: Knob, value: Any, optional: bool, kind: type) -> str | None:
    """What is wrong with ``value`` against the bounds of ``spec``, or None."""
    low, low_open = (spec.exclusive_minimum, True) if spec.exclusive_minimum is not None else (spec.minimum, False)
    high, high_open = (spec.exclusive_maximum, True) if spec.exclusive_maximum is not None else (spec.maximum, False)
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if not (below or above):
        return None
    if spec.why:
        return spec.why
    if high is not None:
        return f"must lie in {'(' if low_open else '['}{low:g}, {high}{')' if high_open else ']'}"
    if (low == 0 and low_open) or (kind is int and low == 1 and not low_open):
        if not optional:
            return "must be positive"
        return "must be a positive integer or null" if kind is int else "must be positive or null"
    return f"must be {'>' if low_open else '>='} {low:g}" + (" or null" if optional else "")


class UnknownSetting(ValueError):
    """A key that names no knob (its message already names the key with its dotted path)."""


def section_from_mapping(cls: type, name: str, value: Any) -> Any:
    """The nested section ``name`` of ``cls`` from ``value`` (a mapping, or that section's config itself);
    ``ValueError`` naming the dotted key."""
    nested = section_of(cls, name)
    if isinstance(value, nested):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{name} {value!r}: expected a mapping of {nested.__name__} settings")
    try:
        return config_from_mapping(nested, value, f"{cls.section or cls.__name__}.{name}", prefix=f"{name}.")
    except UnknownSetting:
        raise
    except ValueError as err:
        raise ValueError(f"{name}.{err}") from err


def check_knob(cls: type, name: str, value: Any) -> Any:
    """``value`` for field ``name`` (coerced as in :func:`_coerce`); ``ValueError`` naming the field if refused."""
    if section_of(cls, name) is not None:
        return section_from_mapping(cls, name, value)
    spec, (kind, optional) = knob_of(cls, name), field_type(cls, name)
    if value is None and (optional or (spec.schema is not None and None in spec.schema.get("enum", ()))):
        return None
    if spec.schema is not None:
        if not jsonschema.Draft202012Validator(spec.schema).is_valid(value):
            raise ValueError(f"{name} {value!r}: expected {spec.why or spec.schema}")
        return value
    if spec.choices is not None:
        if value not in spec.choices or isinstance(value, bool) != isinstance(spec.choices[0], bool):
            raise ValueError(f"{name} {value!r}: expected one of {', '.join(map(str, spec.choices))}")
        return value
    value = _coerce(kind, value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{name} {value!r}: expected {kind.__name__}{' or null' if optional else ''}")
    if kind is float and not math.isfinite(value):
        raise ValueError(f"{name} {value}: expected a finite number")
    problem = None if kind in (bool, str) else _range_error(spec, value, optional, kind)
    if problem:
        raise ValueError(f"{name} {value}: {problem}")
    return value


def check_knobs(config: Any, of: type | None = None) -> None:
    """Check (and coerce in place) every field of the frozen dataclass ``config`` (those of its base ``of``
    alone where given): ``ValueError`` naming it."""
    for field in dataclasses.fields(of or config):
        value = check_knob(type(config), field.name, getattr(config, field.name))
        object.__setattr__(config, field.name, value)


def knobs_of(config: Any, of: type) -> dict:
    """The values in ``config`` of the fields of ``of`` (one of its config's bases): ``{name: value}``."""
    return {field.name: getattr(config, field.name) for field in dataclasses.fields(of)}


def dotted(mapping: dict, prefix: str = "") -> dict:
    """A mapping with nested mappings (``{"finetune": {"steps": 0}}``) as one with dotted keys (``finetune.steps``)."""
    flat: dict = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def knob_defaults(cls: type) -> str:
    """``name=default`` of every knob of ``cls`` (dotted in a nested section), comma separated (for ``--help``)."""
    return ", ".join(f"{name}={value!r}" for name, value in dotted(cls().to_dict()).items())


def config_from_mapping(cls: type, mapping: dict, what: str, prefix: str = "") -> Any:
    """``cls(**mapping)`` for a config dataclass; a dotted key (``finetune.steps``) sets a knob of a nested
    section, merged over that section's mapping; an unknown key raises :class:`UnknownSetting` naming it and
    ``what``."""
    known = [f.name for f in dataclasses.fields(cls)]
    given: dict = {}
    for key, value in mapping.items():
        head, dot, rest = key.partition(".")
        if head not in known or (dot and section_of(cls, head) is None):
            raise UnknownSetting(f"unknown setting {prefix + key!r}: unknown to {what} (known: {', '.join(known)})")
        if dot:
            value = {rest: value}
        if section_of(cls, head) is not None and isinstance(value, dict) and isinstance(given.get(head), dict):
            value = {**given[head], **value}
        given[head] = value
    return cls(**given)
