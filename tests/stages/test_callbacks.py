"""The driver's callbacks: each does its one job at its steps, and a stage calls them so that MLflow's curve is
the checkpointed one."""

import csv

import pytest
import torch

from vqnqs.stages.callbacks import Checkpoints, HistoryFile, MLflowLogger, ProgressBar
from vqnqs.stages.train import Trainer

from ..vmc.conftest import tiny_config


def every_second_and_the_fifth(step: int) -> bool:
    return step % 2 == 0 or step == 5


ROWS = [{"step": step, "phase": "fit", "lr": 0.1 * step, "loss": None} for step in range(1, 6)]


def read_csv(path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


class FakeRun:
    """Records what a stage sends to its MLflow run (the part of vqnqs.tracking.Run the driver uses)."""

    run_id = "run-1"

    def __init__(self, logged: int = 0) -> None:
        self.logged, self.pending, self.sent, self.calls = logged, [], [], []

    def last_step(self, key: str) -> int:
        return self.logged

    def log_metrics(self, metrics: dict, step: int, model_id: str | None = None) -> None:
        self.pending.append((step, metrics, model_id))

    def flush(self) -> None:
        self.calls.append(("flush", [step for step, _, _ in self.pending]))
        self.sent += self.pending
        self.pending = []

    def log_model(self, files: list, step: int) -> str:
        self.calls.append(("model", [path.name for path in files]))
        return "model-1"

    def log_artifact(self, path) -> None:
        self.calls.append(("artifact", path.name))


def test_checkpoints_save_at_their_steps():
    saved = []
    checkpoints = Checkpoints(lambda: saved.append(len(saved)), every_second_and_the_fifth)
    steps = []
    for row in ROWS:
        checkpoints(row["step"], row)
        steps += [row["step"]] * (len(saved) - len(steps))
    assert steps == [2, 4, 5]


def test_the_history_file_holds_the_rows_up_to_the_last_due_step(tmp_path):
    path, rows = tmp_path / "history.csv", []
    history = HistoryFile(path, ("step", "phase", "lr", "loss"), rows, every_second_and_the_fifth)
    written = {}
    for row in ROWS:
        rows.append(row)
        history(row["step"], row)
        written[row["step"]] = [int(r["step"]) for r in read_csv(path)] if path.exists() else None
    assert written == {1: None, 2: [1, 2], 3: [1, 2], 4: [1, 2, 3, 4], 5: [1, 2, 3, 4, 5]}
    assert read_csv(path)[0] == {"step": "1", "phase": "fit", "lr": "0.1", "loss": ""}
    path.unlink()
    history.write()  # the driver's rewrite of a finished run's removed history.csv
    assert len(read_csv(path)) == 5


def test_mlflow_gets_each_rows_numbers_and_sends_them_at_the_due_steps():
    run = FakeRun()
    logger = MLflowLogger(run, every_second_and_the_fifth)
    for row in ROWS:
        logger(row["step"], row)
    assert run.calls == [("flush", [1, 2]), ("flush", [3, 4]), ("flush", [5])]
    assert [(step, metrics) for step, metrics, _ in run.sent] == [(row["step"], {"lr": row["lr"]}) for row in ROWS]


def test_mlflow_catches_up_on_the_checkpointed_rows_a_kill_lost():
    run = FakeRun(logged=3)
    MLflowLogger(run, every_second_and_the_fifth).log_missing(ROWS)
    assert [step for step, _, _ in run.pending] == [4, 5]


def test_the_progress_bar_shows_the_rows_text(capsys):
    with ProgressBar(5, 2, "train", lambda row: f"lr={row['lr']:.1f}", show=True) as bar:
        bar(3, ROWS[2])
    shown = capsys.readouterr().err
    assert "train" in shown and "3/5" in shown and "lr=0.3" in shown
    with ProgressBar(5, 2, "train", lambda row: "hidden", show=False) as bar:
        bar(3, ROWS[2])
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("steps", [5, 6])
def test_a_stage_flushes_mlflow_only_after_the_checkpoint_of_those_steps(tmp_path, chain, steps):
    """Every row MLflow receives is checkpointed and in history.csv by then: a kill never leaves the run with a
    step that a resumed run redoes (and would log twice)."""
    hamiltonian, reference = chain
    run = FakeRun()
    flush = run.flush

    def checked_flush():
        if all(model_id is None for _, _, model_id in run.pending):  # a step's rows, not the final metrics
            checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
            history = [int(row["step"]) for row in read_csv(tmp_path / "history.csv")]
            assert max(step for step, _, _ in run.pending) == checkpoint["step"] == history[-1]
        flush()

    run.flush = checked_flush
    metrics = Trainer(hamiltonian, tiny_config(steps=steps), tmp_path, reference).run(run, progress=False)
    flushes = [steps for call, steps in run.calls if call == "flush"]
    assert flushes[:-1] == ([[1, 2], [3, 4], [5]] if steps == 5 else [[1, 2], [3, 4], [5, 6]])
    assert flushes[-1] == [steps]  # the final metrics, at the last step
    assert metrics["mlflow_model_id"] == "model-1"
    assert run.calls[-5:] == [
        ("model", ["model.pt"]),
        ("flush", [steps]),
        ("artifact", "metrics.json"),
        ("artifact", "history.csv"),
        ("artifact", "checkpoint.pt"),
    ]
