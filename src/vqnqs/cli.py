"""The ``vqnqs`` command: one sub-command per pipeline stage, each runnable alone.

This module holds the argument parsers and thin handlers; the stages live in :mod:`vqnqs.stages`. Every
sub-command validates all of its input before doing any work; a bad value ends the run with exit status 2
and one line that names the argument and what was expected, and no output file is written (outputs are
written atomically).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from vqnqs.cli_args import Parser, finite_float, output_file, run_name, set_argument, size_argument
from vqnqs.cli_help import STAGE_TEXTS
from vqnqs.config import DEFAULT_PARAMS_PATH, ParamsError, load_params
from vqnqs.io import OutputError, check_not_an_input, check_writable_dir, read_json, write_json
from vqnqs.knobs import knob_defaults
from vqnqs.physics.hamiltonian import SYSTEMS
from vqnqs.physics.lattice import BOUNDARIES
from vqnqs.physics.reference import DEFAULT_LITERATURE_KEY, DEFAULT_LITERATURE_PATH, METHODS, compute_reference
from vqnqs.profiling.quantized import model_bits
from vqnqs.profiling.table import bits_value, components_path
from vqnqs.stages.config import DistillConfig, ProfileConfig, TrainConfig, check_bits, resolve_device
from vqnqs.stages.distill import Distiller
from vqnqs.stages.driver import CHECKPOINT_FILE, OUTPUT_FILES
from vqnqs.stages.inputs import (
    check_model_dir,
    load_reference,
    load_teacher,
    load_trained,
    reference_energy,
    system_from_info,
)
from vqnqs.stages.outdir import held_out_dir
from vqnqs.stages.profile import run_profile_stage, summary_line
from vqnqs.stages.settings import (
    UsageError,
    hamiltonian_from,
    open_run,
    refused_as,
    resolve_system,
    stage_config,
    stage_setup,
)
from vqnqs.stages.train import Trainer
from vqnqs.tracking import Run, Terminated, TrackingError
from vqnqs.vmc.distributed import check_split, joined_world, launched_world
from vqnqs.vmc.local_energy import check_chunk_fits
from vqnqs.vmc.step import TrainingError


def subcommand(
    subparsers: argparse._SubParsersAction, name: str, handler: Callable, more: str = "", epilog: str = ""
) -> argparse.ArgumentParser:
    """The sub-command ``name`` with its :data:`STAGE_TEXTS` (``more`` appended to the description)."""
    help, description, example = STAGE_TEXTS[name]
    parser = subparsers.add_parser(
        name,
        help=help,
        description=textwrap.fill(description + more, width=100),
        epilog=f"example: {example}{epilog}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def stage_parser(subparsers: argparse._SubParsersAction, config: type, handler: Callable) -> argparse.ArgumentParser:
    """A stage's sub-command: the system (flags or ``--run``) and ``--set`` for the knobs of ``config``, whose
    names and defaults the help lists (from the dataclass: :func:`vqnqs.knobs.knob_defaults`)."""
    section = config.section
    name = "profile" if section == "profiling" else section
    settings = (
        f" Settings: the defaults of {config.__name__} (below), then the params file's '{section}' mapping, then "
        f"the '{section}' mapping of the --run entry, then --set."
    )
    defaults = textwrap.fill(knob_defaults(config), width=100, initial_indent="  ", subsequent_indent="  ")
    knobs = f"\n\n{config.__name__} knobs (--set KEY=VALUE) and their defaults:\n{defaults}"
    parser = subcommand(subparsers, name, handler, settings, knobs)
    add_run_arguments(parser)
    add_system_arguments(parser)
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        type=set_argument,
        action="append",
        default=[],
        help=f"override one {section} setting, read as YAML, e.g. --set {STAGE_TEXTS[name][2].split('--set ')[-1]}",
    )
    return parser


def add_out_dir(parser: argparse.ArgumentParser) -> None:
    """``--out-dir`` of a step-wise stage, and what to do with a checkpoint found there."""
    parser.add_argument("--out-dir", required=True, type=Path, help="output directory (checkpoint, metrics, model)")
    parser.set_defaults(checkpointed=True)
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="start from step 0; a checkpoint in --out-dir is kept as checkpoint.N.pt",
    )
    parser.add_argument(
        "--on-change",
        choices=("refuse", "restart"),
        default="refuse",
        help=(
            "a checkpoint in --out-dir written with other settings: refuse, naming the setting (default), or set "
            "it aside and restart (what the pipelines pass). A checkpoint with the same settings is resumed; "
            "steps (distill: finetune.steps) may grow: the run goes on from the checkpoint, at the final "
            "learning rate past the end of its original schedule"
        ),
    )


def check_apart(args: argparse.Namespace, outputs: list[Path], files: list, directories: list) -> None:
    """Refuse an output that is an input: one of ``files`` (None: not given), the params file of ``--run``, or a
    file of one of the input ``directories`` (:func:`vqnqs.io.check_not_an_input`)."""
    params = [args.params] if getattr(args, "run", None) is not None else []
    check_not_an_input(outputs, [file for file in (*files, *params) if file is not None], directories)


def start(stage, args: argparse.Namespace) -> None:
    """Before the MLflow run: set the old checkpoint aside (--fresh) or resume (refused now if unusable)."""
    if args.fresh:
        stage.set_aside()
        stage.resumed = True
    else:
        stage.resume(on_change=args.on_change)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--params``/``--run``: take a run's settings from the params file (flags given explicitly win)."""
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_PATH, help="params file (default: params.yaml)")
    parser.add_argument(
        "--run", type=run_name, default=None, help="key under 'systems' in the params file, e.g. heisenberg_4x4"
    )


