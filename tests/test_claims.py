"""The claims scorecard: each test kind on small hand-made tables whose verdict is known (holds, fails and
the borderline between them), the claims file's schema, partial results, too few seeds, synthetic data,
the scorecard files, and the rule through Snakemake on hand-made tables (no runs computed).

Constant accuracies over the seeds give a bootstrap interval of exactly [v, v], which puts a point on
either side of a test's boundary to the last digit.
"""

import copy
import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow" / "scripts"
sys.path.insert(0, str(SCRIPTS))

import claims  # noqa: E402
import grids  # noqa: E402
import plotting  # noqa: E402

INITS = {"same": "A,A,A,A", "rand_hidden": "random,random,A,A", "rand_aux_head": "A,A,A,random",
         "rand_class_head": "A,A,random,A"}
TEACHER, CHANCE = 0.9, 0.1


def fig2_config(m=(3, 10, 100), seeds=(0, 1, 2, 3, 4)) -> dict:
    return {"seeds": list(seeds), "bootstrap": {"resamples": 300, "ci": 0.95, "seed": 0},
            "figures": {"fig2": {"title": "test", "panels": [{
                "name": "init", "flags": {"teacher_init": "A,A,A,A"},
                "grid": {"m": list(m), "student_init": {"labels": dict(INITS)}},
                "plot": {"x": "m", "hue": "student_init"}}]}}}


def fig2(values: dict, synthetic=()) -> tuple[pd.DataFrame, dict]:
    """A fig2 table and spec: (init, m) -> student accuracy per seed (a list), or one value for every seed."""
    lists = [len(v) for v in values.values() if isinstance(v, list)]
    cfg = fig2_config(m=sorted({m for _, m in values}), seeds=range(max(lists, default=5)))
    spec = grids.figure_spec(cfg, "fig2", lambda panel: list(synthetic))
    rows = []
    for (init, m), accs in values.items():
        accs = accs if isinstance(accs, list) else [accs] * len(spec["seeds"])
        for seed, acc in enumerate(accs):
            rows.append({"figure": "fig2", "panel": "init", "point": f"m-{m}_student_init-{init}", "m": m,
                         "student_init": init, "seed": seed, "student_final_acc": acc, "teacher_final_acc": TEACHER,
                         "num_classes": 10, "dataset": "mnist", "noise_steps": 60, "noise_bsize": 1000})
    return pd.DataFrame(rows), spec


def claim(test: str, condition="rand_hidden", **extra) -> dict:
    return {"id": "c1", "source": "test", "statement": "test", "figure": "fig2", "panel": "init",
            "condition": {"student_init": condition}, "x": "m", "test": test, **extra}


def verdict(test, values, condition="rand_hidden", min_seeds=3, **extra) -> dict:
    table, spec = fig2(values)
    return claims.evaluate(claim(test, condition, **extra), table, spec, min_seeds)


def spread(centre, width=0.02, n=8):
    """n seeds evenly around a centre: an interval that contains the centre."""
    return list(np.linspace(centre - width, centre + width, n))


# --------------------------------------------------------------------------------------------------
# The tests, each on both sides of its boundary
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values, expected", [
    ({("rand_hidden", 3): 0.6, ("rand_hidden", 10): 0.7}, "holds"),
    ({("rand_hidden", 3): spread(CHANCE), ("rand_hidden", 10): 0.7}, "fails"),
    ({("rand_hidden", 3): CHANCE, ("rand_hidden", 10): 0.7}, "fails"),           # lower bound = chance
    ({("rand_hidden", 3): CHANCE + 1e-6, ("rand_hidden", 10): 0.7}, "holds"),    # just above
    ({("rand_hidden", 3): spread(0.13), ("rand_hidden", 10): spread(0.13)}, "holds"),
])
def test_above_chance(values, expected):
    record = verdict("above_chance", values)
    assert record["verdict"] == expected, record
    if expected == "fails":
        assert record["x"] == "3" and "fails at m = 3" in record["reason"]  # the decisive point is reported


