"""The paper's claims, checked against the figures' merged tables: one verdict per claim of config/claims.yaml.

A claim reads one panel of one figure's tidy table (`results/tables/figN.csv`, one row per run), the rows of a
condition (grid coordinates), at the values of one coordinate x. Its statistic is the seed mean of the
student's test accuracy at each tested x, with the figure's bootstrap interval, drawn exactly as the plot
draws it (`plotting.mean_ci`, `plotting.point_rng`: a claim point that is a plotted point gets the plotted
interval, bit for bit). A test then gives the verdict, the same at every tested x (each must pass):

    above_chance   the interval's lower bound is above chance (1 / classes)
    at_chance      the interval contains chance, or lies within chance +- margin x (teacher - chance)
    below          the interval lies below that of the condition `than` at the same x (the intervals apart)
    increasing     the rank correlation of the means with x, over the tested x values: its bootstrap
                   interval (seeds resampled together at every x) lies above 0
    near_teacher   the interval's lower bound is at least teacher - f x (teacher - chance)

Verdicts: "holds", "fails", "not enough seeds" (a tested point has fewer than `min_seeds` seeds: the
interval is reported, not trusted), "not evaluated" (the figure is not configured or not built, or its
table lacks the panel, the condition or x; the reason says which).

Pure functions over DataFrames; the scorecard and the entry points (the Snakemake job, a command line) are
scorecard.py.
"""

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
SCHEMA = HERE.parent / "schemas" / "claims.schema.yaml"
HOLDS, FAILS, FEW_SEEDS, NOT_EVALUATED = "holds", "fails", "not enough seeds", "not evaluated"
MIN_SEEDS = 3  # the default of the claims file's `min_seeds`
ACCURACY = "student_final_acc"
COLUMNS = ["claim", "verdict", "figure", "panel", "test", "check", "statement", "source", "condition", "x_name", "x",
           "statistic", "value", "ci_low", "ci_high", "interval", "reference", "n_seeds", "data", "reason"]


class ClaimsError(ValueError):
    """A claims file that cannot work; the message names the claim and the key."""


def _plotting():
    """workflow/scripts/plotting.py, whose bootstrap the claims share. Imported when claims are evaluated
    (it loads matplotlib), not when Snakemake validates the claims file while reading the workflow."""
    import plotting

    return plotting


def norm(value) -> str:
    """One spelling per grid value (10, 10.0 and '10' alike): the plot's."""
    return _plotting().norm(value)


# --------------------------------------------------------------------------------------------------
# The claims file
# --------------------------------------------------------------------------------------------------


def load_claims(path, schema_file=SCHEMA) -> dict:
    """config/claims.yaml, validated against workflow/schemas/claims.schema.yaml, with the defaults set.
    An invalid file raises ClaimsError with one line naming the file, the claim and the key."""
    import jsonschema  # Snakemake's environment has them; the plot environment of the rule's job does not
    import yaml
    from jsonschema.exceptions import best_match

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ClaimsError(f"{path}: cannot read the claims file: {' '.join(str(exc).split())}") from None
    schema = yaml.safe_load(Path(schema_file).read_text())
    error = best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if error is not None:
        raise ClaimsError(f"{path}: {_where(data, error)}: {_what(error)}")
    data.setdefault("min_seeds", MIN_SEEDS)
    seen = set()
    for claim in data["claims"]:
        if claim["id"] in seen:
            raise ClaimsError(f"{path}: claim {claim['id']}: the id is used twice")
        seen.add(claim["id"])
    return data


def _where(data, error) -> str:
    path = list(error.absolute_path)
    if len(path) >= 2 and path[0] == "claims" and isinstance(path[1], int):
        claim = data["claims"][path[1]]
        name = claim.get("id") if isinstance(claim, dict) else None
        where = f"claim {name} (claims[{path[1]}])" if name else f"claims[{path[1]}]"
        rest = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[2:]).lstrip(".")
        return f"{where}, key {rest}" if rest else where
    return ".".join(str(p) for p in path) or "top level"


def _what(error) -> str:
    if error.validator == "not" and isinstance(error.validator_value, dict) and "required" in error.validator_value:
        key = error.validator_value["required"][0]
        return f"key {key!r} does not apply to test {error.instance.get('test')!r}"
    if error.validator == "additionalProperties":
        return error.message.replace("Additional properties are not allowed", "unknown key")
    return " ".join(error.message.split())[:300]


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


