"""Paper figures from a figure's tidy table (one row per run): the summary of every plotted point, then the
panels drawn from that summary.

A point is (figure, panel, metric, hue level, x[, y]). Its summary is the mean over seeds, a bootstrap
confidence interval whose random generator is seeded from the point's identity and the config's
`bootstrap.seed` (so adding a panel, a condition or a grid value changes no other point's interval), the
number of seeds and the teacher's mean accuracy. The summary is written beside the figure
(`figN_summary.csv`, and as HTML for the report), so numbers can be quoted without re-plotting.

Layout: panels whose plot hints name the same `axis` share one axis, each panel a condition (its `label`);
every axis gets an accuracy panel, and the axes whose panels ask for `cosine` get two more (teacher-student
cosine of the class and aux head weights). The panels fill a 7 in wide figure (a two-column page), one
legend on top; a condition's colour comes from the config's plot hints (`colors`, `color`), so the same
condition has the same colour in every figure that gives it the same one.
"""

from __future__ import annotations

import hashlib
import html
import itertools
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from grids import DERIVED, norm, plot_axes  # noqa: E402
from logged import logged  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

WIDTH = 7.0  # inches: a two-column page
ROW_HEIGHT = 2.1
plt.rcParams.update({
    "font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8, "xtick.labelsize": 7.5, "ytick.labelsize": 7.5,
    "legend.fontsize": 7.5, "axes.spines.top": False, "axes.spines.right": False, "axes.linewidth": 0.6,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6, "lines.linewidth": 1.3, "lines.markersize": 3.5,
    "savefig.bbox": "tight", "savefig.pad_inches": 0.02, "pdf.fonttype": 42, "ps.fonttype": 42,
})

# Conditions take their colours from the config (plot hints `colors`, `color`); the others take the next
# colours of this cycle: Okabe & Ito (2008), distinguishable with the common colour-vision deficiencies,
# then sienna, grey and black.
COLOUR_CYCLE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#8C510A", "#999999", "#000000"]
VERMILLION = "#D55E00"  # the synthetic-data footnote
MARKERS = ["o", "s", "D", "^", "v", "P", "X", "<", ">"]
TEACHER = {"color": "0.3", "ls": "--", "lw": 0.9}
CHANCE = {"color": "0.55", "ls": ":", "lw": 1.0}

# metric -> (column of the tidy table, y label, panel title)
METRICS = {
    "acc": ("student_final_acc", "student test accuracy", None),
    "cos_class": ("cos_final_teacher_student_class_head_weight", "cosine, teacher vs student", "class head weights"),
    "cos_aux": ("cos_final_teacher_student_aux_head_weight", "cosine, teacher vs student", "aux head weights"),
}
# `data`: "synthetic MNIST" (or EMNIST, ...) on the rows of a panel computed on generated data, else empty
SUMMARY_COLUMNS = ["figure", "axis", "panel", "metric", "condition", "hue_name", "hue", "x_name", "x", "y_name", "y",
                   "mean", "ci_low", "ci_high", "n_seeds", "teacher_acc", "chance", "data"]


# --------------------------------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------------------------------


def point_rng(seed: int, *identity) -> np.random.Generator:
    """A generator of its own for one point: seeded from the config's bootstrap seed and a stable hash of
    the point's identity (figure, panel, metric, hue level, x, y)."""
    digest = hashlib.sha256("\x1f".join(norm(part) for part in identity).encode()).digest()
    return np.random.default_rng([int(seed), *np.frombuffer(digest[:16], dtype="<u4").tolist()])


def mean_ci(values, rng: np.random.Generator, resamples: int, ci: float) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap interval of the mean (NaN interval for fewer than two values)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan, np.nan, np.nan
    if v.size == 1:
        return float(v[0]), np.nan, np.nan
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    tail = (1 - ci) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(v.mean()), float(low), float(high)


def with_derived(table: pd.DataFrame) -> pd.DataFrame:
    """The table with the derived plot coordinates (noise_samples) and chance (1 / classes)."""
    table = table.copy()
    for name, (a, b) in DERIVED.items():
        if a in table and b in table:
            table[name] = pd.to_numeric(table[a]) * pd.to_numeric(table[b])
    table["chance"] = 1.0 / pd.to_numeric(table["num_classes"])
    return table


