"""Timing: the routed bundle end to end and per stage, cold vs warm expert use, single-graph
baselines on a backend, and eager PyTorch. Batch 1, warm-up then timed runs.

The routed bundle and the baselines it is compared with are timed interleaved, in alternating rounds,
so that a shared machine's drift (another job starting, clocks changing) falls on all of them alike; each
ratio is taken per round and reported with its spread over the rounds."""

from __future__ import annotations

import time
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..backends import ArtifactRecord, RunOptions, get_backend
from ..native_output import quiet
from ..runtime import BundleRuntime
from ..split import Graph, run_split, split_model
from .baselines import monolithic_graph
from .memory import CAN_EVICT, evict_from_page_cache, zero_inputs


@dataclass(frozen=True)
class BenchSettings:
    warmup: int = 20
    runs: int = 300
    threads: int = 1
    quick: bool = False
    rounds: int = 10  # interleaved rounds the timed runs are split into
    pack_shared_weights: bool | None = None  # RunOptions.pack_shared_weights (None: by size)

    @classmethod
    def make(cls, quick: bool, threads: int, pack_shared_weights: bool | None = None) -> "BenchSettings":
        if quick:
            return cls(warmup=20, runs=200, threads=threads, quick=True, rounds=10, pack_shared_weights=pack_shared_weights)
        return cls(threads=threads, pack_shared_weights=pack_shared_weights)

    @property
    def run_options(self) -> RunOptions:
        return RunOptions(threads=self.threads, pack_shared_weights=self.pack_shared_weights)


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


def time_interleaved(fns: dict[str, Callable[[int], object]], warmup: int, runs: int,
                     rounds: int) -> dict[str, list[list[float]]]:
    """Per function, the ms of each timed call, grouped by round. Every function is warmed up first; then each
    round times runs/rounds calls of each in turn, the order rotated every round so no function always
    follows the same one. fn(i) gets the call's index (to pick an input)."""
    for fn in fns.values():
        for i in range(warmup):
            fn(i)
    names, rounds = list(fns), max(1, min(rounds, runs))
    sizes = [runs // rounds + (r < runs % rounds) for r in range(rounds)]  # `runs` calls in all
    out: dict[str, list[list[float]]] = {n: [] for n in names}
    for r, size in enumerate(sizes):
        first = sum(sizes[:r])
        for n in names[r % len(names):] + names[: r % len(names)]:
            ms = []
            for i in range(first, first + size):
                t0 = time.perf_counter()
                fns[n](i)
                ms.append((time.perf_counter() - t0) * 1e3)
            out[n].append(ms)
    return out


def round_ratios(num: list[list[float]], den: list[list[float]]) -> list[float]:
    """Median of `num` over median of `den`, round by round."""
    return [float(np.median(a) / np.median(b)) for a, b in zip(num, den, strict=True)]


def cold_load_steps(rt: BundleRuntime) -> dict:
    """Where an expert switch goes, step by step, per expert (its graphs together, files page-cached): the
    checks before a load (containment, size, sha256, which reads the file), the runtime's load (its own read,
    parse and init), and the first run (arenas, weights packed on first use)."""
    steps: dict[str, list[float]] = {"verify": [], "runtime_load": [], "first_run": []}
    for e in range(rt.num_experts):
        took = dict.fromkeys(steps, 0.0)
        for name in rt.schedule.expert_graphs(e):
            t0 = time.perf_counter()
            path = rt.verified_path(name)
            t1 = time.perf_counter()
            run = rt.load_verified(name, path)
            t2 = time.perf_counter()
            run(zero_inputs(rt, name))
            t3 = time.perf_counter()
            for step, ms in zip(steps, (t1 - t0, t2 - t1, t3 - t2)):
                took[step] += ms * 1e3
        for step, ms in took.items():
            steps[step].append(ms)
    return {step: stats(v) for step, v in steps.items()}


def bench_bundle(bundle: Path, images: list[np.ndarray], s: BenchSettings,
                 against: dict[str, Callable[[], object]] | None = None) -> dict:
    """End-to-end and per-stage latency of the routed runtime; cold vs warm expert use. `against` are
    baselines timed interleaved with it: their timings and the per-round ratios come back under "against"."""
    rt = BundleRuntime(bundle, run=s.run_options)  # opens with the self-test, whose cost is reported
    E = rt.num_experts
    # Warm every expert first so the timed runs measure steady state, whatever the routing.
    for e in range(E):
        rt.experts.get(e)
    n = len(images)
    per_stage: dict[str, list[float]] = {}
    routed = []

    def split(i: int) -> None:
        pred = rt.predict(images[i % n])
        routed.append(pred.experts)
        for stage, ms in pred.timings_ms.items():
            per_stage.setdefault(stage, []).append(ms)

    fns = {"split": split, **{k: (lambda i, f=f: f()) for k, f in (against or {}).items()}}
    timed = time_interleaved(fns, s.warmup, s.runs, s.rounds)
    # The warm-up calls were recorded too.
    per_stage = {k: v[s.warmup:] for k, v in per_stage.items()}
    routed = [e for experts in routed[s.warmup:] for e in experts]
    per_stage.pop("total")  # the runtime's own clock; the interleaved one (same calls, from outside) is reported
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
    flat = lambda rounds: [ms for r in rounds for ms in r]  # noqa: E731
    return {
        "end_to_end": stats(flat(timed["split"])),
        "against": {k: stats(flat(timed[k])) for k in against or {}},
        "round_ratios": {k: round_ratios(timed["split"], timed[k]) for k in against or {}},
        "expert_cold_load_verified_once": stats(once_cold),
        "expert_cold_load_steps": cold_load_steps(rt),
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


def load_single_graph(target: str, graph: Graph, x: np.ndarray, s: BenchSettings, workdir: Path,
                      cache: Path | None = None) -> tuple[Callable[[], object], dict]:
    """Export one graph with the backend's defaults (or take it from `cache`) and load it: a call that runs it
    on `x`, and its export time and size."""
    from ..exporter import convert

    backend = get_backend(target)
    path = workdir / f"{graph.name}{backend.suffix}"
    options = backend.make_options()
    t0 = time.perf_counter()
    convert(graph, backend, options, path, cache)
    export_s = time.perf_counter() - t0
    with quiet(f"{target} loading {graph.name}"):
        run = backend.load(path, graph.io(), s.run_options, ArtifactRecord.of_export(options))
    return (lambda: run([x])), {"export_s": export_s, "size_bytes": path.stat().st_size}


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