def _panel_spec(spec: dict, name: str) -> dict | None:
    return next((p for p in spec["panels"] if p["name"] == name), None)


def _x_name(claim: dict, panel: dict | None) -> str | None:
    if "x" in claim:
        return claim["x"]
    if panel is None:
        return None
    from grids import plot_axes

    return plot_axes(panel)[0]


def select(table: pd.DataFrame, panel: str, condition: dict) -> pd.DataFrame:
    """The rows of a panel whose coordinates have the condition's values."""
    rows = table[table["panel"].astype(str) == panel]
    for name, wanted in (condition or {}).items():
        wanted = wanted if isinstance(wanted, list) else [wanted]
        rows = rows[rows[name].map(norm).isin({norm(v) for v in wanted})]
    return rows


def _x_key(values):
    """Sort key of x values: numbers by value, anything else in the table's order."""
    try:
        numbers = {norm(v): float(v) for v in values}
    except (TypeError, ValueError):
        order = {norm(v): i for i, v in enumerate(values)}
        return lambda v: order[norm(v)]
    return lambda v: numbers[norm(v)]


def tested_x(rows: pd.DataFrame, x: str | None, at) -> list:
    """The x values a claim tests, in order (one None when the claim has no x)."""
    if x is None:
        return [None]
    values = list(dict.fromkeys(rows[x].dropna().tolist()))
    values = sorted({norm(v): v for v in values}.values(), key=_x_key(values))
    if at in (None, "all"):
        return values
    if at == "min":
        return values[:1]
    if at == "max":
        return values[-1:]
    wanted = {norm(v) for v in at}
    return [v for v in values if norm(v) in wanted]


def _at(rows: pd.DataFrame, x: str | None, value) -> pd.DataFrame:
    return rows if x is None else rows[rows[x].map(norm) == norm(value)]


def plotted_identity(spec: dict, panel: dict, table: pd.DataFrame, rows: pd.DataFrame):
    """The identity (figure, panel, metric, hue level, x, y) of the plotted accuracy point whose rows are
    exactly `rows`, or None when they are not one plotted point."""
    from grids import plot_axes

    x, hue, y = plot_axes(panel)
    values = {}
    for role, name in (("x", x), ("hue", hue), ("y", y)):
        if name is not None:
            if name not in rows or rows[name].map(norm).nunique() != 1:
                return None
            values[role] = rows[name].iloc[0]
    plotted = table[table["panel"].astype(str) == panel["name"]]
    for role, name in (("x", x), ("hue", hue), ("y", y)):
        if name is not None:
            plotted = plotted[plotted[name].map(norm) == norm(values[role])]
    if len(plotted) != len(rows):
        return None
    xv = values["x"] if x is not None else panel["plot"].get("label", panel["title"])
    return (spec["figure"], panel["name"], "acc", values.get("hue"), xv, values.get("y", np.nan))


def point_stats(rows: pd.DataFrame, rng, boot: dict) -> dict:
    """Seed mean of the student's accuracy with the bootstrap interval, seeds, chance and teacher."""
    mean, low, high = _plotting().mean_ci(rows[ACCURACY], rng, int(boot["resamples"]), float(boot["ci"]))
    finite = np.isfinite(pd.to_numeric(rows[ACCURACY], errors="coerce"))
    return {"mean": mean, "low": low, "high": high, "n_seeds": int(rows.loc[finite, "seed"].nunique()),
            "chance": float(rows["chance"].mean()), "teacher": float(rows["teacher_final_acc"].mean())}


def _point_rng(spec, panel, table, rows, claim, role, x):
    boot_seed = int(spec["bootstrap"]["seed"])
    identity = plotted_identity(spec, panel, table, rows) if panel is not None else None
    if identity is None:
        identity = (spec["figure"], claim["panel"], "claim", claim["id"], role, x)
    return _plotting().point_rng(boot_seed, *identity)


def rank_correlation(x_values, means) -> np.ndarray:
    """Spearman's rank correlation of each row of `means` (shape [..., len(x)]) with x (ties: mean ranks);
    0 where the means are all equal."""
    means = np.atleast_2d(np.asarray(means, dtype=float))
    rx = pd.Series(np.asarray(x_values, dtype=float)).rank().to_numpy()
    rm = pd.DataFrame(means).rank(axis=1).to_numpy()
    rx, rm = rx - rx.mean(), rm - rm.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rm * rx).sum(axis=1) / np.sqrt((rm**2).sum(axis=1) * (rx**2).sum())
    return np.nan_to_num(rho, nan=0.0)


