"""Merge one figure's run folders into a tidy table and the reference-style aggregates.

Fast for thousands of runs: files are read as text, grouped by header and parsed with one read_csv per
distinct header instead of one per file.
"""

import io
import sys
from pathlib import Path

import pandas as pd
from logged import logged

from sublearn.catalog import CATALOG, dataset_key
from sublearn.sheets import RUN_FILES

snakemake = globals().get("snakemake")  # injected by Snakemake's script directive (absent in tests)


def read_many(paths):
    groups: dict[str, list[str]] = {}
    for path in paths:
        text = Path(path).read_text()
        if not text.strip():
            continue  # e.g. perturbations.csv of a run without perturbations
        header, _, body = text.partition("\n")
        if body and not body.endswith("\n"):
            body += "\n"
        groups.setdefault(header, []).append(body)
    frames = [pd.read_csv(io.StringIO(header + "\n" + "".join(bodies)), low_memory=False)
              for header, bodies in groups.items()]
    return pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()


def groups_text(runs, column):
    """'a (12 runs, e.g. results/runs/X), b (3 runs, e.g. ...)' for the values of a column."""
    parts = []
    for value, rows in runs.groupby(column, dropna=False, sort=True):
        parts.append(f"{value} ({len(rows)} runs, e.g. {rows['outdir'].iloc[0]})")
    return ", ".join(parts)


def warn(message):
    print(f"warning: {message}")
    print(f"warning: {message}", file=sys.__stderr__)


def check_provenance(runs, figure, allow_mixed_data):
    """Refuse runs of one dataset that come from different data (or mark them, when allowed); warn when
    runs mix devices, torch versions, thread counts or training paths (their last digits differ)."""
    if "data_identity" not in runs.columns:
        runs["data_identity"] = "unknown"
    runs["data_identity"] = runs["data_identity"].fillna("unknown")
    dataset = [dataset_key(d, s) for d, s in zip(runs["dataset"].astype(str), runs["emnist_split"], strict=True)]
    runs["mixed_data"] = False
    for name, rows in runs.groupby(dataset):
        if rows["data_identity"].nunique() > 1:
            text = f"{figure}: its {name} runs come from different data: {groups_text(rows, 'data_identity')}"
            if not allow_mixed_data:
                raise SystemExit(f"{text}; rerun the workflow to recompute the runs of the old data (or set "
                                 "allow_mixed_data: true to merge them, marked in column mixed_data)")
            warn(f"{text}; merged because allow_mixed_data is true (column mixed_data)")
            runs.loc[rows.index, "mixed_data"] = True
    for column in ("device", "torch_version", "threads", "training_path"):
        if column in runs.columns and runs[column].nunique(dropna=False) > 1:
            warn(f"{figure}: runs mix {column} values, so per-run numbers differ in their last digits: "
                 f"{groups_text(runs, column)}")


# teacher-student comparisons of layer_metrics.csv -> the per-run column prefix the runner gives the heads
COSINE_PREFIX = {"teacher_student_init": "init_teacher_student", "teacher_student_final": "final_teacher_student"}


def layer_cosines(layer_metrics: pd.DataFrame) -> pd.DataFrame:
    """Per run (index run_id), the teacher-student cosine of every layer's tensors at init and at the end,
    named as the runner names the heads' (cos_final_teacher_student_fc1_weight): the claims on
    representations read them from the tidy table."""
    needed = {"run_id", "comparison", "layer_name", "tensor_kind", "cosine"}
    if layer_metrics.empty or not needed <= set(layer_metrics.columns):
        return pd.DataFrame()
    rows = layer_metrics[layer_metrics["comparison"].isin(COSINE_PREFIX)]
    names = ("cos_" + rows["comparison"].map(COSINE_PREFIX) + "_" + rows["layer_name"].astype(str) + "_"
             + rows["tensor_kind"].astype(str))
    return (rows.assign(column=names).pivot_table(index="run_id", columns="column", values="cosine", aggfunc="first")
            .rename_axis(columns=None))


