"""`vqnqs distill`: a tiny train -> distill pipeline, the MLflow run, and one-line errors before any work."""

import json

import pytest
import torch

from vqnqs.cli import main
from vqnqs.models import VQTransformer
from vqnqs.stages.distill import METRICS_KEYS
from vqnqs.vmc.checkpoint import load_model

from ..vmc.conftest import TINY

TRAIN = [arg for key, value in TINY.items() if key != "steps" for arg in ("--set", f"{key}={value}")]
DISTILL_SETTINGS = {
    "steps": 4,
    "n_samples": 32,
    "warmup_steps": 0,
    "eval_samples": 64,
    "check_samples": 32,
    "fidelity_samples": 64,
    "energy_every": 2,
    "energy_samples": 16,
    "chunk_size": 32,
    "checkpoint_every": 2,
    "device": "cpu",
}
DISTILL = [arg for key, value in DISTILL_SETTINGS.items() for arg in ("--set", f"{key}={value}")]
# The contract keys of a stage's metrics plus those the distill stage promises.
EXPECTED_KEYS = {
    "energy_per_site",
    "energy_error",
    "variance",
    "rel_error",
    "reference_per_site",
    "n_params",
    "steps",
    "wall_time_s",
    "bits",
    "heads",
    "codes",
    "final_loss",
    "mean_abs_dlog_psi",
    "teacher_energy_per_site",
    "student_d_model",
    "teacher_d_model",
    "dedup_check_max_rel_diff",
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A reference and a 3-step teacher of the TFIM chain of 8 sites, with a temporary MLflow store."""
    root = tmp_path_factory.mktemp("pipeline")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.chdir(root)  # MLflow puts artifacts under ./mlruns for a store given by URI
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        reference = root / "ref.json"
        assert main(["reference", "--system", "tfim", "--size", "8", "--out", str(reference)]) == 0
        teacher = root / "train"
        args = ["train", "--system", "tfim", "--size", "8", "--reference", str(reference), "--out-dir", str(teacher)]
        assert main([*args, *TRAIN, "--set", "steps=3"]) == 0
        torch.set_num_threads(threads)
        yield {"root": root, "reference": reference, "teacher": teacher, "uri": f"sqlite:///{root / 'mlflow.db'}"}


@pytest.fixture
def env(pipeline, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pipeline["uri"])
    monkeypatch.chdir(pipeline["root"])
    return pipeline


def distill_args(teacher, out, bits="6", *extra) -> list[str]:
    head = ["distill", "--system", "tfim", "--size", "8", "--teacher", str(teacher), "--bits", bits]
    return [*head, "--out-dir", str(out), *DISTILL, *extra]


def test_train_then_distill(env, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "distill6"
    assert main([*distill_args(env["teacher"], out, "6", "--reference", str(env["reference"]))]) == 0
    assert "6 bits: E/N" in capsys.readouterr().out

    metrics = json.loads((out / "metrics.json").read_text())
    assert EXPECTED_KEYS <= set(metrics) and set(METRICS_KEYS) <= set(metrics)
    assert (metrics["bits"], metrics["heads"], metrics["codes"], metrics["steps"]) == (6, 1, 64, 4)
    assert metrics["student_d_model"] == metrics["teacher_d_model"] == 8
    teacher_metrics = json.loads((env["teacher"] / "metrics.json").read_text())
    assert metrics["teacher_energy_per_site"] == teacher_metrics["energy_per_site"]
    assert metrics["reference_per_site"] == teacher_metrics["reference_per_site"]
    assert metrics["dedup_check_max_rel_diff"] < 1e-5  # float32 student, checked in float64
    assert {"checkpoint.pt", "history.csv", "metrics.json", "model.pt"} <= {p.name for p in out.iterdir()}
    student, info = load_model(out / "model.pt")
    assert isinstance(student, VQTransformer) and info["bits"] == 6

    client = MlflowClient(env["uri"])
    experiment = client.get_experiment_by_name("vqnqs-default")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'distill'")
    (run,) = [r for r in runs if r.data.params.get("distill.steps") == "4" and r.data.tags.get("bits") == "6"]
    tags = run.data.tags
    assert (tags["system"], tags["size"], tags["bits"]) == ("tfim", "8", "6")
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [1, 2, 3, 4]
    assert run.data.metrics["final_rel_error"] == pytest.approx(metrics["rel_error"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "checkpoint.pt", "history.csv"} <= artifacts
    model = client.get_logged_model(metrics["mlflow_model_id"])  # the student: an MLflow logged model
    assert (model.source_run_id, model.name, str(model.status)) == (run.info.run_id, "distill-tfim_8-6bits", "READY")
    assert {m.key: m.value for m in model.metrics}["final_rel_error"] == pytest.approx(metrics["rel_error"])


def test_reference_defaults_to_the_teachers(env, tmp_path):
    out = tmp_path / "distill12"
    assert main(distill_args(env["teacher"], out, "12", "--set", "steps=2")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["heads"] == 2 and metrics["steps"] == 2
    assert metrics["reference_per_site"] == json.loads(env["reference"].read_text())["energy_per_site"]


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"reference_per_site": 0.0}, "reference_per_site 0.0 is not a finite nonzero number"),
        ({"reference_per_site": "oops"}, "reference_per_site 'oops' is not a finite nonzero number"),
        ({"gamma": 2.0}, "gamma is 2.0, the trained system has 1.0"),
    ],
)
def test_the_teachers_reference_is_checked_as_a_reference_file(env, tmp_path, capsys, edit, message):
    """Without --reference, the teacher's metrics.json's reference_per_site: finite, nonzero, same physics."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "model.pt").write_bytes((env["teacher"] / "model.pt").read_bytes())
    metrics = json.loads((env["teacher"] / "metrics.json").read_text())
    (teacher / "metrics.json").write_text(json.dumps({**metrics, **edit}))
    out = tmp_path / "out"
    err = run_failing(distill_args(teacher, out, "6"), capsys)
    assert "teacher/metrics.json" in err and message in err, err
    assert not out.exists()


def run_failing(argv, capsys) -> str:
    """Run the CLI expecting exit status 2; returns its one-line stderr."""
    with pytest.raises(SystemExit) as exit_info:  # argparse errors exit directly; the others return 2
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "bits, message",
    [
        ("5", "not a positive multiple of log2(codes=64)"),
        ("0", "bits 0"),
        ("-6", "bits -6"),
        ("18", "3 heads"),  # 3 heads of 64 codes do not divide d_model = 8
        ("96", "16 heads"),
        ("six", "invalid int value"),
    ],
)
def test_bad_bits_exit_2_with_one_line(env, tmp_path, capsys, bits, message):
    out = tmp_path / "out"
    err = run_failing(distill_args(env["teacher"], out, bits), capsys)
    assert "--bits" in err and message in err
    assert not out.exists()