def add_system_arguments(parser: argparse.ArgumentParser) -> None:
    """The Hamiltonian: given directly, or filled from ``--run`` (defaults: open, Gamma = J = 1)."""
    parser.add_argument("--system", choices=SYSTEMS, help="model Hamiltonian")
    parser.add_argument("--size", type=size_argument, help="chain length N or square lattice LxW")
    parser.add_argument("--boundary", choices=BOUNDARIES, help="boundary conditions (default: open)")
    parser.add_argument("--gamma", type=finite_float, help="TFIM transverse field Gamma (default: 1)")
    parser.add_argument("--J", dest="coupling", type=finite_float, help="coupling J (default: 1)")
    parser.add_argument(
        "--j2",
        type=finite_float,
        help="Heisenberg: next-nearest-neighbour (diagonal) coupling J2 of the J1-J2 model (default: 0)",
    )
    parser.add_argument(
        "--sign-rule",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Heisenberg: apply Marshall's sign rule (default: on for bipartite lattices)",
    )


def energy_line(what: str, metrics: dict, out_dir: Path, extra: str = "") -> str:
    """The one line a step-wise stage prints at the end."""
    rel = metrics["rel_error"]
    return (
        f"{what}: E/N = {metrics['energy_per_site']:.8f} +- {metrics['energy_error']:.1e}, rel. error "
        f"{'n/a' if rel is None else f'{rel:.2e}'}{f' ({extra})' if extra else ''} after {metrics['steps']} steps "
        f"({metrics['wall_time_s']:.0f} s) -> {out_dir}"
    )


# --- stages -------------------------------------------------------------------------------------


def add_reference(subparsers: argparse._SubParsersAction) -> None:
    parser = subcommand(subparsers, "reference", run_reference)
    add_run_arguments(parser)
    add_system_arguments(parser)
    parser.add_argument("--method", choices=METHODS, default="auto", help="route to the energy (default: auto)")
    parser.add_argument(
        "--literature-key",
        default=None,
        help=(
            f"which literature row to use where several exist (default: params' reference.literature_key "
            f"with --run, else {DEFAULT_LITERATURE_KEY!r}: the most precise independent value; 'paper': the paper's)"
        ),
    )
    parser.add_argument(
        "--literature",
        type=Path,
        default=DEFAULT_LITERATURE_PATH,
        help=f"literature table (default: {DEFAULT_LITERATURE_PATH})",
    )
    parser.add_argument("--out", required=True, type=output_file, help="output JSON file")


