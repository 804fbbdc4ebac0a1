"""Post-export validation: run the bundle through its real runtime on held-out images and
compare every stage with PyTorch (logits, routing, per-stage max abs diffs). Where a backend
has no runtime on this OS, every artifact is opened and its spec checked instead.

The reference is the split graphs composed by the same schedule executor the runtime uses
(split.run_split), itself checked against the model's own forward on the same images, so a
bundle is compared with the model through one chain: model -> split -> bundle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .bundle import safe_join
from .errors import VmoeError
from .compare import StageStats
from .schedule import Schedule
from .graphio import GraphIO
from .split import Graph, run_split

# The composed split must equal the model's own forward to float32 rounding.
SPLIT_VS_MODEL_TOLERANCE = 1e-4


# Scale-free floor on every stage's SNR against fp32 PyTorch, per mode (ml-stable-diffusion holds converted
# fp16 chunks to 35 dB PSNR). fp32 bundles measure 100+ dB. The int8 floors sit below what every backend
# measured on the shipped model and above what a broken kernel gives: dynamic-int8 measured 37-47 dB per stage,
# while ONNX Runtime's unreduced U8S8 on an AVX2 CPU without VNNI (VPMADDUBSW saturating) gave trunk tokens
# 25.7 dB (benchmarks/results/int8_cpus.md). static-int8 is low everywhere (ONNX Runtime and ExecuTorch about
# 25-33 dB; LiteRT's static recipe 15 dB on the shipped model's logits), so its floor only catches a collapse.
MIN_SNR_DB = {"none": 60.0, "dynamic-int8": 30.0, "weight-int8": 30.0, "static-int8": 12.0}

# One-sided 95% normal quantile: a count bound fails only when the shortfall is beyond sampling noise, so a
# handful of images whose near-tied argmax flips (a random-init model) cannot fail a bundle, and 10,000
# images still resolve a fraction of a point.
Z_95 = 1.645


@dataclass(frozen=True)
class ParityBounds:
    """What a bundle must meet against fp32 PyTorch. None: not bounded. An fp32 bundle is held to float
    rounding; a quantized one to what quantization may cost (accuracy, routing, SNR), see `quantized`.
    Agreement and accuracy bounds are on the rate behind the images measured: they fail when the observed
    count is below (above, for the drop) the bound by more than Z_95 standard errors."""

    max_logit_diff: float | None = 1e-3
    min_top1_agreement: float | None = 0.995
    min_routing_agreement: float = 0.995
    max_accuracy_drop: float | None = None  # fraction: 0.01 = one point of top-1 (labelled data only)
    min_snr_db: float | None = MIN_SNR_DB["none"]  # every stage's SNR vs fp32 PyTorch

    @classmethod
    def quantized(cls, mode: str, max_accuracy_drop: float = 0.01, min_routing_agreement: float = 0.97,
                  min_snr_db: float | None = None) -> "ParityBounds":
        """The bounds for a bundle quantized in `mode`; min_snr_db None: the mode's floor (MIN_SNR_DB)."""
        return cls(max_logit_diff=None, min_top1_agreement=None, min_routing_agreement=min_routing_agreement,
                   max_accuracy_drop=max_accuracy_drop,
                   min_snr_db=MIN_SNR_DB[mode] if min_snr_db is None else min_snr_db)


def rate_below(successes: int, n: int, bound: float) -> bool:
    """Is the rate behind `successes` of `n` below `bound`, beyond sampling noise (Wilson score, one-sided 95%)?"""
    if n == 0:
        return False
    p, z2 = successes / n, Z_95 * Z_95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z_95 * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return centre + half < bound


def drop_above(lost: int, gained: int, n: int, bound: float) -> bool:
    """Paired accuracy: `lost` images fp32 got right and the bundle wrong, `gained` the reverse. Is the drop
    (lost - gained) / n above `bound` beyond sampling noise (one-sided 95%)?"""
    if n == 0:
        return False
    drop = (lost - gained) / n
    var = max((lost + gained) / n**2 - drop**2 / n, 0.0)
    return drop - Z_95 * np.sqrt(var) > bound


CHECKS = ("logits_max_abs_diff", "top1_agreement", "routing_agreement", "accuracy_drop", "stage_snr_db", "artifact_spec")


@dataclass(frozen=True)
class ParityFailure:
    """One bound a bundle missed: which check (one of CHECKS), what was measured, the bound, and the line a
    person reads. stage: the graph or stage it concerns, where one does."""

    check: str
    measured: float | None
    bound: float | None
    message: str
    stage: str | None = None


