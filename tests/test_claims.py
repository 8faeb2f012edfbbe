"""The claims scorecard: each test kind on small hand-made tables whose verdict is known (holds, fails and
the borderline between them), damaged tables that must never hold (missing points, seeds or compared
conditions, duplicated rows, noisy data at chance), the statistics (seeds as the unit, paired
comparisons, t intervals, Bonferroni), the claims file's messages, the command line and the rule.

Constant values over the seeds give a t interval of exactly [v, v], which puts a point on either side of
a test's boundary to the last digit.
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

import claim_stats  # noqa: E402
import claims  # noqa: E402
import grids  # noqa: E402

INITS = {"same": "A,A,A,A", "rand_fc1": "random,A,A,A", "rand_fc2": "A,random,A,A", "rand_hidden": "random,random,A,A",
         "rand_class_head": "A,A,random,A", "rand_aux_head": "A,A,A,random"}
TEACHER, MAJORITY = 0.9, 0.1135          # chance = max(1/10, 0.1135) = 0.1135
GAIN = TEACHER - MAJORITY


def fig2_config(m=(3, 10, 100), seeds=(0, 1, 2, 3, 4)) -> dict:
    return {"seeds": list(seeds), "bootstrap": {"resamples": 300, "ci": 0.95, "seed": 0},
            "figures": {"fig2": {"title": "test", "panels": [{
                "name": "init", "flags": {"teacher_init": "A,A,A,A"},
                "grid": {"m": list(m), "student_init": {"labels": dict(INITS)}},
                "plot": {"x": "m", "hue": "student_init"}}]}}}


def fig2(values: dict, m=None, seeds=None, majority=MAJORITY, synthetic=()) -> tuple[pd.DataFrame, dict]:
    """A fig2 table and spec: (init, m) -> the student's accuracy per seed (a list), or one value for every
    seed. The grid's m and seeds default to those of the values (a complete table)."""
    lists = [len(v) for v in values.values() if isinstance(v, list)]
    seeds = list(range(max(lists, default=5))) if seeds is None else list(seeds)
    m = sorted({m for _, m in values}) if m is None else m
    spec = grids.figure_spec(fig2_config(m=m, seeds=seeds), "fig2", lambda panel: list(synthetic))
    rows = []
    for (init, mm), accs in values.items():
        accs = accs if isinstance(accs, list) else [accs] * len(seeds)
        for seed, acc in zip(seeds, accs, strict=False):
            row = {"figure": "fig2", "panel": "init", "m": mm, "student_init": init, "seed": seed,
                   "student_final_acc": acc, "teacher_final_acc": TEACHER, "num_classes": 10, "dataset": "mnist"}
            if majority is not None:
                row["test_majority_acc"] = majority
            rows.append(row)
    return pd.DataFrame(rows), spec


def claim(test: str, condition="rand_hidden", **extra) -> dict:
    return {"id": "c1", "source": "test", "statement": "test", "figure": "fig2", "panel": "init",
            "condition": {"student_init": condition}, "x": "m", "test": test, **extra}


def verdict(test, values, condition="rand_hidden", min_seeds=5, table_spec=None, **extra) -> dict:
    table, spec = table_spec or fig2(values)
    return claims.evaluate(claim(test, condition, **extra), table, spec, min_seeds)


def spread(centre, width=0.02, n=8):
    """n seeds evenly around a centre: an interval that contains the centre."""
    return list(np.linspace(centre - width, centre + width, n))


def transfer(fraction):
    """The accuracy whose transfer fraction is `fraction`."""
    return MAJORITY + fraction * GAIN


# --------------------------------------------------------------------------------------------------
# The tests, each on both sides of its boundary
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values, expected", [
    ({("rand_hidden", 3): 0.6, ("rand_hidden", 10): 0.7}, "holds"),
    ({("rand_hidden", 3): spread(MAJORITY), ("rand_hidden", 10): 0.7}, "fails"),
    ({("rand_hidden", 3): MAJORITY, ("rand_hidden", 10): 0.7}, "fails"),          # lower bound = chance
    ({("rand_hidden", 3): MAJORITY + 1e-6, ("rand_hidden", 10): 0.7}, "holds"),   # just above
    ({("rand_hidden", 3): 0.11, ("rand_hidden", 10): 0.7}, "fails"),              # above 1/K, not the majority
])
def test_above_chance_at_every_point(values, expected):
    record = verdict("above_chance", values)
    assert record["verdict"] == expected, record
    if expected == "fails":
        assert record["x"] == "3" and "fails at m = 3" in record["reason"] and "holds at 1 of 2" in record["points"]


