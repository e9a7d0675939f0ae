"""Multi-head vector quantiser (paper eqs. 4-8) and the VQ-NQS transformer built around it.

The quantiser sits in the ``attn.quantizer`` slot of every FULL block of the baseline transformer
(after the causal mixing, before ``W_O`` and the residual add); the final attention-only half-block
keeps its ``nn.Identity`` unless ``quantize_final`` is set. For an input row ``x (d,)`` split into ``H``
heads ``x_h (d/H,)``::

    D_hj   = -||x_h - W_hj||                       codebook W: (H, Q, d/H)
    code_h = argmax_j D_hj                          (the nearest codeword; ties -> lowest index)
    value  = concat_h W_h[code_h]                   (d,)

Training uses the straight-through estimator of eq. 8 on ``z = D_h``::

    g(z)  = SG[onehot(argmax z)] + (softmax(z) - SG[softmax(z)])        value = g(z) @ W_h

``softmax(z) - SG[softmax(z)]`` is exactly zero in value (``a - a == 0`` in IEEE arithmetic), so ``g`` is
exactly the one-hot vector and ``g @ W_h`` exactly the codebook row: ``forward(x) == decode(encode(x))``
bit for bit in both modes. Gradients reach ``x`` (and ``W``) through the softmax of the distances, and
``W`` also through the one-hot selection.

``forward`` is pure: it never changes the codebook or a buffer, in any mode (so ``torch.func`` transforms
such as ``vmap(grad(...))`` apply to it as to any other module).

Codebook upkeep is explicit: :meth:`VectorQuantizer.upkeep` on one batch of inputs, or for a whole model
:func:`codebook_upkeep`, which a training step calls once before its forward. State (all buffers, so
``state_dict`` round-trips and loads with ``weights_only=True``):

- ``initialized`` (bool): the codebook has been fitted to data. The first upkeep initialises it from its
  inputs (``vq_init="kmeans++"``: D^2-sampling per head; ``"rows"``: random distinct input rows; ``"none"``:
  keep the random normal init).
- ``usage_ema (H, Q)``: EMA of the fraction of rows assigned to each code (statistics).
- ``unused_steps (H, Q)``: upkeep steps since each code was last used. A code unused for ``dead_after``
  steps is re-seeded with a random row of the next upkeep's inputs (dead-code replacement).

An upkeep changes the codebook FIRST and then records the usage of the codes assigned with the updated
codebook: the codes that the step's forward then assigns to the same inputs.

Distances are computed as ``||x||^2 - 2 x.W^T + ||W||^2`` with explicit matmuls (a CPU FLOP counter sees
them), clamped at a tiny positive value before the square root (so its gradient stays finite).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from vqnqs.knobs import Config, knob
from vqnqs.models import voronoi
from vqnqs.models.transformer import AutoregressiveTransformer, TransformerConfig

INIT_METHODS = ("kmeans++", "rows", "none")
DEFAULT_CODES = 64
# Squared distances are clamped here before the sqrt: sqrt'(0) = inf would give NaN gradients for an
# input that sits exactly on a codeword (as the data-initialised ones do). Far below any real distance.
_MIN_SQUARED_DISTANCE = 1e-12


@dataclass(frozen=True)
class CodebookConfig(Config):
    """The codebooks of a quantiser apart from their number: the knobs of a stage that builds one."""

    # Codes per codebook (head): bits = heads * log2(codes), so 64 codes give 6 bits per head.
    codes: int = knob(DEFAULT_CODES, minimum=1)
    # Data-driven codebook initialisation at the first upkeep: 'kmeans++' | 'rows' | 'none'.
    vq_init: str = knob("kmeans++", choices=INIT_METHODS)
    # Re-seed a code unused for this many upkeep steps with a row of the current batch; 0 disables.
    dead_after: int = knob(100, minimum=0)
    # Quantise the final attention-only half-block too: then a row whose code and input state are its sample's
    # keeps its conditional, so the output of a connected configuration is computed only where codes change
    # (with position attention, the rows near the flip).
    quantize_final: bool = knob(False)


@dataclass(frozen=True)
class VQConfig(CodebookConfig):
    """Multi-head vector quantiser: ``heads`` codebooks of ``codes`` entries, bandwidth ``heads*log2(codes)`` bits."""

    # Codebooks, one per head of d_model / heads channels.
    heads: int = knob(2, minimum=1)
    # Decay of the EMA usage statistics (per upkeep step).
    ema_decay: float = knob(0.99, minimum=0, exclusive_maximum=1)
    # Std of the random normal codebook before (or without) data initialisation.
    init_std: float = knob(0.02, exclusive_minimum=0)

    @property
    def bits(self) -> float:
        """Bandwidth per location: ``heads * log2(codes)``."""
        return self.heads * math.log2(self.codes)

    @classmethod
    def from_bits(cls, bits: int, codes: int = DEFAULT_CODES, **kwargs) -> VQConfig:
        """``bits`` -> ``heads = bits / log2(codes)`` heads of ``codes`` codes (6/12/24/48 -> 1/2/4/8 x 64)."""
        heads, codes = vq_shape_from_bits(bits, codes)
        return cls(heads=heads, codes=codes, **kwargs)

    @classmethod
    def from_dict(cls, record: dict) -> VQConfig:
        """The inverse of ``dataclasses.asdict``, also of the dicts stored before ``init`` was named ``vq_init``."""
        record = dict(record)
        if "init" in record:
            record["vq_init"] = record.pop("init")
        return cls(**record)


def vq_shape_from_bits(bits: int, codes: int = DEFAULT_CODES) -> tuple[int, int]:
    """``(heads, codes)`` with ``heads * log2(codes) == bits``; raises ``ValueError`` if none exists."""
    per_head = math.log2(codes)
    heads = round(bits / per_head) if per_head > 0 else 0
    if codes < 2 or heads < 1 or not math.isclose(heads * per_head, bits):
        raise ValueError(f"bits {bits}: not a positive multiple of log2(codes={codes}) = {per_head:g}")
    return heads, codes


def _kmeans_pp(rows: Tensor, k: int) -> Tensor:
    """k-means++ seeding (D^2 sampling, no Lloyd iterations): ``rows (n, e)`` -> ``(k, e)`` centres.

    Once every distinct row is chosen, the remaining centres are uniform random rows (duplicates).
    """
    n = rows.shape[0]
    chosen = [torch.randint(n, (1,), device=rows.device)]
    d2 = ((rows - rows[chosen[0]]) ** 2).sum(-1)  # (n,) squared distance to the nearest centre
    for _ in range(k - 1):
        if d2.sum() > 0:
            pick = torch.multinomial(d2.double(), 1)
        else:
            pick = torch.randint(n, (1,), device=rows.device)
        chosen.append(pick)
        d2 = torch.minimum(d2, ((rows - rows[pick]) ** 2).sum(-1))
    return rows[torch.cat(chosen)]


def _random_distinct_rows(rows: Tensor, k: int) -> Tensor:
    """``k`` random distinct rows of ``rows (n, e)`` (with repeats only if there are fewer than ``k``)."""
    distinct = torch.unique(rows, dim=0)  # float comparison: fine for an initialisation
    m = distinct.shape[0]
    if m >= k:
        return distinct[torch.randperm(m, device=rows.device)[:k]]
    extra = torch.randint(m, (k - m,), device=rows.device)
    return torch.cat([distinct, distinct[extra]])


class VectorQuantizer(nn.Module):
    """``(..., d) -> (..., d)`` multi-head vector quantiser; see the module docstring.

    ``encode(x) -> (..., H)`` int64 codes, ``decode(codes) -> (..., d)``, ``forward(x)`` the quantised
    rows (straight-through gradients in training; pure), ``distances(x) -> (..., H, Q)`` the logits ``D``,
    ``upkeep(x)`` one codebook-upkeep step on the inputs ``x`` (the only method that changes the state).
    """

    initialized: Tensor  # () bool
    usage_ema: Tensor  # (H, Q) float
    unused_steps: Tensor  # (H, Q) int64

    def __init__(self, d_model: int, config: VQConfig) -> None:
        super().__init__()
        if d_model % config.heads:
            raise ValueError(f"heads {config.heads}: must divide d_model={d_model}")
        self.config = config
        self.d_model = d_model
        self.heads = config.heads
        self.codes = config.codes
        self.head_dim = d_model // config.heads
        self.codebook = nn.Parameter(torch.randn(config.heads, config.codes, self.head_dim) * config.init_std)
        self.register_buffer("initialized", torch.tensor(config.vq_init == "none"))
        self.register_buffer("usage_ema", torch.full((config.heads, config.codes), 1.0 / config.codes))
        self.register_buffer("unused_steps", torch.zeros((config.heads, config.codes), dtype=torch.long))

    @property
    def bits(self) -> float:
        return self.config.bits

    def extra_repr(self) -> str:
        c = self.config
        return f"d_model={self.d_model}, heads={c.heads}, codes={c.codes}, bits={c.bits:g}, vq_init={c.vq_init!r}"

    # --- the quantiser proper ---

    def distances(self, x: Tensor) -> Tensor:
        """``x (..., d)`` -> ``D (..., H, Q) = -||x_h - W_hj||`` (via ``||x||^2 - 2 x.W^T + ||W||^2``)."""
        lead = x.shape[:-1]
        rows = rearrange(x.reshape(-1, self.d_model), "n (h e) -> h n e", h=self.heads)  # (H, n, e)
        w = self.codebook  # (H, Q, e)
        cross = torch.matmul(rows, w.transpose(1, 2))  # (H, n, Q)
        x_sq = (rows * rows).sum(-1, keepdim=True)  # (H, n, 1)
        w_sq = (w * w).sum(-1).unsqueeze(1)  # (H, 1, Q)
        d2 = (x_sq - 2.0 * cross + w_sq).clamp_min(_MIN_SQUARED_DISTANCE)
        neg_dist = -torch.sqrt(d2)  # (H, n, Q)
        return rearrange(neg_dist, "h n q -> n h q").reshape(*lead, self.heads, self.codes)

    def encode(self, x: Tensor) -> Tensor:
        """``x (..., d)`` -> codes ``(..., H)`` int64, the nearest codeword per head (ties -> lowest index).

        ``argmin_j ||x_h - W_hj||^2 = argmin_j (||W_hj||^2 - 2 x_h.W_hj)``: ``||x_h||^2`` is the same for every
        code, so the scores are one fused matmul and no square root. Every path (dense, dedup, training)
        takes its codes from here.
        """
        with torch.no_grad():
            scores = self._scores(x)  # (H, n, Q)
            return rearrange(scores.argmin(dim=-1), "h n -> n h").reshape(*x.shape[:-1], self.heads)

    def _scores(self, x: Tensor) -> Tensor:
        """``x (..., d)`` -> the encode scores ``||W_j||^2 - 2 x.W_j`` per head ``(H, n, Q)``; +inf for a codeword
        equal to one of lower index, so that duplicates never compete and every path picks the same one (the
        rounding of a batched product may differ in the last bit between batch shapes)."""
        rows = rearrange(x.reshape(-1, self.d_model), "n (h e) -> h n e", h=self.heads)  # (H, n, e)
        w = self.codebook  # (H, Q, e)
        scores = torch.baddbmm((w * w).sum(-1).unsqueeze(1), rows, w.transpose(1, 2), alpha=-2.0)  # (H, n, Q)
        same = (w[:, :, None, :] == w[:, None, :, :]).all(dim=-1).tril(diagonal=-1)  # (H, Q, Q): j > i, W_j = W_i
        return scores.masked_fill(same.any(dim=-1)[:, None, :], float("inf"))

    def certify(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (..., d)`` -> ``codes (..., H)`` (as :meth:`encode`) and a radius ``(..., H)``: every ``x'`` with
        ``||x'_h - x_h|| < radius_h`` has the same code in head ``h``, as :meth:`encode` computes it.

        The radius is the distance from ``x_h`` to the nearest face of its Voronoi cell less the rounding of
        the scores (:func:`vqnqs.models.voronoi.faces`). A tie gives radius 0; a duplicate codeword never
        competes (:meth:`_scores`). The incremental engine reuses a code only within this radius.
        """
        with torch.no_grad():
            codes, face = voronoi.faces(self, x)
            return codes, face.amin(dim=-1)

    def decode(self, codes: Tensor) -> Tensor:
        """``codes (..., H)`` -> ``(..., d)``: the codebook rows, heads concatenated."""
        head_index = torch.arange(self.heads, device=codes.device)
        values = self.codebook[head_index, codes]  # (..., H, e)
        return values.reshape(*codes.shape[:-1], self.d_model)

    def forward(
        self,
        x: Tensor,
        codes_only: bool = False,
        certify: bool = False,
        faces: bool = False,
        rivals: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``x (..., d)`` -> quantised ``(..., d)``; exactly ``decode(encode(x))`` in value. Pure (no state change).

        In training mode with gradients enabled the value carries the straight-through gradients of eq. 8;
        otherwise it is ``decode(encode(x))`` itself. ``codes_only=True`` returns ``encode(x)`` instead: the
        dedup engine calls it so, through ``__call__``, so that module hooks (FLOP counters) attribute the
        distances to this module. ``certify=True`` returns :meth:`certify` ``(codes, radius)`` (the same);
        ``faces=True`` the codes and every rival's face distance (:func:`vqnqs.models.voronoi.faces`);
        ``rivals=(codes, face, moved)`` the codes of the moved rows ``x (n, d)`` scored against their rivals
        only (:func:`vqnqs.models.voronoi.rival_codes`).
        """
        if certify:
            return self.certify(x)
        if faces or rivals is not None:
            with torch.no_grad():
                return voronoi.faces(self, x) if faces else voronoi.rival_codes(self, x, *rivals)
        codes = self.encode(x)  # (..., H)
        if codes_only:
            return codes
        if not (self.training and torch.is_grad_enabled()):
            return self.decode(codes)
        z = self.distances(x)  # (..., H, Q): only the straight-through gradient needs them
        # Eq. 8. The parentheses matter: (soft - SG[soft]) is exactly 0, so g is exactly one-hot.
        hard = torch.zeros_like(z).scatter(-1, codes.unsqueeze(-1), 1.0)
        soft = z.softmax(dim=-1)
        g = hard + (soft - soft.detach())  # (..., H, Q)
        g_rows = rearrange(g.reshape(-1, self.heads, self.codes), "n h q -> h n q")  # (H, n, Q)
        values = torch.matmul(g_rows, self.codebook)  # (H, n, e)
        return rearrange(values, "h n e -> n (h e)").reshape(x.shape)

    # --- codebook upkeep: data initialisation, dead-code replacement, usage statistics ---

    @torch.no_grad()
    def upkeep(self, x: Tensor) -> Tensor:
        """One upkeep step on the inputs ``x (..., d)``; returns their quantised value ``(..., d)``.

        First the codebook: fitted to the rows of ``x`` if not yet initialised, else its codes unused for
        ``dead_after`` steps re-seeded with rows of ``x``. Then the usage of the codes that the updated
        codebook assigns to ``x`` is recorded. The value returned, ``decode(encode(x))`` with the updated
        codebook, is what ``forward(x)`` gives from now on.
        """
        self._update_codebook(x)
        codes = self.encode(x)  # (..., H)
        self._record_usage(codes)
        return self.decode(codes)

    def _head_rows(self, x: Tensor) -> Tensor:
        """``x (..., d)`` -> detached ``(H, n, e)``."""
        return rearrange(x.detach().reshape(-1, self.d_model), "n (h e) -> h n e", h=self.heads)

    @torch.no_grad()
    def _update_codebook(self, x: Tensor) -> None:
        """Data-initialise the codebook from ``x (..., d)`` once; afterwards re-seed its dead codes from ``x``."""
        rows = self._head_rows(x)  # (H, n, e)
        if rows.shape[1] == 0:
            return
        if not bool(self.initialized):
            self.initialize_from(x)
            return
        if self.config.dead_after > 0:
            dead = self.unused_steps >= self.config.dead_after  # (H, Q)
            if dead.any():
                self.reseed(dead, x)

    @torch.no_grad()
    def initialize_from(self, x: Tensor) -> None:
        """Fit the codebook to the rows of ``x (..., d)`` per head (``config.vq_init``) and mark it initialised."""
        rows = self._head_rows(x)  # (H, n, e)
        max_rows = 8192  # k-means++ seeding on a random subset: cheap and plenty for Q <= a few hundred
        if rows.shape[1] > max_rows:
            rows = rows[:, torch.randperm(rows.shape[1], device=rows.device)[:max_rows]]
        if self.config.vq_init != "none":
            pick = _kmeans_pp if self.config.vq_init == "kmeans++" else _random_distinct_rows
            for h in range(self.heads):
                self.codebook[h] = pick(rows[h], self.codes).to(self.codebook.dtype)
        self.initialized.fill_(True)
        self.unused_steps.zero_()
        self.usage_ema.fill_(1.0 / self.codes)

    @torch.no_grad()
    def reseed(self, dead: Tensor, x: Tensor) -> None:
        """Replace the codes marked in ``dead (H, Q)`` by random rows of ``x (..., d)`` (recent inputs)."""
        rows = self._head_rows(x)  # (H, n, e)
        for h in range(self.heads):
            index = dead[h].nonzero().squeeze(-1)
            if index.numel():
                pick = torch.randint(rows.shape[1], (index.numel(),), device=rows.device)
                self.codebook[h, index] = rows[h, pick].to(self.codebook.dtype)
        self.unused_steps[dead] = 0
        self.usage_ema[dead] = 1.0 / self.codes

    @torch.no_grad()
    def _record_usage(self, codes: Tensor) -> None:
        """Count one upkeep step: codes ``(..., H)`` assigned, the others one step less recently used."""
        flat = codes.reshape(-1, self.heads).T  # (H, n)
        counts = torch.zeros(self.heads, self.codes, dtype=self.usage_ema.dtype, device=codes.device)
        counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=counts.dtype))
        used = counts > 0
        self.unused_steps.add_(1).masked_fill_(used, 0)
        decay = self.config.ema_decay
        self.usage_ema.mul_(decay).add_(counts / max(flat.shape[1], 1), alpha=1.0 - decay)


class VQTransformer(AutoregressiveTransformer):
    """The baseline transformer with a :class:`VectorQuantizer` after the attention of every full block (of the
    phase network's encoder too, when there is one).

    ``model.final_block`` (attention only) keeps its identity slot unless ``vq.quantize_final``. Sampling and
    ``log_prob`` are inherited unchanged: the quantiser acts per location, so the KV-cached sampler still applies.
    Codebook upkeep: :func:`codebook_upkeep`.
    """

    def __init__(self, config: TransformerConfig, vq: VQConfig) -> None:
        super().__init__(config)
        self.vq_config = vq
        for block in self.quantized_blocks:
            block.attn.quantizer = VectorQuantizer(config.d_model, vq)

    @property
    def quantized_blocks(self) -> list[nn.Module]:
        """The full blocks of both networks (the autoregressive ``blocks`` and the phase network's encoder blocks),
        and the final half-block with ``quantize_final``."""
        final = [self.final_block] if self.vq_config.quantize_final else []
        return [*self.blocks, *final, *([] if self.phase is None else self.phase.blocks)]

    @property
    def quantizers(self) -> list[VectorQuantizer]:
        return [block.attn.quantizer for block in self.quantized_blocks]

    def code_usage(self) -> float:
        """Fraction of all codes (every quantiser) used by the last upkeep batch (``unused_steps == 0``)."""
        used = [(q.unused_steps == 0).double().mean() for q in self.quantizers]
        return float(torch.stack(used).mean()) if used else 1.0


@torch.no_grad()
def codebook_upkeep(model: AutoregressiveTransformer, s: Tensor) -> None:
    """One codebook-upkeep step of every :class:`VectorQuantizer` of ``model`` on configurations ``s (B, N)``.

    Runs one forward pass of ``model.log_prob(s)`` (and of the phase network) without gradients in which each
    quantiser, block after block, replaces its output by :meth:`VectorQuantizer.upkeep` of its input: it updates
    its codebook (initialisation once, then dead-code re-seeding), records the usage of the codes it assigns, and
    hands the value of the updated codebook to the next block. A training step calls it once, before its own
    (pure) forward on the same ``s``, which then assigns exactly the codes recorded here. Consumes the
    global RNG (k-means++ seeding, re-seeding) as the quantisers need. No-op for a model without quantisers.
    """
    quantizers = [module for module in model.modules() if isinstance(module, VectorQuantizer)]
    if not quantizers:
        return
    handles = [quantizer.register_forward_hook(_upkeep_hook) for quantizer in quantizers]
    try:
        model.log_prob(s)
        if model.phase is not None:
            model.phase(s)
    finally:
        for handle in handles:
            handle.remove()


def _upkeep_hook(quantizer: VectorQuantizer, args: tuple, output: Tensor) -> Tensor:
    """Forward hook: the quantiser's output replaced by its upkeep on the same input."""
    return quantizer.upkeep(args[0])


def make_vq_model(config: TransformerConfig, vq: VQConfig) -> VQTransformer:
    """A VQ-NQS model: ``config``'s transformer with a ``vq`` quantiser in every full block."""
    return VQTransformer(config, vq)


def from_teacher(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Copy into ``student`` every teacher ``state_dict`` entry whose name and shape match; returns their names.

    Used to start a distilled VQ student from the baseline teacher: every baseline weight matches, the
    codebooks and quantiser buffers (absent from the teacher) keep the student's values. A quantiser is copied
    whole or not at all: one whose codebook does not match (another bandwidth) keeps all of its own state, so
    it is still initialised from data at its first upkeep.
    """
    student_state, teacher_state = student.state_dict(), teacher.state_dict()

    def matches(name: str) -> bool:
        return (
            name in student_state and name in teacher_state and student_state[name].shape == teacher_state[name].shape
        )

    foreign = tuple(
        f"{prefix}." for prefix, module in student.named_modules()
        if isinstance(module, VectorQuantizer) and not matches(f"{prefix}.codebook")
    )  # fmt: skip
    copied = []
    with torch.no_grad():
        for name, value in teacher_state.items():
            if matches(name) and not name.startswith(foreign):
                student_state[name].copy_(value)
                copied.append(name)
    return copied
