"""Checkpoints and model files: weights_only round trips, and every kind of bad file -> CheckpointError."""

import pytest
import torch

from vqnqs.stages.train import Trainer
from vqnqs.vmc.checkpoint import CheckpointError, load_checkpoint, load_model, save_model

from .conftest import tiny_config


@pytest.fixture
def saved(tmp_path, chain):
    """A trainer after two updates, its checkpoint written to tmp_path/run/checkpoint.pt."""
    hamiltonian, reference = chain
    trainer = Trainer(hamiltonian, tiny_config(optimizer="adam"), tmp_path / "run", reference)
    trainer.update()
    trainer.update()
    trainer.save()
    return trainer


def test_round_trip_weights_only(saved):
    path = saved.checkpoint_path
    raw = torch.load(path, weights_only=True)  # the contract: loadable without unpickling code
    assert raw["format"] == "vqnqs-checkpoint" and raw["step"] == 2
    payload = load_checkpoint(path)
    assert payload["model_config"]["lattice_shape"] == [8]
    assert payload["train_config"] == saved.config.to_dict()
    for key, value in saved.model.state_dict().items():
        assert torch.equal(payload["model"][key], value)
    assert payload["optimizer"]["state"]  # Adam moments are there
    assert torch.equal(payload["rng"]["sampler"], saved.generator.get_state())


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="file not found") as info:
        load_checkpoint(tmp_path / "nothing.pt")
    assert "nothing.pt" in str(info.value)


def test_truncated_file(saved):
    path = saved.checkpoint_path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_corrupted_tensor_bytes(saved):
    """Silent corruption inside a tensor's stored bytes (disk, copy): caught by the CRC or the digest."""
    path = saved.checkpoint_path
    data = path.read_bytes()
    weight = saved.model.head.weight.detach().numpy().tobytes()
    offset = data.find(weight)
    assert offset > 0
    corrupted = data[:offset] + bytes(16) + data[offset + 16 :]
    path.write_bytes(corrupted)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_edited_values_fail_the_digest(saved):
    path = saved.checkpoint_path
    record = torch.load(path, weights_only=True)
    record["model"]["head.bias"] += 1.0
    torch.save(record, path)
    with pytest.raises(CheckpointError, match="digest") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


class NotAllowed:
    """A class weights_only refuses to unpickle (it could run code)."""


@pytest.mark.parametrize(
    "content, message",
    [
        (lambda t: t.model.state_dict(), "not a vqnqs-checkpoint"),  # a bare state_dict from elsewhere
        (lambda t: {"format": "vqnqs-model", "version": 1}, "not a vqnqs-checkpoint"),
        (lambda t: {"format": "vqnqs-checkpoint", "version": 1, "step": 1}, "missing entry 'wall_time_s'"),
        (lambda t: {"format": "vqnqs-checkpoint", "version": 99}, "layout version 99"),
        (
            lambda t: {"format": "vqnqs-checkpoint", "payload": NotAllowed()},
            "not a vqnqs checkpoint, refused for safety",
        ),
    ],
)
def test_foreign_files(saved, content, message):
    path = saved.checkpoint_path
    torch.save(content(saved), path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


class RunsCode:
    """Unpickling it would call a function (a hostile checkpoint)."""

    def __reduce__(self):
        return (print, ("hostile code ran",))


def test_hostile_checkpoint_is_refused_without_running_code(saved, capsys):
    path = saved.checkpoint_path
    torch.save({"format": "vqnqs-checkpoint", "payload": RunsCode()}, path)
    with pytest.raises(CheckpointError, match="refused for safety") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "weights_only" not in message and "\x1b" not in message and "\n" not in message
    assert "hostile code ran" not in capsys.readouterr().out


def test_model_file_round_trip(tmp_path, saved):
    path = tmp_path / "model.pt"
    save_model(path, saved.model, {"system": "tfim", "steps": 2})
    assert torch.load(path, weights_only=True)["format"] == "vqnqs-model"
    model, info = load_model(path)
    assert info == {"system": "tfim", "steps": 2}
    assert model.config == saved.model.config
    s = saved.model.sample(16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.log_psi(s), saved.model.log_psi(s))
    with pytest.raises(CheckpointError, match="not a vqnqs-model"):
        load_model(saved.checkpoint_path)
