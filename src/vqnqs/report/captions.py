"""What each Table 1 column and each figure shows, and how it was made: one text each.

``report.md`` prints them under the table and the figures. Snakemake's HTML report (``snakemake --report``)
renders the same texts from the reStructuredText templates :func:`write_snakemake_captions` writes to
``results/captions/`` (``table1.rst``; ``figures.rst``, a Jinja template that picks the caption of the figure
it is rendered for by ``snakemake.wildcards.name``).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd

from vqnqs.io import atomic_open

PROFILE_BATCH = (
    "one profiling batch: the distinct samples among `profiling.batch` drawn from the model (column `batch`), "
    "with all their connected configurations, averaged over `profiling.n_batches` batches"
)

# Table 1's columns in order, each with what it holds.
TABLE1_COLUMNS: dict[str, str] = {
    "system": "Hamiltonian: tfim (open chain), heisenberg (open square lattice, S.S units, Marshall's sign rule) or "
    "what differs from it: j1j2 J2=<J2/J1> (next-nearest couplings), periodic, no-sign-rule (a phase network "
    "learns the signs)",
    "size": "N for a chain, LxW for a square lattice",
    "model": "baseline: the transformer trained by VMC; vq-nqs: its distilled VQ student",
    "bits": "the student's bandwidth in bits per location (0: no quantisers)",
    "energy_per_site": "E/N on the stage's `eval_samples` fresh exact samples",
    "rel_error": "relative error abs(E/N - ref) / abs(ref), against the run's reference "
    "(`data/reference/<run>.json`, the References table of report.md)",
    "exact_rel_error": "the same with E by exact enumeration of the state (small lattices; blank otherwise)",
    "v_score": "N Var(E_loc) / E^2 on the same samples (Wu et al., Science 2024): 0 for an eigenstate, no "
    "reference needed",
    "paper_rel_error": "the paper's relative error (blank where we do not hold it)",
    "batch": "distinct samples per profiling batch (the FLOPs and seconds below are of one batch)",
    "flops_dense": f"local-energy FLOPs of {PROFILE_BATCH}, dense forward",
    "flops_dedup": "the same through the dedup engine (per-location ops once per distinct key, attention once per "
    "distinct prefix)",
    "total_savings": "flops_dense / flops_dedup",
    "total_savings_no_prefix": "the same ratio without prefix reuse (attention once per location, as the paper's "
    "engine): the like-for-like comparison with paper_total_savings",
    "paper_total_savings": "the paper's total savings (blank where we do not hold it)",
    "quantized_ops_savings": "dense / dedup FLOPs over the ops whose inputs are quantised only (blank for the "
    "baseline, which has none)",
    "paper_quantized_ops_savings": "the paper's quantised-ops savings (blank where we do not hold it)",
    "time_dense_s": f"wall-clock seconds of the local energy of {PROFILE_BATCH}, dense forward",
    "time_dedup_s": "the same through the dedup engine",
    "speedup_time": "time_dense_s / time_dedup_s",
}

# Each figure of results/figures/<name>.png: what it shows and how it was made.
FIGURE_CAPTIONS: dict[str, str] = {
    "vmc_convergence": "Baseline VMC: relative error of E/N of each step's samples (faint) and its running "
    "median over 2 % of the run (solid), against the VMC step (left) and the training's wall time (right). From "
    "`data/train/<run>/history.csv`.",
    "distillation_error": "Relative error of each distilled VQ-NQS student against its bandwidth (exact by "
    "enumeration where the lattice allows, else sampled); dashed: its baseline teacher. From "
    "`data/distill/*/metrics.json` through `data/profile/*.csv`.",
    "savings_vs_bits": "Local-energy savings of the dedup engine over the dense forward against the bandwidth: "
    "total FLOPs, total FLOPs without prefix reuse, FLOPs of the quantised ops, and wall-clock, each on "
    f"{PROFILE_BATCH}. From `data/profile/*.csv`.",
    "tfim_scaling": "TFIM chain, smallest-bandwidth student: local-energy FLOPs per distinct sample against N "
    "(log-log), by component group and path (dense, dedup, dedup without prefix reuse, incremental), with the "
    "fitted exponents of the totals in the title. From `data/profile/*_components.csv`.",
    "error_vs_time": "Relative error against wall time of the baseline, the distilled student (its teacher's "
    "training time added) and the VQ-NQS trained by VMC, one panel per train_vq_runs entry: running medians of "
    "the histories' sampled errors.",
    "incremental_scaling": "The paper's Fig. 2 redrawn to N = 384: untrained paper-shape VQ-NQS on the TFIM "
    "chain, local-energy FLOPs per sample against N through the dense, dedup and incremental engines (left), and "
    "the incremental engine's FLOPs by component (right). From the committed `benchmarks/results/incremental_*.json` "
    "(`benchmarks/incremental_scaling.py`, measured offline).",
    "linear_cost": "The paper's Fig. 2 on VMC-trained models (open TFIM chain, Gamma = 1): forward passes per "
    "sample (local-energy FLOPs over one dense forward) against N for the baseline, today's VQ-NQS and the "
    "position family through the dense, dedup and incremental engines (left), and each model's seconds per VMC "
    "step in its training (right). From the committed `benchmarks/results/linear_cost_d*/linear_cost.json` "
    "(`benchmarks/linear_cost.py`, measured offline).",
}


def columns_table(columns: list[str] | tuple[str, ...] = tuple(TABLE1_COLUMNS)) -> pd.DataFrame:
    """``column, meaning`` for the report's markdown."""
    return pd.DataFrame({"column": list(columns), "meaning": [TABLE1_COLUMNS[c] for c in columns]})


def rst_literal(text: str) -> str:
    """Markdown as reStructuredText: backquoted names as literals (`x` -> ``x``), other asterisks escaped
    (a path's ``*`` is no emphasis)."""
    parts = text.split("`")
    return "``".join(
        part if inside else part.replace("*", "\\*") for inside, part in zip(itertools.cycle((False, True)), parts)
    )


def write_snakemake_captions(out_dir: Path, references: str) -> None:
    """``out_dir/table1.rst`` and ``out_dir/figures.rst``: the captions of Snakemake's HTML report.

    ``references``: one sentence on the references the relative errors are taken against.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    table = [
        "Table 1: energies and local-energy cost of every model, ours beside the paper's numbers where we hold "
        f"them (``paper_*`` columns). {rst_literal(references)}",
        "",
        *(f"- ``{name}``: {rst_literal(meaning)}" for name, meaning in TABLE1_COLUMNS.items()),
        "",
    ]
    with atomic_open(out_dir / "table1.rst") as handle:
        handle.write("\n".join(table))
    branches = [
        f'{{% {"if" if i == 0 else "elif"} snakemake.wildcards.name == "{name}" %}}\n{rst_literal(caption)}'
        for i, (name, caption) in enumerate(FIGURE_CAPTIONS.items())
    ]
    with atomic_open(out_dir / "figures.rst") as handle:
        handle.write("\n".join([*branches, "{% else %}\nA figure of the report (results/report.md).", "{% endif %}\n"]))
