"""Report inputs it cannot use, each refused before any work: exit 2, one line naming the file and the column
(and row) or key, and nothing written -- the previous report in the out-dir unchanged byte for byte, no MLflow
store, no staging directory left. One row per input and per column or key the report reads, from the
declarations the report reads through (:mod:`vqnqs.report.inputs`)."""

import csv
import json
from pathlib import Path

import pytest

from vqnqs.cli import main
from vqnqs.report import inputs_from_params
from vqnqs.report.inputs import COMPONENTS, HISTORY, METRICS, PROFILE, REFERENCE, TEXT_COLUMNS

from .conftest import PARAMS, report, snapshot

INPUTS = inputs_from_params(PARAMS, "data")
RUN, BITS = "tfim_8", 6
# One file of each kind the report reads, and what it reads of it.
TABLES = {
    "profile": (INPUTS.profile(RUN, BITS), PROFILE),
    "components": (INPUTS.components(RUN, BITS), COMPONENTS),
    "train_history": (INPUTS.train_dir(RUN) / "history.csv", HISTORY),
    "distill_history": (INPUTS.distill_dir(RUN, BITS) / "history.csv", HISTORY),
}
RECORDS = {
    "reference": (INPUTS.reference(RUN), REFERENCE),
    "train_metrics": (INPUTS.train_dir(RUN) / "metrics.json", METRICS),
}
# The other stages' metrics.json, read as the baseline's.
OTHER_METRICS = (INPUTS.distill_dir(RUN, BITS) / "metrics.json", INPUTS.train_vq_dir(RUN, BITS) / "metrics.json")


def edit_rows(path: Path, edit) -> None:
    """Rewrite the CSV at ``path`` with ``edit(header, rows)`` (lists of cells, changed in place)."""
    with path.open(newline="") as handle:
        header, *rows = list(csv.reader(handle))
    edit(header, rows)
    with path.open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows([header, *rows])


def set_cell(path: Path, column: str, value: str, row: int | None = 1):
    """``value`` in ``column`` of data row ``row`` (counted from 1; None: every row)."""

    def edit(header, rows):
        for cells in rows if row is None else [rows[row - 1]]:
            cells[header.index(column)] = value

    return lambda world: edit_rows(world / path, edit)


def drop_column(path: Path, column: str):
    def edit(header, rows):
        index = header.index(column)
        for cells in [header, *rows]:
            del cells[index]

    return lambda world: edit_rows(world / path, edit)


def set_key(path: Path, key: str, value):
    """``value`` for ``key`` of the JSON record at ``path`` (``...``: the key removed)."""

    def edit(world):
        record = json.loads((world / path).read_text())
        if value is ...:
            del record[key]
        else:
            record[key] = value
        (world / path).write_text(json.dumps(record))

    return edit


def write(path: Path, content: bytes):
    return lambda world: (world / path).write_bytes(content)


def header_only(path: Path):
    return lambda world: (world / path).write_text((world / path).read_text().splitlines()[0] + "\n")


CASES = {}
for kind, (path, table) in TABLES.items():
    for column in table.columns:
        CASES[f"{kind}_no_{column}"] = (drop_column(path, column), [str(path), f"no column {column!r}"])
        if column not in TEXT_COLUMNS:
            CASES[f"{kind}_{column}_text"] = (
                set_cell(path, column, "oops", row=2),
                [str(path), f"row 2, column {column!r}: 'oops' is not a number"],
            )
    for column in table.keys:
        CASES[f"{kind}_{column}_blank"] = (set_cell(path, column, ""), [str(path), f"row 1, column {column!r}: blank"])
        if column not in TEXT_COLUMNS:
            CASES[f"{kind}_{column}_infinite"] = (
                set_cell(path, column, "-inf"),
                [str(path), f"row 1, column {column!r}: -inf is not finite"],
            )
CASES["profile_unknown_model"] = (
    set_cell(TABLES["profile"][0], "model", "vq"),
    [str(TABLES["profile"][0]), "row 1, column 'model': 'vq' is not one of"],
)
CASES["profile_bits_true_false"] = (  # a whole column of booleans is read as such, no number
    set_cell(TABLES["profile"][0], "bits", "True", row=None),
    [str(TABLES["profile"][0]), "column 'bits': True is not a number"],
)
for path in INPUTS.all_files():
    name, unreadable = "_".join(path.parts[1:]), "not a readable CSV" if path.suffix == ".csv" else "JSON record"
    CASES[f"missing_{name}"] = (lambda world, path=path: (world / path).unlink(), [str(path), "missing"])
    CASES[f"empty_{name}"] = (write(path, b""), [str(path), unreadable])
    CASES[f"not_utf8_{name}"] = (write(path, b"\xff\xfe"), [str(path), unreadable])
    if path.suffix == ".csv":
        CASES[f"header_only_{name}"] = (header_only(path), [str(path), "a header and no rows"])
for kind, (path, record) in RECORDS.items():
    for key in record.numbers + record.optional:
        for name, value in [("nan", float("nan")), ("inf", float("inf")), ("text", "1.0"), ("bool", True)]:
            CASES[f"{kind}_{key}_{name}"] = (set_key(path, key, value), [str(path), f"{key} ", "not a finite number"])
    for key in record.numbers + record.words:
        CASES[f"{kind}_no_{key}"] = (set_key(path, key, ...), [str(path), f"no {key!r}"])
    for key in record.words:
        CASES[f"{kind}_{key}_number"] = (set_key(path, key, 5), [str(path), f"{key} 5 is not text"])
for path in OTHER_METRICS:
    CASES[f"{path.parts[1]}_wall_time_s_nan"] = (set_key(path, "wall_time_s", float("nan")), [str(path), "wall_time_s"])
CASES["reference_of_another_gamma"] = (  # the reference of another Hamiltonian (vqnqs.report.check_reference)
    set_key(INPUTS.reference(RUN), "hamiltonian", {"J": 1.0, "gamma": 0.5}),
    [str(INPUTS.reference(RUN)), "gamma is 0.5"],
)


@pytest.mark.parametrize("name", list(CASES))
def test_refused_before_any_work(world, capsys, name):
    corrupt, message = CASES[name]
    corrupt(world)
    before = snapshot(world)
    capsys.readouterr()
    assert main(report(world)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("vqnqs report: error: ") and all(m in err for m in message), err
    assert snapshot(world) == before  # inputs, the previous report, its neighbour: unchanged; no store, no staging
