"""Config checks made while Snakemake parses the workflow: finite numbers, a plot script per figure, plot hints
that name known conditions. Each Snakemake test is a dry run in its own working directory (seconds).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from test_workflow import SNAKEMAKE, base_config, fig2_block, smk, write_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))

import grids  # noqa: E402

pytestmark = pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed")


@pytest.fixture
def workdir(tmp_path) -> Path:
    path = tmp_path / "wf"
    path.mkdir()
    return path


def refused(workdir: Path, cfg: dict, *args: str) -> str:
    """Dry-run `all` with this config; it must stop before planning a job. Returns the output."""
    write_config(workdir, cfg)
    result = smk(workdir, "--dry-run", "all", *args)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-3000:]
    assert "Job stats" not in out and not (workdir / "results").exists(), out[-3000:]
    return out


def line_with(out: str, text: str) -> str:
    lines = [line for line in out.splitlines() if text in line]
    assert lines, out[-3000:]
    return lines[0]


# --------------------------------------------------------------------------------------------------
# A. Every number is finite (NaN and infinity refused, from a config file or from --config)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config, key, allowed", [
    ("batch={runtime_margin: nan}", "config.batch.runtime_margin", ">= 1"),
    ("batch={runtime_margin: inf}", "config.batch.runtime_margin", ">= 1"),
    ("batch={runtime_margin: .nan}", "config.batch.runtime_margin", ">= 1"),
    ("batch={max_tflop: nan}", "config.batch.max_tflop", "> 0"),
    ("batch={gflops: -.inf}", "config.batch.gflops", "> 0"),
    ("bootstrap={resamples: 10, ci: nan, seed: 0}", "config.bootstrap.ci", "> 0 and < 1"),
])
def test_non_finite_numbers_on_the_command_line_are_refused(workdir, config, key, allowed):
    out = refused(workdir, base_config(Path("data"), {"fig2": fig2_block()}), "--config", config)
    line = line_with(out, key)
    assert "not a finite number" in line and allowed in line, line
    assert "ValueError" not in out and "OverflowError" not in out and "Traceback" not in out


@pytest.mark.parametrize("change, key", [
    (lambda c: c.setdefault("batch", {}).update(memory_mb=float("inf")), "config.batch.memory_mb"),
    (lambda c: c["bootstrap"].update(ci=float("nan")), "config.bootstrap.ci"),
    (lambda c: c["figures"]["fig2"]["panels"][0]["flags"].update(student_lr=float("nan")),
     "config.figures.fig2.panels[0].flags.student_lr"),
    (lambda c: c["figures"]["fig2"]["panels"][0]["grid"].update(m=[3, float("inf")]),
     "config.figures.fig2.panels[0].grid.m[1]"),
    (lambda c: c["figures"]["fig2"]["panels"][0]["flags"].update(
        perturb_spec={"target": "student", "std": float("nan")}),
     "config.figures.fig2.panels[0].flags.perturb_spec.std"),
])
def test_non_finite_numbers_in_a_config_file_are_refused(workdir, change, key):
    cfg = base_config(Path("data"), {"fig2": fig2_block()})
    change(cfg)
    assert any(s in yaml.safe_dump(cfg) for s in (".nan", ".inf"))  # how YAML writes them
    line = line_with(refused(workdir, cfg), key)
    assert "not a finite number" in line, line


def test_every_number_in_the_schema_is_bounded_or_free_text():
    """A number the schema allows has a lower bound unless any finite value makes sense (a grid value)."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())

    def numbers(node, where):
        if isinstance(node, dict):
            if node.get("type") == "number":
                yield where, node
            for key, sub in node.items():
                yield from numbers(sub, f"{where}/{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                yield from numbers(sub, f"{where}/{i}")

    free = {"#/$defs/number_or_template", "#/$defs/scalar", "#/$defs/values"}  # any finite value
    for where, node in numbers(schema, "#"):
        if not any(where.startswith(f) for f in free):
            assert {"minimum", "exclusiveMinimum"} & set(node), where


# --------------------------------------------------------------------------------------------------
# A2. Every grid value and flag passes the runner's own type check of a run's settings, when the workflow
#     is read (not inside a batch job); a YAML mistake is named by its line
# --------------------------------------------------------------------------------------------------


def grid(**values):
    return lambda c: c["figures"]["fig2"]["panels"][0]["grid"].update(values)


def default(**values):
    return lambda c: c["defaults"].update(values)


@pytest.mark.parametrize("change, message", [
    (grid(m=[3.5]), "figure fig2, panel init, point m-3.5_student_init-same: setting m: invalid value 3.5; "
                    "expected an integer"),
    (grid(m=["ten"]), "figure fig2, panel init, point m-ten_student_init-same: setting m: invalid value 'ten'; "
                      "expected an integer"),
    (default(noise_steps="five"), "setting noise_steps: invalid value 'five'; expected an integer"),
    (default(student_lr="fast"), "setting student_lr: invalid value 'fast'; expected a number"),
    (grid(normalize_noise=["maybe"]), "setting normalize_noise: invalid value 'maybe'; allowed: true"),
])
def test_a_grid_value_or_flag_of_the_wrong_type_is_refused_naming_its_key(workdir, change, message):
    cfg = base_config(Path("data"), {"fig2": fig2_block()})
    change(cfg)
    out = refused(workdir, cfg)
    line = line_with(out, message)
    assert line.startswith("config: figure fig2, panel init, point"), line
    assert "not supported between" not in out and "Traceback" not in out


def test_the_workflow_and_the_runners_sheets_refuse_a_value_with_the_same_words():
    from sublearn.config import config_from_flags, config_from_settings
    from sublearn.errors import UsageError

    with pytest.raises(UsageError) as from_config:
        config_from_flags({"m": 3.5})
    with pytest.raises(UsageError) as from_sheet:
        config_from_settings({"m": 3.5}, "sheet line 1")
    assert str(from_sheet.value) == f"sheet line 1: {from_config.value}"


def test_a_number_written_as_text_is_read_as_the_command_line_reads_it():
    """A filled-in template ({d}) or a quoted number is text, as on the command line: same run, same key."""
    from sublearn.config import config_from_flags
    from sublearn.plan import resolve

    text = resolve(config_from_flags({"m": "10", "student_lr": "0.002", "normalize_noise": "false"}))
    typed = resolve(config_from_flags({"m": 10, "student_lr": 0.002, "normalize_noise": False}))
    assert text.run_key() == typed.run_key()


def test_a_yaml_mistake_in_the_config_file_is_named_by_its_line(workdir):
    write_config(workdir, base_config(Path("data"), {"fig2": fig2_block()}))
    path = workdir / "config" / "config.yaml"
    lines = path.read_text().splitlines()
    number = next(i for i, line in enumerate(lines) if line.startswith("  m: "))
    lines[number] = " " + lines[number]  # one space too many
    path.write_text("\n".join(lines) + "\n")
    result = smk(workdir, "--dry-run", "all")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    line = line_with(out, "config/config.yaml, line")
    assert f"config/config.yaml, line {number + 1}, column" in line and "indentation" in line, line


# --------------------------------------------------------------------------------------------------
# A3. Typos get an answer that says what was meant
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target, answer", [
    ("fgi2", "unknown target 'fgi2' (did you mean fig2?); targets: all, claims, fig2, or a file under results/"),
    ("clams", "unknown target 'clams' (did you mean claims?)"),
    ("prepare_dat", "(did you mean prepare_data?)"),
])
def test_a_mistyped_target_gets_the_valid_targets(workdir, target, answer):
    write_config(workdir, base_config(Path("data"), {"fig2": fig2_block()}))
    result = smk(workdir, "--dry-run", target)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert answer in line_with(out, "unknown target"), out[-3000:]
    assert "plan:" not in out and "No rule to produce" not in out