@pytest.mark.parametrize("values, margin, expected", [
    ({("rand_class_head", 3): spread(CHANCE), ("rand_class_head", 10): spread(CHANCE)}, 0.0, "holds"),
    ({("rand_class_head", 3): spread(0.5), ("rand_class_head", 10): spread(CHANCE)}, 0.05, "fails"),
    ({("rand_class_head", 3): 0.14, ("rand_class_head", 10): CHANCE}, 0.05, "holds"),      # band: 0.05 x 0.8
    ({("rand_class_head", 3): 0.1401, ("rand_class_head", 10): CHANCE}, 0.05, "fails"),    # just outside
    ({("rand_class_head", 3): 0.14, ("rand_class_head", 10): CHANCE}, 0.0, "fails"),       # no margin
    ({("rand_class_head", 3): 0.06, ("rand_class_head", 10): CHANCE}, 0.05, "holds"),      # below chance too
])
def test_at_chance(values, margin, expected):
    record = verdict("at_chance", values, condition="rand_class_head", margin=margin)
    assert record["verdict"] == expected, record


@pytest.mark.parametrize("aux, same, expected", [
    (spread(0.3), spread(0.85), "holds"),
    (spread(0.8), spread(0.8), "fails"),
    (0.5, 0.5, "fails"),            # intervals touch
    (0.5, 0.5001, "holds"),         # intervals apart by a hair
    (0.6, 0.4, "fails"),            # above, not below
])
def test_below(aux, same, expected):
    values = {("rand_aux_head", 3): 0.2, ("rand_aux_head", 10): aux, ("same", 3): 0.8, ("same", 10): same}
    record = verdict("below", values, condition="rand_aux_head", than={"student_init": "same"})
    assert record["verdict"] == expected, record
    assert record["reference"].startswith("student_init = same: ")
    if expected == "fails":
        assert record["x"] == "10" and "m = 10" in record["reason"]


def test_below_without_the_compared_condition_is_not_evaluated():
    record = verdict("below", {("rand_aux_head", 3): 0.2}, condition="rand_aux_head", than={"student_init": "same"})
    assert record["verdict"] == "not evaluated" and "student_init = same" in record["reason"]


@pytest.mark.parametrize("curve, expected", [
    (lambda i, seed: 0.2 + 0.1 * i + 0.01 * seed, "holds"),
    (lambda i, seed: 0.8 - 0.1 * i + 0.01 * seed, "fails"),
    (lambda i, seed: 0.5, "fails"),                                   # flat: correlation 0, interval [0, 0]
    (lambda i, seed: 0.5 + 0.2 * ((i * 7 + seed * 3) % 5 - 2) / 2, "fails"),   # noise without a trend
])
def test_increasing(curve, expected):
    values = {("same", m): [curve(i, seed) for seed in range(6)] for i, m in enumerate((1, 3, 10, 30, 100))}
    record = verdict("increasing", values, condition="same")
    assert record["verdict"] == expected, record
    assert -1 <= record["value"] <= 1 and record["x"] == "1 .. 100"
    if expected == "holds":
        assert record["value"] == pytest.approx(1.0) and record["ci_low"] > 0


def test_increasing_needs_three_values_of_x():
    record = verdict("increasing", {("same", 3): 0.5, ("same", 10): 0.6}, condition="same")
    assert record["verdict"] == "not evaluated" and "at least 3 values" in record["reason"]


def test_rank_correlation():
    assert claims.rank_correlation([1, 2, 3], [0.1, 0.2, 0.3])[0] == pytest.approx(1)
    assert claims.rank_correlation([1, 2, 3], [0.3, 0.2, 0.1])[0] == pytest.approx(-1)
    assert claims.rank_correlation([1, 2, 3], [0.5, 0.5, 0.5])[0] == 0  # undefined: no trend
    assert claims.rank_correlation([1, 2, 3, 4], [[1, 3, 2, 4], [4, 3, 2, 1]]).tolist() == pytest.approx([0.8, -1])