def test_chance_is_one_over_k_where_the_majority_rate_is_not_recorded():
    record = verdict("above_chance", {}, table_spec=fig2({("rand_hidden", 3): 0.11}, majority=None))
    assert record["verdict"] == "holds" and "chance 0.1000" in record["reference"]
    assert "no test_majority_acc" in record["reason"]


def test_require_any_is_bonferroni_corrected():
    """Seeds that clear chance at 95 % but not at 1 - 0.05/6: one tested point holds, six do not."""
    values = [MAJORITY + d for d in (0.0, 0.02, 0.04, 0.0, 0.02, 0.04)]  # mean +0.02, t(95 %) lower bound > 0
    low = claim_stats.t_interval(values, 0.95)[1]
    assert low > MAJORITY and claim_stats.t_interval(values, 1 - 0.05 / 6)[1] < MAJORITY
    one = fig2({("rand_hidden", 3): values}, m=[3])
    assert verdict("above_chance", {}, require="any", table_spec=one)["verdict"] == "holds"
    six = {("rand_hidden", m): (values if m == 3 else MAJORITY) for m in (3, 4, 5, 6, 7, 8)}
    record = verdict("above_chance", six, require="any")
    assert record["verdict"] == "fails" and "Bonferroni over 6" in record["statistic"]
    six[("rand_hidden", 8)] = 0.5
    record = verdict("above_chance", six, require="any")
    assert record["verdict"] == "holds" and record["x"] == "8" and record["points"].startswith("holds at 1 of 6")


@pytest.mark.parametrize("accs, expected", [
    (spread(0.1), "holds"),
    ([0.1, 0.5, 0.9] * 2, "fails"),                      # mean 0.5 whose interval touches chance: not at chance
    (spread(0.1, width=0.2, n=6), "fails"),              # centred on chance, too noisy to say
    ([MAJORITY + 0.1 * GAIN - 1e-9] * 5, "holds"),       # just inside the band's upper edge
    ([MAJORITY + 0.1 * GAIN + 1e-9] * 5, "fails"),
    ([0.1 - 0.1 * GAIN + 1e-9] * 5, "holds"),            # below 1/K, inside the band
])
def test_at_chance_is_an_equivalence_test(accs, expected):
    table_spec = fig2({("rand_class_head", 3): accs}, m=[3], seeds=range(len(accs)))
    record = verdict("at_chance", {}, condition="rand_class_head", margin=0.1, table_spec=table_spec)
    assert record["verdict"] == expected, record


def test_below_pairs_the_seeds():
    """Seeds differ a lot from each other, the conditions by a constant within a seed: unpaired intervals
    overlap, the paired difference is exactly -0.01 (holds); swapped, +0.01 (fails)."""
    base = [0.3, 0.5, 0.7, 0.4, 0.6, 0.8]
    lower, higher = [b for b in base], [b + 0.01 for b in base]
    for aux, same, expected in ((lower, higher, "holds"), (higher, lower, "fails"), (lower, lower, "fails")):
        record = verdict("below", {("rand_aux_head", 3): aux, ("same", 3): same}, condition="rand_aux_head",
                         than={"student_init": "same"})
        assert record["verdict"] == expected, record
        assert "paired" in record["statistic"] and "student_init = same" in record["reference"]
    record = verdict("below", {("rand_aux_head", 3): lower, ("same", 3): higher}, condition="rand_aux_head",
                     than={"student_init": "same"})
    assert record["value"] == pytest.approx(-0.01) and record["ci_high"] == pytest.approx(-0.01)


@pytest.mark.parametrize("curve, increasing, decreasing", [
    (lambda i, seed: 0.2 + 0.1 * i + 0.01 * seed, "holds", "fails"),
    (lambda i, seed: 0.8 - 0.1 * i + 0.01 * seed, "fails", "holds"),
    (lambda i, seed: 0.5, "fails", "fails"),                                            # flat
    (lambda i, seed: 0.5 + 0.2 * ((i * 7 + seed * 3) % 5 - 2) / 2, "fails", "fails"),   # noise, no trend
])
def test_trends(curve, increasing, decreasing):
    values = {("same", m): [curve(i, seed) for seed in range(6)] for i, m in enumerate((1, 3, 10, 30, 100))}
    for test, expected in (("increasing", increasing), ("decreasing", decreasing)):
        record = verdict(test, values, condition="same")
        assert record["verdict"] == expected, (test, record)
        assert -1 <= record["value"] <= 1 and record["x"] == "1 .. 100"


