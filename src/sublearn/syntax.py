"""The text syntaxes a user types: booleans, init sources, width lists, JSON given inline or as a file,
per-layer settings (positional "A,A,random,A" or named "fc1:A,all:random") and perturbations (the
shorthand and the JSON spec, into their canonical form). Torch-free.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import bad_value

INIT_SOURCES = ("A", "B", "random")
TIMINGS = (
    "before_teacher_training",
    "after_teacher_training",
    "before_student_training",
    "after_student_training",
)
PERTURB_TARGETS = ("teacher", "student")
BOOL_TRUE = ("true", "1", "yes", "y", "t")
BOOL_FALSE = ("false", "0", "no", "n", "f")


def parse_bool(value: Any, flag: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in BOOL_TRUE:
        return True
    if text in BOOL_FALSE:
        return False
    raise bad_value(flag, value, f"allowed: {', '.join(BOOL_TRUE)} or {', '.join(BOOL_FALSE)}")


def parse_init_source(value: Any, flag: str) -> str:
    text = str(value).strip()
    if text.lower() == "random":
        return "random"
    if text.upper() in ("A", "B"):
        return text.upper()
    raise bad_value(flag, value, f"allowed init sources: {', '.join(INIT_SOURCES)}")


def parse_int_list(value: str | list[int], flag: str) -> list[int]:
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        try:
            number = int(str(item).strip())
        except ValueError:
            raise bad_value(flag, value, "expected comma-separated positive integers, e.g. 256,256") from None
        if number < 1:
            raise bad_value(flag, value, "layer widths must be positive integers")
        out.append(number)
    return out


def load_json_or_path(value: str, flag: str) -> Any:
    """A JSON document given inline or as the path of a file holding it."""
    text = str(value).strip()
    path = Path(text)
    source = text
    if not text.startswith(("[", "{")) and path.exists():
        try:
            source = path.read_text()
        except OSError as exc:
            raise bad_value(flag, value, f"cannot read the file ({exc.strerror})") from None
    try:
        return json.loads(source)
    except json.JSONDecodeError as exc:
        raise bad_value(flag, value, f"expected a JSON document or the path of a JSON file ({exc.msg})") from None


def parse_layer_config(raw: str | None, layer_names: list[str], default: Any, parse_item, flag: str) -> dict:
    if raw is None or not str(raw).strip():
        return dict.fromkeys(layer_names, default)
    parts = [p.strip() for p in str(raw).split(",") if p.strip()]
    available = f"layers: {', '.join(layer_names)}"
    named = [":" in p for p in parts]
    if any(named) and not all(named):
        raise bad_value(flag, raw, f"use either positional or name:value entries, not both ({available})")
    if not any(named):
        if len(parts) != len(layer_names):
            raise bad_value(flag, raw, f"expected {len(layer_names)} positional entries for {available}")
        return {name: parse_item(p, flag) for name, p in zip(layer_names, parts, strict=True)}
    resolved = dict.fromkeys(layer_names, default)
    for part in parts:
        key, value = (x.strip() for x in part.split(":", 1))
        parsed = parse_item(value, flag)
        if key == "all":
            resolved = dict.fromkeys(layer_names, parsed)
        elif key in layer_names:
            resolved[key] = parsed
        else:
            raise bad_value(flag, raw, f"unknown layer {key!r}; available {available} (or all)")
    return resolved


def parse_perturb_shorthand(text: str) -> dict[str, Any]:
    """``student:aux_head,std=0.1,timing=before_student_training`` -> a raw perturbation spec."""
    flag = "--perturb"
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts or ":" not in parts[0]:
        raise bad_value(flag, text, "expected target:layers[,key=value...], e.g. student:aux_head,std=0.1")
    target, layers = (x.strip() for x in parts[0].split(":", 1))
    spec: dict[str, Any] = {"target": target, "layers": layers, "_flag": flag}
    for part in parts[1:]:
        if "=" not in part:
            raise bad_value(flag, text, f"malformed part {part!r}; expected key=value")
        key, value = (x.strip() for x in part.split("=", 1))
        key = "std" if key == "sigma" else key
        if key not in ("std", "timing", "include_weight", "include_bias", "distribution"):
            raise bad_value(flag, text, f"unknown key {key!r}; allowed: std, sigma, timing, include_weight, "
                            "include_bias, distribution")
        spec[key] = value
    return spec


def canonical_perturbations(raw_specs: list[dict], layers_of: dict[str, list[str]]) -> list[dict[str, Any]]:
    specs = []
    for index, raw in enumerate(raw_specs):
        if not isinstance(raw, dict):
            raise bad_value("--perturb-spec", raw, "each perturbation must be a JSON object")
        flag = raw.get("_flag", "--perturb-spec")
        target = str(raw.get("target", "student")).lower()
        if target not in PERTURB_TARGETS:
            raise bad_value(flag, raw.get("target"), f"allowed targets: {', '.join(PERTURB_TARGETS)}")
        timing = str(raw.get("timing", "before_student_training"))
        if timing not in TIMINGS:
            raise bad_value(flag, timing, f"allowed timings: {', '.join(TIMINGS)}")
        std_raw = raw.get("std", raw.get("sigma", 0.0))
        try:
            std = float(std_raw)
        except (TypeError, ValueError):
            raise bad_value(flag, std_raw, "std must be a number >= 0") from None
        if not std >= 0 or math.isinf(std):
            raise bad_value(flag, std_raw, "std must be a finite number >= 0")
        distribution = str(raw.get("distribution", "normal")).lower()
        if distribution != "normal":
            raise bad_value(flag, raw.get("distribution"), "allowed distributions: normal")
        available = layers_of[target]
        selector = raw.get("layers", "all")
        if selector is None or selector == "all":
            layers = list(available)
        else:
            if isinstance(selector, str):
                names = selector.replace("+", ",").replace("|", ",").split(",")
            elif isinstance(selector, list):
                names = [str(x) for x in selector]
            else:
                raise bad_value(flag, selector, "layers must be a name, a list of names, a+b, or all")
            layers = [x.strip() for x in names if x.strip()]
            unknown = [x for x in layers if x not in available]
            if unknown or not layers:
                raise bad_value(flag, selector, f"unknown {target} layer(s) {unknown}; available: "
                                f"{', '.join(available)} (or all)")
        specs.append({
            "index": index,
            "target": target,
            "timing": timing,
            "layers": layers,
            "std": std,
            "include_weight": parse_bool(raw.get("include_weight", True), flag),
            "include_bias": parse_bool(raw.get("include_bias", True), flag),
            "distribution": distribution,
        })
    return specs
