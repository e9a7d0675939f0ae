"""A reference of other physics is refused, naming both values: every Hamiltonian-defining field, every stage."""

import json

import pytest

from vqnqs.cli import main
from vqnqs.io import InputError
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.report import ReportInputError, check_reference
from vqnqs.stages.inputs import load_reference

# (where the field lives in the record, field, a value of other physics) for the open TFIM chain of 8 at
# Gamma = J = 1, and for the 2x4 Heisenberg model (sign rule on).
TFIM = [((), "system", "heisenberg"), ((), "size", "10"), ((), "boundary", "periodic"),
        (("hamiltonian",), "gamma", 3.0), (("hamiltonian",), "J", 2.0)]  # fmt: skip
HEISENBERG = [
    (("hamiltonian",), "sign_rule", False),
    (("hamiltonian",), "J", 0.5),
]  # J2 (absent at 0): test_plain_reference_refused_for_j1j2


def reference_record(system: str, size: str) -> dict:
    from vqnqs.physics.reference import compute_reference

    return compute_reference(build_hamiltonian(system, size), "auto", None, None)


def edited(record: dict, where: tuple, field: str, value) -> dict:
    record = json.loads(json.dumps(record))
    (record[where[0]] if where else record)[field] = value
    return record


@pytest.mark.parametrize(
    "system, size, where, field, value",
    [("tfim", "8", *case) for case in TFIM] + [("heisenberg", "2x4", *case) for case in HEISENBERG],
)
def test_every_field_is_checked(tmp_path, system, size, where, field, value):
    record = reference_record(system, size)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(record))
    hamiltonian = build_hamiltonian(system, size)
    assert load_reference(good, hamiltonian) == record["energy_per_site"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(edited(record, where, field, value)))
    expected = record[where[0]][field] if where else record[field]
    with pytest.raises(InputError, match=f"{field} is {value!r}, the trained system has {expected!r}"):
        load_reference(bad, hamiltonian)  # train, distill and profile read references through this
    params_entry = {"system": system, "size": size, "boundary": "open", "sign_rule": True if system != "tfim" else None}
    check_reference(record, params_entry, good)  # the report's check
    with pytest.raises(ReportInputError, match=field):
        check_reference(edited(record, where, field, value), params_entry, bad)


def test_plain_reference_refused_for_j1j2(tmp_path):
    """A reference without J2 (the plain model, as written before J2 existed) is J2 = 0, and the other way round."""
    plain, j1j2 = build_hamiltonian("heisenberg", "2x4"), build_hamiltonian("heisenberg", "2x4", j2=0.5)
    for written, read, message in ((plain, j1j2, "J2 is 0.0, the trained system has 0.5"), (j1j2, plain, "J2 is 0.5")):
        path = tmp_path / "ref.json"
        path.write_text(json.dumps(reference_record_of(written)))
        with pytest.raises(InputError, match=message):
            load_reference(path, read)
    entry = {"system": "heisenberg", "size": "2x4", "boundary": "open", "j2": 0.5}
    with pytest.raises(ReportInputError, match="J2"):
        check_reference(reference_record_of(plain), entry, tmp_path / "ref.json")
    check_reference(reference_record_of(j1j2), entry, tmp_path / "ref.json")


def reference_record_of(hamiltonian) -> dict:
    from vqnqs.physics.reference import compute_reference

    return compute_reference(hamiltonian, "auto", None, None)


@pytest.fixture
def gamma3_reference(tmp_path, monkeypatch):
    """A Gamma = 1 reference, while the stages below are asked for Gamma = 3."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(reference_record("tfim", "8")))
    return path


@pytest.mark.parametrize("stage", ["train", "distill", "profile"])
def test_each_stage_refuses_before_work(tmp_path, gamma3_reference, model_dirs, capsys, stage):
    baseline, student, _ = model_dirs  # a train and a distill out dir of the TFIM chain of 8 (Gamma = 1)
    system = ["--system", "tfim", "--size", "8", "--gamma", "3", "--reference", str(gamma3_reference)]
    out = tmp_path / "out"
    dirs = {
        "train": ["--out-dir", str(out)],
        "distill": ["--teacher", str(baseline), "--bits", "6", "--out-dir", str(out)],
        "profile": ["--model-dir", str(student), "--baseline", str(baseline), "--out", str(out / "p.csv")],
    }[stage]
    capsys.readouterr()
    assert main([stage, *system, *dirs]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "gamma is 1.0, the trained system has 3.0" in err, err
    assert not out.exists() and not (tmp_path / "mlflow.db").exists()
