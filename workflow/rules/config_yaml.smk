# Before `configfile:` reads config/config.yaml: a YAML mistake in it is named by its line and column
# (Snakemake's own message says only "not valid JSON or YAML"). A --configfile is read by Snakemake
# before this workflow is, so its mistakes get Snakemake's message (README: Troubleshooting).

from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError


def check_yaml(path):
    """A config file's YAML syntax error as one line: file, line, column, what is wrong."""
    path = Path(path)
    if not path.is_file():
        return
    try:
        yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise WorkflowError(f"{path}{where}: not valid YAML: {exc.problem or exc.context} (check this line's "
                            "indentation against the lines above it; YAML allows no tabs)") from None


check_yaml("config/config.yaml")
