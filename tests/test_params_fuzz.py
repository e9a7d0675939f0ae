"""Params files with one field corrupted: one ParamsError naming the place, never another exception; and
Snakemake refuses the same files with the same message before any job."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_knobs import knob_paths
from vqnqs.config import ParamsError, load_yaml, validate_params
from vqnqs.stages.config import STAGE_CONFIGS

REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_yaml((REPO_ROOT / "params.yaml").read_text())
FIELDS = [(config.section, *path) for config in STAGE_CONFIGS for path, _ in knob_paths(config)]  # finetune.steps too
PLACES = [("systems", "heisenberg_4x4", "system"), ("systems", "tfim_16", "gamma"), ("systems", "tfim_16", "size"),
          ("bits",), ("experiment",), ("reference", "literature_key")]  # fmt: skip
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(min_value=-3, max_value=70), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), place=st.sampled_from(PLACES), value=JUNK, in_section=st.booleans())
def test_one_corrupted_field_is_a_params_error_or_accepted(field, place, value, in_section):
    params = copy.deepcopy(PARAMS)
    if in_section:
        *sections, name = field
        node = params
        for section in sections:
            node[section] = {}
            node = node[section]
        node[name] = value
    else:
        node = params
        for key in place[:-1]:
            node = node[key]
        node[place[-1]] = value
    try:
        validate_params(params, "fuzz.yaml")
    except ParamsError as err:
        message = str(err)
        assert message.startswith("fuzz.yaml: ") and "\n" not in message.strip()


@pytest.mark.parametrize(
    "content, names",
    [
        ("{gamma}", "tfim_16.gamma"),
        ("{bits}", "bits 7"),
        ("", "expected a mapping"),
        ("experiment: a\nexperiment: b\n", "duplicate key 'experiment'"),
        ("{steps}", "train.steps"),
    ],
)
def test_snakemake_refuses_what_the_cli_refuses(tmp_path, content, names):
    params = copy.deepcopy(PARAMS)
    if content == "{gamma}":
        params["systems"]["tfim_16"]["gamma"] = float("nan")
    elif content == "{bits}":
        params["bits"] = [6, 7]
    elif content == "{steps}":
        params["train"] = {"steps": 0}
    text = yaml.safe_dump(params) if content.startswith("{") else content
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "bad.yaml").write_text(text)
    snakemake = Path(sys.executable).parent / "snakemake"
    result = subprocess.run(
        [
            str(snakemake),
            "-n",
            "--cores",
            "1",
            "--snakefile",
            str(REPO_ROOT / "workflow/Snakefile"),
            "--config",
            "profile=bad",
        ],  # fmt: skip
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert names in result.stdout + result.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_a_run_section_that_clashes_with_the_global_one_is_a_params_error():
    """Each valid alone, merged they are not (warmup_steps >= the run's steps): refused naming both places (found
    by the fuzz above: it was a bare ValueError)."""
    params = copy.deepcopy(PARAMS)
    run = next(key for key, entry in params["systems"].items() if "steps" in (entry.get("distill") or {}))
    params["distill"] = {"warmup_steps": params["systems"][run]["distill"]["steps"]}
    with pytest.raises(ParamsError, match=rf"^fuzz.yaml: systems.{run}.distill over distill: warmup_steps"):
        validate_params(params, "fuzz.yaml")
