"""Argument types of the ``vqnqs`` command: each checks one value and names what it expected (exit 2)."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import yaml

from vqnqs.config import load_yaml, yaml_problem
from vqnqs.physics.lattice import parse_size
from vqnqs.schema import RUN_NAME


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument on one line (the full usage is in ``--help``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def size_argument(text: str) -> str:
    try:
        parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {str(err).removeprefix(f'size {text!r}: ')}") from err
    return text.strip()


def run_name(text: str) -> str:
    """A key under the params' ``systems``: the schema's name pattern and length bound."""
    if len(text) > RUN_NAME["maxLength"] or not re.fullmatch(RUN_NAME["pattern"], text):
        raise argparse.ArgumentTypeError(
            f"{text[:20]!r}{'...' if len(text) > 20 else ''}: expected a run name (lower-case letters, digits and _, "
            f"at most {RUN_NAME['maxLength']} characters)"
        )
    return text


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def output_file(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; expected a file path")
    return path


def set_argument(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` for ``--set``, the value read as YAML (``steps=300``, ``optimizer=adam``, ``d_ff=null``)."""
    key, separator, value = text.partition("=")
    if not separator or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), load_yaml(value)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(
            f"{key.strip()}: value {value!r} is not valid YAML ({yaml_problem(err)})"
        ) from err
