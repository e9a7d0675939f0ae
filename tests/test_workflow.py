"""The DAG's two front-ends come from one declaration (vqnqs.pipeline): the committed dvc.yaml is the generated
one, Snakemake and DVC run the same commands with the same inputs and outputs, every path reaches the shell
quoted, and a profile name that is not a plain word naming a file is refused before any job.

Snakemake and DVC differ in granularity only where the table says so: a DVC dependency on a directory covers
the Snakemake inputs inside it (code: ``src/vqnqs/vmc`` vs its ``*.py`` files; the report's ``data/train`` vs
the files it reads there), and DVC's ``persist`` outputs (training checkpoints) are no Snakemake outputs, so
that neither tool deletes them when an interrupted stage reruns.
"""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vqnqs import pipeline
from vqnqs.config import load_params
from vqnqs.report import inputs_from_params

REPO_ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"  # installed beside this interpreter


def test_committed_dvc_yaml_is_the_generated_one():
    generated = pipeline.dvc_yaml()
    assert (REPO_ROOT / pipeline.DVC_FILE).read_text() == generated, "regenerate: python -m vqnqs.pipeline > dvc.yaml"


def test_folded_commands_read_back_as_declared():
    document = yaml.safe_load(pipeline.dvc_yaml())
    assert document["stages"] == {stage.name: pipeline.dvc_stage(stage) for stage in pipeline.STAGES}


def test_every_command_field_is_shell_quoted():
    for stage in pipeline.STAGES:
        fields = re.findall(r"\{([^}]*)\}", pipeline.snakemake_shell(stage))
        assert fields and all(field.endswith(":q") for field in fields), stage.name


@pytest.mark.parametrize("stage", [s for s in pipeline.STAGES if s.jobs], ids=lambda stage: stage.name)
def test_a_run_name_with_shell_syntax_stays_one_argument_under_dvc(stage):
    """DVC puts a run name into the command before vqnqs can refuse it."""
    body = pipeline.dvc_stage(stage)
    hostile = "a run; touch PWNED"
    command = body.get("do", body)["cmd"].replace("${key}", hostile).replace("${item.run}", hostile)
    argv = shlex.split(command.replace("${item.bits}", "6"))
    assert argv[argv.index("--run") + 1] == hostile and "touch" not in argv


def snakemake_jobs(root: Path) -> dict[tuple[str, ...], dict]:
    """Shell command (words, without the log redirection) -> {rule, outputs, inputs}, from a forced dry run."""
    result = subprocess.run(
        [str(SNAKEMAKE), "--dry-run", "--forceall", "--printshellcmds", "--cores", "1"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    jobs: dict[tuple[str, ...], dict] = {}
    job: dict = {}
    for line in result.stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            job = {"rule": line.split()[1].rstrip(":"), "outputs": set(), "inputs": set()}
        elif line.startswith("    input: "):
            job["inputs"] = set(line.removeprefix("    input: ").split(", "))
        elif line.startswith("    output: "):
            job["outputs"] = set(line.removeprefix("    output: ").split(", "))
        elif line.startswith("Shell command: ") and line != "Shell command: None":  # `rule all` has none
            jobs[tuple(shlex.split(line.removeprefix("Shell command: ").split(" > ")[0]))] = job
    return jobs


def dvc_stages(root: Path) -> dict[tuple[str, ...], dict]:
    """Command (words) -> {name, outputs, inputs} of every stage of dvc.yaml (foreach expanded by DVC itself)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    stages: dict[tuple[str, ...], dict] = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            stages[tuple(shlex.split(stage.cmd))] = {
                "name": stage.name,
                "outputs": {out.def_path for out in stage.outs if not out.persist},
                # Snakemake tracks params through each rule's `params:`
                "inputs": {dep.def_path for dep in stage.deps if not isinstance(dep, ParamsDependency)},
            }
    return stages


@pytest.mark.slow
def test_snakemake_and_dvc_run_the_same_dag():
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


@pytest.mark.parametrize(
    "profile, message",
    [
        ("x||touch PWNED||/../ci", "expected a name matching"),  # config/x||touch PWNED||/ exists
        ("my ci", "expected a name matching"),  # config/my ci.yaml exists
        ("../config/ci", "expected a name matching"),
        ("nope", "no such file config/nope.yaml"),
    ],
)
def test_a_profile_that_is_no_plain_name_of_a_file_is_refused_before_any_job(tmp_path, profile, message):
    (tmp_path / "config" / "x||touch PWNED||").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "config/ci.yaml", tmp_path / "config/ci.yaml")
    shutil.copy(REPO_ROOT / "config/ci.yaml", tmp_path / "config/my ci.yaml")
    (tmp_path / "data/reference").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "data/reference/literature.csv", tmp_path / "data/reference")
    before = sorted(tmp_path.rglob("*"))
    result = subprocess.run(  # not a dry run: an accepted name would run the reference job's command
        [
            str(SNAKEMAKE),
            "--cores",
            "1",
            "--snakefile",
            str(REPO_ROOT / "workflow/Snakefile"),
            "data/reference/tfim_8.json",
            "--config",
            f"profile={profile}",
        ],  # fmt: skip
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("Using workflow specific profile")]
    assert len(lines) == 1 and message in lines[0] and repr(profile) in lines[0], result.stderr
    assert not (tmp_path / "PWNED").exists()
    assert sorted(p for p in tmp_path.rglob("*") if ".snakemake" not in p.parts) == before


def test_the_params_file_of_a_profile(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    assert pipeline.params_file() == Path("params.yaml")
    assert pipeline.params_file("ci") == Path("config/ci.yaml")


@pytest.mark.parametrize("profile", [None, "ci", "paper"])
def test_the_report_reads_only_what_its_stage_declares(profile):
    """Every file vqnqs.report checks and reads is an input of the report stage (so Snakemake and DVC rerun the
    report when it changes); the stage's declared inputs may hold more (the data the report draws on offline)."""
    params = load_params(pipeline.params_file(profile))
    inputs = pipeline.snakemake_inputs(pipeline.STAGE["report"], params)
    declared = {path for value in inputs.values() for path in ([value] if isinstance(value, str) else value)}
    read = {str(path) for path in inputs_from_params(params).all_files()}
    assert read and read <= declared, sorted(read - declared)
