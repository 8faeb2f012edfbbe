"""What the end of a successful build prints: where the figures, tables, scorecard and report are, and what
the claims say. A plain module (no Snakemake): the Snakefile's `onsuccess:` calls it; it reads only files.
"""

from __future__ import annotations

import csv
import shlex
from collections import Counter
from pathlib import Path


def claim_counts(claims_csv: Path) -> str:
    """'5 hold, 1 fails, 3 not enough seeds' from a claims table, or '' when there is none."""
    try:
        with open(claims_csv, newline="") as handle:
            counts = Counter(row["verdict"] for row in csv.DictReader(handle) if row.get("verdict"))
    except (OSError, KeyError, csv.Error):
        return ""
    words = {"holds": "hold"}
    return ", ".join(f"{n} {words.get(v, v) if n != 1 else v}" for v, n in counts.most_common())


def end_summary(results_dir: str, figures: list[str], configfiles=()) -> str:
    """Lines naming what the build left in results_dir (only what is there)."""
    root = Path(results_dir)
    lines = [f"Done. Results in {root}/:"]
    drawn = [f for f in figures if (root / "figures" / f"{f}.png").is_file()]
    if drawn:
        names = f"{drawn[0]}.png" if len(drawn) == 1 else f"{{{','.join(drawn)}}}.png"
        lines.append(f"  figures   {root}/figures/{names} (and .pdf; figN_summary.csv: every plotted point)")
    tables = [f for f in figures if (root / "tables" / f"{f}.csv").is_file()]
    if tables:
        lines.append(f"  tables    {root}/tables/figN.csv (one row per run) for {', '.join(tables)}")
    if (root / "claims.html").is_file():
        counts = claim_counts(root / "claims.csv")
        lines.append(f"  claims    {root}/claims.html (the scorecard; claims.csv)" + (f": {counts}" if counts else ""))
    given = "".join(f" --configfile {shlex.quote(str(c))}" for c in configfiles)
    lines.append(f"  report    snakemake --report {root}/report.html{given}  (every figure with its caption)")
    return "\n".join(lines)
