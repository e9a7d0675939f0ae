"""Where the report's inputs live (derived from params), checked before any work.

Per run key of ``params.yaml`` (``systems``), bandwidth (``bits``) and VQ training (``train_vq_runs``)::

    data/reference/<run>.json                          reference energy
    data/train/<run>/{metrics.json,history.csv}        baseline VMC
    data/distill/<run>/bits<B>/{metrics,history}        VQ-NQS student distilled from the baseline
    data/profile/<run>/bits<B>{,_components}.csv        Table-1 rows (baseline + student), FLOPs by component
    data/train_vq/<run>/bits<B>/{metrics,history}       VQ-NQS trained directly by VMC
    data/profile_vq/<run>/bits<B>{,_components}.csv     its profile (beside the same baseline)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vqnqs.io import InputError, read_json


class ReportInputError(InputError):
    """A stage output the report needs is missing or malformed."""


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

    def all_files(self) -> list[Path]:
        files = []
        for run in self.runs:
            files += [self.reference(run), self.train_dir(run) / "metrics.json", self.train_dir(run) / "history.csv"]
            for bits in self.bits:
                files += [
                    self.distill_dir(run, bits) / "metrics.json",
                    self.profile(run, bits),
                    self.components(run, bits),
                ]
        for run, bits in self.vq_runs:
            trained = self.train_vq_dir(run, bits)
            files += [trained / "metrics.json", trained / "history.csv"]
            files += [self.profile(run, bits, "profile_vq"), self.components(run, bits, "profile_vq")]
        return files

    def check(self, params: dict | None = None) -> None:
        """Fail before any work, naming the first missing file (and, with ``params``, the first reference
        that is not of its run's Hamiltonian)."""
        for path in self.all_files():
            if not path.is_file():
                raise ReportInputError(f"{path}: missing (run the stages before the report)")
        for run in self.runs if params is not None else ():
            check_reference(read_json(self.reference(run)), params["systems"][run], self.reference(run))


def inputs_from_params(params: dict, data_dir: str | Path = "data") -> ReportInputs:
    vq_runs = tuple((job["run"], int(job["bits"])) for job in params.get("train_vq_runs") or [])
    return ReportInputs(Path(data_dir), tuple(params["systems"]), tuple(int(b) for b in params["bits"]), vq_runs)


def read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ReportInputError(f"{path}: not a readable CSV file ({err})") from err


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