def test_a_trend_of_the_transfer_fraction_divides_out_the_teacher():
    """Accuracy rises with m only because the teacher does: the transfer fraction is flat (no trend)."""
    table, spec = fig2({("same", m): 0.5 for m in (1, 3, 10, 30)})
    table["teacher_final_acc"] = table["m"].map({1: 0.6, 3: 0.7, 10: 0.8, 30: 0.9})
    table["student_final_acc"] = MAJORITY + 0.5 * (table["teacher_final_acc"] - MAJORITY)
    assert verdict("increasing", {}, condition="same", table_spec=(table, spec))["verdict"] == "holds"
    record = verdict("increasing", {}, condition="same", metric="transfer", table_spec=(table, spec))
    assert record["verdict"] == "fails" and record["value"] == 0


def test_a_trend_needs_three_grid_values():
    record = verdict("increasing", {("same", 3): 0.5, ("same", 10): 0.6}, condition="same")
    assert record["verdict"] == "not evaluated" and "at least 3 values of m" in record["reason"]


@pytest.mark.parametrize("fraction, expected", [(0.95, "holds"), (0.9 + 1e-6, "holds"), (0.9 - 1e-6, "fails"),
                                                (0.5, "fails")])
def test_near_teacher_at_the_largest_x(fraction, expected):
    values = {("same", 3): 0.3, ("same", 10): 0.5, ("same", 100): transfer(fraction)}  # only m = 100 is tested
    record = verdict("near_teacher", values, condition="same", f=0.1, at="max")
    assert record["verdict"] == expected, record
    assert record["x"] == "100" and record["value"] == pytest.approx(fraction)


@pytest.mark.parametrize("fraction, expected", [(0.2, "holds"), (0.5 - 1e-6, "holds"), (0.5 + 1e-6, "fails")])
def test_transfer_below(fraction, expected):
    values = {("rand_aux_head", 3): transfer(0.1), ("rand_aux_head", 10): transfer(fraction)}
    assert verdict("transfer_below", values, condition="rand_aux_head", f=0.5)["verdict"] == expected


def test_rises_pairs_before_and_after():
    table, spec = fig2({("rand_hidden", m): 0.5 for m in (3, 10)})
    base = np.resize([0.0, 0.3, -0.2, 0.1, 0.4], len(table))
    table["cos_before"], table["cos_after"] = base, base + 0.05
    kwargs = {"metric": "cos_after", "table_spec": (table, spec)}
    assert verdict("rises", {}, **{"from": "cos_before"}, **kwargs)["verdict"] == "holds"
    table["cos_after"] = base - 0.05
    assert verdict("rises", {}, **{"from": "cos_before"}, **kwargs)["verdict"] == "fails"


def test_the_t_interval():
    mean, low, high = claim_stats.t_interval([1, 2, 3, 4, 5], 0.95)
    assert mean == 3 and high - mean == pytest.approx(2.7764451 * np.sqrt(2.5) / np.sqrt(5))
    assert np.isnan(claim_stats.t_interval([0.5], 0.95)[1])
    assert claim_stats.t_interval([0.5] * 4, 0.95) == (0.5, 0.5, 0.5)


# --------------------------------------------------------------------------------------------------
# Damaged tables never hold
# --------------------------------------------------------------------------------------------------

GOOD = {("rand_hidden", m): 0.6 for m in (10, 100, 250)}


def test_a_missing_grid_point_is_partial():
    """at m = 250 nothing: 'partial', naming it; never 'holds' on the rest, and `at: max` does not move to 100."""
    table, spec = fig2({k: v for k, v in GOOD.items() if k[1] != 250}, m=[10, 100, 250])
    for extra in ({}, {"at": "max"}, {"at": [100, 250]}, {"require": "any"}):
        record = verdict("above_chance", {}, table_spec=(table, spec), **extra)
        expected = "not evaluated" if extra.get("at") == "max" else "partial"  # nothing of what it needs
        assert record["verdict"] == expected, (extra, record)
        assert "all seeds at student_init = rand_hidden, m = 250" in record["reason"]


def test_missing_seeds_are_partial():
    table, spec = fig2(GOOD, seeds=range(20))
    table = table[(table["m"] != 100) | (table["seed"] < 6)]
    record = verdict("above_chance", {}, table_spec=(table, spec))
    assert record["verdict"] == "partial" and "seeds 6-19 at student_init = rand_hidden, m = 100" in record["reason"]


