"""Figure 5: student accuracy and head cosines vs the std of a head perturbation before distillation, the
aux-head and class-head perturbations on one axis."""

from plotting import run

run(globals()["snakemake"])  # snakemake: injected by Snakemake's script directive
