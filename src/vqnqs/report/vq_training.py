"""The report's section on VQ-NQS trained directly by VMC, beside the two routes it competes with.

For each ``(run, bits)`` of ``train_vq_runs``, three models of the same lattice::

    baseline      data/train/<run>                 the transformer trained by VMC
    distilled     data/distill/<run>/bits<B>       the baseline distilled into a VQ-NQS (when B is in ``bits``)
    vmc-trained   data/train_vq/<run>/bits<B>      a VQ-NQS trained by VMC from the start

side by side: relative error (exact by enumeration where the lattice is small), the wall time it took to get
there (the distilled student's includes its teacher's training), seconds per VMC iteration split by part
(:data:`vqnqs.vmc.step.STEP_PARTS`; the distillation's L2 fit is no VMC iteration, so blank), and the
local-energy FLOPs and dedup wall-clock per distinct sample from the profile stage. The figure puts the
error of every model against its wall time (``error_vs_time.png``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import seaborn as sns

from vqnqs.io import atomic_open
from vqnqs.report.inputs import HISTORY, METRICS, METRICS_READ, PART_COLUMNS, PROFILE, ReportInputs
from vqnqs.report.render import markdown_table, save_figure

COLUMNS = (
    "run",
    "bits",
    "model",
    "rel_error",
    "exact_rel_error",
    "v_score",
    "steps",
    "wall_time_s",
    "seconds_per_step",
    *PART_COLUMNS,
    "flops_dedup_per_sample",
    "time_dedup_s_per_sample",
)


def _profile_row(path: Path, model: str) -> dict:
    """FLOPs and dedup wall-clock per distinct sample of ``model`` ('baseline' | 'vq-nqs') in a profile table."""
    table = PROFILE.read(path)
    rows = table[table["model"] == model]
    if rows.empty:
        return {}
    row = rows.iloc[0]
    return {
        "flops_dedup_per_sample": row["flops_dedup_per_sample"],
        "time_dedup_s_per_sample": row["time_dedup_s"] / row["batch"],
    }


def _model_row(metrics: dict, wall_time_s: float) -> dict:
    """The model's :data:`~vqnqs.report.inputs.METRICS_READ` (NaN where absent), ``wall_time_s`` the given one."""
    return {key: metrics.get(key, math.nan) for key in METRICS_READ} | {"wall_time_s": wall_time_s}


def comparison(inputs: ReportInputs) -> pd.DataFrame:
    """One row per (run, bits, model), :data:`COLUMNS`."""
    rows = []
    for run, bits in inputs.vq_runs:
        baseline = METRICS.read(inputs.train_dir(run) / "metrics.json")
        trained = METRICS.read(inputs.train_vq_dir(run, bits) / "metrics.json")
        profile_vq = inputs.profile(run, bits, "profile_vq")
        models = {
            "baseline": {**_model_row(baseline, baseline["wall_time_s"]), **_profile_row(profile_vq, "baseline")},
            "vmc-trained": {**_model_row(trained, trained["wall_time_s"]), **_profile_row(profile_vq, "vq-nqs")},
        }
        if bits in inputs.bits:
            student = METRICS.read(inputs.distill_dir(run, bits) / "metrics.json")
            total = baseline["wall_time_s"] + student["wall_time_s"]
            models["distilled"] = {
                **_model_row(student, total),
                **{key: math.nan for key in PART_COLUMNS},
                **_profile_row(inputs.profile(run, bits), "vq-nqs"),
            }
        rows += [{"run": run, "bits": bits, "model": model, **values} for model, values in models.items()]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def error_curves(inputs: ReportInputs) -> pd.DataFrame:
    """``panel, model, time_s, rel_error`` of every model of every (run, bits): the histories' sampled errors,
    the distillation's shifted by its teacher's training time."""
    curves = []
    for run, bits in inputs.vq_runs:
        panel = f"{run}, {bits} bits"
        baseline = METRICS.read(inputs.train_dir(run) / "metrics.json")
        histories = {
            "baseline": (inputs.train_dir(run) / "history.csv", 0.0),
            "vmc-trained": (inputs.train_vq_dir(run, bits) / "history.csv", 0.0),
        }
        if bits in inputs.bits:
            histories["distilled"] = (inputs.distill_dir(run, bits) / "history.csv", baseline["wall_time_s"])
        for model, (path, offset) in histories.items():
            history = HISTORY.read(path)[["time_s", "rel_error"]].dropna()
            curves.append(history.assign(panel=panel, model=model, time_s=history["time_s"] + offset))
    return pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()


def figure_error_vs_time(curves: pd.DataFrame, figures: Path) -> str:
    """Relative error against wall time, one panel per (run, bits): each history's running median."""
    data = curves.sort_values(["panel", "model", "time_s"]).copy()
    data["running_median"] = data.groupby(["panel", "model"])["rel_error"].transform(
        lambda errors: errors.rolling(max(1, len(errors) // 50), min_periods=1).median()
    )
    grid = sns.relplot(
        data=data, x="time_s", y="running_median", hue="model", col="panel", kind="line", col_wrap=2,
        height=3.2, aspect=1.3, facet_kws={"sharex": False, "sharey": False},
    )  # fmt: skip
    grid.set(yscale="log", xlabel="wall time (s)", ylabel="relative error of E/N")
    grid.set_titles("{col_name}")
    return save_figure(grid.figure, data, figures, "error_vs_time")


def vq_training_section(inputs: ReportInputs, out_dir: Path, figures: Path) -> tuple[list[str], dict[str, str]]:
    """The section's markdown lines and its figure ``{title: path}``; writes ``vq_training.csv``. Empty
    without ``train_vq_runs``."""
    if not inputs.vq_runs:
        return [], {}
    table = comparison(inputs)
    with atomic_open(out_dir / "vq_training.csv") as handle:
        table.to_csv(handle, index=False)
    lines = [
        "## VQ-NQS trained by VMC, beside the baseline and the distilled student",
        "",
        "Per (run, bits): `rel_error` sampled, `exact_rel_error` by enumeration (small lattices), `v_score` = "
        "N Var(E_loc) / E^2 on the sampled evaluation; `wall_time_s` "
        "the training time to reach it (distilled: the teacher's training plus the distillation); "
        "`mean_*_s` the seconds of one VMC iteration by part (sampling, local energy, log-derivatives or "
        "backward, SR solve and update, codebook upkeep); FLOPs and dedup wall-clock of the local energy per "
        "distinct sample, from the profile stage. Also in `vq_training.csv`.",
        "",
        markdown_table(table),
        "",
    ]
    return lines, {"Relative error against wall time": figure_error_vs_time(error_curves(inputs), figures)}