def test_a_seed_whose_teacher_learned_nothing_is_named_as_such():
    """Its runs are there, but no transfer fraction exists (the teacher is not above chance): partial, and the
    reason says it ran rather than calling the seed missing."""
    table, spec = fig2({("rand_aux_head", 3): transfer(0.1), ("rand_aux_head", 10): transfer(0.2)})
    table.loc[(table["seed"] == 0) & (table["m"] == 10), "teacher_final_acc"] = MAJORITY
    record = verdict("transfer_below", {}, condition="rand_aux_head", f=0.5, table_spec=(table, spec))
    assert record["verdict"] == "partial"
    assert "seeds 0 at student_init = rand_aux_head, m = 10: ran, but no finite transfer (the teacher is not " \
           "above chance)" in record["reason"]
    table = table[(table["seed"] != 1) | (table["m"] != 3)]
    record = verdict("transfer_below", {}, condition="rand_aux_head", f=0.5, table_spec=(table, spec))
    assert "seeds 1 at student_init = rand_aux_head, m = 3;" in record["reason"]


def test_a_missing_compared_condition_is_partial():
    values = {("rand_aux_head", 3): 0.2, ("rand_aux_head", 10): 0.2, ("same", 10): 0.9}
    record = verdict("below", values, condition="rand_aux_head", than={"student_init": "same"})
    assert record["verdict"] == "partial" and "all seeds at student_init = same, m = 3" in record["reason"]
    record = verdict("below", {("rand_aux_head", 3): 0.2}, condition="rand_aux_head", than={"student_init": "same"})
    assert record["verdict"] == "partial"


def test_nothing_there_is_not_evaluated():
    table, spec = fig2({("same", 10): 0.9})
    record = verdict("above_chance", {}, table_spec=(table, spec))
    assert record["verdict"] == "not evaluated" and "none of the runs" in record["reason"]


def test_duplicated_rows_do_not_narrow_the_interval():
    """The same seeds' rows three times: one value per seed, the same interval and verdict, and said so."""
    accs = [MAJORITY - 0.01, MAJORITY + 0.03, MAJORITY + 0.01, MAJORITY - 0.005, MAJORITY + 0.02]
    table, spec = fig2({("rand_hidden", 3): accs})
    once = verdict("above_chance", {}, table_spec=(table, spec))
    thrice = verdict("above_chance", {}, table_spec=(pd.concat([table] * 3, ignore_index=True), spec))
    assert once["verdict"] == thrice["verdict"] == "fails"
    assert (once["ci_low"], once["ci_high"]) == (thrice["ci_low"], thrice["ci_high"])
    assert "10 duplicated rows averaged" in thrice["reason"]


def test_seeds_outside_the_config_are_not_counted():
    table, spec = fig2({("rand_hidden", 3): [0.6] * 8}, seeds=range(8))
    spec["seeds"] = [0, 1, 2, 3, 4, 5]
    record = verdict("above_chance", {}, table_spec=(table, spec))
    assert record["n_seeds"] == 6 and record["verdict"] == "holds"


def test_too_few_seeds_configured():
    record = verdict("above_chance", {("rand_hidden", 3): [0.6, 0.61, 0.62]})
    assert record["verdict"] == "not enough seeds" and record["n_seeds"] == 3
    assert "fewer than min_seeds 5 (on these seeds: holds)" in record["reason"]
    assert verdict("above_chance", {("rand_hidden", 3): [0.6, 0.61]}, min_seeds=2)["verdict"] == "holds"


def test_claims_of_figures_not_built_are_not_evaluated():
    table, spec = fig2({("same", 3): 0.8, ("rand_hidden", 3): 0.6})
    file = {"min_seeds": 5, "claims": [
        claim("above_chance"),
        {**claim("above_chance"), "id": "c2", "figure": "fig3", "panel": "depth", "condition": {"depth": "plus_one"}},
        {**claim("above_chance"), "id": "c3", "panel": "other"},
    ]}
    scores = claims.evaluate_all(file, {"fig2": table}, {"fig2": spec})
    assert list(scores.columns) == claims.COLUMNS
    assert scores["verdict"].tolist() == ["holds", "not evaluated", "not evaluated"]
    assert scores["reason"].tolist()[1:] == ["fig3 is not configured (no table)",
                                             "fig2 has no panel other in the config"]