@dataclass(frozen=True)
class ParityReport:
    """A bundle's parity result as recorded in its manifest (`parity`), typed. Accuracy fields are None on
    unlabelled (synthetic) images; every figure is None when parity was skipped (no runtime on this OS)."""

    status: str  # pass | fail | skipped
    images: int = 0
    top1_agreement: float | None = None
    routing_agreement: float | None = None
    logits_max_abs_diff: float | None = None
    logits_snr_db: float | None = None
    min_stage_snr_db: float | None = None
    accuracy_delta: float | None = None
    top1_accuracy: float | None = None
    top1_accuracy_torch: float | None = None
    stage_max_abs_diff: dict[str, float] = field(default_factory=dict)
    stage_snr_db: dict[str, float] = field(default_factory=dict)
    failures: tuple[ParityFailure, ...] = ()
    reason: str | None = None  # why it was skipped
    machine: dict | None = None

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @classmethod
    def from_json(cls, d: dict) -> "ParityReport":
        return cls(status=d["status"], images=d.get("images", 0), top1_agreement=d.get("top1_agreement"),
                   routing_agreement=d.get("routing_agreement"), logits_max_abs_diff=d.get("logits_max_abs_diff"),
                   logits_snr_db=d.get("logits_snr_db"), min_stage_snr_db=d.get("min_stage_snr_db"),
                   accuracy_delta=d.get("accuracy_delta"), top1_accuracy=d.get("top1_accuracy_backend"),
                   top1_accuracy_torch=d.get("top1_accuracy_torch"),
                   stage_max_abs_diff=dict(d.get("stage_max_abs_diff", {})), stage_snr_db=dict(d.get("stage_snr_db", {})),
                   failures=tuple(ParityFailure(**f) for f in d.get("failed_checks", ())), reason=d.get("reason"),
                   machine=d.get("machine"))


class ParityError(VmoeError):
    """An exported bundle that disagrees with PyTorch beyond the configured bounds. `failures` says which
    bounds (typed, like Optimum's AtolError / OutputMatchError), `rejected` where the bundle was kept."""

    def __init__(self, message: str, target: str | None = None, failures: tuple[ParityFailure, ...] = (),
                 rejected: Path | None = None):
        super().__init__(message)
        self.target, self.failures, self.rejected = target, tuple(failures), rejected


def reference_traces(model, graphs: list[Graph], schedule: Schedule, images: torch.Tensor) -> list[dict[str, np.ndarray]]:
    """PyTorch's value at every stage boundary the runtime exposes, one dict per image."""
    traces: list[dict] = []
    logits = run_split(graphs, schedule, images, traces)
    with torch.no_grad():
        model_logits = model(images)[0]
    diff = float((logits - model_logits).abs().max())
    if diff > SPLIT_VS_MODEL_TOLERANCE:
        raise ParityError(f"the composed split graphs differ from the model by {diff:.2e} in logits: a split bug, not a backend one")
    def as_numpy(key, value):
        if key == "experts":
            return np.asarray([int(e) for e in value])
        if key == "gates":
            return np.asarray([float(g) for g in value], dtype=np.float32)
        return value.numpy()

    return [{k: as_numpy(k, v) for k, v in t.items()} for t in traces]


