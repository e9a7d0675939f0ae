"""The two DAG front-ends (workflow/Snakefile and dvc.yaml) declare the same stages.

For every Snakemake job (one per rule and wildcard value) there must be one DVC stage with the same
command, the same outputs and the same inputs, and no stage may exist in one DAG only. Two deliberate
differences of granularity are allowed:

- a DVC dependency on a directory covers the Snakemake inputs inside it (code: ``src/vqnqs/vmc``
  vs its ``*.py`` files; the report's ``data/train`` vs the files it reads there), and every such
  directory must cover at least one Snakemake input;
- DVC's ``persist`` outputs (training checkpoints) are not Snakemake outputs, so that neither tool
  deletes them when an interrupted stage reruns.
"""

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def snakemake_jobs(root: Path) -> dict[str, dict]:
    """Shell command (without the log redirection) -> {rule, outputs, inputs}, from a forced dry run."""
    snakemake = Path(sys.executable).parent / "snakemake"  # installed beside this interpreter
    result = subprocess.run(
        [str(snakemake), "--dry-run", "--forceall", "--printshellcmds", "--cores", "1"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    jobs: dict[str, dict] = {}
    job: dict = {}
    for line in result.stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            job = {"rule": line.split()[1].rstrip(":"), "outputs": set(), "inputs": set()}
        elif line.startswith("    input: "):
            job["inputs"] = set(line.removeprefix("    input: ").split(", "))
        elif line.startswith("    output: "):
            job["outputs"] = set(line.removeprefix("    output: ").split(", "))
        elif line.startswith("Shell command: ") and line != "Shell command: None":  # `rule all` has none
            jobs[" ".join(line.removeprefix("Shell command: ").split(" > ")[0].split())] = job
    return jobs


def dvc_stages(root: Path) -> dict[str, dict]:
    """Command -> {outputs, inputs} of every stage of dvc.yaml (foreach expanded by DVC itself)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    stages: dict[str, dict] = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            stages[" ".join(stage.cmd.split())] = {
                "name": stage.addressing,
                "outputs": {out.def_path for out in stage.outs if not out.persist},
                # Snakemake tracks params through each rule's `params:`
                "inputs": {dep.def_path for dep in stage.deps if not isinstance(dep, ParamsDependency)},
            }
    return stages


@pytest.mark.slow
def test_snakemake_and_dvc_declare_the_same_dag():
    jobs = snakemake_jobs(REPO_ROOT)
    stages = dvc_stages(REPO_ROOT)
    assert jobs, "Snakemake found no jobs"
    assert set(jobs) == set(stages), "commands differ between workflow/Snakefile and dvc.yaml"
    for command, job in jobs.items():
        stage = stages[command]
        assert stage["name"].split("@")[0] == job["rule"], command
        assert stage["outputs"] == job["outputs"], command
        assert covered(job["inputs"], stage["inputs"]) == job["inputs"], f"{command}: inputs missing from dvc.yaml"
        for dep in stage["inputs"]:
            assert covered(job["inputs"], {dep}), f"{command}: dvc.yaml dependency {dep} is not a Snakemake input"


def covered(inputs: set[str], deps: set[str]) -> set[str]:
    """The inputs that equal one of ``deps`` or lie inside one of them (a directory)."""
    return {path for path in inputs if any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)}