@pytest.mark.parametrize("damage, said", [
    (lambda t: t.iloc[0:0], "table is empty"),
    (lambda t: t.drop(columns="num_classes"), "has no column num_classes"),
    (lambda t: t.drop(columns="student_init"), "has no column student_init"),
])
def test_a_table_without_what_a_claim_needs_is_not_evaluated(damage, said):
    table, spec = fig2({("rand_hidden", 3): 0.6})
    record = verdict("above_chance", {}, table_spec=(damage(table), spec))
    assert record["verdict"] == "not evaluated" and said in record["reason"]


def test_synthetic_data_is_marked_from_the_table_itself():
    table, spec = fig2({("rand_hidden", 3): 0.6})
    table["data"] = "synthetic MNIST"
    record = claims.evaluate(claim("above_chance"), table, spec, 5)
    assert record["data"] == "synthetic MNIST" and "not about the real dataset" in record["reason"]
    scores = pd.DataFrame([record], columns=claims.COLUMNS)
    assert any("SYNTHETIC MNIST" in line for line in claims.headline(scores, {"fig2": spec}, 5))
    real, spec = fig2({("rand_hidden", 3): 0.6})
    assert claims.evaluate(claim("above_chance"), real, spec, 5)["data"] == "MNIST"


# --------------------------------------------------------------------------------------------------
# The claims file and its grid
# --------------------------------------------------------------------------------------------------


def paper_specs(name="config.yaml") -> dict:
    cfg = yaml.safe_load((REPO / "config" / name).read_text())
    return {figure: grids.figure_spec(cfg, figure) for figure in cfg["figures"]}


def test_the_repository_claims_fit_the_paper_and_the_quick_grids():
    file = claims.load_claims(REPO / "config" / "claims.yaml")
    assert file["min_seeds"] >= 5
    for name in ("config.yaml", "quick.yaml"):
        claims.check_claims(file, paper_specs(name))
    assert {c["figure"] for c in file["claims"]} == {"fig2", "fig3", "fig4", "fig5", "fig6"}
    for c in file["claims"]:
        assert ("f" in c or "margin" in c) <= ("why" in c), c["id"]   # every number has its reason
        assert not c["source"].startswith('"'), c["id"]                 # paraphrased, not quoted


def test_the_paper_claims_are_evaluated_on_complete_paper_tables():
    """Every claim of the repository on complete hand-made tables of the paper's grids (20 seeds): each
    gets holds or fails, none partial or not evaluated (the claims read only what the figures compute)."""
    specs = paper_specs()
    file = claims.load_claims(REPO / "config" / "claims.yaml")
    rng = np.random.default_rng(0)
    tables = {}
    for figure, spec in specs.items():
        rows = []
        for panel in spec["panels"]:
            names = list(panel["grid"])
            for combo in __import__("itertools").product(*(panel["grid"][n]["values"] for n in names)):
                for seed in spec["seeds"]:
                    rows.append({"panel": panel["name"], **dict(zip(names, combo, strict=True)), "seed": seed,
                                 "student_final_acc": rng.uniform(0.1, 0.9), "teacher_final_acc": 0.95,
                                 "num_classes": 10, "test_majority_acc": MAJORITY, "dataset": "mnist",
                                 **{f"cos_{w}_teacher_student_{layer}_weight": rng.uniform()
                                    for w in ("init", "final") for layer in ("fc1", "fc2")}})
        tables[figure] = pd.DataFrame(rows)
    scores = claims.evaluate_all(file, tables, specs)
    assert set(scores["verdict"]) <= {"holds", "fails"}, scores[["claim", "verdict", "reason"]]


def by_id(file: dict, name: str) -> dict:
    return next(c for c in file["claims"] if c["id"] == name)


