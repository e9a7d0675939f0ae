"""FLOPs of the local energy, dense vs dedup, by ``(layer, group)`` of the network.

What is counted
---------------
:class:`FlopCounter` (a ``TorchDispatchMode``) sees every aten op and counts it with the formulas of
``torch.utils.flop_counter`` (as ``FlopCounterMode`` does): matrix products (``mm``, ``addmm``, ``bmm``,
``baddbmm``, ...) at ``2*M*K*N``; an op that decomposes is counted through the ops it decomposes into.
In this code base attention (``q @ k^T``, ``weights @ v``) and the quantiser's distances
(``x . W^T``) are explicit matmuls, so they are counted on CPU too (no fused SDPA kernel that a CPU
counter might miss). With ``elementwise=True`` (the default) the arithmetic of the other ops on floating
point tensors is added at a fixed cost per output element (:data:`ELEMENTWISE_COSTS`: 1 for
add/sub/mul/div/neg/sqrt/exp/clamp, 4 for softmax/log_softmax, 7 for LayerNorm, 8 for GELU); gathers,
``masked_fill``, reductions such as ``sum``/``argmax`` and integer ops (dedup keys, ``torch.unique``) cost 0.
``elementwise=False`` is the plain matmul count (the one pinned to hand-derived formulas in the tests).

Attribution
-----------
Each op is counted once, under the role ``(layer, group)`` of the innermost *component* running it: the
modules that :meth:`~vqnqs.models.transformer.AutoregressiveTransformer.components` lists with their
roles. Global module forward pre/post hooks keep the stack of the model's modules being run; components
are found on it by identity, never by attribute path, so the dense forward and the dedup engine (which
call the same modules, :mod:`vqnqs.dedup.layers`) attribute alike. Ops outside every module of the model
are the Sz-masked ``log_softmax`` of the output (``("output", "output")``) and the local-energy
arithmetic (``("local_energy", "local_energy")``). An op inside a module of the model but in no component
(a module that ``components()`` does not list, arithmetic in a container's own ``forward``) lands in
``("other", "other")``: visible, never silently in a neighbouring cell.

- layers: ``embed``, ``block0`` .. ``block{n-1}`` (full blocks), ``final`` (attention-only half-block),
  ``output`` (``ln_f``, head, Sz-mask log_softmax), ``local_energy`` (Hamiltonian elements, ratios);
- groups: ``embedding`` (token, position, their sum), ``ln_attn``, ``qkv_proj``, ``attention`` (q.k,
  softmax, weights.v: the causal mixing ``attn.mixing``, or an engine's form of it ``attn.engine_mixing``),
  ``quantizer`` (distances), ``out_proj`` (W_O), ``residual`` (the residual adds), ``ln_ff``,
  ``feed_forward``, ``ln_f``, ``head``, ``output`` (Sz-mask log_softmax), ``local_energy``, ``other``.

:data:`COMPONENTS` are the groups as reported (the three LayerNorms merged into ``layernorm``). The paper's
quantised ops are defined in :mod:`vqnqs.profiling.quantized`, the averaged profile of a model and its
savings in :mod:`vqnqs.profiling.flop_profile`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

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
    aten.index_add: 1,
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
OUTPUT: Cell = ("output", "output")  # the Sz-masked log_softmax, outside the model's modules
LOCAL_ENERGY: Cell = ("local_energy", "local_energy")  # everything else outside the model's modules
UNATTRIBUTED: Cell = ("other", "other")  # inside the model, but in no component of it
_OUTPUT_OPS = (aten._log_softmax, aten._softmax)


# --- counting ---


def _elementwise_formula(per_element: int) -> Callable[..., int]:
    """A flop formula: ``per_element`` x numel of the (first) floating output, 0 for an integer one."""

    def formula(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
        out = out_val[0] if isinstance(out_val, (tuple, list)) else out_val  # native_layer_norm: (out, mean, rstd)
        if isinstance(out, torch.Tensor) and (out.is_floating_point() or out.is_complex()):
            return per_element * out.numel()
        return 0

    return formula


def flop_formulas(elementwise: bool = True) -> dict[Any, Callable[..., int]]:
    """``{op packet: formula(*args, out_val=out, **kwargs) -> flops}``: torch's registered formulas (matmuls,
    convolutions, attention kernels), with ``elementwise`` also :data:`ELEMENTWISE_COSTS`."""
    costs = ELEMENTWISE_COSTS if elementwise else {}
    return {**flop_registry, **{op: _elementwise_formula(cost) for op, cost in costs.items()}}


class FlopCounter:
    """``with FlopCounter(model) as counter: ...`` -> ``counter.counts``: ``{(layer, group): flops}`` of the ops
    run inside, each under the role of the innermost component of ``model`` running it (module docstring)."""

    def __init__(self, model: AutoregressiveTransformer, elementwise: bool = True) -> None:
        self.roles: dict[nn.Module, Cell] = dict(model.components())
        self.network = set(model.modules())
        self.formulas = flop_formulas(elementwise)
        self.counts: dict[Cell, int] = defaultdict(int)
        self._stack: list[nn.Module] = []  # the model's modules being run, innermost last
        self._handles: list[Any] = []
        self._mode: _CountingMode | None = None

    def __enter__(self) -> FlopCounter:
        self._handles = [
            register_module_forward_pre_hook(self._enter_module),
            register_module_forward_hook(self._exit_module, always_call=True),
        ]
        self._mode = _CountingMode(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._mode is not None:
                self._mode.__exit__(*exc)
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles, self._mode, self._stack = [], None, []

    def _enter_module(self, module: nn.Module, args: Any) -> None:
        if module in self.network:
            self._stack.append(module)

    def _exit_module(self, module: nn.Module, args: Any, output: Any) -> None:
        if module in self.network:
            self._stack.pop()

    def cell(self, op: Any) -> Cell:
        """Where an op running now counts: the role of the innermost component being run; outside the model's
        modules :data:`OUTPUT` or :data:`LOCAL_ENERGY` by op; else :data:`UNATTRIBUTED`."""
        for module in reversed(self._stack):
            role = self.roles.get(module)
            if role is not None:
                return role
        if self._stack:
            return UNATTRIBUTED
        return OUTPUT if op in _OUTPUT_OPS else LOCAL_ENERGY

    def count(self, op: Any, out: Any, args: tuple, kwargs: dict) -> None:
        """Count one op ``op`` (an op packet such as ``aten.mm``) that returned ``out``."""
        formula = self.formulas.get(op)
        if formula is not None:
            flops = formula(*args, **kwargs, out_val=out)
            if flops:
                self.counts[self.cell(op)] += flops


class _CountingMode(TorchDispatchMode):
    """Runs every aten op and reports it to a :class:`FlopCounter`, dispatching as ``FlopCounterMode`` does."""

    def __init__(self, counter: FlopCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not torch.ops.prim.device.default:
            with self:  # an op with a decomposition is counted through the ops it decomposes into
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        self.counter.count(func._overloadpacket, out, args, kwargs)
        return out


def count_flops(model: AutoregressiveTransformer, fn: Callable[[], Any], elementwise: bool = True) -> dict[Cell, int]:
    """Run ``fn()`` under a :class:`FlopCounter` of ``model`` -> ``{(layer, group): flops}`` (non-zero cells)."""
    with FlopCounter(model, elementwise) as counter:
        fn()
    return dict(counter.counts)


def local_energy_flops(
    hamiltonian: Hamiltonian,
    model: AutoregressiveTransformer,
    s: torch.Tensor,
    engine: str = "dense",
    chunk_size: int | None = None,
    elementwise: bool = True,
) -> dict[Cell, int]:
    """FLOPs of ``local_energy(hamiltonian, model, s, chunk_size, engine=engine)`` by ``(layer, group)``;
    ``engine``: ``dense``, ``dedup`` or ``dedup_no_prefix`` (:mod:`vqnqs.vmc.log_psi`)."""
    return count_flops(
        model, lambda: local_energy(hamiltonian, model, s, chunk_size=chunk_size, engine=engine), elementwise
    )
