"""Workflow defaults written once: the schema's defaults equal config/config.yaml's (or say why not), the
rules' resources come from the config (filled from the schema's defaults), the config checks are a plain
linted module, and case-insensitive settings read the same from the config as from the command line.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
sys.path.insert(0, str(REPO / "workflow" / "scripts"))

import jobs  # noqa: E402

# keys whose schema default differs from config.yaml's on purpose; the schema's description says why
DIFFERENT_ON_PURPOSE = {"batch.fill_cores"}


def _resolve(node: dict, root: dict) -> dict:
    """A schema node with its $ref's properties merged under its own (2020-12: siblings of $ref apply)."""
    node = dict(node)
    while "$ref" in node:
        target = root["$defs"][node.pop("$ref").rsplit("/", 1)[1]]
        properties = {**target.get("properties", {})}
        for key, sub in node.get("properties", {}).items():
            properties[key] = {**properties.get(key, {}), **sub}
        node = {**target, **node, "properties": properties}
    return node


def schema_defaults(node: dict, root: dict, where: str = "") -> dict[str, tuple[object, str]]:
    """{dotted key: (default, description)} for every property of the schema that declares a default."""
    out = {}
    for key, sub in _resolve(node, root).get("properties", {}).items():
        sub = _resolve(sub, root)
        name = f"{where}{key}"
        if "default" in sub:
            out[name] = (sub["default"], " ".join(str(sub.get("description", "")).split()))
        out.update(schema_defaults(sub, root, f"{name}."))
    return out


def leaves(value, where: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in leaves(item, f"{where}{key}.").items()}
    return {where.rstrip("."): value}


@pytest.fixture(scope="module")
def schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


@pytest.fixture(scope="module")
def paper_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_schema_defaults_equal_config_yaml_or_say_why(schema, paper_config):
    defaults = schema_defaults(schema, schema)
    written = leaves(paper_config)
    compared = [key for key, (default, _) in defaults.items() if key in written and not isinstance(default, dict)]
    assert "resources.student.runtime" in compared and "batch.max_tflop" in compared, compared
    differ = {key for key in compared if written[key] != defaults[key][0]}
    assert differ == DIFFERENT_ON_PURPOSE, {k: (written[k], defaults[k][0]) for k in differ}
    for key in differ:
        assert "on purpose" in defaults[key][1], f"{key}: the schema's description must say why it differs"


def test_every_resource_and_batch_value_of_config_yaml_has_a_schema_default(schema, paper_config):
    defaults = schema_defaults(schema, schema)
    for block in ("resources", "batch"):
        missing = [k for k in leaves(paper_config[block], f"{block}.") if k not in defaults]
        assert not missing, f"config.yaml sets {missing} without a default in {SCHEMA.name}"


def test_a_config_without_resources_gets_the_schema_defaults_through_snakemakes_validation(paper_config):
    from snakemake.utils import validate

    cfg = copy.deepcopy(paper_config)
    cfg["resources"] = {kind: {} for kind in cfg["resources"]}
    cfg["resources"]["merge"] = {"mem_mb": 123}
    del cfg["batch"]
    validate(cfg, str(SCHEMA))
    for kind in ("data", "teacher", "student", "plot"):
        assert jobs.rule_resources(cfg, kind) == paper_config["resources"][kind], kind
    merge_runtime = paper_config["resources"]["merge"]["runtime"]
    assert jobs.rule_resources(cfg, "merge") == {"mem_mb": 123, "runtime": merge_runtime}
    assert cfg["batch"]["max_tflop"] == paper_config["batch"]["max_tflop"]
    assert jobs.job_runtime(0, "student", cfg) == paper_config["resources"]["student"]["runtime"]


def test_no_rule_or_script_writes_a_resource_default_of_its_own():
    sites = []
    for path in [*(REPO / "workflow" / "rules").glob("*.smk"), *(REPO / "workflow" / "scripts").glob("*.py")]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(mem_mb|runtime)\W+\s*[:=]?\s*\d{2,}|\.get\(\"(mem_mb|runtime)\"", line):
                sites.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not sites, "\n".join(sites)


def test_the_config_checks_are_a_linted_module_not_workflow_code():
    rules = (REPO / "workflow" / "rules" / "validate.smk").read_text()
    assert not re.search(r"^\s*def ", rules, re.M), "validate.smk defines functions: move them to config_validation.py"
    assert "import config_validation" in rules
    pyproject = (REPO / "pyproject.toml").read_text()
    excluded = re.search(r"extend-exclude = \[(.*)\]", pyproject)[1]
    assert "workflow/scripts" not in excluded


def test_a_case_insensitive_setting_reads_the_same_from_the_config_as_from_the_command_line():
    from sublearn.cli import resolve_argv
    from sublearn.config import CASE_INSENSITIVE_SETTINGS, config_from_flags
    from sublearn.plan import resolve

    flags = {"noise_dist": "Perlin", "dataset": "MNIST", "teacher_type": "MLP", "student_type": "Mlp"}
    assert set(flags) == set(CASE_INSENSITIVE_SETTINGS)
    from_config = resolve(config_from_flags(flags))
    argv = [f"--{key.replace('_', '-')}={value}" for key, value in flags.items()]
    from_cli = resolve_argv(argv)
    assert from_config.config.noise_dist == from_cli.config.noise_dist == "perlin"
    assert from_config.run_key() == from_cli.run_key() == resolve(config_from_flags(
        {k: v.lower() for k, v in flags.items()})).run_key()
