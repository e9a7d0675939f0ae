"""Wall-clock of ONE VMC iteration, baseline transformer vs VQ-NQS of the same shape, split by part.

What is timed: :func:`vqnqs.vmc.step.vmc_step`, the step training runs (SR: minSR + SPRING momentum), as the
train stage builds it (``TrainConfig`` defaults: d_model 32, 4 heads, 2 blocks, default patch, float32,
chunk 1024). It reports its own parts (``STEP_PARTS``): sampling (exact autoregressive samples and their
distinct rows), local_energy (E_loc of each distinct sample through the engine), gradient (per-sample
log-derivatives), sr (the SR solve and the update) and upkeep (codebook upkeep; ~0 for the baseline).

How: for each system both models (``--bits`` bits per location for VQ-NQS, default 24 = 4 heads x 64 codes)
start from the same seed with their own SR optimiser and sampler. Each runs ``--warmup`` untimed iterations
first (codebooks data-initialised by the upkeep, the SR momentum in place), then ``--repeats`` timed ones;
within a repeat the models alternate which goes first. Medians per part and of the total are reported, with
the distinct samples per iteration and the configurations per second of the local energy. Wall-clock depends
on the other jobs on the machine: the 1-minute load average is recorded before and after each system.

    python benchmarks/vmc_iteration.py --threads 1                       # TFIM 32..256, Heisenberg 4x4, 6x6
    python benchmarks/vmc_iteration.py --threads 1 --with-384 --tag n384
    python benchmarks/vmc_iteration.py --tfim 32,64 --heisenberg '' --engine both --n-samples 128

Writes ``benchmarks/results/vmc_iteration_<tag>.json`` (records, power-law exponents of seconds vs N for the
TFIM chains, VQ/baseline speed ratio and dominant part per system, environment), ``.csv`` (one row per
system x model x engine) and ``.png`` (log-log seconds per iteration vs N, total and local energy).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

from vqnqs.io import atomic_open, write_json
from vqnqs.models import AutoregressiveTransformer, VQTransformer, make_vq_model
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.profiling.scaling import fit_power_law
from vqnqs.profiling.timing import environment, load_average
from vqnqs.stages.config import DTYPES, TrainConfig
from vqnqs.vmc.log_psi import ENGINES
from vqnqs.vmc.optim import make_optimizer
from vqnqs.vmc.step import STEP_PARTS, VMCContext, vmc_step

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("baseline", "vq")
DEFAULTS = TrainConfig()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    add = parser.add_argument
    add("--tfim", default="32,64,128,256", help="open TFIM chain lengths, comma-separated ('' for none)")
    add("--with-384", action="store_true", help="also the N = 384 chain (~1 min per iteration at 256 samples)")
    add("--heisenberg", default="4x4,6x6", help="open Heisenberg square lattices, comma-separated ('' for none)")
    add("--n-samples", type=int, default=256, help="exact samples per iteration, both models (default 256)")
    add("--bits", type=int, default=24, help="VQ bits per location, heads x log2(codes) (default 24: 4 x 64)")
    add("--codes", type=int, default=DEFAULTS.codes, help=f"codes per codebook (default {DEFAULTS.codes})")
    add("--d-model", type=int, default=DEFAULTS.d_model)
    add("--n-heads", type=int, default=DEFAULTS.n_heads)
    add("--n-blocks", type=int, default=DEFAULTS.n_blocks)
    add("--patch", type=int, default=None, help="spins per token (default: 4 on a chain, 2x2 on a square)")
    add("--dtype", choices=tuple(DTYPES), default=DEFAULTS.dtype, help="network precision (default float32)")
    add(
        "--engine",
        default="dedup",
        help=f"comma-separated local-energy engines of {', '.join(ENGINES)}, or 'both' (= dedup,dense); default dedup",
    )
    add("--chunk-size", type=int, default=DEFAULTS.chunk_size)
    add("--warmup", type=int, default=3, help="untimed iterations per model first (default 3)")
    add("--repeats", type=int, default=3, help="timed iterations per model (median reported; default 3)")
    add("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    add("--seed", type=int, default=0)
    add("--tag", default="", help="output name suffix (default: d<d>_<bits>bits_ns<samples>)")
    add("--out-dir", type=Path, default=RESULTS)
    add("--no-plot", action="store_true", help="skip the PNG figure")
    return parser.parse_args(argv)


def make_run(args: argparse.Namespace, hamiltonian, model_name: str, engine: str) -> dict:
    """Model, SR optimiser, sampler and VMC config of one variant, built as the train stage builds them."""
    config = TrainConfig(
        model=model_name,
        bits=args.bits if model_name == "vq" else None,
        codes=args.codes,
        d_model=args.d_model,
        n_heads=args.n_heads,
        n_blocks=args.n_blocks,
        patch=args.patch,
        n_samples=args.n_samples,
        dtype=args.dtype,
        chunk_size=args.chunk_size,
        engine=engine,
        seed=args.seed,
        device="cpu",
    )
    shape = config.transformer_config(hamiltonian)
    torch.manual_seed(config.seed)
    if model_name == "vq":
        model = make_vq_model(shape, config.vq_config(config.bits))
    else:
        model = AutoregressiveTransformer(shape)
    model = model.to("cpu", DTYPES[config.dtype])
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr)
    generator = torch.Generator("cpu").manual_seed(config.seed)
    return {"model_name": model_name, "engine": engine, "config": config, "model": model,
            "optimizer": optimizer, "generator": generator, "step": 0, "timed": []}  # fmt: skip


def iterate(run: dict, hamiltonian) -> object:
    run["step"] += 1
    config = run["config"]
    context = VMCContext(hamiltonian, run["optimizer"], run["generator"], config.chunk_size, config.engine)
    return vmc_step(run["model"], config, context, run["step"])


def measure(args: argparse.Namespace, system: str, size: str) -> list[dict]:
    """Warm up, then time every (model, engine) variant on one system; one record per variant."""
    hamiltonian = build_hamiltonian(system, size, "open")
    engines = ("dedup", "dense") if args.engine == "both" else tuple(args.engine.split(","))
    unknown = set(engines) - set(ENGINES)
    if unknown:
        raise SystemExit(f"--engine {args.engine}: {', '.join(sorted(unknown))} not among {', '.join(ENGINES)}")
    runs = [make_run(args, hamiltonian, m, e) for e in engines for m in MODELS]
    load_before = load_average()
    for run in runs:
        for _ in range(args.warmup):
            iterate(run, hamiltonian)
    for repeat in range(args.repeats):  # alternate which variant goes first
        for run in runs if repeat % 2 == 0 else runs[::-1]:
            run["timed"].append(iterate(run, hamiltonian))
    load_after = load_average()
    records = []
    for run in runs:
        timed, model = run["timed"], run["model"]
        seconds = {part: statistics.median(r.seconds[part] for r in timed) for part in STEP_PARTS}
        totals = [sum(r.seconds.values()) for r in timed]
        records.append({
            "system": system, "size": size, "n_sites": hamiltonian.n_sites, "model": run["model_name"],
            "engine": run["engine"], "bits": args.bits if run["model_name"] == "vq" else None,
            "n_params": sum(p.numel() for p in model.parameters()), "n_samples": args.n_samples,
            "total_s": statistics.median(totals), "total_all_s": totals,
            **{f"{part}_s": value for part, value in seconds.items()},
            "dominant_part": max(seconds, key=seconds.get),
            "distinct_samples": statistics.median(r.distinct_samples for r in timed),
            "eloc_configs_per_s": statistics.median(r.eloc_configs_per_s for r in timed),
            "energy_per_site": timed[-1].stats.mean / hamiltonian.n_sites,
            "code_usage": model.code_usage() if isinstance(model, VQTransformer) else None,
            "load_before": load_before, "load_after": load_after,
        })  # fmt: skip
    return records


def summarise(records: list[dict]) -> dict:
    """VQ/baseline speed ratios per system and engine; exponents of seconds ~ N^a over the TFIM chains."""
    ratios, fits = {}, {}
    by_key = {(r["system"], r["size"], r["engine"], r["model"]): r for r in records}
    for (system, size, engine, model), r in by_key.items():
        if model == "vq" and (system, size, engine, "baseline") in by_key:
            base = by_key[(system, size, engine, "baseline")]
            ratios.setdefault(f"{system}_{size}", {})[engine] = {
                "speedup_total": base["total_s"] / r["total_s"],  # > 1: VQ-NQS iteration faster
                "speedup_local_energy": base["local_energy_s"] / r["local_energy_s"],
                "dominant_baseline": base["dominant_part"],
                "dominant_vq": r["dominant_part"],
            }
    for engine in sorted({r["engine"] for r in records}):
        for model in MODELS:
            chain = sorted((r for r in records if r["system"] == "tfim" and r["engine"] == engine
                            and r["model"] == model), key=lambda r: r["n_sites"])  # fmt: skip
            if len(chain) < 2:
                continue
            n = [r["n_sites"] for r in chain]
            for quantity in ("total", *STEP_PARTS):
                y = [r[f"{quantity}_s"] for r in chain]
                if all(v > 0 for v in y):
                    exponent, prefactor = fit_power_law(n, y)
                    fits.setdefault(f"{model}_{engine}", {})[quantity] = {"exponent": exponent, "prefactor": prefactor}
    return {"speed_ratio": ratios, "fits": fits}


def plot(records: list[dict], fits: dict, path: Path) -> None:
    """Log-log seconds per iteration vs N (TFIM chains): total (solid) and local energy (dashed) per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    colors = {"baseline": "tab:blue", "vq": "tab:red"}
    for key, quantities in fits.items():
        model, engine = key.split("_", 1)
        chain = sorted((r for r in records if r["system"] == "tfim" and r["model"] == model
                        and r["engine"] == engine), key=lambda r: r["n_sites"])  # fmt: skip
        n = [r["n_sites"] for r in chain]
        for quantity, style in (("total", "o-"), ("local_energy", "s--")):
            if quantity in quantities:
                label = f"{model} ({engine}) {quantity.replace('_', ' ')}: N^{quantities[quantity]['exponent']:.2f}"
                ax.plot(n, [r[f"{quantity}_s"] for r in chain], style, color=colors[model], label=label,
                        alpha=1.0 if engine == "dedup" else 0.5)  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="N (open TFIM chain)", ylabel="seconds per VMC iteration")
    ax.set_title(f"one VMC iteration, {records[0]['n_samples']} samples", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sizes = sorted({int(x) for x in args.tfim.split(",") if x.strip()} | ({384} if args.with_384 else set()))
    systems = [("tfim", str(n)) for n in sizes] + [("heisenberg", s) for s in args.heisenberg.split(",") if s]
    started, load_before, records = time.perf_counter(), load_average(), []
    for system, size in systems:
        t0 = time.perf_counter()
        records += (new := measure(args, system, size))
        parts = "  ".join(f"{r['model']}/{r['engine']} {r['total_s']:.3f} s ({r['dominant_part']})" for r in new)
        print(f"{system} {size:>4s}: {parts}  load {new[0]['load_after']:.2f} [{time.perf_counter() - t0:.0f} s]",
              flush=True)  # fmt: skip
    summary = summarise(records)
    tag = args.tag or f"d{args.d_model}_{args.bits}bits_ns{args.n_samples}"
    name = args.out_dir / f"vmc_iteration_{tag}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    columns = [k for k in records[0] if k not in ("total_all_s", "load_before", "load_after")]
    with atomic_open(f"{name}.csv") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    result = {
        "benchmark": "vmc_iteration",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        **summary,
        "records": records,
        "environment": environment("cpu"),
        "load_before": load_before,
        "load_after": load_average(),
        "wall_time_s": time.perf_counter() - started,
        "command": " ".join(sys.argv) if argv is None else " ".join(["vmc_iteration.py", *argv]),
    }
    write_json(f"{name}.json", result)
    if summary["fits"] and not args.no_plot:
        plot(records, summary["fits"], Path(f"{name}.png"))

    print(f"\n{'system':16s}{'model':>16s}" + "".join(f"{p:>13s}" for p in (*STEP_PARTS, "total")) + "   distinct")
    for r in records:
        cells = "".join(f"{r[f'{p}_s']:13.4f}" for p in (*STEP_PARTS, "total"))
        print(f"{r['system'] + ' ' + r['size']:16s}{r['model'] + '/' + r['engine']:>16s}{cells}"
              f"{r['distinct_samples']:11.0f}")  # fmt: skip
    for system, engines in summary["speed_ratio"].items():
        for engine, ratio in engines.items():
            print(f"{system:16s} {engine}: baseline/VQ time x{ratio['speedup_total']:.2f} (local energy "
                  f"x{ratio['speedup_local_energy']:.2f}); dominant: baseline {ratio['dominant_baseline']}, "
                  f"VQ {ratio['dominant_vq']}")  # fmt: skip
    for key, quantities in summary["fits"].items():
        print(f"{key}: seconds ~ N^a: " + ", ".join(f"{q} {v['exponent']:.2f}" for q, v in quantities.items()))
    print(f"load {load_before} -> {result['load_after']}; -> {name}.csv, .json" + ("" if args.no_plot else ", .png"))
    return result


if __name__ == "__main__":
    main()
