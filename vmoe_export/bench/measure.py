"""Timing: the routed bundle end to end and per stage, cold vs warm expert use, single-graph
baselines on a backend, and eager PyTorch. Batch 1, warm-up then timed runs."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..backends import RunOptions, get_backend
from ..native_output import quiet
from ..runtime import BundleRuntime
from ..split import Graph, run_split, split_model
from .baselines import monolithic_graph


@dataclass(frozen=True)
class BenchSettings:
    warmup: int = 20
    runs: int = 300
    threads: int = 1
    quick: bool = False

    @classmethod
    def make(cls, quick: bool, threads: int) -> "BenchSettings":
        return cls(warmup=5, runs=40, threads=threads, quick=True) if quick else cls(threads=threads)

    @property
    def run_options(self) -> RunOptions:
        return RunOptions(threads=self.threads)


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


CAN_EVICT = hasattr(os, "posix_fadvise")


def evict_from_page_cache(path: Path) -> None:
    """Drop a file's (or a directory's files') clean pages from the OS page cache."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def bench_bundle(bundle: Path, images: list[np.ndarray], s: BenchSettings) -> dict:
    """End-to-end and per-stage latency of the routed runtime; cold vs warm expert use."""
    rt = BundleRuntime(bundle, run=s.run_options)  # opens with the self-test, whose cost is reported
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
    # The same with verify="once": every artifact hashed when the bundle opens, so a switch is only the
    # runtime's own load (what checksum time costs each switch is the difference).
    once = BundleRuntime(bundle, run=s.run_options, verify="once", self_test=False).experts
    once_cold = []
    for _ in range(trials):
        cache = once.empty_copy()
        once_cold += [cache.get(e)[1] for e in range(E)]
    # The same cold load with the expert's files first evicted from the OS page cache, so the read comes from
    # the storage device (as on a phone after the app was in the background): what posix_fadvise allows
    # without root. A disk cache below the OS (a VM host's) may still serve it; the report says so.
    uncached = []
    if CAN_EVICT:
        for _ in range(trials):
            cache = rt.experts.empty_copy()
            for e in range(E):
                for name in rt.schedule.expert_graphs(e):
                    evict_from_page_cache(bundle / rt.manifest["graphs"][name]["path"])
                uncached.append(cache.get(e)[1])
    return {
        "end_to_end": stats(per_stage.pop("total")),
        "expert_cold_load_verified_once": stats(once_cold),
        "expert_cold_load_uncached": stats(uncached) if uncached else None,
        "stages": {k: stats(v) for k, v in per_stage.items()},
        "shared_load_ms": rt.shared_load_ms,
        # Golden images through the bundle at open (BundleRuntime(self_test=True), the default): first runs of the
        # shared graphs and cold loads of the experts they route to included.
        "self_test_ms": rt.self_test_ms,
        "expert_cold_load": stats(cold),
        "expert_warm_lookup": stats(warm),
        "expert_bytes": [rt.expert_bytes(e) for e in range(E)],
        "routed_histogram": np.bincount(routed, minlength=E).tolist(),
    }


def bench_single_graph(target: str, graph: Graph, x: np.ndarray, s: BenchSettings, workdir: Path,
                       cache: Path | None = None) -> dict:
    """Export one graph with the backend's defaults (or take it from `cache`), then time it on `x`."""
    from ..exporter import convert

    backend = get_backend(target)
    path = workdir / f"{graph.name}{backend.suffix}"
    t0 = time.perf_counter()
    convert(graph, backend, backend.make_options(), path, cache)
    export_s = time.perf_counter() - t0
    with quiet(f"{target} loading {graph.name}"):
        run = backend.load(path, graph.io(), s.run_options)
    result = time_calls(lambda: run([x]), s.warmup, s.runs)
    return {**result, "export_s": export_s, "size_bytes": path.stat().st_size}


def bench_eager(model, dense, x: torch.Tensor, s: BenchSettings) -> dict:
    graphs = split_model(model)
    mono = monolithic_graph(model).module
    with torch.no_grad():
        return {
            "routed_model": time_calls(lambda: model(x), s.warmup, s.runs),
            "routed_split": time_calls(lambda: run_split(graphs, model.schedule, x), s.warmup, s.runs),
            "monolithic": time_calls(lambda: mono(x), s.warmup, s.runs),
            "dense_twin": time_calls(lambda: dense(x), s.warmup, s.runs),
        }
