"""FLOPs of the local energy, dense vs dedup, by component, with ``torch.utils.flop_counter.FlopCounterMode``.

What is counted
---------------
``FlopCounterMode`` counts matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``, ...) at ``2*M*K*N``.
In this code base attention (``q @ k^T``, ``weights @ v``) and the quantiser's distances
(``x . W^T``) are explicit matmuls, so they are counted on CPU too (no fused SDPA kernel that a CPU
counter might miss). With ``elementwise=True`` (the default) the arithmetic of the other ops on floating
point tensors is added at a fixed cost per output element (:data:`ELEMENTWISE_COSTS`: 1 for
add/sub/mul/div/neg/sqrt/exp/clamp, 4 for softmax/log_softmax, 7 for LayerNorm, 8 for GELU); gathers,
``masked_fill``, reductions such as ``sum``/``argmax`` and integer ops (dedup keys, ``torch.unique``) cost 0.
``elementwise=False`` is the plain matmul count (the one pinned to hand-derived formulas in the tests).

Attribution
-----------
``FlopCounterMode.get_flop_counts()`` is keyed by module name and is inclusive (an op counts for every
active module). :func:`count_flops` turns it into exclusive counts (each op once, in its innermost
module) and strips the root's name, so the dense forward (``VQTransformer.blocks.0.ff``) and the dedup
engine (``DedupEngine.blocks.0.ff``, whose children mirror the model's) give the same path
``blocks.0.ff``. Ops outside any module (the Sz-masked ``log_softmax`` of the dense ``log_prob``, the
local-energy ratios) are attributed by op. Each count lands in a ``(layer, group)`` cell:

- layers: ``embed``, ``block0`` .. ``block{n-1}`` (full blocks), ``final`` (attention-only half-block),
  ``output`` (``ln_f``, head, Sz-mask log_softmax), ``local_energy`` (Hamiltonian elements, ratios);
- groups: ``embedding``, ``ln_attn``, ``qkv_proj``, ``attention`` (q.k, softmax, weights.v: the causal
  mixing; dense: under ``blocks.<i>.attn``, dedup: under ``blocks.<i>`` since ``attend`` is a method),
  ``quantizer`` (distances), ``out_proj`` (W_O), ``residual`` (the residual adds), ``ln_ff``,
  ``feed_forward``, ``ln_f``, ``head``, ``output`` (Sz-mask log_softmax), ``local_energy``, ``other``.

:data:`COMPONENTS` are the groups as reported (the three LayerNorms merged into ``layernorm``).

Quantised ops
-------------
An op is *quantised* iff it acts on each location separately and its input row at a location is a
function of that location's integer key only: ``(position, input token)`` after the embedding, then
``(previous key, code tuple)`` after each quantiser. These are exactly the ops the dedup engine can run
once per distinct key (on the table ``V``). In order through the network:

- the embedding (key: position, token);
- ``ln_attn`` and ``qkv_proj`` of a block while the residual stream is still a function of keys (always
  for block 0, whose input is the embedding; for block i > 0 iff blocks 0..i-1 all have a quantiser;
  the attention-only final block included);
- ``out_proj`` (W_O) of a block with a quantiser (it acts on the codewords);
- ``residual``, ``ln_ff``, ``feed_forward`` of a block with a quantiser whose input stream is keyed.

Never quantised: attention (it mixes locations), the quantiser's distances (its input is the attention
output), the final block's ``out_proj`` and residual, ``ln_f``, the head, the output softmax, and the
local-energy arithmetic. For the baseline (no quantiser) the quantised ops are only the embedding and
block 0's ``ln_attn``/``qkv_proj`` (their input is the (position, token) embedding, which the engine
dedups too).

Savings (the paper's Table 1): ``total_savings = FLOPs(dense local energy) / FLOPs(local energy with
reuse)``, ``quantized_ops_savings`` = the same ratio over the quantised ops only, both paths counting
the same set of (layer, group) cells.

Two readings of "with reuse". Our engine also runs attention once per distinct *prefix* of ids
(:mod:`vqnqs.dedup.prefix`), a reuse any autoregressive model allows, the baseline included. The paper's
engine deduplicates the per-location ops only. Both are counted: ``dedup`` (our engine, the default)
and ``dedup_no_prefix`` (``prefix_reuse=False``: attention once per location), whose ratios
(``total_savings_no_prefix``) are the like-for-like comparison with the paper's numbers. The quantised
ops run once per distinct key either way, so ``quantized_ops_savings`` does not depend on prefix reuse.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from vqnqs.models.transformer import AutoregressiveTransformer
from vqnqs.physics.hamiltonian import Hamiltonian
from vqnqs.vmc.local_energy import local_energy

aten = torch.ops.aten

# FLOPs per output element of the non-matmul ops (elementwise=True); anything absent costs 0.
ELEMENTWISE_COSTS: dict[Any, int] = {
    aten.add: 1,
    aten.sub: 1,
    aten.rsub: 1,
    aten.mul: 1,
    aten.div: 1,
    aten.neg: 1,
    aten.sqrt: 1,
    aten.rsqrt: 1,
    aten.exp: 1,
    aten.clamp_min: 1,
    aten._softmax: 4,
    aten._log_softmax: 4,
    aten.native_layer_norm: 7,
    aten.gelu: 8,
}

# Groups in network order, and the components they are reported as.
GROUPS = (
    "embedding",
    "ln_attn",
    "qkv_proj",
    "attention",
    "quantizer",
    "out_proj",
    "residual",
    "ln_ff",
    "feed_forward",
    "ln_f",
    "head",
    "output",
    "local_energy",
    "other",
)
COMPONENT_OF_GROUP = {
    "embedding": "embedding",
    "ln_attn": "layernorm",
    "ln_ff": "layernorm",
    "ln_f": "layernorm",
    "qkv_proj": "qkv_proj",
    "attention": "attention",
    "quantizer": "quantizer_distances",
    "out_proj": "out_proj",
    "residual": "residual",
    "feed_forward": "feed_forward",
    "head": "head",
    "output": "output_softmax",
    "local_energy": "local_energy",
    "other": "other",
}
COMPONENTS = (
    "embedding",
    "layernorm",
    "qkv_proj",
    "attention",
    "quantizer_distances",
    "out_proj",
    "feed_forward",
    "residual",
    "head",
    "output_softmax",
    "local_energy",
    "other",
)
# Components that act per location (the rest mix locations or act per sequence/sample).
PER_LOCATION_COMPONENTS = ("embedding", "layernorm", "qkv_proj", "out_proj", "feed_forward", "residual", "head")

Cell = tuple[str, str]  # (layer, group)


# --- counting -------------------------------------------------------------------------------------


def _elementwise_formula(per_element: int) -> Callable[..., int]:
    """A raw FlopCounterMode formula: ``per_element`` x numel of the (first) floating output, else 0."""

    def formula(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
        out = out_val
        if isinstance(out, (tuple, list)) and not isinstance(out, torch.Size) and out:
            out = out[0]  # native_layer_norm: (output, mean, rstd)
        if isinstance(out, torch.Tensor):
            if not (out.is_floating_point() or out.is_complex()):
                return 0
            return per_element * out.numel()
        if isinstance(out, (tuple, list, torch.Size)):  # a shape (a torch that ignores _get_raw)
            return per_element * math.prod(int(d) for d in out)
        return 0

    formula._get_raw = True  # type: ignore[attr-defined]  # receive tensors, so the dtype can be checked
    return formula


def flop_counter(elementwise: bool = True) -> FlopCounterMode:
    """A quiet ``FlopCounterMode``; with ``elementwise`` the :data:`ELEMENTWISE_COSTS` are added."""
    mapping = {op: _elementwise_formula(cost) for op, cost in ELEMENTWISE_COSTS.items()} if elementwise else None
    return FlopCounterMode(display=False, custom_mapping=mapping)


def exclusive_counts(inclusive: dict[str, dict[Any, int]]) -> dict[str | None, dict[str, int]]:
    """Inclusive ``get_flop_counts()`` -> exclusive ``{path: {op: flops}}``.

    ``path`` is the module name without its root (``""`` for the root itself, e.g. ``"blocks.0.ff"``);
    ``None`` collects what ran outside every module. Op keys become strings (``"aten.addmm"``).
    """
    names = [name for name in inclusive if name != "Global"]

    def parent(name: str) -> str:
        best = "Global"
        for other in names:
            if name.startswith(other + ".") and (best == "Global" or len(other) > len(best)):
                best = other
        return best

    exclusive: dict[str, dict[Any, int]] = {name: dict(counts) for name, counts in inclusive.items()}
    for name in names:
        up = parent(name)
        if up in exclusive:
            for op, flops in inclusive[name].items():
                exclusive[up][op] = exclusive[up].get(op, 0) - flops
    result: dict[str | None, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name, counts in exclusive.items():
        path = None if name == "Global" else name.partition(".")[2]
        for op, flops in counts.items():
            if flops:
                result[path][str(op)] += flops
    return {path: dict(counts) for path, counts in result.items()}


def classify(path: str | None, op: str) -> Cell:
    """``(layer, group)`` of an exclusive count at module ``path`` (root-relative; None: outside) by ``op``."""
    op_name = op.rsplit(".", 1)[-1]
    if path is None or path == "":
        if op_name in ("_log_softmax", "_softmax"):
            return "output", "output"
        if path == "" and op_name == "add":
            return "embed", "embedding"  # token + position embedding (the only float add at the root)
        return ("local_energy", "local_energy") if path is None else ("output", "other")
    parts = path.split(".")
    if parts[0] in ("tok_emb", "pos_emb"):
        return "embed", "embedding"
    if parts[0] == "ln_f":
        return "output", "ln_f"
    if parts[0] == "head":
        return "output", "head"
    if parts[0] == "blocks" and len(parts) > 1:
        layer, rest = f"block{parts[1]}", parts[2:]
    elif parts[0] == "final_block":
        layer, rest = "final", parts[1:]
    else:
        return "output", "other"
    if not rest or rest == ["attn"]:
        # blocks.<i> holds the residual adds (dense) and, in the dedup engine, the causal mixing as well.
        return layer, ("residual" if op_name == "add" and not rest else "attention")
    if rest[0] in ("ln_attn", "ln_ff"):
        return layer, rest[0]
    if rest[0] == "ff":
        return layer, "feed_forward"
    if rest[0] == "attn" and len(rest) > 1:
        return layer, {"qkv_proj": "qkv_proj", "out_proj": "out_proj", "quantizer": "quantizer"}.get(rest[1], "other")
    return layer, "other"


def count_flops(fn: Callable[[], Any], elementwise: bool = True) -> dict[Cell, int]:
    """Run ``fn()`` under a FLOP counter -> ``{(layer, group): flops}`` (exclusive, root name stripped)."""
    counter = flop_counter(elementwise)
    with counter:
        fn()
    cells: dict[Cell, int] = defaultdict(int)
    for path, counts in exclusive_counts(counter.get_flop_counts()).items():
        for op, flops in counts.items():
            cells[classify(path, op)] += flops
    return dict(cells)


def local_energy_flops(
    hamiltonian: Hamiltonian,
    model: AutoregressiveTransformer,
    s: torch.Tensor,
    dedup: bool,
    chunk_size: int | None = None,
    elementwise: bool = True,
    prefix_reuse: bool = True,
) -> dict[Cell, int]:
    """FLOPs of ``local_energy(hamiltonian, model, s, chunk_size, dedup=dedup, prefix_reuse=...)`` by
    ``(layer, group)``."""
    return count_flops(
        lambda: local_energy(hamiltonian, model, s, chunk_size=chunk_size, dedup=dedup, prefix_reuse=prefix_reuse),
        elementwise,
    )


# --- quantised ops --------------------------------------------------------------------------------


def has_quantizer(block: torch.nn.Module) -> bool:
    return not isinstance(block.attn.quantizer, torch.nn.Identity)


def quantized_cells(model: AutoregressiveTransformer) -> frozenset[Cell]:
    """The ``(layer, group)`` cells of quantised ops (inputs a function of the location's integer key only).

    See the module docstring for the definition; this follows the model's structure, not any data.
    """
    cells = {("embed", "embedding")}
    keyed = True  # the residual stream entering the block is a function of integer keys
    for i, block in enumerate(model.blocks):
        layer = f"block{i}"
        if keyed:
            cells |= {(layer, "ln_attn"), (layer, "qkv_proj")}
        quantized = has_quantizer(block)
        if quantized:
            cells.add((layer, "out_proj"))  # W_O on the codewords
        keyed = keyed and quantized
        if keyed:
            cells |= {(layer, "residual"), (layer, "ln_ff"), (layer, "feed_forward")}
    if keyed:
        cells |= {("final", "ln_attn"), ("final", "qkv_proj")}
    return frozenset(cells)


# --- averaged profile -----------------------------------------------------------------------------


def layer_names(model: AutoregressiveTransformer) -> list[str]:
    """The dedup engine's stage names: ``embed, block0, .., final``."""
    return ["embed", *(f"block{i}" for i in range(len(model.blocks))), "final"]


def model_bits(model: AutoregressiveTransformer) -> float:
    """Quantiser bandwidth in bits (``heads * log2(codes)`` of the first quantiser); 0 for the baseline."""
    for block in model.blocks:
        if has_quantizer(block):
            return float(block.attn.quantizer.bits)
    return 0.0


@dataclass
class FlopProfile:
    """Local-energy FLOPs of one model on ``n_batches`` batches of ``batch`` samples, dense vs dedup.

    ``dense`` / ``dedup`` / ``dedup_no_prefix``: mean FLOPs per SAMPLE (all its valid connected
    configurations) by ``(layer, group)``, the last without prefix reuse; ``unique_rows`` / ``locations``:
    summed over batches per engine stage (``embed``, ``block<i>``, ``final``) and ``code_tuples`` per
    quantised block, from the engine's statistics.
    """

    batch: float  # distinct samples per batch (mean), on which both paths are counted
    n_batches: int
    n_configs: int  # valid connected configurations evaluated, all batches together
    dense: dict[Cell, float]
    dedup: dict[Cell, float]
    quantized: frozenset[Cell]
    drawn: int = 0  # samples drawn per batch, repeats included
    dedup_no_prefix: dict[Cell, float] = field(default_factory=dict)
    unique_rows: dict[str, int] = field(default_factory=dict)
    locations: dict[str, int] = field(default_factory=dict)
    code_tuples: dict[str, int] = field(default_factory=dict)
    elementwise: bool = True

    @property
    def n_samples(self) -> int:
        return round(self.batch * self.n_batches)

    @property
    def configs_per_sample(self) -> float:
        return self.n_configs / max(self.n_samples, 1)

    @property
    def flops_dense_per_sample(self) -> float:
        return sum(self.dense.values())

    @property
    def flops_dedup_per_sample(self) -> float:
        return sum(self.dedup.values())

    @property
    def flops_dense_per_batch(self) -> float:
        return self.batch * self.flops_dense_per_sample

    @property
    def flops_dedup_per_batch(self) -> float:
        return self.batch * self.flops_dedup_per_sample

    @property
    def quantized_dense_per_sample(self) -> float:
        return sum(v for cell, v in self.dense.items() if cell in self.quantized)

    @property
    def quantized_dedup_per_sample(self) -> float:
        return sum(v for cell, v in self.dedup.items() if cell in self.quantized)

    @property
    def total_savings(self) -> float:
        return savings(self.flops_dense_per_sample, self.flops_dedup_per_sample)

    @property
    def quantized_ops_savings(self) -> float:
        return savings(self.quantized_dense_per_sample, self.quantized_dedup_per_sample)

    @property
    def flops_dedup_no_prefix_per_sample(self) -> float:
        return sum(self.dedup_no_prefix.values())

    @property
    def total_savings_no_prefix(self) -> float:
        return savings(self.flops_dense_per_sample, self.flops_dedup_no_prefix_per_sample)

    def unique_fraction(self) -> dict[str, float]:
        """``unique rows / locations`` after each engine stage (1 = no reuse)."""
        return {name: self.unique_rows[name] / max(self.locations[name], 1) for name in self.unique_rows}

    def by_component(self) -> dict[str, tuple[float, float]]:
        """``{component: (dense, dedup)}`` FLOPs per sample, every component of :data:`COMPONENTS` present."""
        return {name: (dense, dedup) for name, (dense, dedup, _) in self.by_component_all_paths().items()}

    def by_component_all_paths(self) -> dict[str, tuple[float, float, float]]:
        """``{component: (dense, dedup, dedup_no_prefix)}`` FLOPs per sample, every component present."""
        out = {name: [0.0, 0.0, 0.0] for name in COMPONENTS}
        for index, table in enumerate((self.dense, self.dedup, self.dedup_no_prefix)):
            for (_, group), flops in table.items():
                out[COMPONENT_OF_GROUP[group]][index] += flops
        return {name: (dense, dedup, no_prefix) for name, (dense, dedup, no_prefix) in out.items()}

    def by_layer_component(self) -> dict[tuple[str, str], tuple[float, float]]:
        """``{(layer, component): (dense, dedup)}`` FLOPs per sample, only the non-zero ones."""
        out: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        for index, table in enumerate((self.dense, self.dedup)):
            for (layer, group), flops in table.items():
                out[(layer, COMPONENT_OF_GROUP[group])][index] += flops
        return {key: (dense, dedup) for key, (dense, dedup) in out.items()}


def savings(dense: float, dedup: float) -> float:
    """``dense / dedup``; NaN when nothing was counted on either side, inf when only the dedup side is 0."""
    if dedup > 0:
        return dense / dedup
    return math.inf if dense > 0 else math.nan


def draw_samples(model: AutoregressiveTransformer, n: int, seed: int) -> torch.Tensor:
    """``n`` exact samples ``(n, N)`` from ``model`` with a generator seeded ``seed`` (on the model's device)."""
    generator = torch.Generator(device=model.device).manual_seed(int(seed))
    return model.sample(n, generator=generator)


def distinct_samples(s: torch.Tensor) -> torch.Tensor:
    """The distinct rows of ``s (B, N)`` -> ``(U, N)`` (sorted)."""
    return torch.unique(s, dim=0)


def connected_configs(hamiltonian: Hamiltonian, s: torch.Tensor) -> torch.Tensor:
    """All valid connected configurations of ``s (B, N)``, flattened ``(K, N)`` in local_energy's order."""
    conn = hamiltonian.connected(s)
    return conn.configs.reshape(-1, conn.configs.shape[-1])[conn.valid.reshape(-1)]


def profile_flops(
    hamiltonian: Hamiltonian,
    model: AutoregressiveTransformer,
    batch: int = 512,
    n_batches: int = 4,
    seed: int = 0,
    chunk_size: int | None = None,
    elementwise: bool = True,
    batches: Iterable[torch.Tensor] | None = None,
    dense_samples: int | None = None,
) -> FlopProfile:
    """Mean local-energy FLOPs per sample, dense vs dedup, over ``n_batches`` batches of ``batch`` samples.

    Batch ``b`` is drawn from ``model`` itself (exact sampling, seed ``seed + b``) unless ``batches`` is
    given. Repeated samples are dropped first (:func:`distinct_samples`), on both paths: a local energy needs
    each distinct configuration once, as the trainer evaluates it, so savings never come from mere
    repetition; "per sample" means per distinct sample, and ``batch`` is their mean number per batch.
    Each chunk of ``chunk_size`` samples (default: the whole batch) is deduplicated on its own, as in
    :func:`vqnqs.vmc.local_energy.local_energy`; the engine's statistics are taken on the same chunks.

    ``dense_samples``: count the dense path on the first ``dense_samples`` samples of each batch only and
    scale by the batch's number of valid connected configurations over theirs: the dense forward costs the
    same for every configuration, so this is exact for every network op (up to per-call constants: the
    codebook norms ``||W||^2``, H*Q*e products per quantiser call with ``elementwise``), and off by a few
    FLOPs per sample for the local-energy arithmetic. None: count the whole batch.
    """
    from vqnqs.dedup import dedup_log_prob  # local: keep `import vqnqs.profiling` light

    if batches is None:
        batches = (draw_samples(model, batch, seed + b) for b in range(n_batches))
    dense: dict[Cell, float] = defaultdict(float)
    dedup: dict[Cell, float] = defaultdict(float)
    dedup_no_prefix: dict[Cell, float] = defaultdict(float)
    unique_rows: dict[str, int] = defaultdict(int)
    locations: dict[str, int] = defaultdict(int)
    code_tuples: dict[str, int] = defaultdict(int)
    n_samples = n_configs = count = drawn = 0
    for s in batches:
        count += 1
        drawn += s.shape[0]
        s = distinct_samples(s)
        n_samples += s.shape[0]
        batch_configs = 0
        step = s.shape[0] if chunk_size is None else int(chunk_size)
        for start in range(0, s.shape[0], step):
            configs = connected_configs(hamiltonian, s[start : start + step])
            batch_configs += configs.shape[0]
            with torch.no_grad():
                stats = dedup_log_prob(model, configs).stats
            for stat in stats:
                unique_rows[stat.layer] += stat.unique_rows
                locations[stat.layer] += stat.locations
                if stat.code_tuples is not None:
                    code_tuples[stat.layer] += stat.code_tuples
        n_configs += batch_configs
        s_dense, scale = s, 1.0
        if dense_samples is not None and dense_samples < s.shape[0]:
            s_dense = s[: max(int(dense_samples), 1)]
            scale = batch_configs / max(connected_configs(hamiltonian, s_dense).shape[0], 1)
        for cell, flops in local_energy_flops(hamiltonian, model, s_dense, False, chunk_size, elementwise).items():
            dense[cell] += flops * scale
        for cell, flops in local_energy_flops(hamiltonian, model, s, True, chunk_size, elementwise).items():
            dedup[cell] += flops
        for cell, flops in local_energy_flops(hamiltonian, model, s, True, chunk_size, elementwise, False).items():
            dedup_no_prefix[cell] += flops
    if count == 0:
        raise ValueError("profile_flops: no batches")
    return FlopProfile(
        batch=n_samples / count,
        drawn=drawn // count,
        n_batches=count,
        n_configs=n_configs,
        dense={cell: flops / n_samples for cell, flops in dense.items()},
        dedup={cell: flops / n_samples for cell, flops in dedup.items()},
        dedup_no_prefix={cell: flops / n_samples for cell, flops in dedup_no_prefix.items()},
        quantized=quantized_cells(model),
        unique_rows=dict(unique_rows),
        locations=dict(locations),
        code_tuples=dict(code_tuples),
        elementwise=elementwise,
    )
