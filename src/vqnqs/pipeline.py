"""The pipeline's DAG, declared once: each stage is one ``vqnqs`` command with its inputs, params and outputs.

Both front-ends are built from :data:`STAGES`: ``workflow/Snakefile`` makes one rule of each stage, and
``dvc.yaml`` is generated from it (a test fails when the committed file differs). Regenerate it with::

    python -m vqnqs.pipeline > dvc.yaml

A stage runs one job per element of its ``jobs``: ``"systems"`` (one per run, wildcard ``{run}``),
``"systems x bits"`` (one per run and bandwidth, ``{run}`` and ``{bits}``), ``"train_vq_runs"`` (one per entry
of ``train_vq_runs``, ``{run}`` and ``{bits}``), or ``None`` (a single job). A command names what it is given
by placeholders: ``{params}`` (the params file), ``{run}``, ``{bits}``, and the stage's ``deps``, ``outs`` and
``dirs`` by name; each front-end puts them in shell-quoted.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vqnqs.config import DEFAULT_PARAMS_PATH, ParamsError

DVC_FILE = Path("dvc.yaml")
PROFILES = Path("config")  # a profile NAME is the params file config/NAME.yaml
PROFILE_NAME = re.compile(r"[a-z][a-z0-9_-]*")
WILDCARDS = {"systems": ("run",), "systems x bits": ("run", "bits"), "train_vq_runs": ("run", "bits"), None: ()}
MODEL_CODE = ("physics", "models", "dedup", "vmc", "stages")  # packages of src/vqnqs a model stage runs
REFERENCE = "data/reference/{run}.json"


@dataclass(frozen=True)
class Shown:
    """Where an output appears in Snakemake's HTML report (``snakemake --report``)."""

    category: str
    caption: str  # a reStructuredText file, from the repository root
    patterns: tuple[str, ...] = ()  # a directory output's files, one report entry each
    labels: Mapping[str, str] | None = None  # None: the path's wildcards


@dataclass(frozen=True)
class Out:
    """One output of a stage. ``kind``: ``out``; ``metric`` or ``plot`` (DVC shows them: ``dvc metrics``,
    ``dvc plots``, with the ``plot`` properties); ``checkpoint``: persisted by DVC and no Snakemake output, so
    that neither tool deletes it when an interrupted stage reruns (the stage resumes from it)."""

    path: str
    kind: str = "out"
    plot: Mapping[str, str] = field(default_factory=dict)
    directory: bool = False
    shown: Shown | None = None


@dataclass(frozen=True)
class Stage:
    """One stage: its command, what it reads and writes, and how its jobs run."""

    name: str
    doc: str
    jobs: str | None
    cmd: str
    deps: Mapping[str, str]  # input files, by name
    outs: Mapping[str, Out]
    params: tuple[str, ...]  # the params keys the stage reads ("systems.{run}": the job's own run)
    code: tuple[str, ...]  # the packages of src/vqnqs it runs
    dirs: Mapping[str, str] = field(default_factory=dict)  # directories it is given, neither inputs nor outputs
    gathers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # stage -> its outputs read from every job
    gpu: bool = False  # a job may use a GPU (Snakemake's `gpu` resource)
    data_parallel: bool = False  # a job may run as several processes under torchrun (Snakemake only)


def training_outputs(out_dir: str, plot_y: str, shown: Shown | None = None) -> dict[str, Out]:
    """What a training stage writes in its out-dir; its history is a plot of ``plot_y`` against the step."""
    return {
        "model": Out(f"{out_dir}/model.pt"),
        "checkpoint": Out(f"{out_dir}/checkpoint.pt", "checkpoint"),
        "metrics": Out(f"{out_dir}/metrics.json", "metric"),
        "history": Out(f"{out_dir}/history.csv", "plot", {"x": "step", "y": plot_y}, shown=shown),
    }


def trained_model(name: str, out_dir: str) -> dict[str, str]:
    """The files of a trained model's out-dir that a later stage reads."""
    return {f"{name}_model": f"{out_dir}/model.pt", f"{name}_metrics": f"{out_dir}/metrics.json"}


