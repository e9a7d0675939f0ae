"""What the stage driver does after each update, one job each: callbacks ``callback(step, row)``.

``step`` is the number of completed updates, ``row`` that update's history row (a dict with its ``step``).
The driver (:meth:`vqnqs.stages.driver.Stage.callbacks`) calls them in this order::

    ProgressBar    the tqdm bar: one tick, the row's text beside it
    Checkpoints    checkpoint.pt at the checkpoint steps (every rank takes part)
    HistoryFile    history.csv rewritten from the stage's history at the same steps (rank 0)
    MLflowLogger   the row's numbers queued to the MLflow run, sent at the same steps, after the checkpoint:
                   the run's curve is the checkpointed one (rank 0)

``due(step)`` says whether ``step`` is a checkpoint step (every ``checkpoint_every`` and the last).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from tqdm.auto import tqdm

from vqnqs.io import atomic_open
from vqnqs.tracking import Run

Callback = Callable[[int, dict], None]


class ProgressBar:
    """The tqdm bar of ``total`` updates from ``initial``, ``postfix(row)`` beside it; a context manager (the bar
    closes with the block). ``show``: None shows it on a terminal only."""

    def __init__(self, total: int, initial: int, label: str, postfix: Callable[[dict], str], show: bool | None) -> None:
        self.postfix = postfix
        disable = None if show is None else not show
        self.bar = tqdm(total=total, initial=initial, desc=label, disable=disable, dynamic_ncols=True)

    def __call__(self, step: int, row: dict) -> None:
        self.bar.update(1)
        self.bar.set_postfix_str(self.postfix(row))

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: TracebackType | None) -> None:
        self.bar.__exit__(kind, error, traceback)


class Checkpoints:
    """``save()`` after each update whose step is ``due``."""

    def __init__(self, save: Callable[[], None], due: Callable[[int], bool]) -> None:
        self.save, self.due = save, due

    def __call__(self, step: int, row: dict) -> None:
        if self.due(step):
            self.save()


class HistoryFile:
    """``path`` (a CSV of ``columns``) rewritten, atomically, from ``rows`` (the stage's history, which grows
    as the stage runs) after each update whose step is ``due``, and by :meth:`write`."""

    def __init__(self, path: Path, columns: tuple[str, ...], rows: list[dict], due: Callable[[int], bool]) -> None:
        self.path, self.columns, self.rows, self.due = path, columns, rows, due

    def __call__(self, step: int, row: dict) -> None:
        if self.due(step):
            self.write()

    def write(self) -> None:
        with atomic_open(self.path) as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)


class MLflowLogger:
    """A stage's MLflow run (:class:`vqnqs.tracking.Run`): each row's numbers (``step`` aside) as metrics at
    its step, queued, and sent after each update whose step is ``due``."""

    def __init__(self, tracker: Run, due: Callable[[int], bool]) -> None:
        self.tracker, self.due = tracker, due

    def __call__(self, step: int, row: dict) -> None:
        self.log(row)
        if self.due(step):
            self.tracker.flush()

    def log(self, row: dict) -> None:
        numbers = {key: value for key, value in row.items() if key != "step" and isinstance(value, (int, float))}
        self.tracker.log_metrics(numbers, row["step"])

    def log_missing(self, history: list[dict]) -> None:
        """Queue the rows of ``history`` (restored from a checkpoint) past the run's last logged step: a kill
        between a checkpoint and its flush loses them from the run."""
        if history:
            logged = self.tracker.last_step("lr")  # every row of every stage has its learning rate
            for row in history:
                if int(row["step"]) > logged:
                    self.log(row)

    def log_outputs(self, metrics: dict, final_keys: tuple[str, ...], step: int, files: list[Path]) -> None:
        """After metrics.json: ``final_<key>`` of ``metrics`` linked to its logged model (``mlflow_model_id``),
        sent, then ``files`` as run artifacts."""
        final = {f"final_{key}": metrics.get(key) for key in final_keys}
        numbers = {key: value for key, value in final.items() if isinstance(value, (int, float))}
        self.tracker.log_metrics(numbers, step, model_id=metrics["mlflow_model_id"])
        self.tracker.flush()
        for path in files:
            self.tracker.log_artifact(path)