@pytest.mark.parametrize("student, expected", [
    (0.88, "holds"),
    (0.8201, "holds"),      # the threshold is 0.9 - 0.1 x (0.9 - 0.1) = 0.82
    (0.8199, "fails"),
    (0.5, "fails"),
])
def test_near_teacher_at_the_largest_x(student, expected):
    values = {("same", 3): 0.3, ("same", 10): 0.5, ("same", 100): student}  # only m = 100 is tested
    record = verdict("near_teacher", values, condition="same", f=0.1, at="max")
    assert record["verdict"] == expected, record
    assert record["x"] == "100" and "threshold 0.820" in record["reference"]


def test_at_every_x_also_tests_the_small_ones():
    values = {("same", 3): 0.3, ("same", 100): 0.88}
    assert verdict("near_teacher", values, condition="same", f=0.1)["verdict"] == "fails"
    assert verdict("near_teacher", values, condition="same", f=0.1, at=[100])["verdict"] == "holds"


# --------------------------------------------------------------------------------------------------
# Seeds, partial results, synthetic data, the plot's intervals
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seeds, said", [(1, "no interval"), (2, "the interval alone would say: holds")])
def test_too_few_seeds_say_so(seeds, said):
    values = {("rand_hidden", 3): [0.6 + 0.01 * s for s in range(seeds)]}
    record = verdict("above_chance", values)
    assert record["verdict"] == "not enough seeds" and record["n_seeds"] == seeds
    assert record["reason"] == f"{seeds} seeds, fewer than min_seeds 3 ({said})"
    assert verdict("above_chance", {("rand_hidden", 3): [0.6, 0.61]}, min_seeds=2)["verdict"] == "holds"


def test_claims_of_figures_not_built_are_not_evaluated():
    table, spec = fig2({("same", 3): 0.8, ("rand_hidden", 3): 0.6})
    file = {"min_seeds": 3, "claims": [
        claim("above_chance"),
        {**claim("above_chance"), "id": "c2", "figure": "fig3", "panel": "depth", "condition": {"depth": "plus_one"}},
        {**claim("above_chance"), "id": "c3", "panel": "other"},
        {**claim("above_chance"), "id": "c4", "condition": {"student_init": "rand_fc1"}},
        {**claim("above_chance"), "id": "c5", "condition": {"depth": "plus_one"}},
    ]}
    scores = claims.evaluate_all(file, {"fig2": table}, {"fig2": spec})
    assert list(scores.columns) == claims.COLUMNS
    assert scores["verdict"].tolist() == ["holds"] + ["not evaluated"] * 4
    assert scores["reason"].tolist()[1:] == [
        "fig3 is not configured (no table)", "fig2 has no panel other",
        "fig2 panel init has no runs with student_init = rand_fc1", "fig2 has no coordinate depth"]


def test_synthetic_data_is_marked():
    table, spec = fig2({("rand_hidden", 3): 0.6}, synthetic=["MNIST"])
    record = claims.evaluate(claim("above_chance"), table, spec)
    assert record["verdict"] == "holds" and record["data"] == "synthetic MNIST"
    assert "not about the real dataset" in record["reason"]
    scores = pd.DataFrame([record], columns=claims.COLUMNS)
    assert any("SYNTHETIC MNIST" in line for line in claims.headline(scores, {"fig2": spec}, 3))
    real, spec = fig2({("rand_hidden", 3): 0.6})
    assert claims.evaluate(claim("above_chance"), real, spec)["data"] == "MNIST"


def test_a_claim_point_has_the_plotted_interval():
    rng = np.random.default_rng(1)
    table, spec = fig2({(init, m): list(rng.uniform(0.2, 0.9, 7)) for init in INITS for m in (3, 10, 100)})
    summary = plotting.summarise(spec, table)
    record = claims.evaluate(claim("above_chance", at=[10]), table, spec)
    plotted = summary[(summary["metric"] == "acc") & (summary["hue"] == "rand_hidden")
                      & (summary["x"].map(str) == "10")].iloc[0]
    assert (record["value"], record["ci_low"], record["ci_high"]) == (
        plotted["mean"], plotted["ci_low"], plotted["ci_high"])


# --------------------------------------------------------------------------------------------------
# The claims file
# --------------------------------------------------------------------------------------------------