def run_reference(args: argparse.Namespace) -> None:
    settings, params = resolve_system(args)
    hamiltonian = hamiltonian_from(settings)
    literature_key = args.literature_key or params.get("reference", {}).get("literature_key")
    check_writable_dir(args.out.parent)
    check_apart(args, [args.out], [args.literature], [])
    record = compute_reference(hamiltonian, args.method, literature_key, args.literature)
    write_json(args.out, record)
    print(
        f"{record['system']} {record['size']} {record['boundary']}: E0/N = {record['energy_per_site']:.10f} "
        f"({record['method']}, {record['wall_time_s']:.2f} s) -> {args.out}"
    )


def add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = stage_parser(subparsers, TrainConfig, run_train)
    parser.add_argument("--reference", required=True, type=Path, help="reference JSON of the same system")
    parser.add_argument(
        "--bits",
        type=int,
        default=None,
        help="train a VQ-NQS model of this bandwidth (heads x log2(codes)) by VMC: --set model=vq --set bits=B, "
        "with the params' train_vq sections merged over train",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start from the model.pt of a train or distill out dir, of this system on any lattice size (every weight "
        "whose name and shape match is copied, the rest initialised afresh): a warm-up, a student, a smaller lattice",
    )
    add_out_dir(parser)


def run_train(args: argparse.Namespace) -> None:
    if args.bits is not None:
        given = dict(args.overrides)
        for key, value in (("model", "vq"), ("bits", args.bits)):
            if given.get(key, value) != value:
                raise UsageError(f"argument --bits {args.bits}: contradicts --set {key}={given[key]}")
        args.overrides = [("model", "vq"), ("bits", args.bits), *args.overrides]
    settings, params, hamiltonian, config = stage_setup(args, TrainConfig)
    _, world_size, _ = launched_world()
    with refused_as("train settings"):
        config.transformer_config(hamiltonian)  # the patch must tile the lattice
        for key in ("n_samples", "eval_samples"):  # each process draws its equal share
            check_split(key, getattr(config, key), world_size)
    reference = load_reference(args.reference, hamiltonian)
    start_from = None
    if args.init_from is not None:
        start_from = load_teacher(args.init_from, hamiltonian, "--init-from", start=True)
    check_writable_dir(args.out_dir)
    outputs = [args.out_dir / name for name in OUTPUT_FILES]
    check_apart(args, outputs, [args.reference], [args.init_from] if args.init_from is not None else [])
    with joined_world(resolve_device(config.device).type) as world, held_out_dir(args.out_dir, world):
        trainer = Trainer(hamiltonian, config, args.out_dir, reference, start_from, world)
        start(trainer, args)
        used = {"train": config.to_dict(), "reference": str(args.reference)}
        used.update(world_size=world.size, samples_per_rank=config.n_samples // world.size)
        if start_from is not None:
            used.update(init_from=str(args.init_from), init_digest=start_from.digest)
        tags = {"bits": config.bits} if config.model == "vq" else {}
        tracking = contextlib.nullcontext()  # rank 0 alone records the MLflow run
        if world.is_main:
            tracking = open_run("train", settings, params, args.run, used, trainer, model=config.model, **tags)
        with tracking as tracker:
            metrics = trainer.run(tracker, resume=False)
    what = f"{settings['system']} {settings['size']}" + (f" VQ {config.bits} bits" if config.model == "vq" else "")
    if world.is_main:
        print(energy_line(what, metrics, args.out_dir))


def add_distill(subparsers: argparse._SubParsersAction) -> None:
    parser = stage_parser(subparsers, DistillConfig, run_distill)
    parser.add_argument("--teacher", required=True, type=Path, help="train stage out dir (model.pt, metrics.json)")
    parser.add_argument("--bits", required=True, type=int, help="bandwidth per location: heads x log2(codes), e.g. 6")
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="reference JSON of the same system (default: reference_per_site of the teacher's metrics.json)",
    )
    add_out_dir(parser)


def run_distill(args: argparse.Namespace) -> None:
    settings, params, hamiltonian, config = stage_setup(args, DistillConfig)
    with refused_as("argument --bits"):
        config.vq_config(args.bits)
    reference = load_reference(args.reference, hamiltonian) if args.reference is not None else None
    teacher = load_teacher(args.teacher, hamiltonian)  # CheckpointError naming the file
    with refused_as("distill settings"):
        student = config.student_config(teacher.model.config)
    with refused_as("argument --bits"):
        check_bits(args.bits, config.codes, student.d_model)
    if reference is None:
        metrics = teacher.path.parent / "metrics.json"
        if "reference_per_site" not in teacher.metrics:
            raise UsageError(f"argument --reference: required ({metrics} has no reference_per_site)")
        reference = reference_energy(teacher.metrics, f"teacher {metrics}", hamiltonian, "reference_per_site")
    check_writable_dir(args.out_dir)
    check_apart(args, [args.out_dir / name for name in OUTPUT_FILES], [args.reference], [args.teacher])
    with held_out_dir(args.out_dir):
        distiller = Distiller(hamiltonian, teacher, config, args.bits, args.out_dir, reference)
        start(distiller, args)
        used = {
            "distill": config.to_dict(),
            "bits": args.bits,
            "teacher": str(args.teacher),
            "teacher_digest": teacher.digest,
            "reference": str(args.reference) if args.reference is not None else "teacher metrics.json",
        }
        with open_run("distill", settings, params, args.run, used, distiller, bits=args.bits) as run:
            metrics = distiller.run(run, resume=False)
        teacher_rel = metrics["teacher_rel_error"]
        extra = f"teacher {'n/a' if teacher_rel is None else f'{teacher_rel:.2e}'}, fidelity {metrics['fidelity']:.6f}"
        print(energy_line(f"{settings['system']} {settings['size']} {args.bits} bits", metrics, args.out_dir, extra))


def add_profile(subparsers: argparse._SubParsersAction) -> None:
    parser = stage_parser(subparsers, ProfileConfig, run_profile)
    parser.add_argument("--model-dir", required=True, type=Path, help="distill stage out dir (model.pt, metrics.json)")
    parser.add_argument("--baseline", required=True, type=Path, help="train stage out dir (model.pt, metrics.json)")
    parser.add_argument("--reference", type=Path, default=None, help="reference JSON (fills reference_per_site)")
    parser.add_argument("--out", required=True, type=output_file, help="profile CSV (components CSV beside it)")


def run_profile(args: argparse.Namespace) -> None:
    check_model_dir(args.model_dir, "model")
    check_model_dir(args.baseline, "baseline")
    if args.run is not None or args.system is not None or args.size is not None:
        settings, params = resolve_system(args)
    else:
        _, info, path = load_trained(args.baseline, "baseline", vq=False)
        settings, params = system_from_info(info, str(path)), {}
    hamiltonian = hamiltonian_from(settings)
    config = stage_config(ProfileConfig, params, settings, args.overrides)
    with refused_as("profiling settings"):
        check_chunk_fits(hamiltonian, config.chunk_size or config.batch)
    reference = load_reference(args.reference, hamiltonian) if args.reference is not None else None
    student, _, _ = load_trained(args.model_dir, "model", vq=True, hamiltonian=hamiltonian)
    load_trained(args.baseline, "baseline", vq=False, hamiltonian=hamiltonian)
    config.resolved_timing_devices()
    check_writable_dir(args.out.parent)
    check_apart(args, [args.out, components_path(args.out)], [args.reference], [args.model_dir, args.baseline])
    used = {"profile": config.to_dict(), "model_dir": str(args.model_dir), "baseline": str(args.baseline)}
    used["reference"] = None if args.reference is None else str(args.reference)
    with open_run("profile", settings, params, args.run, used, bits=bits_value(model_bits(student))) as run:
        result = run_profile_stage(
            args.model_dir, args.baseline, args.out, hamiltonian, settings, config, reference_per_site=reference
        )
        keys = ("total_savings", "quantized_ops_savings", "flops_dense_per_sample", "flops_dedup_per_sample")
        keys += ("total_savings_no_prefix", "time_dense_s", "time_dedup_s", "time_speedup")
        keys += ("flops_phase_dense_per_sample", "flops_phase_dedup_per_sample")  # None without a phase network
        for row, model_dir in zip(result.rows, (args.baseline, args.model_dir), strict=True):
            # linked to the profiled model's own MLflow logged model (its stage's metrics.json names it)
            model_id = read_json(Path(model_dir) / "metrics.json").get("mlflow_model_id")
            linked = model_id if run.has_model(model_id) else None
            run.log_metrics({f"{row['model']}_{key}": row[key] for key in keys if row.get(key) is not None}, 0, linked)
        run.flush()
        run.log_artifact(result.out)
        run.log_artifact(result.components_out)
    print(f"{summary_line(result)}\n-> {result.out}, {result.components_out}")


def add_report(subparsers: argparse._SubParsersAction) -> None:
    parser = subcommand(subparsers, "report", run_report)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_PATH, help="params file (default: params.yaml)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="stage outputs (default: data)")
    parser.add_argument("--out-dir", type=Path, default=Path("results"), help="report directory (default: results)")


def run_report(args: argparse.Namespace) -> None:
    from vqnqs.report import inputs_from_params, write_report  # local: matplotlib loads for the report only

    params = load_params(args.params)
    inputs = inputs_from_params(params, args.data_dir)
    inputs.check(params)  # before any work: every input present and usable, each reference of its run's Hamiltonian
    check_writable_dir(args.out_dir)
    with Run("report", params, {"run": "all"}, experiment=params.get("experiment")) as run:
        report = write_report(params, inputs, args.out_dir)
        run.log_artifact(report)
        for figure in sorted((args.out_dir / "figures").glob("*.png")):
            run.log_artifact(figure)
    print(f"report -> {report}")


STAGES: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_reference,
    add_train,
    add_distill,
    add_profile,
    add_report,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="vqnqs",
        description="Neural quantum states with vector-quantised dedup of the local energy (VQ-NQS).",
    )
    subparsers = parser.add_subparsers(title="stages", dest="stage", required=True, parser_class=Parser)
    for add_stage in STAGES:
        add_stage(subparsers)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def stopped_line(args: argparse.Namespace, stop: BaseException) -> str:
    """What a stage stopped by SIGINT or SIGTERM leaves: for a step-wise one, its checkpoint or none."""
    line = f"vqnqs {args.stage}: {'interrupted' if isinstance(stop, KeyboardInterrupt) else 'terminated'}"
    if not getattr(args, "checkpointed", False):
        return line
    if (args.out_dir / CHECKPOINT_FILE).is_file():
        return f"{line}; the last checkpoint is kept, a rerun resumes from it"
    return f"{line}; no checkpoint was written, a rerun starts from step 0"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    world_size = launched_world()[1]
    if world_size > 1 and args.stage != "train":  # P copies would write the same outputs
        what = f"runs in one process (world size {world_size}); only train runs under torchrun"
        print(f"vqnqs {args.stage}: error: {what}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _terminate)  # SIGTERM ends a stage as SIGINT does (MLflow: KILLED)
    try:
        args.handler(args)
    except (KeyboardInterrupt, Terminated) as stop:
        print(stopped_line(args, stop), file=sys.stderr)
        return 130 if isinstance(stop, KeyboardInterrupt) else 143
    except (UsageError, ParamsError, ValueError, OutputError) as err:
        print(f"vqnqs {args.stage}: error: {err}", file=sys.stderr)
        return 2
    except (TrainingError, TrackingError) as err:
        print(f"vqnqs {args.stage}: error: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
