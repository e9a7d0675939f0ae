"""``vqnqs train`` under torchrun: a rank killed mid-run stops the job without outputs, and a rerun resumes from
the last checkpoint onto the trajectory of an uninterrupted run; refusals before any work."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vqnqs.cli import main
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.stages.train import Trainer
from vqnqs.vmc.checkpoint import CheckpointError, load_checkpoint, load_model
from vqnqs.vmc.distributed import World, rank_generators

from ..vmc.conftest import TINY, tiny_config
from ..vmc.test_distributed import free_port

# Adam in float64 on the 8-spin chain, a checkpoint after every step: long enough to kill a rank in.
RUN = {**TINY, "steps": 60, "n_samples": 64, "chunk_size": 64, "checkpoint_every": 1, "optimizer": "adam"}
RUN.update(dtype="float64", lr=0.01, threads=1)
TORCHRUN = Path(sys.executable).with_name("torchrun")


def train_args(tmp_path: Path) -> list[str]:
    reference = tmp_path / "ref.json"
    if not reference.exists():
        assert main(["reference", "--system", "tfim", "--size", "8", "--out", str(reference)]) == 0
    settings = [arg for key, value in RUN.items() for arg in ("--set", f"{key}={value}")]
    args = ["train", "--system", "tfim", "--size", "8", "--reference", str(reference)]
    return [*args, "--out-dir", str(tmp_path / "out"), *settings]


def torchrun(tmp_path: Path, **popen) -> subprocess.Popen:
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "vqnqs.cli", *train_args(tmp_path)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of ``rank`` among the workers torchrun started (by the RANK it gave them)."""
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "vqnqs.cli" in " ".join(child.cmdline()):
                return child.pid
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no worker of rank {rank}")


@pytest.mark.skipif(shutil.which(str(TORCHRUN)) is None, reason="torchrun is not installed")
def test_a_killed_rank_stops_the_job_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "out"
    launcher = torchrun(tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").exists():
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
            time.sleep(0.01)
        os.kill(rank_pid(launcher, 1), signal.SIGKILL)
        _, err = launcher.communicate(timeout=120)  # torchrun tears the group down
    finally:
        launcher.kill()
    assert launcher.returncode != 0, err
    assert not (out / "metrics.json").exists() and not (out / "model.pt").exists()
    stopped_at = load_checkpoint(out / "checkpoint.pt")["step"]
    assert 0 < stopped_at < RUN["steps"]

    rerun = torchrun(tmp_path)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    resumed_at = int(err.split("train: resuming from step ")[1].split()[0])
    assert resumed_at == stopped_at
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == RUN["steps"] and metrics["world_size"] == 2 and metrics["samples_per_rank"] == 32
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])  # rank 0's, resumed
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    assert run.data.params["samples_per_rank"] == "32"

    # The uninterrupted trajectory: one process drawing the same samples from both rank streams.
    torch.set_num_threads(1)
    config = tiny_config(**RUN)
    uninterrupted = Trainer(build_hamiltonian("tfim", "8"), config, tmp_path / "one", -1.0)
    uninterrupted.generator = rank_generators(config.seed, range(2), uninterrupted.device)
    for _ in range(RUN["steps"]):
        uninterrupted.update()
    model, _ = load_model(out / "model.pt")
    for name, value in uninterrupted.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=1e-10, msg=name)


def test_samples_that_do_not_split_over_the_ranks_are_refused(tmp_path, monkeypatch, capsys):
    train = train_args(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun sets it; the refusal comes before joining the group
    capsys.readouterr()
    assert main([*train, "--set", "n_samples=64"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "n_samples 64" in err and "world size 3" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("stage", ["reference", "distill", "profile"])
def test_other_stages_refuse_to_run_as_several_processes(tmp_path, monkeypatch, capsys, stage):
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "ref.json"
    args = {
        "reference": ["--system", "tfim", "--size", "8", "--out", str(out)],
        "distill": ["--run", "tfim_16", "--teacher", str(tmp_path), "--bits", "6", "--out-dir", str(out)],
        "profile": ["--run", "tfim_16", "--model-dir", str(tmp_path), "--baseline", str(tmp_path), "--out", str(out)],
    }
    capsys.readouterr()
    assert main([stage, *args[stage]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "world size 2" in err and "only train" in err
    assert not out.exists()


def test_a_checkpoint_of_another_world_size_is_not_resumed(tmp_path, chain):
    hamiltonian, reference = chain
    Trainer(hamiltonian, tiny_config(steps=2), tmp_path, reference).run(progress=False)
    two = Trainer(hamiltonian, tiny_config(steps=2), tmp_path, reference, world=World(0, 2))
    with pytest.raises(CheckpointError, match="written by 1 processes, this run has 2"):
        two.resume(on_change="refuse")


def restart_main(rank: int, port: int, out_dir: str) -> None:
    """Rank ``rank`` of 2: restart past a one-process checkpoint (as the pipelines ask), then train 2 steps."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        trainer = Trainer(build_hamiltonian("tfim", "8"), tiny_config(steps=2), out_dir, -1.0, world=World(rank, 2))
        trainer.resume(on_change="restart")
        assert trainer.step == 0
        trainer.run(resume=False, progress=False)
    finally:
        dist.destroy_process_group()


def test_two_ranks_set_a_one_process_checkpoint_aside_once_and_start_afresh(tmp_path, chain):
    hamiltonian, reference = chain
    Trainer(hamiltonian, tiny_config(steps=2), tmp_path, reference).run(progress=False)
    mp.spawn(restart_main, args=(free_port(), str(tmp_path)), nprocs=2)
    assert (tmp_path / "checkpoint.1.pt").exists() and not (tmp_path / "checkpoint.2.pt").exists()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["world_size"] == 2
    assert json.loads((tmp_path / "metrics.json").read_text())["world_size"] == 2
