"""Figure 4: heatmap of student accuracy over m x N, plus the m = 1 and N = 1 sweeps."""

import matplotlib.pyplot as plt
from plotting import run

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive


def draw(f):
    fig, axes = plt.subplots(1, len(f.panels), figsize=(5.0 * len(f.panels), 4.0), squeeze=False,
                             layout="constrained")
    for ax, panel in zip(axes[0], f.panels, strict=True):
        if panel["plot"].get("kind") == "heatmap":
            f.heatmap_panel(ax, fig, panel)
        else:
            f.line_panel(ax, panel)
    return fig


run(snakemake, draw)
