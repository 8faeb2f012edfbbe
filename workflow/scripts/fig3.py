"""Figure 3: EMNIST class count, student first-layer width (m 10 and 50), and the other student
architectures (one hidden layer fewer or more, a CNN) as grouped points."""

from plotting import run

run(globals()["snakemake"])  # snakemake: injected by Snakemake's script directive
