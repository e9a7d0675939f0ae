"""The ``vqnqs`` command: one sub-command per pipeline stage, each runnable alone.

Every sub-command validates all of its input before doing any work; a bad value ends the run
with exit status 2 and one line that names the argument and what was expected, and no output
file is written (outputs are written atomically).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from vqnqs.config import DEFAULT_PARAMS_PATH, ParamsError, load_params, run_settings
from vqnqs.io import OutputError, ensure_writable_dir, write_json
from vqnqs.physics.hamiltonian import SYSTEMS, build_hamiltonian
from vqnqs.physics.lattice import BOUNDARIES, parse_size
from vqnqs.physics.reference import DEFAULT_LITERATURE_KEY, DEFAULT_LITERATURE_PATH, METHODS, compute_reference


class UsageError(ValueError):
    """Bad input found after parsing (e.g. a combination of arguments): exit 2, one line."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument on one line (the full usage is in ``--help``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# --- argument types: each names what it expected ------------------------------------------------


def size_argument(text: str) -> str:
    try:
        parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix(f"size {text!r}: ")) from err
    return text.strip()


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def output_file(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; expected a file path")
    return path


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--params``/``--run``: take a run's settings from the params file (flags given explicitly win)."""
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_PATH, help="params file (default: params.yaml)")
    parser.add_argument("--run", default=None, help="key under 'systems' in the params file, e.g. heisenberg_4x4")


def add_system_arguments(parser: argparse.ArgumentParser) -> None:
    """The Hamiltonian: given directly, or filled from ``--run`` (defaults: open, Gamma = J = 1)."""
    parser.add_argument("--system", choices=SYSTEMS, help="model Hamiltonian")
    parser.add_argument("--size", type=size_argument, help="chain length N or square lattice LxW")
    parser.add_argument("--boundary", choices=BOUNDARIES, help="boundary conditions (default: open)")
    parser.add_argument("--gamma", type=finite_float, help="TFIM transverse field Gamma (default: 1)")
    parser.add_argument("--J", dest="coupling", type=finite_float, help="coupling J (default: 1)")
    parser.add_argument(
        "--sign-rule",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Heisenberg: apply Marshall's sign rule (default: on for bipartite lattices)",
    )


def resolve_system(args: argparse.Namespace) -> tuple[dict, dict]:
    """Merge explicit flags over the ``--run`` entry; returns (system settings, whole params or {})."""
    params: dict = {}
    settings = {"boundary": "open", "gamma": None, "J": 1.0, "sign_rule": None}
    if args.run is not None:
        params = load_params(args.params)
        settings = run_settings(params, args.run)
        if settings["system"] != "tfim":
            settings["gamma"] = None
    explicit = {
        "system": args.system,
        "size": args.size,
        "boundary": args.boundary,
        "gamma": args.gamma,
        "J": args.coupling,
        "sign_rule": args.sign_rule,
    }
    settings.update({key: value for key, value in explicit.items() if value is not None})
    for key in ("system", "size"):
        if settings.get(key) is None:
            raise UsageError(f"argument --{key}: required (or take it from the params file with --run KEY)")
    if settings["system"] != "tfim" and settings["gamma"] not in (None, 1.0):
        raise UsageError("argument --gamma: only the tfim system has a transverse field")
    return settings, params


def hamiltonian_from(settings: dict):
    return build_hamiltonian(
        settings["system"],
        settings["size"],
        settings["boundary"],
        gamma=1.0 if settings["gamma"] is None else settings["gamma"],
        coupling=settings["J"],
        sign_rule=settings["sign_rule"],
    )


# --- stages -------------------------------------------------------------------------------------


def add_reference(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reference",
        help="exact or literature ground-state energy of one system and size",
        description=(
            "Ground-state energy reference. Open TFIM chains: free fermions (any N, Gamma, J). "
            "Heisenberg: sparse Lanczos in the ground state's Sz sector when it fits in memory "
            "(up to ~26 spins), else a row of the literature table. Writes a JSON record."
        ),
        epilog="example: vqnqs reference --system heisenberg --size 4x4 --out data/reference/heisenberg_4x4.json",
    )
    add_run_arguments(parser)
    add_system_arguments(parser)
    parser.add_argument("--method", choices=METHODS, default="auto", help="route to the energy (default: auto)")
    parser.add_argument(
        "--literature-key",
        default=None,
        help=(
            f"which literature row to use where several exist (default: params' reference.literature_key "
            f"with --run, else {DEFAULT_LITERATURE_KEY!r}, the paper's)"
        ),
    )
    parser.add_argument(
        "--literature",
        type=Path,
        default=DEFAULT_LITERATURE_PATH,
        help=f"literature table (default: {DEFAULT_LITERATURE_PATH})",
    )
    parser.add_argument("--out", required=True, type=output_file, help="output JSON file")
    parser.set_defaults(handler=run_reference)


def run_reference(args: argparse.Namespace) -> None:
    settings, params = resolve_system(args)
    hamiltonian = hamiltonian_from(settings)
    literature_key = args.literature_key or params.get("reference", {}).get("literature_key")
    ensure_writable_dir(args.out.parent)
    record = compute_reference(hamiltonian, args.method, literature_key, args.literature)
    write_json(args.out, record)
    print(
        f"{record['system']} {record['size']} {record['boundary']}: E0/N = {record['energy_per_site']:.10f} "
        f"({record['method']}, {record['wall_time_s']:.2f} s) -> {args.out}"
    )


STAGES: tuple[Callable[[argparse._SubParsersAction], None], ...] = (add_reference,)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vqnqs",
        description="Neural quantum states with vector-quantised dedup of the local energy (VQ-NQS).",
    )
    subparsers = parser.add_subparsers(title="stages", dest="stage", required=True, parser_class=_Parser)
    for add_stage in STAGES:
        add_stage(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except (UsageError, ParamsError, ValueError, OutputError) as err:
        print(f"vqnqs {args.stage}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
