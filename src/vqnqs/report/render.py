"""How the report writes: markdown tables, log axes, figures saved beside the CSV they were drawn from."""

from __future__ import annotations

import html
import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # headless: the report is rendered on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from vqnqs.io import atomic_open, read_json  # noqa: E402


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


HTML_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;font-size:13px}"
    "th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eef;position:sticky;top:0}"
    "td:nth-child(-n+3){text-align:left}dt{font-family:monospace;font-weight:bold}dd{margin:0 0 .4em 1.5em}"
)


def write_html_table(path: Path, title: str, intro: str, frame: pd.DataFrame, meanings: dict[str, str]) -> None:
    """A self-contained HTML page: ``title``, ``intro``, the table (each header's meaning as its tooltip) and
    the list of column meanings; for viewers that show HTML but no CSV (Snakemake's report)."""
    table = frame.to_html(index=False, na_rep="", float_format=lambda v: format(v, ".4g"), border=0)
    for column, meaning in meanings.items():
        table = table.replace(f"<th>{column}</th>", f'<th title="{html.escape(meaning)}">{column}</th>', 1)
    columns = "".join(f"<dt>{html.escape(c)}</dt><dd>{html.escape(m)}</dd>" for c, m in meanings.items())
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{HTML_STYLE}</style></head><body><h2>{html.escape(title)}</h2><p>{html.escape(intro)}</p>"
        f"{table}<h3>Columns</h3><dl>{columns}</dl></body></html>\n"
    )
    with atomic_open(path) as handle:
        handle.write(page)


def benchmark_results(results_dir: Path, pattern: str) -> list[dict]:
    """The committed benchmark JSON files under ``results_dir`` matching ``pattern``, in name order."""
    return [read_json(path) for path in sorted(results_dir.glob(pattern))]
