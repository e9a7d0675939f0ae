"""The training loop: exact resume, the NaN guard, config validation, outputs."""

import csv
import json
import math

import pytest
import torch

import vqnqs.vmc.step as trainer_module
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.stages.config import TrainConfig
from vqnqs.stages.train import METRICS_KEYS, Trainer
from vqnqs.vmc.checkpoint import load_checkpoint
from vqnqs.vmc.step import TrainingError

from ..vmc.conftest import TINY, tiny_config


def history(out_dir) -> list[dict]:
    with (out_dir / "history.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def fail_on_call(monkeypatch, name: str, call: int, action):
    """Replace ``trainer_module.<name>`` so that its ``call``-th use runs ``action(*args)`` instead."""
    real = getattr(trainer_module, name)
    count = {"n": 0}

    def wrapper(*args, **kwargs):
        count["n"] += 1
        if count["n"] == call:
            return action(*args, **kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, name, wrapper)


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


# The VQ-NQS of the tiny shape: 2 heads of 4 codes (the codebook buffers travel with the model's state dict).
VQ = {"model": "vq", "bits": 4, "codes": 4}


@pytest.mark.parametrize("model", [{}, VQ], ids=["baseline", "vq"])
@pytest.mark.parametrize("optimizer", ["sr", "adam"])
def test_resume_continues_the_exact_trajectory(tmp_path, chain, monkeypatch, optimizer, model):
    hamiltonian, reference = chain
    config = tiny_config(optimizer=optimizer, **model)
    straight = Trainer(hamiltonian, config, tmp_path / "straight", reference)
    metrics = straight.run(progress=False)

    # Interrupted during step 5: steps 1-4 are checkpointed (every 2), step 5 is lost and redone.
    fail_on_call(monkeypatch, "local_energy", 5, interrupt)
    with pytest.raises(KeyboardInterrupt):
        Trainer(hamiltonian, config, tmp_path / "resumed", reference).run(progress=False)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["step"] == 4
    monkeypatch.undo()
    resumed = Trainer(hamiltonian, config, tmp_path / "resumed", reference)
    resumed_metrics = resumed.run(progress=False)

    for key, value in straight.model.state_dict().items():  # codebooks and their statistics included
        assert torch.equal(resumed.model.state_dict()[key], value), key
    if model:
        assert all(bool(q.initialized) and q.usage_ema.sum() > 0 for q in resumed.model.quantizers)
    assert resumed_metrics["energy_per_site"] == metrics["energy_per_site"]  # same sampler stream at the end
    assert resumed_metrics["steps"] == 6
    rows, resumed_rows = history(tmp_path / "straight"), history(tmp_path / "resumed")
    assert [r["step"] for r in resumed_rows] == [str(step) for step in range(1, 7)]
    assert [r["energy_per_site"] for r in resumed_rows] == [r["energy_per_site"] for r in rows]


def test_resume_with_other_settings_starts_afresh(tmp_path, chain, monkeypatch, capsys):
    """A pipeline reruns a stage after its params changed: the stale checkpoint is set aside, loudly."""
    hamiltonian, reference = chain
    fail_on_call(monkeypatch, "local_energy", 3, interrupt)
    with pytest.raises(KeyboardInterrupt):
        Trainer(hamiltonian, tiny_config(), tmp_path, reference).run(progress=False)
    monkeypatch.undo()
    capsys.readouterr()
    changed = Trainer(hamiltonian, tiny_config(lr=0.2), tmp_path, reference)
    assert changed.run(progress=False)["steps"] == 6
    message = capsys.readouterr().err
    assert "lr=" in message and "checkpoint.pt" in message and "starting afresh" in message
    fresh = Trainer(hamiltonian, tiny_config(lr=0.2), tmp_path / "fresh", reference)
    fresh.run(progress=False)
    for name, value in fresh.model.state_dict().items():
        assert torch.equal(value, changed.model.state_dict()[name]), name
    # Bookkeeping settings may change without restarting: this resumes from the final checkpoint.
    assert Trainer(hamiltonian, tiny_config(lr=0.2, eval_samples=32), tmp_path, reference).run(progress=False)
    assert "resuming from step 6" in capsys.readouterr().err


def nan_local_energy(hamiltonian, log_psi, s, chunk_size=None):
    return torch.full((s.shape[0],), math.nan, dtype=torch.float64)


def nan_log_derivatives(model, s, chunk_size=None):
    return torch.full((s.shape[0], model.n_params), math.nan)


@pytest.mark.parametrize(
    "name, action, message",
    [("local_energy", nan_local_energy, "local energies"), ("log_derivatives", nan_log_derivatives, "gradient")],
)
def test_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path, chain, monkeypatch, name, action, message):
    hamiltonian, reference = chain
    snapshot = {}

    def poisoned(*args, **kwargs):
        snapshot["bytes"] = (tmp_path / "checkpoint.pt").read_bytes()  # as written after step 2
        return action(*args, **kwargs)

    fail_on_call(monkeypatch, name, 3, poisoned)
    with pytest.raises(TrainingError, match=f"step 3: .*{message}.*NaN"):
        Trainer(hamiltonian, tiny_config(), tmp_path, reference).run(progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == snapshot["bytes"]
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(value).all() for value in state["model"].values())
    assert len(history(tmp_path)) == 2
    assert not (tmp_path / "metrics.json").exists()


