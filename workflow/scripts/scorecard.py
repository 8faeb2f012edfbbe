"""The claims' scorecard: HTML (standalone, rows linked to the figures) and reStructuredText (the report's
front page), and the two entry points: the Snakemake job (rule evaluate_claims) and a command line that
evaluates the claims on tables outside the workflow. The evaluation is claims.py's."""

import argparse
import html
import sys
from pathlib import Path

import pandas as pd
from claims import (
    FAILS,
    FEW_SEEDS,
    HOLDS,
    NOT_EVALUATED,
    PARTIAL,
    ClaimsError,
    _fmt,
    check_claims,
    evaluate_all,
    headline,
    load_claims,
    paper_specs,
)

snakemake = globals().get("snakemake")  # injected by Snakemake's script directive (absent in tests)

# --------------------------------------------------------------------------------------------------
# The scorecard: HTML (standalone, links to figures/figN.png) and reStructuredText (the report's caption)
# --------------------------------------------------------------------------------------------------

VERDICT_COLOURS = {HOLDS: "#009E73", FAILS: "#D55E00", PARTIAL: "#CC79A7", FEW_SEEDS: "#E69F00",
                   NOT_EVALUATED: "#999999"}


def scorecard_html(scores: pd.DataFrame, specs: dict[str, dict], min_seeds: int, figures_dir="figures") -> str:
    """A small standalone page; each row links to its figure (relative to the results folder)."""
    style = ("body{font:13px sans-serif;margin:1em}table{border-collapse:collapse}td,th{padding:3px 8px;"
             "border-bottom:1px solid #ddd;text-align:left;vertical-align:top}th{background:#f4f4f4}"
             ".v{font-weight:bold;white-space:nowrap}.n{text-align:right;white-space:nowrap}small{color:#555}")
    rows = []
    for r in scores.itertuples(index=False):
        figure = (f'<a href="{figures_dir}/{html.escape(r.figure)}.png">{html.escape(r.figure)}</a>'
                  if r.figure in specs else html.escape(r.figure))
        detail = " ".join(p for p in (r.statistic, f"vs {r.reference}" if r.reference else "") if p)
        statement = html.escape(r.statement) + (f"<br><small>why: {html.escape(r.why)}</small>" if r.why else "")
        rows.append(
            f"<tr><td>{html.escape(r.claim)}</td><td>{statement}<br><small>{html.escape(r.source)}"
            f"</small></td><td>{figure} {html.escape(r.panel)}<br><small>{html.escape(r.condition)}</small></td>"
            f"<td>{html.escape(r.check)}<br><small>{html.escape(detail)}</small></td>"
            f"<td class=n>{_fmt(r.value)}</td><td class=n>{html.escape(r.interval)}</td>"
            f"<td class=n>{'' if pd.isna(r.n_seeds) else int(r.n_seeds)}</td><td>{html.escape(r.data)}</td>"
            f"<td class=v style=\"color:{VERDICT_COLOURS[r.verdict]}\">{html.escape(r.verdict)}</td>"
            f"<td><small>{html.escape(r.reason)}</small></td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("claim", "statement (source)", "figure, panel (condition)", "test",
                                             "value", "interval", "seeds", "data", "verdict", "why"))
    notes = "".join(f"<p>{html.escape(line)}</p>" for line in headline(scores, specs, min_seeds))
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Which claims reproduce</title>"
            f"<style>{style}</style></head><body><h3>Which of the paper's claims hold</h3>{notes}\n"
            f"<table><tr>{head}</tr>\n" + "\n".join(rows) + "\n</table></body></html>\n")


def _rst(text) -> str:
    """Plain text for a reStructuredText cell that is also a Jinja template (the report renders both)."""
    text = " ".join(str(text).split())
    for char in "\\*`|_":
        text = text.replace(char, "\\" + char)
    return text.replace("{", "{{ '{' }}")


def scorecard_rst(scores: pd.DataFrame, specs: dict[str, dict], min_seeds: int) -> str:
    """The scorecard as the report's caption: each row links to its figure's entry in the report when the
    report holds that figure (Snakemake renders captions with Jinja, `files` being the report's files)."""
    lines = [_rst(line) + "\n" for line in headline(scores, specs, min_seeds)]
    lines += [".. list-table::", "   :header-rows: 1", "   :widths: 4 30 22 10 18 4 12", "",
              "   * - claim", "     - statement", "     - test", "     - figure", "     - value [interval]",
              "     - seeds", "     - verdict"]
    for r in scores.itertuples(index=False):
        png = f"{r.figure}.png"
        link = (f"{{% if {png!r} in files|map(attribute='target')|list %}}`{_rst(r.figure)} {_rst(r.panel)} "
                f"<{png}_>`__{{% else %}}{_rst(r.figure)} {_rst(r.panel)}{{% endif +%}}")
        value = f"{_fmt(r.value)} {r.interval}".strip()
        if value and r.reference:
            value += f"; vs {r.reference}"
        verdict = f"**{r.verdict}**" + (f": {_rst(r.reason)}" if r.reason else "")
        lines += [f"   * - {_rst(r.claim)}", f"     - {_rst(r.statement)}", f"     - {_rst(r.check)}",
                  f"     - {link}", f"     - {_rst(value)}", f"     - {'' if pd.isna(r.n_seeds) else int(r.n_seeds)}",
                  f"     - {verdict}"]
    return "\n".join(lines) + "\n"


