"""Griffe extension for the API reference: each object is documented once, in the module that defines it.

A package's ``__init__`` re-exports names from its submodules (``from vqnqs.dedup.engine import DedupEngine``);
with submodules shown, mkdocstrings would render those objects twice. This drops the package-level aliases that
point inside the same package, so the package page shows its docstring, then its submodules.
"""

from __future__ import annotations

from typing import Any

import griffe


class DropInternalReexports(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._drop(pkg, pkg.path)

    def _drop(self, module: griffe.Module, root: str) -> None:
        for name, member in list(module.members.items()):
            if member.is_alias:
                if member.target_path.startswith(root + "."):
                    del module.members[name]
            elif member.is_module:
                self._drop(member, root)
