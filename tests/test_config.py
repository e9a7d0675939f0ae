"""params files: the schema, the profiles, and what a bad value gets (one line naming the key)."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vqnqs.config import ParamsError, load_params, params_schema, section_mapping, validate_params
from vqnqs.schema import SCHEMA_FILE
from vqnqs.stages.config import DistillConfig, FinetuneConfig, ProfileConfig, TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted((REPO_ROOT / "config").glob("*.yaml"))  # params.yaml is the default


@pytest.mark.parametrize("path", [REPO_ROOT / "params.yaml", *PROFILES], ids=lambda p: p.stem)
def test_every_profile_validates(path):
    params = load_params(path)
    assert params["experiment"].endswith("default" if path.name == "params.yaml" else path.stem)


def test_schema_sections_mirror_the_stage_configs():
    """The schema lists exactly the fields of each stage's config dataclass (no drift either way), a nested
    section's as a nested object that refuses other keys."""
    defs = params_schema()["$defs"]
    for section, config in (("train", TrainConfig), ("distill", DistillConfig), ("profiling", ProfileConfig)):
        assert set(defs[section]["properties"]) == {f.name for f in dataclasses.fields(config)}, section
    finetune = defs["distill"]["properties"]["finetune"]
    assert finetune["additionalProperties"] is False
    assert set(finetune["properties"]) == {f.name for f in dataclasses.fields(FinetuneConfig)}


def test_a_runs_nested_section_merges_key_by_key():
    """systems.<run>.distill.finetune changes only the keys it gives, over distill.finetune (then --set)."""
    params = {"distill": {"steps": 5, "finetune": {"steps": 10, "lr": 0.1}}}
    entry = {"distill": {"finetune": {"lr": 0.2}}}
    assert section_mapping(params, entry, ("distill",)) == {"steps": 5, "finetune": {"steps": 10, "lr": 0.2}}


def default_params() -> dict:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


@pytest.mark.parametrize(
    "path, value, names",
    [
        (("systems", "heisenberg_4x4", "size"), "3x", "systems.heisenberg_4x4.size"),
        (("systems", "tfim_16", "gamma"), float("nan"), "systems.tfim_16.gamma"),
        (("systems", "tfim_16", "j2"), 0.5, "systems.tfim_16.j2"),  # J2 is the Heisenberg model's
        (("systems", "tfim_16", "j2"), 0.0, "systems.tfim_16.j2: only the heisenberg"),  # given at all
        (("systems", "tfim_16", "sign_rule"), False, "systems.tfim_16.sign_rule: only the heisenberg"),
        (("systems", "heisenberg_4x4", "gamma"), 1.0, "systems.heisenberg_4x4.gamma: only the tfim"),
        (("systems", "tfim_16", "train"), {"threads": 100000}, "systems.tfim_16.train.threads"),
        (("systems", "heisenberg_4x4", "j2"), float("inf"), "systems.heisenberg_4x4.j2"),
        (("systems", "heisenberg_4x4", "j2"), "half", "systems.heisenberg_4x4.j2"),
        (("systems", "tfim_16", "system"), "ising", "systems.tfim_16.system"),
        (("train", "steps"), -5, "train.steps"),
        (("train", "optimizer"), "sgd", "train.optimizer"),
        (("train", "stepz"), 5, "train"),
        (("distill", "lr"), 0, "distill.lr"),
        (("distill", "finetune"), {"steps": -1}, "distill.finetune.steps"),
        (("distill", "finetune"), {"stepz": 1}, "distill.finetune"),
        (
            ("systems", "tfim_16", "distill"),
            {"finetune": {"n_samples": 1}},
            "systems.tfim_16.distill.finetune.n_samples",
        ),
        (("profiling", "batch"), "many", "profiling.batch"),
        (("bits",), [], "bits"),
        (("systems", "tfim_16", "train"), {"d_model": 0}, "systems.tfim_16.train.d_model"),
    ],
)
def test_bad_values_name_the_key(path, value, names):
    params = default_params()
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ParamsError) as error:
        validate_params(params)
    assert names in str(error.value)


def test_cli_stops_before_work_on_bad_params(tmp_path):
    params = default_params()
    params["train"] = {"steps": 0}
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    out = tmp_path / "ref.json"
    result = subprocess.run(
        [sys.executable, "-m", "vqnqs", "reference", "--params", str(bad), "--run", "tfim_16", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "train.steps" in result.stderr
    assert not out.exists()


def test_snakemake_validates_with_the_same_schema():
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    params = default_params()
    validate(params, str(REPO_ROOT / SCHEMA_FILE))
    params["distill"]["steps"] = "ten"
    with pytest.raises(WorkflowError, match="steps"):
        validate(params, str(REPO_ROOT / SCHEMA_FILE))