@pytest.mark.parametrize("change, message", [
    (lambda f: by_id(f, "1a").update(test="belwo"), "claim 1a (claims[0]), key test: 'belwo' is not one of"),
    (lambda f: by_id(f, "1b").update(tset=1), "claim 1b (claims[1]): unknown key ('tset' was unexpected)"),
    (lambda f: by_id(f, "1a").pop("test"), "claim 1a (claims[0]): key 'test' is missing (one of: above_chance"),
    (lambda f: by_id(f, "1a").update(margin=0.1, why="x"), "claim 1a (claims[0]): key 'margin' does not apply"),
    (lambda f: by_id(f, "5c").update(f=1.5), "claim 5c (claims[17]), key f: 1.5 is greater than or equal to"),
    (lambda f: by_id(f, "5c").update(f=float("nan")), "claim 5c (claims[17]), key f: nan is not a finite number"),
    (lambda f: by_id(f, "3b").update(margin=float("nan")), "claim 3b (claims[7]), key margin: nan is not a finite"),
    (lambda f: by_id(f, "5c").pop("why"), "claim 5c (claims[17]): 'why' is a required property"),
    (lambda f: by_id(f, "1b").update(id="1a"), "claim 1a: the id is used twice"),
    (lambda f: f.update(min_seeds=1), "min_seeds: 1 is less than the minimum of 2"),
    (lambda f: by_id(f, "1a").pop("source"), "claim 1a (claims[0]): key 'source' is missing"),
    (lambda f: by_id(f, "2b").update(condition={"depth": {"a": 1}}), "claim 2b (claims[3]), key condition.depth:"),
    (lambda f: by_id(f, "4a").pop("from"), "claim 4a (claims[13]): 'from' is a required property"),
])
def test_a_bad_claims_file_is_refused_in_one_line(tmp_path, change, message):
    bad = copy.deepcopy(yaml.safe_load((REPO / "config" / "claims.yaml").read_text()))
    change(bad)
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(claims.ClaimsError) as error:
        claims.load_claims(path)
    text = str(error.value)
    assert "\n" not in text and text.startswith(f"{path}: ") and message in text, text


@pytest.mark.parametrize("content, message", [
    (b"claims:\n  - id: \xff\xfe\n", "not UTF-8 text"),
    (b"claims: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    (b"claims: [\n", "cannot read the claims file"),
])
def test_an_unreadable_claims_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "claims.yaml"
    path.write_bytes(content)
    with pytest.raises(claims.ClaimsError) as error:
        claims.load_claims(path)
    assert "\n" not in str(error.value) and message in str(error.value)


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(condition={"student_init": "rand_fc3"}),
     "key condition.student_init: 'rand_fc3' is not a value of the grid (values: same, rand_fc1"),
    (lambda c: c.update(at=[100, 251]), "key at: m = 251 is not a value of the grid (values: 3, 10, 25"),
    (lambda c: c.update(panel="inti"), "key panel: fig2 has no panel 'inti' (panels: init)"),
    (lambda c: c.update(x="noise_samples"), "noise_samples is derived from noise_steps x noise_bsize"),
    (lambda c: c.update(condition={"d": 3}), "key condition.d: not a grid coordinate of fig2 panel init"),
])
def test_a_claim_that_asks_for_what_the_grid_lacks_is_a_config_error(change, message):
    file = claims.load_claims(REPO / "config" / "claims.yaml")
    change(by_id(file, "1a"))
    with pytest.raises(claims.ClaimsError) as error:
        claims.check_claims(file, paper_specs())
    assert str(error.value).startswith("config/claims.yaml: claim 1a, ") and message in str(error.value)


def test_a_reduced_grid_leaves_its_claims_not_evaluated():
    """A config whose fig2 lacks rand_fc1 and m = 250 (a test, the quick preset): no error while the paper's
    grid has them, and those claims say 'not evaluated', naming what the config leaves out. A typo (in
    neither grid) stays an error."""
    file = claims.load_claims(REPO / "config" / "claims.yaml")
    reduced = {"fig2": grids.figure_spec(fig2_config(m=(3, 100)) | {"figures": {"fig2": {
        "panels": [{"name": "init", "grid": {"m": [3, 100], "student_init": {"labels": {
            k: v for k, v in INITS.items() if k != "rand_fc1"}}}, "plot": {"x": "m", "hue": "student_init"}}]}}},
        "fig2")}
    claims.check_claims(file, reduced, paper=paper_specs())
    table, _ = complete_fig2()
    record = claims.evaluate(by_id(file, "1a"), table, reduced["fig2"], 5)
    assert record["verdict"] == "not evaluated"
    assert "leaves out what the claim needs: condition.student_init 'rand_fc1' is not a value" in record["reason"]
    by_id(file, "1b")["condition"] = {"student_init": "rand_fc3"}
    with pytest.raises(claims.ClaimsError, match="claim 1b, key condition.student_init: 'rand_fc3'"):
        claims.check_claims(file, reduced, paper=paper_specs())


def test_the_merge_turns_layer_metrics_into_cosine_columns():
    import merge

    metrics = pd.DataFrame([
        {"run_id": "r1", "comparison": "teacher_student_init", "layer_name": "fc1", "tensor_kind": "weight",
         "cosine": 0.01},
        {"run_id": "r1", "comparison": "teacher_student_final", "layer_name": "fc1", "tensor_kind": "weight",
         "cosine": 0.3},
        {"run_id": "r1", "comparison": "student_init_final", "layer_name": "fc1", "tensor_kind": "weight",
         "cosine": 0.9},
    ])
    columns = merge.layer_cosines(metrics)
    assert columns.loc["r1"].to_dict() == {"cos_final_teacher_student_fc1_weight": 0.3,
                                           "cos_init_teacher_student_fc1_weight": 0.01}
    assert merge.layer_cosines(pd.DataFrame()).empty


