"""Write one dataset's tiny synthetic IDX files (torchvision layout) for the quick preset and the tests: the
rule synthetic_<dataset key> of workflow/rules/data.smk, its dataset and split in its params."""

from pathlib import Path

from logged import logged

from sublearn.catalog import dataset_info
from sublearn.idx import write_synthetic_dataset

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive

with logged(snakemake.log[0]):
    params = snakemake.params
    # outputs are <root>/<the catalog's folder>/<file>: the torchvision root is that many levels up
    root = Path(snakemake.output[0]).parents[len(Path(dataset_info(params.dataset, params.split).folder).parts)]
    folder = write_synthetic_dataset(root, params.dataset, params.split, n_train=params.n_train,
                                     n_test=params.n_test, seed=params.seed)
    missing = [f for f in snakemake.output if not Path(f).is_file()]
    if missing:
        raise SystemExit(f"synthetic {params.name}: expected files were not written: {missing}")
    print(f"synthetic {params.name} written to {folder}")
