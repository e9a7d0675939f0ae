"""Local-energy cost per sample vs system size: dense forward, dedup engine, incremental engine.

For each size a paper-shape VQ-NQS (3 blocks + the half-block, ``--d-model`` 256, 8 heads, 4-spin chain tokens
or 2x2 patches, ``--bits`` 6) is built UNTRAINED with codebooks fitted to its own samples
(``vqnqs.profiling.untrained``), or loaded from ``--model-dir`` (a trained model: one size, its own). On
``--batch`` exact distinct samples it measures, per path of ``--paths``:

- FLOPs per sample by component (``vqnqs.profiling.flops``); the dense path on ``--dense-samples`` samples only
  (its cost per configuration does not depend on the batch), the dedup path up to ``--dedup-max-sites`` sites
  (its attention grows as N^3);
- with ``--time``, wall-clock per sample (median of ``--repeats``, paths alternating order);
- the incremental engine's work per connected configuration: rows computed per location (slots) and after
  deduplication, codes reused on a certificate vs computed, rows recomputed for safety;
- the process's peak resident memory (``ru_maxrss``) after the size's paths (all of them: run one path alone,
  ``--paths incremental``, to measure its memory);
- float32 against the dense forward, on ``--check-samples`` samples (0: skip): the share of codes equal to the
  dense float32 forward's, and the mean local energy against the dense float64 evaluation (relative), beside
  the dense float32 forward's own deviation from it.

    python benchmarks/incremental_scaling.py --sizes 32,64,128,256,384 --time
    python benchmarks/incremental_scaling.py --system heisenberg --sizes 6x6,12x12 --time
    python benchmarks/incremental_scaling.py --model-dir data/train_vq/tfim_32/bits24 --time

Writes ``benchmarks/results/incremental_<system>_<trained|untrained>_d<d>_<bits>bits[_position<W>][_<tag>].json``
(records, power-law fits of FLOPs and seconds per sample, the measured model's shape, environment), ``.csv``
(size x component x path) and ``.png``; the name and ``model_shape`` are the measured model's (a loaded
model's own, not the flags').
"""

from __future__ import annotations

import argparse
import copy
import csv
import resource
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from vqnqs.dedup import dense_codes
from vqnqs.dedup.incremental import incremental_log_prob
from vqnqs.io import atomic_open, write_json
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.profiling.batches import distinct_samples, draw_samples
from vqnqs.profiling.engine_cost import flops_by_component, seconds_per_sample
from vqnqs.profiling.flops import COMPONENTS
from vqnqs.profiling.quantized import model_bits
from vqnqs.profiling.scaling import fit_power_law
from vqnqs.profiling.timing import environment, load_average
from vqnqs.profiling.untrained import untrained_vq_model
from vqnqs.vmc.checkpoint import load_model
from vqnqs.vmc.local_energy import local_energy

