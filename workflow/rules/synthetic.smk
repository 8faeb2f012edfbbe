# Generated MNIST for machines without the real files (config synthetic_mnist: true, or auto when no
# data_dir folder holds them). Synthetic EMNIST is made by the synthetic_emnist rule (data.smk); both
# go through prepare_synthetic_data into their own cache, and their runs live in R/synthetic/.


rule synthetic_mnist:
    """Tiny generated MNIST IDX files in torchvision's layout (same generator as synthetic EMNIST)."""
    output:
        expand(
            "{dir}/data/MNIST/raw/{name}",
            dir=config["synthetic"]["dir"].rstrip("/"),
            name=raw_files_of("mnist")[1],
        ),
    log:
        f"{LOGS}/data/synthetic-mnist.log",
    params:
        dataset="mnist",
        n_train=config["synthetic"]["n_train"],
        n_test=config["synthetic"]["n_test"],
        seed=config["synthetic"]["seed"],
    threads: 1
    resources:
        mem_mb=config["resources"]["data"].get("mem_mb", 4000),
        runtime=config["resources"]["data"].get("runtime", 30),
    localrule: True
    conda:
        TORCH_ENV
    script:
        "../scripts/synthetic_emnist.py"
