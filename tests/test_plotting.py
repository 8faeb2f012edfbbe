"""The figures: summaries (mean, bootstrap interval, seeds, teacher) and drawings, without running anything.

The plot scripts run as Snakemake runs them (their `snakemake` object faked) on tables shaped like the
merge rule's: every grid point and seed of a figure's panels, with generated accuracies.
"""

from __future__ import annotations

import itertools
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow" / "scripts"
sys.path.insert(0, str(SCRIPTS))

import grids  # noqa: E402
import plotting  # noqa: E402

FIGURES = ["fig2", "fig3", "fig4", "fig5", "fig6"]


def load_config(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


def table_for(cfg: dict, spec: dict, student=None) -> pd.DataFrame:
    """A tidy table like merge.py's: one row per (panel, grid point, seed), generated accuracies.
    `student(panel, coords, seed)` gives the student accuracy (default: random around 0.6)."""
    rng = np.random.default_rng(0)
    rows = []
    for panel, raw in zip(spec["panels"], cfg["figures"][spec["figure"]]["panels"], strict=True):
        flags = {**cfg["defaults"], **raw.get("flags", {})}
        names = list(panel["grid"])
        for combo in itertools.product(*(panel["grid"][n]["values"] for n in names)):
            coords = dict(zip(names, combo, strict=True))
            classes = coords.get("class_count") or (47 if flags.get("dataset") == "emnist" else 10)
            for seed in spec["seeds"]:
                rows.append({
                    "figure": spec["figure"], "panel": panel["name"],
                    "point": "_".join(f"{n}-{grids.value_label(v)}" for n, v in coords.items()), **coords,
                    "seed": seed,
                    "m": coords.get("m", flags["m"]), "noise_steps": coords.get("noise_steps", flags["noise_steps"]),
                    "noise_bsize": flags["noise_bsize"], "num_classes": classes,
                    "teacher_final_acc": 0.95,
                    "student_final_acc": student(panel, coords, seed) if student else rng.uniform(0.3, 0.9),
                    "cos_final_teacher_student_class_head_weight": rng.uniform(0, 1),
                    "cos_final_teacher_student_aux_head_weight": rng.uniform(0, 1),
                })
    return pd.DataFrame(rows)


def run_script(figure: str, spec: dict, table: pd.DataFrame, folder: Path) -> SimpleNamespace:
    """Run workflow/scripts/<figure>.py as the plot rule does; returns its outputs."""
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "table.csv", index=False)
    output = SimpleNamespace(**{k: str(folder / f"{figure}{suffix}") for k, suffix in (
        ("png", ".png"), ("pdf", ".pdf"), ("summary", "_summary.csv"), ("summary_html", "_summary.html"))})
    fake = SimpleNamespace(input=SimpleNamespace(table=str(folder / "table.csv")), output=output,
                           params=SimpleNamespace(spec=spec), log=[str(folder / "plot.log")])
    runpy.run_path(str(SCRIPTS / f"{figure}.py"), init_globals={"snakemake": fake})
    return output


def tiny_spec(panels: list[dict], seeds=(0, 1, 2, 3, 4), boot_seed=0) -> dict:
    cfg = {"seeds": list(seeds), "bootstrap": {"resamples": 300, "ci": 0.95, "seed": boot_seed},
           "figures": {"figX": {"title": "test", "panels": panels}}}
    return grids.figure_spec(cfg, "figX")


def tiny_table(spec: dict, values: dict) -> pd.DataFrame:
    """Rows for (panel, x) -> list of student accuracies, one per seed."""
    rows = []
    for (panel, x), accs in values.items():
        for seed, acc in enumerate(accs):
            rows.append({"figure": spec["figure"], "panel": panel, "point": f"x-{x}", "x": x, "seed": seed,
                         "num_classes": 10, "teacher_final_acc": 0.9, "student_final_acc": acc})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# The quick preset's figures
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("figure", FIGURES)
def test_quick_preset_figures_draw_with_their_summaries(figure, tmp_path):
    cfg = load_config("quick.yaml")
    spec = grids.figure_spec(cfg, figure)
    table = table_for(cfg, spec)
    out = run_script(figure, spec, table, tmp_path)

    assert Path(out.pdf).read_bytes()[:5] == b"%PDF-"
    width = matplotlib.image.imread(out.png).shape[1]
    assert 1000 < width <= 7.2 * 200, width  # 7 in (a two-column page) at 200 dpi
    summary = pd.read_csv(out.summary)
    assert list(summary.columns) == plotting.SUMMARY_COLUMNS
    assert (summary["figure"] == figure).all() and (summary["n_seeds"] == 2).all()
    # every grid point of every panel, per metric (accuracy, plus head cosines where the panel asks)
    expected = sum(np.prod([len(g["values"]) for g in p["grid"].values()]) * (3 if p["plot"].get("cosine") else 1)
                   for p in spec["panels"])
    assert len(summary) == expected
    acc = summary[summary["metric"] == "acc"]
    assert ((acc["ci_low"] <= acc["mean"]) & (acc["mean"] <= acc["ci_high"])).all()
    assert np.allclose(acc["teacher_acc"], 0.95)
    assert "<table" in Path(out.summary_html).read_text()


