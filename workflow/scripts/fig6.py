"""Figure 6: accuracy vs second hidden width D, the four MNIST conditions (baseline, class heads, aux heads
or both frozen) on one axis beside the EMNIST baseline, and the MNIST head cosines."""

from plotting import run

run(globals()["snakemake"])  # snakemake: injected by Snakemake's script directive
