"""The config's checks that a schema cannot say, and short messages for what it can: where a value is
(figures.fig3.panels[1].grid.d1) and what is wrong, before Snakemake's own validation (which prints the whole
schema) runs on the same schema; every number finite (JSON Schema's bounds let NaN through, and infinity past
a minimum); every figure with its plot script. Read by workflow/rules/validate.smk. A plain module (no
Snakemake): an invalid config raises ConfigError, which the workflow turns into its error.
"""

from __future__ import annotations

import copy
import difflib
import math

import jsonschema
import yaml
from jsonschema.exceptions import best_match


class ConfigError(Exception):
    """The config is invalid: the message says where and what is allowed."""


def _config_path(error):
    where = "config"
    for part in error.absolute_path:
        where += f"[{part}]" if isinstance(part, int) else f".{part}"
    return where


def _resolve(schema, root):
    while "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


YAML_NON_FINITE = {".nan": math.nan, ".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf}


def _scalar(text, kind):
    """A command-line string as the schema's scalar type, or None when it is not one."""
    try:
        if kind == "integer":
            return int(text)
        if kind == "number":
            if text.lower() in YAML_NON_FINITE:  # YAML's spelling: refused as not finite, like a config file's
                return YAML_NON_FINITE[text.lower()]
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


def _within(schema, key, value, root):
    """The schema of `value` (the item or property `key` of a container) inside `schema`, or None."""
    schema = _resolve(schema, root) if schema is not None else None
    if schema is None:
        return None
    json_type = {list: "array", dict: "object"}.get(type(value))
    alternatives = [_resolve(a, root) for a in schema.get("oneOf") or schema.get("anyOf") or ()]
    alternatives = [a for a in alternatives if a.get("type") == json_type]
    if alternatives:  # of several objects, the one that knows the key ({linspace: ...} among the generators)
        schema = next((a for a in alternatives if key in a.get("properties", {})), alternatives[0])
    if isinstance(value, dict):
        extra = schema.get("additionalProperties")
        return schema.get("properties", {}).get(key, extra if isinstance(extra, dict) else None)
    prefix = schema.get("prefixItems", [])
    return prefix[key] if key < len(prefix) else schema.get("items") if isinstance(schema.get("items"), dict) else None


def _allowed_number(schema, root):
    """'a finite number > 0 and < 1 (description)': what the schema allows at a number's place."""
    schema = _resolve(schema, root) if schema is not None else {}
    number = next((_resolve(a, root) for a in schema.get("oneOf") or schema.get("anyOf") or ()
                   if _resolve(a, root).get("type") in ("number", "integer")), schema)
    bounds = [f"{sign} {number[key]}" for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                       ("maximum", "<="), ("exclusiveMaximum", "<"))
              if key in number]
    text = " ".join(["an integer" if number.get("type") == "integer" else "a finite number", " and ".join(bounds)])
    text = text.strip()
    hint = number.get("description") or schema.get("description")
    return text + (f" ({' '.join(str(hint).split())})" if hint else "")


def non_finite_numbers(value, schema, root, where="config"):
    """One line per NaN or infinite number anywhere in the config: where it is and what is allowed there."""
    if isinstance(value, float) and not math.isfinite(value):
        yield f"{where}: {value} is not a finite number; allowed: {_allowed_number(schema, root)}"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from non_finite_numbers(item, _within(schema, key, value, root), root, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from non_finite_numbers(item, _within(schema, i, value, root), root, f"{where}[{i}]")


def _unknown_keys(error):
    """An unknown key's error as 'unknown key 'seed' (did you mean 'seeds'?); allowed: ...', or None."""
    if error.validator != "additionalProperties" or not isinstance(error.instance, dict):
        return None
    allowed = list(error.schema.get("properties", {}))
    unknown = [key for key in error.instance if key not in allowed]
    if not allowed or not unknown:
        return None
    guesses = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        guesses.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(guesses)}; allowed: {', '.join(allowed)}"


def explain_invalid_config(cfg, schema_file):
    """Numbers spelt as text made numbers (in place, as the schema asks), then ConfigError with up to five
    short lines (where, what is wrong, what is allowed) when the config breaks the schema."""
    with open(schema_file) as handle:
        schema = yaml.safe_load(handle)
    coerce_strings(cfg, schema, schema)
    lines = list(non_finite_numbers(cfg, schema, schema))
    if lines:
        raise ConfigError("invalid config (see config/README.md):\n" + "\n".join(lines))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = []
        for error in errors[:5]:
            best = best_match([error])  # the most specific failure inside oneOf alternatives
            hint = best.schema.get("description", "") if "any of the given schemas" in best.message else ""
            message = _unknown_keys(best) or best.message
            if hint:  # none of the alternatives: say what they are
                message = f"{best.instance!r} is not allowed here; expected {' '.join(hint.split())}"
            lines.append(f"{_config_path(best)}: {message}")
        more = f"\n({len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ConfigError("invalid config (see config/README.md):\n" + "\n".join(lines) + more)


def check_plot_scripts(cfg, scripts):
    """Every figure's plot script is there (`script`, default <figure>.py), before Snakemake looks for it."""
    for figure, fig in cfg["figures"].items():
        if fig is not None:
            script = fig.get("script", f"{figure}.py")
            if not (scripts / script).is_file():
                raise ConfigError(
                    f"config: figure {figure}: its plot script workflow/scripts/{script} does not exist "
                    f"(a figure needs one: add it, or set figures.{figure}.script to an existing script, "
                    f"e.g. fig2.py)")