def axis_groups(spec: dict) -> dict[str, list[dict]]:
    """Axis name -> its panels, in the config's order (a panel without `axis` has an axis of its own)."""
    groups: dict[str, list[dict]] = {}
    for panel in spec["panels"]:
        groups.setdefault(panel["plot"].get("axis") or panel["name"], []).append(panel)
    return groups


def display_names(panel: dict) -> dict[str, str]:
    return {norm(k): str(v) for k, v in (panel["plot"].get("names") or {}).items()}


def condition_of(panel: dict, hue: str | None, level, shared: bool) -> str:
    """A condition's legend text: the panel's label (or title, on a shared axis), and/or the hue level."""
    plot = panel["plot"]
    own = plot.get("label") or (panel["title"] if shared else "student")
    if hue is None:
        return own
    text = display_names(panel).get(norm(level))
    if text is None:
        labelled = hue in panel["grid"] and panel["grid"][hue]["labels"]
        text = str(level) if labelled else f"{plot.get('huelabel', hue)} = {norm(level)}"
    return f"{own}: {text}" if shared and plot.get("kind", "line") != "points" else text


def _order(panel: dict, name: str | None):
    """Sort key of a coordinate's values: their place in the grid, or their number (derived coordinates)."""
    if name in panel["grid"]:
        place = {norm(v): i for i, v in enumerate(panel["grid"][name]["values"])}
        return lambda v: place.get(norm(v), len(place))
    return lambda v: float(v) if norm(v) else math.inf


def summarise(spec: dict, table: pd.DataFrame) -> pd.DataFrame:
    """One row per plotted point (SUMMARY_COLUMNS), in drawing order."""
    table = with_derived(table)
    boot = spec["bootstrap"]
    resamples, ci, seed = int(boot["resamples"]), float(boot["ci"]), int(boot["seed"])
    rows = []
    for axis, panels in axis_groups(spec).items():
        for panel in panels:
            df = table[table["panel"].astype(str) == panel["name"]]
            x, hue, y = plot_axes(panel)
            levels = panel["grid"][hue]["values"] if hue in panel["grid"] else (
                sorted(df[hue].dropna().unique(), key=_order(panel, hue)) if hue else [None])
            metrics = ["acc"] + (["cos_class", "cos_aux"] if panel["plot"].get("cosine") else [])
            data = f"synthetic {' and '.join(panel['synthetic'])}" if panel.get("synthetic") else ""
            by_x, by_y = _order(panel, x), _order(panel, y)
            for metric in metrics:
                column = METRICS[metric][0]
                for level in levels:
                    part = df if hue is None else df[df[hue].map(norm) == norm(level)]
                    condition = condition_of(panel, hue, level, len(panels) > 1)
                    keys = [k for k in (x, y) if k is not None]
                    groups = part.groupby(keys, sort=False) if keys else ([((), part)] if len(part) else [])
                    points = []
                    for _, group in groups:
                        xv = group[x].iloc[0] if x else panel["plot"].get("label", panel["title"])
                        yv = group[y].iloc[0] if y else np.nan
                        rng = point_rng(seed, spec["figure"], panel["name"], metric, level, xv, yv)
                        mean, low, high = mean_ci(group[column], rng, resamples, ci)
                        finite = np.isfinite(pd.to_numeric(group[column], errors="coerce"))
                        points.append({
                            "figure": spec["figure"], "axis": axis, "panel": panel["name"], "metric": metric,
                            "condition": condition, "hue_name": hue or "", "hue": "" if hue is None else level,
                            "x_name": x or "panel", "x": xv, "y_name": y or "", "y": yv,
                            "mean": mean, "ci_low": low, "ci_high": high,
                            "n_seeds": int(group.loc[finite, "seed"].nunique()),
                            "teacher_acc": float(group["teacher_final_acc"].mean()),
                            "chance": float(group["chance"].mean()), "data": data,
                        })
                    points.sort(key=lambda p: (by_y(p["y"]) if y else 0, by_x(p["x"]) if x else 0))
                    rows += points
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


# --------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------


def configured_colour(panel: dict, hue_level) -> str | None:
    """The colour the config gives a condition of this panel: `colors` per hue value, or `color` (no hue)."""
    plot = panel["plot"]
    if hue_level is None:
        return plot.get("color")
    return {norm(k): v for k, v in (plot.get("colors") or {}).items()}.get(norm(hue_level))


