"""Multi-head vector quantiser (eqs. 4-8) and the VQ-NQS transformer built with it."""

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from vqnqs.models import (
    AutoregressiveTransformer,
    TransformerConfig,
    VectorQuantizer,
    VQConfig,
    VQTransformer,
    codebook_upkeep,
    from_teacher,
    make_vq_model,
    vq_shape_from_bits,
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models: one intra-op thread is fastest, and immune to OpenMP spinning on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def all_configs(n_sites: int) -> torch.Tensor:
    return (torch.arange(2**n_sites)[:, None] >> torch.arange(n_sites - 1, -1, -1)) & 1


def random_vq_model(config: TransformerConfig, vq: VQConfig, seed: int = 0, std: float = 0.5) -> VQTransformer:
    """Large random weights (far from uniform) and a codebook on the scale of the attention outputs."""
    model = make_vq_model(config, vq)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 1.0 if name.endswith("codebook") else std
            p.copy_(torch.randn(p.shape, generator=generator) * scale)
        for q in model.quantizers:
            q.initialized.fill_(True)  # keep this codebook (no data initialisation at an upkeep)
    return model.eval()


def quantizer(d: int = 8, heads: int = 2, codes: int = 5, dtype=torch.float64, **kwargs) -> VectorQuantizer:
    torch.manual_seed(0)
    vq = VectorQuantizer(d, VQConfig(heads=heads, codes=codes, **kwargs)).to(dtype)
    with torch.no_grad():
        vq.codebook.normal_()
    return vq


# --- the quantiser ---------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    d=st.sampled_from([4, 8, 16]),
    heads=st.sampled_from([1, 2, 4]),
    codes=st.integers(1, 16),
    n=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
)
def test_encode_is_nearest_codeword(d: int, heads: int, codes: int, n: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    vq = VectorQuantizer(d, VQConfig(heads=heads, codes=codes, vq_init="none")).double()
    with torch.no_grad():
        vq.codebook.copy_(torch.randn(vq.codebook.shape, generator=generator, dtype=torch.float64))
    x = torch.randn(3, n, d, generator=generator, dtype=torch.float64)
    codes_out = vq.encode(x)
    assert codes_out.shape == (3, n, heads) and codes_out.dtype == torch.int64
    rows = x.reshape(-1, heads, d // heads)
    for h in range(heads):
        dist = torch.cdist(rows[:, h], vq.codebook[h].detach())  # (n, Q), an independent computation
        chosen = dist.gather(1, codes_out.reshape(-1, heads)[:, h : h + 1]).squeeze(1)
        best = dist.min(dim=1)
        assert torch.all(chosen <= best.values + 1e-9)
        # Away from near-ties the code is exactly the argmin.
        top2 = dist.topk(min(2, codes), dim=1, largest=False).values
        clear = (top2[:, -1] - top2[:, 0] > 1e-9) if codes > 1 else torch.ones(len(dist), dtype=torch.bool)
        assert torch.equal(codes_out.reshape(-1, heads)[clear, h], best.indices[clear])
    # D = -||x_h - W_hj|| itself, against cdist.
    distances = vq.distances(x).reshape(-1, heads, codes)
    for h in range(heads):
        reference = torch.cdist(rows[:, h], vq.codebook[h].detach())
        torch.testing.assert_close(-distances[:, h], reference, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_forward_equals_decode_of_encode_bit_exact(dtype: torch.dtype, mode: str) -> None:
    vq = quantizer(d=16, heads=4, codes=7, dtype=dtype, vq_init="none")
    vq.train(mode == "train")
    x = torch.randn(5, 9, 16, dtype=dtype, requires_grad=True)
    out = vq(x)
    if mode == "train":
        assert out.requires_grad and out.grad_fn is not None  # the STE path, not the eval shortcut
    expected = vq.decode(vq.encode(x))
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.equal(out, expected)
    # decode really is the codebook rows, heads concatenated.
    codes = vq.encode(x)
    manual = torch.cat([vq.codebook[h][codes[..., h]] for h in range(4)], dim=-1)
    assert torch.equal(expected, manual)


def test_straight_through_gradients() -> None:
    """Eq. 8: the value is the one-hot selection, the gradient that of softmax(D) @ W."""
    vq = quantizer(d=8, heads=2, codes=5, vq_init="none").train()
    x = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    r = torch.randn(6, 8, dtype=torch.float64)
    (vq(x) * r).sum().backward()
    grad_x, grad_w = x.grad.clone(), vq.codebook.grad.clone()
    assert torch.isfinite(grad_x).all() and torch.isfinite(grad_w).all()
    assert grad_x.abs().sum() > 0 and grad_w.abs().sum() > 0

    # Reference, written independently: soft surrogate for x; one-hot selection + soft surrogate for W.
    x2 = x.detach().clone().requires_grad_(True)
    w = vq.codebook.detach().clone().requires_grad_(True)
    xh = x2.reshape(6, 2, 4)
    dist = -torch.cdist(xh.transpose(0, 1), w)  # (H, n, Q)
    soft = dist.softmax(-1)
    hard = F.one_hot(dist.argmax(-1), 5).to(dist.dtype)
    value = hard @ w + soft @ w.detach() - (soft @ w.detach()).detach()  # (H, n, e)
    (value.transpose(0, 1).reshape(6, 8) * r).sum().backward()
    torch.testing.assert_close(grad_x, x2.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grad_w, w.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("init", ["rows", "kmeans++"])
def test_data_initialisation_at_the_first_upkeep(init: str) -> None:
    vq = quantizer(d=8, heads=2, codes=6, vq_init=init)
    x = torch.randn(4, 10, 8, dtype=torch.float64)
    before = vq.codebook.detach().clone()
    vq.eval()
    vq(x)  # eval: no initialisation
    with torch.no_grad():
        vq.train()(x)  # no gradients (e.g. sampling): no initialisation either
    vq.train()(x.clone().requires_grad_(True))  # a training forward is pure as well
    assert not bool(vq.initialized) and torch.equal(vq.codebook.detach(), before)

    out = vq.upkeep(x.requires_grad_(True))
    assert bool(vq.initialized)
    rows = x.detach().reshape(-1, 2, 4)
    for h in range(2):
        book = vq.codebook[h].detach()
        # Every codeword is one of the head's input rows, and all are distinct.
        assert (book[:, None, :] == rows[None, :, h]).all(dim=-1).any(dim=1).all()
        assert torch.unique(book, dim=0).shape[0] == 6
    assert torch.equal(out, vq.decode(vq.encode(x)))
    assert torch.equal(vq.train()(x), out)  # the forward from now on
    # The codebook is fitted once: a second batch leaves it alone.
    fitted = vq.codebook.detach().clone()
    vq.upkeep(torch.randn(4, 10, 8, dtype=torch.float64, requires_grad=True))
    assert torch.equal(vq.codebook.detach(), fitted)


def test_dead_code_replacement() -> None:
    vq = quantizer(d=4, heads=1, codes=4, vq_init="none", dead_after=2).train()
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[[0.0] * 4, [1.0] * 4, [-1.0] * 4, [100.0] * 4]], dtype=torch.float64))

    def batch() -> torch.Tensor:
        centres = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64).repeat(7)[:, None]  # (21, 1): codes 0-2
        return (centres + 0.1 * torch.randn(21, 4, dtype=torch.float64)).requires_grad_(True)

    vq.upkeep(batch())
    vq(batch())  # a forward (training mode, gradients): counts nothing
    assert vq.unused_steps[0].tolist() == [0, 0, 0, 1]
    vq.upkeep(batch())
    assert vq.unused_steps[0, 3] == 2 and vq.usage_ema[0, 3] < 0.25
    assert vq.codebook[0, 3, 0] == 100.0  # still there: replacement happens at the next upkeep's start
    x = batch()
    out = vq.upkeep(x)
    new = vq.codebook[0, 3].detach()
    assert not torch.equal(new, torch.full((4,), 100.0, dtype=torch.float64))
    assert (x.detach() == new).all(dim=1).any()  # re-seeded with a row of that batch
    assert torch.equal(out, vq.decode(vq.encode(x)))
    assert vq.unused_steps[0, 3] <= 1  # reset at re-seeding (then counted for this step)
    assert torch.equal(vq.codebook[0, :3].detach()[0], torch.zeros(4, dtype=torch.float64))


