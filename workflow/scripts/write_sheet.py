"""Write a batch's run sheet or a teacher set's teacher sheet (its text comes from the plan in
workflow/scripts/jobs.py), atomically."""

from pathlib import Path

from sublearn.outputs import atomic_write_text

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive

out = Path(snakemake.output.sheet)
atomic_write_text(out, snakemake.params.text)
Path(snakemake.log[0]).write_text(f"{out}: {snakemake.params.text.count(chr(10))} records\n")
