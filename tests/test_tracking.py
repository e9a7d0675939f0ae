"""MLflow tracking: concurrent stages lose no runs or metrics; a server over the store finds the runs."""

import json
import multiprocessing
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

WRITERS = 4
STEPS = 60


def write_run(uri: str, index: int, model_file: Path | None = None) -> None:
    """One stage's worth of tracking: a run with params, per-step metrics flushed in batches, tags; with
    ``model_file``, that file as the run's logged model, a final metric linked to it."""
    import os

    os.environ["MLFLOW_TRACKING_URI"] = uri
    from vqnqs.tracking import Run

    with Run("train", {"index": index, "train": {"steps": STEPS}}, {"system": "tfim", "size": str(8 + index)}) as run:
        for step in range(1, STEPS + 1):
            run.log_metrics({"energy_per_site": -1.0 - index - step * 1e-3}, step=step)
            if step % 20 == 0:
                run.flush()
        if model_file is not None:
            model_id = run.log_model([model_file], STEPS)
            run.log_metrics({"final_rel_error": 1e-3}, STEPS, model_id=model_id)


@pytest.fixture
def store(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.mark.slow
def test_concurrent_writers_lose_nothing(store):
    """Several processes start on a FRESH store at once (schema creation races) and log metrics."""
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=write_run, args=(store, i)) for i in range(WRITERS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [w.exitcode for w in workers] == [0] * WRITERS

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("vqnqs-default")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == WRITERS
    assert {run.data.tags["size"] for run in runs} == {str(8 + i) for i in range(WRITERS)}
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["stage"] == "train" and len(run.data.tags["params_hash"]) == 64
        history = client.get_metric_history(run.info.run_id, "energy_per_site")
        assert sorted(m.step for m in history) == list(range(1, STEPS + 1))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_mlflow_server_finds_the_runs_and_their_models(store, tmp_path):
    (tmp_path / "model.pt").write_bytes(b"weights")
    write_run(store, 0, tmp_path / "model.pt")
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--backend-store-uri",
            store,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/experiments/get-by-name?experiment_name=vqnqs-default") as reply:
                    experiment = json.load(reply)["experiment"]
                break
            except OSError:
                assert server.poll() is None, "mlflow server exited"
                assert time.monotonic() < deadline, "mlflow server did not answer in 120 s"
                time.sleep(1)
        request = urllib.request.Request(
            f"{url}/runs/search",
            data=json.dumps({"experiment_ids": [experiment["experiment_id"]]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request) as reply:
            runs = json.load(reply)["runs"]
        assert len(runs) == 1
        tags = {tag["key"]: tag["value"] for tag in runs[0]["data"]["tags"]}
        assert tags["stage"] == "train" and tags["system"] == "tfim"
        request = urllib.request.Request(
            f"{url}/logged-models/search",
            data=json.dumps({"experiment_ids": [experiment["experiment_id"]]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request) as reply:
            (model,) = json.load(reply)["models"]
        assert model["info"]["name"] == "train-tfim_8" and model["info"]["source_run_id"] == runs[0]["info"]["run_id"]
        assert {m["key"]: m["value"] for m in model["data"]["metrics"]} == {"final_rel_error": 1e-3}
    finally:
        server.terminate()
        server.wait(timeout=30)