def test_dead_code_replacement_disabled() -> None:
    vq = quantizer(d=4, heads=1, codes=4, vq_init="none", dead_after=0).train()
    with torch.no_grad():
        vq.codebook[0, 3] = 100.0
    for _ in range(5):
        vq.upkeep(torch.randn(20, 4, dtype=torch.float64, requires_grad=True))
    assert vq.unused_steps[0, 3] == 5 and (vq.codebook[0, 3] == 100.0).all()


def test_state_dict_round_trip_weights_only() -> None:
    vq = quantizer(d=8, heads=2, codes=6, vq_init="kmeans++", dead_after=3).train()
    for _ in range(4):
        vq.upkeep(torch.randn(30, 8, dtype=torch.float64, requires_grad=True))
    buffer = io.BytesIO()
    torch.save(vq.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert set(state) == {"codebook", "initialized", "usage_ema", "unused_steps"}
    fresh = VectorQuantizer(8, vq.config).double()
    fresh.load_state_dict(state)
    for name, value in vq.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    x = torch.randn(7, 8, dtype=torch.float64)
    assert torch.equal(fresh.encode(x), vq.encode(x))
    # Loaded as initialised: the upkeep goes on from the loaded codebook, no re-initialisation.
    fresh.train().upkeep(x.requires_grad_(True))
    assert torch.equal(fresh.codebook.detach(), vq.codebook.detach())


def test_config_and_bits() -> None:
    assert [vq_shape_from_bits(b) for b in (6, 12, 24, 48)] == [(1, 64), (2, 64), (4, 64), (8, 64)]
    assert VQConfig.from_bits(24).heads == 4 and VQConfig.from_bits(24).bits == 24
    assert VQConfig(heads=3, codes=16).bits == 12
    with pytest.raises(ValueError, match="bits"):
        vq_shape_from_bits(7)
    with pytest.raises(ValueError, match="init"):
        VQConfig(vq_init="lloyd")
    with pytest.raises(ValueError, match="heads"):
        VectorQuantizer(10, VQConfig(heads=4))


# --- the VQ transformer ----------------------------------------------------------------------------

CONFIGS = [
    pytest.param(TransformerConfig((8,), 2, d_model=16, n_heads=2, n_blocks=2), id="chain8"),
    pytest.param(TransformerConfig((2, 4), 1, d_model=16, n_heads=4, n_blocks=1, n_down=4), id="2x4-sz"),
]


def test_quantiser_in_every_full_block_only() -> None:
    config = TransformerConfig((8,), 2, d_model=16, n_heads=2, n_blocks=3)
    model = make_vq_model(config, VQConfig(heads=4, codes=8))
    assert isinstance(model, AutoregressiveTransformer)
    assert all(isinstance(b.attn.quantizer, VectorQuantizer) for b in model.blocks)
    assert len(model.quantizers) == 3
    assert isinstance(model.final_block.attn.quantizer, nn.Identity)
    # The slot sits after attend and before W_O: forward = out_proj(quantizer(attend(...))).
    seen = []
    model.blocks[0].attn.quantizer.register_forward_hook(lambda m, a, o: seen.append((a[0].shape, o.shape)))
    model.eval().log_prob(torch.zeros(3, 8, dtype=torch.long))
    assert seen == [(torch.Size([3, 4, 16]), torch.Size([3, 4, 16]))]


@pytest.mark.parametrize("config", CONFIGS)
def test_vq_model_normalised_and_samples_exactly(config: TransformerConfig) -> None:
    model = random_vq_model(config, VQConfig(heads=2, codes=4)).double()
    configs = all_configs(config.n_sites)
    with torch.no_grad():
        log_p = model.log_prob(configs)
    assert log_p[torch.isfinite(log_p)].double().exp().sum().item() == pytest.approx(1.0, abs=1e-10)
    assert log_p[torch.isfinite(log_p)].std() > 0.3
    cached = model.sample(50, generator=torch.Generator().manual_seed(3))
    uncached = model.sample(50, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.isfinite(model.log_prob(cached)).all()


def test_training_mode_gives_the_same_values() -> None:
    config = TransformerConfig((8,), 2, d_model=16, n_heads=2, n_blocks=2)
    model = random_vq_model(config, VQConfig(heads=2, codes=4, dead_after=0)).double()
    s = all_configs(8)
    with torch.no_grad():
        reference = model.log_prob(s)
    train = model.train().log_prob(s)  # STE path with gradients
    assert torch.equal(train.detach(), reference)
    train.sum().backward()
    assert all(q.codebook.grad is not None and q.codebook.grad.abs().sum() > 0 for q in model.quantizers)


def test_state_dict_round_trip_of_the_model() -> None:
    config = TransformerConfig((8,), 2, d_model=16, n_heads=2, n_blocks=2)
    model = random_vq_model(config, VQConfig(heads=2, codes=4)).double()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = make_vq_model(config, VQConfig(heads=2, codes=4)).double().eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    s = all_configs(8)
    assert torch.equal(fresh.log_prob(s), model.log_prob(s))


def test_from_teacher_copies_every_matching_weight() -> None:
    config = TransformerConfig((8,), 2, d_model=16, n_heads=2, n_blocks=2)
    teacher = AutoregressiveTransformer(config)
    student = make_vq_model(config, VQConfig(heads=2, codes=4))
    copied = from_teacher(student, teacher)
    assert sorted(copied) == sorted(teacher.state_dict())
    student_state = student.state_dict()
    for name in copied:
        assert torch.equal(student_state[name], teacher.state_dict()[name])
    assert not any("quantizer" in name for name in copied)
    # Shapes that do not match are skipped, not forced.
    wider = AutoregressiveTransformer(TransformerConfig((8,), 2, d_model=32, n_heads=2, n_blocks=2))
    assert from_teacher(student, wider) == ["head.bias"]  # (vocab,): the only shape that matches


def test_per_sample_derivatives_leave_the_state_alone() -> None:
    """``vmap(grad(...))`` (SR's log-derivatives) works through the STE and does not touch the buffers."""
    from vqnqs.vmc.gradient import log_derivatives

    config = TransformerConfig((4,), 2, d_model=8, n_heads=2, n_blocks=1)
    model = random_vq_model(config, VQConfig(heads=2, codes=3, dead_after=1)).double().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    s = all_configs(4)
    o = log_derivatives(model, s)
    assert o.shape == (16, model.n_params) and torch.isfinite(o).all()
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    # Row 0 against a plain backward pass.
    model.zero_grad()
    model.log_psi(s[:1]).sum().backward()
    direct = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(o[0], direct)


# --- codebook upkeep of a model --------------------------------------------------------------------


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def assert_same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


def quantizer_inputs(model: VQTransformer, s: torch.Tensor) -> list[torch.Tensor]:
    """The input of every quantiser in a no-grad forward on ``s``, block after block."""
    seen: list[torch.Tensor] = []
    handles = [q.register_forward_hook(lambda m, a, o: seen.append(a[0].detach())) for q in model.quantizers]
    try:
        with torch.no_grad():
            model.log_prob(s)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_forward_never_changes_the_state() -> None:
    """Uninitialised codebooks and codes about to be re-seeded: no forward touches them, in any mode."""
    from vqnqs.vmc.gradient import log_derivatives

    config = TransformerConfig((4,), 2, d_model=8, n_heads=2, n_blocks=2)
    model = make_vq_model(config, VQConfig(heads=2, codes=3, dead_after=1)).double()
    s = all_configs(4)
    fresh = model_state(model)
    for training in (False, True):
        model.train(training)
        model.log_psi(s).sum().backward()
        with torch.no_grad():
            model.log_psi(s)
        model.sample(4, generator=torch.Generator().manual_seed(0))
        assert_same_state(model, fresh)
    codebook_upkeep(model, s)
    codebook_upkeep(model, s[:1])  # one code per head used: the others are dead at the next upkeep
    assert all(bool((q.unused_steps >= 1).any()) for q in model.quantizers)
    kept = model_state(model)
    for training in (False, True):
        model.train(training)
        model.log_psi(s).sum().backward()
        with torch.no_grad():
            model.log_psi(s)
        log_derivatives(model, s)  # vmap(grad(...))
        assert_same_state(model, kept)


@pytest.mark.parametrize("init", ["kmeans++", "rows"])
def test_codebook_upkeep_fits_every_block_to_its_inputs(init: str) -> None:
    """Block after block: each codebook is fitted to the inputs it gets from the UPDATED blocks before it,
    and the usage recorded is that of the codes the forward then assigns."""
    config = TransformerConfig((8,), 2, d_model=16, n_heads=2, n_blocks=3)
    model = make_vq_model(config, VQConfig(heads=2, codes=4, vq_init=init)).double()
    s = torch.randint(0, 2, (16, 8), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    assert codebook_upkeep(model.train(), s) is None
    assert all(bool(q.initialized) for q in model.quantizers)
    inputs = quantizer_inputs(model, s)
    for q, x in zip(model.quantizers, inputs, strict=True):
        rows = x.reshape(-1, 2, 8)
        for h in range(2):
            book = q.codebook[h].detach()
            assert (book[:, None, :] == rows[None, :, h]).all(dim=-1).any(dim=1).all()  # codewords are input rows
        codes = q.encode(x).reshape(-1, 2)  # what the forward assigns from now on
        used = torch.zeros(2, 4, dtype=torch.bool)
        used[torch.arange(2).expand_as(codes), codes] = True
        assert torch.equal(q.unused_steps == 0, used)  # the usage recorded is that of these codes
    # The training forward after the upkeep: the recorded codes, the value of decode(encode(x)).
    with torch.no_grad():
        reference = model.eval().log_prob(s)
    assert torch.equal(model.train().log_prob(s).detach(), reference)


def test_codebook_upkeep_reseeds_dead_codes_of_every_block() -> None:
    config = TransformerConfig((8,), 2, d_model=16, n_heads=2, n_blocks=2)
    model = make_vq_model(config, VQConfig(heads=1, codes=8, vq_init="rows", dead_after=1)).double()
    generator = torch.Generator().manual_seed(2)
    torch.manual_seed(0)
    codebook_upkeep(model, torch.randint(0, 2, (32, 8), generator=generator))
    codebook_upkeep(model, torch.zeros(1, 8, dtype=torch.long))  # one configuration: at most 4 codes used
    dead = [q.unused_steps >= 1 for q in model.quantizers]
    assert all(bool(d.any()) for d in dead)
    before = [q.codebook.detach().clone() for q in model.quantizers]
    s = torch.randint(0, 2, (32, 8), generator=generator)
    codebook_upkeep(model, s)
    for q, x, d, old in zip(model.quantizers, quantizer_inputs(model, s), dead, before, strict=True):
        new = q.codebook.detach()
        assert torch.equal(new[~d], old[~d])  # live codes kept
        assert (new[d][:, None, :] == x.reshape(1, -1, 16)).all(dim=-1).any(dim=1).all()  # dead ones: input rows


def test_codebook_upkeep_without_quantizers_is_a_no_op() -> None:
    model = AutoregressiveTransformer(TransformerConfig((8,), 2, d_model=8, n_heads=2, n_blocks=1))
    state, rng = model_state(model), torch.random.get_rng_state()
    assert codebook_upkeep(model, all_configs(8)) is None
    assert_same_state(model, state)
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_codebook_upkeep_resumes_from_a_state_dict() -> None:
    """A model loaded from a state_dict goes on with the same upkeep (and the same global RNG draws)."""
    config = TransformerConfig((8,), 2, d_model=16, n_heads=2, n_blocks=2)
    vq = VQConfig(heads=2, codes=6, vq_init="kmeans++", dead_after=2)
    model = make_vq_model(config, vq).double()
    generator = torch.Generator().manual_seed(4)
    batches = [torch.randint(0, 2, (n, 8), generator=generator) for n in (24, 2, 2, 24)]
    torch.manual_seed(1)
    for s in batches[:3]:
        codebook_upkeep(model, s)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = make_vq_model(config, vq).double()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    rng = torch.random.get_rng_state()
    codebook_upkeep(model, batches[3])
    torch.random.set_rng_state(rng)
    codebook_upkeep(fresh, batches[3])
    assert_same_state(fresh, model_state(model))


def test_from_teacher_copies_a_quantiser_whole_or_not_at_all() -> None:
    """A VQ source of another bandwidth: its codebooks do not fit, so none of its quantiser state is taken (the
    student's quantisers stay uninitialised, to be fitted to data at their first upkeep)."""
    config = TransformerConfig((4, 4), 2, 16, 2, 1)
    source = random_vq_model(config, VQConfig(heads=2, codes=8))
    same, other = make_vq_model(config, VQConfig(heads=2, codes=8)), make_vq_model(config, VQConfig(heads=4, codes=8))
    copied_same, copied_other = from_teacher(same, source), from_teacher(other, source)
    assert all(bool(q.initialized) for q in same.quantizers) and "blocks.0.attn.quantizer.initialized" in copied_same
    assert not any(bool(q.initialized) for q in other.quantizers)
    assert not any("quantizer" in name for name in copied_other)
    assert "blocks.0.attn.qkv_proj.weight" in copied_other
