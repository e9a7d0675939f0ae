"""VMC of a VQ-NQS: its energy gradient is eq. 3 with the straight-through derivatives of eq. 8, on every route.

On a tiny chain every configuration is enumerated with its exact probability as weight, so the estimators
of the VMC step are exact: the SR route (per-sample log-derivatives by ``vmap(grad)``, then the force) and
the Adam route (autograd of the eq. 3 surrogate) must both equal the gradient of the same surrogate through a
quantiser written here from the paper's eq. 8. The codebook upkeep is one function, called the same way
after either optimiser's update.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from vqnqs.models import TransformerConfig, VectorQuantizer, VQConfig, make_vq_model
from vqnqs.physics.basis import all_configurations
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.vmc import step as step_module
from vqnqs.vmc.config import VMCConfig
from vqnqs.vmc.gradient import energy_loss, log_derivatives
from vqnqs.vmc.local_energy import local_energy
from vqnqs.vmc.optim import make_optimizer, sr_direction


def vq_chain_model(seed: int = 0):
    """A VQ-NQS on 6 sites (3 tokens), 2 heads of 4 codes, with large random weights (several codes in use)."""
    model = make_vq_model(TransformerConfig((6,), 2, 8, 2, 1), VQConfig(heads=2, codes=4, vq_init="none")).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * (1.0 if "codebook" in name else 0.5))
        for q in model.quantizers:
            q.initialized.fill_(True)
    return model.train()


def eq8_forward(self: VectorQuantizer, x: torch.Tensor, codes_only: bool = False) -> torch.Tensor:
    """Eq. 8 as the paper writes it: D_hj = -||x_h - W_hj||, g = SG[onehot(argmax D)] + softmax(D) - SG[softmax(D)],
    value_h = g_h @ W_h."""
    lead = x.shape[:-1]
    rows = x.reshape(-1, self.heads, self.d_model // self.heads).transpose(0, 1)  # (H, n, e)
    distance = -torch.cdist(rows, self.codebook)  # (H, n, Q)
    soft = distance.softmax(-1)
    g = F.one_hot(distance.argmax(-1), self.codes).to(distance.dtype) + soft - soft.detach()
    return (g @ self.codebook).transpose(0, 1).reshape(*lead, self.d_model)


def flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def test_the_vmc_gradient_of_a_vq_model_is_eq3_through_eq8(monkeypatch):
    hamiltonian = build_hamiltonian("tfim", "6")
    model = vq_chain_model()
    s = all_configurations(6)  # (64, 6)
    with torch.no_grad():
        probs = model.log_prob(s).exp()  # (64,) exact |psi|^2, sums to 1
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-12)
    e_loc = local_energy(hamiltonian, model, s)  # (64,)
    codes = []
    handle = model.quantizers[0].register_forward_hook(lambda q, args, out: codes.append(q.encode(args[0])))
    with torch.no_grad():
        model.log_psi(s)
    handle.remove()
    assert len(codes[0].reshape(-1, 2).unique(dim=0)) >= 4  # the hidden states take several codes: not a constant

    # SR route: per-sample log-derivatives (vmap of grad), then 2 F with the exact weights.
    _, gradient_sr = sr_direction(log_derivatives(model, s), e_loc, 1e-3, probs)
    # Adam route: autograd of the eq. 3 surrogate.
    model.zero_grad()
    energy_loss(model.log_psi(s), e_loc, probs).backward()
    gradient_adam = flat_grad(model)
    # The definition: the same surrogate through the quantiser of eq. 8 written above.
    reference = copy.deepcopy(model)
    monkeypatch.setattr(VectorQuantizer, "forward", eq8_forward)
    reference.zero_grad()
    energy = (probs * e_loc).sum()
    (2.0 * probs * (e_loc - energy) * reference.log_psi(s)).sum().backward()
    gradient_eq8 = flat_grad(reference)

    assert gradient_eq8.norm() > 1e-3
    codebook_grads = [q.codebook.grad.norm() for q in reference.quantizers]
    assert all(g > 0 for g in codebook_grads)  # the codebook learns through eq. 8 too
    torch.testing.assert_close(gradient_adam, gradient_eq8, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gradient_sr.to(gradient_eq8.dtype), gradient_eq8, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("optimizer", ["sr", "adam"])
def test_codebook_upkeep_runs_identically_under_adam_and_sr(monkeypatch, optimizer):
    """Each step calls the one upkeep once, after the update, on the step's own samples; replaying that call on
    the recorded state gives the recorded result (so the upkeep depends on nothing the optimiser owns)."""
    hamiltonian = build_hamiltonian("tfim", "6")
    model = make_vq_model(TransformerConfig((6,), 2, 8, 2, 1), VQConfig(heads=2, codes=4, dead_after=2)).double()
    opt = make_optimizer(optimizer, model.parameters(), 0.01)
    calls = []
    upkeep = step_module.codebook_upkeep

    def recorded(model_, samples):
        before = copy.deepcopy(model_.state_dict())
        rng = torch.random.get_rng_state()
        upkeep(model_, samples)
        calls.append((before, samples.clone(), rng, copy.deepcopy(model_.state_dict())))

    monkeypatch.setattr(step_module, "codebook_upkeep", recorded)
    vmc = VMCConfig(steps=4, n_samples=64, lr=0.01, lr_final=0.01)
    generator = torch.Generator().manual_seed(0)
    context = step_module.VMCContext(hamiltonian, opt, generator, chunk_size=64, engine="dedup")
    for step in range(1, 5):
        step_module.vmc_step(model, vmc, context, step)
        assert len(calls) == step
        before, samples, rng, after = calls[-1]
        for key, value in model.state_dict().items():
            assert torch.equal(value, after[key]), key  # nothing touched the model after the upkeep
        replay = copy.deepcopy(model)
        replay.load_state_dict(before)
        torch.random.set_rng_state(rng)
        upkeep(replay, samples)
        for key, value in replay.state_dict().items():
            assert torch.equal(value, after[key]), key
    assert all(bool(q.initialized) for q in model.quantizers)  # the first upkeep initialised from data
    changed = [not torch.equal(calls[0][0][k], calls[0][3][k]) for k in calls[0][0] if k.endswith("codebook")]
    assert any(changed)
