"""The statistics behind a claim's verdict: one value per seed, the seed as the unit, Student's t intervals.

A figure's seeds are independent repetitions of the whole experiment (each trains its own teacher), and
the runs of one seed share that teacher and its noise stream: so a claim reduces its rows to one value
per seed and point first (duplicated rows averaged, and counted so that the verdict can say so), compares
conditions seed by seed (paired), and gives the seed mean a t interval (exact coverage for normal data,
close to it for the bounded accuracies here from 5 seeds on; a percentile bootstrap of 3 seeds is
[min, max] with about 75 % coverage).

The statistics a claim can test (`metric`):
    accuracy   the student's test accuracy
    transfer   the transfer fraction (student - chance) / (teacher - chance), per seed with its own teacher:
               0 = nothing of the teacher's gain over chance transferred, 1 = all of it
    <column>   any numeric column of the figure's table (e.g. a teacher-student cosine)
Chance is the larger of 1/K and the test split's majority-class rate (`test_majority_acc`, the accuracy
of always answering the most frequent class: 0.1135 on MNIST's test split), so that a student that only
learnt the class frequencies is not "above chance".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ACCURACY = "student_final_acc"
TRENDS = ("increasing", "decreasing")  # the tests made along x, per series
TEACHER = "teacher_final_acc"
MAJORITY = "test_majority_acc"


def rows_at(rows: pd.DataFrame, point: dict) -> pd.DataFrame:
    """The rows at a grid point (coordinate -> value, compared in the grid's one spelling per value)."""
    from grids import norm

    for coord, value in point.items():
        rows = rows[rows[coord].map(norm) == norm(value)]
    return rows


def chance_floor(rows: pd.DataFrame) -> pd.Series:
    """Per row: the larger of 1/K and the test split's majority-class rate (1/K where not recorded)."""
    floor = 1.0 / pd.to_numeric(rows["num_classes"], errors="coerce")
    if MAJORITY in rows:
        majority = pd.to_numeric(rows[MAJORITY], errors="coerce")
        floor = np.fmax(floor, majority)
    return floor


def metric_values(rows: pd.DataFrame, metric: str) -> pd.Series:
    """The statistic of each row (see the module's docstring)."""
    if metric == "accuracy":
        return pd.to_numeric(rows[ACCURACY], errors="coerce")
    if metric == "transfer":
        floor = chance_floor(rows)
        gain = pd.to_numeric(rows[TEACHER], errors="coerce") - floor
        return (pd.to_numeric(rows[ACCURACY], errors="coerce") - floor) / gain.where(gain > 0)
    return pd.to_numeric(rows[metric], errors="coerce")


def per_seed(rows: pd.DataFrame, metric: str, seeds: list[int]) -> tuple[pd.Series, int]:
    """One value per configured seed (rows of a seed averaged; seeds outside the config left out) and the
    number of surplus rows that were averaged. A seed without a finite value is absent from the result."""
    values = metric_values(rows, metric)
    frame = pd.DataFrame({"seed": pd.to_numeric(rows["seed"], errors="coerce"), "value": values})
    frame = frame[frame["seed"].isin(seeds) & np.isfinite(frame["value"])]
    surplus = len(frame) - frame["seed"].nunique()
    return frame.groupby("seed")["value"].mean(), int(surplus)


def t_interval(values, confidence: float) -> tuple[float, float, float]:
    """Mean and two-sided Student's t interval of the mean (NaN interval for fewer than two values; a zero
    spread gives the point itself)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan, np.nan, np.nan
    mean = float(v.mean())
    if v.size == 1:
        return mean, np.nan, np.nan
    from scipy import stats  # the scorecard's job, not Snakemake reading the workflow, needs scipy

    half = float(stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return mean, mean - half, mean + half


def rank_correlation(x_values, matrix) -> np.ndarray:
    """Spearman's rank correlation of each row of `matrix` (shape [..., len(x)]) with x (ties: mean ranks);
    0 where a row is constant."""
    matrix = np.atleast_2d(np.asarray(matrix, dtype=float))
    rx = pd.Series(np.asarray(x_values, dtype=float)).rank().to_numpy()
    rm = pd.DataFrame(matrix).rank(axis=1).to_numpy()
    rx, rm = rx - rx.mean(), rm - rm.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rm * rx).sum(axis=1) / np.sqrt((rm**2).sum(axis=1) * (rx**2).sum())
    return np.nan_to_num(rho, nan=0.0)


def point_summary(values: pd.Series, confidence: float) -> dict:
    mean, low, high = t_interval(values.to_numpy(), confidence)
    return {"mean": mean, "low": low, "high": high, "n": int(values.size)}
