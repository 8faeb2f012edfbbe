# A short message for an invalid config: where (figures.fig3.panels[1].grid.d1) and what, before
# Snakemake's own validation (which prints the whole schema) runs on the same schema. Then what a schema
# cannot say: every number is finite and every figure has its plot script. The checks are a plain, linted
# module: workflow/scripts/config_validation.py.

import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

if str(Path(workflow.basedir) / "workflow" / "scripts") not in sys.path:
    sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

import config_validation  # noqa: E402

try:
    config_validation.explain_invalid_config(config, workflow.source_path("../schemas/config.schema.yaml"))
    config_validation.check_plot_scripts(config, Path(workflow.basedir) / "workflow" / "scripts")
except config_validation.ConfigError as exc:
    raise WorkflowError(str(exc)) from None
