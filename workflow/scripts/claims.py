"""The paper's claims, checked against the figures' merged tables: one verdict per claim of config/claims.yaml.

A claim reads one panel of one figure's tidy table (`results/tables/figN.csv`, one row per run). Which grid
points and seeds it needs comes from the config, never from what a table happens to hold: the panel's
grid points that have the claim's `condition` (a list of values: each is a point of its own), restricted
to the `at` values of its coordinate `x`, each at every configured seed. A test is made per point (per
series along x for the trends) on one value per seed (claim_stats.py), and `require` combines them:

    above_chance    accuracy: the t interval's lower bound above chance (the larger of 1/K and the test
                    split's majority-class rate)
    at_chance       accuracy: an equivalence test, the whole interval inside chance +- margin x (teacher - chance)
    below           the paired per-seed difference to the condition `than` (same seeds, same x): its
                    interval below 0
    increasing      along x: the per-seed rank correlation of the statistic with x, mean over seeds: its
    decreasing      interval above 0 (below 0)
    near_teacher    transfer fraction: the interval's lower bound at least 1 - f
    transfer_below  transfer fraction: the interval's upper bound below f
    rises           the per-seed change from column `from` to `metric`: its interval above 0

    require: all    (default) every point passes: a universal claim ("fails when", "governed by")
    require: any    some point passes, each at a Bonferroni-corrected level (confidence 1 - (1 - ci)/k for
                    k points): an existence claim ("occurs even with ...")

Verdicts: holds, fails; partial (a needed point, seed or compared condition is missing: the reason names
it; never holds); not enough seeds (fewer than `min_seeds` configured: the interval is shown, not
trusted); not evaluated (the figure is not configured or not built, or nothing the claim needs is there).

Pure functions over DataFrames; the scorecard and the entry points are scorecard.py.
"""

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
from claim_stats import ACCURACY, TEACHER, TRENDS, per_seed, rows_at
from grids import DERIVED, norm, plot_axes

HERE = Path(__file__).resolve().parent
SCHEMA = HERE.parent / "schemas" / "claims.schema.yaml"
HOLDS, FAILS, PARTIAL, FEW_SEEDS, NOT_EVALUATED = "holds", "fails", "partial", "not enough seeds", "not evaluated"
VERDICTS = (HOLDS, FAILS, PARTIAL, FEW_SEEDS, NOT_EVALUATED)
METRIC_OF_TEST = {"above_chance": "accuracy", "at_chance": "accuracy", "near_teacher": "transfer",
                  "transfer_below": "transfer"}
COLUMNS = ["claim", "verdict", "figure", "panel", "test", "check", "statement", "source", "why", "condition",
           "x_name", "x", "statistic", "value", "ci_low", "ci_high", "interval", "reference", "n_seeds",
           "points", "data", "reason"]


