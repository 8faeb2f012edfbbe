"""Figure 4: student accuracy over aux width m x noise samples per student epoch N (heatmap, log axes),
plus the m = 1 and the fixed-budget (N = 10^3) sweeps."""

from plotting import run

run(globals()["snakemake"])  # snakemake: injected by Snakemake's script directive
