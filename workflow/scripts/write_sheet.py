"""Write a batch's run sheet or a teacher set's teacher sheet (its text comes from the plan in common.smk),
atomically."""

import os
from pathlib import Path

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive

out = Path(snakemake.output.sheet)
tmp = out.with_name(f".{out.name}.tmp")
tmp.write_text(snakemake.params.text)
os.replace(tmp, out)
Path(snakemake.log[0]).write_text(f"{out}: {snakemake.params.text.count(chr(10))} records\n")
