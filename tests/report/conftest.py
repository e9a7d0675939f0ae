"""Real inputs of the report: every stage of the DAG run once, in process, on a chain of 8 spins with tiny
settings (seconds), and the report they give; each test works on its own copy."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from vqnqs.cli import main
from vqnqs.report import inputs_from_params

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = {"steps": 3, "n_samples": 16, "d_model": 8, "n_heads": 1, "n_blocks": 1, "eval_samples": 16, "threads": 1}
PARAMS = {
    "experiment": "report-inputs",
    "systems": {"tfim_8": {"system": "tfim", "size": "8", "boundary": "open", "gamma": 1.0}},
    "bits": [6],
    "train_vq_runs": [{"run": "tfim_8", "bits": 6}],
    "train_vq": {},
    "reference": {},
    "train": {**TINY, "checkpoint_every": 3},
    "distill": {**TINY, "warmup_steps": 0, "fidelity_samples": 16, "check_samples": 8, "energy_every": 0},
    "profiling": {"batch": 8, "n_batches": 1, "repeats": 1, "threads": 1},
}


def stage_commands(params: str) -> list[list[str]]:
    """The DAG's commands (workflow/rules) for the one run and bandwidth of :data:`PARAMS`."""
    common, reference = ["--params", params, "--run", "tfim_8"], "data/reference/tfim_8.json"
    profile = [*common, "--baseline", "data/train/tfim_8", "--reference", reference]
    return [
        ["reference", *common, "--out", reference],
        ["train", *common, "--reference", reference, "--out-dir", "data/train/tfim_8"],
        ["distill", *common, "--teacher", "data/train/tfim_8", "--bits", "6", "--reference", reference,
         "--out-dir", "data/distill/tfim_8/bits6"],
        ["profile", *profile, "--model-dir", "data/distill/tfim_8/bits6", "--out", "data/profile/tfim_8/bits6.csv"],
        ["train", *common, "--bits", "6", "--reference", reference, "--out-dir", "data/train_vq/tfim_8/bits6"],
        ["profile", *profile, "--model-dir", "data/train_vq/tfim_8/bits6", "--out",
         "data/profile_vq/tfim_8/bits6.csv"],
        ["report", "--params", params, "--data-dir", "data", "--out-dir", "results"],
    ]  # fmt: skip


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Path:
    """A directory with ``params.yaml``, ``data/`` as the stages leave it and the report in ``results/``."""
    root = tmp_path_factory.mktemp("pipeline")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.chdir(root)
        for argv in stage_commands("params.yaml"):
            assert main(argv) == 0, argv
    torch.set_num_threads(threads)
    return root


@pytest.fixture
def world(pipeline, tmp_path, monkeypatch) -> Path:
    """A copy of the report's inputs (``data/``), its params and its previous output (``results/``, with a file
    of another tool beside it), run from the repository root as the pipeline runs it; an MLflow store that
    must stay absent."""
    for path in [Path("params.yaml"), *inputs_from_params(PARAMS, "data").all_files()]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(pipeline / path, tmp_path / path)
    shutil.copytree(pipeline / "results", tmp_path / "results")
    (tmp_path / "results" / "report.html").write_text("Snakemake's report of the previous run\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(REPO_ROOT)
    return tmp_path


def report(world: Path, params: str = "params.yaml") -> list[str]:
    """``vqnqs report`` on ``world``'s inputs into ``world/results``."""
    return ["report", "--params", str(world / params), "--data-dir", str(world / "data"),
            "--out-dir", str(world / "results")]  # fmt: skip


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every entry under ``directory`` (hidden ones included), each file with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None for p in directory.rglob("*")}
