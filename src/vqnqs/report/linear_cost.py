"""The report's local-energy cost of VMC-trained models: the paper's Fig. 2 on trained models.

Read from the committed results of ``benchmarks/linear_cost.py`` (``benchmarks/results/linear_cost_d<d>/
linear_cost.json``, one file per width; the ``--quick`` runs are left out): per model (baseline, today's VQ-NQS,
the position family) and engine, forward passes per sample (local-energy FLOPs over one dense forward) and
seconds per sample vs N, the models' seconds per VMC step (the VQ-vs-baseline iteration comparison) and their
errors, with the targets' verdicts. Measured offline (an hour or more of CPU), not by the pipeline; the section
says which command produced each file. Absent files: no section.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from vqnqs.io import atomic_open
from vqnqs.report.render import benchmark_results, log_ticks, markdown_table, save_figure

BENCHMARK_RESULTS = Path("benchmarks/results")
PATTERN = "linear_cost_d*[0-9]/linear_cost.json"  # full runs only (quick runs end in _quick)
COLUMNS = ("forwards_per_sample", "seconds_per_sample", "rows_per_config", "rel_error", "seconds_per_step")


def per_size(results: list[dict]) -> pd.DataFrame:
    """One row per (d, model, engine, N) with the lists of ``COLUMNS`` at that size."""
    rows = []
    for result in results:
        d_model = result["settings"]["d_model"]
        for path, lists in result.items():
            if not isinstance(lists, dict) or "forwards_per_sample" not in lists:
                continue
            model, engine = path.split("/")
            for i, n in enumerate(result["sizes"]):
                rows.append({"d_model": d_model, "model": model, "engine": engine, "n_sites": n,
                             **{key: lists[key][i] for key in COLUMNS}})  # fmt: skip
    return pd.DataFrame(rows)


def verdict_lines(result: dict) -> list[str]:
    lines = []
    for key, value in result.get("verdicts", {}).items():
        if isinstance(value, dict) and "holds" in value:
            figures = ", ".join(f"{k} {v:.3g}" for k, v in value.items() if k != "holds" and v is not None)
            lines.append(f"- `{key}`: {value['holds']} ({figures})")
        elif isinstance(value, dict):  # one verdict a size
            lines += [f"- `{key}` at N = {n}: {v['holds']}" for n, v in value.items()]
        else:
            lines.append(f"- `{key}`: {value}")
    return lines


def figure(table: pd.DataFrame, figures: Path) -> str:
    """Left: forward passes per sample vs N per model and engine. Right: seconds per VMC step per model."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"baseline": "-", "vq": "--", "position": ":"}
    for (d_model, model, engine), group in table.dropna(subset=["forwards_per_sample"]).groupby(
        ["d_model", "model", "engine"]
    ):
        group = group.sort_values("n_sites")
        marker = {"dense": "o", "dedup": "s", "incremental": "D"}[engine]
        left.plot(group["n_sites"], group["forwards_per_sample"], styles[model], marker=marker,
                  label=f"{model}/{engine}, d = {d_model}")  # fmt: skip
    left.set(xscale="log", yscale="log", xlabel="N (spins)", ylabel="forward passes per sample")
    log_ticks(left, table["n_sites"])
    left.legend(fontsize=6)
    steps = table[table["engine"] == "dense"].dropna(subset=["seconds_per_step"])
    for (d_model, model), group in steps.groupby(["d_model", "model"]):
        group = group.sort_values("n_sites")
        right.plot(group["n_sites"], group["seconds_per_step"], styles[model], marker="o",
                   label=f"{model}, d = {d_model}")  # fmt: skip
    right.set(xscale="log", yscale="log", xlabel="N (spins)", ylabel="seconds per VMC step (training)")
    log_ticks(right, table["n_sites"])
    right.legend(fontsize=7)
    return save_figure(fig, table, figures, "linear_cost")


def linear_cost_section(
    out_dir: Path, figures: Path, results_dir: Path = BENCHMARK_RESULTS, pattern: str = PATTERN
) -> tuple[list[str], dict[str, str]]:
    """The section's markdown lines and its figure ``{title: path}``; writes ``linear_cost.csv``."""
    results = benchmark_results(results_dir, pattern)
    if not results:
        return [], {}
    table = per_size(results)
    with atomic_open(out_dir / "linear_cost.csv") as handle:
        table.to_csv(handle, index=False)
    lines = [
        "## Local-energy cost of VMC-trained models vs N (the paper's Fig. 2 on trained models)",
        "",
        "Open TFIM chain at Gamma = 1, each model trained by VMC (the first size from scratch, each larger one "
        "from the one before). Forward passes per sample = local-energy FLOPs per sample / FLOPs of one dense "
        "forward (dense = N + 1; the floor is about 1). Measured offline by "
        + "; ".join(f"`python benchmarks/{result['command']}`" for result in results)
        + " (CPU, wall-clock noisy).",
        "",
    ]
    for result in results:
        lines += [
            f"Targets of the position family, d = {result['settings']['d_model']}:",
            "",
            *verdict_lines(result),
            "",
        ]
    lines += ["Per size (`linear_cost.csv`):", "", markdown_table(table), ""]
    return lines, {"Forward passes per sample vs N of trained models, and seconds per VMC step": figure(table, figures)}
