"""Figure 6: accuracy vs second hidden width D, baselines and frozen heads (with head cosines)."""

from plotting import run

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive
run(snakemake, lambda f: f.panel_grid(f.cosine_rows()))
