"""``results/report.md``: Table 1 beside the paper's numbers, the scaling fits, the figures.

Inputs: :mod:`vqnqs.report.inputs`, all checked first. Outputs in ``--out-dir`` (default ``results``), built in a
staging directory there and moved into place together once all are written (:data:`OUTPUTS`):

- ``report.md``; ``table1.csv`` and ``table1.html`` (the same with its column captions);
- ``tfim_scaling_fits.csv``, ``vq_training.csv``, ``incremental_scaling.csv``, ``linear_cost.csv``;
- ``summary.json``: the headline metrics per run, for ``dvc metrics`` and ``dvc exp show``;
- ``figures/*.png`` and, beside every figure, the CSV it was drawn from (``figures/<name>.csv``);
- ``captions/*.rst``: :mod:`vqnqs.report.captions`, for Snakemake's HTML report.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns

from vqnqs.io import atomic_open, ensure_writable_dir, staged_outputs, write_json
from vqnqs.physics.reference import DEFAULT_LITERATURE_KEY
from vqnqs.profiling import fit_power_law
from vqnqs.report.captions import FIGURE_CAPTIONS, TABLE1_COLUMNS, columns_table, write_snakemake_captions
from vqnqs.report.incremental import incremental_section
from vqnqs.report.inputs import COMPONENTS, HISTORY, METRICS, PROFILE, REFERENCE, ReportInputs, read_csv
from vqnqs.report.linear_cost import linear_cost_section
from vqnqs.report.render import log_ticks, markdown_table, plt, save_figure, write_html_table
from vqnqs.report.vq_training import vq_training_section

PAPER_TABLE_PATH = Path("data/reference/paper_table1.csv")


# --- tables ---------------------------------------------------------------------------------------


def system_label(entry: dict) -> str:
    """A run's Hamiltonian in the tables' ``system`` column: ``tfim``, ``heisenberg`` (open, Marshall's sign rule:
    the paper's), else what differs from it, e.g. ``j1j2 J2=0.5 periodic no-sign-rule``."""
    if entry["system"] != "heisenberg":
        return entry["system"]
    j2 = float(entry.get("j2") or 0.0)
    label = f"j1j2 J2={j2:g}" if j2 else "heisenberg"
    if entry.get("boundary", "open") != "open":
        label += f" {entry['boundary']}"
    if entry.get("sign_rule") is False:
        label += " no-sign-rule"
    return label


def collect_tables(inputs: ReportInputs, params: dict) -> dict[str, pd.DataFrame]:
    """Every table the report draws from, one DataFrame each; ``system`` is the run's :func:`system_label`."""
    table1, components, curves, references = [], [], [], []
    for run in inputs.runs:
        system = params["systems"][run]
        label = system_label(system)
        reference = REFERENCE.read(inputs.reference(run))
        references.append(
            {
                "run": run,
                "system": label,
                "size": system["size"],
                "reference_per_site": reference["energy_per_site"],
                "uncertainty_per_site": reference["uncertainty_per_site"],
                "method": reference["method"],
                "literature_key": reference.get("literature_key", ""),
                "source": reference["source"],
            }
        )
        history = HISTORY.read(inputs.train_dir(run) / "history.csv").assign(run=run)
        curves.append(history)
        for bits in inputs.bits:
            table1.append(PROFILE.read(inputs.profile(run, bits)).assign(run=run, system=label))
            components.append(COMPONENTS.read(inputs.components(run, bits)).assign(run=run, system=label))
    table1_df = pd.concat(table1, ignore_index=True)
    # The baseline appears once per bandwidth's profile: keep one row per (run, model, bits).
    table1_df = table1_df.drop_duplicates(subset=["run", "model", "bits"]).reset_index(drop=True)
    table1_df["speedup_time"] = table1_df["time_dense_s"] / table1_df["time_dedup_s"]
    return {
        "table1": table1_df,
        "components": pd.concat(components, ignore_index=True).drop_duplicates(),
        "curves": pd.concat(curves, ignore_index=True),
        "references": pd.DataFrame(references),
    }


def paper_numbers(path: Path = PAPER_TABLE_PATH) -> pd.DataFrame:
    """The paper's Table 1 entries we hold (``data/reference/paper_table1.csv``); empty if absent."""
    if not path.is_file():
        return pd.DataFrame(columns=["system", "size", "model", "bits"])
    return read_csv(path, comment="#")


def table1_with_paper(table1: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    keys = ["system", "size", "model", "bits"]
    ours = table1.copy()
    ours["size"] = ours["size"].astype(str)
    theirs = paper.copy()
    theirs["size"] = theirs["size"].astype(str)
    theirs = theirs.rename(columns={c: f"paper_{c}" for c in theirs.columns if c not in keys})
    return ours.merge(theirs, on=keys, how="left")


# The counts of the profile: dense forward, the dedup engine, without prefix reuse (the paper's), incremental.
FLOP_PATHS = ("dense", "dedup", "dedup_no_prefix", "incremental")


def scaling_fits(components: pd.DataFrame) -> pd.DataFrame:
    """Power-law exponents of FLOPs per sample vs N, per model, bits, path and component (TFIM runs).

    The ``total`` component sums all components of a (run, model, bits).
    """
    tfim = components[components["system"] == "tfim"]
    if tfim.empty or tfim["n_sites"].nunique() < 2:
        return pd.DataFrame(columns=["model", "bits", "component", "path", "exponent", "prefactor", "sizes"])
    columns = [f"flops_{path}_per_sample" for path in FLOP_PATHS]
    totals = tfim.groupby(["run", "n_sites", "model", "bits"], as_index=False)[columns].sum().assign(component="total")
    frame = pd.concat([tfim, totals], ignore_index=True)
    rows = []
    for (model, bits, component), group in frame.groupby(["model", "bits", "component"]):
        group = group.sort_values("n_sites")
        for path in FLOP_PATHS:
            values = group[f"flops_{path}_per_sample"].to_numpy(dtype=float)
            if group["n_sites"].nunique() < 2 or np.any(values <= 0):
                continue
            exponent, prefactor = fit_power_law(group["n_sites"].to_numpy(dtype=float), values)
            rows.append(
                {
                    "model": model,
                    "bits": bits,
                    "component": component,
                    "path": path,
                    "exponent": exponent,
                    "prefactor": prefactor,
                    "sizes": " ".join(str(n) for n in sorted(group["n_sites"].unique())),
                }
            )
    return pd.DataFrame(rows)


# --- figures --------------------------------------------------------------------------------------

# Per-location components are the ones the dedup engine shrinks to unique rows; the others stay per sequence.
COMPONENT_GROUPS = {
    "embedding": "per-location ops",
    "layernorm": "per-location ops",
    "qkv_proj": "per-location ops",
    "out_proj": "per-location ops",
    "feed_forward": "per-location ops",
    "residual": "per-location ops",
    "head": "per-location ops",
    "attention": "attention",
    "quantizer_distances": "quantiser distances",
}


def figure_convergence(curves: pd.DataFrame, figures: Path) -> str:
    """Relative error per step (faint) and its running median over ~2% of the run (solid), against the step
    (left) and the wall time (right)."""
    data = curves[["run", "step", "time_s", "rel_error"]].dropna().sort_values(["run", "step"])
    window = max(1, int(data.groupby("run")["step"].count().max()) // 50)
    data["running_median"] = data.groupby("run")["rel_error"].transform(
        lambda errors: errors.rolling(window, min_periods=1).median()
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, x, label in zip(axes, ("step", "time_s"), ("VMC step", "wall time (s)"), strict=True):
        sns.lineplot(data=data, x=x, y="rel_error", hue="run", alpha=0.25, lw=0.8, legend=False, ax=ax)
        sns.lineplot(data=data, x=x, y="running_median", hue="run", legend=ax is axes[1], ax=ax)
        ax.set(yscale="log", xlabel=label, ylabel="relative error of E/N")
    axes[1].legend(bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle("Baseline VMC convergence")
    return save_figure(fig, data, figures, "vmc_convergence")


def figure_distillation(table1: pd.DataFrame, figures: Path) -> str:
    # The exact (enumerated) error where the lattice is small enough, else the sampled one.
    table1 = table1.assign(rel_error=table1["exact_rel_error"].fillna(table1["rel_error"]))
    data = table1[table1["model"] != "baseline"][["run", "bits", "rel_error"]]
    baseline = table1[table1["model"] == "baseline"][["run", "rel_error"]]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    sns.lineplot(data=data, x="bits", y="rel_error", hue="run", marker="o", ax=ax)
    for color, (_, row) in zip(sns.color_palette(), baseline.iterrows(), strict=False):
        ax.axhline(row["rel_error"], ls="--", lw=1, color=color)
    ax.set(
        yscale="log",
        xlabel="bandwidth (bits per location)",
        ylabel="relative error of E/N (exact where enumerable)",
        title="VQ-NQS students vs bandwidth (dashed: baseline teacher)",
    )
    log_ticks(ax, data["bits"])
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left")  # outside: the lines span the whole plot
    return save_figure(fig, data, figures, "distillation_error")


def figure_savings(table1: pd.DataFrame, figures: Path) -> str:
    students = table1[table1["model"] != "baseline"]
    data = students.melt(
        id_vars=["run", "bits"],
        value_vars=["total_savings", "total_savings_no_prefix", "quantized_ops_savings", "speedup_time"],
        var_name="measure",
        value_name="factor",
    )
    names = {
        "total_savings": "FLOPs, total",
        "total_savings_no_prefix": "FLOPs, total, no prefix reuse",
        "quantized_ops_savings": "FLOPs, quantised ops",
        "speedup_time": "wall-clock",
    }
    data["measure"] = data["measure"].map(names)
    grid = sns.relplot(data=data, x="bits", y="factor", hue="run", col="measure", kind="line", marker="o", height=3.3)
    grid.set(yscale="log", xlabel="bits")
    for ax in grid.axes.flat:
        log_ticks(ax, data["bits"])
    grid.set_titles("{col_name}")
    grid.set_ylabels("dense / dedup")
    grid.figure.suptitle("Local-energy savings of reuse vs bandwidth", y=1.03)
    return save_figure(grid.figure, data, figures, "savings_vs_bits")


def figure_scaling(components: pd.DataFrame, fits: pd.DataFrame, figures: Path) -> str | None:
    """FLOPs per sample vs N (log-log) for the smallest-bandwidth student: total, per-location ops,
    attention and quantiser distances; line style: dense, dedup, dedup without prefix reuse."""
    tfim = components[(components["system"] == "tfim") & (components["model"] != "baseline")]
    if tfim["n_sites"].nunique() < 2:
        return None
    smallest_bits = tfim["bits"].min()
    tfim = tfim[tfim["bits"] == smallest_bits].assign(group=lambda f: f["component"].map(COMPONENT_GROUPS))
    columns = [f"flops_{path}_per_sample" for path in FLOP_PATHS]
    per_group = tfim.dropna(subset=["group"]).groupby(["n_sites", "group"], as_index=False)[columns].sum()
    total = tfim.groupby("n_sites", as_index=False)[columns].sum()
    frame = pd.concat([per_group, total.assign(group="total")], ignore_index=True)
    data = frame.melt(
        id_vars=["n_sites", "group"],
        value_vars=columns,
        var_name="path",
        value_name="flops_per_sample",
    )
    data["path"] = data["path"].str.extract(r"flops_(\w+)_per_sample", expand=False)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(data=data, x="n_sites", y="flops_per_sample", hue="group", style="path", marker="o", ax=ax)
    ax.set(yscale="log", xlabel="N (spins)", ylabel="local-energy FLOPs per sample")
    log_ticks(ax, data["n_sites"])
    fitted = fits[(fits["bits"] == smallest_bits) & (fits["component"] == "total") & (fits["model"] != "baseline")]
    label = ", ".join(f"{row.path} N^{row.exponent:.2f}" for row in fitted.itertuples())
    ax.set_title(f"TFIM local-energy cost, VQ-NQS {smallest_bits} bits (total: {label})")
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left")
    return save_figure(fig, data, figures, "tfim_scaling")


# --- markdown and summary ------------------------------------------------------------------------

TABLE1 = list(TABLE1_COLUMNS)
# Per run and model, the figures `dvc metrics show` and `dvc exp show` list (results/summary.json).
SUMMARY_KEYS = ("rel_error", "exact_rel_error", "v_score", "total_savings", "speedup_time")


def summary(table1: pd.DataFrame, inputs: ReportInputs) -> dict:
    """``{run: {"baseline" | "bits<B>": {SUMMARY_KEYS..., "seconds_per_step"}}}``: the headline numbers
    (savings blank for the baseline: it is the reference of no savings), NaN as null."""

    def clean(value) -> float | None:
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    result: dict = {}
    for row in table1.to_dict("records"):
        baseline = row["model"] == "baseline"
        stage_dir = inputs.train_dir(row["run"]) if baseline else inputs.distill_dir(row["run"], int(row["bits"]))
        seconds = METRICS.read(stage_dir / "metrics.json").get("seconds_per_step")
        keys = SUMMARY_KEYS[:3] if baseline else SUMMARY_KEYS
        entry = {key: clean(row.get(key)) for key in keys} | {"seconds_per_step": clean(seconds)}
        result.setdefault(row["run"], {})["baseline" if baseline else f"bits{int(row['bits'])}"] = entry
    return result


def references_note(params: dict) -> str:
    key = params.get("reference", {}).get("literature_key") or DEFAULT_LITERATURE_KEY
    chosen = (
        "`best`: the most precise independent value per lattice (exact diagonalisation, then Sandvik's SSE QMC, "
        "arXiv:2601.20189, then the paper's number)"
        if key == "best"
        else f"`{key}`"
    )
    return (
        "Relative errors are taken against these references: exact (free fermions, Lanczos) where tractable; "
        f"beyond, a row of data/reference/literature.csv chosen by `reference.literature_key` = {chosen}. "
        "`literature_key: paper` gives the paper's own references, to compare like for like with its Table 1."
    )


# What the report writes in its out-dir, report.md last. Each is replaced whole, figures/ and captions/ included,
# and one this report does not write (a section without its inputs) is removed; other files there are kept.
OUTPUTS = (
    "table1.csv",
    "table1.html",
    "tfim_scaling_fits.csv",
    "vq_training.csv",
    "incremental_scaling.csv",
    "linear_cost.csv",
    "summary.json",
    "captions",
    "figures",
    "report.md",
)


def write_report(params: dict, inputs: ReportInputs, out_dir: str | Path) -> Path:
    """Check every input, build every output in a staging directory inside ``out_dir`` and move them into
    place (:func:`vqnqs.io.staged_outputs`): a refused or failed report leaves ``out_dir`` as it was.
    Returns the path of ``report.md``."""
    inputs.check(params)
    with staged_outputs(out_dir, OUTPUTS) as staging:
        build_report(params, inputs, staging)
    return Path(out_dir) / "report.md"


def build_report(params: dict, inputs: ReportInputs, out_dir: Path) -> None:
    """Every table, figure and caption of the report, and ``report.md``, written into ``out_dir``."""
    figures = ensure_writable_dir(out_dir / "figures")
    tables = collect_tables(inputs, params)
    table1 = table1_with_paper(tables["table1"], paper_numbers())
    for column in TABLE1:
        if column not in table1:
            table1[column] = math.nan
    fits = scaling_fits(tables["components"])

    with atomic_open(out_dir / "table1.csv") as handle:
        table1[TABLE1].to_csv(handle, index=False)
    with atomic_open(out_dir / "tfim_scaling_fits.csv") as handle:
        fits.to_csv(handle, index=False)
    write_json(out_dir / "summary.json", summary(table1, inputs))
    references = references_note(params)
    title = "Table 1: energies and local-energy cost, ours beside the paper's numbers where we hold them"
    write_html_table(out_dir / "table1.html", title, references, table1[TABLE1], TABLE1_COLUMNS)
    write_snakemake_captions(out_dir / "captions", references)

    sns.set_theme(style="whitegrid", context="notebook")
    pictures = {
        "VMC convergence of the baseline": figure_convergence(tables["curves"], figures),
        "Distillation error vs bandwidth": figure_distillation(table1, figures),
        "FLOP savings and wall-clock speedup vs bandwidth": figure_savings(table1, figures),
    }
    scaling = figure_scaling(tables["components"], fits, figures)
    if scaling:
        pictures["TFIM local-energy cost vs N"] = scaling

    lines = [
        "# vqnqs report",
        "",
        f"Runs: {', '.join(inputs.runs)}; bandwidths: {', '.join(str(b) for b in inputs.bits)} bits.",
        "",
        "## References",
        "",
        references,
        "",
        markdown_table(tables["references"], ".10f"),
        "",
        "## Table 1: energies and local-energy cost (ours beside the paper's where we hold its numbers)",
        "",
        "Our engine also runs attention once per distinct prefix of ids, a reuse open to any autoregressive "
        "model (the baseline rows show what it alone buys); compare the `*_no_prefix` columns with the "
        "paper's. The columns:",
        "",
        markdown_table(columns_table()),
        "",
        markdown_table(table1[TABLE1]),
        "",
    ]
    if not fits.empty:
        lines += [
            "## TFIM scaling: fitted exponents of local-energy FLOPs per sample, a N^b",
            "",
            "Per distinct sample. The dense cost depends on N alone; the dedup cost also on how concentrated "
            "the model's samples are (shared prefixes and codes), so where the runs are trained for different "
            "lengths these exponents mix N with model quality. `benchmarks/tfim_scaling.py` is the controlled "
            "study (the same untrained, data-initialised model at every N).",
            "",
            markdown_table(fits[fits["component"] == "total"], ".3f"),
            "",
            "Per component: `tfim_scaling_fits.csv`.",
            "",
        ]
    for section_lines, section_pictures in (
        vq_training_section(inputs, out_dir, figures),
        incremental_section(out_dir, figures),
        linear_cost_section(out_dir, figures),
    ):
        lines += section_lines
        pictures.update(section_pictures)
    lines += ["## Figures", ""]
    for title, path in pictures.items():
        name = Path(path).stem
        lines += [
            f"### {title}",
            "",
            f"![{title}]({path})",
            "",
            FIGURE_CAPTIONS[name],
            "",
            f"Data: `figures/{name}.csv`",
            "",
        ]
    with atomic_open(out_dir / "report.md") as handle:
        handle.write("\n".join(lines))
