"""Checkpoint -> split -> one backend's artifacts -> manifest -> parity -> published bundle, for one target
(api.export runs it for every target of a resolved plan; plan.py decides what each target does).

With QuantOptions.mode other than "none", each graph is converted in that mode by its backend's
official flow, static-int8 graphs calibrated on training images as quantize.plan lays out, and
parity bounds what quantization may cost (accuracy, routing) instead of float rounding.

A bundle is built in a hidden temp directory next to its destination and renamed into place
only after parity passes (staging.py), so an interrupted or failed export never leaves a directory
that looks like a complete bundle. A bundle that fails parity is kept as <target>.rejected/ for
inspection.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from tqdm import tqdm

from . import shared_weights
from .interrupt import check as check_interrupt
from .artifact_cache import convert
from .bundle import DIGEST, GOLDEN, MANIFEST, manifest_digest, sha256_of, size_of
from .checkpoint import Checkpoint, atomic_write_bytes
from .data import preprocess
from .errors import VmoeError
from .flops import count_flops
from .golden import build_golden
from .machine import cpu_info
from .manifest_writer import build_manifest
from .model import MobileVMoE, count_params
from .parity import ParityBounds, ParityError, ParityReport, check_bundle, format_report, verify_specs
from .plan import check_golden_images, choose_schedule, default_bounds, default_parity_images, plan_target
from .quantize import GraphQuant, QuantOptions
from .quantize import plan as quantize_plan
from .runtime import BundleRuntime
from .schedule import Schedule, artifact_relpath
from .split import Graph, split_model
from .staging import check_output_dir, new_partial, publish, reject, remove_dead_partials, write_json


@dataclass
class ExportOptions:
    parity_images: int | None = None  # None: plan.FP32_PARITY_IMAGES, or QUANTIZED_PARITY_IMAGES when quantized
    bounds: ParityBounds | None = None  # None: ParityBounds() for fp32, ParityBounds.quantized(mode) when quantized
    quant: QuantOptions = field(default_factory=QuantOptions)
    # "per-layer" (exact for every k), "fused" (k=1: three graph calls per image instead of 3 + 2L, four where an
    # int8 bundle keeps its router fp32) or "auto": fused where it is exact (k=1), per-layer otherwise
    schedule: str = "auto"
    golden_images: int = 4  # at least 1: every bundle carries golden vectors for its self-test
    progress: bool = True
    # Per-target backend options (e.g. {"coreml": CoreMLOptions(compress="palettize4")}); a target without
    # an entry uses its backend's defaults.
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    # Reuse converted graphs across exports (e.g. the same model at k=1 and k=2, whose graphs are identical):
    # artifacts are stored under this directory by a key over the graph's weights, tensors, backend, backend
    # options and tool versions. None converts every graph.
    artifact_cache: Path | None = None
    # What the test images are, recorded in the manifest (synthetic images say: latency only, not accuracy).
    eval_data: Mapping[str, str] = field(default_factory=lambda: {"kind": "unspecified",
                                                                  "description": "images passed to export_bundle"})

    def __post_init__(self) -> None:
        check_golden_images(self.golden_images)

    def parity_bounds(self) -> ParityBounds:
        return self.bounds if self.bounds is not None else default_bounds(self.quant)

    def n_parity_images(self) -> int:
        return self.parity_images if self.parity_images is not None else default_parity_images(self.quant)


def export_bundle(ckpt: Checkpoint, target: str, out_dir: Path, test_images: torch.Tensor, test_labels: torch.Tensor,
                  options: ExportOptions | None = None, log=print, calibration_images: torch.Tensor | None = None,
                  plan: dict[str, GraphQuant] | None = None, model: MobileVMoE | None = None) -> tuple[Path, dict]:
    """Export one target; returns (bundle dir, parity report). Raises ParityError on a parity failure.
    static-int8 needs `calibration_images` (uint8, from the training split) or a `plan` made by
    calibrate() (pass one to reuse a calibration across targets). `model`: ckpt's model, if already built."""
    options = options or ExportOptions()
    tp = plan_target(target, options.quant, options.backend_options.get(target))
    options = replace(options, quant=tp.quant)
    model = model if model is not None else ckpt.build_model()
    schedule, schedule_reason = choose_schedule(ckpt.config, options.schedule, options.quant)
    graphs = split_model(model, schedule)
    if plan is None:
        plan = calibrate(ckpt.config, graphs, schedule, options.quant, calibration_images, log)
    n_calibration = 0 if calibration_images is None else min(len(calibration_images), options.quant.calibration_images)
    out_dir = check_output_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(out_dir, log)
    final = out_dir / target
    tmp = new_partial(out_dir, target)
    try:
        t0 = time.time()
        shares = shared_weights.applies(schedule, tp.backend)
        rels = {g.name: artifact_relpath(g.spec, tp.backend.suffix, shares) for g in graphs}
        for g in tqdm(graphs, desc=f"export {target}", disable=not options.progress or None, leave=False):
            check_interrupt()
            path = tmp / rels[g.name]
            path.parent.mkdir(parents=True, exist_ok=True)
            convert(g, tp.backend, tp.options, path, options.artifact_cache, plan[g.name])
        shared = _share_weights(tp.backend, schedule, tmp, rels)
        entries = {g.name: graph_entry(g, rels[g.name], tmp / rels[g.name], plan[g.name]) for g in graphs}
        manifest = build_manifest(ckpt, target, schedule, entries, tp.backend, tp.options, options.quant,
                                  options.eval_data, n_calibration, schedule_reason, shared)
        manifest["export_seconds"] = round(time.time() - t0, 2)
        write_json(tmp / MANIFEST, manifest)

        report, runtime = _parity(tp.backend, tmp, manifest, model, graphs, ckpt, test_images, test_labels, options)
        report["data"] = options.eval_data["description"]
        report["machine"] = cpu_info()  # int8 kernels (and so these figures) depend on the CPU: say which
        n = options.golden_images
        golden = build_golden(model, graphs, schedule, ckpt.config, test_images[:n], test_labels[:n], runtime,
                              options.quant.mode, target, options.parity_bounds().min_snr_db)
        if options.quant.quantized and runtime is None:
            log(f"{target}: golden vectors are PyTorch fp32 values: this quantized bundle cannot run here "
                "to record its own (the apps' exact checks need a bundle exported where it runs)")
        raw = write_json(tmp / GOLDEN, golden)
        manifest.update(golden=GOLDEN, golden_sha256=manifest_digest(raw), parity=report)
        data = write_json(tmp / MANIFEST, manifest)
        atomic_write_bytes(tmp / DIGEST, lambda f: f.write((manifest_digest(data) + "\n").encode()))
        log(format_report(target, report))
        check_interrupt()  # never publish after a stop request, even one an exception handler swallowed
        if report["status"] == "fail":
            rejected = reject(tmp, out_dir, target)
            raise ParityError(f"{target} bundle failed parity ({'; '.join(report['failures'])}); "
                              f"kept for inspection in {rejected}, nothing was published to {final}",
                              target, ParityReport.from_json(report).failures, rejected)
        publish(tmp, final)
        return final, report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _share_weights(backend, schedule: Schedule, bundle_dir: Path, rels: dict[str, str]) -> dict | None:
    """A fused bundle on a backend that can: the weights all expert paths hold alike, stored once
    (shared_weights.py); returns the manifest's shared_weights block, or None."""
    if not shared_weights.applies(schedule, backend):
        return None
    paths = [g for e in range(schedule.num_experts) for g in schedule.expert_graphs(e)]
    table = backend.share_weights({g: bundle_dir / rels[g] for g in paths}, bundle_dir / shared_weights.FILE)
    if not table:  # every path holds the MoE attention: nothing in common means the split is broken
        raise VmoeError(f"{backend.name}: the expert paths share no weights; this is a bug in vmoe-export")
    return shared_weights.block(bundle_dir, paths, table, sha256_of, size_of)


