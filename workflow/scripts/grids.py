"""The grid language of the workflow config, and what a plot script needs to know about a figure.

One module for the Snakefile (planning, in workflow/rules/common.smk), the plot scripts and the tests.
It needs numpy only, so it works in the plotting environment and in Snakemake's own interpreter.
"""

from __future__ import annotations

import math
import re

import numpy as np

LABEL_RE = re.compile(r"[^A-Za-z0-9.+-]+")
# Plot coordinates computed from a run's own columns (a product): plot hints may use them as x, y or hue.
DERIVED = {"noise_samples": ("noise_steps", "noise_bsize")}  # noise images per student epoch


class GridError(ValueError):
    """A grid or plot hint that cannot work; the message names the figure, panel and value."""


def expand_values(spec, where: str) -> list[tuple[str, object]]:
    """A value spec -> list of (label, value). Labels name points on disk and in legends."""
    if isinstance(spec, list):
        values = spec
    elif "range" in spec:
        a = spec["range"]
        if len(a) > 2 and a[2] < 1:
            raise GridError(f"config: {where}: range {a}: the step must be an integer >= 1")
        values = list(range(a[0], a[1] + 1, a[2] if len(a) > 2 else 1))
    elif "linspace" in spec:
        start, stop, count = spec["linspace"]
        values = [float(v) for v in np.linspace(start, stop, int(count))]
        if spec.get("decimals") is not None:
            # what a shell loop passes after printing the values with `printf %.Nf`: the decimal text, read back
            values = [float(format(v, f".{int(spec['decimals'])}f")) for v in values]
    elif "sqrt2_steps" in spec:
        k0, k1 = spec["sqrt2_steps"]
        values = [int(v) for v in np.unique(np.round(np.sqrt(2.0) ** np.arange(k0, k1 + 1)))]
    elif "labels" in spec:
        return [(str(k), v) for k, v in spec["labels"].items()]
    else:  # the schema makes this unreachable
        raise GridError(f"config: {where}: unknown value generator {sorted(spec)}")
    if not values:
        raise GridError(f"config: {where}: the generator {spec} gives no values")
    return [(value_label(v), v) for v in values]


def value_label(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(value, ".6g")
    return LABEL_RE.sub(".", str(value)).strip(".") or "empty"


def norm(value) -> str:
    """One spelling per grid value, whether a CSV stored it as 10, 10.0 or '10' (or YAML wrote a key as 10)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return ""
    return str(int(number)) if number.is_integer() else repr(number)


def expand_seeds(spec) -> list[int]:
    if isinstance(spec, list):
        return sorted(set(spec))
    a, b = spec["range"]
    return list(range(a, b + 1))


# --------------------------------------------------------------------------------------------------
# Plot hints
# --------------------------------------------------------------------------------------------------


def plot_axes(panel: dict) -> tuple[str | None, str | None, str | None]:
    """(x, hue, y) of a panel: its plot hints, else x = the first grid coordinate, hue = the second."""
    plot, names = panel.get("plot") or {}, list(panel["grid"])
    x = plot["x"] if "x" in plot else names[0]
    if "hue" in plot:
        hue = plot["hue"]
    else:  # not a coordinate that x or y is (or is derived from)
        taken = {x, plot.get("y"), *DERIVED.get(x, ()), *DERIVED.get(plot.get("y"), ())}
        others = [n for n in names if n not in taken]
        hue = others[0] if others and plot.get("kind") != "heatmap" else None
    return x, hue, plot.get("y")


def check_plot(panel: dict, where: str) -> None:
    """Refuse plot hints that name no coordinate of the panel."""
    plot, grid = panel.get("plot") or {}, panel["grid"]
    kind = plot.get("kind", "line")
    x, hue, y = plot_axes(panel)
    for role, name in (("x", x), ("hue", hue), ("y", y)):
        if name is not None and name not in grid and name not in DERIVED:
            known = ", ".join([*grid, *DERIVED])
            raise GridError(f"config: {where}: plot {role} {name!r} is neither a grid coordinate of this panel "
                            f"nor a derived one (allowed: {known})")
    if x is None and kind != "points":
        raise GridError(f"config: {where}: plot x null is for kind points only (the panel is one category)")
    if kind == "heatmap" and y is None:
        raise GridError(f"config: {where}: a heatmap needs plot y (its rows)")
    if kind != "heatmap" and y is not None:
        raise GridError(f"config: {where}: plot y is for kind heatmap only")
    if hue is not None and "color" in plot:
        raise GridError(f"config: {where}: plot color is the colour of a panel that is one condition (no hue); "
                        f"give the colours of the {hue} values in plot colors")

    check_names(plot, grid, x, hue, kind, where)


def check_names(plot: dict, grid: dict, x, hue, kind: str, where: str) -> None:
    """Refuse `names` and `colors` keys that name no value the plot shows: `names` renames conditions (hue
    values) and categories (x values of a points plot, or of a line plot whose x is not a number axis),
    `colors` colours conditions. Values of a derived coordinate come from the runs: not checked here."""

    def shown(name):  # a coordinate's values as the figure names them (the label of a labelled value)
        labelled = isinstance(grid[name], dict) and "labels" in grid[name]
        return labelled, [norm(label if labelled else value)
                          for label, value in expand_values(grid[name], f"{where}, grid {name}")]

    if hue in DERIVED or (x in DERIVED and kind == "points"):
        return
    conditions = shown(hue)[1] if hue is not None else []
    categories = []
    if x is not None and x in grid and kind != "heatmap":
        labelled, values = shown(x)
        if kind == "points" or labelled or not all(_numeric(v) for v in values):
            categories = values
    for key, known, what in (("names", conditions + categories, "hue value or x category"),
                             ("colors", conditions, "hue value")):
        unknown = [norm(k) for k in plot.get(key) or {} if norm(k) not in known]
        if unknown:
            raise GridError(f"config: {where}: plot {key} {unknown[0]!r} is not a {what} of this panel "
                            f"(known: {', '.join(dict.fromkeys(known)) or 'none'})")


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def figure_spec(cfg: dict, figure: str, synthetic_of=lambda panel: []) -> dict:
    """What a plot script needs to know about a figure: titles, grids, plot hints, seeds, bootstrap, and
    per panel the datasets that are synthetic (`synthetic_of(panel_name)`, e.g. ["MNIST"])."""
    fig = cfg["figures"][figure]
    panels = []
    for panel in fig["panels"]:
        where = f"figure {figure}, panel {panel['name']}"
        check_plot(panel, where)
        grid = {}
        for name, spec in panel["grid"].items():
            kind = next(iter(spec)) if isinstance(spec, dict) else "list"
            values = expand_values(spec, f"{where}, grid {name}")
            grid[name] = {"generator": kind, "labels": kind == "labels",
                          "values": [label if kind == "labels" else value for label, value in values]}
        panels.append({"name": panel["name"], "title": panel.get("title", panel["name"]), "grid": grid,
                       "plot": dict(panel.get("plot") or {}), "synthetic": sorted(synthetic_of(panel["name"]))})
    return {"figure": figure, "title": fig.get("title", figure), "panels": panels,
            "synthetic": sorted({d for p in panels for d in p["synthetic"]}),
            "seeds": expand_seeds(fig.get("seeds", cfg["seeds"])), "bootstrap": dict(cfg["bootstrap"])}
