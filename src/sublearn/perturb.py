"""Perturbations of layer weights at the four timings, each on its own derived random stream, with a
diagnostics row per layer."""

from __future__ import annotations

from typing import Any

import torch

from .model import SplitHeadModel
from .plan import ResolvedConfig
from .records import EPS, SCHEMA_VERSION, cosine_or_nan, tensor_kinds, tensor_norm
from .seeding import derived_seed, forked_rng, set_seed


@torch.no_grad()
def apply_perturbations(timing: str, rc: ResolvedConfig, models: dict[str, SplitHeadModel],
                        device: torch.device, run_id: str) -> list[dict[str, Any]]:
    c = rc.config
    rows = []
    for spec in rc.perturbations:
        if spec["timing"] != timing or spec["target"] not in models:
            continue
        for layer_name in spec["layers"]:
            layer = getattr(models[spec["target"]], layer_name)
            tensors = tensor_kinds(layer)
            before = {k: t.detach().clone() for k, t in tensors.items()}
            seed = derived_seed(c.seed, "perturb", spec["index"], timing, spec["target"], layer_name)
            with forked_rng(device):
                set_seed(seed)
                for kind in ("weight", "bias"):
                    if kind in tensors and spec[f"include_{kind}"] and spec["std"] > 0:
                        tensors[kind].add_(torch.randn_like(tensors[kind]) * spec["std"])
            row = {
                "schema_version": SCHEMA_VERSION, "run_id": run_id, "seed": c.seed,
                "sweep_name": c.sweep_name, "run_label": c.run_label, "timing": timing,
                "target": spec["target"], "layer_name": layer_name, "std": spec["std"],
                "include_weight": int(spec["include_weight"]), "include_bias": int(spec["include_bias"]),
                "distribution": spec["distribution"], "perturb_seed": seed,
            }
            for kind in ("weight", "bias"):
                if kind in tensors:
                    after, old = tensors[kind].detach(), before[kind]
                    delta = tensor_norm(after - old)
                    before_norm = tensor_norm(old)
                    row.update({
                        f"{kind}_delta_norm": delta, f"{kind}_before_norm": before_norm,
                        f"{kind}_after_norm": tensor_norm(after), f"{kind}_delta_rel": delta / (before_norm + EPS),
                        f"{kind}_before_after_cosine": cosine_or_nan(old, after),
                    })
                else:
                    row.update({f"{kind}_{m}": float("nan") for m in (
                        "delta_norm", "before_norm", "after_norm", "delta_rel", "before_after_cosine")})
            rows.append(row)
    return rows
