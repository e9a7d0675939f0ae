"""Local-energy FLOPs per sample vs chain length N (open TFIM), dense vs dedup, with power-law fits.

For each N a paper-shape VQ-NQS (3 blocks + the half-block, ``--d-model`` 256, 8 heads, 4-spin tokens,
``--bits`` 6) is built UNTRAINED, with its codebooks fitted to its own samples (one codebook upkeep,
``vqnqs.profiling.untrained``): its reuse rates say what the engine does with a data-driven codebook, and
may differ from those of a trained model (the pipeline's profile stage measures the trained students).

On ``--batch`` exact samples (default 512) the local energy's FLOPs are counted by component on both
paths (``vqnqs.profiling.flops``). The dense path's FLOPs per sample do not depend on the batch (every TFIM
sample has N + 1 connections, each a full forward pass), so they are counted on the first
``--dense-samples`` samples only (default 16; ``--dense-samples 0``: the whole batch), which saves most of
the time; the dedup path always runs on the whole batch (its reuse spans the batch). ``--time`` also
times both paths (median of ``--repeats``).

    python benchmarks/tfim_scaling.py                        # N = 16 24 32 48 64, d = 256, 6 bits
    python benchmarks/tfim_scaling.py --sizes 16,32,64,128,256,384 --d-model 64
    python benchmarks/tfim_scaling.py --time --repeats 3 --threads 2

Writes ``benchmarks/results/tfim_scaling_d<d>_<bits>bits[_<tag>].csv`` (rows: N x component, FLOPs per
sample on each path; component ``total`` the sum) and ``.json`` (fitted exponents and prefactors of
FLOPs/sample ~ N^a per path and component, unique fractions, timings, environment), and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

from vqnqs.io import atomic_open, write_json
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.profiling.batches import distinct_samples, draw_samples
from vqnqs.profiling.flop_profile import profile_flops
from vqnqs.profiling.flops import COMPONENTS
from vqnqs.profiling.quantized import model_bits
from vqnqs.profiling.scaling import fit_power_law
from vqnqs.profiling.timing import environment, load_average, time_local_energy
from vqnqs.profiling.untrained import untrained_vq_model

RESULTS = Path(__file__).resolve().parent / "results"
# Dense forward; the engine (attention once per distinct prefix); the engine without prefix reuse (the paper's).
PATHS = ("dense", "dedup", "dedup_no_prefix")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16,24,32,48,64", help="comma-separated chain lengths (multiples of 4)")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-heads", type=int, default=8)
    parser.add_argument("--n-blocks", type=int, default=3)
    parser.add_argument("--bits", type=int, default=6)
    parser.add_argument("--patch", type=int, default=4, help="spins per token (default 4)")
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--dense-samples", type=int, default=16, help="samples the dense FLOPs are counted on")
    parser.add_argument("--matmul-only", action="store_true", help="count matmul FLOPs only (no elementwise ops)")
    parser.add_argument("--time", action="store_true", help="also time both paths")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tag", default="")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, n: int) -> dict:
    hamiltonian = build_hamiltonian("tfim", str(n), gamma=args.gamma)
    model = untrained_vq_model(
        hamiltonian,
        bits=args.bits,
        d_model=args.d_model,
        n_heads=args.n_heads,
        n_blocks=args.n_blocks,
        patch=args.patch,
        seed=args.seed,
        init_samples=args.batch,
        device=args.device,
    )
    elementwise = not args.matmul_only
    s = distinct_samples(draw_samples(model, args.batch, args.seed + 100))  # as the profile counts them
    dense_samples = args.dense_samples if args.dense_samples > 0 else None  # exact for the TFIM (N + 1 each)
    flops = profile_flops(hamiltonian, model, batches=[s], elementwise=elementwise, dense_samples=dense_samples)
    record = {
        "n_sites": n,
        "n_tokens": model.patching.n_tokens,
        "configs_per_sample": flops.configs_per_sample,
        "flops_dense_per_sample": flops.flops_dense_per_sample,
        "flops_dedup_per_sample": flops.flops_dedup_per_sample,
        "flops_dedup_no_prefix_per_sample": flops.flops_dedup_no_prefix_per_sample,
        "total_savings": flops.total_savings,
        "total_savings_no_prefix": flops.total_savings_no_prefix,
        "quantized_ops_savings": flops.quantized_ops_savings,
        "unique_fraction": flops.unique_fraction(),
        "code_tuples": flops.code_tuples,
        "components": {
            name: {path: paths[path] for path in PATHS} for name, paths in flops.by_component_all_paths().items()
        },
        "bits": model_bits(model),
    }
    if args.time:
        timing = time_local_energy(hamiltonian, model, s, args.repeats, args.warmup)
        record["timing"] = timing.to_dict()
    return record


def fits(records: list[dict]) -> dict:
    """Exponent and prefactor of FLOPs/sample ~ N^a per path, for the total and each non-zero component."""
    n = [r["n_sites"] for r in records]
    out: dict = {}
    for component in ("total", *COMPONENTS):
        for path in PATHS:
            if component == "total":
                y = [r[f"flops_{path}_per_sample"] for r in records]
            else:
                y = [r["components"][component][path] for r in records]
            if len(set(n)) >= 2 and all(v > 0 for v in y):
                exponent, prefactor = fit_power_law(n, y)
                out.setdefault(component, {})[path] = {"exponent": exponent, "prefactor": prefactor}
    if all("timing" in r for r in records) and len(set(n)) >= 2:
        for path in ("dense", "dedup"):
            exponent, prefactor = fit_power_law(
                n, [r["timing"][f"{path}_s"] / r["timing"]["n_samples"] for r in records]
            )
            out.setdefault("time_per_sample", {})[path] = {"exponent": exponent, "prefactor": prefactor}
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sizes = sorted({int(x) for x in args.sizes.split(",") if x.strip()})
    started, load_before = time.perf_counter(), load_average()
    records = []
    for n in sizes:
        t0 = time.perf_counter()
        records.append(measure(args, n))
        r = records[-1]
        print(
            f"N={n:4d}: FLOPs/sample dense {r['flops_dense_per_sample']:.4g}, dedup {r['flops_dedup_per_sample']:.4g}"
            f" (x{r['total_savings']:.2f}; x{r['total_savings_no_prefix']:.2f} without prefix reuse; "
            f"quantised ops x{r['quantized_ops_savings']:.2f}) "
            f"[{time.perf_counter() - t0:.0f} s]",
            flush=True,
        )
    fitted = fits(records)
    bits = records[0]["bits"]
    name = f"tfim_scaling_d{args.d_model}_{bits:g}bits{'_' + args.tag if args.tag else ''}"
    rows = []
    for r in records:
        for component in ("total", *COMPONENTS):
            if component == "total":
                flops = {path: r[f"flops_{path}_per_sample"] for path in PATHS}
            else:
                flops = r["components"][component]
            rows.append(
                {
                    "system": "tfim",
                    "size": str(r["n_sites"]),
                    "n_sites": r["n_sites"],
                    "model": "vq-nqs-untrained",
                    "bits": bits,
                    "component": component,
                    **{f"flops_{path}_per_sample": flops[path] for path in PATHS},
                }
            )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(args.out_dir / f"{name}.csv") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    result = {
        "benchmark": "tfim_scaling",
        "model": "UNTRAINED paper-shape VQ-NQS, codebooks k-means++-initialised on its own samples",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "flop_ops": "matmul" if args.matmul_only else "matmul+elementwise",
        "fits": fitted,
        "records": records,
        "environment": environment(args.device),
        "load_before": load_before,
        "load_after": load_average(),
        "wall_time_s": time.perf_counter() - started,
        "command": " ".join(sys.argv) if argv is None else " ".join(["tfim_scaling.py", *argv]),
    }
    write_json(args.out_dir / f"{name}.json", result)

    print(f"\nFLOPs per sample ~ prefactor * N^exponent ({result['flop_ops']}, batch {args.batch}):")
    print(f"{'component':22s}" + "".join(f"{path + ' exp':>22s}" for path in PATHS))
    for component, paths in fitted.items():
        exponents = [paths.get(path, {}).get("exponent", float("nan")) for path in PATHS]
        print(f"{component:22s}" + "".join(f"{e:22.3f}" for e in exponents))
    print(f"-> {args.out_dir / name}.csv, .json")
    return result


if __name__ == "__main__":
    main()
