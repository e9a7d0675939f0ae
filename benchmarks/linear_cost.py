"""Local-energy cost vs system size of VMC-trained models: the baseline, today's VQ-NQS and the position family.

Trains each model by VMC on the open TFIM chain at Gamma = 1 (``vqnqs train``), the first size from scratch
and every larger one ``--init-from`` the size before, or takes trained models from ``--model-dir``. Then, per
model and size, on ``--batch`` distinct exact samples of the model, through each engine (dense, dedup,
incremental; :mod:`vqnqs.profiling.engine_cost`): forward passes per sample (FLOPs per sample over one dense
forward; dense = N + 1, the floor about 1), rows computed per connected configuration, seconds per sample.
Beside them each training's relative error against the exact (free-fermion) energy, its wall time and its
seconds per VMC step.

Models (``--models``):

    baseline   the transformer (content attention), no quantiser
    vq         today's VQ-NQS: content attention, ``--bits`` per location in every full block
    position   position attention (weights from token distances only, ``--window`` tokens back) and the
               final half-block quantised too: a flip moves only the rows within the window of it

Writes ``OUT/linear_cost.json``: ``sizes``; per ``"<model>/<engine>"`` the lists (one entry a size)
``forwards_per_sample``, ``rows_per_config``, ``seconds_per_sample``, ``rel_error``, ``train_seconds``,
``seconds_per_step``; ``fits`` (the exponent a of each list ~ N^a, per path); ``verdicts`` (the targets of
the position family, each with the figures it was decided on); plus ``linear_cost.csv`` and ``.png``.

    python benchmarks/linear_cost.py --quick                      # N = 32, 64, 128 at d = 32, about 15 min
    python benchmarks/linear_cost.py --sizes 32,64,128,256 --d-model 64 --out-dir benchmarks/results/linear_cost_d64
    python benchmarks/linear_cost.py --model-dir position:256=runs/pos256 --models position --sizes 256
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from vqnqs.io import atomic_open, write_json
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.profiling.batches import distinct_samples, draw_samples
from vqnqs.profiling.engine_cost import ENGINES, engine_costs
from vqnqs.profiling.scaling import fit_power_law
from vqnqs.profiling.timing import environment, load_average
from vqnqs.vmc.checkpoint import load_model

RESULTS = Path(__file__).resolve().parent / "results"
# Each model's train settings (--set KEY=VALUE) beyond the shared ones, and the engine it trains through
# (the fastest exact engine for it in seconds per sample; see benchmarks/README.md).
MODELS = {
    "baseline": ("model=baseline", "engine=dedup"),
    "vq": ("model=vq", "bits={bits}", "engine=dedup"),
    "position": (
        "model=vq", "bits={bits}", "attention=position", "window={window}", "quantize_final=true",
        "engine=incremental",
    ),
}  # fmt: skip
LISTS = ("forwards_per_sample", "rows_per_config", "seconds_per_sample")
TRAIN_LISTS = ("rel_error", "train_seconds", "seconds_per_step")
QUICK = {"sizes": "32,64,128", "first_steps": 60, "steps": 10}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n")[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--quick", action="store_true", help=f"sizes {QUICK['sizes']}, {QUICK['first_steps']} then "
        f"{QUICK['steps']} steps a size (about 15 min on 2 cores)")  # fmt: skip
    add("--sizes", default="32,64,128,256", help="comma-separated chain lengths N, increasing (default 32..256)")
    add("--models", default=",".join(MODELS), help=f"comma-separated of {', '.join(MODELS)}")
    add("--d-model", type=int, default=32, help="width of every model (default 32, the train default)")
    add("--bits", type=int, default=12, help="bits per location of the VQ models (default 12: 2 x 64 codes)")
    add("--window", type=int, default=4, help="tokens back the position attention reaches (default 4)")
    add("--first-steps", type=int, default=200, help="VMC steps at the first size, from scratch (default 200)")
    add("--steps", type=int, default=20, help="VMC steps at every larger size, from the one before (default 20)")
    add("--n-samples", type=int, default=256, help="samples per VMC step (default 256)")
    add("--model-dir", action="append", default=[], metavar="MODEL:N=DIR",
        help="a trained model's out dir instead of training it (repeatable)")  # fmt: skip
    add("--batch", type=int, default=256, help="samples drawn for the cost figures, distinct kept (default 256)")
    add("--dense-samples", type=int, default=8, help="samples the dense engine runs on (default 8)")
    add("--repeats", type=int, default=3, help="timed local energies per engine (median; default 3)")
    add("--threads", type=int, default=1, help="torch CPU threads of training and measurement (default 1)")
    add("--seed", type=int, default=0)
    add("--out-dir", type=Path, default=None, help="default benchmarks/results/linear_cost_d<d>[_quick]")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.first_steps, args.steps = QUICK["sizes"], QUICK["first_steps"], QUICK["steps"]
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"--models {args.models}: {', '.join(sorted(unknown))} not among {', '.join(MODELS)}")
    try:
        args.sizes = [int(n) for n in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes {args.sizes}: expected comma-separated integers")
    if args.sizes != sorted(set(args.sizes)) or args.sizes[0] < 2:
        parser.error(f"--sizes {args.sizes}: expected increasing chain lengths >= 2")
    args.models = args.models.split(",")
    args.model_dir = dict(parse_model_dir(parser, spec) for spec in args.model_dir)
    if args.out_dir is None:
        args.out_dir = RESULTS / f"linear_cost_d{args.d_model}{'_quick' if args.quick else ''}"
    return args


def parse_model_dir(parser: argparse.ArgumentParser, spec: str) -> tuple[tuple[str, int], Path]:
    name, _, rest = spec.partition(":")
    size, _, directory = rest.partition("=")
    if name not in MODELS or not size.isdigit() or not directory:
        parser.error(f"--model-dir {spec}: expected MODEL:N=DIR with MODEL one of {', '.join(MODELS)}")
    path = Path(directory)
    if not (path / "model.pt").is_file() or not (path / "metrics.json").is_file():
        parser.error(f"--model-dir {spec}: {path} has no model.pt and metrics.json of a train run")
    return (name, int(size)), path


def vqnqs(work: Path, *arguments: str) -> None:
    """Run one ``vqnqs`` stage in a subprocess; its output goes to this one's, its MLflow runs to
    ``work/mlflow.db`` (not the pipeline's store) unless ``MLFLOW_TRACKING_URI`` is set."""
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{work.resolve() / 'mlflow.db'}", **os.environ}
    if subprocess.run([sys.executable, "-m", "vqnqs", *arguments], env=env).returncode:
        sys.exit(f"linear_cost.py: vqnqs {' '.join(arguments[:5])} ... failed (its message is above)")


def train(args: argparse.Namespace, name: str, n: int, previous: Path | None) -> Path:
    """The out dir of ``name`` trained at size ``n`` (resumed if already there)."""
    work = args.out_dir / "models"
    reference, out = work / f"reference_{n}.json", work / f"{name}_{n}"
    work.mkdir(parents=True, exist_ok=True)
    if not reference.is_file():
        vqnqs(work, "reference", "--system", "tfim", "--size", str(n), "--out", str(reference))
    knobs = [k.format(bits=args.bits, window=args.window) for k in MODELS[name]] + [
        f"d_model={args.d_model}", f"n_samples={args.n_samples}", f"threads={args.threads}", f"seed={args.seed}",
        f"steps={args.steps if previous else args.first_steps}", "eval_samples=2048", "chunk_size=256",
    ]  # fmt: skip
    vqnqs(
        work,
        "train", "--system", "tfim", "--size", str(n), "--reference", str(reference), "--out-dir", str(out),
        *[a for k in knobs for a in ("--set", k)], *(["--init-from", str(previous)] if previous else []),
        "--on-change", "restart",
    )  # fmt: skip
    return out


def measure(args: argparse.Namespace, directory: Path) -> dict:
    """The cost figures and the training's of the model trained in ``directory``."""
    model, _ = load_model(directory / "model.pt")
    model.eval()
    hamiltonian = build_hamiltonian("tfim", "x".join(map(str, model.config.lattice_shape)), "open")
    s = distinct_samples(draw_samples(model, args.batch, args.seed + 100))
    record = engine_costs(hamiltonian, model, s, ENGINES, args.dense_samples, args.repeats)
    metrics = json.loads((directory / "metrics.json").read_text())
    shape = model.config
    record["model"] = {
        "dir": str(directory), "d_model": shape.d_model, "n_heads": shape.n_heads, "n_blocks": shape.n_blocks,
        "attention": shape.attention, "window": shape.window, "bits": metrics.get("bits"),
        "n_tokens": model.patching.n_tokens, "samples": int(s.shape[0]),
    }  # fmt: skip
    record["training"] = {
        "rel_error": metrics["rel_error"],
        "train_seconds": metrics["wall_time_s"],
        "seconds_per_step": metrics["seconds_per_step"],
        "steps": metrics["steps"],
    }
    return record


def tables(records: dict[tuple[str, int], dict], sizes: list[int]) -> dict[str, dict[str, list]]:
    """Per ``"<model>/<engine>"`` the lists over ``sizes`` (None where a size was not measured)."""
    models = sorted({name for name, _ in records}, key=list(MODELS).index)
    out: dict[str, dict[str, list]] = {}
    for name in models:
        for engine in ENGINES:
            rows = [records.get((name, n)) for n in sizes]
            out[f"{name}/{engine}"] = {
                **{key: [r[key][engine] if r else None for r in rows] for key in LISTS},
                **{key: [r["training"][key] if r else None for r in rows] for key in TRAIN_LISTS},
            }
    return out


def fits(paths: dict[str, dict[str, list]], sizes: list[int]) -> dict[str, dict[str, float]]:
    """The exponent ``a`` of each list ``~ N^a`` per path, over the sizes where it is positive."""
    out: dict[str, dict[str, float]] = {}
    for path, lists in paths.items():
        for key, values in lists.items():
            points = [(n, v) for n, v in zip(sizes, values, strict=True) if v is not None and v > 0]
            if len(points) >= 2:
                out.setdefault(path, {})[key] = fit_power_law(*zip(*points, strict=True))[0]
    return out


def best_engine(paths: dict[str, dict[str, list]], model: str, key: str) -> str:
    """The engine of ``model`` with the least ``key`` (forward passes or seconds per sample) at the largest size."""
    return min(ENGINES, key=lambda e: paths[f"{model}/{e}"][key][-1] or float("inf"))


def verdicts(paths: dict[str, dict[str, list]], fitted: dict, sizes: list[int]) -> dict:
    """The issue's targets for the position family, each ``{"holds": bool | None, ...the figures}``; None where
    a figure it needs was not measured."""
    if "position/dense" not in paths:
        return {}
    best, fastest = (
        best_engine(paths, "position", "forwards_per_sample"),
        best_engine(paths, "position", "seconds_per_sample"),
    )
    cheapest, quickest, largest = paths[f"position/{best}"], paths[f"position/{fastest}"], sizes[-1]

    def verdict(holds, **figures):
        return {"holds": None if any(v is None for v in figures.values()) else bool(holds(**figures)), **figures}

    seconds = quickest["seconds_per_sample"][-1]
    out = {
        "best_engine": best,
        "fastest_engine": fastest,
        "forwards_at_largest_le_3": verdict(lambda f, n: f <= 3, f=cheapest["forwards_per_sample"][-1], n=largest),
        "forwards_exponent_le_0.2": verdict(
            lambda a: a <= 0.2, a=fitted[f"position/{best}"].get("forwards_per_sample")
        ),
        "rows_exponent_le_0.2": verdict(lambda a: a <= 0.2, a=fitted["position/incremental"].get("rows_per_config")),
        "x10_faster_than_dense": verdict(
            lambda dense, new: dense >= 10 * new, dense=paths["position/dense"]["seconds_per_sample"][-1], new=seconds
        ),
        "x3_faster_than_dedup_same_model": verdict(
            lambda dedup, new: dedup >= 3 * new, dedup=paths["position/dedup"]["seconds_per_sample"][-1], new=seconds
        ),
    }  # fmt: skip
    if "baseline/dense" in paths:
        base = paths["baseline/dense"]
        out["step_x4_faster_than_baseline"] = verdict(
            lambda base, new: base >= 4 * new, base=base["seconds_per_step"][-1], new=cheapest["seconds_per_step"][-1]
        )
        # Equal wall time: no worse in error while no slower to train (a fair comparison needs both).
        out["accuracy_no_worse_than_baseline"] = {
            str(n): verdict(
                lambda e, e_base, t, t_base: e <= e_base and t <= t_base,
                e=cheapest["rel_error"][i], e_base=base["rel_error"][i],
                t=cheapest["train_seconds"][i], t_base=base["train_seconds"][i],
            )
            for i, n in enumerate(sizes)
            if n >= 64
        }  # fmt: skip
    return out


def write_csv(path: Path, paths: dict[str, dict[str, list]], sizes: list[int]) -> None:
    keys = (*LISTS, *TRAIN_LISTS)
    with atomic_open(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["model", "engine", "n_sites", *keys])
        for name, lists in paths.items():
            for i, n in enumerate(sizes):
                writer.writerow([*name.split("/"), n, *(lists[k][i] for k in keys)])


def plot(path: Path, paths: dict[str, dict[str, list]], sizes: list[int], fitted: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("forwards_per_sample", "forward passes per sample"), ("seconds_per_sample", "seconds per sample"),
              ("rows_per_config", "rows per connected configuration"))  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.4))
    styles = {"baseline": "-", "vq": "--", "position": ":"}
    for ax, (key, label) in zip(axes, panels, strict=True):
        for name, lists in paths.items():
            points = [(n, v) for n, v in zip(sizes, lists[key], strict=True) if v is not None]
            if not points:
                continue
            model, engine = name.split("/")
            a = fitted.get(name, {}).get(key)
            ax.plot(*zip(*points, strict=True), styles[model], marker="osD"[ENGINES.index(engine)],
                    label=f"{name}" + (f" ~N^{a:.2f}" if a is not None else ""))  # fmt: skip
        ax.set(xscale="log", yscale="log", xlabel="sites N", title=label)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started, load_before = time.perf_counter(), load_average()
    records: dict[tuple[str, int], dict] = {}
    for name in args.models:
        previous = None
        for n in args.sizes:
            directory = args.model_dir.get((name, n)) or train(args, name, n, previous)
            records[name, n] = measure(args, directory)
            r = records[name, n]
            print(f"{name} N={n}: forward passes/sample " + ", ".join(
                f"{e} {v:.2f}" for e, v in r["forwards_per_sample"].items()) +
                f"; rel. error {r['training']['rel_error']:.2e}", flush=True)  # fmt: skip
            previous = directory
    paths = tables(records, args.sizes)
    fitted = fits(paths, args.sizes)
    result = {
        "benchmark": "linear_cost",
        "sizes": args.sizes,
        **paths,
        "fits": fitted,
        "verdicts": verdicts(paths, fitted, args.sizes),
        "records": {f"{name}/{n}": r for (name, n), r in records.items()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "model_dir"},
        "model_dirs": {f"{name}:{n}": str(path) for (name, n), path in args.model_dir.items()},
        "environment": environment("cpu"),
        "load_before": load_before,
        "load_after": load_average(),
        "wall_time_s": time.perf_counter() - started,
        "command": " ".join(["linear_cost.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.out_dir / "linear_cost.json", result)
    write_csv(args.out_dir / "linear_cost.csv", paths, args.sizes)
    title = f"open TFIM, Gamma = 1, d = {args.d_model}, VMC-trained; forward passes = FLOPs / one dense forward"
    plot(args.out_dir / "linear_cost.png", paths, args.sizes, fitted, title)
    for key, value in result["verdicts"].items():
        print(f"{key}: {value}")
    print(f"-> {args.out_dir}/linear_cost.json, .csv, .png ({result['wall_time_s'] / 60:.1f} min)")
    return result


if __name__ == "__main__":
    main()
