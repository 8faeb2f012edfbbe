"""Write tiny synthetic IDX files (torchvision layout) for the quick preset and the tests: EMNIST (rule
synthetic_emnist, one split per job) and MNIST (rule synthetic_mnist, params.dataset "mnist")."""

from pathlib import Path

from logged import logged

from sublearn.idx import write_synthetic_dataset

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive

with logged(snakemake.log[0]):
    dataset = snakemake.params.get("dataset", "emnist")
    split = snakemake.wildcards.get("split", "balanced")
    name = "MNIST" if dataset == "mnist" else f"EMNIST ({split})"
    # outputs are <dir>/data/<MNIST|EMNIST>/raw/<file>: the torchvision root is three levels up
    root = Path(snakemake.output[0]).parents[2]
    folder = write_synthetic_dataset(root, dataset, split, n_train=snakemake.params.n_train,
                                     n_test=snakemake.params.n_test, seed=snakemake.params.seed)
    missing = [f for f in snakemake.output if not Path(f).is_file()]
    if missing:
        raise SystemExit(f"synthetic {name}: expected files were not written: {missing}")
    print(f"synthetic {name} written to {folder}")
