"""Distillation of a baseline teacher into a VQ student: loss, normalisation, init, dedup, files, resume."""

import copy
import csv
import json

import pytest
import torch
from torch import nn

import vqnqs.vmc.log_psi as log_psi_module
from vqnqs.dedup import dense_codes
from vqnqs.models import (
    AutoregressiveTransformer,
    TransformerConfig,
    VQConfig,
    VQTransformer,
    codebook_upkeep,
    make_vq_model,
)
from vqnqs.physics.basis import all_configurations
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.stages.config import DistillConfig, FinetuneConfig, check_bits
from vqnqs.stages.distill import METRICS_KEYS, Distiller
from vqnqs.stages.inputs import load_teacher, system_info
from vqnqs.vmc.checkpoint import (
    CheckpointError,
    build_from_state,
    load_checkpoint,
    load_model,
    model_config_to_dict,
    save_model,
)
from vqnqs.vmc.config import VMCConfig
from vqnqs.vmc.local_energy import local_energy
from vqnqs.vmc.step import TrainingError

TINY_DISTILL = {
    "steps": 30,
    "n_samples": 64,
    "lr": 1e-2,
    "lr_final": 1e-3,
    "warmup_steps": 0,
    "codes": 16,
    "eval_samples": 128,
    "check_samples": 64,
    "fidelity_samples": 128,
    "energy_every": 10,
    "energy_samples": 32,
    "chunk_size": 64,
    "checkpoint_every": 10,
    "seed": 1,
    "device": "cpu",
}


def tiny_distill(**changes) -> DistillConfig:
    return DistillConfig.from_mapping({**TINY_DISTILL, **changes})


