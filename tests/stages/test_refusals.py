"""Refusals before any work: exit 2, one line naming the input, and nothing created (no file, directory, or
MLflow store) -- for checks that used to come after the MLflow run or the output directory was made."""

import json

import pytest
import torch

from vqnqs.cli import main

from ..vmc.conftest import TINY

SMALL = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A reference for TFIM N = 8, and an MLflow store that must stay absent."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    reference = tmp_path / "inputs" / "ref.json"
    assert main(["reference", "--system", "tfim", "--size", "8", "--out", str(reference)]) == 0
    zero = tmp_path / "inputs" / "zero.json"
    zero.write_text(json.dumps({**json.loads(reference.read_text()), "energy_per_site": 0.0}))
    corrupt = tmp_path / "inputs" / "corrupt"
    corrupt.mkdir()
    (corrupt / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    models = tmp_path / "inputs" / "models"
    models.mkdir()
    (models / "model.pt").write_bytes(b"garbage")
    (models / "metrics.json").write_text(json.dumps({"energy_per_site": -1.0}))
    return tmp_path


def train(world, *extra, out="out"):
    return ["train", "--system", "tfim", "--size", "8", "--reference", str(world / "inputs/ref.json"),
            "--out-dir", str(world / out), *SMALL, *extra]  # fmt: skip


def params_run(world, content):
    path = world / "inputs" / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return ["train", "--params", str(path), "--run", "x", "--reference", str(world / "inputs/ref.json"),
            "--out-dir", str(world / "out")]  # fmt: skip


CASES = {
    "device": (lambda w: train(w, "--set", "device=cuda"), "device 'cuda'"),
    "seed_text": (lambda w: train(w, "--set", "seed=2**70"), "seed '2**70'"),
    "seed_range": (lambda w: train(w, "--set", f"seed={2**70}"), f"seed {2**70}"),
    "zero_reference": (
        lambda w: [
            "train",
            "--system",
            "tfim",
            "--size",
            "8",
            "--reference",
            str(w / "inputs/zero.json"),
            "--out-dir",
            str(w / "out"),
            *SMALL,
        ],  # fmt: skip
        "zero.json: energy_per_site 0.0",
    ),
    "corrupt_checkpoint": (lambda w: train(w, out="inputs/corrupt"), "corrupt/checkpoint.pt"),
    "out_dir_under_a_file": (lambda w: train(w, out="inputs/ref.json/out"), "ref.json is not a directory"),
    "profile_bad_model": (
        lambda w: [
            "profile",
            "--system",
            "tfim",
            "--size",
            "8",
            "--model-dir",
            str(w / "inputs/models"),
            "--baseline",
            str(w / "inputs/models"),
            "--out",
            str(w / "out/p.csv"),
        ],  # fmt: skip
        "models/model.pt",
    ),
    "size_guard": (
        lambda w: [
            "train",
            "--system",
            "tfim",
            "--size",
            "1000000",
            "--reference",
            str(w / "inputs/ref.json"),
            "--out-dir",
            str(w / "out"),
        ],  # fmt: skip
        "chunk_size=1024",
    ),
    "duplicate_key": (lambda w: params_run(w, "experiment: a\nexperiment: b\n"), "duplicate key 'experiment'"),
    "yaml_syntax": (lambda w: params_run(w, "systems: [1\n"), "bad.yaml: not valid YAML"),
    "not_utf8": (lambda w: params_run(w, b"\xff\xfe"), "bad.yaml: not UTF-8"),
    "reference_without_a_route": (
        lambda w: [
            "reference",
            "--system",
            "heisenberg",
            "--size",
            "10x10",
            "--method",
            "literature",
            "--literature-key",
            "nobody",
            "--out",
            str(w / "out/ref.json"),
        ],  # fmt: skip
        "nobody",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_refused_before_any_work(world, capsys, name):
    if name == "device" and torch.cuda.is_available():
        pytest.skip("a CUDA device is there")
    argv, message = CASES[name]
    argv = argv(world)
    before = sorted(p.relative_to(world) for p in world.rglob("*"))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert "Traceback" not in err
    assert sorted(p.relative_to(world) for p in world.rglob("*")) == before  # no file, directory or store
