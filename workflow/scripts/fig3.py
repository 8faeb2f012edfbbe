"""Figure 3: EMNIST class count, student first-layer width, student depth, CNN student."""

from plotting import run

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive
run(snakemake, lambda f: f.panel_grid(["acc"]))
