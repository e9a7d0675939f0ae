"""The pipeline as its users run it, on the tiny `ci` profile in a temporary copy of the repository.

- `dvc repro` runs the whole DAG and is a no-op right after; `dvc metrics show` and `dvc plots show` read its
  results; `dvc exp run -S distill.steps=...` reruns only the distill, profile and report stages, and
  `dvc metrics diff` and `dvc exp show` give the changed figures;
- interrupting `snakemake` during training (SIGINT, then SIGKILL) and rerunning resumes from the last
  checkpoint and finishes every output.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # vqnqs, snakemake, dvc installed beside this interpreter

pytestmark = pytest.mark.slow


def copy_repository(destination: Path, profile: str = "ci") -> Path:
    """Tracked and untracked-but-not-ignored files into a fresh git repository, with params = profile."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = REPO_ROOT / name.decode()
        if source.is_file() or source.is_symlink():
            target = destination / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
    shutil.copy(destination / "config" / f"{profile}.yaml", destination / "params.yaml")
    git(destination, "init", "-q")
    git(destination, "add", "-A")
    git(destination, "commit", "-qm", "copy")
    return destination


def git(cwd: Path, *args: str) -> None:
    identity = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    subprocess.run(["git", *args], cwd=cwd, check=True, env={**os.environ, **identity})


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return copy_repository(tmp_path / "repo")


def run(cwd: Path, *command: str) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def stages_run(output: str) -> set[str]:
    """Names of the stages `dvc repro` ran (it prints "Running stage 'NAME':")."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def untracked_or_changed(repository: Path) -> list[str]:
    """``git status --porcelain`` lines: files git would show to a user after a run."""
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repository, capture_output=True, text=True)
    return status.stdout.splitlines()


def test_stage_outputs_are_ignored_by_git():
    """Outputs of either front-end never show up in git (one `git add -A` from committing checkpoints), and the
    pipeline tests copy tracked and not-ignored files only: a user's own `make run` outputs stay out of them."""
    outputs = [
        "data/reference/tfim_16.json",
        "data/train/tfim_16/model.pt",
        "data/train/tfim_16/checkpoint.pt",
        "data/distill/tfim_16/bits6/metrics.json",
        "data/profile/tfim_16/bits6.csv",
        "results/report.md",
        "results/figures/tfim_scaling.png",
        "logs/train/tfim_16.log",
        "mlflow.db",
        "mlruns/0/meta.yaml",
    ]
    inputs = ["data/reference/literature.csv", "data/reference/paper_table1.csv", "params.yaml", "dvc.lock"]
    check = subprocess.run(["git", "check-ignore", *outputs, *inputs], cwd=REPO_ROOT, capture_output=True, text=True)
    assert sorted(check.stdout.split()) == sorted(outputs)