# --------------------------------------------------------------------------------------------------
# The scorecard files and the command line
# --------------------------------------------------------------------------------------------------


def complete_fig2(seeds=range(6)) -> tuple[pd.DataFrame, dict]:
    accs = {"same": 0.88, "rand_hidden": 0.6, "rand_aux_head": 0.3, "rand_class_head": 0.1}
    return fig2({(init, m): spread(acc, n=len(seeds)) for init, acc in accs.items() for m in (3, 100)},
                seeds=seeds)


def test_the_job_writes_the_scorecard(tmp_path):
    """The rule's script as Snakemake runs it (its snakemake object faked): CSV, standalone HTML linking
    each evaluated row to its figure, and the report caption, which renders (Jinja, then docutils)."""
    table, spec = complete_fig2()
    for layer in ("fc1", "fc2"):
        table[f"cos_init_teacher_student_{layer}_weight"] = 0.0
        table[f"cos_final_teacher_student_{layer}_weight"] = 0.2
    table.to_csv(tmp_path / "fig2.csv", index=False)
    out = {k: str(tmp_path / f"claims.{k}") for k in ("csv", "html", "rst")}
    params = SimpleNamespace(specs=[spec], claims=claims.load_claims(REPO / "config" / "claims.yaml"))
    fake = SimpleNamespace(input=SimpleNamespace(tables=[str(tmp_path / "fig2.csv")]), params=params,
                           output=SimpleNamespace(**out), log=[str(tmp_path / "claims.log")])
    runpy.run_path(str(SCRIPTS / "scorecard.py"), init_globals={"snakemake": fake})
    scores = pd.read_csv(out["csv"], keep_default_na=False)
    verdicts = dict(zip(scores["claim"].astype(str), scores["verdict"], strict=True))
    fig2_claims = {c: verdicts[c] for c in ("2a", "3a", "3b", "4a", "4b", "5c")}
    assert fig2_claims == {"2a": "holds", "3a": "holds", "3b": "holds", "4a": "holds", "4b": "holds",
                           "5c": "holds"}, scores[["claim", "verdict", "reason"]]
    assert verdicts["1a"] == "not evaluated" and verdicts["5a"] == "not evaluated" and verdicts["6c"] == "not evaluated"
    assert "claim 3a (fig2 init, transfer_below): holds" in Path(fake.log[0]).read_text()
    page = Path(out["html"]).read_text()
    assert '<a href="figures/fig2.png">fig2</a>' in page and "figures/fig3.png" not in page and "why: " in page

    import jinja2
    from docutils.core import publish_parts

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # as Snakemake renders captions
    text = Path(out["rst"]).read_text() + "\n.. _fig2.png: javascript:show('fig2')\n"
    rendered = env.from_string(text).render(files=[SimpleNamespace(target="fig2.png")])
    body = publish_parts(rendered, writer="html", settings_overrides={"report_level": 2})["body"]
    assert "System Message" not in body and "javascript:show('fig2')" in body
    assert "<strong>holds</strong>" in body and "<strong>not evaluated</strong>" in body
    assert "fig3 is not configured" in body


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / "scorecard.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def fig2_config_file(tmp_path, seeds=range(6)) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(fig2_config(m=(3, 100), seeds=seeds)))
    return path