def condition_styles(summary: pd.DataFrame, spec: dict) -> dict[str, dict]:
    """Colour and marker per condition (legend text), the same for a condition in every panel of the figure:
    the colour the config gives it (the first panel that gives one), else the next colour of COLOUR_CYCLE
    that no configured colour takes, in the order the conditions appear."""
    panels = {panel["name"]: panel for panel in spec["panels"]}
    colours = {}
    for row in summary.drop_duplicates(["condition", "panel"]).itertuples(index=False):
        colour = configured_colour(panels[row.panel], row.hue if row.hue_name else None)
        if colour is not None:
            colours.setdefault(row.condition, colour)
    conditions = list(dict.fromkeys(summary["condition"]))
    taken = {c.lower() for c in colours.values()}
    cycle = itertools.cycle([c for c in COLOUR_CYCLE if c.lower() not in taken] or COLOUR_CYCLE)
    for condition in conditions:
        if condition not in colours:
            colours[condition] = next(cycle)
    return {c: {"color": colours[c], "marker": MARKERS[i % len(MARKERS)]} for i, c in enumerate(conditions)}


def is_log(values, setting="auto") -> bool:
    """A log axis for log-spaced positive values (or as the plot hint `logx` says)."""
    if setting != "auto":
        return bool(setting)
    v = np.sort(np.unique(np.asarray(values, dtype=float)))
    if v.size < 2 or v[0] <= 0 or v[-1] / v[0] < 10:
        return False
    if v.size == 2:
        return True
    spread = lambda d: np.std(d) / np.mean(d)  # noqa: E731
    return bool(spread(np.diff(np.log(v))) < spread(np.diff(v)))


def tick_text(value: float) -> str:
    """A tick's text: plain below 1000, else in powers of ten ($10^3$, $8{\\times}10^3$), so that an axis of a
    few values and one of powers of ten beside it read alike."""
    if value < 1000:
        return f"{value:g}"
    exponent = int(math.floor(math.log10(value) + 1e-9))
    mantissa = value / 10**exponent
    head = "" if abs(mantissa - 1) < 1e-9 else f"{mantissa:.2g}{{\\times}}"
    return f"${head}10^{{{exponent}}}$"


def log_ticks(axis, values) -> None:
    """Log-axis ticks: the values themselves when few, powers of ten otherwise."""
    values = sorted(set(float(v) for v in values))
    few = len(values) <= 7 and max(values) < 1e5
    axis.set_major_locator(mticker.FixedLocator(values) if few else mticker.LogLocator(base=10))
    axis.set_major_formatter(mticker.FuncFormatter(lambda v, _: tick_text(v)))
    axis.set_minor_formatter(mticker.NullFormatter())


def _numeric(values) -> bool:
    try:
        [float(v) for v in values]
    except (TypeError, ValueError):
        return False
    return True


def _references(ax, part: pd.DataFrame, positions: dict, styles: dict, segment: float | None) -> bool:
    """Teacher accuracy (dashed) and chance (dotted): one curve when every condition has the same, else
    one per distinct curve (teacher curves then in their conditions' colours: returns True)."""
    coloured = False
    for column, style in (("teacher_acc", TEACHER), ("chance", CHANCE)):
        curves = {}
        for condition, s in part.groupby("condition", sort=False):
            xs = [positions[norm(v)] for v in s["x"]]
            curve = tuple(zip(xs, np.round(s[column].to_numpy(dtype=float), 9), strict=True))
            curves.setdefault(curve, condition)
        for curve, condition in curves.items():
            colour = styles[condition]["color"] if column == "teacher_acc" and len(curves) > 1 else style["color"]
            coloured |= colour != style["color"]
            xs, ys = zip(*sorted(curve), strict=True)
            if segment is None:
                ax.plot(xs, ys, **{**style, "color": colour}, zorder=1)
            else:
                ax.hlines(ys, np.subtract(xs, segment), np.add(xs, segment), **{**style, "color": colour}, zorder=1)
    return coloured