def test_dvc_repro_reruns_only_what_changed(workdir):
    first = stages_run(run(workdir, "dvc", "repro"))
    assert untracked_or_changed(workdir) == [" M dvc.lock"], "outputs must be ignored by git, only dvc.lock changes"
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    n_runs, n_bits, n_vq = len(params["systems"]), len(params["bits"]), len(params["train_vq_runs"])
    assert n_vq > 0, "the ci profile must exercise the train_vq branch"
    # reference, train, distill, profile; train_vq, profile_vq; report
    assert len(first) == 2 * n_runs + 2 * n_runs * n_bits + 2 * n_vq + 1
    report = (workdir / "results" / "report.md").read_text()
    assert "Table 1" in report and (workdir / "results" / "figures" / "tfim_scaling.png").is_file()
    assert "VQ-NQS trained by VMC" in report and (workdir / "results" / "figures" / "error_vs_time.png").is_file()
    comparison = pd.read_csv(workdir / "results" / "vq_training.csv")
    assert len(comparison) == 3 * n_vq and set(comparison["model"]) == {"baseline", "distilled", "vmc-trained"}
    assert comparison[["exact_rel_error", "flops_dedup_per_sample", "time_dedup_s_per_sample"]].notna().all().all()

    assert stages_run(run(workdir, "dvc", "repro")) == set(), "dvc repro right after a full run must be a no-op"

    # Every stage's metrics.json and the report's summary.json are DVC metrics; histories, profiles, figures plots.
    shown = json.loads(run(workdir, "dvc", "metrics", "show", "--json"))[""]["data"]
    summary = json.loads((workdir / "results" / "summary.json").read_text())
    assert shown["results/summary.json"]["data"] == summary
    vq_run = params["train_vq_runs"][0]["run"]
    assert set(summary[vq_run]["baseline"]) == {"rel_error", "exact_rel_error", "v_score", "seconds_per_step"}
    assert summary[vq_run][f"bits{params['bits'][0]}"]["total_savings"] > 1
    assert all(f"data/train/{key}/metrics.json" in shown for key in params["systems"])
    plots = json.loads(run(workdir, "dvc", "plots", "show", "--json"))["data"]
    assert plots["results/figures/vmc_convergence.png"][0]["type"] == "image"
    assert plots[f"data/train/{vq_run}/history.csv"][0]["type"] == "vega"

    git(workdir, "commit", "-qam", "baseline run")  # its dvc.lock: what experiments are compared with
    steps = params["distill"]["steps"] + 5
    rerun = stages_run(run(workdir, "dvc", "exp", "run", "-S", f"distill.steps={steps}"))
    assert rerun, "a distillation parameter changed but nothing reran"
    assert {name.split("@")[0] for name in rerun} == {"distill", "profile", "report"}
    assert len(rerun) == 2 * n_runs * n_bits + 1
    student = f"data/distill/{vq_run}/bits{params['bits'][0]}/metrics.json"
    diff = json.loads(run(workdir, "dvc", "metrics", "diff", "--json"))
    assert diff[student]["steps"] == {"old": steps - 5, "new": steps, "diff": 5}
    experiments = json.loads(run(workdir, "dvc", "exp", "show", "--json"))
    (experiment,) = [exp for commit in experiments for exp in commit.get("experiments") or []]
    data = experiment["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["distill"]["steps"] == steps
    assert data["metrics"]["results/summary.json"]["data"] == json.loads(
        (workdir / "results" / "summary.json").read_text()
    )

    # A key the params file leaves to its default: ++ adds it. Only the VQ trainings, their profiles and the
    # report depend on train_vq.
    rerun = stages_run(run(workdir, "dvc", "exp", "run", "-S", "++train_vq.lr=0.01"))
    assert {name.split("@")[0] for name in rerun} == {"train_vq", "profile_vq", "report"}
    assert len(rerun) == 2 * n_vq + 1


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"snakemake ended before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.2)


def checkpoint_step(path: Path) -> int:
    import torch

    return int(torch.load(path, weights_only=True)["step"])


STEPS = 600


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_training_resumes(workdir, stop):
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    # Long enough to be interrupted after a few checkpoints (a step takes ~0.1 s here), short enough to finish.
    params["train"].update(steps=STEPS, checkpoint_every=5)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_key = next(key for key, entry in params["systems"].items() if entry["system"] == "tfim")
    target = f"data/train/{run_key}/model.pt"
    checkpoint = workdir / "data" / "train" / run_key / "checkpoint.pt"

    snakemake = subprocess.Popen(
        ["snakemake", "--cores", "1", target],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, so the signal reaches the training too
        # A runner that starts the tests in the background (`cmd &` in a script) leaves SIGINT ignored, and an
        # ignored signal stays ignored in every child: give snakemake (and so its jobs) the default, as a
        # terminal's Ctrl-C finds it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for(checkpoint, snakemake)
    time.sleep(1.0)  # let it pass a few more checkpoints
    os.killpg(snakemake.pid, stop)
    snakemake.wait(timeout=120)
    interrupted_at = checkpoint_step(checkpoint)
    assert 0 < interrupted_at < STEPS
    assert not (workdir / target).exists()

    if stop == signal.SIGKILL:  # a killed snakemake leaves its lock behind
        run(workdir, "snakemake", "--unlock")
    run(workdir, "snakemake", "--cores", "1", target)
    metrics = json.loads((workdir / "data" / "train" / run_key / "metrics.json").read_text())
    assert metrics["steps"] == STEPS
    log = (workdir / "logs" / "train" / f"{run_key}.log").read_text()
    assert f"resuming from step {interrupted_at}" in log
