"""Where each dataset's files are (or are generated) for the workflow, its prepared cache, the identity of
its data now and where its runs live. A plain module (no Snakemake); workflow/rules/data.smk holds one
instance and the data rules."""

from __future__ import annotations

import glob
from pathlib import Path

from sublearn import dataid  # torch-free: data identities and cache names
from sublearn.catalog import CATALOG
from sublearn.config import ExperimentConfig


def dataset_and_split(dskey):
    """A dataset key's --dataset and --emnist-split values (a dataset without splits: the default split,
    which it ignores)."""
    info = CATALOG[dskey]
    return info.dataset, info.split or ExperimentConfig.emnist_split


class DataLocations:
    def __init__(self, cfg, results_dir):
        self.cfg, self.results_dir = cfg, results_dir
        self.synthetic_dir = cfg["synthetic"]["dir"].rstrip("/")
        self.synthetic = self._synthetic_keys()
        self.data_dirs = {k: f"{self.synthetic_dir}/data" if k in self.synthetic
                          else self.folder_holding(k) or self.candidates()[-1].rstrip("/") for k in CATALOG}
        self.cache_files = {
            k: str(dataid.cache_file(f"{self.synthetic_dir}/cache" if k in self.synthetic
                                     else cfg["cache_dir"].rstrip("/"), *dataset_and_split(k), self.data_dirs[k]))
            for k in CATALOG}
        self.dataset_of_cache = {v: k for k, v in self.cache_files.items()}
        self.dataset_of_cache_name = {Path(v).stem: k for k, v in self.cache_files.items()}

    def candidates(self):
        data_dir = self.cfg["data_dir"]
        return data_dir if isinstance(data_dir, list) else [data_dir]

    def folder_holding(self, dskey):
        """The first data_dir folder holding a dataset's raw files, or None."""
        info = CATALOG[dskey]
        return next((c.rstrip("/") for c in self.candidates()
                     if all((Path(c) / info.folder / name).is_file() for name in info.files)), None)

    def _synthetic_keys(self):
        """Dataset keys replaced by generated data: those whose catalog entry names a config key
        (``synthetic_setting``: synthetic_mnist, synthetic_emnist) that is true, or auto when no data_dir
        folder holds the dataset's raw files (e.g. offline)."""
        return {k for k in CATALOG if self.synthetic_mode(k) is True
                or (self.synthetic_mode(k) == "auto" and self.folder_holding(k) is None)}

    def synthetic_mode(self, dskey):
        """The config's setting that replaces the dataset by generated data (False where it has none)."""
        setting = CATALOG[dskey].synthetic_setting
        return self.cfg.get(setting, False) if setting else False

    def synthetic_rule_name(self, dskey):
        """The rule that writes a dataset's generated raw files: synthetic_mnist, synthetic_emnist_balanced."""
        return "synthetic_" + dskey.replace("-", "_")

    def synthetic_raw_files(self, dskey):
        info = CATALOG[dskey]
        return [f"{self.synthetic_dir}/data/{info.folder}/{name}" for name in info.files]

    def existing_raw_files(self, dskey):
        """The raw files as prepare_data's input when they are all there (so replacing them reruns it, and
        everything downstream); none when they are to be downloaded."""
        paths = dataid.raw_paths(self.data_dirs[dskey], *dataset_and_split(dskey))
        return [str(p) for p in paths] if all(p.is_file() for p in paths) else []

    def identity(self, dskey):
        """The identity of the data the dataset's runs use now (None: not there yet, to be downloaded or made)."""
        return dataid.current_identity(self.data_dirs[dskey], *dataset_and_split(dskey),
                                       dataid.read_record(self.cache_files[dskey]))

    def change_marks(self, dskey):
        """A dataset's marks of changed data, as prepare_data's inputs: one per content its files had when
        the cache held other data and the files were not newer than the cache. A same-size replacement with
        the old times put back (cp -p, rsync -a) leaves the raw files older than the cache, so their times
        alone would not rebuild it; a new mark does, and the marks already made stay inputs, so the next
        planning asks for nothing more."""
        cache = self.cache_files[dskey]
        marks = set(glob.glob(f"{glob.escape(cache[:-3])}.data-*"))
        record, identity = dataid.read_record(cache), self.identity(dskey)
        if record is not None and identity is not None and identity != record.get("identity"):
            raw = dataid.raw_paths(self.data_dirs[dskey], *dataset_and_split(dskey))
            if Path(cache).is_file() and max(p.stat().st_mtime for p in raw) <= Path(cache).stat().st_mtime:
                marks.add(f"{cache[:-3]}.data-{identity.removeprefix('sha256:')}")
        return sorted(marks)

    def store(self, dskey):
        """Where a dataset's runs and teachers live: runs on synthetic data apart (R/synthetic), so that the
        same run key on the real data later is computed, not taken from the synthetic one."""
        return f"{self.results_dir}/synthetic" if dskey in self.synthetic else self.results_dir


def tables_of_other_data(results_dir, figures, identities):
    """{figure: identities}: the figures whose merged table (so whose figure and claims) was made from data
    that no dataset of this config holds now (data_dir switched, the data replaced): this build replaces
    them. ``identities``: the data identity of each dataset the config's runs use now (None: not there yet)."""
    import pandas as pd

    now = {identity for identity in identities.values() if identity is not None}
    other = {}
    for figure in figures:
        table = Path(results_dir) / "tables" / f"{figure}.csv"
        if not table.is_file():
            continue
        try:
            made = pd.read_csv(table, usecols=lambda column: column == "data_identity")
        except (OSError, ValueError, pd.errors.ParserError):
            continue
        if "data_identity" in made.columns:
            old = set(made["data_identity"].dropna().astype(str)) - now - {"unknown"}
            if old:
                other[figure] = sorted(old)
    return other