def draw_lines(ax, part: pd.DataFrame, panels: list[dict], metric: str, styles: dict) -> bool:
    """Mean and interval per condition; returns whether teacher curves took their conditions' colours."""
    panel, x = panels[0], part["x_name"].iloc[0]
    xs = list(dict.fromkeys(part["x"].map(norm)))
    numeric = _numeric(xs) and not (x in panel["grid"] and panel["grid"][x]["labels"])
    names = display_names(panel)
    positions = {v: float(v) for v in xs} if numeric else {v: i for i, v in enumerate(xs)}
    size = 3.5 if len(positions) <= 12 else 2.2  # dense grids: smaller markers
    for condition, s in part.groupby("condition", sort=False):
        pos = [positions[norm(v)] for v in s["x"]]
        ax.plot(pos, s["mean"], color=styles[condition]["color"], marker=styles[condition]["marker"], ms=size,
                label=condition, zorder=3)
        if s["ci_low"].notna().any():
            ax.fill_between(pos, s["ci_low"], s["ci_high"], color=styles[condition]["color"], alpha=0.18, lw=0,
                            zorder=2)
    log = numeric and is_log(list(positions.values()), panel["plot"].get("logx", "auto"))
    coloured = False
    if metric == "acc":
        single = len(positions) == 1 or not numeric
        width = 0.35 if not numeric else (0.3 * max(positions.values()) if log else 0.5)
        coloured = _references(ax, part, positions, styles, width if single else None)
    if log:
        ax.set_xscale("log")
        log_ticks(ax.xaxis, positions.values())
    if not numeric:
        ax.set_xticks(list(positions.values()), [names.get(v, v) for v in positions])
        ax.set_xlim(-0.5, len(positions) - 0.5)
    return coloured


def draw_points(ax, part: pd.DataFrame, panels: list[dict], metric: str, styles: dict) -> None:
    """Grouped points: one category per (panel, x value), one point per condition within it."""
    names = {}
    for panel in panels:
        names.update(display_names(panel))
    categories = list(dict.fromkeys(zip(part["panel"], part["x"].map(norm), strict=True)))
    where = {c: i for i, c in enumerate(categories)}
    conditions = list(dict.fromkeys(part["condition"]))
    width = 0.7 / max(len(conditions), 1)
    for j, condition in enumerate(conditions):
        s = part[part["condition"] == condition]
        pos = np.array([where[(p, norm(v))] for p, v in zip(s["panel"], s["x"], strict=True)], dtype=float)
        pos += (j - (len(conditions) - 1) / 2) * width
        err = np.vstack([s["mean"] - s["ci_low"], s["ci_high"] - s["mean"]])
        ax.errorbar(pos, s["mean"], yerr=np.nan_to_num(err), color=styles[condition]["color"],
                    marker=styles[condition]["marker"], ms=4, ls="none", capsize=2, elinewidth=1, label=condition,
                    zorder=3)
        if metric == "acc":
            ax.plot(pos, s["teacher_acc"], ls="none", marker="_", ms=9, mew=1.2, color=TEACHER["color"], zorder=2)
    if metric == "acc":
        chance = part.groupby(["panel", part["x"].map(norm)], sort=False)["chance"].mean()
        for (p, v), value in chance.items():
            i = where[(p, v)]
            ax.hlines(value, i - 0.45, i + 0.45, **CHANCE, zorder=1)
    ax.set_xticks(range(len(categories)), [textwrap.fill(names.get(v, v), 12) for _, v in categories])
    ax.set_xlim(-0.5, len(categories) - 0.5)


def _edges(values, log: bool) -> np.ndarray:
    """Cell edges around sorted values: midpoints (geometric on a log axis), extrapolated at the ends."""
    v = np.log(values) if log else np.asarray(values, dtype=float)
    if v.size == 1:
        inner, step = np.array([]), np.array([np.log(2) if log else 0.5] * 2)
    else:
        inner, step = (v[1:] + v[:-1]) / 2, np.array([v[1] - v[0], v[-1] - v[-2]]) / 2
    e = np.concatenate([[v[0] - step[0]], inner, [v[-1] + step[1]]])
    return np.exp(e) if log else e


