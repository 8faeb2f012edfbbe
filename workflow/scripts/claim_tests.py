"""The tests a claim can make (claims.py lists them), each on one value per seed (claim_stats.py).

Every test scores a unit (a grid point, or a series along x for the trends) with a margin, positive when
it passes, so that `require: all` reports the unit closest to failing and `require: any` the one furthest
into passing. Under `require: any` each unit is tested at the Bonferroni-corrected confidence
1 - (1 - ci) / k, so that trying k points does not make a pass k times likelier by chance.
"""

import numpy as np
import pandas as pd
from claim_stats import TEACHER, TRENDS, chance_floor, metric_values, per_seed, point_summary, rank_correlation
from claim_stats import rows_at as _rows_at
from grids import norm

HOLDS, FAILS = "holds", "fails"
NAMES = {"accuracy": "student accuracy", "transfer": "transfer fraction"}


def _name(metric: str) -> str:
    return NAMES.get(metric, metric)


def _scalar(rows: pd.DataFrame, values: pd.Series) -> float:
    return float(values.mean()) if len(rows) else np.nan


def _against_level(claim, rows, point, seeds, confidence, metric):
    """above_chance, at_chance, near_teacher, transfer_below: the seed mean against a level."""
    at = _rows_at(rows, point)
    values, _ = per_seed(at, metric, seeds)
    s = point_summary(values, confidence)
    chance = _scalar(at, chance_floor(at))
    one_over_k = _scalar(at, 1.0 / pd.to_numeric(at["num_classes"], errors="coerce"))
    gain = _scalar(at, pd.to_numeric(at[TEACHER], errors="coerce")) - chance
    test = claim["test"]
    if test == "above_chance":
        margin = s["low"] - chance
        reference = f"chance {chance:.4f} (larger of 1/K {one_over_k:.4f} and the test majority class)"
    elif test == "at_chance":
        band = float(claim["margin"]) * gain
        low_edge, high_edge = one_over_k - band, chance + band
        margin = min(s["low"] - low_edge, high_edge - s["high"])
        reference = f"chance band [{low_edge:.4f}, {high_edge:.4f}] (margin {claim['margin']:g} x gain {gain:.3f})"
    elif test == "near_teacher":
        margin = s["low"] - (1 - float(claim["f"]))
        reference = f"transfer >= {1 - float(claim['f']):g} (teacher gain over chance {gain:.3f})"
    else:  # transfer_below
        margin = float(claim["f"]) - s["high"]
        reference = f"transfer < {float(claim['f']):g} (teacher gain over chance {gain:.3f})"
    return s, margin, reference


def _below(claim, rows, point, seeds, confidence, metric):
    """The per-seed difference claim - than at the same point (seeds paired)."""
    mine, _ = per_seed(_rows_at(rows, point), metric, seeds)
    theirs, _ = per_seed(_rows_at(rows, {**point, **claim["than"]}), metric, seeds)
    both = mine.index.intersection(theirs.index)
    s = point_summary(mine[both] - theirs[both], confidence)
    other = float(theirs[both].mean()) if len(both) else np.nan
    reference = f"paired difference < 0; {', '.join(f'{k} = {v}' for k, v in claim['than'].items())}: {other:.3f}"
    return s, -s["high"], reference


def _rises(claim, rows, point, seeds, confidence, metric):
    at = _rows_at(rows, point)
    after, _ = per_seed(at, metric, seeds)
    before, _ = per_seed(at, claim["from"], seeds)
    both = after.index.intersection(before.index)
    s = point_summary(after[both] - before[both], confidence)
    reference = f"change > 0; {claim['from']} {float(before[both].mean()):.3f} -> {float(after[both].mean()):.3f}"
    return s, s["low"], reference


