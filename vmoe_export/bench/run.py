"""One benchmark run: machine facts, every measurement, and the ratios between them.

Ratios compare numbers measured in this run on this machine: (a) routed split bundle vs the
dense ViT of equal active FLOPs on the same backend, (b) routed split bundle vs a monolithic
export of the whole MoE (all experts computed, masked), (c) exported vs eager PyTorch.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .._version import __version__
from ..backends import package_version
from ..bundle import read_manifest
from ..data import preprocess
from ..model import MobileVMoE, ModelConfig
from .baselines import dense_graph, monolithic_graph
from .counts import flop_report
from .measure import BenchSettings, bench_bundle, bench_eager, load_single_graph
from .memory import measure_rss


def machine_info(threads: int) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version(),
            "threads_requested": threads, "torch_threads": torch.get_num_threads(),
            "versions": {p: package_version(p) for p in ("vmoe-export", "torch", "executorch", "ai-edge-litert",
                                                         "litert-torch", "onnxruntime", "coremltools")}}


def check_bundles_match(bundles: dict[str, Path], model: MobileVMoE, source: str) -> None:
    """The baselines are built from `model`: comparing them with another model's bundle means nothing."""
    for path in bundles.values():
        if ModelConfig.from_dict(read_manifest(path)["model"]["config"]) != model.cfg:
            raise ValueError(f"bundle {path} was not exported from {source} (model configs differ); "
                             "pass the matching --checkpoint/--config, or another --bundles directory")


def run_benchmarks(bundles: dict[str, Path], model: MobileVMoE, dense: MobileVMoE, s: BenchSettings,
                   images_u8: torch.Tensor, progress: bool = True, artifact_cache: Path | None = None) -> dict:
    """One benchmark run. artifact_cache reuses converted baseline graphs across runs (see export.convert)."""
    caller_threads = torch.get_num_threads()
    try:
        return _run_benchmarks(bundles, model, dense, s, images_u8, progress, artifact_cache)
    finally:
        torch.set_num_threads(caller_threads)


def _run_benchmarks(bundles: dict[str, Path], model: MobileVMoE, dense: MobileVMoE, s: BenchSettings,
                    images_u8: torch.Tensor, progress: bool, artifact_cache: Path | None) -> dict:
    torch.set_num_threads(s.threads)  # for the eager rows only
    model, dense = model.eval(), dense.eval()
    x = preprocess(images_u8, model.cfg)
    any_manifest = read_manifest(next(iter(bundles.values())))
    report = {
        "vmoe_export": __version__, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": asdict(s), "machine": machine_info(s.threads), "model": any_manifest["model"],
        "schedule": any_manifest["schedule"]["kind"],
        "schedule_reason": any_manifest["schedule"].get("reason"),  # None for bundles from before it was recorded
        "flops": flop_report(any_manifest, model, dense),
        "eager": bench_eager(model, dense, x[:1], s), "backends": {},
    }
    # From here PyTorch only hands tensors to the runtimes. Its intra-op pool left at s.threads competes with
    # the runtime's own threads (ExecuTorch's split paid 1.21x its dense twin at 2 threads that way, 1.02x
    # without: benchmarks/results/executorch_threads.md), and no phone runs it beside the runtime.
    torch.set_num_threads(1)
    report["machine"]["torch_threads_while_runtimes_run"] = torch.get_num_threads()
    np_images = [x[i : i + 1].numpy() for i in range(len(x))]
    with tempfile.TemporaryDirectory() as tmp:
        for target in tqdm(list(bundles), desc="benchmark backends", disable=not progress or None):
            work = Path(tmp) / target
            work.mkdir()
            baselines = {name: load_single_graph(target, graph, np_images[0], s, work, artifact_cache)
                         for name, graph in (("dense_twin", dense_graph(dense)), ("monolithic", monolithic_graph(model)))}
            split = bench_bundle(bundles[target], np_images, s, against={k: run for k, (run, _) in baselines.items()})
            timed = split.pop("against")
            out = {"bundle": str(bundles[target]), "split": split,
                   **{name: {**timed[name], **info} for name, (_, info) in baselines.items()}}
            out["memory"] = measure_rss(bundles[target], s.pack_shared_weights)
            report["backends"][target] = out
    report["ratios"] = ratios(report)
    return report


def ratios(report: dict) -> dict:
    eager = report["eager"]["routed_model"]["median_ms"]
    out = {}
    for target, b in report["backends"].items():
        split = b["split"]["end_to_end"]["median_ms"]
        per_round = b["split"]["round_ratios"]
        out[target] = {
            # The median of the per-round ratios: drift between rounds cancels, as both were timed in each.
            "split_over_dense_twin": float(np.median(per_round["dense_twin"])),
            "split_over_monolithic": float(np.median(per_round["monolithic"])),
            "spread_over_rounds": {k: [min(v), max(v)] for k, v in per_round.items()},
            "split_over_eager_model": split / eager,
            "cold_load_over_warm_expert_exec": b["split"]["expert_cold_load"]["median_ms"]
            / max(b["split"]["stages"]["experts"]["median_ms"], 1e-9),
        }
    return out