def test_paper_figures_share_axes_as_the_paper_compares(tmp_path):
    """fig5's two heads on one axis, fig6's four MNIST conditions on one axis beside EMNIST, fig3's depth and
    CNN variants as grouped points; the same condition has the same colour wherever it appears."""
    cfg = load_config("config.yaml")
    groups = {f: plotting.axis_groups(grids.figure_spec(cfg, f)) for f in ("fig3", "fig5", "fig6")}
    assert {a: [p["name"] for p in ps] for a, ps in groups["fig5"].items()} == {"heads": ["aux_head", "class_head"]}
    assert {a: [p["name"] for p in ps] for a, ps in groups["fig6"].items()} == {
        "mnist": ["mnist", "frozen_class", "frozen_aux", "frozen_both"], "emnist": ["emnist"]}
    assert [p["name"] for p in groups["fig3"]["architectures"]] == ["depth", "cnn_student"]
    assert all(p["plot"]["kind"] == "points" for p in groups["fig3"]["architectures"])

    styles = {}
    for figure in ("fig2", "fig5", "fig6"):
        spec = grids.figure_spec(cfg, figure)
        summary = plotting.summarise(spec, table_for(cfg, spec))
        styles[figure] = {c: s["color"] for c, s in plotting.condition_styles(summary, spec).items()}
    # a head changed (random, perturbed, frozen): the same colour in every figure; so the unchanged baseline
    assert styles["fig2"]["class head random"] == styles["fig5"]["class head perturbed"] == \
        styles["fig6"]["class heads frozen"]
    assert styles["fig2"]["aux head random"] == styles["fig5"]["aux head perturbed"] == \
        styles["fig6"]["aux heads frozen"]
    assert styles["fig2"]["student all A"] == styles["fig6"]["baseline"]
    assert len(set(styles["fig2"].values())) == 6 and len(set(styles["fig6"].values())) == 4
    fig = plotting.draw(spec, summary)
    shown = [ax for ax in fig.axes if ax.get_visible() and ax.get_title(loc="left")]
    assert len(shown) == 4  # (a) MNIST, (b) EMNIST, (c, d) cosines
    assert fig.get_size_inches()[0] == pytest.approx(plotting.WIDTH)
    assert shown[0].get_xscale() == "log"
    assert len(shown[0].get_lines()) >= 4 + 1 + 1  # four conditions, teachers, chance


# --------------------------------------------------------------------------------------------------
# Summaries: a known answer, bootstrap independence
# --------------------------------------------------------------------------------------------------


def test_a_point_whose_runs_all_equal_one_half_has_mean_and_interval_one_half():
    spec = tiny_spec([{"name": "a", "grid": {"x": [1, 2, 3]}}])
    table = tiny_table(spec, {("a", 1): [0.5] * 5, ("a", 2): [0.2, 0.4, 0.2, 0.4, 0.2], ("a", 3): [0.7]})
    summary = plotting.summarise(spec, table).set_index("x")
    assert summary.loc[1, ["mean", "ci_low", "ci_high"]].tolist() == [0.5, 0.5, 0.5]
    assert summary.loc[1, "n_seeds"] == 5 and summary.loc[1, "teacher_acc"] == 0.9
    assert summary.loc[1, "chance"] == pytest.approx(0.1)
    assert summary.loc[2, "mean"] == pytest.approx(0.28)
    assert 0.2 <= summary.loc[2, "ci_low"] < 0.28 < summary.loc[2, "ci_high"] <= 0.4
    assert summary.loc[3, "n_seeds"] == 1 and np.isnan(summary.loc[3, "ci_low"])  # one seed: no interval


def test_adding_a_panel_changes_no_other_panels_interval():
    noisy = [0.1, 0.5, 0.3, 0.9, 0.6]
    one = tiny_spec([{"name": "a", "grid": {"x": [1, 2]}}])
    two = tiny_spec([{"name": "b", "grid": {"x": [1, 2, 3]}}, {"name": "a", "grid": {"x": [1, 2]}}])
    values = {("a", 1): noisy, ("a", 2): noisy[::-1]}
    alone = plotting.summarise(one, tiny_table(one, values))
    more = {**values, **{("b", x): noisy for x in (1, 2, 3)}}
    together = plotting.summarise(two, tiny_table(two, more))
    columns = ["x", "mean", "ci_low", "ci_high"]
    pd.testing.assert_frame_equal(alone[columns].reset_index(drop=True),
                                  together.loc[together["panel"] == "a", columns].reset_index(drop=True))
    # the same values at another point (or with another bootstrap seed) get another interval: the
    # generators differ per point, they are not one stream
    assert tuple(alone.iloc[0][["ci_low", "ci_high"]]) != tuple(together.iloc[0][["ci_low", "ci_high"]])
    reseeded = plotting.summarise(tiny_spec([{"name": "a", "grid": {"x": [1, 2]}}], boot_seed=1),
                                  tiny_table(one, values))
    assert not np.allclose(reseeded["ci_low"], alone["ci_low"])