def graph_entry(g: Graph, rel: str, path: Path, quant: GraphQuant) -> dict:
    """A graph's manifest entry: where its artifact is, its checksum, tensors, FLOPs and parameters."""
    io = g.io()
    return {
        "path": rel, "role": g.role, "layer": g.spec.layer, "expert": g.spec.expert,
        "sha256": sha256_of(path), "size_bytes": size_of(path),
        "quantization": {"mode": quant.mode, "calibration": quant.calibration},
        "inputs": [t.to_json() for t in io.inputs], "outputs": [t.to_json() for t in io.outputs],
        "flops": count_flops(g.module, tuple(g.inputs.values())), "params": count_params(g.module),
    }


def _parity(backend, bundle_dir: Path, manifest: dict, model, graphs, ckpt, images_u8, labels, options
            ) -> tuple[dict, BundleRuntime | None]:
    reason = backend.runtime_unavailable()
    if reason:
        return verify_specs(backend, bundle_dir, manifest, reason), None
    n = min(options.n_parity_images(), len(images_u8))
    x = preprocess(images_u8[:n], ckpt.config)
    runtime = BundleRuntime(bundle_dir, require_parity=False, self_test=False)  # no parity or golden yet
    labelled = options.eval_data["kind"] != "synthetic"  # noise images have no labels: accuracy would mean nothing
    return check_bundle(runtime, model, graphs, x, labels[:n], options.parity_bounds(), options.progress, labelled), runtime


def calibrate(cfg, graphs: list[Graph], schedule: Schedule, quant: QuantOptions,
              calibration_images: torch.Tensor | None, log=print) -> dict[str, GraphQuant]:
    """Each graph's quantization; static-int8 calibrates on `calibration_images` (uint8 N,C,H,W) as the
    fp32 model routes them."""
    x = None
    if quant.calibrated and calibration_images is not None:
        x = preprocess(calibration_images[: quant.calibration_images], cfg)
    return quantize_plan(graphs, schedule, quant, x, log)
