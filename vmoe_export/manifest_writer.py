"""The manifest dict an export writes: everything a runtime needs to run the bundle and everything
manifest.py cross-checks when it is read back (the same facts, derived from the same config and schedule)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Mapping

from ._version import __version__
from .bundle import SCHEMA, SCHEMA_VERSION
from .manifest import preprocessing_block, superclass_names
from .quantize import QuantOptions
from .schedule import Schedule


def quantization_block(options: QuantOptions, calibration_images: int) -> dict:
    if not options.quantized:
        return {"mode": "none"}
    block = {"mode": options.mode, "router": options.router}
    if options.calibrated:
        block["calibration"] = {"images": calibration_images, "strategy": options.calibration,
                                "min_samples": options.min_samples, "source": "training split (never the parity images)"}
    return block


def build_manifest(ckpt, target: str, schedule: Schedule, entries: dict, backend, backend_options: Any,
                   quant: QuantOptions, eval_data: Mapping[str, str], calibration_images: int = 0,
                   schedule_reason: str | None = None, shared_weights: dict | None = None) -> dict:
    """The manifest of `ckpt` exported to `target` with graph `entries` (export.graph_entry) and, where the
    expert paths store their common weights once, its shared_weights block; golden and parity are filled in
    after parity runs."""
    cfg = ckpt.config
    groups = superclass_names(list(ckpt.class_names), ckpt.superclass_of, cfg.num_experts)
    params = {name: e["params"] for name, e in entries.items()}
    sizes = {name: e["size_bytes"] for name, e in entries.items()}
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "target": target,
        "created_by": {"vmoe_export": __version__, **backend.versions()},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "backend_options": asdict(backend_options),
        "quantization": quantization_block(quant, calibration_images),
        "model": {
            "name": cfg.name, "config": cfg.to_dict(), "num_experts": cfg.num_experts,
            "moe_layers": cfg.moe_layers, "top_k": cfg.top_k, "num_classes": cfg.num_classes,
            "params_total": int(schedule.total(params)),
            "params_active": int(schedule.active(params)),
        },
        "preprocessing": preprocessing_block(cfg),
        "class_names": list(ckpt.class_names),
        "superclass_of_class": ckpt.superclass_of,
        "experts": [
            {"id": e, "superclass": groups[e], "graphs": schedule.expert_graphs(e),
             "size_bytes": int(schedule.expert_total(sizes, e))}
            for e in range(cfg.num_experts)
        ],
        "schedule": {"kind": schedule.kind, "reason": schedule_reason, "batch_size": 1, "steps": schedule.to_json()},
        "graphs": entries,
        **({"shared_weights": shared_weights} if shared_weights else {}),
        "golden": None,  # written after parity, with golden_sha256
        "golden_sha256": None,
        "eval_data": dict(eval_data),
    }
