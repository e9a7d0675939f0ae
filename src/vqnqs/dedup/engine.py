"""The dedup engine: ``log P`` of a flat batch of configurations in compressed ``(I, V)`` form.

The forward runs the stages of :mod:`vqnqs.dedup.layers` in network order: the embedding keyed by
(position, input token), each block on the attention rows of its input ids, the output head. Hidden
states are ids into a table of unique rows; a block's attention runs once per attention row of a
:class:`~vqnqs.dedup.prefix.PrefixPartition` of its input ids: one per distinct prefix
(:func:`~vqnqs.dedup.prefix.prefix_partition`, ours), or with ``prefix_reuse=False`` one per location
(:func:`~vqnqs.dedup.prefix.location_partition`, the paper's engine, which dedups the per-location ops only).

Dedup spans the whole batch (all ``K`` sequences together). Ids and prefix ids come from integer keys only
(:mod:`vqnqs.dedup.keys`, :mod:`vqnqs.dedup.prefix`), never from comparing floats, so the result is the
dense forward of the SAME model reorganised: same codes, same ``log P`` up to floating-point reassociation.

Configuration: :class:`DedupEngine` ``(model, prefix_reuse=..., policy=...)``; the
:class:`~vqnqs.dedup.policy.ExecutionPolicy` (chunk sizes, threads) changes only the order of float
operations, never the result.

Every op runs in one of the model's own component modules, called as in the dense forward (see
:mod:`vqnqs.dedup.layers`), so FLOP counts attribute alike on both paths. The causal mixing
(``block.attn.mixing``) costs ``4 * d * T`` FLOPs per attention row (each row's query against the ``T``
keys of its representative sequence, the future masked), against ``4 * d * T`` per location densely.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from vqnqs.dedup.layers import Compressed, block_stage, embed_stage, output_stage, quantizer_of
from vqnqs.dedup.phase import phase_forward
from vqnqs.dedup.policy import DEFAULT_POLICY, Execution, ExecutionPolicy
from vqnqs.dedup.prefix import PrefixPartition, location_partition, prefix_partition
from vqnqs.models.transformer import AutoregressiveTransformer


@dataclass(frozen=True)
class LayerStats:
    """Size of the compressed state after one stage of the engine."""

    layer: str  # "embed", "block0", "block1", ..., "final"
    quantized: bool  # the stage's output came from quantised keys (dedup possible)
    unique_rows: int  # U after the stage: rows the next per-location ops run on
    locations: int  # K * T: rows the dense forward runs on
    code_tuples: int | None = None  # distinct code tuples (rows through W_O) in a quantised block
    # Distinct prefixes of the stage's input ids: the rows its attention (and quantiser) ran on.
    attention_rows: int | None = None
    prefixes_per_position: tuple[int, ...] | None = None  # (T,) distinct prefixes ending at each position

    @property
    def fraction(self) -> float:
        """``unique_rows / locations`` (1 = no savings)."""
        return self.unique_rows / max(self.locations, 1)

    @property
    def attention_fraction(self) -> float | None:
        """``attention_rows / locations``: the share of attention rows left after prefix dedup."""
        return None if self.attention_rows is None else self.attention_rows / max(self.locations, 1)


@dataclass
class DedupResult:
    log_prob: Tensor  # (K,)
    stats: list[LayerStats]  # of the autoregressive network
    codes: list[Tensor] = field(default_factory=list)  # per quantised block (K, T, H), if recorded
    phase: Tensor | None = None  # (K,) phi(s) of the model's phase network (vqnqs.dedup.phase); None without one

    @property
    def log_psi(self) -> Tensor:
        """``log psi = log P / 2 + i phi``: complex with a phase network, else real (phi = 0)."""
        if self.phase is None:
            return 0.5 * self.log_prob
        return torch.complex(0.5 * self.log_prob, self.phase)


# --- the whole forward ----------------------------------------------------------------------------


class DedupEngine:
    """The dedup forward of ``model``: ``DedupEngine(model)(s) -> DedupResult``.

    Holds no state of its own beyond its configuration: it calls the model's modules, so it follows the
    model's weights, device and dtype. Cheap to build (one per call is fine).

    ``prefix_reuse=False`` runs attention once per location instead of once per distinct prefix: only the
    per-location ops are deduplicated, as in the paper (the like-for-like reading of its Table 1 savings).
    ``policy``: chunk sizes and threads (:mod:`vqnqs.dedup.policy`); it never changes the result.
    """

    def __init__(
        self, model: AutoregressiveTransformer, *, prefix_reuse: bool = True, policy: ExecutionPolicy = DEFAULT_POLICY
    ) -> None:
        self.model = model
        self.prefix_reuse = prefix_reuse
        self.policy = policy

    def attention_rows(self, states: Compressed) -> PrefixPartition:
        """The attention rows of a block with input ``states``: one per distinct prefix of their ids (reused
        when the ids already are prefix ids), or without prefix reuse one per location."""
        if states.prefixes is not None:
            return states.prefixes
        return prefix_partition(states.ids) if self.prefix_reuse else location_partition(states.ids)

    def __call__(self, s: Tensor, record_codes: bool = False) -> DedupResult:
        """``s (K, N)`` -> :class:`DedupResult` (``log P (K,)``, per-stage statistics, optional codes)."""
        with self.policy.applied() as run:
            return self._forward(s, run, record_codes)

    def _forward(self, s: Tensor, run: Execution, record_codes: bool) -> DedupResult:
        model = self.model
        tokens = model.patching.to_tokens(s.to(model.device))  # (K, T)
        inputs = model.shift_right(tokens)  # (K, T)
        locations = tokens.numel()
        states = embed_stage(model, inputs, model.bos + 1)
        stats = [LayerStats("embed", True, states.n_unique, locations)]
        codes_per_block: list[Tensor] = []
        named = [*((f"block{i}", block) for i, block in enumerate(model.blocks)), ("final", model.final_block)]
        for name, block in named:
            out = block_stage(block, states, self.attention_rows(states), run, record_codes)
            states = out.states
            stats.append(
                LayerStats(
                    name,
                    out.n_tuples is not None,
                    states.n_unique,
                    locations,
                    out.n_tuples,
                    out.prefixes.n_rows,
                    out.prefixes.per_position,
                )
            )
            if out.codes is not None:
                codes_per_block.append(out.codes)
        log_prob = output_stage(model, states, tokens, run)
        phase = None if model.phase is None else phase_forward(model.phase, s, run)
        return DedupResult(log_prob, stats, codes_per_block, phase)


def dedup_log_prob(
    model: AutoregressiveTransformer,
    s: Tensor,
    *,
    record_codes: bool = False,
    prefix_reuse: bool = True,
    policy: ExecutionPolicy = DEFAULT_POLICY,
) -> DedupResult:
    """``log P(s)`` for ``s (K, N)`` through the compressed forward, with per-stage statistics.

    Works for the baseline (identity slots: savings from the embedding keys and shared prefixes only) and for
    VQ models (:class:`vqnqs.models.vq.VQTransformer`). Gradients flow as in the dense forward in eval mode,
    except through the (integer) codes; the quantisers' state is never touched (codes only).
    ``prefix_reuse=False``: attention once per location (only the per-location ops deduplicated).
    """
    return DedupEngine(model, prefix_reuse=prefix_reuse, policy=policy)(s, record_codes=record_codes)


def dedup_log_psi(
    model: AutoregressiveTransformer, s: Tensor, *, prefix_reuse: bool = True, policy: ExecutionPolicy = DEFAULT_POLICY
) -> Tensor:
    """``log psi(s) = log P(s) / 2 (+ i phi(s))`` for ``s (K, N)`` through the dedup engine -> ``(K,)``."""
    return dedup_log_prob(model, s, prefix_reuse=prefix_reuse, policy=policy).log_psi


def dense_codes(model: AutoregressiveTransformer, s: Tensor) -> list[Tensor]:
    """The codes ``(K, T, H)`` each quantised block of the DENSE forward assigns to ``s (K, N)``.

    Reference for the engine's codes: forward hooks re-encode each quantiser's input (``encode`` is a
    pure function of the input and the codebook, so these are the codes the dense forward used).
    """
    recorded: list[Tensor] = []
    handles = []
    for block in [*model.blocks, model.final_block]:
        quantizer = quantizer_of(block)
        if quantizer is not None:
            hook = lambda module, args, output: recorded.append(module.encode(args[0]))  # noqa: E731
            handles.append(quantizer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.log_prob(s)
    finally:
        for handle in handles:
            handle.remove()
    return recorded
