"""MLflow tracking: one run per stage invocation, with params, per-step metrics and artifacts.

- Store: ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo root>/mlflow.db`` (repo root: the nearest
  directory above the working directory holding ``.git``; else the working directory). With that default
  store, artifacts go to ``<repo root>/mlruns/<experiment>/``.
- Experiment: the params file's ``experiment`` key, else ``vqnqs-default``.
- Run tags: ``stage``, ``system``, ``size``, ``bits`` (where given), ``git_commit`` (where git answers),
  ``params_hash`` (sha256 of the canonical JSON of the params the stage used).
- Per-step metrics are buffered and sent with ``log_batch`` (at most 1000 per call, MLflow's limit) when the
  stage flushes, which it does right after each checkpoint: the run's curve is the checkpointed one. A run
  that ends on an exception drops what came after the last flush, so a resumed stage, which redoes those
  steps, logs each step once (and first sends the checkpointed steps a kill kept from the store).
- A stage's trained model is an MLflow 3 logged model (:meth:`Run.log_model`): ``model.pt`` its artifact,
  the run's ``final_*`` metrics linked to it and its id in ``metrics.json`` (``mlflow_model_id``); the profile
  stage links the savings it measures to the same model, so the UI's model view lists every model with its
  errors and savings. The checkpoint stays a run artifact.
- Training runs (``system_metrics=True``) record MLflow's system metrics (``system/cpu_utilization_percentage``,
  memory, disk, network; GPU utilisation and memory where ``nvidia-ml-py`` sees a GPU) every
  ``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (default 10).
- A resumed stage continues its own run (the run id travels with the checkpoint: ``Run(run_id=...)``); a
  stage that sets a checkpoint aside ends that checkpoint's run as KILLED if it was left RUNNING (a
  SIGKILL leaves it so). SIGINT and SIGTERM end a run as KILLED.

Concurrent stages (``snakemake --cores N``) share one SQLite file. SQLite serialises single writes, but
MLflow's first use of a fresh file runs schema migrations and get-or-create of the experiment, which race
between processes; so every access to a SQLite store here holds an exclusive ``flock`` on
``<store>.lock`` (:func:`store_lock`). The accesses are short and rare (metrics go in batches), so the
stages hardly wait. A tracking server (``http://...``) serialises on its own and takes no lock.

A store that cannot be opened is an error (:class:`TrackingError`), raised before the stage does any
work: a run whose record silently went missing would be worse than a run that did not start.
MLflow is imported only here and only when a run starts (it takes seconds to import).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

DEFAULT_EXPERIMENT = "vqnqs-default"
MAX_BATCH = 1000  # metrics per log_batch call (an MLflow limit)
MAX_PARAMS = 100  # params per log_batch call (an MLflow limit)


class TrackingError(RuntimeError):
    """The MLflow store cannot be opened or written."""


def repo_root(start: Path | None = None) -> Path:
    """Nearest directory at or above ``start`` (default: cwd) holding ``.git``; else ``start`` itself."""
    start = (start or Path.cwd()).resolve()
    for directory in (start, *start.parents):
        if (directory / ".git").exists():
            return directory
    return start


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Exclusive inter-process lock for a ``sqlite:///`` store (no-op for other stores)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the working directory, or None where there is no git or no repository."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def params_hash(params: Any) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of ``params``."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _flatten(mapping: dict, prefix: str = "") -> dict[str, str]:
    """Nested params -> ``{"a.b": "value"}`` strings, the form MLflow stores."""
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


def _quiet_mlflow() -> None:
    """MLflow and its database migrations log INFO lines on stderr; keep warnings and errors only.

    Called after importing mlflow: the import itself sets the level of the ``mlflow`` logger.
    """
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Terminated(BaseException):
    """SIGTERM arrived (raised by the handler ``vqnqs`` installs): the run ends KILLED, like on SIGINT."""


class LockedWrites:
    """MLflow's batch metrics logger (the system metrics monitor's thread writes through it) with its writes
    under :func:`store_lock`, like every other write to the store here; everything else passes through."""

    def __init__(self, logger: Any, uri: str) -> None:
        self._logger, self._uri = logger, uri

    def record_metrics(self, metrics: dict, step: int | None = None) -> None:
        with store_lock(self._uri):
            self._logger.record_metrics(metrics, step)

    def flush(self) -> None:
        with store_lock(self._uri):
            self._logger.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


class Run:
    """An open MLflow run. Use as a context manager: the run ends FINISHED, or FAILED / KILLED on an exception.

    ``run_id``: continue that run (a resumed stage's) if the store holds it, else start a new one;
    ``orphan_id``: a run to end as KILLED if it is still RUNNING (the run of a checkpoint set aside).
    """

    def __init__(
        self,
        stage: str,
        params: dict,
        tags: dict[str, Any],
        experiment: str | None = None,
        run_id: str | None = None,
        orphan_id: str | None = None,
        system_metrics: bool = False,
    ) -> None:
        from mlflow.tracking import MlflowClient

        _quiet_mlflow()

        self.uri = tracking_uri()
        self.experiment = experiment or DEFAULT_EXPERIMENT
        self._pending: list = []
        # The logged model's name: stage, run key (else system_size) and bandwidth, e.g. "distill-tfim_16-6bits".
        bits = f"{tags['bits']}bits" if tags.get("bits") is not None else None
        lattice = tags.get("run") or "_".join(str(tags[key]) for key in ("system", "size") if tags.get(key) is not None)
        self.model_name = "-".join(str(part) for part in (stage, lattice, bits) if part)
        try:
            with store_lock(self.uri):
                self._client = MlflowClient(tracking_uri=self.uri)
                self._end_if_running(orphan_id)
                reopened = self._reopen(run_id)
                self.run_id = reopened or self._create_run(stage, params, tags)
        except Exception as err:
            raise TrackingError(f"MLflow tracking store {self.uri}: cannot open or write ({err})") from err
        self._monitor = None
        if system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                self.run_id, resume_logging=reopened is not None, tracking_uri=self.uri
            )
            self._monitor.mlflow_logger = LockedWrites(self._monitor.mlflow_logger, self.uri)
            self._monitor.start()

    def _find(self, run_id: str | None):
        """The run ``run_id`` of this store, or None (absent, deleted, or no id)."""
        from mlflow.exceptions import MlflowException

        if run_id is None:
            return None
        try:
            run = self._client.get_run(run_id)
        except MlflowException:
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def _end_if_running(self, run_id: str | None) -> None:
        run = self._find(run_id)
        if run is not None and run.info.status == "RUNNING":
            self._client.set_terminated(run_id, status="KILLED")

    def _reopen(self, run_id: str | None) -> str | None:
        """Mark ``run_id`` RUNNING again and return it, if this store holds it."""
        if self._find(run_id) is None:
            return None
        self._client.update_run(run_id, status="RUNNING")
        return run_id

    def _create_run(self, stage: str, params: dict, tags: dict[str, Any]) -> str:
        """Get or create the experiment, create the run, log its params; returns the run id."""
        from mlflow.entities import Param

        found = self._client.get_experiment_by_name(self.experiment)
        if found is None:
            artifacts = None
            if "MLFLOW_TRACKING_URI" not in os.environ:
                artifacts = (repo_root() / "mlruns" / self.experiment).as_uri()
            experiment_id = self._client.create_experiment(self.experiment, artifact_location=artifacts)
        else:
            experiment_id = found.experiment_id
        all_tags = {"stage": stage, "git_commit": git_commit(), "params_hash": params_hash(params), **tags}
        all_tags = {key: str(value) for key, value in all_tags.items() if value is not None}
        run_id = self._client.create_run(experiment_id, tags=all_tags, run_name=stage).info.run_id
        flat = [Param(key, value) for key, value in _flatten(params).items()]
        for start in range(0, len(flat), MAX_PARAMS):
            self._client.log_batch(run_id, params=flat[start : start + MAX_PARAMS])
        return run_id

    def last_step(self, key: str) -> int:
        """The largest step at which metric ``key`` was logged in this run (0 if never)."""
        with store_lock(self.uri):
            history = self._client.get_metric_history(self.run_id, key)
        return max((metric.step for metric in history), default=0)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, model_id: str | None = None) -> None:
        """Queue metrics (NaN and None are skipped), linked to the logged model ``model_id`` if given;
        :meth:`flush` sends them."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        for key, value in metrics.items():
            if value is not None and value == value:
                self._pending.append(Metric(key, float(value), timestamp, step or 0, model_id=model_id))

    def flush(self) -> None:
        try:
            with store_lock(self.uri):
                while self._pending:
                    batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                    self._client.log_batch(self.run_id, metrics=batch)
        except Exception as err:
            raise TrackingError(f"MLflow tracking store {self.uri}: cannot log metrics ({err})") from err

    def log_artifact(self, path: str | os.PathLike) -> None:
        try:
            with store_lock(self.uri):
                self._client.log_artifact(self.run_id, str(path))
        except Exception as err:
            raise TrackingError(f"MLflow run {self.run_id}: cannot store artifact {path} ({err})") from err

    def log_model(self, files: list[Path], step: int) -> str:
        """An MLflow 3 logged model, output of this run at ``step``, with ``files`` as its artifacts; returns
        its id (``log_metrics(..., model_id=...)`` links metrics to it)."""
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus

        try:
            with store_lock(self.uri), tempfile.TemporaryDirectory() as folder:
                experiment_id = self._client.get_run(self.run_id).info.experiment_id
                model = self._client.create_logged_model(
                    experiment_id, name=self.model_name, source_run_id=self.run_id, model_type="vqnqs"
                )
                for path in files:
                    shutil.copy(path, folder)
                self._client.log_model_artifacts(model.model_id, folder)
                self._client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step)])
                self._client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        except Exception as err:
            raise TrackingError(f"MLflow run {self.run_id}: cannot log model {self.model_name} ({err})") from err
        return model.model_id

    def has_model(self, model_id: str | None) -> bool:
        """Whether this store holds the logged model ``model_id`` (another stage's may live in another store)."""
        from mlflow.exceptions import MlflowException

        if model_id is None:
            return False
        with store_lock(self.uri):
            try:
                self._client.get_logged_model(model_id)
            except MlflowException:
                return False
        return True

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: TracebackType | None) -> None:
        killed = kind is not None and issubclass(kind, (KeyboardInterrupt, Terminated))
        status = "FINISHED" if kind is None else "KILLED" if killed else "FAILED"
        if self._monitor is not None:
            self._monitor.finish()
        try:
            if kind is None:
                self.flush()
            # else: what came after the last flush (the last checkpoint) is redone, and logged, on resume
        finally:
            with store_lock(self.uri):
                self._client.set_terminated(self.run_id, status=status)
