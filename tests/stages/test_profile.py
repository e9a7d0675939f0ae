"""The profile stage: CSV contract from tiny model dirs, input validation, CLI, timing record."""

import csv
import json

import pytest

from vqnqs.cli import main
from vqnqs.io import InputError as ProfileInputError
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.profiling.table import COMPONENT_COLUMNS, CONTRACT_COLUMNS, components_path
from vqnqs.profiling.timing import time_local_energy
from vqnqs.stages.config import ProfileConfig
from vqnqs.stages.profile import run_profile_stage, summary_line

from ..profiling.conftest import tiny_baseline, tiny_vq, write_model_dir

QUICK = {"batch": 8, "n_batches": 2, "repeats": 1, "warmup": 0, "device": "cpu", "timing_devices": ["cpu"]}
SYSTEM = {"system": "tfim", "size": "8"}


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_stage_writes_the_contract_columns(model_dirs, tmp_path):
    train, distill, hamiltonian = model_dirs
    out = tmp_path / "profile" / "bits4.csv"
    result = run_profile_stage(distill, train, out, hamiltonian, SYSTEM, ProfileConfig(**QUICK))
    rows = read_csv(out)
    assert list(rows[0])[: len(CONTRACT_COLUMNS)] == list(CONTRACT_COLUMNS)
    baseline, student = rows
    assert (baseline["model"], baseline["bits"], student["model"], student["bits"]) == ("baseline", "0", "vq-nqs", "4")
    # Energies are read from metrics.json, not recomputed.
    assert (float(baseline["energy_per_site"]), float(baseline["rel_error"])) == (-1.2, 0.01)
    assert (float(student["energy_per_site"]), float(student["rel_error"])) == (-1.1, 0.05)
    for row in rows:
        assert (row["system"], row["size"], row["n_sites"], row["d_model"]) == ("tfim", "8", "8", "8")
        positive = ("flops_dense_per_sample", "flops_dedup_per_sample", "unique_frac_block1")
        for key in [key for key in CONTRACT_COLUMNS[5:] if key != "quantized_ops_savings"] + list(positive):
            assert float(row[key]) > 0, key
        assert 1 <= float(row["batch"]) <= int(row["drawn_batch"]) == 8  # distinct of the 8 drawn
        assert float(row["flops_dense"]) == pytest.approx(float(row["batch"]) * float(row["flops_dense_per_sample"]))
        assert float(row["total_savings"]) == pytest.approx(
            float(row["flops_dense_per_sample"]) / float(row["flops_dedup_per_sample"])
        )
        assert row["device"] == "cpu" and row["time_device"] == "cpu" and int(row["threads"]) >= 1
    assert float(student["total_savings"]) > float(baseline["total_savings"])
    # A model without quantisers has no quantised ops: the column is blank, not a ratio of nothing.
    assert baseline["quantized_ops_savings"] == "" and float(student["quantized_ops_savings"]) > 1
    # The baseline keeps one state per distinct prefix of the input tokens; the student's quantised keys
    # are functions of those prefixes, so it has at most as many.
    assert 1.0 > float(baseline["unique_frac_block1"]) >= float(student["unique_frac_block1"])

    components = read_csv(components_path(out))
    assert components_path(out) == tmp_path / "profile" / "bits4_components.csv" == result.components_out
    assert list(components[0])[: len(COMPONENT_COLUMNS)] == list(COMPONENT_COLUMNS)
    for row in rows:
        mine = [c for c in components if c["model"] == row["model"]]
        assert len(mine) == 12 and {c["bits"] for c in mine} == {row["bits"]}
        for path in ("dense", "dedup"):
            total = sum(float(c[f"flops_{path}_per_sample"]) for c in mine)
            assert total == pytest.approx(float(row[f"flops_{path}_per_sample"]))
    by_name = {(c["model"], c["component"]): c for c in components}
    assert float(by_name[("vq-nqs", "quantizer_distances")]["flops_dense_per_sample"]) > 0
    assert float(by_name[("baseline", "quantizer_distances")]["flops_dense_per_sample"]) == 0
    # No phase network: its columns are blank, not zero.
    assert all(row[f"flops_phase_{path}_per_sample"] == "" for row in rows for path in ("dense", "dedup"))
    assert all(c[column] == "" for c in components for column in COMPONENT_COLUMNS if "phase" in column)


