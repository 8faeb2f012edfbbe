"""Figure 2: student accuracy and head cosines vs m for six student-initialisation conditions."""

from plotting import run

run(globals()["snakemake"])  # snakemake: injected by Snakemake's script directive
