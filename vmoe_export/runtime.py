"""Run a bundle through its backend's real runtime, loading only the experts images route to.

The runtime executes the schedule stored in the manifest (vmoe_export.schedule.execute), with
the backend's runners as graphs: the shared graphs (trunk, router, attention, head) are loaded
up front; an expert (its per-layer graphs) is loaded on first use and kept in an LRU cache
bounded by a count and/or a byte budget (artifact bytes, the memory a device maps for them).
Before a runtime is handed out it runs the bundle's golden vectors on this machine (selftest.py).
The apps' cores mirror this file.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends import ArtifactRecord, RunOptions, get_runtime
from .native_output import quiet
from .bundle import (BundleError, artifact_path, graph_sizes, manifest_schedule, read_manifest, read_shared_weights,
                     shared_weights_path)
from .graphio import GraphIO
from .machine import describe
from .preprocess import preprocess_image as _preprocess_image
from .schedule import Schedule, execute
from .selftest import SelfTestError, SelfTestReport
from .selftest import self_test as run_self_test


def select_experts(router_logits: np.ndarray, k: int) -> tuple[list[int], list[np.float32]]:
    """(expert ids, gates) for one image: the k largest router logits, ties to the lower id, gated by their
    softmax probabilities in float64 (model.route's rule, on the same float32 logits; the app cores' too).

    Plain Python, not NumPy: on a handful of logits NumPy's per-call cost is the whole cost, and inside the
    runtime's loop, between graph calls that evict the interpreter's caches, the NumPy version took about 20 us
    of a 0.7 ms image (fmnist-tiny, measured); this one a few."""
    logits = np.asarray(router_logits, dtype=np.float32).ravel().tolist()
    if not 1 <= k <= len(logits):
        raise ValueError(f"k={k} outside 1..{len(logits)}")
    top = max(logits)
    total = sum([math.exp(v - top) for v in logits])
    if k == 1:  # the fused schedule's case: the first maximum, whose exp(top - top) is 1.0 exactly
        return [logits.index(top)], [np.float32(1.0 / total)]
    order = sorted(range(len(logits)), key=logits.__getitem__, reverse=True)[:k]  # stable: ties keep id order
    return order, [np.float32(math.exp(logits[e] - top) / total) for e in order]


def min_byte_budget(manifest: dict) -> int:
    """Bytes the k largest experts take together: one image may be routed to exactly those."""
    return int(manifest_schedule(manifest).routed_experts_max(graph_sizes(manifest)))


@dataclass
class Prediction:
    logits: np.ndarray
    router_logits: np.ndarray
    experts: list[int]
    gates: list[float]
    timings_ms: dict[str, float]
    trace: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def label(self) -> int:
        return int(np.argmax(self.logits))


class ExpertCache:
    """LRU of loaded experts under a count and/or byte budget. Experts needed by the current
    image are pinned, so the budget must hold at least top_k experts."""

    def __init__(self, load, size_of, max_experts: int | None = None, max_bytes: int | None = None):
        self._load, self._size_of = load, size_of
        self.max_experts, self.max_bytes = max_experts, max_bytes
        self._entries: OrderedDict[int, object] = OrderedDict()
        self.loads = 0
        self.evictions = 0
        self.load_ms: list[float] = []

    def empty_copy(self) -> "ExpertCache":
        """A new, empty cache with the same loader and budgets (to time cold loads again)."""
        return ExpertCache(self._load, self._size_of, self.max_experts, self.max_bytes)

    @property
    def loaded(self) -> list[int]:
        return list(self._entries)

    @property
    def resident_bytes(self) -> int:
        return sum(self._size_of(e) for e in self._entries)

    def get(self, expert: int, pinned: set[int] = frozenset()) -> tuple[object, float]:
        """The loaded expert and the milliseconds spent loading it (0 when it was cached)."""
        if expert in self._entries:
            self._entries.move_to_end(expert)
            return self._entries[expert], 0.0
        self._make_room(self._size_of(expert), pinned | {expert})
        t0 = time.perf_counter()
        value = self._load(expert)
        ms = (time.perf_counter() - t0) * 1e3
        self._entries[expert] = value
        self.loads += 1
        self.load_ms.append(ms)
        return value, ms

    def _make_room(self, incoming: int, pinned: set[int]) -> None:
        def over() -> bool:
            count = len(self._entries) + 1
            return (self.max_experts is not None and count > self.max_experts) or (
                self.max_bytes is not None and self.resident_bytes + incoming > self.max_bytes
            )

        while over():
            victim = next((e for e in self._entries if e not in pinned), None)
            if victim is None:
                break  # only pinned experts left: the image needs them all
            del self._entries[victim]
            self.evictions += 1


VERIFY_MODES = ("every-load", "once")

# Per-stage timing keys: the schedule's graph roles, plus the expert loads.
STAGE_OF_ROLE = {"trunk": "trunk", "router": "router", "attention": "attention", "expert": "experts", "head": "head"}
STAGES = ("trunk", "router", "expert_load", "attention", "experts", "head")


class BundleRuntime:
    """Executes the schedule stored in a bundle's manifest through the backend's runtime."""

    def __init__(self, bundle_dir: Path, max_experts: int | None = None, max_bytes: int | None = None,
                 run: RunOptions | None = None, expect_digest: str | None = None, require_parity: bool = True,
                 verify: str = "every-load", self_test: bool = True):
        """verify="every-load" hashes an artifact each time it is loaded; "once" hashes every artifact when the
        bundle opens and afterwards re-hashes only files whose fingerprint changed (bundle.artifact_path), which
        takes the checksum out of expert switches. self_test=True runs the bundle's golden vectors on this machine
        before the runtime is handed out (verify.self_test) and raises SelfTestError naming the stage when they
        are not reproduced; `self_test_report` keeps the figures, `self_test_ms` its cost."""
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
        self.dir = Path(bundle_dir)
        self.manifest = read_manifest(self.dir, expect_digest, require_parity)
        self._verified: dict | None = {} if verify == "once" else None
        self.target = self.manifest["target"]
        self.backend = get_runtime(self.target)
        # Made here, not as a default argument: RunOptions reads the weight-cache directory from the environment.
        self.run_options = run if run is not None else RunOptions()
        self.schedule: Schedule = manifest_schedule(self.manifest)
        self.top_k, self.num_experts = self.schedule.top_k, self.schedule.num_experts
        if max_experts is not None and max_experts < self.top_k:
            raise ValueError(f"expert budget {max_experts} is below top_k={self.top_k}: one image needs {self.top_k} experts resident")
        if max_bytes is not None:
            need = min_byte_budget(self.manifest)
            if max_bytes < need:
                raise ValueError(f"byte budget {max_bytes} cannot hold {self.top_k} experts ({need} bytes needed)")
        specs = self.schedule.graphs()
        self._stage = {g.name: STAGE_OF_ROLE[g.role] for g in specs}
        self._shared_by = set((self.manifest.get("shared_weights") or {}).get("graphs", []))
        if self._verified is not None:
            for g in specs:
                self.verified_path(g.name)
        # Weights every expert path holds alike, stored once: verified here, once, and lent to each path it loads,
        # unless the backend's runtime reads the file itself (then verified_path checks it before each such load).
        self._shared = {} if self.backend.maps_shared_weights else read_shared_weights(self.dir, self.manifest)
        self._expert_of = {g.name: g.expert for g in specs if g.role == "expert"}
        self._sizes = graph_sizes(self.manifest)
        t0 = time.perf_counter()
        self.graphs = {name: self._load_graph(name) for name in self.schedule.shared_graphs}
        self.shared_load_ms = (time.perf_counter() - t0) * 1e3
        self.experts = ExpertCache(
            lambda e: {g: self._load_graph(g) for g in self.schedule.expert_graphs(e)},
            self.expert_bytes, max_experts, max_bytes,
        )
        # The fused schedule runs as the straight line of calls it is, unless a trace is asked for (execute walks
        # the steps then, recording every stage): on the shipped model the walk and its closures cost 11-17 us
        # an image, 2-3% of it. A test holds the two to the same outputs, bit for bit.
        line = self.schedule.fused_line()
        self._line = None if line is None else (
            self.graphs[line.trunk], None if line.router is None else self.graphs[line.router], line.paths,
            self.graphs[line.head])
        first = specs[0].name  # the graph that reads the image
        self.input_shape = tuple(self.manifest["graphs"][first]["inputs"][0]["shape"])
        self.self_test_report: SelfTestReport | None = None
        self.self_test_ms = 0.0
        if self_test:
            self.self_test_report = report = run_self_test(self)
            self.self_test_ms = report.seconds * 1e3
            # Only the shared graphs stay resident after open, as without the self-test: the experts its golden
            # images were routed to are dropped (a phone's memory is for the experts real images need).
            self.experts = self.experts.empty_copy()
            if not report.passed:
                raise SelfTestError(f"{self.dir}: self-test failed on this machine ({describe(report.machine)}): "
                                    + "; ".join(report.failures))

    def _load_graph(self, name: str):
        return self.load_verified(name, self.verified_path(name))

    def verified_path(self, name: str) -> Path:
        """One graph's artifact, checked (bundle.artifact_path), and the shared-weights file it makes its runtime
        read, where the runtime reads it itself (LiteRT), checked the same way first: what the runtime maps is
        what the manifest pins, every load or, verified once, while its fingerprint holds."""
        if name in self._shared_by and self.backend.maps_shared_weights:
            shared_weights_path(self.dir, self.manifest, self._verified)
        return artifact_path(self.dir, self.manifest, name, self._verified)

    def load_verified(self, name: str, path: Path):
        """One graph's runner from its artifact at `path`, which bundle.artifact_path has verified."""
        with quiet(f"{self.backend.name} loading {name}"):
            return self.backend.load(path, GraphIO.from_manifest(self.manifest["graphs"][name]), self.run_options,
                                     ArtifactRecord.from_manifest(self.manifest, name,
                                                                  self._shared if name in self._shared_by else None))

    def run_graph(self, name: str, *inputs: np.ndarray) -> list[np.ndarray]:
        """One graph of the bundle on numpy inputs (an expert's graphs are loaded through the cache)."""
        if name in self.graphs:
            return self.graphs[name](list(inputs))
        expert = self._expert_of[name]
        return self.experts.get(expert, {expert})[0][name](list(inputs))

    def expert_bytes(self, expert: int) -> int:
        return int(self.schedule.expert_total(self._sizes, expert))

    def classify(self, path: Path) -> Prediction:
        """Classify one image file (any format Pillow reads), preprocessed by the manifest's rule."""
        return self.predict(preprocess_image(path, self.manifest))

    def predict(self, image: np.ndarray, trace: bool = False) -> Prediction:
        """Classify one preprocessed image (float32, the trunk's input shape, e.g. 1x1x28x28)."""
        image = np.asarray(image, dtype=np.float32)
        if image.shape != self.input_shape:
            raise ValueError(f"input has shape {tuple(image.shape)}, the bundle expects {self.input_shape} "
                             "(preprocess with the manifest's preprocessing block)")
        # Per image this is Python between native calls, which evict the interpreter's caches: on the shipped
        # model each lookup or NumPy call here costs several times what it costs in a tight loop, so the loop
        # does as little as it can (fmnist-tiny, ExecuTorch, 1 thread: everything here but the graphs' own calls
        # took 0.06 ms of a 0.75 ms image, NumPy routing included; 0.03 ms since, less on the straight line).
        if self._line is not None and not trace:
            return self._predict_line(image)
        clock, stage_of, shared, expert_of = time.perf_counter, self._stage, self.graphs, self._expert_of
        t = dict.fromkeys(STAGES, 0.0)
        routed: dict[int, dict] = {}
        chosen: list = []

        def run(name: str, *inputs: np.ndarray):
            runner = shared[name] if name in shared else routed[expert_of[name]][name]
            t0 = clock()
            out = runner(inputs)
            t[stage_of[name]] += (clock() - t0) * 1e3
            return out

        def select(router_logits: np.ndarray):
            t0 = clock()
            experts, gates = select_experts(router_logits, self.top_k)
            t1 = clock()
            # Load every routed expert before the first MoE layer needs it, pinned against eviction.
            pinned = set(experts)
            for e in experts:
                routed[e] = self.experts.get(e, pinned)[0]
            t["router"] += (t1 - t0) * 1e3
            t["expert_load"] += (clock() - t1) * 1e3
            chosen[:] = router_logits, experts, gates
            return experts, gates

        traced: dict | None = {} if trace else None
        start = clock()
        logits = execute(self.schedule, run, select, image, traced)
        t["total"] = (clock() - start) * 1e3
        if traced is not None:
            traced.pop("experts", None)
            traced.pop("gates", None)
        router_logits, experts, gates = chosen
        return Prediction(logits.reshape(-1), router_logits.reshape(-1), experts, [float(g) for g in gates], t,
                          traced or {})

    def _predict_line(self, image: np.ndarray) -> Prediction:
        """predict() on a fused schedule: execute's steps as straight-line code (Schedule.fused_line)."""
        trunk, router, paths, head = self._line
        clock = time.perf_counter
        t0 = clock()
        out = trunk((image,))
        t1 = clock()
        if router is None:
            tokens, router_logits = out
        else:
            (tokens,) = out
            (router_logits,) = router((tokens,))
        experts, gates = select_experts(router_logits, 1)
        (e,) = experts
        t2 = clock()
        path = self.experts.get(e, {e})[0][paths[e]]
        t3 = clock()
        (tokens,) = path((tokens, gates[0].reshape(1, 1)))
        t4 = clock()
        (logits,) = head((tokens,))
        t5 = clock()
        timings = {"trunk": (t1 - t0) * 1e3, "router": (t2 - t1) * 1e3, "expert_load": (t3 - t2) * 1e3,
                   "attention": 0.0, "experts": (t4 - t3) * 1e3, "head": (t5 - t4) * 1e3, "total": (t5 - t0) * 1e3}
        return Prediction(logits.reshape(-1), router_logits.reshape(-1), experts, [float(gates[0])], timings)


def preprocess_image(path: Path, manifest: dict) -> np.ndarray:
    """An image file -> the trunk's float32 input, using the manifest's preprocessing block."""
    return _preprocess_image(path, manifest["preprocessing"])


__all__ = ["BundleRuntime", "BundleError", "ExpertCache", "Prediction", "SelfTestError", "preprocess_image", "select_experts"]
