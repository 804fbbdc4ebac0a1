"""Post-export validation: run the bundle through its real runtime on held-out images and
compare every stage with PyTorch (logits, routing, per-stage max abs diffs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .model import MobileVMoE, route


@dataclass(frozen=True)
class ParityBounds:
    max_logit_diff: float = 1e-3
    min_top1_agreement: float = 0.995
    min_routing_agreement: float = 0.995


class ParityError(RuntimeError):
    """An exported bundle that disagrees with PyTorch beyond the configured bounds."""


@torch.no_grad()
def reference_trace(model: MobileVMoE, images: torch.Tensor) -> dict[str, np.ndarray]:
    """PyTorch's value at every stage boundary the runtime exposes, for a batch of images."""
    tokens = model.trunk(images)
    router_logits = model.router(tokens)
    gates, experts = route(router_logits, model.cfg.top_k)
    out = {"tokens": tokens, "router_logits": router_logits, "experts": experts}
    x = tokens
    for layer, blk in enumerate(model.moe_blocks):
        x = blk(x, gates, experts)
        out[f"moe{layer}_out"] = x
    out["logits"] = model.classify(x)
    return {k: v.numpy() for k, v in out.items()}


def check_bundle(runtime, model: MobileVMoE, images: torch.Tensor, labels: torch.Tensor,
                 bounds: ParityBounds, progress: bool = True) -> dict:
    """Parity of a loaded BundleRuntime against `model` on preprocessed `images` (N,C,H,W)."""
    ref = reference_trace(model, images)
    n = len(images)
    stage_diff: dict[str, float] = {}
    top1_same = route_same = correct = 0
    for i in tqdm(range(n), desc=f"parity {runtime.target}", disable=not progress or None, leave=False):
        pred = runtime.predict(images[i : i + 1].numpy(), trace=True)
        same_route = sorted(pred.experts) == sorted(ref["experts"][i].tolist())
        route_same += same_route
        top1_same += pred.label == int(ref["logits"][i].argmax())
        correct += pred.label == int(labels[i])
        for stage, value in pred.trace.items():
            # After a different routing decision later stages are not comparable.
            if stage in ("tokens", "router_logits") or same_route:
                diff = float(np.abs(value.reshape(-1) - ref[stage][i].reshape(-1)).max())
                stage_diff[stage] = max(stage_diff.get(stage, 0.0), diff)
    report = {
        "status": "pass",
        "images": n,
        "logits_max_abs_diff": stage_diff.get("logits", 0.0),
        "top1_agreement": top1_same / n,
        "routing_agreement": route_same / n,
        "top1_accuracy_backend": correct / n,
        "top1_accuracy_torch": float((ref["logits"].argmax(1) == labels.numpy()).mean()),
        "stage_max_abs_diff": stage_diff,
        "bounds": asdict(bounds),
    }
    failures = []
    if report["logits_max_abs_diff"] > bounds.max_logit_diff:
        failures.append(f"logits max abs diff {report['logits_max_abs_diff']:.2e} > {bounds.max_logit_diff:.0e}")
    if report["top1_agreement"] < bounds.min_top1_agreement:
        failures.append(f"top-1 agreement {report['top1_agreement']:.4f} < {bounds.min_top1_agreement}")
    if report["routing_agreement"] < bounds.min_routing_agreement:
        failures.append(f"routing agreement {report['routing_agreement']:.4f} < {bounds.min_routing_agreement}")
    if failures:
        report["status"] = "fail"
        report["failures"] = failures
    return report


def format_report(target: str, report: dict) -> str:
    if report["status"] == "skipped":
        return f"{target}: parity skipped: {report['reason']}"
    stages = ", ".join(f"{k} {v:.1e}" for k, v in report["stage_max_abs_diff"].items())
    line = (f"{target}: parity {report['status'].upper()} on {report['images']} test images: "
            f"logits max|diff| {report['logits_max_abs_diff']:.2e}, top-1 agreement {100 * report['top1_agreement']:.2f}%, "
            f"routing agreement {100 * report['routing_agreement']:.2f}%, accuracy {100 * report['top1_accuracy_backend']:.2f}% "
            f"(torch {100 * report['top1_accuracy_torch']:.2f}%); per stage: {stages}")
    if report.get("failures"):
        line += "\n  failed: " + "; ".join(report["failures"])
    return line


def reject_path(out_dir: Path, target: str) -> Path:
    return Path(out_dir) / f"{target}.rejected"
