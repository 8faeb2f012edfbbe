"""The table of runs: the one place where a config's figures turn into runs.

For each figure, panel, grid point and seed: a row with its coordinates, its settings resolved and
validated by the runner (torch-free), its run key and teacher key. A plain module (no Snakemake), used by
workflow/rules/common.smk and the tests.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re

import grids
import pandas as pd

from sublearn import cost
from sublearn.catalog import dataset_key
from sublearn.config import FLAG_SETTINGS, JOB_SETTINGS, LABEL_SETTINGS, config_from_flags, sheet_settings
from sublearn.errors import UsageError
from sublearn.plan import resolve, teacher_config

# Runner settings a config may set (the runner defines them). Seed, labels, paths, threads and device
# belong to the workflow.
FLAGS = tuple(n for n in FLAG_SETTINGS if n not in (*JOB_SETTINGS, *LABEL_SETTINGS, "seed"))
RESERVED_COORDS = {"figure", "panel", "point", "seed", "sweep_name", "run_label", "data_dir", "cache_dir",
                   "threads", "device", "outdir", "run_dir", "teacher_out", "teacher_checkpoint"}
LARGE_PANEL = 20_000  # runs of one panel beyond which planning says that it will take time
TEMPLATE_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(ValueError):
    """A config that cannot give runs; the message names the figure, panel and value."""


def expand_values(spec, where):
    """A value spec -> list of (label, value) (the grid language is grids.py)."""
    try:
        return grids.expand_values(spec, where)
    except grids.GridError as exc:
        raise ConfigError(str(exc)) from None


def flag_text(value):
    """A config value as the runner's command-line text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | dict):
        if isinstance(value, list) and all(isinstance(v, int) for v in value):
            return ",".join(str(v) for v in value)
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def fill_template(text, coords, where, used):
    def sub(match):
        name = match.group(1)
        if name not in coords:
            raise ConfigError(f"config: {where}: {{{name}}} is not a grid coordinate of this panel "
                              f"(coordinates: {', '.join(coords) or 'none'})")
        used.add(name)
        return flag_text(coords[name])

    return TEMPLATE_RE.sub(sub, text)


class Resolver:
    """The runner's resolution of a run's settings (seed 0), memoised: one per distinct seedless setting."""

    def __init__(self):
        self.done = {}

    def __call__(self, flags):
        key = json.dumps(flags, sort_keys=True, default=str)
        if key not in self.done:
            try:
                self.done[key] = resolve(config_from_flags(flags))
            except UsageError as exc:
                self.done[key] = exc
        result = self.done[key]
        if isinstance(result, UsageError):
            raise result
        return result


def with_seed(rc, seed):
    return dataclasses.replace(rc, config=dataclasses.replace(rc.config, seed=seed))


def _point_flags(fixed, coords, where, used):
    flags = {}
    for name, value in fixed.items():
        if isinstance(value, str):
            value = fill_template(value, coords, f"{where}, flag {name}", used)
        elif isinstance(value, list) and name == "perturb":
            value = [fill_template(v, coords, f"{where}, flag {name}", used) for v in value]
        flags[name] = value
    for name, value in coords.items():
        if name in FLAGS:
            flags[name] = value
            used.add(name)
    return flags


