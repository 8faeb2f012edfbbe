"""Figure 5: student accuracy and head cosines vs the std of a head perturbation before distillation."""

from plotting import run

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive
run(snakemake, lambda f: f.panel_grid(f.cosine_rows()))