def test_the_repository_claims_read_what_the_paper_config_computes():
    """Every claim names a figure, panel, condition values and x of config/config.yaml (so that none is
    'not evaluated' on the paper's grids), and of the quick preset."""
    file = claims.load_claims(REPO / "config" / "claims.yaml")
    assert file["min_seeds"] == 3 and {c["id"] for c in file["claims"]} >= {"1a", "2a", "2b", "2c", "3a", "3b", "4"}
    for name in ("config.yaml", "quick.yaml"):
        cfg = yaml.safe_load((REPO / "config" / name).read_text())
        for c in file["claims"]:
            spec = grids.figure_spec(cfg, c["figure"])
            panel = next(p for p in spec["panels"] if p["name"] == c["panel"])
            x = c["x"] if "x" in c else grids.plot_axes(panel)[0]
            assert x in panel["grid"] or x in grids.DERIVED, (name, c["id"])
            for key, value in {**c.get("condition", {}), **c.get("than", {})}.items():
                assert value in panel["grid"][key]["values"], (name, c["id"], key)


def by_id(file: dict, name: str) -> dict:
    return next(c for c in file["claims"] if c["id"] == name)


@pytest.mark.parametrize("change, message", [
    (lambda f: by_id(f, "1a").update(test="belwo"), "claim 1a (claims[0]), key test: 'belwo' is not one of"),
    (lambda f: by_id(f, "1b").update(tset=1), "claim 1b (claims[1]): unknown key ('tset' was unexpected)"),
    (lambda f: by_id(f, "3a").pop("than"), "claim 3a (claims[6]): 'than' is a required property"),
    (lambda f: by_id(f, "1a").update(margin=0.1), "claim 1a (claims[0]): key 'margin' does not apply to test"),
    (lambda f: by_id(f, "4").update(f=1.5), "claim 4 (claims[8]), key f: 1.5 is greater than or equal to"),
    (lambda f: by_id(f, "1b").update(id="1a"), "claim 1a: the id is used twice"),
    (lambda f: f.update(min_seeds=1), "min_seeds: 1 is less than the minimum of 2"),
    (lambda f: by_id(f, "1a").pop("source"), "claim 1a (claims[0]): 'source' is a required property"),
    (lambda f: by_id(f, "2a").update(condition={"depth": {"a": 1}}), "claim 2a (claims[3]), key condition.depth:"),
])
def test_a_bad_claims_file_is_refused_in_one_line(tmp_path, change, message):
    good = yaml.safe_load((REPO / "config" / "claims.yaml").read_text())
    bad = copy.deepcopy(good)
    change(bad)
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(claims.ClaimsError) as error:
        claims.load_claims(path)
    text = str(error.value)
    assert "\n" not in text and text.startswith(f"{path}: ") and message in text, text


# --------------------------------------------------------------------------------------------------
# The scorecard files
# --------------------------------------------------------------------------------------------------


def test_the_job_writes_the_scorecard(tmp_path):
    """The rule's script as Snakemake runs it (its snakemake object faked): CSV, standalone HTML linking
    each evaluated row to its figure, and the report caption, which renders (Jinja, then docutils) with a
    link to the figure's entry in the report when the report holds the figure."""
    table, spec = fig2({(init, m): spread(acc) for init, acc in
                        (("same", 0.85), ("rand_hidden", 0.6), ("rand_aux_head", 0.3), ("rand_class_head", 0.1))
                        for m in (3, 100)})
    table.to_csv(tmp_path / "fig2.csv", index=False)
    out = {k: str(tmp_path / f"claims.{k}") for k in ("csv", "html", "rst")}
    params = SimpleNamespace(specs=[spec], claims=claims.load_claims(REPO / "config" / "claims.yaml"))
    fake = SimpleNamespace(input=SimpleNamespace(tables=[str(tmp_path / "fig2.csv")]), params=params,
                           output=SimpleNamespace(**out), log=[str(tmp_path / "claims.log")])
    runpy.run_path(str(SCRIPTS / "scorecard.py"), init_globals={"snakemake": fake})
    scores = pd.read_csv(out["csv"], keep_default_na=False)
    verdicts = dict(zip(scores["claim"].astype(str), scores["verdict"], strict=True))
    assert verdicts == {"1a": "holds", "1b": "not evaluated", "1c": "not evaluated", "2a": "not evaluated",
                        "2b": "not evaluated", "2c": "not evaluated", "3a": "holds", "3b": "holds", "4": "holds",
                        "5a": "not evaluated", "5b": "not evaluated"}
    assert "claim 3a (fig2 init, below): holds" in Path(fake.log[0]).read_text()
    page = Path(out["html"]).read_text()
    assert page.count('<a href="figures/fig2.png">fig2</a>') == 6 and "figures/fig3.png" not in page

    import jinja2
    from docutils.core import publish_parts

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # as Snakemake renders captions
    text = Path(out["rst"]).read_text() + "\n.. _fig2.png: javascript:show('fig2')\n"
    rendered = env.from_string(text).render(files=[SimpleNamespace(target="fig2.png")])
    body = publish_parts(rendered, writer="html", settings_overrides={"report_level": 2})["body"]
    assert "System Message" not in body and body.count("javascript:show('fig2')") == 6
    assert "<strong>holds</strong>" in body and "fig3 is not configured" in body
    without = env.from_string(Path(out["rst"]).read_text()).render(files=[])
    assert "fig2.png" not in publish_parts(without, writer="html")["body"]


