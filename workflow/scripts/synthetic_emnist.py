"""Write tiny synthetic EMNIST IDX files (torchvision layout) for the quick preset and the tests."""

from pathlib import Path

from logged import logged

from sublearn.idx import write_synthetic_dataset

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive

with logged(snakemake.log[0]):
    # outputs are <dir>/data/EMNIST/raw/<file>: the torchvision root is three levels up
    root = Path(snakemake.output[0]).parents[2]
    folder = write_synthetic_dataset(root, "emnist", snakemake.wildcards.split, n_train=snakemake.params.n_train,
                                     n_test=snakemake.params.n_test, seed=snakemake.params.seed)
    missing = [f for f in snakemake.output if not Path(f).is_file()]
    if missing:
        raise SystemExit(f"synthetic EMNIST: expected files were not written: {missing}")
    print(f"synthetic EMNIST ({snakemake.wildcards.split}) written to {folder}")