def test_stage_counts_the_phase_network_apart(tmp_path, capsys):
    """Models with a phase network: its FLOPs alone, per model and per component, within the totals."""
    hamiltonian = build_hamiltonian("tfim", "8")
    baseline = tiny_baseline(n_blocks=1, seed=1, phase_blocks=1)
    student = tiny_vq(n_blocks=1, heads=2, codes=4, seed=2, phase_blocks=1)
    write_model_dir(tmp_path / "train", baseline, hamiltonian, {"energy_per_site": -1.2, "steps": 1})
    write_model_dir(tmp_path / "distill", student, hamiltonian, {"energy_per_site": -1.1, "bits": 4, "steps": 1})
    out = tmp_path / "bits4.csv"
    result = run_profile_stage(
        tmp_path / "distill", tmp_path / "train", out, hamiltonian, SYSTEM, ProfileConfig(**QUICK)
    )
    rows, components = read_csv(out), read_csv(components_path(out))
    assert len(components) == 24  # the same component rows as without a phase network
    for row in rows:
        assert row["phase_blocks"] == "1"
        dense, dedup = (float(row[f"flops_phase_{path}_per_sample"]) for path in ("dense", "dedup"))
        assert 0 < dedup < dense < float(row["flops_dense_per_sample"])
        mine = [c for c in components if c["model"] == row["model"]]
        for path, total in (("dense", dense), ("dedup", dedup)):
            assert sum(float(c[f"flops_phase_{path}_per_sample"]) for c in mine) == pytest.approx(total)
        assert all(float(c["flops_phase_dense_per_sample"]) <= float(c["flops_dense_per_sample"]) for c in mine)
    line = summary_line(result).splitlines()[1]
    assert f"(phase network: {float(rows[1]['flops_phase_dense_per_sample']):.3g} -> " in line


def test_missing_inputs_name_the_file(model_dirs, tmp_path):
    train, distill, hamiltonian = model_dirs
    (distill / "metrics.json").unlink()
    with pytest.raises(ProfileInputError, match="distill/metrics.json: file not found"):
        run_profile_stage(distill, train, tmp_path / "p.csv", hamiltonian, SYSTEM, ProfileConfig(**QUICK))
    with pytest.raises(ProfileInputError, match="swapped"):
        run_profile_stage(train, tmp_path / "swapped", tmp_path / "p.csv", hamiltonian, SYSTEM, ProfileConfig(**QUICK))
    assert not (tmp_path / "p.csv").exists()


def test_dirs_must_hold_the_right_models(model_dirs, tmp_path):
    train, distill, hamiltonian = model_dirs
    with pytest.raises(ProfileInputError, match="holds no VQ model"):
        run_profile_stage(train, train, tmp_path / "p.csv", hamiltonian, SYSTEM, ProfileConfig(**QUICK))
    (distill / "metrics.json").write_text(json.dumps({"energy_per_site": -1.0, "bits": 12}))
    with pytest.raises(ProfileInputError, match="bits 12"):
        run_profile_stage(distill, train, tmp_path / "p.csv", hamiltonian, SYSTEM, ProfileConfig(**QUICK))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"batch": 0}, "batch 0"),
        ({"nope": 1}, "unknown setting 'nope'"),
        ({"timing_devices": ["tpu"]}, "timing_devices"),
    ],
)
def test_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        ProfileConfig.from_mapping(settings)


def test_cli_profile_writes_csvs_and_an_mlflow_run(model_dirs, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    train, distill, _ = model_dirs
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out" / "bits4.csv"
    sets = [f"--set={key}={json.dumps(value)}" for key, value in QUICK.items()]
    argv = ["profile", "--model-dir", str(distill), "--baseline", str(train), "--out", str(out), *sets]
    assert main(argv) == 0
    assert "vq-nqs (4 bits)" in capsys.readouterr().out
    assert len(read_csv(out)) == 2 and len(read_csv(components_path(out))) == 24
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("vqnqs-default").experiment_id])
    assert run.data.tags["stage"] == "profile"
    assert (run.data.tags["system"], run.data.tags["size"], run.data.tags["bits"]) == ("tfim", "8", "4")
    assert run.data.metrics["vq-nqs_total_savings"] > 1


def test_cli_bad_input_exits_2_with_one_line(model_dirs, tmp_path, monkeypatch, capsys):
    train, distill, _ = model_dirs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "p.csv"
    argv = ["profile", "--model-dir", str(tmp_path / "nowhere"), "--baseline", str(train), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere" in err and "not found" in err
    argv = ["profile", "--model-dir", str(distill), "--baseline", str(train), "--out", str(out), "--set", "bogus=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown setting 'bogus'" in err
    assert not out.exists()


def test_timing_records_both_paths(tfim8):
    model = tiny_vq(n_blocks=1, seed=0)
    s = model.sample(4)
    timing = time_local_energy(tfim8, model, s, repeats=3, warmup=1)
    assert len(timing.dense_all) == len(timing.dedup_all) == 3
    assert timing.dense_s > 0 and timing.dedup_s > 0 and timing.speedup > 0
    assert timing.device == "cpu" and timing.threads == 1 and timing.n_samples == 4
    with pytest.raises(ValueError, match="repeats"):
        time_local_energy(tfim8, model, s, repeats=0)
