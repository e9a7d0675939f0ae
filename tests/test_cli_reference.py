"""`vqnqs reference`: numbers, the JSON contract, and what bad input gets."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vqnqs.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]  # params.yaml and data/reference/literature.csv live here
CONTRACT_KEYS = {
    "system",
    "size",
    "boundary",
    "n_sites",
    "energy",
    "energy_per_site",
    "method",
    "source",
    "uncertainty",
}


def run_reference(tmp_path, *args):
    out = tmp_path / "ref.json"
    code = main(["reference", *args, "--out", str(out)])
    return code, out


@pytest.mark.parametrize(
    "args, method, per_site, tol",
    [
        (["--system", "tfim", "--size", "32"], "free_fermions", -40.3843131612 / 32, 1e-11),
        (["--system", "tfim", "--size", "384"], "free_fermions", -488.5609453922 / 384, 1e-11),
        (["--system", "heisenberg", "--size", "4x4"], "lanczos", -0.5743254416, 1e-9),
        # J1-J2 at J2 = 0.5 (tests/physics/test_j1j2.py: found twice independently)
        (["--system", "heisenberg", "--size", "4x4", "--j2", "0.5"], "lanczos", -0.469097309380, 1e-9),
        (
            ["--system", "heisenberg", "--size", "4x4", "--boundary", "periodic", "--j2", "0.5"],
            "lanczos",
            -0.528620209462,
            1e-9,
        ),
        # default 'best': exact diagonalisation, then Sandvik's SSE QMC (arXiv:2601.20189), then the paper's
        (["--system", "heisenberg", "--size", "6x6"], "literature", -0.6035218, 0),
        (["--system", "heisenberg", "--size", "8x8"], "literature", -0.61903712, 0),
        (["--system", "heisenberg", "--size", "10x10"], "literature", -0.6286561, 0),
        (["--system", "heisenberg", "--size", "12x12"], "literature", -0.63520068, 0),
        (["--system", "heisenberg", "--size", "16x16"], "literature", -0.6435317, 0),
        (["--system", "heisenberg", "--size", "10x10", "--literature-key", "paper"], "literature", -0.628667, 0),
        (["--system", "heisenberg", "--size", "6x6", "--literature-key", "paper"], "literature", -0.603522, 0),
        (["--system", "heisenberg", "--size", "10x10", "--literature-key", "lubasch2014"], "literature", -0.628656, 0),
    ],
)
def test_reference_values(tmp_path, args, method, per_site, tol):
    code, out = run_reference(tmp_path, *args)
    assert code == 0
    record = json.loads(out.read_text())
    assert CONTRACT_KEYS <= set(record)
    assert record["method"] == method
    assert record["energy_per_site"] == pytest.approx(per_site, abs=tol)
    assert record["energy"] == pytest.approx(record["energy_per_site"] * record["n_sites"])


def params_with(tmp_path, systems: dict) -> str:
    """The repository's params.yaml with ``systems`` in place of its own, written under ``tmp_path``."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["systems"] = systems
    params["train_vq_runs"] = []  # they name the replaced runs
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def test_reference_from_params_run(tmp_path):
    path = params_with(tmp_path, {"chain": {"system": "tfim", "size": "12", "gamma": 0.5}})
    code, out = run_reference(tmp_path, "--params", path, "--run", "chain")
    assert code == 0
    record = json.loads(out.read_text())
    assert record["hamiltonian"]["gamma"] == 0.5 and record["n_sites"] == 12


def test_j1j2_reference_from_params_run(tmp_path):
    j1j2 = {"system": "heisenberg", "size": "2x4", "boundary": "open", "j2": 0.5, "sign_rule": False}
    path = params_with(tmp_path, {"j1j2": j1j2})
    code, out = run_reference(tmp_path, "--params", path, "--run", "j1j2")
    assert code == 0
    record = json.loads(out.read_text())
    assert record["hamiltonian"] == {"system": "heisenberg", "J": 1.0, "J2": 0.5, "sign_rule": False}
    assert record["method"] == "lanczos" and record["energy_per_site"] == pytest.approx(-0.455228734321, abs=1e-10)
    code, out = run_reference(tmp_path, "--params", path, "--run", "j1j2", "--j2", "0")  # the flag wins
    assert code == 0 and "J2" not in json.loads(out.read_text())["hamiltonian"]


@pytest.mark.parametrize(
    "args, names",
    [
        (["--system", "ising", "--size", "8"], "--system"),
        (["--system", "tfim", "--size", "0"], "--size"),
        (["--system", "tfim", "--size", "3x"], "--size"),
        (["--system", "tfim", "--size", "-4"], "--size"),
        (["--system", "tfim", "--size", "8", "--gamma", "nan"], "--gamma"),
        (["--system", "heisenberg", "--size", "3x3", "--boundary", "periodic", "--sign-rule"], "sign_rule"),
        (["--system", "heisenberg", "--size", "6x6", "--method", "lanczos"], "size 6x6"),
        (["--system", "heisenberg", "--size", "8x8", "--literature-key", "nope"], "literature_key"),
        (["--system", "heisenberg", "--size", "4x4", "--gamma", "2"], "--gamma"),
        (["--system", "tfim", "--size", "8", "--j2", "0.5"], "--j2"),
        (["--system", "heisenberg", "--size", "4x4", "--j2", "inf"], "--j2"),
        (["--system", "heisenberg", "--size", "8", "--j2", "0.5"], "square lattice"),
        (["--system", "heisenberg", "--size", "6x6", "--j2", "0.5"], "j2 = 0.5"),
        (["--size", "8"], "--system"),
        (["--run", "missing"], "systems.missing"),
    ],
)
def test_bad_input_one_line_no_output(tmp_path, args, names):
    out = tmp_path / "ref.json"
    result = subprocess.run(
        [sys.executable, "-m", "vqnqs", "reference", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert names in lines[0]
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = main(["reference", "--system", "tfim", "--size", "8", "--out", str(blocker / "ref.json")])
    assert code == 2


def test_help_lists_stages(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "reference" in capsys.readouterr().out
