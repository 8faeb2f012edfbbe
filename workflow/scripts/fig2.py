"""Figure 2: student accuracy and head cosines vs m for six student-initialisation conditions."""

from plotting import run

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive
run(snakemake, lambda f: f.panel_grid(f.cosine_rows()))
