"""No stage writes to a path it reads, or to an out dir another live stage holds: refused before any work
(exit 2, one line naming the path, nothing written). A stage stopped before its first checkpoint says so and
leaves no out dir; a checkpoint that cannot be set aside is refused before any work."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from vqnqs.cli import main
from vqnqs.physics.reference import DEFAULT_LITERATURE_PATH
from vqnqs.stages.outdir import LOCK_FILE

from ..vmc.conftest import TINY

SMALL = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
SYSTEM = ["--system", "tfim", "--size", "8"]
PROFILE = ["profile", *SYSTEM, "--model-dir", "distill", "--baseline", "train"]
DISTILL = ["distill", *SYSTEM, "--bits", "4", "--set", "codes=4", "--reference", "ref.json"]
TRAIN = ["train", *SYSTEM, "--reference", "ref.json"]


@pytest.fixture
def inputs(model_dirs, tmp_path, monkeypatch):
    """The profiling tests' train and distill out dirs, a reference, the literature table and a link to the
    train dir, in the working directory; an MLflow store that must stay absent."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    literature = DEFAULT_LITERATURE_PATH.resolve()
    monkeypatch.chdir(tmp_path)
    assert main(["reference", *SYSTEM, "--out", "ref.json"]) == 0
    shutil.copy(literature, "literature.csv")
    (tmp_path / "link").symlink_to(tmp_path / "train")
    return tmp_path


CASES = {
    "profile_over_the_baseline_metrics": ([*PROFILE, "--out", "train/metrics.json"], "train/metrics.json"),
    "profile_over_the_model_metrics": ([*PROFILE, "--out", "./distill/../distill/metrics.json"], "metrics.json"),
    "profile_over_its_reference": ([*PROFILE, "--reference", "ref.json", "--out", "./ref.json"], "is the input"),
    "reference_over_its_literature": (
        ["reference", *SYSTEM, "--literature", "literature.csv", "--out", "./literature.csv"],
        "is the input literature.csv",
    ),
    "distill_into_its_teacher": ([*DISTILL, "--teacher", "train", "--out-dir", "train"], "input directory train"),
    "distill_into_its_teacher_by_a_link": ([*DISTILL, "--teacher", "link", "--out-dir", "./train"], "directory link"),
    "train_into_its_start": ([*TRAIN, "--init-from", "train", "--out-dir", "train"], "input directory train"),
    "train_into_its_start_by_a_link": ([*TRAIN, "--init-from", "./train", "--out-dir", "link"], "link/metrics.json"),
    "train_over_its_reference": ([*TRAIN[:5], "--reference", "x/metrics.json", *SMALL, "--out-dir", "x"], "is the"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_an_output_that_is_an_input_is_refused(inputs, capsys, name):
    argv, message = CASES[name]
    if name == "train_over_its_reference":  # a reference stored as metrics.json in the out dir
        (inputs / "x").mkdir()
        shutil.copy(inputs / "ref.json", inputs / "x" / "metrics.json")
    before = {p: p.read_bytes() for p in sorted(inputs.rglob("*")) if p.is_file()}
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert {p: p.read_bytes() for p in sorted(inputs.rglob("*")) if p.is_file()} == before  # nothing written


def start_training(tmp_path, *extra) -> subprocess.Popen:
    """A training in a subprocess long enough to be alive (no checkpoint before its end); its lock taken."""
    settings = {**TINY, "steps": 100000, "checkpoint_every": 100000, "threads": 1}
    args = [sys.executable, "-m", "vqnqs", "train", *SYSTEM, "--reference", str(tmp_path / "ref.json")]
    args += ["--out-dir", str(tmp_path / "out" / "t8"), *extra]
    args += [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock, deadline = tmp_path / "out" / "t8" / LOCK_FILE, time.monotonic() + 120
    while not (lock.is_file() and lock.read_text().strip()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    return process


@pytest.fixture
def reference(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["reference", *SYSTEM, "--out", str(tmp_path / "ref.json")]) == 0
    return tmp_path / "ref.json"


def test_a_second_train_on_a_held_out_dir_is_refused_naming_the_first(tmp_path, reference, capsys):
    first = start_training(tmp_path)
    try:
        capsys.readouterr()
        argv = ["train", *SYSTEM, "--reference", str(reference), "--out-dir", str(tmp_path / "out/t8"), *SMALL]
        assert main([*argv, "--set", "seed=1"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"pid {first.pid}" in err and "out/t8" in err, err
        assert first.poll() is None  # the first goes on
    finally:
        first.terminate()
        first.wait(timeout=60)


def test_a_train_terminated_before_its_first_checkpoint_says_so_and_leaves_no_out_dir(tmp_path, reference):
    process = start_training(tmp_path)
    time.sleep(1.0)  # into the loop (or still before it: either way no checkpoint)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "no checkpoint was written" in err.strip().splitlines()[-1] and "is kept" not in err, err
    assert not (tmp_path / "out").exists()  # the directories it created, left empty, are gone


def test_a_checkpoint_that_cannot_be_set_aside_is_refused_before_any_work(tmp_path, reference, capsys):
    out = tmp_path / "out"
    argv = ["train", *SYSTEM, "--reference", str(reference), "--out-dir", str(out), *SMALL]
    assert main([*argv, "--set", "steps=1"]) == 0
    try:
        immutable = subprocess.run(["chattr", "+i", str(out / "checkpoint.pt")], capture_output=True).returncode == 0
    except FileNotFoundError:
        immutable = False
    if not immutable:
        pytest.skip("chattr +i is not available here (needs root and a file system with the attribute)")
    try:
        before = sorted(out.iterdir())
        capsys.readouterr()
        assert main([*argv, "--fresh"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "checkpoint.pt: cannot be set aside" in err, err
        assert sorted(out.iterdir()) == before
    finally:
        subprocess.run(["chattr", "-i", str(out / "checkpoint.pt")], check=True)
