"""vmoe-bench: FLOPs, latency, memory and expert-switch cost of exported bundles, per backend.

Every ratio in the report compares numbers measured in the same run on the same machine:
(a) routed split bundle vs the dense ViT of equal active FLOPs on the same backend,
(b) routed split bundle vs a monolithic export of the whole MoE (all experts computed, masked),
(c) exported vs eager PyTorch. Results go to OUT/bench.json, OUT/README.md and OUT/*.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import __version__
from .backends import BackendUnavailable, get_backend, package_version
from .baselines import dense_graph, monolithic_graph
from .bundle import BundleError, read_manifest
from .checkpoint import CheckpointError, load_checkpoint
from .data import DataError, load_fashion_mnist, preprocess
from .flops import count_flops
from .model import MobileVMoE, ModelConfig, active_params, count_params
from .runtime import BundleRuntime
from .split import run_split, split_model

RUNTIME_TARGETS = ("executorch", "tflite", "onnx")  # backends with a Linux runtime


@dataclass(frozen=True)
class BenchSettings:
    warmup: int = 20
    runs: int = 300
    threads: int = 1
    quick: bool = False

    @classmethod
    def make(cls, quick: bool, threads: int) -> "BenchSettings":
        return cls(warmup=5, runs=40, threads=threads, quick=True) if quick else cls(threads=threads)


def stats(ms: list[float]) -> dict:
    a = np.asarray(ms, dtype=np.float64)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean()), "n": len(a)}


def time_calls(fn, warmup: int, runs: int) -> dict:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return stats(out)


# ---------------------------------------------------------------- FLOPs and parameters

def flop_report(manifest: dict, model: MobileVMoE, dense: MobileVMoE) -> dict:
    graphs = manifest["graphs"]
    k, E, L = manifest["model"]["top_k"], manifest["model"]["num_experts"], manifest["model"]["moe_layers"]
    shared = {n: g["flops"] for n, g in graphs.items() if g["role"] != "expert"}
    per_expert = [sum(graphs[f"moe{layer}_e{e}"]["flops"] for layer in range(L)) for e in range(E)]
    x = torch.zeros(1, model.cfg.in_chans, model.cfg.image_size, model.cfg.image_size)
    dense_flops = count_flops(dense_graph(dense).module, (x,))
    mono_flops = count_flops(monolithic_graph(model).module, (x,))
    active = sum(shared.values()) + k * per_expert[0]
    return {
        "per_graph": {n: g["flops"] for n, g in graphs.items()},
        "per_expert_all_layers": per_expert,
        "active_per_image": active,
        "total_all_graphs": sum(shared.values()) + sum(per_expert),
        "dense_twin": dense_flops,
        "monolithic_moe": mono_flops,
        "active_over_dense": active / dense_flops,
        "params": {"total": count_params(model), "active_per_image": active_params(model), "dense_twin": count_params(dense)},
    }


# ---------------------------------------------------------------- latency

def bench_bundle(bundle: Path, images: np.ndarray, s: BenchSettings) -> dict:
    """End-to-end and per-stage latency of the routed runtime; cold vs warm expert use."""
    rt = BundleRuntime(bundle, threads=s.threads)
    E = rt.num_experts
    # Warm every expert first so the timed runs measure steady state, whatever the routing.
    for e in range(E):
        rt.experts.get(e)
    n = len(images)
    for i in range(s.warmup):
        rt.predict(images[i % n])
    per_stage: dict[str, list[float]] = {}
    routed = []
    for i in range(s.runs):
        pred = rt.predict(images[i % n])
        routed.extend(pred.experts)
        for stage, ms in pred.timings_ms.items():
            per_stage.setdefault(stage, []).append(ms)
    # Cold expert load: first use in a fresh cache = checksum + read + runtime init of its L graphs.
    cold, warm = [], []
    trials = 1 if s.quick else 3
    for _ in range(trials):
        cache = rt.experts.empty_copy()
        for e in range(E):
            cold.append(cache.get(e)[1])
            t0 = time.perf_counter()
            cache.get(e)
            warm.append((time.perf_counter() - t0) * 1e3)
    return {
        "end_to_end": stats(per_stage.pop("total")),
        "stages": {k: stats(v) for k, v in per_stage.items()},
        "shared_load_ms": rt.shared_load_ms,
        "expert_cold_load": stats(cold),
        "expert_warm_lookup": stats(warm),
        "expert_bytes": [e["size_bytes"] for e in rt.manifest["experts"]],
        "routed_histogram": np.bincount(routed, minlength=E).tolist(),
    }


def bench_single_graph(target: str, graph, x: np.ndarray, s: BenchSettings, workdir: Path) -> dict:
    backend = get_backend(target)
    path = workdir / f"{graph.name}{backend.suffix}"
    t0 = time.perf_counter()
    backend.export(graph, path, {})
    export_s = time.perf_counter() - t0
    entry = {"inputs": [{"name": "images"}], "outputs": [{"name": "logits"}], "threads": s.threads}
    run = backend.load(path, entry)
    result = time_calls(lambda: run([x]), s.warmup, s.runs)
    return {**result, "export_s": export_s, "size_bytes": path.stat().st_size}


def bench_eager(model: MobileVMoE, dense: MobileVMoE, x: torch.Tensor, s: BenchSettings) -> dict:
    graphs = split_model(model)
    mono = monolithic_graph(model).module
    k = model.cfg.top_k
    with torch.no_grad():
        return {
            "routed_model": time_calls(lambda: model(x), s.warmup, s.runs),
            "routed_split": time_calls(lambda: run_split(graphs, x, k), s.warmup, s.runs),
            "monolithic": time_calls(lambda: mono(x), s.warmup, s.runs),
            "dense_twin": time_calls(lambda: dense(x), s.warmup, s.runs),
        }


# ---------------------------------------------------------------- memory (separate process each)

_RSS_PROBE = r"""
import json, sys
from vmoe_export.runtime import BundleRuntime
from vmoe_export.backends import get_backend
def rss():
    f = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)
    return int(f['VmRSS'].split()[0]) * 1024, int(f['VmHWM'].split()[0]) * 1024
