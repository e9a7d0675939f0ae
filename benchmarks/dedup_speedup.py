"""Wall-clock speedup of the dedup local energy over the dense one (VQ-NQS, 2D Heisenberg).

The project's target: >= x3 at 6x6 on CPU for the paper's shape (d = 256, 8 heads, 3 blocks + the
half-block, 2x2 patches), B = 512 samples, 6 bits (1 head x 64 codes).

The model is either a distilled student (``--model-dir DIR`` with the distill stage's ``model.pt``) or,
by default, an UNTRAINED paper-shape VQ model whose codebooks are fitted to its own samples (one
codebook upkeep; see ``vqnqs.profiling.untrained``). The output says which. An untrained model's
codes, and so its reuse, can differ from a trained model's.

Both paths run on the same batch of exact samples in one process; each repeat times both, alternating
which goes first; the medians after a warm-up are reported. Other jobs on the machine pollute wall-clock
times: the JSON records the 1-minute load average before and after, the threads, device and torch version.

    python benchmarks/dedup_speedup.py                          # 6x6, 6 bits, d = 256, B = 512
    python benchmarks/dedup_speedup.py --size 4x4 --bits 12 --threads 2 --repeats 7
    python benchmarks/dedup_speedup.py --model-dir data/distill/heisenberg_6x6/bits6
    python benchmarks/dedup_speedup.py --profile                # also a torch.profiler table of the dedup path

Writes ``benchmarks/results/dedup_speedup_<size>_<bits>bits_d<d>[_<tag>].json`` (or ``--out``) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from vqnqs.dedup import dedup_log_prob
from vqnqs.io import write_json
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.profiling.batches import connected_configs, distinct_samples, draw_samples
from vqnqs.profiling.flop_profile import profile_flops
from vqnqs.profiling.quantized import model_bits
from vqnqs.profiling.timing import environment, load_average, time_local_energy
from vqnqs.profiling.untrained import untrained_vq_model

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 3.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="6x6", help="square lattice LxW (default 6x6)")
    parser.add_argument("--bits", type=int, default=6, help="bandwidth: heads x log2(64) (default 6)")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-heads", type=int, default=8)
    parser.add_argument("--n-blocks", type=int, default=3)
    parser.add_argument("--batch", type=int, default=512, help="samples per local-energy batch (default 512)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--chunk-size", type=int, default=None, help="samples per dedup call (default: the batch)")
    parser.add_argument("--model-dir", type=Path, default=None, help="distill out dir: time its model.pt instead")
    parser.add_argument("--flops", action="store_true", help="also count FLOPs (dense and dedup) on the batch")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of the dedup path")
    parser.add_argument("--tag", default="", help="suffix of the output name")
    parser.add_argument("--out", type=Path, default=None, help="output JSON (default: benchmarks/results/...)")
    return parser.parse_args(argv)


def build_model(args: argparse.Namespace, hamiltonian):
    """``(model, description)``: the distilled student of --model-dir, or an untrained data-initialised one."""
    if args.model_dir is not None:
        from vqnqs.vmc.checkpoint import load_model

        model, info = load_model(args.model_dir / "model.pt")
        if tuple(model.config.lattice_shape) != tuple(hamiltonian.lattice.shape):
            sys.exit(f"{args.model_dir}/model.pt: lattice {model.config.lattice_shape}, --size is {args.size}")
        return model.to(args.device).eval(), f"trained: {args.model_dir / 'model.pt'} (steps {info.get('steps')})"
    model = untrained_vq_model(
        hamiltonian,
        bits=args.bits,
        d_model=args.d_model,
        n_heads=args.n_heads,
        n_blocks=args.n_blocks,
        seed=args.seed,
        init_samples=args.batch,
        dtype=getattr(torch, args.dtype),
        device=args.device,
    )
    return model, "UNTRAINED (GPT-2 init weights, codebooks k-means++-initialised on the model's own samples)"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    hamiltonian = build_hamiltonian("heisenberg", args.size)
    started = time.perf_counter()
    model, source = build_model(args, hamiltonian)
    s = distinct_samples(draw_samples(model, args.batch, args.seed + 100))  # as the profile counts them
    configs = connected_configs(hamiltonian, s)
    with torch.no_grad():
        stats = dedup_log_prob(model, configs).stats
    timing = time_local_energy(hamiltonian, model, s, args.repeats, args.warmup, args.chunk_size)
    result = {
        "benchmark": "dedup_speedup",
        "model_source": source,
        "system": "heisenberg",
        "size": args.size,
        "n_sites": hamiltonian.n_sites,
        "bits": model_bits(model),
        "d_model": model.config.d_model,
        "n_heads": model.config.n_heads,
        "n_blocks": model.config.n_blocks,
        "patch": model.config.patch,
        "dtype": str(next(model.parameters()).dtype),
        "batch": args.batch,
        "chunk_size": args.chunk_size,
        "configs": configs.shape[0],
        "seed": args.seed,
        "unique_fraction": {stat.layer: stat.fraction for stat in stats},
        "code_tuples": {stat.layer: stat.code_tuples for stat in stats if stat.code_tuples is not None},
        "time_dense_s": timing.dense_s,
        "time_dedup_s": timing.dedup_s,
        "speedup": timing.speedup,
        "target_speedup": TARGET,
        "meets_target": timing.speedup >= TARGET,
        "timing": timing.to_dict(),
        "environment": environment(model.device),
        "command": " ".join(sys.argv) if argv is None else " ".join(["dedup_speedup.py", *argv]),
    }
    if args.flops:
        flops = profile_flops(hamiltonian, model, batches=[s], chunk_size=args.chunk_size)
        result["flops"] = {
            "dense_per_sample": flops.flops_dense_per_sample,
            "dedup_per_sample": flops.flops_dedup_per_sample,
            "dedup_no_prefix_per_sample": flops.flops_dedup_no_prefix_per_sample,
            "total_savings": flops.total_savings,
            "total_savings_no_prefix": flops.total_savings_no_prefix,
            "quantized_ops_savings": flops.quantized_ops_savings,
            "by_component": {
                name: {path: paths[path] for path in ("dense", "dedup", "dedup_no_prefix")}
                for name, paths in flops.by_component_all_paths().items()
            },
        }
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        from vqnqs.vmc.local_energy import local_energy

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            local_energy(hamiltonian, model, s, chunk_size=args.chunk_size, engine="dedup")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    result["load_after"] = load_average()
    result["wall_time_s"] = time.perf_counter() - started
    kind = "trained" if args.model_dir is not None else "untrained"
    name = f"dedup_speedup_{args.size}_{result['bits']:g}bits_d{model.config.d_model}_{kind}"
    out = args.out or RESULTS / f"{name}{'_' + args.tag if args.tag else ''}.json"
    write_json(out, result)
    print(
        f"heisenberg {args.size}, {result['bits']:g} bits, d={model.config.d_model}, B={args.batch} "
        f"({configs.shape[0]} configs), {source}\n"
        f"  unique fractions: {json.dumps({k: round(v, 4) for k, v in result['unique_fraction'].items()})}\n"
        f"  dense {timing.dense_s:.3f} s, dedup {timing.dedup_s:.3f} s (medians of {args.repeats}): "
        f"speedup x{timing.speedup:.2f} (target x{TARGET:g}: {'met' if result['meets_target'] else 'NOT met'})\n"
        f"  {timing.device}, {timing.threads} threads, torch {timing.torch_version}, "
        f"load {timing.load_before} -> {result['load_after']}\n-> {out}"
    )
    if "flops" in result:
        f = result["flops"]
        print(
            f"  FLOPs/sample {f['dense_per_sample']:.4g} -> {f['dedup_per_sample']:.4g}: x{f['total_savings']:.2f}"
            f" (without prefix reuse {f['dedup_no_prefix_per_sample']:.4g}: x{f['total_savings_no_prefix']:.2f})"
        )
    return result


if __name__ == "__main__":
    main()
