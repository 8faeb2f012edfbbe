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
    """Parse the IDX files (downloading them into data_dir when absent), hash them and cache them as tensors
    with the data's identity. The raw files are inputs, so replacing them reruns this and every job that
    reads the cache; jobs only read it (--cache-only)."""
    input:
        raw=lambda w: existing_raw_files(DATASET_OF_CACHE_NAME[w.cache]),
    output:
        cache=f"{config['cache_dir'].rstrip('/')}/{{cache}}.pt",
        record=f"{config['cache_dir'].rstrip('/')}/{{cache}}.json",
    log:
        f"{LOGS}/data/{{cache}}.log",
    params:
        dataset=lambda w: dataset_and_split(DATASET_OF_CACHE_NAME[w.cache])[0],
        split=lambda w: dataset_and_split(DATASET_OF_CACHE_NAME[w.cache])[1],
        data_dir=lambda w: DATA_DIRS[DATASET_OF_CACHE_NAME[w.cache]],
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
        raw=lambda w: synthetic_raw_files(DATASET_OF_CACHE_NAME[w.cache]),
    output:
        cache=f"{config['synthetic']['dir'].rstrip('/')}/cache/{{cache}}.pt",
        record=f"{config['synthetic']['dir'].rstrip('/')}/cache/{{cache}}.json",
    log:
        f"{LOGS}/data/synthetic-{{cache}}.log",