def write_outputs(scores, specs, min_seeds, csv, html_file, rst_file=None) -> None:
    scores.to_csv(csv, index=False, float_format="%.6g")
    Path(html_file).write_text(scorecard_html(scores, specs, min_seeds))
    if rst_file is not None:
        Path(rst_file).write_text(scorecard_rst(scores, specs, min_seeds))


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def run(snakemake) -> None:
    """The evaluate_claims job: the tables of the configured figures (input.tables, in the order of
    params.specs), the validated claims (params.claims)."""
    from logged import logged

    with logged(snakemake.log[0]):
        specs = {s["figure"]: s for s in snakemake.params.specs}
        tables = {figure: read_table(path) for figure, path in zip(specs, snakemake.input.tables, strict=True)}
        claims = snakemake.params.claims
        scores = evaluate_all(claims, tables, specs)
        write_outputs(scores, specs, claims["min_seeds"], snakemake.output.csv, snakemake.output.html,
                      snakemake.output.rst)
        for r in scores.itertuples(index=False):
            print(f"claim {r.claim} ({r.figure} {r.panel}, {r.test}): {r.verdict} {_fmt(r.value)} {r.interval} "
                  f"{r.reason}".rstrip())


def _merged_config(files: list[str]) -> dict:
    """Config files merged key by key, as Snakemake merges --configfile over config/config.yaml."""
    import yaml

    def merge(base, over):
        for key, value in over.items():
            base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) and isinstance(
                base.get(key), dict) else value
        return base

    config: dict = {}
    for file in files:
        merge(config, yaml.safe_load(Path(file).read_text()) or {})
    return config


def read_table(path) -> pd.DataFrame:
    """A merged table; an empty file is an empty table (its claims are 'not evaluated', saying so)."""
    try:
        return pd.read_csv(path, low_memory=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def main(argv=None) -> int:
    """Evaluate the claims on tables outside the workflow, e.g. a finished results folder:
    python workflow/scripts/scorecard.py --configfile config/config.yaml --tables results/tables --out results"""
    import yaml
    from grids import GridError, figure_spec

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--configfile", nargs="+", default=["config/config.yaml"],
                        help="workflow config files, merged in order (the figures' grids, seeds and bootstrap)")
    parser.add_argument("--claims", default="config/claims.yaml")
    parser.add_argument("--tables", required=True, help="folder holding figN.csv (the merged tables)")
    parser.add_argument("--out", required=True, help="folder for claims.csv and claims.html")
    parser.add_argument("--synthetic", default="", help="comma-separated datasets to mark synthetic (MNIST,EMNIST) in "
                        "tables that do not say so themselves (their column data)")
    args = parser.parse_args(argv)
    try:
        claims = load_claims(args.claims)
    except ClaimsError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        config = _merged_config(args.configfile)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        print(f"--configfile: cannot read it: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    synthetic = [s for s in args.synthetic.split(",") if s]
    specs, tables = {}, {}
    for figure, block in (config.get("figures") or {}).items():
        path = Path(args.tables) / f"{figure}.csv"
        if block is not None and path.is_file():
            try:
                specs[figure] = figure_spec(config, figure, lambda panel: synthetic)
            except (GridError, KeyError, TypeError) as exc:
                print(f"--configfile: figure {figure}: {exc}", file=sys.stderr)
                return 2
            tables[figure] = read_table(path)
    try:
        check_claims(claims, specs, args.claims, paper_specs())
    except ClaimsError as exc:
        print(exc, file=sys.stderr)
        return 2
    scores = evaluate_all(claims, tables, specs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(scores, specs, claims["min_seeds"], out / "claims.csv", out / "claims.html")
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(scores[["claim", "figure", "panel", "test", "x", "value", "interval", "n_seeds", "verdict",
                      "points"]].to_string(index=False))
    return 0


if snakemake is not None:
    run(snakemake)
elif __name__ == "__main__":
    sys.exit(main())