# --------------------------------------------------------------------------------------------------
# fig4: N in noise samples per student epoch, log axes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["config.yaml", "quick.yaml"])
def test_fig4_plots_noise_samples_per_epoch_on_log_axes(config):
    cfg = load_config(config)
    spec = grids.figure_spec(cfg, "fig4")
    table = table_for(cfg, spec)
    summary = plotting.summarise(spec, table)
    per_step = cfg["defaults"]["noise_bsize"]
    heat = summary[summary["panel"] == "m_by_N"]
    assert (heat["x_name"] == "noise_samples").all()
    assert sorted(set(heat["x"])) == [s * per_step for s in spec["panels"][0]["grid"]["noise_steps"]["values"]]
    m1 = summary[summary["panel"] == "m1"]
    assert list(m1["x"]) == [s * per_step for s in spec["panels"][1]["grid"]["noise_steps"]["values"]]
    assert "N = $10^3$" in spec["panels"][2]["title"] and cfg["defaults"]["noise_bsize"] == 1000

    fig = plotting.draw(spec, summary)
    heatmap, m1_axis, n1_axis = [ax for ax in fig.axes if ax.get_title(loc="left")][:3]
    for ax in (heatmap, m1_axis):
        assert ax.get_xscale() == "log" and "noise samples per student epoch" in ax.get_xlabel()
    assert heatmap.get_yscale() == "log" and n1_axis.get_xscale() == "log"
    # the heatmap's cells show their means; its N ticks read as the powers of ten of the sweep beside it
    heat_acc = heat[heat["metric"] == "acc"]
    shown = sorted(f"{v:.2f}" for v in heat_acc["mean"]) if len(heat_acc) <= 64 else []  # the paper's 20 x 20: none
    assert sorted(t.get_text() for t in heatmap.texts) == shown
    assert [plotting.tick_text(v) for v in (16, 1000, 8000, 64000, 1e5)] == [
        "16", "$10^{3}$", "$8{\\times}10^{3}$", "$6.4{\\times}10^{4}$", "$10^{5}$"]


def legend_texts(fig) -> list[str]:
    return [t.get_text() for t in fig.legends[0].get_texts()]


@pytest.mark.parametrize("seeds, says", [((0, 1, 2), "mean of n = 3 seeds, 95% bootstrap interval"),
                                         ((0,), "n = 1 seed per point: no interval")])
def test_a_figure_names_itself_and_says_over_how_many_seeds(seeds, says):
    cfg = load_config("quick.yaml")
    cfg["seeds"] = list(seeds)
    spec = grids.figure_spec(cfg, "fig3")
    fig = plotting.draw(spec, plotting.summarise(spec, table_for(cfg, spec)))
    assert fig.legends[0].get_title().get_text() == f"fig3: {cfg['figures']['fig3']['title']}\n{says}"
    assert "student" not in legend_texts(fig)  # every fig3 condition is named by its m


def test_teacher_lines_in_their_conditions_colours_say_so_in_the_legend():
    spec = tiny_spec([{"name": "a", "grid": {"x": [1, 2]}, "plot": {"label": "A", "axis": "one"}},
                      {"name": "b", "grid": {"x": [1, 2]}, "plot": {"label": "B", "axis": "one"}}])
    table = tiny_table(spec, {(p, x): [0.5, 0.6] for p in ("a", "b") for x in (1, 2)})
    assert "teacher" in legend_texts(plotting.draw(spec, plotting.summarise(spec, table)))
    table.loc[table["panel"] == "b", "teacher_final_acc"] = 0.7  # the two conditions' teachers differ
    texts = legend_texts(plotting.draw(spec, plotting.summarise(spec, table)))
    assert "teacher (in its condition's colour where they differ)" in texts


# --------------------------------------------------------------------------------------------------
# Synthetic data: marked on every summary row made from it
# --------------------------------------------------------------------------------------------------


