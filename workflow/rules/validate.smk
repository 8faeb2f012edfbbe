# A short message for an invalid config: where (figures.fig3.panels[1].grid.d1) and what, before
# Snakemake's own validation (which prints the whole schema) runs on the same schema.

import jsonschema
import yaml
from jsonschema.exceptions import best_match
from snakemake.exceptions import WorkflowError


def _config_path(error):
    where = "config"
    for part in error.absolute_path:
        where += f"[{part}]" if isinstance(part, int) else f".{part}"
    return where


def explain_invalid_config(cfg, schema_file):
    schema = yaml.safe_load(open(schema_file))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = []
        for error in errors[:5]:
            best = best_match([error])  # the most specific failure inside oneOf alternatives
            hint = best.schema.get("description", "") if "any of the given schemas" in best.message else ""
            lines.append(f"{_config_path(best)}: {best.message}" + (f" ({' '.join(hint.split())})" if hint else ""))
        more = f"\n({len(errors) - 5} more)" if len(errors) > 5 else ""
        raise WorkflowError("invalid config (see config/README.md):\n" + "\n".join(lines) + more)


explain_invalid_config(config, workflow.source_path("../schemas/config.schema.yaml"))
