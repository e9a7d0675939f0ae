"""The report writes everything or nothing: its outputs are built in a staging directory inside the out-dir and
moved into place once all are written, each replacing its namesake whole (figures/ included: no figure of an
earlier report is left looking current); a report that fails midway leaves the out-dir as it was, and every
file of another tool there (Snakemake's report.html) is kept."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import vqnqs.report.document
from vqnqs.cli import main
from vqnqs.io import OutputError, staged_outputs
from vqnqs.report import inputs_from_params, write_report
from vqnqs.report.document import OUTPUTS

from .conftest import report, snapshot

VQNQS = Path(sys.executable).parent / "vqnqs"  # the console script installed beside this interpreter


def test_a_report_that_fails_midway_leaves_the_out_dir_as_it_was(world, monkeypatch):
    """The failure comes after table1.csv, the summary, the captions and the first figures were written."""
    written = vqnqs.report.document.vq_training_section

    def fails_after_writing(*args):
        written(*args)
        raise RuntimeError("a figure that cannot be drawn")

    monkeypatch.setattr(vqnqs.report.document, "vq_training_section", fails_after_writing)
    params = yaml.safe_load((world / "params.yaml").read_text())
    before = snapshot(world / "results")
    with pytest.raises(RuntimeError, match="cannot be drawn"):
        write_report(params, inputs_from_params(params, world / "data"), world / "results")
    assert snapshot(world / "results") == before  # byte for byte, and no staging directory left


def test_a_report_replaces_its_outputs_whole_and_keeps_the_rest(world, capsys):
    """Without train_vq_runs the report writes no vq_training.csv and no error_vs_time figure: those of the
    previous report (which had them) are removed, as is a figure no report writes any more."""
    results = world / "results"
    assert {"vq_training.csv", "figures"} <= {path.name for path in results.iterdir()}
    assert (results / "figures" / "error_vs_time.png").is_file()
    (results / "figures" / "retired_figure.png").write_bytes(b"a figure of an older report")
    params = yaml.safe_load((world / "params.yaml").read_text())
    del params["train_vq_runs"]
    (world / "plain.yaml").write_text(yaml.safe_dump(params))
    assert main(report(world, "plain.yaml")) == 0
    assert capsys.readouterr().out.strip() == f"report -> {results / 'report.md'}"
    entries = {path.name for path in results.iterdir()}
    assert "report.html" in entries and (results / "report.html").read_text().startswith("Snakemake's")
    assert entries - {"report.html"} <= set(OUTPUTS) and "vq_training.csv" not in entries
    figures = {path.name for path in (results / "figures").iterdir()}
    names = ("vmc_convergence", "distillation_error", "savings_vs_bits", "incremental_scaling", "linear_cost")
    assert figures == {f"{name}.{ext}" for name in names for ext in ("png", "csv")}
    table1 = pd.read_csv(results / "table1.csv")
    assert list(zip(table1["model"], table1["bits"], strict=True)) == [("baseline", 0), ("vq-nqs", 6)]


def test_the_cli_refuses_a_text_cell_in_one_line_naming_file_column_and_row(world):
    """The issue's case, end to end through the console script: a profile cell set to 'oops'."""
    profile = world / "data" / "profile" / "tfim_8" / "bits6.csv"
    lines = profile.read_text().splitlines()
    cells = lines[2].split(",")
    cells[lines[0].split(",").index("time_dedup_s")] = "oops"
    profile.write_text("\n".join([*lines[:2], ",".join(cells), *lines[3:]]) + "\n")
    before = snapshot(world)
    result = subprocess.run([str(VQNQS), *report(world)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"vqnqs report: error: {profile}: row 2, column 'time_dedup_s': 'oops' is not a number\n"
    assert snapshot(world) == before


def test_staged_outputs_replace_whole_remove_unwritten_and_refuse_undeclared(tmp_path):
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "old.png").write_bytes(b"old")
    (out / "table.csv").write_text("old\n")
    (out / "stale.csv").write_text("an output this run does not write\n")
    (out / "notes.txt").write_text("not an output\n")
    with staged_outputs(out, ("table.csv", "figures", "stale.csv")) as staging:
        (staging / "figures").mkdir()
        (staging / "figures" / "new.png").write_bytes(b"new")
        (staging / "table.csv").write_text("new\n")
    assert snapshot(out) == {
        "figures": None,
        "figures/new.png": b"new",
        "table.csv": b"new\n",
        "notes.txt": b"not an output\n",
    }
    before = snapshot(out)
    with pytest.raises(OutputError, match="surprise.csv was written but is not among the outputs"):
        with staged_outputs(out, ("table.csv",)) as staging:
            (staging / "table.csv").write_text("newer\n")
            (staging / "surprise.csv").write_text("\n")
    assert snapshot(out) == before