def _trend(claim, rows, series, seeds, confidence, metric, x):
    """Per seed, the rank correlation of the statistic with x along the series; the mean over seeds."""
    positions = _positions([p[x] for p in series])
    columns = []
    for point in series:
        values, _ = per_seed(_rows_at(rows, point), metric, seeds)
        columns.append(values.rename(norm(point[x])))
    matrix = pd.concat(columns, axis=1).dropna()  # seeds with a value at every x
    rho = pd.Series(rank_correlation(positions, matrix.to_numpy()), index=matrix.index)
    s = point_summary(rho, confidence)
    margin = s["low"] if claim["test"] == "increasing" else -s["high"]
    means = [float(metric_values(_rows_at(rows, p), metric).mean()) for p in (series[0], series[-1])]
    reference = f"0 (no trend); seed means {means[0]:.3f} at {x} = {norm(series[0][x])} -> {means[1]:.3f} at " \
                f"{norm(series[-1][x])}"
    return s, margin, reference


def _positions(values) -> list[float]:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return list(range(len(values)))  # labelled values: their configured order


def run_test(claim: dict, rows: pd.DataFrame, series: list[list[dict]], seeds: list[int], ci: float,
             varying: list[str], x: str | None, metric: str) -> dict:
    """The verdict of one claim on the units it needs (what is missing is claims.py's business): fields
    verdict, x, statistic, value, ci_low, ci_high, reference, n_seeds, points (per unit, when several)."""
    test, require = claim["test"], claim.get("require", "all")
    k = len(series)
    confidence = 1 - (1 - ci) / k if require == "any" and k > 1 else ci
    scored = []
    for unit in series:
        if test in TRENDS:
            s, margin, reference = _trend(claim, rows, unit, seeds, confidence, metric, x)
            label = ", ".join(f"{c} = {norm(unit[0][c])}" for c in varying if c != x)
        else:
            point = unit[0]
            scorer = {"below": _below, "rises": _rises}.get(test, _against_level)
            s, margin, reference = scorer(claim, rows, point, seeds, confidence, metric)
            label = ", ".join(f"{c} = {norm(point[c])}" for c in varying if c in point)
        passes = bool(np.isfinite(margin) and margin > 0) if test != "at_chance" else bool(margin >= 0)
        scored.append({"label": label, "passes": passes, "margin": margin if np.isfinite(margin) else -np.inf,
                       "s": s, "reference": reference, "unit": unit})
    passed = [u for u in scored if u["passes"]]
    verdict = HOLDS if (len(passed) == len(scored) if require == "all" else passed) else FAILS
    decisive = (min if require == "all" else max)(scored, key=lambda u: u["margin"])
    failing = [u["label"] for u in scored if not u["passes"]]
    if len(scored) > 1:
        points = f"holds at {len(passed)} of {len(scored)} {'series' if test in TRENDS else 'points'}"
        points += f"; fails at {'; '.join(failing)}" if failing else ""
    else:
        points = ""
    statistic = {"below": f"paired difference of {_name(metric)} (seed mean)",
                 "rises": f"per-seed change of {metric} from {claim.get('from')} (seed mean)",
                 "increasing": f"per-seed rank correlation of {_name(metric)} with {x} (seed mean)",
                 "decreasing": f"per-seed rank correlation of {_name(metric)} with {x} (seed mean)"}.get(
        test, f"{_name(metric)} (seed mean)")
    if decisive["label"]:
        statistic += f" at {decisive['label']}"
        if len(scored) > 1:
            statistic += " (the closest to failing)" if require == "all" else " (the furthest into passing)"
    if require == "any" and k > 1:
        statistic += f"; {confidence:.2%} intervals (Bonferroni over {k})"
    s = decisive["s"]
    xs = [norm(u["unit"][0].get(x)) for u in scored] if x else []
    x_text = (f"{norm(decisive['unit'][0][x])} .. {norm(decisive['unit'][-1][x])}" if test in TRENDS
              else norm(decisive["unit"][0].get(x)) if x and xs else "")
    return {"verdict": verdict, "x": x_text, "statistic": statistic, "value": s["mean"],
            "ci_low": s["low"], "ci_high": s["high"], "reference": decisive["reference"],
            "n_seeds": min(u["s"]["n"] for u in scored), "points": points}