# --------------------------------------------------------------------------------------------------
# One claim
# --------------------------------------------------------------------------------------------------


def _fmt(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _interval(low, high) -> str:
    return "" if np.isnan(low) or np.isnan(high) else f"[{low:.3f}, {high:.3f}]"


def _condition_text(condition: dict | None) -> str:
    return ", ".join(f"{k} = {'|'.join(map(str, v)) if isinstance(v, list) else v}"
                     for k, v in (condition or {}).items())


def check_text(claim: dict, x: str | None) -> str:
    """The test in words, with its settings: 'above chance at every m'."""
    at = claim.get("at", "all")
    where = ("" if x is None else f" at every {x}" if at == "all" else f" at the largest {x}" if at == "max"
             else f" at the smallest {x}" if at == "min" else f" at {x} = {', '.join(norm(v) for v in at)}")
    test = claim["test"]
    if test == "above_chance":
        return f"above chance{where}"
    if test == "at_chance":
        return f"at chance (or within {claim.get('margin', 0.0):g} of the teacher's gain over chance){where}"
    if test == "below":
        return f"below {_condition_text(claim['than'])}{where}, intervals apart"
    if test == "increasing":
        return f"increasing in {x} (rank correlation of the means above 0)"
    return f"within f = {claim['f']:g} of the teacher (as a fraction of its gain over chance){where}"


def _at_text(x, value) -> str:
    return "" if x is None else f" at {x} = {norm(value)}"


def _record(claim: dict, **fields) -> dict:
    record = {c: "" for c in COLUMNS}
    record.update(claim=claim["id"], figure=claim["figure"], panel=claim["panel"], test=claim["test"],
                  check=check_text(claim, fields.get("x_name") or claim.get("x", "x")),
                  statement=claim["statement"], source=claim["source"],
                  condition=_condition_text(claim.get("condition")), value=np.nan, ci_low=np.nan, ci_high=np.nan,
                  n_seeds=np.nan)
    record.update(fields)
    return record


def not_evaluated(claim: dict, reason: str) -> dict:
    return _record(claim, verdict=NOT_EVALUATED, reason=reason)


def data_text(rows: pd.DataFrame, panels: list[dict | None]) -> tuple[str, bool]:
    """The datasets of the rows ('MNIST', 'synthetic MNIST', ...) and whether any is synthetic."""
    synthetic = {d for p in panels if p is not None for d in p.get("synthetic", [])}
    names = sorted({str(d).upper() for d in rows["dataset"].dropna()}) if "dataset" in rows else []
    return ", ".join(f"synthetic {n}" if n in synthetic else n for n in names), bool(synthetic & set(names))


def evaluate(claim: dict, table: pd.DataFrame | None, spec: dict | None, min_seeds: int = MIN_SEEDS) -> dict:
    """One claim's record (COLUMNS) from its figure's tidy table and the figure's spec (grids.figure_spec:
    panels with grids and plot hints, bootstrap, synthetic panels). No table: not evaluated."""
    figure = claim["figure"]
    if table is None or spec is None:
        return not_evaluated(claim, f"{figure} is not configured (no table)")
    table = _plotting().with_derived(table)
    panel = _panel_spec(spec, claim["panel"])
    if not (table["panel"].astype(str) == claim["panel"]).any():
        return not_evaluated(claim, f"{figure} has no panel {claim['panel']}")
    x = _x_name(claim, panel)
    condition = claim.get("condition") or {}
    compared = {**condition, **claim.get("than", {})}
    for name in [*condition, *compared, *([x] if x else [])]:
        if name not in table:
            return not_evaluated(claim, f"{figure} has no coordinate {name}")
    rows = select(table, claim["panel"], condition)
    if rows.empty:
        return not_evaluated(claim, f"{figure} panel {claim['panel']} has no runs with {_condition_text(condition)}")
    xs = tested_x(rows, x, claim.get("at", "all"))
    if not xs:
        return not_evaluated(claim, f"{figure} panel {claim['panel']}: no runs at {x} = {claim.get('at')}")
    data, synthetic = data_text(rows, [panel])
    points = []
    for value in xs:
        at = _at(rows, x, value)
        rng = _point_rng(spec, panel, table, at, claim, "a", value)
        points.append((value, point_stats(at, rng, spec["bootstrap"])))
    common = {"x_name": x or "", "data": data}
    test = claim["test"]
    if test == "increasing":
        record = _increasing(claim, spec, rows, x, points, common)
    elif test == "below":
        record = _below(claim, spec, panel, table, x, points, compared, common)
    else:
        record = _against_reference(claim, x, points, common)
    reasons = [record["reason"]]
    if record["verdict"] in (HOLDS, FAILS) and record["n_seeds"] < min_seeds:
        if np.isnan(record["ci_low"]):  # one seed: nothing to say about where it fails
            reasons = [f"{record['n_seeds']} seeds, fewer than min_seeds {min_seeds} (no interval)"]
        else:
            reasons.insert(0, f"{record['n_seeds']} seeds, fewer than min_seeds {min_seeds} (the interval alone "
                              f"would say: {record['verdict']})")
        record["verdict"] = FEW_SEEDS
    if synthetic:
        reasons.append("synthetic data: not about the real dataset")
    record["reason"] = "; ".join(r for r in reasons if r)
    return record


def _against_reference(claim, x, points, common) -> dict:
    """above_chance, at_chance, near_teacher: a margin per point (positive: passes); the decisive point is
    the one with the smallest margin."""
    test = claim["test"]
    scored = []
    for value, p in points:
        gain = p["teacher"] - p["chance"]
        if test == "above_chance":
            reference, margin = f"chance {p['chance']:.3f}", p["low"] - p["chance"]
            passes = margin > 0
        elif test == "near_teacher":
            threshold = p["teacher"] - claim["f"] * gain
            reference = f"teacher {p['teacher']:.3f}, threshold {threshold:.3f} (f {claim['f']:g})"
            margin = p["low"] - threshold
            passes = margin >= 0
        else:  # at_chance: the interval contains chance (first term >= 0) or lies in the band (second)
            band = claim.get("margin", 0.0) * gain
            reference = f"chance {p['chance']:.3f}, margin +-{band:.3f} ({claim.get('margin', 0.0):g} of the gain)"
            margin = max(min(p["chance"] - p["low"], p["high"] - p["chance"]),
                         band - max(abs(p["low"] - p["chance"]), abs(p["high"] - p["chance"])))
            passes = margin >= 0
        if np.isnan(p["low"]):
            passes, margin = False, -np.inf  # a single seed: no interval
        scored.append((margin, passes, value, p, reference))
    margin, _, value, p, reference = min(scored, key=lambda s: (s[1], s[0]))
    verdict = HOLDS if all(s[1] for s in scored) else FAILS
    where = f"{len(points)} values of {x}" if len(points) > 1 else ""
    statistic = f"student accuracy, seed mean{_at_text(x, value)}"
    if where:
        statistic += f" (the closest of {where})"
    failing = [norm(s[2]) for s in scored if not s[1]]
    reason = f"fails at {x} = {', '.join(failing)}" if failing and x is not None else ""
    return _record(claim, **common, x=norm(value) if x else "", statistic=statistic, value=p["mean"],
                   ci_low=p["low"], ci_high=p["high"], interval=_interval(p["low"], p["high"]),
                   reference=reference, n_seeds=min(q["n_seeds"] for _, q in points), verdict=verdict,
                   reason=reason)


def _below(claim, spec, panel, table, x, points, compared, common) -> dict:
    """The claim's interval below the compared condition's at every tested x."""
    other = select(table, claim["panel"], compared)
    if other.empty:
        return not_evaluated(claim, f"{claim['figure']} panel {claim['panel']} has no runs with "
                                    f"{_condition_text(compared)}")
    scored = []
    for value, p in points:
        rows = _at(other, x, value)
        if rows.empty:
            continue
        q = point_stats(rows, _point_rng(spec, panel, table, rows, claim, "b", value), spec["bootstrap"])
        gap = q["low"] - p["high"]
        passes = bool(gap > 0)
        scored.append((gap if not np.isnan(gap) else -np.inf, passes, value, p, q))
    if not scored:
        return not_evaluated(claim, f"no value of {x} has runs of both conditions")
    gap, _, value, p, q = min(scored, key=lambda s: (s[1], s[0]))
    names = _condition_text(claim["than"])
    failing = [norm(s[2]) for s in scored if not s[1]]
    statistic = f"student accuracy, seed mean{_at_text(x, value)}"
    if len(scored) > 1:
        statistic += f" (the closest of {len(scored)} values of {x})"
    return _record(claim, **common, x=norm(value) if x else "", statistic=statistic,
                   value=p["mean"], ci_low=p["low"], ci_high=p["high"], interval=_interval(p["low"], p["high"]),
                   reference=f"{names}: {_fmt(q['mean'])} {_interval(q['low'], q['high'])}",
                   n_seeds=min(min(s[3]["n_seeds"], s[4]["n_seeds"]) for s in scored),
                   verdict=HOLDS if all(s[1] for s in scored) else FAILS,
                   reason=f"intervals overlap at {x} = {', '.join(failing)}" if failing and x else "")


def _increasing(claim, spec, rows, x, points, common) -> dict:
    """Rank correlation of the seed means with x; its interval from resampling the seeds (the same draw of
    seeds at every x, as a seed's runs share its teacher)."""
    if x is None or len(points) < 3:
        return not_evaluated(claim, f"test increasing needs at least 3 values of x, found {len(points)}")
    xs = [v for v, _ in points]
    try:
        positions = [float(v) for v in xs]
    except (TypeError, ValueError):
        positions = list(range(len(xs)))  # labelled values: their order in the table
    keyed = rows.assign(_x=rows[x].map(norm))
    matrix = keyed.pivot_table(index="seed", columns="_x", values=ACCURACY, aggfunc="mean")
    matrix = matrix.reindex(columns=[norm(v) for v in xs]).to_numpy(dtype=float)
    means = np.array([p["mean"] for _, p in points])
    rho = float(rank_correlation(positions, means)[0])
    boot = spec["bootstrap"]
    rng = _plotting().point_rng(int(boot["seed"]), spec["figure"], claim["panel"], "claim", claim["id"], "increasing")
    n = matrix.shape[0]
    low = high = np.nan
    if n >= 2:
        draws = matrix[rng.integers(0, n, size=(int(boot["resamples"]), n))]
        with warnings.catch_warnings():  # a draw without any seed at some x: NaN there, correlation 0
            warnings.simplefilter("ignore", RuntimeWarning)
            resampled = np.nanmean(draws, axis=1)
        tail = (1 - float(boot["ci"])) / 2
        low, high = (float(q) for q in np.quantile(rank_correlation(positions, resampled), [tail, 1 - tail]))
    return _record(claim, **common, x=f"{norm(xs[0])} .. {norm(xs[-1])}",
                   statistic=f"rank correlation of the seed means with {x} ({len(xs)} values)",
                   value=rho, ci_low=low, ci_high=high, interval=_interval(low, high),
                   reference="0 (no trend)", n_seeds=min(p["n_seeds"] for _, p in points),
                   verdict=HOLDS if low > 0 else FAILS,
                   reason=f"means from {_fmt(means[0])} to {_fmt(means[-1])}")


def evaluate_all(claims: dict, tables: dict[str, pd.DataFrame], specs: dict[str, dict]) -> pd.DataFrame:
    """Every claim of the claims file, in its order: figures without a table are not evaluated."""
    records = [evaluate(c, tables.get(c["figure"]), specs.get(c["figure"]), claims.get("min_seeds", MIN_SEEDS))
               for c in claims["claims"]]
    return pd.DataFrame(records, columns=COLUMNS).astype({"n_seeds": "Int64"})  # empty when not evaluated


def headline(scores: pd.DataFrame, specs: dict[str, dict], min_seeds: int) -> list[str]:
    """The sentences above the table: counts of verdicts, seeds, synthetic data."""
    counts = scores["verdict"].value_counts()
    parts = [f"{v} {counts.get(v, 0)}" for v in (HOLDS, FAILS, FEW_SEEDS, NOT_EVALUATED) if counts.get(v, 0)]
    lines = [f"{len(scores)} claims of the paper checked on these results: {', '.join(parts)}."]
    seeds = sorted({len(s["seeds"]) for s in specs.values()})
    if seeds:
        boot = next(iter(specs.values()))["bootstrap"]
        lines.append(f"Statistic: the seed mean of the student's test accuracy with the figures' "
                     f"{float(boot['ci']):.0%} bootstrap interval ({'/'.join(map(str, seeds))} seeds configured); "
                     f"a verdict needs at least {min_seeds} seeds at every tested point, else it says "
                     f"'{FEW_SEEDS}'.")
    synthetic = sorted({part.removeprefix("synthetic ") for data in scores["data"] for part in str(data).split(", ")
                        if part.startswith("synthetic ")})
    if synthetic:
        lines.append(f"SYNTHETIC {' and '.join(synthetic)}: the verdicts on rows marked synthetic are about generated "
                     f"stand-in data, not about the real {' and '.join(synthetic)}; they check the pipeline, not "
                     "the paper.")
    return lines
