# A short message for an invalid config: where (figures.fig3.panels[1].grid.d1) and what, before
# Snakemake's own validation (which prints the whole schema) runs on the same schema.

import copy

import jsonschema
import yaml
from jsonschema.exceptions import best_match
from snakemake.exceptions import WorkflowError


def _config_path(error):
    where = "config"
    for part in error.absolute_path:
        where += f"[{part}]" if isinstance(part, int) else f".{part}"
    return where


def _resolve(schema, root):
    while "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _scalar(text, kind):
    """A command-line string as the schema's scalar type, or None when it is not one."""
    try:
        if kind == "integer":
            return int(text)
        if kind == "number":
            return float(text) if any(c in text.lower() for c in ".en") else int(text)
        if kind == "boolean" and text.lower() in ("true", "false"):
            return text.lower() == "true"
    except ValueError:
        return None
    return None


def coerce_strings(value, schema, root):
    """Snakemake hands `--config key=value` (and a profile's config) over as strings: turn a string into
    the integer, number or boolean that the schema asks for at that place, recursively."""
    schema = _resolve(schema, root)
    alternatives = schema.get("oneOf") or schema.get("anyOf")
    if alternatives:
        def valid(v, sub):
            return jsonschema.Draft202012Validator({"$defs": root["$defs"], **sub}).is_valid(v)

        if valid(value, schema):
            return value
        json_type = {list: "array", dict: "object"}.get(type(value))
        fallback = value
        for alternative in alternatives:
            candidate = coerce_strings(copy.deepcopy(value), alternative, root)
            if valid(candidate, _resolve(alternative, root)):
                return candidate
            if json_type and _resolve(alternative, root).get("type") == json_type and fallback is value:
                fallback = candidate  # the error message then names the value that is still wrong
        return fallback
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if isinstance(value, str) and "string" not in kinds:
        for kind in kinds:
            converted = _scalar(value.strip(), kind)
            if converted is not None:
                return converted
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key in list(value):
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                value[key] = coerce_strings(value[key], sub, root)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        value[:] = [coerce_strings(v, schema["items"], root) for v in value]
    return value


def explain_invalid_config(cfg, schema_file):
    schema = yaml.safe_load(open(schema_file))
    coerce_strings(cfg, schema, schema)
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