def test_outputs(tmp_path, chain):
    hamiltonian, reference = chain
    metrics = Trainer(hamiltonian, tiny_config(steps=3), tmp_path, reference).run(progress=False)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == metrics
    assert set(METRICS_KEYS) <= set(written)
    assert written["steps"] == 3 and written["reference_per_site"] == reference
    assert written["rel_error"] == pytest.approx(abs(written["energy_per_site"] - reference) / abs(reference))
    # Variational: above the ground state (within 5 standard errors).
    assert written["energy_per_site"] > reference - 5 * written["energy_error"]
    assert written["eloc_configs_per_s"] > 0 and written["seconds_per_step"] > 0
    assert (tmp_path / "model.pt").exists() and len(history(tmp_path)) == 3


def test_config_validation():
    assert TrainConfig.from_mapping({"diag_shift": "1e-3", "lr": 1}).diag_shift == 1e-3  # YAML 1.1 text, an int
    bad = [
        ({"stepz": 3}, "'stepz': unknown"),
        ({"steps": 0}, "steps 0: must be positive"),
        ({"steps": True}, "steps True: expected int"),
        ({"steps": 2.5}, "steps 2.5: expected int"),
        ({"lr": "fast"}, "lr 'fast': expected float"),
        ({"lr": float("nan")}, "lr nan: expected a finite number"),
        ({"optimizer": "sgd"}, "optimizer 'sgd'"),
        ({"d_ff": 0}, "d_ff 0"),
        ({"sz_sector": "yes"}, "sz_sector 'yes': expected bool"),
        ({"warmup_steps": 10, "steps": 10}, "warmup_steps 10"),
        ({"schedule": "exponential", "lr_final": 0.0}, "lr_final"),
        ({"patch": 0}, "patch 0: must be a positive integer or null"),
    ]
    for changes, message in bad:
        with pytest.raises(ValueError, match=message):
            TrainConfig.from_mapping({**TINY, **changes})


@pytest.mark.parametrize(
    "system,size,patch,expected",
    [
        ("tfim", "32", None, 4),
        ("tfim", "10", None, 2),
        ("heisenberg", "4x4", None, 2),
        ("tfim", "32", 2, 2),
    ],
)
def test_model_config_patch(system, size, patch, expected):
    """No patch given: the lattice's default (4 spins on a chain, 2x2 on a square); a given one is kept."""
    hamiltonian = build_hamiltonian(system, size)
    assert TrainConfig(patch=patch).transformer_config(hamiltonian).patch == expected


@pytest.mark.parametrize("model", [{}, VQ], ids=["baseline", "vq"])
def test_the_engines_follow_the_dense_trajectory(tmp_path, chain, model):
    """The engines are the dense forward reorganised: in float64 every run takes the same steps."""
    hamiltonian, reference = chain
    runs = {}
    for engine in ("dense", "dedup", "incremental"):
        config = tiny_config(dtype="float64", engine=engine, **model)
        trainer = Trainer(hamiltonian, config, tmp_path / engine, reference)
        runs[engine] = (trainer.run(progress=False), trainer.model.state_dict())
    dense_metrics, dense_params = runs.pop("dense")
    for metrics, params in runs.values():
        for key, value in dense_params.items():
            torch.testing.assert_close(params[key], value, rtol=1e-9, atol=1e-11)
        assert metrics["energy_per_site"] == pytest.approx(dense_metrics["energy_per_site"], rel=1e-10)


def test_a_vq_training_starts_from_a_trained_baseline(tmp_path, chain):
    """--init-from: every baseline weight is copied into the VQ model (the codebooks start fresh, fitted to data
    at the first upkeep); a checkpoint written from another start is stale."""
    from vqnqs.stages.inputs import load_teacher
    from vqnqs.vmc.checkpoint import StaleCheckpoint

    hamiltonian, reference = chain
    Trainer(hamiltonian, tiny_config(), tmp_path / "dense", reference).run(progress=False)
    start = load_teacher(tmp_path / "dense", hamiltonian, "--init-from", start=True)
    trainer = Trainer(hamiltonian, tiny_config(**VQ), tmp_path / "vq", reference, start)
    state = trainer.model.state_dict()
    for name, value in start.model.state_dict().items():
        assert torch.equal(state[name], value), name
    assert not any(bool(q.initialized) for q in trainer.model.quantizers)
    trainer.run(progress=False)

    other = Trainer(hamiltonian, tiny_config(**VQ), tmp_path / "vq", reference)  # from scratch: another start
    with pytest.raises(StaleCheckpoint, match="another --init-from"):
        other.restore()


def test_a_training_starts_from_a_smaller_lattice(tmp_path, chain):
    """--init-from a model of the same system on fewer sites: every weight but the position embeddings."""
    from vqnqs.stages.inputs import load_teacher
    from vqnqs.vmc.checkpoint import CheckpointError

    hamiltonian, reference = chain  # TFIM, 8 sites
    Trainer(hamiltonian, tiny_config(**VQ), tmp_path / "small", reference).run(progress=False)
    larger = build_hamiltonian("tfim", "12")
    start = load_teacher(tmp_path / "small", larger, "--init-from", start=True)
    trainer = Trainer(larger, tiny_config(**VQ), tmp_path / "large", reference)
    fresh = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    trainer = Trainer(larger, tiny_config(**VQ), tmp_path / "large", reference, start)
    for name, value in trainer.model.state_dict().items():
        expected = fresh[name] if name == "pos_emb.weight" else start.model.state_dict()[name]
        assert torch.equal(value, expected), name
    with pytest.raises(CheckpointError, match="trained for system"):
        load_teacher(tmp_path / "small", build_hamiltonian("heisenberg", "12"), "--init-from", start=True)
