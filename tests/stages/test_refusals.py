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


def train(world, *extra, out="out", reference="inputs/ref.json", system=("tfim", "8"), small=True):
    """``vqnqs train`` of the tiny settings (``small``) on ``system``, paths relative to ``world``."""
    args = ["train", "--system", system[0], "--size", system[1], "--reference", str(world / reference)]
    return [*args, "--out-dir", str(world / out), *(SMALL if small else []), *extra]


VALID_PARAMS = (
    "experiment: e\nsystems: {x: {system: tfim, size: '8'}}\nbits: [6]\nreference: {}\ntrain: {d_model: 8}\n"
    "distill: {}\nprofiling: {}\n"
)


def params_run(world, content):
    path = world / "inputs" / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return ["train", "--params", str(path), "--run", "x", "--reference", str(world / "inputs/ref.json"),
            "--out-dir", str(world / "out")]  # fmt: skip


LONG_RUN = "x" * 260  # a file name beyond any file system's limit


CASES = {
    "sign_rule_for_tfim": (lambda w: train(w, "--no-sign-rule"), "argument --sign-rule: only the heisenberg system"),
    "j2_for_tfim": (lambda w: train(w, "--j2", "0.5"), "argument --j2: only the heisenberg system"),
    "params_sign_rule_for_tfim": (
        lambda w: params_run(w, VALID_PARAMS.replace("size: '8'", "size: '8', sign_rule: false")),
        "systems.x.sign_rule: only the heisenberg system has Marshall's sign rule",
    ),
    "params_gamma_for_heisenberg": (
        lambda w: params_run(
            w, VALID_PARAMS.replace("system: tfim, size: '8'", "system: heisenberg, size: '4', gamma: 2")
        ),
        "systems.x.gamma: only the tfim system has a transverse field",
    ),
    "params_run_name_too_long": (
        lambda w: params_run(w, VALID_PARAMS.replace("{x:", f"{{{LONG_RUN}:")),
        "is too long",
    ),
    "cli_run_name_too_long": (
        lambda w: ["train", "--run", LONG_RUN, "--reference", "r", "--out-dir", str(w / "out")],
        "expected a run name",
    ),
    "bits_contradicts_set": (
        lambda w: train(w, "--set", "bits=12", "--bits", "6"),
        "argument --bits 6: contradicts --set bits=12",
    ),
    "model_contradicts_bits": (
        lambda w: train(w, "--set", "model=baseline", "--bits", "6"),
        "argument --bits 6: contradicts --set model=baseline",
    ),
    "init_from_a_file": (
        lambda w: train(w, "--init-from", str(w / "inputs/ref.json")),
        "ref.json: a file; expected a train or distill out dir",
    ),
    "device": (lambda w: train(w, "--set", "device=cuda"), "device 'cuda'"),
    "seed_text": (lambda w: train(w, "--set", "seed=2**70"), "seed '2**70'"),
    "seed_range": (lambda w: train(w, "--set", f"seed={2**70}"), f"seed {2**70}"),
    "zero_reference": (lambda w: train(w, reference="inputs/zero.json"), "zero.json: energy_per_site 0.0"),
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
    "size_guard": (lambda w: train(w, system=("tfim", "1000000"), small=False), "chunk_size=1024"),
    "bits_of_a_baseline": (lambda w: train(w, "--set", "bits=6"), "bits 6: only model 'vq' is quantised"),
    "vq_without_bits": (lambda w: train(w, "--set", "model=vq"), "bits null: model 'vq' needs"),
    "vq_bits_do_not_divide": (lambda w: train(w, "--bits", "18"), "bits 18: gives 3 heads"),
    "train_vq_unknown_run": (
        lambda w: params_run(w, VALID_PARAMS + "train_vq_runs: [{run: nope, bits: 6}]\n"),
        "train_vq_runs[0]: run 'nope' is not in systems",
    ),
    "train_vq_bad_section": (
        lambda w: params_run(w, VALID_PARAMS + "train_vq: {lr: -1}\n"),
        "train_vq.lr: -1 is less than",
    ),
    "duplicate_key": (lambda w: params_run(w, "experiment: a\nexperiment: b\n"), "duplicate key 'experiment'"),
    "yaml_syntax": (lambda w: params_run(w, "systems: [1\n"), "bad.yaml: not valid YAML"),
    "not_utf8": (lambda w: params_run(w, b"\xff\xfe"), "bad.yaml: not UTF-8"),
    "reference_beyond_ed": (  # a sector dimension beyond any float (was an OverflowError traceback)
        lambda w: [
            "reference",
            "--system",
            "heisenberg",
            "--size",
            "200x200",
            "--method",
            "lanczos",
            "--out",
            str(w / "out/ref.json"),
        ],  # fmt: skip
        "size 200x200: exact diagonalisation needs a 10^",
    ),
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


def with_set(setting: str, message: str, stage: str = "train"):
    """A bad ``--set`` for ``stage`` (train by default)."""
    if stage == "distill":
        return (lambda w: distill(w, "--set", setting), message)
    return (lambda w: train(w, "--set", setting), message)


def distill(world, *extra):
    return ["distill", "--system", "tfim", "--size", "8", "--teacher", str(world / "inputs/teacher"), "--bits", "6",
            "--reference", str(world / "inputs/ref.json"), "--out-dir", str(world / "out"), *extra]  # fmt: skip


CASES |= {
    f"set_{setting}": with_set(setting, message)
    for setting, message in [
        ("stepz=3", "'stepz'"),
        ("steps=0", "steps 0: must be positive"),
        ("steps=2.5", "steps 2.5: expected int"),
        ("steps=true", "steps True: expected int"),
        ("lr=fast", "lr 'fast': expected float"),
        ("lr=.nan", "lr nan: expected a finite number"),
        ("lr=-1", "lr -1.0: must be positive"),
        ("lr_final=-1", "lr_final -1.0"),
        ("schedule=linear", "schedule 'linear'"),
        ("warmup_steps=9", "warmup_steps 9"),
        ("n_samples=1", "n_samples 1: need at least 2"),
        ("optimizer=sgd", "optimizer 'sgd'"),
        ("diag_shift=0", "diag_shift 0.0: must be positive"),
        ("sr_momentum=1", "sr_momentum 1.0: must lie in [0, 1)"),
        ("patch=3", "patch=3"),
        ("d_model=0", "d_model 0"),
        ("n_heads=3", "n_heads"),
        ("n_blocks=-1", "n_blocks -1"),
        ("dtype=float16", "dtype 'float16'"),
        ("chunk_size=0", "chunk_size 0"),
        ("eval_samples=1", "eval_samples 1: need at least 2"),
        ("threads=0", "threads 0"),
        ("threads=100000", "threads 100000: must lie in [1, 1024]"),
        ("engine=fast", "engine 'fast'"),
        ("lr=[1", "not valid YAML"),
        ("steps", "expected KEY=VALUE"),
    ]
}
CASES |= {
    "size_text": (lambda w: ["train", "--system", "tfim", "--size", "3x", "--reference", "r", "--out-dir", "o"], "3x"),
    "gamma_nan": (lambda w: train(w, "--gamma", "nan"), "--gamma"),
    "gamma_for_heisenberg": (
        lambda w: train(w, "--gamma", "2", system=("heisenberg", "4"), small=False),
        "only the tfim system",
    ),
    "missing_reference": (
        lambda w: train(w, reference="nowhere.json", small=False),
        "nowhere.json: file not found",
    ),
    "no_such_run": (lambda w: ["train", "--run", "nope", "--reference", "r", "--out-dir", "o"], "nope"),
    "distill_missing_teacher": (lambda w: distill(w), "teacher"),
    "distill_bits": (lambda w: distill(w, "--set", "codes=48"), "codes 48"),
    "profile_missing_dir": (
        lambda w: [
            "profile",
            "--system",
            "tfim",
            "--size",
            "8",
            "--model-dir",
            str(w / "nowhere"),
            "--baseline",
            str(w / "nowhere"),
            "--out",
            str(w / "out/p.csv"),
        ],  # fmt: skip
        "nowhere",
    ),
    "report_missing_inputs": (
        lambda w: [
            "report",
            "--params",
            "config/ci.yaml",
            "--data-dir",
            str(w / "nodata"),
            "--out-dir",
            str(w / "out"),
        ],  # fmt: skip
        "missing",
    ),
    "reference_bad_size": (lambda w: ["reference", "--system", "tfim", "--size", "0", "--out", "o.json"], "size"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_refused_before_any_work(world, capsys, name):
    if name == "device" and torch.cuda.is_available():
        pytest.skip("a CUDA device is there")
    argv, message = CASES[name]
    argv = argv(world)
    before = sorted(p.relative_to(world) for p in world.rglob("*"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # argparse errors exit directly; the others return 2
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert "Traceback" not in err
    assert sorted(p.relative_to(world) for p in world.rglob("*")) == before  # no file, directory or store


def test_threads_beyond_the_machine_are_refused(world, capsys, monkeypatch):
    """Within the schema's static bound, more than 4 threads per CPU of this machine: exit 2, one line."""
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    before = sorted(world.rglob("*"))
    assert main(train(world, "--set", "threads=9")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "threads 9: more than 4 per CPU of this machine (2 CPUs)" in err
    assert sorted(world.rglob("*")) == before
