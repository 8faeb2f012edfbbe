"""What a user sees of a build's progress and of its end: the end-of-build summary (where the figures,
tables, scorecard and report are)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))

import build_summary  # noqa: E402


def test_the_end_summary_names_what_the_build_left_and_the_claims_verdicts(tmp_path):
    root = tmp_path / "results"
    (root / "figures").mkdir(parents=True)
    (root / "tables").mkdir()
    for figure in ("fig2", "fig5"):
        (root / "figures" / f"{figure}.png").write_bytes(b"png")
        (root / "tables" / f"{figure}.csv").write_text("run_key\n")
    (root / "claims.html").write_text("<html></html>")
    (root / "claims.csv").write_text("claim,verdict\n1a,holds\n1b,holds\n2,fails\n3,not enough seeds\n")
    text = build_summary.end_summary(str(root), ["fig2", "fig3", "fig5"], ["config/quick.yaml"])
    lines = text.splitlines()
    assert lines[0] == f"Done. Results in {root}/:"
    assert f"{root}/figures/{{fig2,fig5}}.png" in text and "fig3" not in text  # only what is there
    assert f"{root}/claims.html (the scorecard; claims.csv): 2 hold, 1 fails, 1 not enough seeds" in text
    assert f"snakemake --report {root}/report.html --configfile config/quick.yaml" in text
    assert len(lines) == 5


def test_the_end_summary_of_a_partial_build_names_only_what_is_there(tmp_path):
    text = build_summary.end_summary(str(tmp_path), ["fig2"])
    assert "figures" not in text and "claims" not in text and "snakemake --report" in text