def runs_table(cfg, store, warn=print):
    """Config -> one row per requested run: figure, panel, point, coordinates, seed, run key, teacher key,
    dataset key, run folder (under ``store(dataset key)``) and the resolved settings of the run and its
    teacher.

    Validates every run with the runner's own resolution and raises ConfigError naming the figure and
    panel. Several panels may request the same run (equal run keys): it is computed once.
    """
    rows = []
    teacher_checked = {}
    resolver = Resolver()
    for figure, fig in cfg["figures"].items():
        if fig is None:  # disabled (e.g. by an override config)
            continue
        seeds = grids.expand_seeds(fig.get("seeds", cfg["seeds"]))
        panel_names = [p["name"] for p in fig["panels"]]
        if len(set(panel_names)) != len(panel_names):
            raise ConfigError(f"config: figure {figure}: panel names repeat ({', '.join(panel_names)})")
        for panel in fig["panels"]:
            where = f"figure {figure}, panel {panel['name']}"
            fixed = {**cfg["defaults"], **panel.get("flags", {})}
            axes = []
            for name, spec in panel["grid"].items():
                if name in RESERVED_COORDS:
                    hint = "; seeds come from `seeds`" if name == "seed" else ""
                    raise ConfigError(f"config: {where}: grid coordinate {name!r} is reserved{hint}")
                axes.append((name, expand_values(spec, f"{where}, grid {name}")))
            used = set()
            seen_points = {}
            points = math.prod(len(values) for _, values in axes)
            if points * len(seeds) > LARGE_PANEL:
                warn(f"config: {where}: {points} grid points x {len(seeds)} seeds = "
                     f"{points * len(seeds)} runs; planning them takes a while")
            for combo in itertools.product(*(values for _, values in axes)):
                coords = {name: value for (name, _), (_, value) in zip(axes, combo, strict=True)}
                labels = {name: label for (name, _), (label, _) in zip(axes, combo, strict=True)}
                point = "_".join(f"{n}-{labels[n]}" for n, _ in axes) or "base"
                if point in seen_points:
                    raise ConfigError(f"config: {where}: two grid points share the name {point!r}; "
                                      "use distinct values or {labels: ...}")
                seen_points[point] = coords
                flags = {**_point_flags(fixed, coords, where, used), "seed": 0,
                         "sweep_name": f"{figure}.{panel['name']}", "run_label": point}
                try:
                    rc0 = resolver(flags)
                except (UsageError, TypeError) as exc:
                    raise ConfigError(f"config: {where}, point {point}: {exc}") from None
                too_big = cost.memory_refusal(rc0, cfg["batch"]["memory_mb"])
                if too_big:
                    raise ConfigError(f"config: {where}, point {point}: {too_big} by batch.memory_mb")
                trc0 = teacher_config(rc0)
                tkey = json.dumps(sheet_settings(trc0), sort_keys=True)
                if tkey not in teacher_checked:
                    try:
                        teacher_checked[tkey] = resolve(trc0)
                    except UsageError as exc:
                        raise ConfigError(f"config: {where}, point {point}: teacher settings: {exc}") from None
                    if teacher_checked[tkey].teacher_key() != rc0.teacher_key():
                        raise ConfigError(f"config: {where}, point {point}: internal error: the teacher "
                                          "settings would train another teacher than this run's")
                dskey = dataset_key(rc0.config.dataset, rc0.config.emnist_split)
                shown = {n: labels[n] if isinstance(spec, dict) and "labels" in spec else coords[n]
                         for n, spec in panel["grid"].items()}
                for seed in seeds:
                    rc = with_seed(rc0, seed)
                    run_key = rc.run_key()
                    rows.append({
                        "figure": figure, "panel": panel["name"], "point": point, "seed": seed,
                        "coords": shown, "run_key": run_key, "teacher_key": rc.teacher_key(),
                        "teacher_rc": with_seed(teacher_checked[tkey], seed),
                        "dataset": dskey, "num_classes": rc0.num_classes,
                        "run_dir": f"{store(dskey)}/runs/{run_key}", "rc": rc,
                    })
            unused = [n for n, _ in axes if n not in used]
            if unused:
                raise ConfigError(f"config: {where}: grid coordinate(s) {', '.join(unused)} are neither runner "
                                  "flags nor used as {name} in the panel's flags")
    return pd.DataFrame(rows)


def unique_runs(table):
    """One record per distinct run, with the sorted names of the figures that request it."""
    runs = {}
    for record in table.to_dict("records"):
        first = runs.setdefault(record["run_key"], {**record, "figures": ()})
        first["figures"] = tuple(sorted({*first["figures"], record["figure"]}))
    return list(runs.values())
