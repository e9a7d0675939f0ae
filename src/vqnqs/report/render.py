"""How the report writes: markdown tables, log axes, figures saved beside the CSV they were drawn from."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # headless: the report is rendered on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from vqnqs.io import atomic_open  # noqa: E402


def log_ticks(ax: plt.Axes, ticks, axis: str = "x") -> None:
    """Log axis labelled at the data's own values (bits, N), without 6x10^0-style minor labels."""
    ticks = sorted(set(ticks))
    getattr(ax, f"set_{axis}scale")("log")
    getattr(ax, f"set_{axis}ticks")(ticks, labels=[str(t) for t in ticks])
    getattr(ax, f"{axis}axis").set_minor_formatter(matplotlib.ticker.NullFormatter())


def save_figure(fig: plt.Figure, data: pd.DataFrame, figures: Path, name: str) -> str:
    with atomic_open(figures / f"{name}.png", "wb") as handle:
        fig.savefig(handle, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    with atomic_open(figures / f"{name}.csv") as handle:
        data.to_csv(handle, index=False)
    return f"figures/{name}.png"


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".3g") -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else format(value, floatfmt)
        return str(value)

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