@pytest.mark.parametrize("config, answer", [
    ("seed=[0]", "config: unknown key 'seed' (did you mean 'seeds'?); allowed: results_dir,"),
    ("defaults={noise_step: 3}", "config.defaults: unknown key 'noise_step' (did you mean 'noise_steps'?)"),
    ("seeds=0", "config.seeds: 0 is not allowed here; expected a list of seeds, e.g. [0, 1, 2] (on the command "
                "line: --config 'seeds=[0,1,2]'), or {range: [0, 19]}"),
])
def test_a_mistyped_config_key_or_value_gets_the_expected_form(workdir, config, answer):
    out = refused(workdir, base_config(Path("data"), {"fig2": fig2_block()}), "--config", config)
    assert answer in line_with(out, answer[:20]), out[-3000:]


# --------------------------------------------------------------------------------------------------
# B. A figure needs its plot script
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("figures, message", [
    ({"fig2": fig2_block(), "fig7": fig2_block()}, "figure fig7: its plot script workflow/scripts/fig7.py"),
    ({"fig2": {**fig2_block(), "script": "nope.py"}}, "figure fig2: its plot script workflow/scripts/nope.py"),
])
def test_a_figure_without_its_plot_script_is_refused(workdir, figures, message):
    out = refused(workdir, base_config(Path("data"), figures))
    line = line_with(out, message)
    assert "does not exist" in line, line
    assert "FileNotFoundError" not in out and "Traceback" not in out