bundle = sys.argv[1]
get_backend(json.load(open(bundle + '/manifest.json'))['target'])
base = rss()[0]
rt = BundleRuntime(bundle, threads=1)
shared = rss()[0]
import numpy as np
rt.predict(np.zeros(rt.input_shape, np.float32))
routed, routed_count = rss()[0], len(rt.experts.loaded)
for e in range(rt.num_experts):
    rt.experts.get(e)
rt.predict(np.zeros(rt.input_shape, np.float32))
full, peak = rss()
print(json.dumps({"baseline_rss": base, "shared_loaded_rss": shared, "routed_resident_rss": routed,
                  "all_experts_rss": full, "peak_rss": peak, "routed_experts": routed_count}))
"""


def measure_rss(bundle: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(bundle)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    m = json.loads(r.stdout.strip().splitlines()[-1])
    mb = 1 / 2**20
    return {
        **m,
        "shared_graphs_mb": (m["shared_loaded_rss"] - m["baseline_rss"]) * mb,
        "routed_resident_mb": (m["routed_resident_rss"] - m["baseline_rss"]) * mb,
        "all_experts_mb": (m["all_experts_rss"] - m["baseline_rss"]) * mb,
    }


# ---------------------------------------------------------------- driver

def machine_info(threads: int) -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version(),
            "threads_requested": threads, "torch_threads": torch.get_num_threads(),
            "versions": {p: package_version(p) for p in ("vmoe-export", "torch", "executorch", "ai-edge-litert",
                                                         "litert-torch", "onnxruntime", "coremltools")}}


def run_benchmarks(bundles: dict[str, Path], ckpt_path: Path, dense_path: Path | None, s: BenchSettings,
                   images_u8: torch.Tensor, progress: bool = True) -> dict:
    torch.set_num_threads(s.threads)
    ckpt = load_checkpoint(ckpt_path)
    model = ckpt.build_model()
    dense = load_checkpoint(dense_path).build_model() if dense_path and dense_path.exists() else MobileVMoE(model.cfg.dense_twin()).eval()
    x = preprocess(images_u8, model.cfg.mean, model.cfg.std)
    for target, path in bundles.items():
        # The baselines are built from the checkpoint: comparing them with another model's bundle means nothing.
        if ModelConfig.from_dict(read_manifest(path)["model"]["config"]) != model.cfg:
            raise ValueError(f"bundle {path} was not exported from {ckpt_path} (model configs differ); "
                             "pass the matching --checkpoint or re-export the bundle")
    any_manifest = read_manifest(next(iter(bundles.values())))
    report = {
        "vmoe_export": __version__, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": asdict(s), "machine": machine_info(s.threads), "model": any_manifest["model"],
        "flops": flop_report(any_manifest, model, dense),
        "eager": bench_eager(model, dense, x[:1], s), "backends": {},
    }
    np_images = [x[i : i + 1].numpy() for i in range(len(x))]
    with tempfile.TemporaryDirectory() as tmp:
        for target in tqdm(list(bundles), desc="benchmark backends", disable=not progress or None):
            out = {"bundle": str(bundles[target])}
            out["split"] = bench_bundle(bundles[target], np_images, s)
            work = Path(tmp) / target
            work.mkdir()
            out["dense_twin"] = bench_single_graph(target, dense_graph(dense), np_images[0], s, work)
            out["monolithic"] = bench_single_graph(target, monolithic_graph(model), np_images[0], s, work)
            out["memory"] = measure_rss(bundles[target])
            report["backends"][target] = out
    report["ratios"] = ratios(report)
    return report


def ratios(report: dict) -> dict:
    eager = report["eager"]["routed_model"]["median_ms"]
    out = {}
    for target, b in report["backends"].items():
        split = b["split"]["end_to_end"]["median_ms"]
        out[target] = {
            "split_over_dense_twin": split / b["dense_twin"]["median_ms"],
            "split_over_monolithic": split / b["monolithic"]["median_ms"],
            "split_over_eager_model": split / eager,
            "cold_load_over_warm_expert_exec": b["split"]["expert_cold_load"]["median_ms"]
            / max(b["split"]["stages"]["experts"]["median_ms"], 1e-9),
        }
    return out


def find_or_export_bundles(targets: list[str], bundles_dir: Path, ckpt_path: Path, test, progress: bool) -> dict[str, Path]:
    from .export import ExportOptions, export_bundle

    found = {}
    for t in targets:
        path = bundles_dir / t
        if not (path / "manifest.json").exists():
            print(f"no {t} bundle in {bundles_dir}: exporting one (parity on 100 images)", file=sys.stderr)
            export_bundle(load_checkpoint(ckpt_path), t, bundles_dir, test.images, test.labels,
                          ExportOptions(parity_images=100, progress=progress))
        found[t] = path
    return found


def main(argv: list[str] | None = None) -> int:
    from .cli import DEFAULT_CHECKPOINT, _fail
    from .report import write_report

    p = argparse.ArgumentParser(
        prog="vmoe-bench",
        description="Benchmark exported bundles on this CPU: FLOPs per graph and per image, per-stage and end-to-end "
        "latency (median/p90), cold vs warm expert load, resident memory with routed vs all experts, and ratios "
        "against a dense ViT of equal active FLOPs, a monolithic MoE export and eager PyTorch, all measured in one run. "
        "Bundles missing from --bundles are exported first. Writes bench.json, README.md and PNG plots to --out.",
    )
    p.add_argument("--bundles", type=Path, default=Path("bundles"), help="directory holding <target>/ bundles (default bundles)")
    p.add_argument("--target", default="all", choices=[*RUNTIME_TARGETS, "all"],
                   help="backend to benchmark; all = every backend with a runtime on this OS (CoreML needs macOS)")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="MoE checkpoint the bundles came from (default: shipped)")
    p.add_argument("--dense-checkpoint", type=Path, default=None,
                   help="dense twin checkpoint (default: dense.pt beside --checkpoint; latency does not depend on weights)")
    p.add_argument("--out", type=Path, default=Path("bench-report"),
                   help="report directory (default bench-report/; benchmarks/run_all.sh records into benchmarks/results/)")
    p.add_argument("--threads", type=int, default=1, help="threads per runtime and for eager torch (default 1, like one big phone core)")
    p.add_argument("--quick", action="store_true", help="few runs, for CI and smoke checks (under two minutes)")
    p.add_argument("--images", type=int, default=64, help="test images cycled through (different images take different routes)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.threads < 1 or args.images < 1:
        return _fail("vmoe-bench", "--threads and --images must be at least 1")
    targets = list(RUNTIME_TARGETS) if args.target == "all" else [args.target]
    try:
        for t in targets:
            get_backend(t)
        test = load_fashion_mnist().test
        bundles = find_or_export_bundles(targets, args.bundles, args.checkpoint, test, not args.quiet)
        dense_path = args.dense_checkpoint or args.checkpoint.with_name("dense.pt")
        s = BenchSettings.make(args.quick, args.threads)
        report = run_benchmarks(bundles, args.checkpoint, dense_path, s, test.images[: args.images], not args.quiet)
        write_report(report, args.out)
    except (BundleError, BackendUnavailable, CheckpointError, DataError, ValueError, FileNotFoundError) as e:
        return _fail("vmoe-bench", str(e))
    print(f"wrote {args.out}/bench.json, README.md and plots")
    for target, r in report["ratios"].items():
        b = report["backends"][target]
        print(f"{target}: split {b['split']['end_to_end']['median_ms']:.3f} ms | dense twin {b['dense_twin']['median_ms']:.3f} ms "
              f"(x{r['split_over_dense_twin']:.2f}) | monolithic {b['monolithic']['median_ms']:.3f} ms (x{r['split_over_monolithic']:.2f}) "
              f"| eager model x{r['split_over_eager_model']:.2f} | cold expert load {b['split']['expert_cold_load']['median_ms']:.2f} ms")
    return 0
