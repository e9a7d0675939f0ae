"""The documentation site (mkdocs.yml, docs/) builds with every warning an error, and its API reference covers
every module of the package once.

``make docs`` runs the same build into ``site/``; here it goes to a temporary directory.
"""

import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vqnqs

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built by ``mkdocs build --strict``; fails on any warning (broken link, docstring syntax)."""
    out = tmp_path_factory.mktemp("site")
    mkdocs = Path(sys.executable).parent / "mkdocs"  # installed beside this interpreter (the dev extra)
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return out


def anchors(site: Path) -> list[str]:
    """The ids of every object the API reference renders, once per rendering."""
    return [
        anchor
        for page in sorted((site / "api").rglob("*.html"))
        for anchor in re.findall(r'id="(vqnqs(?:\.\w+)*)"', page.read_text())
    ]


def test_every_module_is_in_the_api_reference(site: Path) -> None:
    found = set(anchors(site))
    modules = [name for _, name, _ in pkgutil.walk_packages(vqnqs.__path__, "vqnqs.")]
    assert len(modules) > 20
    missing = [name for name in modules if name not in found]
    assert not missing, f"modules without a section in the API reference: {missing}"


def test_each_object_is_documented_once_where_it_is_defined(site: Path) -> None:
    rendered = anchors(site)
    duplicates = sorted({anchor for anchor in rendered if rendered.count(anchor) > 1})
    assert not duplicates, duplicates
    found = set(rendered)
    packages = [name for _, name, is_package in pkgutil.walk_packages(vqnqs.__path__, "vqnqs.") if is_package]
    reexported = [
        f"{package}.{name}"
        for package in packages
        for name in getattr(importlib.import_module(package), "__all__", ())
        if getattr(getattr(importlib.import_module(package), name), "__module__", package) != package
    ]
    assert reexported, "expected packages that re-export objects of their submodules"
    assert not found & set(reexported), sorted(found & set(reexported))
