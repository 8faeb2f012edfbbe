# Datasets: where each dataset's files are (or are generated), its prepared tensor cache, and the rules
# that make them. Every job reads a prepared cache; only prepare_data writes one.

import glob

from sublearn import dataid  # torch-free: data identities and cache names
from sublearn.catalog import CATALOG, DATASET_KEYS


def data_dir_candidates():
    return config["data_dir"] if isinstance(config["data_dir"], list) else [config["data_dir"]]


def folder_holding(dskey):
    """The first data_dir folder holding a dataset's raw files, or None."""
    info = CATALOG[dskey]
    return next((c.rstrip("/") for c in data_dir_candidates()
                 if all((Path(c) / info.folder / name).is_file() for name in info.files)), None)


def synthetic_keys():
    """Dataset keys replaced by generated data: EMNIST with synthetic_emnist, MNIST with synthetic_mnist
    (true, or auto when no data_dir folder holds the MNIST raw files, e.g. offline)."""
    keys = {k for k, info in CATALOG.items() if info.dataset == "emnist"} if config["synthetic_emnist"] else set()
    mode = config.get("synthetic_mnist", False)
    if mode is True or (mode == "auto" and folder_holding("mnist") is None):
        keys.add("mnist")
    return keys


SYNTHETIC_DIR = config["synthetic"]["dir"].rstrip("/")
SYNTHETIC = synthetic_keys()


def dataset_and_split(dskey):
    info = CATALOG[dskey]
    return info.dataset, info.split or "balanced"


def synthetic_raw_files(dskey):
    info = CATALOG[dskey]
    return [f"{SYNTHETIC_DIR}/data/{info.folder}/{name}" for name in info.files]


def existing_raw_files(dskey):
    """The raw files as prepare_data's input when they are all there (so replacing them reruns it, and
    everything downstream); none when they are to be downloaded."""
    paths = dataid.raw_paths(DATA_DIRS[dskey], *dataset_and_split(dskey))
    return [str(p) for p in paths] if all(p.is_file() for p in paths) else []


def data_identity(dskey):
    """The identity of the data the dataset's runs use now (None: not there yet, to be downloaded or made)."""
    return dataid.current_identity(DATA_DIRS[dskey], *dataset_and_split(dskey), dataid.read_record(CACHE_FILES[dskey]))


def data_change_stamps(dskey):
    """A dataset's marks of changed data, as prepare_data's inputs: one per content its files had when the
    cache held other data. A same-size replacement with the old times put back (cp -p, rsync -a) leaves
    the raw files older than the cache, so their times alone would not rebuild it; a new mark does, and the
    marks already made stay inputs, so the next planning asks for nothing more."""
    cache = CACHE_FILES[dskey]
    marks = sorted(glob.glob(f"{glob.escape(cache[:-3])}.data-*"))
    record, identity = dataid.read_record(cache), data_identity(dskey)
    if record is not None and identity is not None and identity != record.get("identity"):
        marks.append(f"{cache[:-3]}.data-{identity.removeprefix('sha256:')}")
    return sorted(set(marks))


def store(dskey):
    """Where a dataset's runs and teachers live: runs on synthetic data apart (R/synthetic), so that the same
    run key on the real data later is computed, not taken from the synthetic one."""
    return f"{R}/synthetic" if dskey in SYNTHETIC else R


DATA_DIRS = {k: f"{SYNTHETIC_DIR}/data" if k in SYNTHETIC else folder_holding(k) or data_dir_candidates()[-1].rstrip("/")
             for k in DATASET_KEYS}
CACHE_FILES = {k: str(dataid.cache_file(f"{SYNTHETIC_DIR}/cache" if k in SYNTHETIC else config["cache_dir"].rstrip("/"),
                                        *dataset_and_split(k), DATA_DIRS[k])) for k in DATASET_KEYS}
DATASET_OF_CACHE = {v: k for k, v in CACHE_FILES.items()}
DATASET_OF_CACHE_NAME = {Path(v).stem: k for k, v in CACHE_FILES.items()}


rule synthetic_emnist:
    """Tiny generated EMNIST IDX files (quick preset, tests): config synthetic_emnist: true."""
    output:
        expand(
            "{dir}/data/EMNIST/raw/emnist-{{split}}-{part}-ubyte",
            dir=SYNTHETIC_DIR,
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


rule synthetic_mnist:
    """Tiny generated MNIST IDX files in torchvision's layout (same generator as synthetic EMNIST), for
    machines without the real files (config synthetic_mnist: true, or auto when no data_dir folder holds
    them)."""
    output:
        synthetic_raw_files("mnist"),
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


rule prepare_data:
    """Parse the IDX files (downloading them into data_dir when absent), hash them and cache them as tensors
    with the data's identity. The raw files are inputs, so replacing them reruns this and every job that
    reads the cache; jobs only read it (--cache-only)."""
    input:
        raw=lambda w: existing_raw_files(DATASET_OF_CACHE_NAME[w.cache]),
        changed=lambda w: data_change_stamps(DATASET_OF_CACHE_NAME[w.cache]),
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
        changed=lambda w: data_change_stamps(DATASET_OF_CACHE_NAME[w.cache]),
    output:
        cache=f"{SYNTHETIC_DIR}/cache/{{cache}}.pt",
        record=f"{SYNTHETIC_DIR}/cache/{{cache}}.json",
    log:
        f"{LOGS}/data/synthetic-{{cache}}.log",


rule data_changed:
    """A mark that a dataset's files now hold other data than its cache (see data_change_stamps)."""
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
