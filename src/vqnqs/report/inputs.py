"""Where the report's inputs live (derived from params) and what it reads of each, checked before any work.

Per run key of ``params.yaml`` (``systems``), bandwidth (``bits``) and VQ training (``train_vq_runs``)::

    data/reference/<run>.json                          reference energy
    data/train/<run>/{metrics.json,history.csv}        baseline VMC
    data/distill/<run>/bits<B>/{metrics,history}        VQ-NQS student distilled from the baseline
    data/profile/<run>/bits<B>{,_components}.csv        Table-1 rows (baseline + student), FLOPs by component
    data/train_vq/<run>/bits<B>/{metrics,history}       VQ-NQS trained directly by VMC
    data/profile_vq/<run>/bits<B>{,_components}.csv     its profile (beside the same baseline)

What the report reads of each file is declared once, a :class:`Table` of a CSV's columns or a :class:`Record`
of a JSON's keys, and the report reads every input through it; :meth:`ReportInputs.check` reads them all
before anything is written, so an input the report cannot use is refused naming the file and the column and
row, or the key.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vqnqs.io import InputError, finite_number, read_json
from vqnqs.profiling.table import BASELINE_LABEL, COMPONENT_COLUMNS, CONTRACT_COLUMNS, TEXT_COLUMNS, VQ_LABEL
from vqnqs.report.captions import TABLE1_COLUMNS
from vqnqs.stages.driver import METRICS_KEYS
from vqnqs.vmc.step import STEP_PARTS


class ReportInputError(InputError):
    """A stage output the report needs is missing or malformed."""


def read_csv(path: Path, comment: str | None = None) -> pd.DataFrame:
    """The CSV at ``path`` (lines from ``comment`` on skipped); :class:`ReportInputError` naming it if unreadable."""
    try:
        return pd.read_csv(path, comment=comment)
    except (OSError, ValueError) as err:  # ValueError: pandas' parser and empty-file errors, bytes not UTF-8
        raise ReportInputError(f"{path}: not a readable CSV file ({' '.join(str(err).split())})") from err


def first(bad: pd.Series) -> int | None:
    """The position of the first true entry of ``bad`` (None where none is)."""
    return int(bad.to_numpy().argmax()) if bad.any() else None


def cell_error(path: Path, row: int, column: str, what: str) -> ReportInputError:
    """What is wrong with the cell of ``column`` in the data row at position ``row`` (counted from 1 in the message)."""
    return ReportInputError(f"{path}: row {row + 1}, column {column!r}: {what}")


@dataclass(frozen=True)
class Table:
    """The columns of a stage's CSV that the report reads. Each holds a number, or is blank where the stage
    measured nothing, except the words of :data:`~vqnqs.profiling.table.TEXT_COLUMNS`; the ``keys``, which
    say what a row is, are never blank (nor infinite), and a ``model`` is one of the profile's labels."""

    columns: tuple[str, ...]
    keys: tuple[str, ...]

    def read(self, path: Path) -> pd.DataFrame:
        """The table at ``path`` with its number columns as numbers; refused without one of the columns, without
        a row, or at the first cell that is not what its column holds (rows counted from 1 after the header)."""
        frame = read_csv(path)
        missing = [column for column in self.columns if column not in frame.columns]
        if missing:
            raise ReportInputError(f"{path}: no column {missing[0]!r}")
        if frame.empty:
            raise ReportInputError(f"{path}: a header and no rows")
        for column in (column for column in self.columns if column not in TEXT_COLUMNS):
            cells = frame[column]
            # a blank cell gives NaN, as does text that is not a number; a column of True/False holds no numbers
            values = pd.Series(math.nan, cells.index) if cells.dtype == bool else pd.to_numeric(cells, errors="coerce")
            if (row := first(values.isna() & cells.notna())) is not None:
                raise cell_error(path, row, column, f"{cells.tolist()[row]!r} is not a number")
            frame[column] = values
        for column in self.keys:
            cells = frame[column]
            if (row := first(cells.isna() | cells.isin([math.inf, -math.inf]))) is not None:
                value = cells.tolist()[row]
                raise cell_error(path, row, column, "blank" if pd.isna(value) else f"{value!r} is not finite")
        if "model" in self.columns and (row := first(~frame["model"].isin(MODEL_LABELS))) is not None:
            raise cell_error(path, row, "model", f"{frame['model'].tolist()[row]!r} is not one of {MODEL_LABELS}")
        return frame


@dataclass(frozen=True)
class Record:
    """The keys of a stage's JSON record that the report reads: ``numbers`` finite numbers, ``optional`` finite
    numbers where present and not null, ``words`` strings."""

    numbers: tuple[str, ...]
    optional: tuple[str, ...] = ()
    words: tuple[str, ...] = ()

    def read(self, path: Path) -> dict:
        record = read_json(path)
        for key in (*self.numbers, *self.optional, *self.words):
            if key not in record and key not in self.optional:
                raise ReportInputError(f"{path}: no {key!r}")
        for key in (*self.numbers, *(key for key in self.optional if record.get(key) is not None)):
            if finite_number(record, key) is None:
                raise ReportInputError(f"{path}: {key} {record[key]!r} is not a finite number")
        for key in self.words:
            if not isinstance(record[key], str):
                raise ReportInputError(f"{path}: {key} {record[key]!r} is not text")
        return record


