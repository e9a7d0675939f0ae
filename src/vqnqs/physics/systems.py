"""The model Hamiltonians by name, and the settings that belong to one of them.

Every system takes ``size``, ``boundary`` and the coupling ``J``; the settings of :data:`SYSTEM_SETTINGS`
belong to one system each, and one given for another system is refused (the params schema's if/then on
``system`` and the command line's check both read this table). Kept free of torch: the params checks
(Snakemake's too) read it.
"""

from __future__ import annotations

SYSTEMS = ("tfim", "heisenberg")
SYSTEM_SETTINGS = {
    "gamma": ("tfim", "a transverse field Gamma"),
    "j2": ("heisenberg", "a next-nearest-neighbour coupling J2"),
    "sign_rule": ("heisenberg", "Marshall's sign rule"),
}


def foreign_setting(system: str, key: str) -> str | None:
    """Why ``key`` (one of :data:`SYSTEM_SETTINGS`) does not apply to ``system``, or None where it does."""
    owner, what = SYSTEM_SETTINGS[key]
    return None if owner == system else f"only the {owner} system has {what}"
