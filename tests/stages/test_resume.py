"""What a stage does with a checkpoint in its out dir: extend `steps`, refuse another change, --fresh sets it aside."""

import csv

import pytest
import torch

from vqnqs.cli import main
from vqnqs.stages.train import Trainer
from vqnqs.vmc.checkpoint import load_checkpoint

from ..vmc.conftest import TINY, tiny_config


def history(out_dir) -> list[dict]:
    with (out_dir / "history.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_more_steps_continue_a_finished_training(tmp_path, chain):
    hamiltonian, reference = chain
    Trainer(hamiltonian, tiny_config(steps=4), tmp_path, reference).run(progress=False)
    finished = load_checkpoint(tmp_path / "checkpoint.pt")
    first_rows = history(tmp_path)

    extended = Trainer(hamiltonian, tiny_config(steps=7), tmp_path, reference)
    extended.resume(on_change="refuse")  # growing steps is no change that needs a restart
    assert extended.step == 4
    for name, value in finished["model"].items():  # the first new step starts from the last checkpoint
        assert torch.equal(extended.model.state_dict()[name], value), name
    metrics = extended.run(progress=False)
    assert metrics["steps"] == 7
    rows = history(tmp_path)
    assert rows[:4] == first_rows and [int(r["step"]) for r in rows] == list(range(1, 8))
    # Past the end of the schedule it was laid out for (4 steps), the run goes on at the final learning rate.
    assert [float(r["lr"]) for r in rows[4:]] == [pytest.approx(TINY["lr_final"])] * 3
    assert load_checkpoint(tmp_path / "checkpoint.pt")["laid_for"] == {"steps": 4}


def test_zero_new_steps_still_report_seconds_per_step(tmp_path, chain):
    hamiltonian, reference = chain
    Trainer(hamiltonian, tiny_config(steps=2), tmp_path, reference).run(progress=False)
    again = Trainer(hamiltonian, tiny_config(steps=2, eval_samples=32), tmp_path, reference).run(progress=False)
    assert again["steps"] == 2 and again["seconds_per_step"] > 0


def test_a_finished_checkpoint_rewrites_the_outputs_a_pipeline_removed(tmp_path, chain):
    """`dvc repro` deletes a stage's outputs (not its persist checkpoint) before rerunning it: the stage resumes
    at its last step and writes every output again, the history from the checkpoint."""
    hamiltonian, reference = chain
    first = Trainer(hamiltonian, tiny_config(steps=3), tmp_path, reference).run(progress=False)
    rows = history(tmp_path)
    for name in ("history.csv", "metrics.json", "model.pt"):
        (tmp_path / name).unlink()
    again = Trainer(hamiltonian, tiny_config(steps=3), tmp_path, reference).run(progress=False)
    assert history(tmp_path) == rows and (tmp_path / "model.pt").is_file()
    assert again["energy_per_site"] == first["energy_per_site"]  # the evaluation's stream was checkpointed too


def cli_train(world, out, *settings):
    reference = world / "ref.json"
    if not reference.exists():
        assert main(["reference", "--system", "tfim", "--size", "8", "--out", str(reference)]) == 0
    small = [arg for key, value in {**TINY, "steps": 2}.items() for arg in ("--set", f"{key}={value}")]
    args = ["train", "--system", "tfim", "--size", "8", "--reference", str(reference), "--out-dir", str(out)]
    return main([*args, *small, *settings])


def test_another_setting_is_refused_and_fresh_keeps_the_old_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "out"
    assert cli_train(tmp_path, out) == 0
    written = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()

    assert cli_train(tmp_path, out, "--set", "lr=0.2") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "lr=0.05" in err and "lr=0.2" in err and "--fresh" in err
    assert (out / "checkpoint.pt").read_bytes() == written  # untouched

    assert cli_train(tmp_path, out, "--set", "lr=0.2", "--fresh") == 0
    assert (out / "checkpoint.1.pt").read_bytes() == written  # set aside, never overwritten
    assert load_checkpoint(out / "checkpoint.pt")["train_config"]["lr"] == 0.2

    assert cli_train(tmp_path, out, "--set", "lr=0.3", "--on-change", "restart") == 0  # what the pipelines pass
    assert "starting afresh" in capsys.readouterr().err
    assert (out / "checkpoint.2.pt").exists() and load_checkpoint(out / "checkpoint.pt")["train_config"]["lr"] == 0.3


def test_metrics_json_is_written_last(tmp_path, chain, monkeypatch):
    """A failure at model.pt (a full disk) leaves no metrics.json: its presence means the stage completed."""
    import vqnqs.stages.driver as driver
    from vqnqs.io import OutputError

    def full_disk(path, model, info):
        raise OutputError(f"{path}: write failed (No space left on device)")

    monkeypatch.setattr(driver, "save_model", full_disk)
    hamiltonian, reference = chain
    with pytest.raises(OutputError, match="No space left"):
        Trainer(hamiltonian, tiny_config(steps=2), tmp_path, reference).run(progress=False)
    assert (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "metrics.json").exists()