def test_the_command_line(tmp_path):
    table, _ = complete_fig2()
    (tmp_path / "tables").mkdir()
    table["data"] = "synthetic MNIST"
    table.to_csv(tmp_path / "tables" / "fig2.csv", index=False)
    result = cli("--configfile", fig2_config_file(tmp_path), "--tables", tmp_path / "tables", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    scores = pd.read_csv(tmp_path / "claims.csv", keep_default_na=False)
    assert scores.set_index(scores["claim"].astype(str)).loc["2a", "data"] == "synthetic MNIST"
    assert set(scores["verdict"]) <= set(claims.VERDICTS)


@pytest.mark.parametrize("table_text, said", [
    ("", "the fig2 table is empty"),
    ("panel,m,student_init,seed,student_final_acc,teacher_final_acc\ninit,3,same,0,0.9,0.9\n",
     "has no column num_classes"),
])
def test_the_command_line_on_a_damaged_table(tmp_path, table_text, said):
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "fig2.csv").write_text(table_text)
    result = cli("--configfile", fig2_config_file(tmp_path), "--tables", tmp_path / "tables", "--out", tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    scores = pd.read_csv(tmp_path / "claims.csv", keep_default_na=False)
    fig2_rows = scores[scores["figure"] == "fig2"]
    assert (fig2_rows["verdict"] == "not evaluated").all() and fig2_rows["reason"].str.contains(said).all()


def test_the_command_line_refuses_a_claim_the_grid_lacks(tmp_path):
    table, _ = complete_fig2()
    (tmp_path / "tables").mkdir()
    table.to_csv(tmp_path / "tables" / "fig2.csv", index=False)
    bad = yaml.safe_load((REPO / "config" / "claims.yaml").read_text())
    by_id(bad, "3a")["condition"] = {"student_init": "rand_aux_haed"}
    (tmp_path / "claims.yaml").write_text(yaml.safe_dump(bad))
    result = cli("--configfile", fig2_config_file(tmp_path), "--claims", tmp_path / "claims.yaml",
                 "--tables", tmp_path / "tables", "--out", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "'rand_aux_haed' is not a value of the grid" in result.stderr


# --------------------------------------------------------------------------------------------------
# Through Snakemake (hand-made tables: no run is computed)
# --------------------------------------------------------------------------------------------------

SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")


def workflow_dir(tmp_path, seeds=range(6)) -> Path:
    cfg = {**fig2_config(m=(3, 100), seeds=seeds), "results_dir": "results", "logs_dir": "logs",
           "data_dir": str(tmp_path / "nowhere"), "cache_dir": "resources/cache", "synthetic_emnist": True,
           "synthetic_mnist": True,
           "synthetic": {"dir": "resources/synthetic", "n_train": 940, "n_test": 235, "seed": 0},
           "device": "cpu", "torch_env": "cpu", "threads": {"teacher": 1, "student": 1},
           "resources": {k: {"mem_mb": 1000, "runtime": 5} for k in ("data", "teacher", "student", "merge", "plot")},
           "defaults": {"teacher_hidden_dims": "32,32", "student_hidden_dims": "32,32", "m": 10}}
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp_path


def smk(directory, *args, check=True):
    result = subprocess.run([SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(directory),
                             "--workflow-profile", "none", "--cores", "1", *args,
                             "--allowed-rules", "evaluate_claims", "claims"],  # the tables are given
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


@pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed")
def test_snakemake_claims_and_the_report(tmp_path):
    """`snakemake claims` on a config with fig2 only (synthetic MNIST, 6 seeds) whose table is already there:
    the scorecard lists fig3-fig6's claims as not evaluated, says that the data are synthetic, and is the
    first thing of the HTML report."""
    directory = workflow_dir(tmp_path)
    table, _ = complete_fig2()
    table["data"] = "synthetic MNIST"
    (directory / "results" / "tables").mkdir(parents=True)
    table.to_csv(directory / "results" / "tables" / "fig2.csv", index=False)
    smk(directory, "claims")
    scores = pd.read_csv(directory / "results" / "claims.csv", keep_default_na=False)
    verdicts = scores.set_index(scores["claim"].astype(str))["verdict"].to_dict()
    assert verdicts["3a"] == "holds" and verdicts["2b"] == "not evaluated" and verdicts["4a"] == "not evaluated"
    assert (scores.loc[scores["verdict"] == "holds", "data"] == "synthetic MNIST").all()
    smk(directory, "--report", "report.html", "claims")
    report = (directory / "report.html").read_text()
    description = report[report.index("var workflow_desc"):]
    assert description.index("Which of the paper") < description.index("Split-head teacher")
    assert "SYNTHETIC MNIST: the verdicts" in description and "fig3 is not configured" in description


@pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed")
def test_snakemake_refuses_a_claim_the_grid_lacks_when_reading_the_workflow(tmp_path):
    directory = workflow_dir(tmp_path)
    bad = yaml.safe_load((REPO / "config" / "claims.yaml").read_text())
    by_id(bad, "3b")["condition"] = {"student_init": "rand_class_haed"}
    (directory / "config" / "claims.yaml").write_text(yaml.safe_dump(bad))
    result = smk(directory, "-n", "claims", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "claim 3b, key condition.student_init: 'rand_class_haed'" in output
    assert "Traceback" not in output
