"""A training killed (SIGKILL, SIGTERM) and resumed is one MLflow run: FINISHED, every step's metrics once."""

import os
import signal
import subprocess
import sys
import time

import pytest

from vqnqs.cli import main

from ..vmc.conftest import TINY

STEPS = 40


def start_training(tmp_path, env, *extra):
    settings = {**TINY, "steps": STEPS, "checkpoint_every": 5}
    args = [sys.executable, "-m", "vqnqs", "train", "--system", "tfim", "--size", "8", "--reference",
            str(tmp_path / "ref.json"), "--out-dir", str(tmp_path / "out")]  # fmt: skip
    args += [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    return subprocess.Popen([*args, *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def checkpoint_step(path) -> int:
    import torch

    return int(torch.load(path, weights_only=True)["step"]) if path.exists() else 0


def training_stopped_at(tmp_path, monkeypatch, step: int, stop: int) -> tuple[str, dict]:
    """A reference, then a training in a subprocess sent ``stop`` once it has checkpointed ``step``; returns the
    MLflow store's URI and the environment that points the subprocesses at it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["reference", "--system", "tfim", "--size", "8", "--out", str(tmp_path / "ref.json")]) == 0
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    process = start_training(tmp_path, env)
    deadline = time.monotonic() + 120
    while checkpoint_step(tmp_path / "out" / "checkpoint.pt") < step:
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(stop)
    process.wait(timeout=60)
    return uri, env


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_and_resumed_training_is_one_run(tmp_path, monkeypatch, stop):
    from mlflow.tracking import MlflowClient

    uri, env = training_stopped_at(tmp_path, monkeypatch, 10, stop)  # metrics were flushed, steps were lost
    assert checkpoint_step(tmp_path / "out" / "checkpoint.pt") < STEPS

    client = MlflowClient(tracking_uri=uri)
    (killed,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert killed.info.status == ("KILLED" if stop == signal.SIGTERM else "RUNNING")

    resumed = start_training(tmp_path, env)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "energy_per_site")]
    assert sorted(steps) == list(range(1, STEPS + 1))  # each step once


def test_a_killed_training_started_afresh_ends_the_orphan(tmp_path, monkeypatch):
    """SIGKILL leaves the run RUNNING; rerunning with --fresh sets the checkpoint aside and ends that run KILLED."""
    from mlflow.tracking import MlflowClient

    uri, env = training_stopped_at(tmp_path, monkeypatch, 5, signal.SIGKILL)
    fresh = start_training(tmp_path, env, "--fresh")
    assert fresh.wait(timeout=300) == 0, fresh.stderr.read()
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], order_by=["start_time"])
    assert sorted(run.info.status for run in runs) == ["FINISHED", "KILLED"]
    assert (tmp_path / "out" / "checkpoint.1.pt").exists()
