"""One declaration per knob: the committed schema is the generated one, and a value gets the same verdict
in a params file (schema + section configs) as on the command line (``--set``, the config dataclass)."""

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from vqnqs.config import ParamsError, load_yaml, validate_params
from vqnqs.knobs import dotted, knob_of, section_of
from vqnqs.schema import SCHEMA_FILE, schema_text
from vqnqs.stages.config import STAGE_CONFIGS, DistillConfig, FinetuneConfig, TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_committed_schema_is_the_generated_one():
    assert (REPO_ROOT / SCHEMA_FILE).read_text() == schema_text(), "regenerate it: python -m vqnqs.schema"


def candidates(cls: type, name: str) -> list[str]:
    """YAML texts around every constraint of a field: its bounds, its type, null, other types, its choices."""
    spec = knob_of(cls, name)
    texts = ["null", "true", "false", "'text'", "[1, 2]", "{a: 1}", ".nan", ".inf", "0", "1", "-1", "2", "2.5"]
    texts += ["1e-3", "'1e-3'", "1.0", "0.0", "-0.5", "0.9", "1e3", "'5'"]
    for bound in (spec.minimum, spec.exclusive_minimum, spec.maximum, spec.exclusive_maximum):
        if bound is not None:
            for value in (bound - 1, bound - 0.5, bound, bound + 0.5, bound + 1):
                texts += [repr(float(value)), str(int(value))]
    for choice in spec.choices or ():
        texts += [yaml.safe_dump(choice).strip().removesuffix("..."), f"'{choice}x'"]
    if spec.schema is not None:
        texts += ["auto", "cpu", "cuda", "both", "[cpu]", "[cpu, cuda]", "[tpu]", "[]"]
    return list(dict.fromkeys(texts))


def verdict(check) -> bool:
    try:
        check()
    except (ValueError, ParamsError):
        return False
    return True


# Settings that let each knob be judged on its own (not by a check involving another field).
CONTEXT = {
    TrainConfig: {"steps": 100},
    DistillConfig: {"steps": 100, "warmup_steps": 0},
    FinetuneConfig: {"steps": 100},
}


def knob_paths(cls: type, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], type]]:
    """``(path, class declaring it)`` of every knob of ``cls``, a nested section's by its path (finetune.steps)."""
    paths = []
    for field in dataclasses.fields(cls):
        nested = section_of(cls, field.name)
        paths += knob_paths(nested, (*prefix, field.name)) if nested else [((*prefix, field.name), cls)]
    return paths


def settings_for(cls: type, path: tuple[str, ...], value) -> tuple[dict, dict]:
    """``(params mapping, --set mapping)`` giving the knob at ``path`` ``value``, each level of the path with its
    CONTEXT (dropped at the knob's own level where the knob is part of it); --set dots the nested keys."""
    classes = [cls]
    for name in path[:-1]:
        classes.append(section_of(classes[-1], name))
    contexts = [dict(CONTEXT.get(klass, {})) for klass in classes]
    if path[-1] in contexts[-1]:
        contexts[-1] = {}
    context = contexts[-1]
    for name, outer in zip(reversed(path[:-1]), reversed(contexts[:-1]), strict=True):
        context = {**outer, name: context}
    in_params = copy.deepcopy(context)
    node = in_params
    for name in path[:-1]:
        node = node[name]
    node[path[-1]] = value
    return in_params, {**dotted(context), ".".join(path): value}


@pytest.mark.parametrize("cls", STAGE_CONFIGS, ids=lambda c: c.__name__)
def test_every_knob_gets_the_same_verdict_in_params_and_on_the_command_line(cls):
    params = load_yaml((REPO_ROOT / "params.yaml").read_text())
    paths = knob_paths(cls)
    checked = 0
    for path, owner in paths:
        for text in candidates(owner, path[-1]):
            value = load_yaml(text)  # as a params file and --set read it
            in_section, on_command_line = settings_for(cls, path, value)
            document = copy.deepcopy(params)
            document[cls.section] = in_section
            document["train_vq_runs"] = []  # their bits are judged against d_model: a check of two fields
            in_params = verdict(lambda document=document: validate_params(document))
            on_cli = verdict(lambda given=on_command_line: cls.from_mapping(given))
            where = f"{cls.section}.{'.'.join(path)}"
            assert in_params == on_cli, f"{where}: {text!r} params {in_params}, --set {on_cli}"
            checked += 1
    assert checked > 20 * len(paths)


def test_nested_sections_are_walked():
    assert (("finetune", "steps"), FinetuneConfig) in knob_paths(DistillConfig)


def test_lr_final_zero_is_one_verdict():
    params = load_yaml((REPO_ROOT / "params.yaml").read_text())
    params["train"] = {"lr_final": 0}
    validate_params(params)
    assert TrainConfig.from_mapping({"lr_final": 0}).lr_final == 0.0
    params["train"] = {"lr_final": 0, "schedule": "exponential"}
    with pytest.raises(ParamsError, match="lr_final"):
        validate_params(params)
    with pytest.raises(ValueError, match="lr_final"):
        TrainConfig.from_mapping({"lr_final": 0, "schedule": "exponential"})


def test_yaml_exponents_are_numbers_everywhere():
    assert load_yaml("lr: 1e-3") == {"lr": 1e-3}
    params = load_yaml((REPO_ROOT / "params.yaml").read_text())
    params["train"] = load_yaml("{lr: 1e-3, diag_shift: 5E-4}")
    assert validate_params(params)["train"] == {"lr": 1e-3, "diag_shift": 5e-4}