def profile_stage(name: str, doc: str, jobs: str, model: str, shown: Shown | None = None) -> Stage:
    """Local-energy FLOPs and wall-clock of the model in out-dir ``model`` beside the baseline's."""
    return Stage(
        name,
        doc,
        jobs,
        "vqnqs profile --params {params} --run {run} --model-dir {model_dir} --baseline {baseline} "
        "--reference {reference} --out {table}",
        deps={**trained_model("model", model), **trained_model("baseline", "data/train/{run}"), "reference": REFERENCE},
        dirs={"model_dir": model, "baseline": "data/train/{run}"},
        outs={
            "table": Out(
                f"data/{name}/{{run}}/bits{{bits}}.csv",
                "plot",
                {"template": "bar_horizontal", "x": "total_savings", "y": "model"},
                shown=shown,
            ),
            "components": Out(f"data/{name}/{{run}}/bits{{bits}}_components.csv"),
        },
        params=("systems.{run}", "profiling"),
        code=(*MODEL_CODE, "profiling"),
        gpu=True,
    )


STAGES = (
    Stage(
        "reference",
        "Exact (free fermions, Lanczos) or literature ground-state energy of one run.",
        "systems",
        "vqnqs reference --params {params} --run {run} --out {reference}",
        deps={"literature": "data/reference/literature.csv"},
        outs={"reference": Out(REFERENCE, shown=Shown("1. References", "workflow/report/reference.rst"))},
        params=("systems.{run}", "reference"),
        code=("physics",),
    ),
    Stage(
        "train",
        "Baseline VMC of the transformer; resumes from its checkpoint.",
        "systems",
        "vqnqs train --params {params} --run {run} --reference {reference} --out-dir {out_dir} --on-change restart",
        deps={"reference": REFERENCE},
        dirs={"out_dir": "data/train/{run}"},
        outs=training_outputs("data/train/{run}", "rel_error", Shown("2. Baseline VMC", "workflow/report/train.rst")),
        params=("systems.{run}", "train"),
        code=MODEL_CODE,
        gpu=True,
        data_parallel=True,
    ),
    Stage(
        "distill",
        "VQ-NQS student of {bits} bits fitted to the trained teacher's log-amplitudes.",
        "systems x bits",
        "vqnqs distill --params {params} --run {run} --teacher {teacher} --bits {bits} --reference {reference} "
        "--out-dir {out_dir} --on-change restart",
        deps={**trained_model("teacher", "data/train/{run}"), "reference": REFERENCE},
        dirs={"teacher": "data/train/{run}", "out_dir": "data/distill/{run}/bits{bits}"},
        outs=training_outputs(
            "data/distill/{run}/bits{bits}", "loss", Shown("3. Distillation", "workflow/report/distill.rst")
        ),
        params=("systems.{run}", "distill"),
        code=MODEL_CODE,
        gpu=True,
    ),
    profile_stage(
        "profile",
        "Local-energy FLOPs (by component) and wall-clock, dense vs dedup, baseline and student.",
        "systems x bits",
        "data/distill/{run}/bits{bits}",
        Shown("4. Profile", "workflow/report/profile.rst"),
    ),
    Stage(
        "train_vq",
        "VQ-NQS of {bits} bits trained directly by VMC (train with model 'vq', the params' train_vq merged over "
        "train); resumes from its checkpoint.",
        "train_vq_runs",
        "vqnqs train --params {params} --run {run} --bits {bits} --reference {reference} --out-dir {out_dir} "
        "--on-change restart",
        deps={"reference": REFERENCE},
        dirs={"out_dir": "data/train_vq/{run}/bits{bits}"},
        outs=training_outputs(
            "data/train_vq/{run}/bits{bits}",
            "rel_error",
            Shown("5. VQ-NQS trained by VMC", "workflow/report/train_vq.rst"),
        ),
        params=("systems.{run}", "train", "train_vq"),
        code=MODEL_CODE,
        gpu=True,
        data_parallel=True,
    ),
    profile_stage(
        "profile_vq",
        "Local-energy FLOPs and wall-clock, dense vs dedup, of the baseline and the VMC-trained VQ-NQS.",
        "train_vq_runs",
        "data/train_vq/{run}/bits{bits}",
    ),
    Stage(
        "report",
        "results/report.md: Table 1 beside the paper's numbers, figures and the CSVs behind them.",
        None,
        "vqnqs report --params {params} --data-dir {data_dir} --out-dir {out_dir}",
        deps={
            "paper": "data/reference/paper_table1.csv",
            # The engines' scaling study (benchmarks/incremental_scaling.py), measured offline and committed.
            **{
                f"incremental_{bits}bits": f"benchmarks/results/incremental_tfim_untrained_d256_{bits}bits.json"
                for bits in (6, 24)
            },
            # The local-energy cost of trained models (benchmarks/linear_cost.py), measured offline and committed.
            "linear_cost_d32": "benchmarks/results/linear_cost_d32/linear_cost.json",
        },
        gathers={
            "reference": ("reference",),
            "train": ("metrics", "history"),
            "distill": ("metrics", "history"),  # the history: the VQ-training section's curve of the student
            "profile": ("table", "components"),
            "train_vq": ("metrics", "history"),
            "profile_vq": ("table", "components"),
        },
        dirs={"data_dir": "data", "out_dir": "results"},
        outs={
            "report": Out("results/report.md"),
            "table": Out("results/table1.csv"),
            "table_html": Out(
                "results/table1.html", shown=Shown("0. Table 1 and figures", "results/captions/table1.rst")
            ),
            "fits": Out("results/tfim_scaling_fits.csv"),
            "summary": Out("results/summary.json", "metric"),
            # The captions are the report stage's own outputs (vqnqs.report.captions), rendered by --report.
            "figures": Out(
                "results/figures",
                directory=True,
                shown=Shown(
                    "0. Table 1 and figures", "results/captions/figures.rst", ("{name}.png",), {"figure": "{name}"}
                ),
            ),
            "captions": Out("results/captions", directory=True),
        },
        params=("systems", "bits", "train_vq_runs"),
        code=("report", "profiling", "vmc"),
    ),
)
STAGE = {stage.name: stage for stage in STAGES}