def check_bundle(runtime, model, graphs: list[Graph], images: torch.Tensor, labels: torch.Tensor,
                 bounds: ParityBounds, progress: bool = True, labelled: bool = True) -> dict:
    """Parity of a loaded BundleRuntime against the split of `model` on preprocessed `images` (N,C,H,W).
    labelled=False (synthetic images): accuracy is neither reported nor bounded."""
    refs = reference_traces(model, graphs, runtime.schedule, images)
    n = len(images)
    stages, everything = StageStats(), StageStats()  # per stage over images routed alike; logits over all
    top1_same = route_same = correct = correct_torch = lost = gained = 0
    for i in tqdm(range(n), desc=f"parity {runtime.target}", disable=not progress or None, leave=False):
        ref = refs[i]
        pred = runtime.predict(images[i : i + 1].numpy(), trace=True)
        same_route = sorted(pred.experts) == sorted(ref["experts"].tolist())
        route_same += same_route
        ref_label = int(ref["logits"].argmax())
        top1_same += pred.label == ref_label
        right, right_torch = pred.label == int(labels[i]), ref_label == int(labels[i])
        correct, correct_torch = correct + right, correct_torch + right_torch
        lost, gained = lost + (right_torch and not right), gained + (right and not right_torch)
        for stage, value in pred.trace.items():
            # After a different routing decision later stages are not comparable.
            if stage in ("tokens", "router_logits") or same_route:
                stages.add(stage, ref[stage], value)
        # Logits SNR over every image, routing flips included: what the user gets.
        everything.add("logits", ref["logits"], pred.logits)
    stage_snr = stages.snr_db()
    report = {
        "status": "pass",
        "images": n,
        "logits_max_abs_diff": stages.max_abs_diff.get("logits", 0.0),
        "logits_snr_db": everything.snr_db()["logits"],
        "top1_agreement": top1_same / n,
        "routing_agreement": route_same / n,
        "stage_max_abs_diff": stages.max_abs_diff,
        # Per stage over images routed as PyTorch routes them (later stages are not comparable otherwise).
        "stage_snr_db": stage_snr,
        "min_stage_snr_db": min(stage_snr.values()),
        "bounds": asdict(bounds),
    }
    if labelled:
        report["top1_accuracy_backend"] = correct / n
        report["top1_accuracy_torch"] = correct_torch / n
        report["accuracy_delta"] = (correct - correct_torch) / n
    failures = []
    if bounds.max_logit_diff is not None and report["logits_max_abs_diff"] > bounds.max_logit_diff:
        failures.append(ParityFailure("logits_max_abs_diff", report["logits_max_abs_diff"], bounds.max_logit_diff,
                                      f"logits max abs diff {report['logits_max_abs_diff']:.2e} > {bounds.max_logit_diff:.0e}"))
    if bounds.min_top1_agreement is not None and rate_below(top1_same, n, bounds.min_top1_agreement):
        failures.append(ParityFailure("top1_agreement", report["top1_agreement"], bounds.min_top1_agreement,
                                      f"top-1 agreement {report['top1_agreement']:.4f} < {bounds.min_top1_agreement} on {n} images"))
    if rate_below(route_same, n, bounds.min_routing_agreement):
        failures.append(ParityFailure("routing_agreement", report["routing_agreement"], bounds.min_routing_agreement,
                                      f"routing agreement {report['routing_agreement']:.4f} < {bounds.min_routing_agreement} on {n} images"))
    if labelled and bounds.max_accuracy_drop is not None and drop_above(lost, gained, n, bounds.max_accuracy_drop):
        failures.append(ParityFailure("accuracy_drop", -report["accuracy_delta"], bounds.max_accuracy_drop,
                                      f"accuracy drops {-100 * report['accuracy_delta']:.2f} points > "
                                      f"{100 * bounds.max_accuracy_drop:.2f} on {n} images (--max-accuracy-drop)"))
    if bounds.min_snr_db is not None and report["min_stage_snr_db"] < bounds.min_snr_db:
        worst = min(report["stage_snr_db"], key=report["stage_snr_db"].get)
        failures.append(ParityFailure("stage_snr_db", report["min_stage_snr_db"], bounds.min_snr_db,
                                      f"{worst} SNR {report['min_stage_snr_db']:.1f} dB < {bounds.min_snr_db:.1f} dB "
                                      "(--min-snr-db)", stage=worst))
    if failures:
        report["status"] = "fail"
        _record(report, failures)
    return report


def _record(report: dict, failures: list["ParityFailure"]) -> None:
    report["failures"] = [f.message for f in failures]  # what people and the apps read
    report["failed_checks"] = [asdict(f) for f in failures]  # what ParityReport.failures is built from


def verify_specs(backend, bundle_dir: Path, manifest: dict, reason: str) -> dict:
    """No runtime here: open every artifact and check its spec against the manifest. Reports how many
    graphs were really checked (0 when the backend has no checker) and fails on any mismatch."""
    report = {"status": "skipped", "reason": reason, "spec_verified_graphs": 0}
    if backend.check_artifact is None:
        report["reason"] += "; this backend has no structural check, so nothing was verified"
        return report
    failures = []
    for name, entry in manifest["graphs"].items():
        try:
            backend.check_artifact(safe_join(bundle_dir, entry["path"]), GraphIO.from_manifest(entry))
            report["spec_verified_graphs"] += 1
        except ValueError as e:
            failures.append(ParityFailure("artifact_spec", None, None, f"{name}: {e}", stage=name))
    if failures:
        report["status"] = "fail"
        _record(report, failures)
    return report


def format_report(target: str, report: dict) -> str:
    if report["status"] == "skipped":
        return f"{target}: parity skipped: {report['reason']} ({report['spec_verified_graphs']} graphs spec-verified)"
    if "stage_max_abs_diff" not in report:
        return f"{target}: spec verification FAILED: " + "; ".join(report["failures"])
    stages = ", ".join(f"{k} {v:.1e}" for k, v in report["stage_max_abs_diff"].items())
    line = (f"{target}: parity {report['status'].upper()} on {report['images']} test images: "
            f"logits max|diff| {report['logits_max_abs_diff']:.2e}, top-1 agreement {100 * report['top1_agreement']:.2f}%, "
            f"routing agreement {100 * report['routing_agreement']:.2f}%, "
            + f"logits SNR {report['logits_snr_db']:.1f} dB, "
            + (f"accuracy {100 * report['top1_accuracy_backend']:.2f}% (torch {100 * report['top1_accuracy_torch']:.2f}%); "
               if "top1_accuracy_backend" in report else "")
            + f"per stage: {stages}")
    if "data" in report:
        line += f" [{report['data']}]"
    if report.get("failures"):
        line += "\n  failed: " + "; ".join(report["failures"])
    return line
