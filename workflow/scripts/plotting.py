"""Shared plotting helpers for the figure scripts: loading, bootstrap summaries, panels, saving."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from logged import logged  # noqa: E402

# Okabe & Ito (2008): distinguishable with the common colour-vision deficiencies
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
METRICS = {
    "acc": ("student_final_acc", "student test accuracy"),
    "cos_class": ("cos_final_teacher_student_class_head_weight", "cos(teacher, student)\nclass_head weight"),
    "cos_aux": ("cos_final_teacher_student_aux_head_weight", "cos(teacher, student)\naux_head weight"),
}
UNSET = object()


def norm(value):
    """One spelling per grid value, whether the CSV stored it as 10, 10.0 or '10'."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if number.is_integer() else repr(number)


def same_value(series, value):
    return series.map(norm) == norm(value)

plt.rcParams.update({
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7.5,
    "axes.spines.top": False, "axes.spines.right": False, "savefig.bbox": "tight",
    "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO),
})


class Figure:
    """A figure's spec (from the workflow) and its tidy table."""

    def __init__(self, snakemake):
        self.smk = snakemake
        self.spec = snakemake.params.spec
        self.table = pd.read_csv(snakemake.input.table, low_memory=False)
        boot = self.spec["bootstrap"]
        self.resamples, self.ci = int(boot["resamples"]), float(boot["ci"])
        self.rng = np.random.default_rng(int(boot["seed"]))
        self.panels = self.spec["panels"]

    def data(self, panel):
        return self.table[self.table["panel"].astype(str) == panel["name"]]

    # ---- summaries -------------------------------------------------------------------------------

    def mean_ci(self, values):
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return np.nan, np.nan, np.nan
        if v.size == 1:
            return float(v[0]), np.nan, np.nan
        means = v[self.rng.integers(0, v.size, size=(self.resamples, v.size))].mean(axis=1)
        tail = (1 - self.ci) / 2
        lo, hi = np.quantile(means, [tail, 1 - tail])
        return float(v.mean()), float(lo), float(hi)

    def summary(self, df, keys, column):
        rows = []
        for key, group in df.groupby(keys, sort=False, dropna=False):
            key = key if isinstance(key, tuple) else (key,)
            rows.append((*key, *self.mean_ci(group[column])))
        return pd.DataFrame(rows, columns=[*keys, "mean", "lo", "hi"])

    # ---- panels ----------------------------------------------------------------------------------

    def axes_of(self, panel):
        grid, plot = panel["grid"], panel["plot"]
        names = list(grid)
        x = plot.get("x") or names[0]
        hue = plot.get("hue", UNSET)
        if hue is UNSET:
            others = [n for n in names if n != x]
            hue = others[0] if others else None
        return x, hue

    def x_positions(self, panel, x):
        """Numeric grids of 3+ values are plotted as numbers; labelled, text or 1-2 values as categories."""
        info = panel["grid"].get(x, {"values": sorted(self.data(panel)[x].dropna().unique()), "labels": False})
        values = info["values"]
        numeric = not info["labels"] and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if numeric and len(values) > 2:
            return values, None
        return values, {norm(v): i for i, v in enumerate(values)}

    def log_x(self, panel, x, values, categories):
        setting = panel["plot"].get("logx", "auto")
        if categories is not None:
            return False
        if setting != "auto":
            return bool(setting)
        v = np.sort(np.asarray(values, dtype=float))
        if v.size < 3 or v[0] <= 0 or v[-1] / v[0] < 10:
            return False
        spread = lambda d: np.std(d) / np.mean(d)  # noqa: E731
        return bool(spread(np.diff(np.log(v))) < spread(np.diff(v)))

    def line_panel(self, ax, panel, metric="acc", references=True, legend=True, title=True):
        column, ylabel = METRICS[metric]
        df = self.data(panel)
        x, hue = self.axes_of(panel)
        values, categories = self.x_positions(panel, x)
        def xpos(col):
            return col.map(lambda v: categories.get(norm(v), np.nan)) if categories else pd.to_numeric(col)
        levels = panel["grid"][hue]["values"] if hue else [None]
        for i, level in enumerate(levels):
            part = df if hue is None else df[same_value(df[hue], level)]
            if part.empty:
                continue
            s = self.summary(part, [x], column)
            s["_x"] = xpos(s[x])
            s = s.sort_values("_x")
            colour = OKABE_ITO[i % len(OKABE_ITO)]
            label = "student" if hue is None else f"{level}"
            ax.plot(s["_x"], s["mean"], marker="o", ms=3, lw=1.4, color=colour, label=label)
            if s["lo"].notna().any():
                ax.fill_between(s["_x"], s["lo"], s["hi"], color=colour, alpha=0.2, lw=0)
        if metric == "acc" and references:
            ref = df.assign(_chance=1.0 / df["num_classes"].astype(float))
            for col, style, label in (("teacher_final_acc", "--", "teacher"), ("_chance", ":", "chance")):
                s = self.summary(ref, [x], col)
                s["_x"] = xpos(s[x])
                s = s.sort_values("_x")
                ax.plot(s["_x"], s["mean"], style, color="0.25" if col != "_chance" else "0.55", lw=1.1,
                        label=label, marker="_" if len(s) < 3 else None, ms=14)
            ax.set_ylim(0, 1.02)
        elif metric != "acc":
            ax.axhline(0, color="0.8", lw=0.8, zorder=0)
        if self.log_x(panel, x, values, categories):
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            if len(values) <= 8:
                ax.set_xticks(values)
        if categories:
            ax.set_xticks(range(len(categories)), [str(v) for v in values])
            ax.set_xlim(-0.5, len(categories) - 0.5)
        ax.set_xlabel(panel["plot"].get("xlabel", x))
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(self.panel_title(panel))
        ax.grid(alpha=0.25, lw=0.5)
        if legend:
            ax.legend(title=panel["plot"].get("huelabel", hue) if hue else None, frameon=False,
                      loc="upper left", bbox_to_anchor=(1.0, 1.0), borderaxespad=0.3)

    def heatmap_panel(self, ax, fig, panel, metric="acc"):
        column, label = METRICS[metric]
        plot = panel["plot"]
        x, y = plot["x"], plot["y"]
        s = self.summary(self.data(panel), [y, x], column)
        xs, ys = panel["grid"][x]["values"], panel["grid"][y]["values"]
        grid = s.pivot(index=y, columns=x, values="mean").reindex(index=ys, columns=xs)
        image = ax.imshow(grid.to_numpy(dtype=float), origin="lower", aspect="auto", cmap="viridis",
                          vmin=0, vmax=1, interpolation="nearest")
        step = lambda n: max(1, int(np.ceil(n / 10)))  # noqa: E731
        ax.set_xticks(range(0, len(xs), step(len(xs))), [str(v) for v in xs][:: step(len(xs))], rotation=90)
        ax.set_yticks(range(0, len(ys), step(len(ys))), [str(v) for v in ys][:: step(len(ys))])
        ax.set_xlabel(plot.get("xlabel", x))
        ax.set_ylabel(plot.get("ylabel", y))
        ax.set_title(self.panel_title(panel) + " (mean over seeds)")
        fig.colorbar(image, ax=ax, label=label, shrink=0.9)

    def panel_title(self, panel):
        return panel["title"] + (" [synthetic EMNIST]" if panel["synthetic"] else "")

    # ---- layout and output -----------------------------------------------------------------------

    def panel_grid(self, rows):
        """One column per panel, one row per metric; a metric row is drawn only where the panel asks."""
        n = len(self.panels)
        fig, axes = plt.subplots(len(rows), n, figsize=(4.6 * n, 2.7 * len(rows) + 0.8), squeeze=False,
                                 layout="constrained")
        for j, panel in enumerate(self.panels):
            for i, metric in enumerate(rows):
                if metric != "acc" and not panel["plot"].get("cosine", False):
                    axes[i][j].set_visible(False)
                    continue
                self.line_panel(axes[i][j], panel, metric, legend=i == 0, title=i == 0)
        return fig

    def cosine_rows(self):
        wanted = any(p["plot"].get("cosine", False) for p in self.panels)
        return ["acc", "cos_class", "cos_aux"] if wanted else ["acc"]

    def save(self, fig):
        seeds = self.table["seed"].nunique()
        note = f"mean over {seeds} seed{'s' if seeds != 1 else ''}, shaded: {self.ci:.0%} bootstrap CI"
        if any(p["synthetic"] for p in self.panels):
            note += "; EMNIST panels use SYNTHETIC data (quick preset), not the real dataset"
        fig.suptitle(f"{self.spec['title']}\n{note}", fontsize=10)
        fig.savefig(self.smk.output.png, dpi=150)
        fig.savefig(self.smk.output.pdf, metadata={"CreationDate": None})
        plt.close(fig)


def run(snakemake, draw):
    """Log to the rule's log file, build the figure with draw(Figure) and save it."""
    with logged(snakemake.log[0]):
        figure = Figure(snakemake)
        figure.save(draw(figure))
        print(f"{figure.spec['figure']}: {len(figure.table)} runs plotted")
