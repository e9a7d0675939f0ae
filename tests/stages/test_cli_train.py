"""`vqnqs train`: metrics.json and the MLflow run; bad settings exit 2 with one line."""

import json

import pytest

from vqnqs.cli import main
from vqnqs.stages.train import METRICS_KEYS

from ..vmc.conftest import TINY

SMALL = [arg for key, value in TINY.items() if key != "steps" for arg in ("--set", f"{key}={value}")]


@pytest.fixture
def reference(tmp_path):
    path = tmp_path / "ref.json"
    assert main(["reference", "--system", "tfim", "--size", "8", "--out", str(path)]) == 0
    return path


def test_train_writes_metrics_and_an_mlflow_run(tmp_path, reference, monkeypatch, capsys):
    """Settings from the params file's 'train' mapping, overridden by --set; experiment name from params."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts under ./mlruns for a store given by URI
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")  # samples within a run of a second
    params = tmp_path / "params.yaml"
    train = "".join(f"  {key}: {value}\n" for key, value in {**TINY, "steps": 50}.items())
    params.write_text(
        "experiment: vmc-test\n"
        "systems:\n  chain: {system: tfim, size: '8', train: {n_samples: 48, steps: 40}}\n"
        f"bits: [6]\nreference: {{}}\ndistill: {{}}\nprofiling: {{}}\ntrain:\n{train}"
    )
    out = tmp_path / "train"
    args = ["train", "--params", str(params), "--run", "chain", "--reference", str(reference), "--out-dir", str(out)]
    assert main([*args, "--set", "steps=3"]) == 0
    captured = capsys.readouterr()
    assert "rel. error" in captured.out
    assert "train: estimated at most ~" in captured.err and "for 3 steps" in captured.err  # before the first step

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(METRICS_KEYS) <= set(metrics) and metrics["steps"] == 3

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("vmc-test")
    (run,) = client.search_runs([experiment.experiment_id])
    tags = run.data.tags
    assert (tags["stage"], tags["system"], tags["size"], tags["run"]) == ("train", "tfim", "8", "chain")
    assert len(tags["params_hash"]) == 64
    assert run.info.status == "FINISHED"
    # Global mapping < the run's own mapping < --set.
    assert run.data.params["train.d_model"] == "8" and run.data.params["train.n_samples"] == "48"
    assert run.data.params["train.steps"] == "3"
    curve = client.get_metric_history(run.info.run_id, "energy_per_site")
    assert sorted(m.step for m in curve) == [1, 2, 3]
    assert run.data.metrics["final_rel_error"] == pytest.approx(metrics["rel_error"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "checkpoint.pt", "history.csv"} <= artifacts
    # MLflow's system metrics, recorded: a percentage (its first sample can read 0 on a short run)
    assert 0 <= run.data.metrics["system/cpu_utilization_percentage"] <= 100
    assert run.data.metrics["system/system_memory_usage_megabytes"] > 0

    # The trained model is an MLflow logged model of the run, its metrics linked and its id in metrics.json.
    (model,) = client.search_logged_models([experiment.experiment_id])
    assert (model.model_id, model.source_run_id, model.name) == (
        metrics["mlflow_model_id"],
        run.info.run_id,
        "train-chain",
    )
    linked = {metric.key: metric.value for metric in model.metrics}
    assert linked["final_rel_error"] == pytest.approx(metrics["rel_error"]) and linked["final_v_score"] > 0
    assert {a.path for a in client.list_logged_model_artifacts(model.model_id)} == {"model.pt"}


@pytest.mark.parametrize(
    "setting, message",
    [
        ("stepz=3", "'stepz': unknown"),
        ("lr=fast", "lr 'fast': expected float"),
        ("steps=-3", "steps -3: must be positive"),
        ("patch=3", "patch=3"),  # 3 does not tile a chain of 8
        ("steps", "expected KEY=VALUE"),
        ("lr=[1", "not valid YAML"),
    ],
)
def test_bad_settings_exit_2_with_one_line(tmp_path, reference, monkeypatch, capsys, setting, message):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # never the repo's store
    out = tmp_path / "train"
    args = ["train", "--system", "tfim", "--size", "8", "--reference", str(reference), "--out-dir", str(out)]
    with pytest.raises(SystemExit) as exit_info:  # argparse errors exit directly; the others return 2
        raise SystemExit(main([*args, "--set", setting]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not out.exists()


def test_reference_of_another_system_is_refused(tmp_path, reference, capsys):
    args = ["--system", "tfim", "--size", "10", "--reference", str(reference), "--out-dir", str(tmp_path / "o")]
    assert main(["train", *args]) == 2
    assert "size is '8'" in capsys.readouterr().err