def test_bad_teacher_exit_2_naming_the_file(env, tmp_path, capsys):
    out = tmp_path / "out"
    err = run_failing(distill_args(tmp_path / "nowhere", out), capsys)
    assert "nowhere" in err and "not found" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = run_failing(distill_args(empty, out), capsys)
    assert "empty/model.pt: file not found" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    data = (env["teacher"] / "model.pt").read_bytes()
    (broken / "model.pt").write_bytes(data[: len(data) // 3])
    err = run_failing(distill_args(broken, out), capsys)
    assert "broken/model.pt: unreadable" in err
    (broken / "model.pt").write_text("not a model\n")
    err = run_failing(distill_args(broken, out), capsys)
    assert "broken/model.pt" in err
    assert not out.exists()


def test_other_errors_exit_2_before_any_work(env, tmp_path, capsys):
    out = tmp_path / "out"
    assert "'stepz': unknown" in run_failing(distill_args(env["teacher"], out, "6", "--set", "stepz=3"), capsys)
    finetune = distill_args(env["teacher"], out, "6", "--set", "finetune.steps=-1")
    assert "distill settings: finetune.steps -1: must be >= 0" in run_failing(finetune, capsys)
    assert "n_heads 3" in run_failing(distill_args(env["teacher"], out, "6", "--set", "n_heads=3"), capsys)
    args = distill_args(env["teacher"], out)
    args[args.index("8")] = "10"  # the teacher was trained on 8 sites
    assert "trained for size '8'" in run_failing(args, capsys)
    assert not out.exists()
