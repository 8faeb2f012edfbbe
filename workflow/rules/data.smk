# Datasets: prepared once into tensor caches that every teacher and student job reads.


rule synthetic_emnist:
    """Tiny generated EMNIST IDX files (quick preset, tests): config synthetic_emnist: true."""
    output:
        expand(
            "{dir}/data/EMNIST/raw/emnist-{{split}}-{part}-ubyte",
            dir=config["synthetic"]["dir"].rstrip("/"),
            part=["train-images-idx3", "train-labels-idx1", "test-images-idx3", "test-labels-idx1"],
        ),
    log:
        f"{LOGS}/data/synthetic-emnist-{{split}}.log",
    params:
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


rule prepare_data:
    """Parse the IDX files (downloading them into data_dir when absent) and cache them as tensors."""
    output:
        cache=f"{config['cache_dir'].rstrip('/')}/{{dskey}}.pt",
    log:
        f"{LOGS}/data/{{dskey}}.log",
    params:
        dataset=lambda w: w.dskey.split("-")[0],
        split=lambda w: (w.dskey.split("-") + ["balanced"])[1],
        data_dir=lambda w: DATA_DIRS[w.dskey],
        cache_dir=lambda w, output: os.path.dirname(output.cache),
    threads: 1
    resources:
        mem_mb=config["resources"]["data"].get("mem_mb", 4000),
        runtime=config["resources"]["data"].get("runtime", 30),
    localrule: True
    conda:
        TORCH_ENV
    shell:
        "python -m sublearn.cli prepare-data --dataset {params.dataset} --emnist-split {params.split} "
        "--data-dir {params.data_dir:q} --cache-dir {params.cache_dir:q} > {log:q} 2>&1 "
        "|| {{ tail -n 3 {log:q} >&2; exit 1; }}"


use rule prepare_data as prepare_synthetic_data with:
    input:
        raw=lambda w: synthetic_raw_files(w.dskey),
    output:
        cache=f"{config['synthetic']['dir'].rstrip('/')}/cache/{{dskey}}.pt",
    log:
        f"{LOGS}/data/synthetic-{{dskey}}.log",