def draw_heatmap(ax, part: pd.DataFrame, panels: list[dict], metric: str, fig) -> None:
    panel = panels[0]
    xs = sorted(set(part["x"]), key=_order(panel, part["x_name"].iloc[0]))
    ys = sorted(set(part["y"]), key=_order(panel, part["y_name"].iloc[0]))
    grid = part.pivot_table(index="y", columns="x", values="mean", aggfunc="first").reindex(index=ys, columns=xs)
    values = np.ma.masked_invalid(grid.to_numpy(dtype=float))
    lo, cmap = (0, "viridis") if metric == "acc" else (-1, "RdBu_r")
    if _numeric(xs) and _numeric(ys):
        xlog, ylog = is_log(xs), is_log(ys)
        image = ax.pcolormesh(_edges(np.asarray(xs, float), xlog), _edges(np.asarray(ys, float), ylog), values,
                              cmap=cmap, vmin=lo, vmax=1, shading="flat", rasterized=True)
        for log, scale, axis, vals in ((xlog, ax.set_xscale, ax.xaxis, xs), (ylog, ax.set_yscale, ax.yaxis, ys)):
            if log:
                scale("log")
                log_ticks(axis, vals)
    else:
        image = ax.imshow(values, origin="lower", aspect="auto", cmap=cmap, vmin=lo, vmax=1, interpolation="nearest")
        ax.set_xticks(range(len(xs)), [str(v) for v in xs], rotation=90)
        ax.set_yticks(range(len(ys)), [str(v) for v in ys])
    if values.size <= 64:  # few cells: each shows its value (dark text on the light end of the scale)
        xc = np.asarray(xs, float) if _numeric(xs) and _numeric(ys) else np.arange(len(xs))
        yc = np.asarray(ys, float) if _numeric(xs) and _numeric(ys) else np.arange(len(ys))
        for (i, j), value in np.ndenumerate(values.filled(np.nan)):
            if np.isfinite(value):
                light = (value - lo) / (1 - lo) > 0.6
                ax.text(xc[j], yc[i], f"{value:.2f}", ha="center", va="center", fontsize=6.5,
                        color="black" if light else "white")
    bar = fig.colorbar(image, ax=ax, shrink=0.95, pad=0.02, aspect=25)
    bar.set_label(METRICS[metric][1] + " (mean)")
    if metric == "acc":  # the references on the colour scale, dark on its light end and light on its dark end
        for value, style in ((part["teacher_acc"].mean(), TEACHER), (part["chance"].mean(), CHANCE)):
            bar.ax.axhline(value, **{**style, "color": "black" if value > 0.5 else "white", "lw": 1.3})
    bar.ax.tick_params(labelsize=7)


def seeds_text(summary: pd.DataFrame, spec: dict) -> str:
    """How many seeds each point's mean is over, and what its band is (none with one seed)."""
    low, high = int(summary["n_seeds"].min()), int(summary["n_seeds"].max())
    n = f"n = {low}" if low == high else f"n = {low}-{high}"
    if high < 2:
        return f"{n} seed per point: no interval"
    return f"mean of {n} seeds, {float(spec['bootstrap']['ci']):.0%} bootstrap interval" + (
        " (n = 1: none)" if low < 2 else "")