def params_file(profile: object = None) -> Path:
    """params.yaml, or the profile's file config/NAME.yaml; a name that is not a plain word, or names no file,
    is refused (it goes into every job's command line)."""
    if profile is None:
        return DEFAULT_PARAMS_PATH
    if not isinstance(profile, str) or not PROFILE_NAME.fullmatch(profile):
        raise ParamsError(f"profile {profile!r}: expected a name matching {PROFILE_NAME.pattern} (config/NAME.yaml)")
    path = PROFILES / f"{profile}.yaml"
    if not path.is_file():
        have = ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml"))) or "none"
        raise ParamsError(f"profile {profile!r}: no such file {path} (profiles: {have}; no profile: params.yaml)")
    return path


def jobs(stage: Stage, params: Mapping) -> list[dict]:
    """The wildcards of each of the stage's jobs under ``params``."""
    if stage.jobs == "systems":
        return [{"run": run} for run in params["systems"]]
    if stage.jobs == "systems x bits":
        return [{"run": run, "bits": bits} for run in params["systems"] for bits in params["bits"]]
    if stage.jobs == "train_vq_runs":
        return [{"run": job["run"], "bits": job["bits"]} for job in params.get("train_vq_runs") or []]
    return [{}]


def gathered(stage: Stage) -> list[tuple[Stage, str]]:
    """The outputs of other stages, (stage, output name), that ``stage`` reads from every one of their jobs."""
    return [(STAGE[name], out) for name, outs in stage.gathers.items() for out in outs]


# Snakemake (workflow/Snakefile): a rule per stage; its params file is the Snakefile's global PARAMS.


def snakemake_inputs(stage: Stage, params: Mapping) -> dict[str, str | list[str]]:
    inputs: dict[str, str | list[str]] = dict(stage.deps)
    for source, out in gathered(stage):
        inputs[f"{source.name}_{out}"] = [source.outs[out].path.format(**job) for job in jobs(source, params)]
    inputs["code"] = sorted(str(f) for package in stage.code for f in Path("src/vqnqs", package).glob("*.py"))
    return inputs


def snakemake_outputs(stage: Stage) -> dict[str, Out]:
    return {name: out for name, out in stage.outs.items() if out.kind != "checkpoint"}


def snakemake_params(stage: Stage, params: Mapping) -> dict[str, object]:
    """The params keys the stage reads (a change reruns its jobs), each named by its section, and its dirs."""
    return {key.split(".")[0]: params_value(params, key) for key in stage.params} | dict(stage.dirs)


def params_value(params: Mapping, key: str) -> Callable:
    """The value at dotted ``key`` of ``params`` for a job's wildcards (None where a section is absent)."""

    def value(wildcards) -> object:
        node = params
        for part in key.format(**dict(wildcards.items())).split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        return node

    return value