class ClaimsError(ValueError):
    """A claims file that cannot work; the message names the file, the claim and the key."""


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
        data = yaml.safe_load(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ClaimsError(f"{path}: not UTF-8 text (byte {exc.start}); save the claims file as UTF-8") from None
    except RecursionError:
        raise ClaimsError(f"{path}: nested too deeply to be a claims file") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ClaimsError(f"{path}: cannot read the claims file: {' '.join(str(exc).split())}") from None
    schema = yaml.safe_load(Path(schema_file).read_text())
    for index, claim in enumerate(data.get("claims") or [] if isinstance(data, dict) else []):
        _check_claim_basics(path, data, index, claim, schema)
    try:
        error = best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    except RecursionError:
        raise ClaimsError(f"{path}: nested too deeply to be a claims file") from None
    if error is not None:
        raise ClaimsError(f"{path}: {_where(data, error)}: {_what(error)}")
    data.setdefault("min_seeds", schema["properties"]["min_seeds"]["default"])
    seen = set()
    for claim in data["claims"]:
        if claim["id"] in seen:
            raise ClaimsError(f"{path}: claim {claim['id']}: the id is used twice")
        seen.add(claim["id"])
    return data


def _check_claim_basics(path, data, index, claim, schema) -> None:
    """What the schema would report in a roundabout way: a missing required key, a number that is NaN."""
    if not isinstance(claim, dict):
        return
    name = f"claim {claim['id']} (claims[{index}])" if isinstance(claim.get("id"), str | int) else f"claims[{index}]"
    for key in schema["$defs"]["claim"]["required"]:
        if key not in claim:
            allowed = (f" (one of: {', '.join(schema['$defs']['claim']['properties']['test']['enum'])})"
                       if key == "test" else "")
            raise ClaimsError(f"{path}: {name}: key {key!r} is missing{allowed}")
    for key, value in claim.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ClaimsError(f"{path}: {name}, key {key}: {value} is not a finite number")


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
# What a claim needs, from the config
# --------------------------------------------------------------------------------------------------


def panel_spec(spec: dict, name: str) -> dict | None:
    return next((p for p in spec["panels"] if p["name"] == name), None)


def claim_x(claim: dict, panel: dict) -> str | None:
    """The coordinate along which a claim is made: its own `x`, else the panel's plot x."""
    return claim["x"] if "x" in claim else plot_axes(panel)[0]


def _values(list_or_value) -> list:
    return list_or_value if isinstance(list_or_value, list) else [list_or_value]


def grid_problems(claim: dict, panel: dict) -> list[tuple[str, str]]:
    """(key, what is wrong) for each coordinate, condition value or `at` value of a claim that the panel's
    configured grid lacks."""
    grid, x, where = panel["grid"], claim_x(claim, panel), f"{claim['figure']} panel {claim['panel']}"
    problems = []
    if x is not None and x not in grid:
        hint = f" ({x} is derived from {' x '.join(DERIVED[x])}: name a grid coordinate)" if x in DERIVED else ""
        problems.append(("x", f"{x!r} is not a grid coordinate of {where}{hint} (coordinates: "
                              f"{', '.join(grid) or 'none'})"))
    for key in ("condition", "than"):
        for coord, wanted in (claim.get(key) or {}).items():
            if coord not in grid:
                problems.append((f"{key}.{coord}", f"not a grid coordinate of {where} (coordinates: "
                                                   f"{', '.join(grid) or 'none'})"))
                continue
            known = [norm(v) for v in grid[coord]["values"]]
            problems += [(f"{key}.{coord}", f"{value!r} is not a value of the grid (values: {', '.join(known)})")
                         for value in _values(wanted) if norm(value) not in known]
    if isinstance(claim.get("at"), list) and x is not None and x in grid:
        known = [norm(v) for v in grid[x]["values"]]
        problems += [("at", f"{x} = {value!r} is not a value of the grid (values: {', '.join(known)})")
                     for value in claim["at"] if norm(value) not in known]
    if x is None and (isinstance(claim.get("at"), list) or claim["test"] in TRENDS):
        problems.append(("x", "the claim has no x (x: null) to pick `at` values from or to go along"))
    return problems


def paper_specs() -> dict[str, dict]:
    """The figures of the workflow's own config/config.yaml (the paper's grids)."""
    import yaml
    from grids import figure_spec

    cfg = yaml.safe_load((HERE.parents[1] / "config" / "config.yaml").read_text())
    return {figure: figure_spec(cfg, figure) for figure in cfg.get("figures") or {}}


def check_claims(claims: dict, specs: dict[str, dict], where="config/claims.yaml", paper: dict | None = None) -> None:
    """Refuse claims that ask for what their figure's grid does not have: a panel, coordinate, condition
    value or `at` value that is neither in the configured grid nor in the paper's (`paper`: specs of the
    workflow's config/config.yaml), e.g. a misspelt value. A value that only a reduced config leaves out
    (the quick preset, a test) is not an error: that claim is 'not evaluated', saying so. Claims of figures
    that are not configured are 'not evaluated' too."""
    paper = paper or {}
    for claim in claims["claims"]:
        spec = specs.get(claim["figure"])
        if spec is None:
            continue
        name = f"{where}: claim {claim['id']}"
        panel = panel_spec(spec, claim["panel"])
        theirs = panel_spec(paper[claim["figure"]], claim["panel"]) if claim["figure"] in paper else None
        if panel is None:
            if theirs is None:
                raise ClaimsError(f"{name}, key panel: {claim['figure']} has no panel {claim['panel']!r} "
                                  f"(panels: {', '.join(p['name'] for p in spec['panels'])})")
            continue
        for key, problem in grid_problems(claim, panel):
            if theirs is None or not _paper_has(claim, theirs, key):
                raise ClaimsError(f"{name}, key {key}: {problem}")


def _paper_has(claim: dict, paper_panel: dict, key: str) -> bool:
    """Whether the paper's grid has everything that `key` of the claim asks for."""
    return not any(k == key for k, _ in grid_problems(claim, paper_panel))


def _ordered(grid_entry: dict) -> list:
    """A coordinate's grid values in their axis order: numbers by value, labels as configured."""
    values = grid_entry["values"]
    try:
        return sorted(values, key=float)
    except (TypeError, ValueError):
        return list(values)


def series_of(claim: dict, panel: dict) -> list[list[dict]]:
    """The grid points a claim tests, as series along x (one point per series unless a trend): every
    combination of the panel's grid values that has the claim's condition, x restricted by `at`."""
    grid, x = panel["grid"], claim_x(claim, panel)
    condition = claim.get("condition") or {}
    choices = {}
    for coord, entry in grid.items():
        values = _ordered(entry)
        if coord in condition:
            wanted = {norm(v) for v in _values(condition[coord])}
            values = [v for v in values if norm(v) in wanted]
        elif coord == x:
            at = claim.get("at", "all")
            if at in ("min", "max"):
                values = values[:1] if at == "min" else values[-1:]
            elif isinstance(at, list):
                values = [v for v in values if norm(v) in {norm(a) for a in at}]
        choices[coord] = values
    others = [c for c in grid if c != x]
    series = []
    for combo in itertools.product(*(choices[c] for c in others)):
        fixed = dict(zip(others, combo, strict=True))
        along = choices[x] if x is not None and x in choices else [None]
        points = [{**fixed, **({x: v} if x is not None and v is not None else {})} for v in along]
        series.append(points)
    if claim["test"] in TRENDS:
        return series
    return [[p] for s in series for p in s]


def point_text(point: dict, varying: list[str]) -> str:
    return ", ".join(f"{c} = {norm(point[c])}" for c in varying if c in point)


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


def metric_of(claim: dict) -> str:
    return claim.get("metric") or METRIC_OF_TEST.get(claim["test"], "accuracy")


def check_text(claim: dict, x: str | None) -> str:
    """The test in words, with its settings: 'above chance at some m (Bonferroni)'."""
    at, require = claim.get("at", "all"), claim.get("require", "all")
    if x is None:
        where = ""
    elif claim["test"] in TRENDS:
        where = f" along {x}"
    elif at == "max" or at == "min":
        where = f" at the {'largest' if at == 'max' else 'smallest'} {x}"
    elif isinstance(at, list):
        where = f" at {x} = {', '.join(norm(v) for v in at)}"
    else:
        where = f" at {'every' if require == 'all' else 'some (Bonferroni-corrected)'} {x}"
    test, metric = claim["test"], metric_of(claim)
    text = {
        "above_chance": "accuracy above chance",
        "at_chance": f"accuracy within chance +- {claim.get('margin', 0):g} of the teacher's gain (equivalence)",
        "below": f"{metric} below {_condition_text(claim.get('than'))} (paired by seed)",
        "increasing": f"{metric} increasing (per-seed rank correlation above 0)",
        "decreasing": f"{metric} decreasing (per-seed rank correlation below 0)",
        "near_teacher": f"transfer fraction at least {1 - claim.get('f', 0):g}",
        "transfer_below": f"transfer fraction below {claim.get('f', 0):g}",
        "rises": f"{metric} above {claim.get('from')} (paired by seed)",
    }[test]
    return text + where


def _record(claim: dict, **fields) -> dict:
    record = {c: "" for c in COLUMNS}
    record.update(claim=str(claim["id"]), figure=claim["figure"], panel=claim["panel"], test=claim["test"],
                  check=check_text(claim, fields.get("x_name") or claim.get("x")), statement=claim["statement"],
                  source=claim["source"], why=" ".join(str(claim.get("why", "")).split()),
                  condition=_condition_text(claim.get("condition")), value=np.nan, ci_low=np.nan,
                  ci_high=np.nan, n_seeds=np.nan)
    record.update(fields)
    return record


def not_evaluated(claim: dict, reason: str) -> dict:
    return _record(claim, verdict=NOT_EVALUATED, reason=reason)


def data_text(rows: pd.DataFrame, panel: dict | None) -> tuple[str, bool]:
    """The datasets of the rows ('MNIST', 'synthetic MNIST', ...) and whether any is synthetic: the
    table's own `data` column (the merge marks rows made from generated data), else the panel's marks."""
    marked = set(rows["data"].dropna().astype(str)) - {""} if "data" in rows else set()
    synthetic = {d for d in (panel or {}).get("synthetic", [])}
    names = set()
    for dataset in (rows["dataset"].dropna().astype(str) if "dataset" in rows else []):
        name = dataset.upper()
        names.add(f"synthetic {name}" if name in synthetic or f"synthetic {name}" in marked else name)
    names |= {m for m in marked if m.startswith("synthetic ")}
    return ", ".join(sorted(names)), any(n.startswith("synthetic ") for n in names)


def _seed_ranges(seeds) -> str:
    seeds, parts = sorted(int(s) for s in seeds), []
    for _, group in itertools.groupby(enumerate(seeds), key=lambda p: p[1] - p[0]):
        run = [s for _, s in group]
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ", ".join(parts)


def required_columns(claim: dict, panel: dict) -> list[str]:
    columns = ["panel", "seed", "num_classes", ACCURACY, TEACHER, *panel["grid"]]
    for key in ("metric", "from"):
        if claim.get(key) not in (None, "accuracy", "transfer"):
            columns.append(claim[key])
    return list(dict.fromkeys(columns))


def evaluate(claim: dict, table: pd.DataFrame | None, spec: dict | None, min_seeds: int) -> dict:
    """One claim's record (COLUMNS) from its figure's tidy table and the figure's spec (grids.figure_spec:
    panels with grids, seeds, bootstrap.ci as the confidence level, synthetic panels)."""
    from claim_tests import run_test

    figure = claim["figure"]
    if table is None or spec is None:
        return not_evaluated(claim, f"{figure} is not configured (no table)")
    panel = panel_spec(spec, claim["panel"])
    if panel is None:
        return not_evaluated(claim, f"{figure} has no panel {claim['panel']} in the config")
    if table.empty:
        return not_evaluated(claim, f"the {figure} table is empty")
    absent = [c for c in required_columns(claim, panel) if c not in table]
    if absent:
        return not_evaluated(claim, f"the {figure} table has no column {', '.join(absent)}")
    gaps = grid_problems(claim, panel)
    if gaps:
        return not_evaluated(claim, f"the configured grid leaves out what the claim needs: "
                                    f"{'; '.join(f'{key} {problem}' for key, problem in gaps)}")
    rows = table[table["panel"].astype(str) == claim["panel"]]
    x = claim_x(claim, panel)
    if claim["test"] in TRENDS and len(panel["grid"][x]["values"]) < 3:
        return not_evaluated(claim, f"a trend needs at least 3 values of {x}; the config's grid has "
                                    f"{len(panel['grid'][x]['values'])}")
    series = series_of(claim, panel)
    points = [p for s in series for p in s]
    varying = [c for c in panel["grid"] if len({norm(p.get(c)) for p in points}) > 1]
    seeds = [int(s) for s in spec["seeds"]]
    compared = [{**p, **(claim.get("than") or {})} for p in points] if claim["test"] == "below" else []

    missing, found, surplus = [], 0, 0
    for point in [*points, *compared]:
        at = rows_at(rows, point)
        values, extra = per_seed(at, metric_of(claim), seeds) if not at.empty else (pd.Series(dtype=float), 0)
        if claim.get("from") and not at.empty:  # a seed counts when it has both values of the change
            before, _ = per_seed(at, claim["from"], seeds)
            values = values[values.index.isin(before.index)]
        surplus += extra
        found += int(not values.empty)
        lacking = sorted(set(seeds) - set(values.index.astype(int)))
        ran = set(pd.to_numeric(at["seed"], errors="coerce").dropna().astype(int)) if not at.empty else set()
        for absent, why in ((sorted(set(lacking) - ran), ""),
                            (sorted(set(lacking) & ran), f": ran, but no finite {metric_of(claim)}"
                             + (" (the teacher is not above chance)" if metric_of(claim) == "transfer" else ""))):
            if absent:
                what = "all seeds" if len(absent) == len(seeds) else f"seeds {_seed_ranges(absent)}"
                missing.append(f"{what} at {point_text(point, list(point)) or 'the panel'}{why}")
    if not found:
        more = f" (and {len(missing) - 4} more)" if len(missing) > 4 else ""
        return not_evaluated(claim, f"{figure} panel {claim['panel']} has none of the runs the claim needs: "
                                    f"{'; '.join(missing[:4])}{more}")

    result = run_test(claim, rows, series, seeds, float(spec["bootstrap"]["ci"]), varying, x, metric_of(claim))
    data, synthetic = data_text(rows, panel)
    reasons = []
    if missing:
        verdict = PARTIAL
        more = f" (and {len(missing) - 4} more)" if len(missing) > 4 else ""
        reasons.append(f"missing: {'; '.join(missing[:4])}{more}; on what is there: {result['verdict']}")
    elif len(seeds) < min_seeds:
        verdict = FEW_SEEDS
        reasons.append(f"{len(seeds)} seeds configured, fewer than min_seeds {min_seeds} (on these seeds: "
                       f"{result['verdict']})")
    else:
        verdict = result["verdict"]
    if result["points"]:
        reasons.append(result["points"])
    if surplus:
        reasons.append(f"{surplus} duplicated rows averaged (one value per seed and point)")
    if "test_majority_acc" not in rows:
        reasons.append("chance is 1/K only: the table has no test_majority_acc (runs made before it was recorded)")
    if synthetic:
        reasons.append("synthetic data: not about the real dataset")
    return _record(claim, verdict=verdict, x_name=x or "", data=data, reason="; ".join(reasons),
                   **{k: result[k] for k in ("x", "statistic", "value", "ci_low", "ci_high", "reference", "n_seeds",
                                             "points")},
                   interval=_interval(result["ci_low"], result["ci_high"]))


def evaluate_all(claims: dict, tables: dict[str, pd.DataFrame], specs: dict[str, dict]) -> pd.DataFrame:
    """Every claim of the claims file, in its order: figures without a table are not evaluated."""
    records = [evaluate(c, tables.get(c["figure"]), specs.get(c["figure"]), claims["min_seeds"])
               for c in claims["claims"]]
    return pd.DataFrame(records, columns=COLUMNS).astype({"n_seeds": "Int64"})  # empty when not evaluated


def headline(scores: pd.DataFrame, specs: dict[str, dict], min_seeds: int) -> list[str]:
    """The sentences above the table: counts of verdicts, the statistics, seeds, synthetic data."""
    counts = scores["verdict"].value_counts()
    parts = [f"{v} {counts.get(v, 0)}" for v in VERDICTS if counts.get(v, 0)]
    lines = [f"{len(scores)} claims of the paper checked on these results: {', '.join(parts)}."]
    seeds = sorted({len(s["seeds"]) for s in specs.values()})
    if seeds:
        ci = float(next(iter(specs.values()))["bootstrap"]["ci"])
        lines.append(f"Each point is one value per seed ({'/'.join(map(str, seeds))} seeds configured), its mean "
                     f"with a {ci:.0%} Student's t interval over seeds; conditions are compared seed by seed; "
                     f"chance is the larger of 1/K and the test split's majority-class rate; the transfer fraction is "
                     f"(student - chance) / (teacher - chance). 'partial': a point or seed the claim needs is "
                     f"missing; '{FEW_SEEDS}': fewer than {min_seeds} seeds configured.")
    synthetic = sorted({part.removeprefix("synthetic ") for data in scores["data"] for part in str(data).split(", ")
                        if part.startswith("synthetic ")})
    if synthetic:
        lines.append(f"SYNTHETIC {' and '.join(synthetic)}: the verdicts on rows marked synthetic are about generated "
                     f"stand-in data, not about the real {' and '.join(synthetic)}; they check the pipeline, not "
                     "the paper.")
    return lines

