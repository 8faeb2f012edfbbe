# Datasets: where each dataset's files are (or are generated), its prepared tensor cache, and the rules
# that make them. Every job reads a prepared cache; only prepare_data writes one.

import data_locations  # workflow/scripts: where each dataset is, its cache and identity (from the catalog)

DATA = data_locations.DataLocations(config, R)
SYNTHETIC, SYNTHETIC_DIR = DATA.synthetic, DATA.synthetic_dir
DATA_DIRS, CACHE_FILES = DATA.data_dirs, DATA.cache_files
DATASET_OF_CACHE, DATASET_OF_CACHE_NAME = DATA.dataset_of_cache, DATA.dataset_of_cache_name
dataset_and_split, data_identity, store = data_locations.dataset_and_split, DATA.identity, DATA.store


# one rule per catalog entry (synthetic_mnist, synthetic_emnist_balanced, ...): only the generated datasets
# (DATA.synthetic) are ever asked for
for _key, _info in CATALOG.items():

    rule:
        """Tiny generated IDX files of one dataset in torchvision's layout (quick preset, tests; config
        synthetic_emnist: true, synthetic_mnist: true or auto), for machines without the real files."""
        name:
            DATA.synthetic_rule_name(_key)
        output:
            DATA.synthetic_raw_files(_key),
        log:
            f"{LOGS}/data/synthetic-{_key}.log",
        params:
            dataset=_info.dataset,
            split=dataset_and_split(_key)[1],
            name=_key,
            n_train=config["synthetic"]["n_train"],
            n_test=config["synthetic"]["n_test"],
            seed=config["synthetic"]["seed"],
        threads: 1
        resources:
            **jobs.rule_resources(config, "data"),
        localrule: True
        conda:
            TORCH_ENV
        script:
            "../scripts/synthetic_data.py"


rule prepare_data:
    """Parse the IDX files (downloading them into data_dir when absent), hash them and cache them as tensors
    with the data's identity. The raw files are inputs, so replacing them reruns this and every job that
    reads the cache; jobs only read it (--cache-only)."""
    input:
        raw=lambda w: DATA.existing_raw_files(DATASET_OF_CACHE_NAME[w.cache]),
        changed=lambda w: DATA.change_marks(DATASET_OF_CACHE_NAME[w.cache]),
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
        **jobs.rule_resources(config, "data"),
    localrule: True
    conda:
        TORCH_ENV
    shell:
        "python -m sublearn.cli prepare-data --dataset {params.dataset} --emnist-split {params.split} "
        "--data-dir {params.data_dir:q} --cache-dir {params.cache_dir:q} > {log:q} 2>&1 "
        "|| {{ tail -n 3 {log:q} >&2; exit 1; }}"


use rule prepare_data as prepare_synthetic_data with:
    input:
        raw=lambda w: DATA.synthetic_raw_files(DATASET_OF_CACHE_NAME[w.cache]),
        changed=lambda w: DATA.change_marks(DATASET_OF_CACHE_NAME[w.cache]),
    output:
        cache=f"{SYNTHETIC_DIR}/cache/{{cache}}.pt",
        record=f"{SYNTHETIC_DIR}/cache/{{cache}}.json",
    log:
        f"{LOGS}/data/synthetic-{{cache}}.log",


rule data_changed:
    """A mark that a dataset's files now hold other data than its cache (see DataLocations.change_marks)."""
    output:
        mark="{prefix}.data-{digest}",
    log:
        f"{LOGS}/data/changed/{{prefix}}.data-{{digest}}.log",
    wildcard_constraints:
        digest=r"[0-9a-f]{16}",
    threads: 1
    localrule: True
    conda:
        "../../envs/plot.yaml"
    shell:
        "echo 'the data files changed since {wildcards.prefix}.pt was prepared' > {output.mark:q} 2> {log:q}"