def snakemake_shell(stage: Stage) -> str:
    """The stage's command as a Snakemake ``shell`` template, every placeholder a quoted field of the job."""
    fields = {"params": "PARAMS", **{wildcard: f"wildcards.{wildcard}" for wildcard in WILDCARDS[stage.jobs]}}
    fields |= {name: f"input.{name}" for name in stage.deps} | {name: f"output.{name}" for name in stage.outs}
    fields |= {name: f"params.{name}" for name in stage.dirs}
    return stage.cmd.format(**{name: f"{{{value}:q}}" for name, value in fields.items()})


# DVC (dvc.yaml): a stage per stage, `foreach`/`matrix` over the same params lists, on params.yaml.

DVC_JOBS = {
    "systems": ({"foreach": "${systems}"}, {"run": "${key}"}),
    "systems x bits": (
        {"matrix": {"run": "${systems}", "bits": "${bits}"}},
        {"run": "${item.run}", "bits": "${item.bits}"},
    ),
    "train_vq_runs": ({"foreach": "${train_vq_runs}"}, {"run": "${item.run}", "bits": "${item.bits}"}),
    None: ({}, {}),
}
DVC_HEADER = """\
# The vqnqs pipeline for DVC, generated from vqnqs.pipeline (the DAG's one declaration, which workflow/Snakefile
# reads too): edit that module, then `python -m vqnqs.pipeline > dvc.yaml`. `dvc repro` reruns only what changed.
# Checkpoints are `persist` outputs: DVC keeps them when it reruns a stage, so an interrupted training resumes.
# Every stage's metrics.json (and the report's summary.json) is a DVC metric and every history or profile CSV a
# plot: `dvc metrics show/diff`, `dvc plots show/diff` and `dvc exp show` read them.
"""


def dvc_stage(stage: Stage) -> dict:
    loop, wildcards = DVC_JOBS[stage.jobs]

    def path(template: str) -> str:
        return template.format(**wildcards)

    paths = {"params": str(DEFAULT_PARAMS_PATH), **{name: path(p) for name, p in {**stage.deps, **stage.dirs}.items()}}
    paths |= {name: path(out.path) for name, out in stage.outs.items()} | wildcards
    gathered_dirs = [directory_of(source.outs[out].path) for source, out in gathered(stage)]
    body: dict = {
        "cmd": stage.cmd.format(**{name: shlex.quote(value) for name, value in paths.items()}),
        "deps": list(dict.fromkeys([*map(path, stage.deps.values()), *gathered_dirs]))
        + [f"src/vqnqs/{package}" for package in stage.code],
        "params": [path(key) for key in stage.params],
    }
    for section, kind in (("outs", "out"), ("outs", "checkpoint"), ("metrics", "metric"), ("plots", "plot")):
        for out in (out for out in stage.outs.values() if out.kind == kind):
            entry = {path(out.path): {"persist": True}} if kind == "checkpoint" else path(out.path)
            body.setdefault(section, []).append({entry: dict(out.plot)} if out.plot else entry)
    return {**loop, "do": body} if "foreach" in loop else {**loop, **body}


def directory_of(template: str) -> str:
    """The directory that holds every file of a path template: its part before the first wildcard."""
    return posixpath.dirname(template[: template.index("{")]) if "{" in template else template


def dvc_yaml() -> str:
    from vqnqs.report.captions import FIGURE_CAPTIONS  # local: pandas loads only to generate the file

    document = {
        "stages": {stage.name: dvc_stage(stage) for stage in STAGES},
        # The report's figures, as images in `dvc plots show` (results/figures also holds the CSV behind each).
        "plots": [f"results/figures/{name}.png" for name in FIGURE_CAPTIONS],
    }
    return DVC_HEADER + fold_commands(yaml.safe_dump(document, sort_keys=False, width=10_000))


def fold_commands(text: str, width: int = 110) -> str:
    """A YAML dump with each command longer than a line folded (``>-``) over lines that break before an option."""
    lines = []
    for line in text.splitlines():
        indent, key, cmd = line.partition("cmd: ")
        if not key or indent.strip() or len(line) <= width:
            lines.append(line)
            continue
        lines.append(f"{indent}cmd: >-")
        folded = [""]
        for part in re.split(r" (?=--)", cmd):
            if folded[-1] and len(indent) + 2 + len(folded[-1]) + 1 + len(part) > width:
                folded.append("")
            folded[-1] = f"{folded[-1]} {part}".lstrip()
        lines += [f"{indent}  {part}" for part in folded]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(dvc_yaml())