def main():
    runs_files = list(snakemake.input.runs)
    siblings = {name: [str(Path(f).with_name(f"{name}.csv")) for f in runs_files]
                for name in ("layer_metrics", "perturbations")}
    points = snakemake.params.points  # panel -> point -> {coordinate: value}
    requests = pd.DataFrame(snakemake.params.requests)  # panel, point, seed, run_key: one per requested run
    figure = snakemake.wildcards.figure

    incomplete = [str(Path(f).parent) for f in runs_files
                  if not all(Path(f).with_name(name).is_file() for name in RUN_FILES)]
    if incomplete:  # the next planning recomputes them (sublearn.sheets.recorded_result)
        raise SystemExit(f"{figure}: {len(incomplete)} run folders lack some of their files ({', '.join(RUN_FILES)}), "
                         f"e.g. {incomplete[0]}; run the workflow again to recompute them")
    runs = read_many(runs_files)
    if len(runs) != len(runs_files):
        raise SystemExit(f"{figure}: {len(runs_files)} runs.csv files hold {len(runs)} rows; expected one each")
    check_provenance(runs, figure, snakemake.params.allow_mixed_data)
    runs.to_csv(snakemake.output.runs, index=False)
    layers = pd.DataFrame()
    for name, files in siblings.items():
        table = read_many(files)
        table.to_csv(getattr(snakemake.output, name), index=False)
        if name == "layer_metrics":
            layers = layer_cosines(table)
    if not layers.empty:  # the heads' columns are the runner's own already
        layers = layers[[c for c in layers.columns if c not in runs.columns]]
        runs = runs.join(layers, on="run_id")

    missing = sorted(set(requests["run_key"]) - set(runs["run_key"].astype(str)))
    if missing:
        raise SystemExit(f"{figure}: runs without a result (run keys): {missing[:5]}")
    runs = requests.drop(columns="seed").merge(runs.astype({"run_key": str}), on="run_key", how="left")
    coord_names = list(dict.fromkeys(c for pts in points.values() for coords in pts.values() for c in coords))
    records = {(p, q): coords for p, pts in points.items() for q, coords in pts.items()}
    coords = pd.DataFrame([records[(p, q)] for p, q in zip(runs["panel"], runs["point"], strict=True)],
                          columns=coord_names)
    for name in coord_names:
        if name in runs.columns:  # a panel without this coordinate still has the run's own value (e.g. m)
            coords[name] = coords[name].where(coords[name].notna(), runs[name])
        numbers = pd.to_numeric(coords[name], errors="coerce")
        if numbers.notna().all() and (numbers == numbers.round()).all():
            coords[name] = numbers.astype("int64")  # 10, not 10.0, for integer grids
    order = {(p, q): i for i, (p, q) in enumerate(records)}
    head = pd.DataFrame({"figure": figure, "panel": runs["panel"], "point": runs["point"]})
    rest = runs.drop(columns=["panel", "point", *[c for c in coord_names if c in runs.columns]])
    rest["sweep_name"], rest["run_label"] = f"{figure}." + runs["panel"], runs["point"]  # the requester's
    synthetic = set(snakemake.params.synthetic)  # dataset keys whose data the workflow generated
    rest["data"] = [f"synthetic {CATALOG[key].display}" if key in synthetic else ""
                    for key in (dataset_key(d, s) for d, s in zip(rest["dataset"].astype(str), rest["emnist_split"],
                                                                   strict=True))]
    tidy = pd.concat([head, coords, rest], axis=1)
    tidy.insert(len(head.columns) + len(coord_names), "seed", tidy.pop("seed"))
    tidy["_order"] = [order[(p, q)] for p, q in zip(tidy["panel"], tidy["point"], strict=True)]
    tidy = tidy.sort_values(["_order", "seed"], kind="stable").drop(columns="_order")
    tidy.to_csv(snakemake.output.tidy, index=False)
    print(f"{figure}: {len(tidy)} runs ({runs['run_key'].nunique()} distinct), {len(records)} grid points, "
          f"{tidy['seed'].nunique()} seeds")


if snakemake is not None:
    with logged(snakemake.log[0]):
        main()