def draw(spec: dict, summary: pd.DataFrame):
    """The figure: accuracy panels of every axis, then cosine panels where asked, 7 in wide, one legend."""
    groups = axis_groups(spec)
    cells = [(axis, "acc") for axis in groups]
    cos_axes = [a for a, panels in groups.items() if any(p["plot"].get("cosine") for p in panels)]
    cells += [(axis, metric) for axis in cos_axes for metric in ("cos_class", "cos_aux")]
    n = len(cells)
    ncols = n if n <= 3 else 2 if n == 4 else 3
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH, ROW_HEIGHT * nrows + 0.4), squeeze=False,
                             layout="constrained")
    styles = condition_styles(summary, spec)
    coloured_teachers = False
    for k, ((axis, metric), ax) in enumerate(zip(cells, axes.flat, strict=False)):
        panels = groups[axis]
        part = summary[(summary["axis"] == axis) & (summary["metric"] == metric)]
        kind = panels[0]["plot"].get("kind", "line")
        title = panels[0]["title"]
        if any(p["synthetic"] for p in panels):
            title += " *"
        if metric != "acc":
            title = METRICS[metric][2] if len(cos_axes) == 1 else f"{title}: {METRICS[metric][2]}"
        ax.set_title(textwrap.fill(f"({chr(ord('a') + k)}) {title}", 40), loc="left")
        if part.empty:
            ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="0.5")
            continue
        if kind == "heatmap":
            draw_heatmap(ax, part, panels, metric, fig)
            ax.set_ylabel(panels[0]["plot"].get("ylabel", panels[0]["plot"]["y"]))
        else:
            if kind == "points":
                draw_points(ax, part, panels, metric, styles)
            else:
                coloured_teachers |= draw_lines(ax, part, panels, metric, styles)
            ax.set_ylabel(METRICS[metric][1])
            if metric == "acc":
                ax.set_ylim(0, 1.02)
            else:
                ax.axhline(0, color="0.85", lw=0.6, zorder=0)
            ax.grid(alpha=0.3, lw=0.4)
        x = panels[0]["plot"].get("x", part["x_name"].iloc[0])
        ax.set_xlabel(textwrap.fill(panels[0]["plot"].get("xlabel", x or ""), 40))
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    line_axes = [a for a, panels in groups.items() if panels[0]["plot"].get("kind") != "heatmap"]
    drawn = set(summary.loc[summary["axis"].isin(line_axes), "condition"])
    handles = [Line2D([], [], color=s["color"], marker=s["marker"], label=c) for c, s in styles.items() if c in drawn]
    if (summary["metric"] == "acc").any():
        teacher = "teacher (in its condition's colour where they differ)" if coloured_teachers else "teacher"
        handles += [Line2D([], [], **TEACHER, label=teacher), Line2D([], [], **CHANCE, label="chance")]
    # the figure's title and what its points are, above its legend (one layout box)
    title = f"{spec['figure']}: {spec['title']}" + (f"\n{seeds_text(summary, spec)}" if len(summary) else "")
    if handles:
        ncol = len(handles) if len(handles) <= 6 else math.ceil(len(handles) / 2)
        fig.legend(handles=handles, loc="outside upper center", ncol=ncol, frameon=False,
                   handlelength=2.2, columnspacing=1.2, title=title, title_fontproperties={"size": 9})
    else:
        fig.suptitle(title, fontsize=9.5, fontweight="bold")
    if spec["synthetic"]:
        fig.supxlabel(f"* synthetic {' and '.join(spec['synthetic'])}: generated stand-in data, not the real "
                      "dataset; these numbers say nothing about the paper's results", fontsize=7, color=VERMILLION)
    return fig


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def summary_html(spec: dict, summary: pd.DataFrame) -> str:
    """The summary as a small HTML page (the Snakemake report shows HTML, not CSV)."""
    boot = spec["bootstrap"]
    note = (f"Mean over seeds ({len(spec['seeds'])} configured) with a {float(boot['ci']):.0%} bootstrap interval "
            f"({boot['resamples']} resamples, each point its own generator from bootstrap seed {boot['seed']}).")
    if spec["synthetic"]:
        note += f" SYNTHETIC {' and '.join(spec['synthetic'])}: generated data, not the real dataset."
    table = summary.to_html(index=False, na_rep="", border=0, float_format=lambda v: f"{v:.4g}")
    style = ("body{font:13px sans-serif;margin:1em}table{border-collapse:collapse}"
             "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}th{background:#f4f4f4}")
    title = html.escape(f"{spec['figure']}: {spec['title']}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title><style>{style}</style>"
            f"</head><body><h3>{title}</h3><p>{html.escape(note)}</p>\n{table}\n</body></html>\n")


def run(snakemake) -> None:
    """The plot rule's job: summary CSV and HTML, figure PNG and PDF, logged to the rule's log."""
    with logged(snakemake.log[0]):
        spec = snakemake.params.spec
        table = pd.read_csv(snakemake.input.table, low_memory=False)
        summary = summarise(spec, table)
        summary.to_csv(snakemake.output.summary, index=False, float_format="%.10g")
        Path(snakemake.output.summary_html).write_text(summary_html(spec, summary))
        fig = draw(spec, summary)
        fig.savefig(snakemake.output.png, dpi=200)
        fig.savefig(snakemake.output.pdf, metadata={"CreationDate": None})
        plt.close(fig)
        print(f"{spec['figure']}: {len(table)} runs, {len(summary)} plotted points")