def test_summary_rows_from_synthetic_data_say_so(tmp_path):
    """A panel on generated MNIST: its rows say "synthetic MNIST" in column `data` (CSV and HTML); a panel on
    real data says nothing there."""
    cfg = {"seeds": [0, 1], "bootstrap": {"resamples": 50, "ci": 0.95, "seed": 0},
           "figures": {"fig2": {"panels": [{"name": "real", "grid": {"x": [1, 2]}},
                                           {"name": "fake", "grid": {"x": [1, 2]}}]}}}
    spec = grids.figure_spec(cfg, "fig2", lambda panel: ["MNIST"] if panel == "fake" else [])
    table = tiny_table(spec, {(p, x): [0.5, 0.6] for p in ("real", "fake") for x in (1, 2)})
    out = run_script("fig2", spec, table, tmp_path)
    summary = pd.read_csv(out.summary, keep_default_na=False)
    assert list(summary.columns) == plotting.SUMMARY_COLUMNS
    assert (summary.loc[summary["panel"] == "fake", "data"] == "synthetic MNIST").all()
    assert (summary.loc[summary["panel"] == "real", "data"] == "").all()
    assert "synthetic MNIST" in Path(out.summary_html).read_text()


# --------------------------------------------------------------------------------------------------
# Colours: from the config's plot hints, the rest from a fixed cycle
# --------------------------------------------------------------------------------------------------

# the paper's colours (Okabe & Ito) as config.yaml and quick.yaml set them
PAPER_COLOURS = {
    "fig2": {"student all A": "#000000", "fc1 random": "#56b4e9", "fc2 random": "#0072b2",
             "fc1, fc2 random": "#e69f00", "class head random": "#d55e00", "aux head random": "#009e73"},
    "fig3": {"student": "#0072b2", "m = 10": "#e69f00", "m = 50": "#8c510a"},
    "fig4": {"student": "#0072b2"},
    "fig5": {"aux head perturbed": "#009e73", "class head perturbed": "#d55e00"},
    "fig6": {"baseline": "#000000", "class heads frozen": "#d55e00", "aux heads frozen": "#009e73",
             "both heads frozen": "#cc79a7"},
}


def styles_of(cfg: dict, figure: str) -> dict[str, str]:
    spec = grids.figure_spec(cfg, figure)
    summary = plotting.summarise(spec, table_for(cfg, spec))
    return {c: s["color"].lower() for c, s in plotting.condition_styles(summary, spec).items()}


@pytest.mark.parametrize("config", ["config.yaml", "quick.yaml"])
def test_paper_figures_keep_their_colours(config):
    cfg = load_config(config)
    for figure, colours in PAPER_COLOURS.items():
        styles = styles_of(cfg, figure)
        assert styles == {c: v for c, v in colours.items() if c in styles}, figure
    assert not hasattr(plotting, "CONDITION_COLOURS")  # no label is known to the plotting code


def test_renaming_a_condition_label_keeps_its_colour():
    """The colour belongs to the condition in the config: a label renamed everywhere the config names it
    keeps its colour."""
    cfg = load_config("config.yaml")
    before = styles_of(cfg, "fig2")
    panel = cfg["figures"]["fig2"]["panels"][0]
    for mapping in (panel["grid"]["student_init"]["labels"], panel["plot"]["names"], panel["plot"].get("colors", {})):
        for old, new in (("rand_fc1", "random_first"), ("same", "all_a")):
            if old in mapping:
                mapping[new] = mapping.pop(old)
    assert styles_of(cfg, "fig2") == before


def test_configured_colours_then_the_cycle_in_order_of_appearance():
    """A configured colour wins; a condition without one takes the next cycle colour that no configured one
    uses; the same condition (legend text) has one colour in every panel of the figure."""
    cfg = {"seeds": [0, 1], "bootstrap": {"resamples": 50, "ci": 0.95, "seed": 0}, "figures": {"figX": {"panels": [
        {"name": "a", "grid": {"x": [1, 2], "k": [1, 2, 3]},
         "plot": {"x": "x", "hue": "k", "colors": {2: "#123456", 3: plotting.COLOUR_CYCLE[0]}}},
        {"name": "b", "grid": {"x": [1, 2], "k": [2, 4]}, "plot": {"x": "x", "hue": "k"}},
        {"name": "c", "grid": {"x": [1, 2]}, "plot": {"color": "#abcdef"}},
    ]}}}
    spec = grids.figure_spec(cfg, "figX")
    rows = [{"figure": "figX", "panel": p["name"], "point": "-", "x": x, "k": k, "seed": s, "num_classes": 10,
             "teacher_final_acc": 0.9, "student_final_acc": 0.5}
            for p in spec["panels"] for x in (1, 2) for k in p["grid"].get("k", {"values": [None]})["values"]
            for s in (0, 1)]
    summary = plotting.summarise(spec, pd.DataFrame(rows))
    styles = {c: s["color"] for c, s in plotting.condition_styles(summary, spec).items()}
    cycle = plotting.COLOUR_CYCLE
    assert styles == {"k = 1": cycle[1], "k = 2": "#123456", "k = 3": cycle[0], "k = 4": cycle[2],
                      "student": "#abcdef"}
