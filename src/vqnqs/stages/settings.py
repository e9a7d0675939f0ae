"""A stage's settings: the system (flags over the params file's run entry) and its config (params, run, --set).

Settings of a stage come from, later ones winning::

    the config dataclass's defaults  <  params[section]  <  params.systems[run][section]  <  --set KEY=VALUE

and are validated once, when the config is built (:mod:`vqnqs.knobs`). The MLflow run of a stage records
the settings it used (:func:`open_run`).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

from vqnqs.config import load_params, run_settings, section_mapping
from vqnqs.physics.hamiltonian import Hamiltonian, build_hamiltonian
from vqnqs.physics.systems import SYSTEM_SETTINGS, foreign_setting
from vqnqs.stages.config import check_threads, resolve_device
from vqnqs.tracking import Run
from vqnqs.vmc.local_energy import check_chunk_fits

SYSTEM_KEYS = ("system", "size", "boundary", "gamma", "J", "j2", "sign_rule")
SETTING_DEFAULTS = {"gamma": None, "j2": 0.0, "sign_rule": None}  # of the settings of one system each


class UsageError(ValueError):
    """Bad input found after parsing (e.g. a combination of arguments): exit 2, one line."""


def resolve_system(args: argparse.Namespace) -> tuple[dict, dict]:
    """Merge explicit flags over the ``--run`` entry; returns (system settings, whole params or {}).

    A setting of another system (:data:`~vqnqs.physics.systems.SYSTEM_SETTINGS`) given on the command line
    is refused (in a params entry the schema refuses it); one that the run's entry gave for the system a
    flag replaces is dropped.
    """
    params: dict = {}
    settings: dict[str, Any] = {"boundary": "open", "J": 1.0, **SETTING_DEFAULTS}
    if args.run is not None:
        params = load_params(args.params)
        settings = run_settings(params, args.run)
    explicit = {
        "system": args.system,
        "size": args.size,
        "boundary": args.boundary,
        "gamma": args.gamma,
        "J": args.coupling,
        "j2": args.j2,
        "sign_rule": args.sign_rule,
    }
    settings.update({key: value for key, value in explicit.items() if value is not None})
    for key in ("system", "size"):
        if settings.get(key) is None:
            raise UsageError(f"argument --{key}: required (or take it from the params file with --run KEY)")
    for key in SYSTEM_SETTINGS:
        if (problem := foreign_setting(settings["system"], key)) is not None:
            if explicit[key] is not None:
                raise UsageError(f"argument --{key.replace('_', '-')}: {problem}")
            settings[key] = SETTING_DEFAULTS[key]
    return settings, params


def hamiltonian_from(settings: dict) -> Hamiltonian:
    return build_hamiltonian(
        settings["system"],
        settings["size"],
        settings["boundary"],
        gamma=1.0 if settings["gamma"] is None else settings["gamma"],
        coupling=settings["J"],
        sign_rule=settings["sign_rule"],
        j2=settings.get("j2") or 0.0,
    )


def stage_config(cls: type, params: dict, settings: dict, overrides: list[tuple[str, Any]]) -> Any:
    """``cls`` (a stage config) from params' sections (``cls.sections``), the run's own ones and ``--set``
    overrides (:func:`vqnqs.config.section_mapping`); a bad value is a :class:`UsageError` naming the section
    and the key."""
    section, given = cls.section, dict(overrides)
    merged = {**section_mapping(params, settings, cls.sections(given)), **given}
    with refused_as(f"{section} settings"):
        config = cls.from_mapping(merged)
        resolve_device(config.device)  # a device that is not there is refused now, before any work
        check_threads(config.threads)
    return config


def stage_setup(args: argparse.Namespace, cls: type) -> tuple[dict, dict, Hamiltonian, Any]:
    """``(system settings, params, Hamiltonian, config of class cls)`` of a stage's command line."""
    settings, params = resolve_system(args)
    hamiltonian = hamiltonian_from(settings)
    config = stage_config(cls, params, settings, args.overrides)
    with refused_as(f"{cls.section} settings"):  # the memory of one local-energy chunk, before any work
        check_chunk_fits(hamiltonian, config.chunk_size or config.batch)
    return settings, params, hamiltonian, config


@contextlib.contextmanager
def refused_as(argument: str) -> Iterator[None]:
    """A ``ValueError`` in the block becomes a :class:`UsageError` naming ``argument`` (exit 2, one line)."""
    try:
        yield
    except ValueError as err:
        raise UsageError(f"{argument}: {err}") from err


def open_run(
    stage: str, settings: dict, params: dict, run: str | None, used: dict, driver: Any = None, **tags: Any
) -> Run:
    """The stage's MLflow run: ``used`` as its params (with the system), tags naming the system and run.

    With a step-wise stage's ``driver`` (:class:`~vqnqs.stages.driver.Stage`, after its ``resume``): the run
    of the checkpoint it resumed is continued, that of a checkpoint it set aside ended if left RUNNING.
    """
    system = {key: settings.get(key) for key in SYSTEM_KEYS}
    labels = {"system": settings["system"], "size": settings["size"], "boundary": settings["boundary"], "run": run}
    ids = {"run_id": driver.run_id, "orphan_id": driver.orphan_id} if driver is not None else {}
    return Run(
        stage,
        {"system": system, **used},
        {**labels, **tags},
        experiment=params.get("experiment"),
        system_metrics=driver is not None,  # the step-wise (training) stages record CPU, memory and GPU use
        **ids,
    )