MODEL_LABELS = (BASELINE_LABEL, VQ_LABEL)
# The profile's columns in Table 1 (all but the report's speedup_time and the paper's numbers), and the FLOPs
# per sample of the VQ-training section.
PROFILE_COLUMNS = tuple(
    dict.fromkeys(
        [
            *CONTRACT_COLUMNS,
            *(column for column in TABLE1_COLUMNS if column != "speedup_time" and not column.startswith("paper_")),
            "flops_dedup_per_sample",
        ]
    )
)
PROFILE = Table(PROFILE_COLUMNS, keys=("size", "model", "bits"))
COMPONENTS = Table(COMPONENT_COLUMNS, keys=("size", "n_sites", "model", "bits", "component"))
# Of the train and distill stages' history.csv (their HISTORY_COLUMNS): the curves of the figures.
HISTORY = Table(("step", "time_s", "rel_error"), keys=("step",))
# Of every stage's metrics.json: the headline numbers of the summary and the VQ-training section; those of the
# driver's contract (METRICS_KEYS) are always there, the others where the stage measured them.
PART_COLUMNS = tuple(f"mean_{part}_s" for part in STEP_PARTS)
METRICS_READ = ("rel_error", "exact_rel_error", "v_score", "steps", "wall_time_s", "seconds_per_step", *PART_COLUMNS)
METRICS = Record(
    numbers=tuple(key for key in METRICS_READ if key in METRICS_KEYS),
    optional=tuple(key for key in METRICS_READ if key not in METRICS_KEYS),
)
REFERENCE = Record(numbers=("energy_per_site", "uncertainty_per_site"), words=("method", "source"))


@dataclass(frozen=True)
class ReportInputs:
    """Where every input of the report lives, derived from params."""

    data_dir: Path
    runs: tuple[str, ...]
    bits: tuple[int, ...]
    vq_runs: tuple[tuple[str, int], ...] = ()  # (run, bits) of the VQ-NQS models trained by VMC

    def reference(self, run: str) -> Path:
        return self.data_dir / "reference" / f"{run}.json"

    def train_dir(self, run: str) -> Path:
        return self.data_dir / "train" / run

    def distill_dir(self, run: str, bits: int) -> Path:
        return self.data_dir / "distill" / run / f"bits{bits}"

    def profile(self, run: str, bits: int, stage: str = "profile") -> Path:
        """The profile table of the distilled student (``stage='profile'``) or the VQ training (``'profile_vq'``)."""
        return self.data_dir / stage / run / f"bits{bits}.csv"

    def components(self, run: str, bits: int, stage: str = "profile") -> Path:
        return self.data_dir / stage / run / f"bits{bits}_components.csv"

    def train_vq_dir(self, run: str, bits: int) -> Path:
        return self.data_dir / "train_vq" / run / f"bits{bits}"

    def reads(self) -> Iterator[tuple[Path, Table | Record]]:
        """Every input file of the report and what it reads of it."""
        for run in self.runs:
            yield self.reference(run), REFERENCE
            yield self.train_dir(run) / "metrics.json", METRICS
            yield self.train_dir(run) / "history.csv", HISTORY
            for bits in self.bits:
                yield self.distill_dir(run, bits) / "metrics.json", METRICS
                yield self.profile(run, bits), PROFILE
                yield self.components(run, bits), COMPONENTS
        for run, bits in self.vq_runs:
            yield self.train_vq_dir(run, bits) / "metrics.json", METRICS
            yield self.train_vq_dir(run, bits) / "history.csv", HISTORY
            if bits in self.bits:  # the distilled student's curve beside it
                yield self.distill_dir(run, bits) / "history.csv", HISTORY
            yield self.profile(run, bits, "profile_vq"), PROFILE
            yield self.components(run, bits, "profile_vq"), COMPONENTS

    def all_files(self) -> list[Path]:
        return [path for path, _ in self.reads()]

    def check(self, params: dict) -> None:
        """Fail before any work, naming the first missing file, then the first the report cannot use, then the
        first reference that is not of its run's Hamiltonian in ``params``."""
        for path in self.all_files():
            if not path.is_file():
                raise ReportInputError(f"{path}: missing (run the stages before the report)")
        for path, what in self.reads():
            what.read(path)
        for run in self.runs:
            check_reference(read_json(self.reference(run)), params["systems"][run], self.reference(run))


def inputs_from_params(params: dict, data_dir: str | Path = "data") -> ReportInputs:
    vq_runs = tuple((job["run"], int(job["bits"])) for job in params.get("train_vq_runs") or [])
    return ReportInputs(Path(data_dir), tuple(params["systems"]), tuple(int(b) for b in params["bits"]), vq_runs)


def check_reference(record: dict, system: dict, path: Path) -> None:
    """The reference must be of the params' Hamiltonian: system, size, boundary, Gamma (TFIM), J, J2, sign rule."""
    stored = record.get("hamiltonian") if isinstance(record.get("hamiltonian"), dict) else {}
    expected = {"system": system["system"], "size": system["size"], "boundary": system.get("boundary", "open")}
    found = {key: record.get(key) for key in expected}
    expected["J"], found["J"] = float(system.get("J", 1.0)), stored.get("J")
    expected["J2"], found["J2"] = float(system.get("j2", 0.0)), stored.get("J2", 0.0)  # absent: the plain model
    if system["system"] == "tfim":
        expected["gamma"], found["gamma"] = float(system.get("gamma", 1.0)), stored.get("gamma")
    if system.get("sign_rule") is not None:
        expected["sign_rule"], found["sign_rule"] = system["sign_rule"], stored.get("sign_rule")
    for key, value in expected.items():
        if found[key] != value:
            raise ReportInputError(f"{path}: {key} is {found[key]!r}, the params' run has {value!r}")