def test_a_new_figure_may_use_another_figures_script(workdir):
    cfg = base_config(Path("data"), {"fig9": {**fig2_block(), "script": "fig2.py"}, "fig3": None})
    write_config(workdir, cfg)
    result = smk(workdir, "--dry-run", "all")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


# --------------------------------------------------------------------------------------------------
# C. Display names (and colours) name known conditions
# --------------------------------------------------------------------------------------------------


def spec_of(panel: dict) -> dict:
    cfg = {"seeds": [0], "bootstrap": {"resamples": 10, "ci": 0.95, "seed": 0},
           "figures": {"figX": {"panels": [panel]}}}
    return grids.figure_spec(cfg, "figX")


def init_panel(**plot) -> dict:
    return copy.deepcopy({"name": "init", "grid": {"m": [3, 10], "student_init": {"labels": {
        "same": "A,A,A,A", "rand_fc1": "random,A,A,A"}}}, "plot": {"x": "m", "hue": "student_init", **plot}})


def test_a_typo_in_plot_names_is_refused_naming_the_known_conditions():
    spec_of(init_panel(names={"same": "all A", "rand_fc1": "fc1 random"}))  # known names: fine
    with pytest.raises(grids.GridError) as error:
        spec_of(init_panel(names={"same": "all A", "rand_fc": "fc1 random"}))
    message = str(error.value)
    assert "figure figX, panel init" in message and "'rand_fc'" in message
    assert "same, rand_fc1" in message  # the known ones


def test_plot_names_of_a_points_plot_may_name_its_x_categories_and_numeric_hue_values():
    depth = {"name": "depth", "grid": {"depth": {"labels": {"minus_one": "256", "plus_one": "256,256,256"}},
                                       "m": [10, 50]},
             "plot": {"kind": "points", "x": "depth", "hue": "m", "names": {"minus_one": "MLP 256", 10: "m ten"}}}
    spec_of(depth)
    depth["plot"]["names"]["plus_two"] = "MLP 256 x 4"
    with pytest.raises(grids.GridError, match=r"'plus_two'.*known: minus_one, plus_one, 10, 50|"
                                              r"'plus_two'.*known: 10, 50, minus_one, plus_one"):
        spec_of(depth)


def test_a_typo_in_plot_names_stops_the_workflow_before_planning(workdir):
    block = fig2_block()
    block["panels"][0]["plot"]["names"] = {"same": "all A", "rand_hiden": "fc1, fc2 random"}
    line = line_with(refused(workdir, base_config(Path("data"), {"fig2": block})), "'rand_hiden'")
    assert "figure fig2, panel init" in line and "rand_hidden" in line, line


def test_plot_colours_are_validated():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for name in ("config.yaml", "quick.yaml"):
        cfg = yaml.safe_load((REPO / "config" / name).read_text())
        assert not list(validator.iter_errors(cfg)), name
        bad = copy.deepcopy(cfg)
        bad["figures"]["fig2"]["panels"][0]["plot"]["colors"]["same"] = "blackish"
        assert list(validator.iter_errors(bad)), name
    spec_of(init_panel(colors={"same": "#000000"}))
    with pytest.raises(grids.GridError, match="'rand_fc2'.*known: same, rand_fc1"):
        spec_of(init_panel(colors={"rand_fc2": "#000000"}))
    with pytest.raises(grids.GridError, match="plot color"):  # one colour: for a panel that is one condition
        spec_of(init_panel(color="#000000"))