RESULTS = Path(__file__).resolve().parent / "results"
PATHS = ("dense", "dedup", "incremental")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--system", choices=("tfim", "heisenberg"), default="tfim")
    add("--sizes", default="32,64,128,256,384", help="comma-separated sizes: N for a chain, LxW for a square")
    add("--model-dir", type=Path, default=None, help="a trained VQ model's out dir (its size replaces --sizes)")
    add("--paths", default=",".join(PATHS), help=f"comma-separated of {', '.join(PATHS)}")
    add("--d-model", type=int, default=256)
    add("--n-heads", type=int, default=8)
    add("--n-blocks", type=int, default=3)
    add("--bits", type=int, default=6)
    add("--batch", type=int, default=64, help="samples drawn (distinct ones kept); default 64")
    add("--dense-samples", type=int, default=4, help="samples the dense path runs on (default 4)")
    add("--check-samples", type=int, default=8, help="samples of the float32-vs-dense check (default 8)")
    add("--dedup-max-sites", type=int, default=128, help="run the dedup path up to this many sites (default 128)")
    add("--time", action="store_true", help="also time every path")
    add("--repeats", type=int, default=3)
    add("--no-flops", action="store_true", help="skip the FLOP counts (timing and memory only)")
    add("--dtype", choices=("float32", "float64"), default="float32")
    add("--threads", type=int, default=None)
    add("--seed", type=int, default=0)
    add("--tag", default="")
    add("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    unknown = set(args.paths.split(",")) - set(PATHS)
    if unknown:
        parser.error(f"--paths {args.paths}: {', '.join(sorted(unknown))} not among {', '.join(PATHS)}")
    return args


def n_sites_of(size: str) -> int:
    n = 1
    for part in size.split("x"):
        n *= int(part)
    return n


def build(args: argparse.Namespace, size: str):
    if args.model_dir is not None:
        model, info = load_model(args.model_dir / "model.pt")
        size = "x".join(str(d) for d in model.config.lattice_shape)
        hamiltonian = build_hamiltonian(info.get("system", args.system), size, "open")
        return hamiltonian, model.to(getattr(torch, args.dtype)).eval(), size
    hamiltonian = build_hamiltonian(args.system, size, "open")
    model = untrained_vq_model(
        hamiltonian, args.bits, args.d_model, args.n_heads, args.n_blocks, seed=args.seed,
        init_samples=max(args.batch, 256), dtype=getattr(torch, args.dtype),
    )  # fmt: skip
    return hamiltonian, model, size


def model_shape(model) -> dict:
    """The measured model's shape, as its config holds it (a loaded model's, not the flags')."""
    c = model.config
    keys = ("d_model", "n_heads", "n_blocks", "d_ff", "attention", "window")
    return {**{k: getattr(c, k) for k in keys}, "bits": model_bits(model)}


def measure(args: argparse.Namespace, size: str) -> dict:
    hamiltonian, model, size = build(args, size)
    n_sites = model.n_sites
    paths = [p for p in args.paths.split(",") if p != "dedup" or n_sites <= args.dedup_max_sites]
    s = distinct_samples(draw_samples(model, args.batch, args.seed + 100))
    on = {path: s[: args.dense_samples] if path == "dense" else s for path in paths}
    record: dict = {"size": size, "n_sites": n_sites, "n_tokens": model.patching.n_tokens, "bits": model_bits(model)}
    record["model"] = model_shape(model)
    record["samples"] = {path: int(batch.shape[0]) for path, batch in on.items()}
    conn = hamiltonian.connected(s)
    stats = incremental_log_prob(model, s, conn.configs, conn.valid).stats
    configs = int(conn.valid.sum())
    record["configs_per_sample"] = configs / s.shape[0]
    record["incremental_work_per_config"] = {key: value / configs for key, value in sorted(stats.items())}
    decided = stats["rows_certified"] + stats["rows_encoded"]
    record["certified_share"] = stats["rows_certified"] / decided if decided else None
    if not args.no_flops:
        record["flops_per_sample"] = {path: flops_by_component(hamiltonian, model, on[path], path) for path in paths}
    if args.time:
        record["seconds_per_sample"] = seconds_per_sample(hamiltonian, model, on, args.repeats)
    # Peak resident memory of the process so far (every path run above), before the check's dense float64 pass.
    record["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if args.check_samples > 0:
        record["float32_check"] = float32_check(hamiltonian, model, s[: args.check_samples])
    return record


def float32_check(hamiltonian, model, s: torch.Tensor) -> dict:
    """The incremental engine in float32 against the dense forward: the share of codes equal to the dense
    float32 forward's, and the mean local energy against the dense float64 evaluation (relative)."""
    model32, model64 = copy.deepcopy(model).float(), copy.deepcopy(model).double()
    conn = hamiltonian.connected(s)
    codes = incremental_log_prob(model32, s, conn.configs, conn.valid, record_codes=True).codes
    with torch.no_grad():
        dense = dense_codes(model32, conn.configs[conn.valid])
    same = [float((c[conn.valid] == d).all(-1).double().mean()) for c, d in zip(codes, dense, strict=True)]
    e32 = float(local_energy(hamiltonian, model32, s, engine="incremental").mean())
    dense32 = float(local_energy(hamiltonian, model32, s, engine="dense").mean())  # float32's own rounding
    e64 = float(local_energy(hamiltonian, model64, s, engine="dense").mean())
    return {
        "samples": int(s.shape[0]),
        "codes_identical": min(same) if same else 1.0,
        "mean_e_loc_rel": abs(e32 - e64) / abs(e64),
        "dense_float32_mean_e_loc_rel": abs(dense32 - e64) / abs(e64),
    }


def fits(records: list[dict]) -> dict:
    """Exponents of FLOPs and seconds per sample ~ N^a per path (total and per component), over the sizes."""
    out: dict = {}
    for key in ("flops_per_sample", "seconds_per_sample"):
        for path in PATHS:
            rows = [r for r in records if path in r.get(key, {})]
            if len({r["n_sites"] for r in rows}) < 2:
                continue
            n = [r["n_sites"] for r in rows]
            if key == "seconds_per_sample":
                out.setdefault(key, {})[path] = dict(
                    zip(("exponent", "prefactor"), fit_power_law(n, [r[key][path] for r in rows]), strict=True)
                )
                continue
            for component in ("total", *COMPONENTS):
                y = [r[key][path][component] for r in rows]
                if all(v > 0 for v in y):
                    exponent, prefactor = fit_power_law(n, y)
                    out.setdefault(key, {}).setdefault(component, {})[path] = {
                        "exponent": exponent,
                        "prefactor": prefactor,
                    }
    return out


def plot(records: list[dict], fitted: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_flops, ax_parts) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, marker in zip(PATHS, "osD", strict=True):
        for key, style in (("flops_per_sample", "-"), ("seconds_per_sample", ":")):
            rows = [r for r in records if name in r.get(key, {})]
            if not rows:
                continue
            n = [r["n_sites"] for r in rows]
            y = [r[key][name]["total"] if key == "flops_per_sample" else r[key][name] * 1e9 for r in rows]
            fit = fitted.get(key, {})
            exponent = (fit.get("total", {}).get(name) if key == "flops_per_sample" else fit.get(name)) or {}
            unit = "FLOPs" if key == "flops_per_sample" else "ns"
            label = f"{name} {unit}" + (f" ~N^{exponent['exponent']:.2f}" if exponent else "")
            ax_flops.plot(n, y, style, marker=marker, label=label)
    ax_flops.set(xscale="log", yscale="log", xlabel="sites N", ylabel="per sample (FLOPs; seconds x 1e9)")
    ax_flops.legend(fontsize=7)
    ax_flops.set_title("local energy per sample", fontsize=9)
    rows = [r for r in records if "incremental" in r.get("flops_per_sample", {})]
    if rows:
        n = [r["n_sites"] for r in rows]
        bottom = [0.0] * len(rows)
        for component in COMPONENTS:
            share = [
                r["flops_per_sample"]["incremental"][component] / r["flops_per_sample"]["incremental"]["total"]
                for r in rows
            ]
            if max(share) > 0.005:
                ax_parts.bar([str(x) for x in n], share, bottom=bottom, label=component)
                bottom = [b + v for b, v in zip(bottom, share, strict=True)]
        ax_parts.set(xlabel="sites N", ylabel="share of incremental FLOPs")
        ax_parts.legend(fontsize=7)
        ax_parts.set_title("incremental engine by component", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sizes = [args.model_dir.name] if args.model_dir is not None else [x for x in args.sizes.split(",") if x]
    started, load_before = time.perf_counter(), load_average()
    records = []
    for size in sizes:
        t0 = time.perf_counter()
        r = measure(args, size)
        records.append(r)
        flops = r.get("flops_per_sample", {})
        seconds = r.get("seconds_per_sample", {})
        work = Counter(r["incremental_work_per_config"])
        print(
            f"{r['size']:>8s}: FLOPs/sample "
            + ", ".join(f"{p} {v['total']:.3g}" for p, v in flops.items())
            + ("; s/sample " + ", ".join(f"{p} {v:.3g}" for p, v in seconds.items()) if seconds else "")
            + f"; per config: slot rows {work['slot_rows']:.2f}, unique {work['unique_rows']:.2f}, "
            f"certified share {r['certified_share'] or 0:.3f}; peak RSS {r['peak_rss_gib']:.2f} GiB "
            f"[{time.perf_counter() - t0:.0f} s]",
            flush=True,
        )
    fitted = fits(records)
    shape = records[0]["model"]
    bits = shape["bits"]
    source = "trained" if args.model_dir is not None else "untrained"
    attention = "" if shape["attention"] == "content" else f"_position{shape['window'] or ''}"
    name = f"incremental_{args.system}_{source}_d{shape['d_model']}_{bits:g}bits{attention}"
    name += f"_{args.tag}" if args.tag else ""
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows = [
        {"size": r["size"], "n_sites": r["n_sites"], "component": component, "path": path, "flops_per_sample": value}
        for r in records for path, parts in r.get("flops_per_sample", {}).items() for component, value in parts.items()
    ]  # fmt: skip
    if rows:
        with atomic_open(args.out_dir / f"{name}.csv") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    result = {
        "benchmark": "incremental_scaling",
        "model": f"{source} VQ-NQS"
        + (f" from {args.model_dir}" if args.model_dir else ", paper shape, codebooks k-means++ on its own samples"),
        # A loaded model's shape replaces the flags that build an untrained one.
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if args.model_dir is None or k not in ("d_model", "n_heads", "n_blocks", "bits")
        },
        "model_shape": shape,
        "fits": fitted,
        "records": records,
        "environment": environment("cpu"),
        "load_before": load_before,
        "load_after": load_average(),
        "wall_time_s": time.perf_counter() - started,
        "command": " ".join(sys.argv) if argv is None else " ".join(["incremental_scaling.py", *argv]),
    }
    write_json(args.out_dir / f"{name}.json", result)
    plot(
        records,
        fitted,
        args.out_dir / f"{name}.png",
        f"{args.system} {source} VQ-NQS, {bits:g} bits, batch {args.batch}",
    )
    for key, by_path in fitted.items():
        totals = {p: v for p, v in (by_path.get("total", by_path)).items()}
        print(f"{key} ~ N^a: " + ", ".join(f"{p} {v['exponent']:.2f}" for p, v in totals.items()))
    print(f"-> {args.out_dir / name}.json, .csv, .png")
    return result


if __name__ == "__main__":
    main()
