"""J2 in what identifies a system: a model of the plain Heisenberg model (no J2 in its info) is J2 = 0."""

import pytest

from vqnqs.io import InputError
from vqnqs.models import AutoregressiveTransformer, TransformerConfig
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.stages.inputs import check_model_fits, system_from_info, system_info
from vqnqs.stages.settings import hamiltonian_from


@pytest.fixture(scope="module")
def model():
    return AutoregressiveTransformer(TransformerConfig((2, 4), patch=2, d_model=8, n_heads=2, n_blocks=1))


def test_system_info_round_trip():
    j1j2 = build_hamiltonian("heisenberg", "2x4", "periodic", j2=0.5, sign_rule=False)
    info = system_info(j1j2)
    assert info["J2"] == 0.5
    assert hamiltonian_from(system_from_info(info, "model.pt")).describe() == j1j2.describe()
    plain = system_info(build_hamiltonian("heisenberg", "2x4"))
    assert "J2" not in plain and system_from_info(plain, "model.pt")["j2"] == 0.0


def test_model_of_other_j2_refused(model, tmp_path):
    plain, j1j2 = build_hamiltonian("heisenberg", "2x4"), build_hamiltonian("heisenberg", "2x4", j2=0.5)
    path = tmp_path / "model.pt"
    check_model_fits(model, system_info(plain), plain, path)
    check_model_fits(model, system_info(j1j2), j1j2, path)
    with pytest.raises(InputError, match="trained for J2 0.0, this run has 0.5"):
        check_model_fits(model, system_info(plain), j1j2, path)
    with pytest.raises(InputError, match="trained for J2 0.5, this run has 0.0"):
        check_model_fits(model, system_info(j1j2), plain, path)