# --------------------------------------------------------------------------------------------------
# Through Snakemake (hand-made tables: no run is computed)
# --------------------------------------------------------------------------------------------------

SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")


@pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed")
def test_snakemake_claims_and_the_report(tmp_path):
    """`snakemake claims` on a config with fig2 only (synthetic MNIST, 4 seeds) whose table is already there:
    the scorecard lists fig3-fig6's claims as not evaluated, says that the data are synthetic, and is the
    first thing of the HTML report."""
    cfg = {**fig2_config(m=(3, 100), seeds=range(4)), "results_dir": "results", "logs_dir": "logs",
           "data_dir": str(tmp_path / "nowhere"), "cache_dir": "resources/cache", "synthetic_emnist": True,
           "synthetic_mnist": True,
           "synthetic": {"dir": "resources/synthetic", "n_train": 940, "n_test": 235, "seed": 0},
           "device": "cpu", "torch_env": "cpu", "threads": {"teacher": 1, "student": 1},
           "resources": {k: {"mem_mb": 1000, "runtime": 5} for k in ("data", "teacher", "student", "merge", "plot")},
           "defaults": {"teacher_hidden_dims": "32,32", "student_hidden_dims": "32,32", "m": 10}}
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    table, _ = fig2({(init, m): spread(acc) for init, acc in (("same", 0.85), ("rand_hidden", 0.6),
                                                              ("rand_aux_head", 0.3), ("rand_class_head", 0.1))
                     for m in (3, 100)})
    (tmp_path / "results" / "tables").mkdir(parents=True)
    table.to_csv(tmp_path / "results" / "tables" / "fig2.csv", index=False)

    def smk(*args):
        result = subprocess.run([SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                                 "--workflow-profile", "none", "--cores", "1", *args,
                                 "--allowed-rules", "evaluate_claims", "claims"],  # the tables are given
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        return result.stdout + result.stderr

    smk("claims")
    scores = pd.read_csv(tmp_path / "results" / "claims.csv", keep_default_na=False)
    assert scores.set_index(scores["claim"].astype(str))["verdict"].to_dict() == {
        "1a": "holds", "1b": "not evaluated", "1c": "not evaluated", "2a": "not evaluated",
        "2b": "not evaluated", "2c": "not evaluated", "3a": "holds", "3b": "holds", "4": "holds",
        "5a": "not evaluated", "5b": "not evaluated"}
    assert (scores.loc[scores["verdict"] == "holds", "data"] == "synthetic MNIST").all()
    smk("--report", "report.html", "claims")
    report = (tmp_path / "report.html").read_text()
    description = report[report.index("var workflow_desc"):]
    assert description.index("Which of the paper") < description.index("Split-head teacher")
    assert "SYNTHETIC MNIST: the verdicts" in description and "fig3 is not configured" in description
    assert "Claims scorecard" in report
