"""The stage driver: what every step-wise stage (train, distill) shares, around the update it supplies.

A stage subclasses :class:`Stage` and supplies its state and four pieces::

    update()         one parameter update -> its history row (a dict keyed by ``history_columns``)
    evaluate()       the final evaluation -> metrics
    state_dict()     what a checkpoint must hold besides the step, history, random streams and config
    load_state_dict(state), output_model()

The driver owns the rest (``run``), the same for every stage::

    resume      checkpoint.pt in the out dir -> restore (same config up to RESUME_MAY_CHANGE, same system,
                device and stage identity; another config or a stale identity -> start afresh, saying so)
    estimate    the time of the steps left, printed before the first (``cost_estimates``)
    loop        update() until total_steps; each row to the history, then to the callbacks
                (:mod:`vqnqs.stages.callbacks`): the tqdm bar; every ``checkpoint_every`` steps and at the
                last checkpoint.pt, history.csv and the MLflow flush
    outputs     evaluate(); model.pt, then metrics.json (present means complete), all written atomically;
                final metrics and the files as MLflow artifacts

With the same seed on CPU an interrupted and resumed run ends bit-identical to an uninterrupted one: the
checkpoint holds the stage's state, every random generator (the global one, the stage's own streams,
CUDA's) and the step, and the schedules are functions of the step alone.

Over several processes (``world``, :mod:`vqnqs.vmc.distributed`) every rank runs the same loop; rank 0 alone
writes the checkpoint (with every rank's own streams), history, outputs and MLflow, and every rank resumes
from that one checkpoint (on a file system they share), which must have been written by as many processes.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vqnqs.io import OutputError, ensure_writable_dir, write_json
from vqnqs.knobs import dotted
from vqnqs.models import AutoregressiveTransformer
from vqnqs.physics.hamiltonian import Hamiltonian
from vqnqs.stages.callbacks import Callback, Checkpoints, HistoryFile, MLflowLogger, ProgressBar
from vqnqs.stages.config import RESUME_MAY_CHANGE, Config, resolve_device
from vqnqs.stages.inputs import system_info
from vqnqs.tracking import Run
from vqnqs.vmc.checkpoint import CheckpointError, StaleCheckpoint, load_checkpoint, save_checkpoint, save_model
from vqnqs.vmc.distributed import SINGLE, World

CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.pt"
OUTPUT_FILES = (CHECKPOINT_FILE, HISTORY_FILE, METRICS_FILE, MODEL_FILE)  # what a stage writes in its out dir
# What every stage's metrics.json holds at least (the contract that later stages read; docs/design.md).
METRICS_KEYS = (
    "energy_per_site",
    "energy_error",
    "variance",
    "v_score",
    "rel_error",
    "reference_per_site",
    "n_params",
    "steps",
    "wall_time_s",
)


class Stage:
    """State and driver of one stage run in ``out_dir``; see the module docstring."""

    name = ""  # "train", "distill": bar, messages, the checkpoint's stage entry
    history_columns: tuple[str, ...] = ()
    final_keys: tuple[str, ...] = ()  # metrics logged to MLflow as final_<key>

    def __init__(
        self, hamiltonian: Hamiltonian, config: Config, out_dir: str | Path, reference: float, world: World = SINGLE
    ) -> None:
        self.hamiltonian = hamiltonian
        self.world = world  # the processes of this run; rank 0 writes
        self.config = config
        self.out_dir = ensure_writable_dir(out_dir)
        self.reference = reference
        self.device = resolve_device(config.device)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.generators: dict[str, torch.Generator] = {}  # the stage's random streams, checkpointed by name
        self.step = 0
        self.wall_time_s = 0.0  # time of earlier invocations, restored on resume
        self.history: list[dict] = []
        self.resumed = False  # resume() has looked at the out dir
        self.laid_for: dict[str, int] = {}  # extended knob -> the value its schedule was laid out for
        self.run_id: str | None = None  # the MLflow run of this training (resumed: the checkpoint's)
        self.orphan_id: str | None = None  # the MLflow run of a checkpoint set aside

    # --- what a stage supplies ---

    @property
    def total_steps(self) -> int:
        return self.config.steps

    def update(self) -> dict:
        raise NotImplementedError

    def evaluate(self) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Checkpoint entries of the stage: model_config, model, optimizer and any others."""
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError

    def extendable(self, stored: dict) -> tuple[str, ...]:
        """Knobs that may grow between a checkpoint (written with config ``stored``) and its resumption: the
        run goes on from the checkpoint, its schedules as laid out for the stored value (see :meth:`laid_out`)."""
        return ("steps",)

    def laid_out(self, config: Any, knob: str = "steps") -> Any:
        """``config`` with ``steps`` as the schedule was laid out for ``knob`` (its first value): past it, a run
        extended on resume goes on at the final learning rate (the schedules are flat after their end)."""
        return dataclasses.replace(config, steps=self.laid_for[knob]) if knob in self.laid_for else config

    def identity(self) -> dict:
        """Entries a resumed run must share with its checkpoint besides the config: ``{key: value}``."""
        return {}

    def stale_identity(self) -> dict[str, tuple[object, str]]:
        """Entries whose change makes the checkpoint stale: ``{key: (value, what changed)}``."""
        return {}

    def output_model(self, metrics: dict) -> tuple[AutoregressiveTransformer, dict]:
        """The model for model.pt and its info, given the evaluation's ``metrics``."""
        raise NotImplementedError

    def summary(self, metrics: dict) -> dict:
        """Stage-specific entries of metrics.json beside the evaluation and the common ones."""
        return {}

    def cost_estimates(self) -> list[str]:
        """Lines for stderr before the first step of this invocation: the estimated time of what is left
        (:mod:`vqnqs.vmc.cost`); none by default."""
        return []

    def postfix(self, row: dict) -> str:
        """The progress bar's text for a history row."""
        return ""

    @property
    def label(self) -> str:
        """The progress bar's label."""
        return self.name

    # --- checkpoints ---

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_FILE

    def save(self) -> None:
        """checkpoint.pt, atomically (by rank 0; every rank takes part)."""
        streams = {name: g.get_state() for name, g in self.generators.items()}
        if self.world.size > 1:  # each stream as (ranks, state bytes): every rank restores its own row
            streams = {name: self.world.gather(state[None].to(self.device)).cpu() for name, state in streams.items()}
        if not self.world.is_main:
            return
        rng = {"torch": torch.get_rng_state(), **streams}
        rng["cuda"] = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []
        payload = {
            "stage": self.name,
            "step": self.step,
            "wall_time_s": float(self.wall_time_s),
            "device": self.device.type,
            "world_size": self.world.size,
            "system": system_info(self.hamiltonian),
            "train_config": self.config.to_dict(),
            # The per-step curve travels with the checkpoint: history.csv is rewritten from it, so a
            # pipeline that deletes an interrupted stage's history.csv loses none of the curve.
            "history": [dict(row) for row in self.history],
            "rng": rng,
            "laid_for": dict(self.laid_for),
            "mlflow_run_id": self.run_id,
            **self.identity(),
            **{key: value for key, (value, _) in self.stale_identity().items()},
            **self.state_dict(),
        }
        save_checkpoint(self.checkpoint_path, payload)

    def restore(self) -> None:
        """Continue from checkpoint.pt; :class:`StaleCheckpoint` if it was written with other settings."""
        path = self.checkpoint_path
        state = load_checkpoint(path, map_location=self.device)
        if state.get("stage", "train") != self.name:
            raise CheckpointError(f"checkpoint {path}: not a {self.name} checkpoint (use another --out-dir)")
        self.orphan_id = state.get("mlflow_run_id")  # until the checkpoint is taken on (below)
        stored, laid_for = dotted(state["train_config"]), dict(state.get("laid_for", {}))
        for key, value in dotted(self.config.to_dict()).items():  # a nested section's knobs by dotted key
            if key in RESUME_MAY_CHANGE or stored.get(key) == value:
                continue
            if key in self.extendable(stored) and isinstance(value, int) and value > stored.get(key, value):
                if stored[key] > 0:  # more steps: go on, the schedule as it was laid out
                    laid_for.setdefault(key, stored[key])
                continue
            raise StaleCheckpoint(
                f"checkpoint {path}: written with {key}={stored.get(key)!r}, this run has {key}={value!r}"
            )
        expected = {**self.identity(), "system": system_info(self.hamiltonian), "device": self.device.type}
        for key, value in expected.items():
            if state.get(key) != value:
                raise CheckpointError(f"checkpoint {path}: written for {key} {state.get(key)}, this run has {value}")
        for key, (value, what) in self.stale_identity().items():
            if state.get(key) != value:
                raise StaleCheckpoint(f"checkpoint {path}: written for {what}, this run has {value} (or use --fresh)")
        if state.get("world_size", 1) != self.world.size:  # each process draws its share from its own stream
            raise StaleCheckpoint(
                f"checkpoint {path}: written by {state.get('world_size', 1)} processes, this run has {self.world.size}"
            )
        try:
            self.load_state_dict(state)
            torch.set_rng_state(state["rng"]["torch"].cpu())
            for name, generator in self.generators.items():
                stream = state["rng"][name].cpu()  # a row is copied: set_state of a view at an offset crashes torch
                generator.set_state(stream[self.world.rank].clone() if self.world.size > 1 else stream)
            if self.device.type == "cuda":
                cuda = [s.cpu() for s in state["rng"]["cuda"]]
                if self.world.size > 1:  # every rank's GPU continues rank 0's (GPU 0, LOCAL_RANK 0): the same draws
                    torch.cuda.set_rng_state(cuda[0])
                else:
                    torch.cuda.set_rng_state_all(cuda)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            reason = str(err).strip().splitlines()[0]
            raise CheckpointError(f"checkpoint {path}: does not fit this run's model or optimiser ({reason})") from err
        self.step = state["step"]
        self.wall_time_s = state["wall_time_s"]
        self.history = [row for row in state.get("history", []) if int(row["step"]) <= self.step]
        self.laid_for = laid_for
        self.run_id, self.orphan_id = state.get("mlflow_run_id"), None

    # --- the run ---

    def checkpoint_due(self, step: int) -> bool:
        """Whether update ``step`` ends with a checkpoint: every ``checkpoint_every`` steps and the last."""
        return step % self.config.checkpoint_every == 0 or step == self.total_steps

    def history_file(self) -> HistoryFile:
        return HistoryFile(self.out_dir / HISTORY_FILE, self.history_columns, self.history, self.checkpoint_due)

    def callbacks(self, bar: ProgressBar, mlflow: MLflowLogger | None) -> list[Callback]:
        """What follows each update, in order (:mod:`vqnqs.stages.callbacks`): the bar; at the checkpoint steps
        checkpoint.pt (every rank), then history.csv and the MLflow flush (rank 0)."""
        callbacks: list[Callback] = [bar, Checkpoints(self.save, self.checkpoint_due)]
        if self.world.is_main:
            callbacks.append(self.history_file())
        if mlflow is not None:
            callbacks.append(mlflow)
        return callbacks

    def loop(self, callbacks: list[Callback]) -> tuple[int, float]:
        """``update()`` until ``total_steps``, each row to the history, then to ``callbacks``; (updates, seconds)."""
        first_step = self.step
        start = tick = time.perf_counter()
        while self.step < self.total_steps:
            row = self.update()
            self.history.append(row)
            now = time.perf_counter()  # the stage's wall time, summed over invocations: the checkpoint holds it
            self.wall_time_s, tick = self.wall_time_s + now - tick, now
            for callback in callbacks:
                callback(self.step, row)
        return self.step - first_step, time.perf_counter() - start

    def set_aside(self) -> Path | None:
        """Move the out dir's checkpoint to ``checkpoint.<n>.pt`` (the first free n; never overwritten; rank 0)."""
        if not self.world.is_main or not self.checkpoint_path.exists():
            return None
        if self.orphan_id is None:
            try:
                self.orphan_id = load_checkpoint(self.checkpoint_path).get("mlflow_run_id")
            except CheckpointError:
                pass  # an unreadable checkpoint names no run
        aside = next(
            self.out_dir / f"checkpoint.{n}.pt"
            for n in itertools.count(1)
            if not (self.out_dir / f"checkpoint.{n}.pt").exists()
        )
        try:  # before any work: a checkpoint that cannot be moved (immutable, read-only dir) is refused here
            self.checkpoint_path.rename(aside)
        except OSError as err:
            reason = err.strerror or err
            raise OutputError(f"checkpoint {self.checkpoint_path}: cannot be set aside ({reason})") from err
        return aside

    def resume(self, on_change: str = "restart") -> None:
        """Continue from the out dir's checkpoint if there is one (once). A checkpoint that cannot be used is a
        :class:`CheckpointError` here, before any work. One written with other settings (only ``steps`` may
        grow) is, by ``on_change``: ``"restart"``, set aside (:meth:`set_aside`) and the run starts afresh,
        saying so (the pipelines rerun a stage when its params changed); ``"refuse"``, a ``CheckpointError``
        naming the setting (``vqnqs`` at the command line: ``--fresh`` starts afresh)."""
        if self.resumed or not self.checkpoint_path.exists():
            self.resumed = True
            return
        self.resumed = True
        try:
            self.restore()
        except StaleCheckpoint as stale:
            if on_change == "refuse":
                raise CheckpointError(f"{stale}; --fresh starts afresh (the checkpoint is kept aside)") from stale
            self.world.barrier()  # every rank has read the checkpoint before rank 0 moves it
            aside = self.set_aside()
            if self.world.is_main:
                print(f"{self.name}: {stale}; starting afresh (the old one is kept as {aside})", file=sys.stderr)
            return
        if self.step > self.total_steps:
            raise CheckpointError(
                f"checkpoint {self.checkpoint_path}: at step {self.step}, past this run's {self.total_steps}; "
                "--fresh starts afresh (the checkpoint is kept aside)"
            )
        where = f"step {self.step} of {self.total_steps}"
        print(f"{self.name}: resuming from {where} ({self.checkpoint_path})", file=sys.stderr)

    def run(self, tracker: Run | None = None, resume: bool = True, progress: bool | None = None) -> dict:
        """Resume (unless ``resume`` is false), run to ``total_steps``, evaluate, write the outputs.

        ``progress``: show the tqdm bar (None: only on a terminal). Returns the metrics of metrics.json (every
        rank; rank 0 writes them). ``tracker``: rank 0's MLflow run (None on the other ranks).
        """
        if resume:
            self.resume()
        mlflow = None
        if tracker is not None:  # the checkpoints name the run; a resumed one first sends what a kill lost
            self.run_id = tracker.run_id
            mlflow = MLflowLogger(tracker, self.checkpoint_due)
            mlflow.log_missing(self.history)
        if self.step < self.total_steps and self.world.is_main:
            for line in self.cost_estimates():
                print(line, file=sys.stderr)
        show = progress if self.world.is_main else False
        with ProgressBar(self.total_steps, self.step, self.label, self.postfix, show) as bar:
            steps_run, seconds = self.loop(self.callbacks(bar, mlflow))
        if not steps_run and self.world.is_main:  # a finished checkpoint: a pipeline's rerun may have removed
            self.history_file().write()  # its history.csv
        metrics, model, info = self.final_metrics(steps_run, seconds)
        if self.world.is_main:
            self.write_outputs(metrics, model, info, mlflow)
        return metrics

    def final_metrics(self, steps_run: int, seconds: float) -> tuple[dict, AutoregressiveTransformer, dict]:
        """``evaluate()`` with the entries every stage's metrics.json has (every rank); the model for model.pt
        and its info. ``steps_run`` updates took ``seconds`` in this invocation."""
        eval_start = time.perf_counter()
        metrics = self.evaluate()
        eval_time = time.perf_counter() - eval_start
        self.wall_time_s += eval_time
        model, info = self.output_model(metrics)
        metrics.update(
            {
                "n_params": model.n_params,
                "steps": self.step,
                "wall_time_s": self.wall_time_s,
                "eval_time_s": eval_time,
                "seconds_per_step": seconds / steps_run if steps_run else mean_step_seconds(self.history),
                "device": self.device.type,
                "threads": torch.get_num_threads(),
                **self.summary(metrics),
                **system_info(self.hamiltonian),
            }
        )
        return metrics, model, info

    def write_outputs(
        self, metrics: dict, model: AutoregressiveTransformer, info: dict, mlflow: MLflowLogger | None
    ) -> None:
        """model.pt, then metrics.json (present means complete), each atomically; with MLflow, model.pt as a
        logged model that metrics.json names, the final metrics and the files as artifacts (rank 0)."""
        save_model(self.out_dir / MODEL_FILE, model, info)
        if mlflow is not None:
            metrics["mlflow_model_id"] = mlflow.tracker.log_model([self.out_dir / MODEL_FILE], self.step)
        write_json(self.out_dir / METRICS_FILE, metrics)  # last: metrics.json present means the stage is complete
        if mlflow is not None:
            files = [self.out_dir / name for name in (METRICS_FILE, HISTORY_FILE, CHECKPOINT_FILE)]
            mlflow.log_outputs(metrics, self.final_keys, self.step, files)


def mean_step_seconds(rows: list[dict]) -> float | None:
    """Mean seconds per step of a history (its ``time_s`` runs on over resumed invocations)."""
    return float(rows[-1]["time_s"]) / len(rows) if rows and rows[-1].get("time_s") not in (None, "") else None


def mean_of(rows: list[dict], key: str) -> float | None:
    """Mean of the non-empty ``key`` entries of ``rows`` (None if none)."""
    values = [float(row[key]) for row in rows if row.get(key) not in (None, "")]
    return sum(values) / len(values) if values else None
