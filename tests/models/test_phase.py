"""The phase network: it learns Marshall's signs by VMC, and it travels with the model (VQ, files, students)."""

import math

import pytest
import torch

from tests.vmc.conftest import one_thread  # noqa: F401  (autouse: tiny models, one thread)
from vqnqs.models import AutoregressiveTransformer, TransformerConfig, VQConfig, from_teacher, make_vq_model
from vqnqs.physics.basis import all_configurations
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.vmc.checkpoint import build_from_state, model_config_to_dict
from vqnqs.vmc.config import VMCConfig
from vqnqs.vmc.optim import make_optimizer
from vqnqs.vmc.step import VMCContext, fit_distance, vmc_step


def marshall_agreement(model: AutoregressiveTransformer, hamiltonian) -> float:
    """The probability mass on which the sign of ``psi`` (up to its best global phase ``phi_0``) is Marshall's,
    ``(-1)^(down spins on sublattice B)``: sum over the sector of ``P(s) [cos(phi(s) - pi N_B(s) - phi_0) > 0]``
    with ``phi_0 = arg sum_s P(s) exp(i (phi(s) - pi N_B(s)))``."""
    n = hamiltonian.n_sites
    s = all_configurations(n, n // 2)
    with torch.no_grad():
        log_psi = model.log_psi(s).to(torch.complex128)
    p = (2 * log_psi.real).exp()
    p = p / p.sum()
    marshall = math.pi * (s * torch.tensor(hamiltonian.lattice.sublattice)).sum(dim=1)
    offset = log_psi.imag - marshall
    phi0 = torch.angle((p * torch.exp(1j * offset)).sum())
    return float((p * (torch.cos(offset - phi0) > 0)).sum())


def test_a_phase_network_trained_without_the_sign_rule_finds_marshalls_signs():
    """2x4 Heisenberg, H without Marshall's rotation (its ground state has signs): 200 SR steps of a small model
    put >= 99.9 % of the probability mass on Marshall's sign; at the start it is a coin toss."""
    torch.manual_seed(0)
    hamiltonian = build_hamiltonian("heisenberg", "2x4", sign_rule=False)
    config = TransformerConfig((2, 4), 2, d_model=16, n_heads=2, n_blocks=1, n_down=4, phase_blocks=1)
    model = AutoregressiveTransformer(config)
    vmc = VMCConfig(steps=200, n_samples=256, lr=0.02, lr_final=0.002)
    optimizer = make_optimizer("sr", model.parameters(), vmc.lr)
    generator = torch.Generator().manual_seed(1)
    assert marshall_agreement(model, hamiltonian) < 0.9
    context = VMCContext(hamiltonian, optimizer, generator, chunk_size=1024, engine="dedup")
    for step in range(1, vmc.steps + 1):
        vmc_step(model, vmc, context, step)
    assert marshall_agreement(model, hamiltonian) >= 0.999


CONFIG = TransformerConfig((2, 4), 2, d_model=8, n_heads=2, n_blocks=1, n_down=4, phase_blocks=2)


def test_a_model_with_a_phase_round_trips_through_its_stored_form():
    model = make_vq_model(CONFIG, VQConfig(heads=2, codes=4)).double()
    assert len(model.quantizers) == CONFIG.n_blocks + CONFIG.phase_blocks  # the encoder is quantised too
    record = model_config_to_dict(CONFIG)
    assert record["phase_blocks"] == 2
    rebuilt = build_from_state("model.pt", record, model.state_dict(), {"heads": 2, "codes": 4})
    s = all_configurations(8, 4)
    torch.testing.assert_close(rebuilt.log_psi(s), model.log_psi(s), rtol=0, atol=0)
    # A file written before the phase network existed has no phase_blocks: a real model, as it was.
    old = {key: value for key, value in record.items() if key != "phase_blocks"}
    real = AutoregressiveTransformer(TransformerConfig(**old))
    assert real.phase is None and not real.log_psi(s).is_complex()


def test_a_student_starts_from_the_teachers_phase():
    """Distillation's start: every phase-network weight is the teacher's; only the encoder's quantisers are new."""
    teacher = AutoregressiveTransformer(CONFIG).double()
    student = make_vq_model(CONFIG, VQConfig(heads=2, codes=4)).double()
    copied = set(from_teacher(student, teacher))
    phase_weights = {name for name in teacher.state_dict() if name.startswith("phase.")}
    assert phase_weights and phase_weights <= copied
    for name in phase_weights:
        assert torch.equal(student.state_dict()[name], teacher.state_dict()[name])


def test_the_fit_distance_is_blind_to_a_phase_of_two_pi():
    delta = torch.tensor([0.3 + 0.0j, 0.0 + 2 * math.pi * 1j, 0.1 + 0.2j], dtype=torch.complex128)
    distance = fit_distance(delta)
    assert distance[0].item() == pytest.approx(0.09)
    assert distance[1].item() == pytest.approx(0.0, abs=1e-12)
    assert distance[2].item() == pytest.approx(0.01 + 0.04, rel=1e-2)  # |delta|^2 to second order
    real = torch.tensor([0.5, -1.0], dtype=torch.float64)
    torch.testing.assert_close(fit_distance(real), real**2)