def random_teacher(config: TransformerConfig, seed: int = 0, std: float = 0.5) -> AutoregressiveTransformer:
    """A baseline model with large random weights: a far-from-uniform, structured target."""
    model = AutoregressiveTransformer(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model.eval()


def write_teacher(directory, hamiltonian, model, reference: float):
    """A train stage out dir: model.pt (save_model) and metrics.json."""
    directory.mkdir(parents=True, exist_ok=True)
    save_model(directory / "model.pt", model, {**system_info(hamiltonian), "steps": 0, "energy_per_site": -1.0})
    (directory / "metrics.json").write_text(json.dumps({"energy_per_site": -1.0, "reference_per_site": reference}))
    return directory


@pytest.fixture
def teacher_dir(tmp_path, chain):
    hamiltonian, reference = chain
    config = TransformerConfig((8,), patch=2, d_model=8, n_heads=2, n_blocks=1)
    return write_teacher(tmp_path / "teacher", hamiltonian, random_teacher(config), reference)


def distiller(tmp_path, chain, teacher_dir, bits=4, name="out", **changes) -> Distiller:
    hamiltonian, reference = chain
    teacher = load_teacher(teacher_dir, hamiltonian)
    return Distiller(hamiltonian, teacher, tiny_distill(**changes), bits, tmp_path / name, reference)


def history(out_dir) -> list[dict]:
    with (out_dir / "history.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def l2_on(d: Distiller, s: torch.Tensor) -> float:
    """Eval-mode L2 distance of student and teacher log psi on ``s``."""
    with torch.no_grad():
        student = copy.deepcopy(d.student).eval()
        return ((student.log_psi(s) - d.teacher_model.log_psi(s)) ** 2).mean().item()


# --- the loss, normalisation ----------------------------------------------------------------------


def test_distillation_reduces_the_l2_loss(tmp_path, chain, teacher_dir):
    # Random codebooks (no data initialisation): the student starts far from the teacher, so the loss
    # can only come down by training the codebooks and the weights around them.
    d = distiller(tmp_path, chain, teacher_dir, steps=40, vq_init="none")
    probe = d.teacher_model.sample(512, generator=torch.Generator().manual_seed(7))
    before = l2_on(d, probe)
    metrics = d.run(progress=False)
    after = l2_on(d, probe)
    assert after < 0.05 * before, (before, after)
    losses = [float(row["loss"]) for row in history(tmp_path / "out")]
    assert sum(losses[-5:]) < 0.1 * sum(losses[:5])
    assert metrics["final_loss"] == pytest.approx(losses[-1])
    assert metrics["l2_dlog_psi"] < 0.05 * before  # on other fresh teacher samples


def test_student_is_normalised(tmp_path, chain, teacher_dir):
    d = distiller(tmp_path, chain, teacher_dir, steps=10)
    d.run(progress=False)
    s = all_configurations(8)  # (256, 8)
    with torch.no_grad():
        total = d.student.double().log_prob(s).exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-12)


def test_student_in_an_sz_sector_is_normalised_and_samples_in_it(tmp_path):
    hamiltonian = build_hamiltonian("heisenberg", "2x4")
    config = TransformerConfig((2, 4), patch=1, d_model=8, n_heads=2, n_blocks=1, n_down=4)
    teacher_dir = write_teacher(tmp_path / "teacher", hamiltonian, random_teacher(config), -0.5)
    teacher = load_teacher(teacher_dir, hamiltonian)
    d = Distiller(hamiltonian, teacher, tiny_distill(steps=10), 4, tmp_path / "out", -0.5)
    d.run(progress=False)
    student = d.student.double().eval()
    with torch.no_grad():
        sector = all_configurations(8, n_down=4)
        assert student.log_prob(sector).exp().sum().item() == pytest.approx(1.0, abs=1e-12)
        outside = all_configurations(8, n_down=3)
        assert torch.isneginf(student.log_prob(outside)).all()
        assert (student.sample(64).sum(dim=1) == 4).all()  # 4 down spins (1 = down)


# --- initialisation from the teacher --------------------------------------------------------------


def test_same_shape_student_copies_every_teacher_weight(tmp_path, chain, teacher_dir):
    d = distiller(tmp_path, chain, teacher_dir)
    teacher_state = d.teacher_model.state_dict()
    assert sorted(d.copied) == sorted(teacher_state)
    student_state = d.student.state_dict()
    for name, value in teacher_state.items():
        assert torch.equal(student_state[name], value), name
    # Before any step the student differs from the teacher only through its quantisers.
    unquantised = copy.deepcopy(d.student)
    for block in unquantised.blocks:
        block.attn.quantizer = nn.Identity()
    s = d.teacher_model.sample(64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(unquantised.log_psi(s), d.teacher_model.log_psi(s))
        assert not torch.equal(d.student.log_psi(s), d.teacher_model.log_psi(s))


def test_wider_student_from_a_narrow_teacher(tmp_path, chain, teacher_dir):
    d = distiller(tmp_path, chain, teacher_dir, bits=8, d_model=16, n_heads=4, steps=5)
    assert d.student_config.d_model == 16 and d.student_config.d_ff == 64  # 4 x the student's width
    assert d.vq_config.heads == 2
    assert d.copied == ["head.bias"]  # the only shape that does not depend on d_model
    metrics = d.run(progress=False)
    assert (metrics["student_d_model"], metrics["teacher_d_model"]) == (16, 8)
    assert metrics["copied_from_teacher"] == 1


# --- dedup ------------------------------------------------------------------------------------------


def test_dense_and_dedup_local_energies_agree_on_the_student(tmp_path, chain, teacher_dir):
    hamiltonian, _ = chain
    d = distiller(tmp_path, chain, teacher_dir, bits=8, dtype="float64")
    metrics = d.run(progress=False)
    assert metrics["dedup_check_max_rel_diff"] < 1e-12
    student = d.student.eval()
    s = student.sample(256, generator=torch.Generator().manual_seed(3))
    dense = local_energy(hamiltonian, student, s, chunk_size=64)
    dedup = local_energy(hamiltonian, student, s, chunk_size=64, engine="dedup")
    torch.testing.assert_close(dedup, dense, rtol=1e-12, atol=1e-12)


def test_a_dedup_engine_that_disagrees_is_caught(tmp_path, chain, teacher_dir, monkeypatch):
    real = log_psi_module.dedup_log_psi
    monkeypatch.setattr(
        log_psi_module,
        "dedup_log_psi",
        lambda model, s, prefix_reuse=True: real(model, s, prefix_reuse=prefix_reuse) + 1e-3 * s[:, 0],
    )
    d = distiller(tmp_path, chain, teacher_dir, steps=2)
    with pytest.raises(TrainingError, match="dense and dedup"):
        d.run(progress=False)
    assert not (tmp_path / "out" / "metrics.json").exists()


# --- files ----------------------------------------------------------------------------------------


def test_outputs_and_model_round_trip(tmp_path, chain, teacher_dir):
    d = distiller(tmp_path, chain, teacher_dir, steps=12)
    metrics = d.run(progress=False)
    out = tmp_path / "out"
    assert set(METRICS_KEYS) <= set(metrics)
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    assert (metrics["bits"], metrics["heads"], metrics["codes"], metrics["steps"]) == (4, 1, 16, 12)
    assert metrics["teacher_energy_per_site"] == -1.0
    rows = history(out)
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert [r["energy_per_site"] != "" for r in rows] == [s in (10, 12) for s in range(1, 13)]

    raw = torch.load(out / "model.pt", weights_only=True)
    assert raw["vq_config"] == {
        "heads": 1,
        "codes": 16,
        "vq_init": "kmeans++",
        "dead_after": 100,
        "quantize_final": False,
        **_vq_rest(),
    }
    loaded, info = load_model(out / "model.pt")
    assert isinstance(loaded, VQTransformer) and loaded.vq_config == d.vq_config
    assert info["bits"] == 4
    s = d.student.sample(128, generator=torch.Generator().manual_seed(5))
    student = d.student.eval()
    with torch.no_grad():
        assert torch.equal(loaded.log_psi(s), student.log_psi(s))
    for codes, loaded_codes in zip(dense_codes(student, s), dense_codes(loaded, s), strict=True):
        assert torch.equal(codes, loaded_codes)
    for name, value in student.state_dict().items():  # quantiser buffers included
        assert torch.equal(loaded.state_dict()[name], value), name


def _vq_rest() -> dict:
    defaults = VQConfig()
    return {"ema_decay": defaults.ema_decay, "init_std": defaults.init_std}


def test_vq_model_file_round_trip_in_float64(tmp_path):
    config = TransformerConfig((8,), patch=2, d_model=8, n_heads=2, n_blocks=2)
    model = make_vq_model(config, VQConfig(heads=2, codes=8, vq_init="rows")).double()
    s = all_configurations(8)
    codebook_upkeep(model, s)  # data-initialise the codebooks: buffers and codebook differ from a fresh model
    save_model(tmp_path / "m.pt", model, {"note": "vq"})
    loaded, info = load_model(tmp_path / "m.pt")
    assert isinstance(loaded, VQTransformer) and info == {"note": "vq"}
    assert next(loaded.parameters()).dtype == torch.float64
    assert all(bool(q.initialized) for q in loaded.quantizers)
    with torch.no_grad():
        assert torch.equal(loaded.log_psi(s), model.log_psi(s))
    # A baseline file still loads as the baseline.
    save_model(tmp_path / "b.pt", AutoregressiveTransformer(config), {})
    baseline, _ = load_model(tmp_path / "b.pt")
    assert type(baseline) is AutoregressiveTransformer


@pytest.mark.parametrize("steps, finetune_steps", [(20, 0), (6, 14)])  # interrupted in the fit / fine-tuning
def test_resume_continues_the_same_trajectory(tmp_path, chain, teacher_dir, monkeypatch, steps, finetune_steps):
    settings = {"steps": steps, "finetune": {"steps": finetune_steps, "n_samples": 64}, "dead_after": 3}
    straight = distiller(tmp_path, chain, teacher_dir, name="straight", checkpoint_every=4, energy_every=3, **settings)
    metrics = straight.run(progress=False)

    interrupted = distiller(
        tmp_path, chain, teacher_dir, name="resumed", checkpoint_every=4, energy_every=3, **settings
    )
    real_update, calls = Distiller.update, {"n": 0}

    def update_then_stop(self):
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt
        return real_update(self)

    monkeypatch.setattr(Distiller, "update", update_then_stop)
    with pytest.raises(KeyboardInterrupt):
        interrupted.run(progress=False)
    monkeypatch.setattr(Distiller, "update", real_update)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["step"] == 8

    resumed = distiller(tmp_path, chain, teacher_dir, name="resumed", checkpoint_every=5, energy_every=3, **settings)
    resumed_metrics = resumed.run(progress=False)
    for name, value in straight.student.state_dict().items():
        assert torch.equal(resumed.student.state_dict()[name], value), name
    assert resumed_metrics["energy_per_site"] == metrics["energy_per_site"]
    rows, resumed_rows = history(tmp_path / "straight"), history(tmp_path / "resumed")
    assert [r["loss"] for r in resumed_rows] == [r["loss"] for r in rows]
    assert [r["energy_per_site"] for r in resumed_rows] == [r["energy_per_site"] for r in rows]  # monitor stream


def test_more_finetuning_updates_continue_a_finished_distillation(tmp_path, chain, teacher_dir):
    """finetune.steps may grow on resume (a nested knob, compared by its dotted key): the run goes on."""
    finetune = {"steps": 3, "n_samples": 32}
    distiller(tmp_path, chain, teacher_dir, steps=4, finetune=finetune).run(progress=False)
    extended = distiller(tmp_path, chain, teacher_dir, steps=4, finetune={**finetune, "steps": 5})
    extended.resume(on_change="refuse")
    assert extended.step == 7
    assert extended.run(progress=False)["steps"] == 9
    assert load_checkpoint(tmp_path / "out" / "checkpoint.pt")["laid_for"] == {"finetune.steps": 3}
    with pytest.raises(CheckpointError, match="finetune.lr"):  # another fine-tuning knob is a change
        distiller(tmp_path, chain, teacher_dir, steps=4, finetune={**finetune, "steps": 5, "lr": 0.5}).resume("refuse")


def test_resume_with_other_settings_or_teacher_starts_afresh(tmp_path, chain, teacher_dir, capsys):
    distiller(tmp_path, chain, teacher_dir, steps=4).run(progress=False)
    # Another bandwidth in the same out dir is a mistake, not a rerun: refused.
    with pytest.raises(CheckpointError, match="bits"):
        distiller(tmp_path, chain, teacher_dir, bits=8, steps=4).run(progress=False)
    # Changed settings (the pipeline reran the stage): start afresh, saying so.
    capsys.readouterr()
    changed = distiller(tmp_path, chain, teacher_dir, steps=4, lr=0.02)
    assert changed.run(progress=False)["steps"] == 4
    assert "lr=0.02; starting afresh" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "out" / "checkpoint.pt")["train_config"]["lr"] == 0.02
    hamiltonian, reference = chain
    other = random_teacher(TransformerConfig((8,), patch=2, d_model=8, n_heads=2, n_blocks=1), seed=9)
    write_teacher(teacher_dir, hamiltonian, other, reference)
    distiller(tmp_path, chain, teacher_dir, steps=4, lr=0.02).run(progress=False)
    assert "different teacher model.pt" in capsys.readouterr().err
    # --fresh (resume=False) starts over without looking.
    assert distiller(tmp_path, chain, teacher_dir, steps=4).run(resume=False, progress=False)["steps"] == 4


def test_finetuning_lowers_the_student_energy(tmp_path, chain, teacher_dir):
    """VMC on the student's own energy after the fit: the exact energy (enumeration) goes down, towards E0.

    The teacher is random (far from the ground state), so the fitted student is too, and the fine-tuning's
    SR steps have a large energy to remove; each phase writes its own history rows.
    """
    hamiltonian, reference = chain
    d = distiller(tmp_path, chain, teacher_dir, steps=20, finetune={"steps": 30, "n_samples": 256, "lr": 0.02})
    metrics = d.run(progress=False)
    fitted, finetuned = metrics["fit_exact_energy_per_site"], metrics["exact_energy_per_site"]
    assert finetuned < fitted - 0.5 * (fitted - reference)  # at least half way to the ground state (85% measured)
    assert finetuned > reference - 1e-9  # variational
    assert (metrics["steps"], metrics["fit_steps"], metrics["finetune_steps"]) == (50, 20, 30)
    rows = history(tmp_path / "out")
    assert [r["phase"] for r in rows] == ["fit"] * 20 + ["vmc"] * 30
    assert all(r["loss"] == "" and r["energy_per_site"] != "" for r in rows[20:])
    assert metrics["final_loss"] == float(rows[19]["loss"])


def test_nan_stops_the_run(tmp_path, chain, teacher_dir, monkeypatch):
    d = distiller(tmp_path, chain, teacher_dir, steps=6)
    real = d.teacher_model.log_psi
    monkeypatch.setattr(d.teacher_model, "log_psi", lambda s: real(s) * float("nan"))
    with pytest.raises(TrainingError, match="step 1: the loss"):
        d.run(progress=False)


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"stepz": 3}, "'stepz': unknown"),
        ({"lr": "fast"}, "lr 'fast': expected float"),
        ({"steps": 0}, "steps 0: must be positive"),
        ({"codes": 48}, "codes 48: must be a power of two"),
        ({"vq_init": "magic"}, "vq_init 'magic'"),
        ({"d_model": 0}, "d_model 0"),
        ({"n_blocks": 0}, "n_blocks 0"),
        ({"dead_after": -1}, "dead_after -1"),
        ({"check_samples": 300, "eval_samples": 200}, "check_samples 300"),
        ({"steps": True}, "steps True: expected int"),
        ({"codebook_lr": 0}, "codebook_lr 0"),
        ({"finetune.steps": -1}, "finetune.steps -1: must be >= 0"),
        ({"finetune": {"n_samples": 1}}, "finetune.n_samples 1: need at least 2"),
        ({"finetune.lr": 0}, "finetune.lr 0.0: must be positive"),
        ({"finetune.stepz": 1}, "'finetune.stepz': unknown to distill.finetune"),
        ({"finetune": 3}, "finetune 3: expected a mapping"),
        ({"finetune": {"steps": 5, "warmup_steps": 5}}, r"finetune.warmup_steps 5: must lie in \[0, steps=5\)"),
        ({"n_blocks": 0}, "n_blocks 0: must be >= 1"),
        ({"patch": 0}, "patch 0"),
    ],
)
def test_config_validation_names_the_field(setting, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig.from_mapping(setting)


def test_config_accepts_yaml_exponents():
    assert DistillConfig.from_mapping({"lr": "1e-3"}).lr == 1e-3


def test_finetuning_is_a_vmc_config_with_the_distill_defaults():
    """One fine-tuning update schedule: SR, cosine from lr to lr_final, a constant diagonal shift by default."""
    finetune = DistillConfig().finetune
    assert isinstance(finetune, VMCConfig)
    assert finetune.to_dict() == {
        "steps": 0,
        "lr": 0.01,
        "lr_final": 0.001,
        "schedule": "cosine",
        "warmup_steps": 0,
        "n_samples": 4096,
        "optimizer": "sr",
        "diag_shift": VMCConfig.diag_shift,
        "diag_shift_final": VMCConfig.diag_shift,
        "sr_momentum": VMCConfig.sr_momentum,
    }
    # A dotted key is merged over the nested mapping; both give the same config.
    given = DistillConfig.from_mapping({"finetune": {"steps": 10, "lr": 0.1}, "finetune.steps": 20})
    assert given.finetune == FinetuneConfig(steps=20, lr=0.1) and given.total_steps == 3020
    assert DistillConfig.from_mapping(given.to_dict()) == given


def test_student_shape_takes_the_teachers_where_not_given():
    teacher = TransformerConfig((8,), patch=2, d_model=8, n_heads=2, n_blocks=1, d_ff=12, n_down=4, phase_blocks=1)
    assert DistillConfig().student_config(teacher) == teacher
    student = DistillConfig(n_blocks=2, phase_blocks=0).student_config(teacher)
    assert (student.n_blocks, student.phase_blocks, student.d_ff, student.n_down) == (2, 0, 12, 4)
    assert DistillConfig(d_model=16, patch=1).student_config(teacher).d_ff == 64


def test_model_files_of_older_code_still_load(tmp_path):
    """Older model files name the codebook initialisation ``init``: they load as before."""
    config = TransformerConfig((8,), patch=2, d_model=8, n_heads=2, n_blocks=1)
    model = make_vq_model(config, VQConfig(heads=2, codes=8, vq_init="rows"))
    old = {"heads": 2, "codes": 8, "init": "rows", "dead_after": 100, **_vq_rest()}
    loaded = build_from_state(tmp_path / "m.pt", model_config_to_dict(config), model.state_dict(), old)
    assert loaded.vq_config == model.vq_config and loaded.config == config


@pytest.mark.parametrize(
    "bits, codes, d_model, message",
    [(5, 64, 32, "bits 5: not a positive multiple"), (0, 64, 32, "bits 0"), (18, 64, 32, "bits 18: gives 3 heads")],
)
def test_check_bits(bits, codes, d_model, message):
    with pytest.raises(ValueError, match=message):
        check_bits(bits, codes, d_model)


def test_check_bits_shapes():
    assert [check_bits(b, 64, 32) for b in (6, 12, 24, 48)] == [(1, 64), (2, 64), (4, 64), (8, 64)]
    assert check_bits(6, 8, 8) == (2, 8)


def test_load_teacher_errors_name_the_file(tmp_path, chain, teacher_dir):
    hamiltonian, _ = chain
    with pytest.raises(CheckpointError, match="nowhere: not found"):
        load_teacher(tmp_path / "nowhere", hamiltonian)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"empty/model.pt: file not found"):
        load_teacher(empty, hamiltonian)
    data = (teacher_dir / "model.pt").read_bytes()
    (teacher_dir / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.pt: unreadable"):
        load_teacher(teacher_dir, hamiltonian)
    torch.save({"weights": torch.zeros(3)}, teacher_dir / "model.pt")
    with pytest.raises(CheckpointError, match=r"model.pt: not a vqnqs-model file"):
        load_teacher(teacher_dir, hamiltonian)


def test_load_teacher_refuses_another_system_or_a_vq_model(tmp_path, chain):
    hamiltonian, reference = chain
    config = TransformerConfig((8,), patch=2, d_model=8, n_heads=2, n_blocks=1)
    directory = write_teacher(tmp_path / "t", hamiltonian, random_teacher(config), reference)
    with pytest.raises(CheckpointError, match="trained for gamma"):
        load_teacher(directory, build_hamiltonian("tfim", "8", gamma=0.5))
    vq = make_vq_model(config, VQConfig(heads=1, codes=8))
    write_teacher(directory, hamiltonian, vq, reference)
    with pytest.raises(CheckpointError, match="holds a VQ model"):
        load_teacher(directory, hamiltonian)
