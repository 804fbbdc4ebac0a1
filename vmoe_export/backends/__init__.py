"""Export backends: peers behind one small interface.

Each module in this package defines `BACKEND = Backend(...)`: how to write one graph's artifact,
how to load it into a runner, and what it can do (its typed export options, the quantization
modes it supports, whether its runtime runs on this OS, a structural artifact check). Adding a
backend is one new file plus its module name in REGISTRY; nothing else lists backend names.

Backend modules import their converter and runtime packages inside functions, so listing
backends, their options and capabilities costs nothing and works where a package is missing.
The line between build side and device side runs through each module: `export` may import torch
and the converter; `load` and everything at module level import only NumPy and the backend's
runtime (`runtime_modules`), so a bundle runs where neither torch nor a converter is installed.

`export(graph, path, options, quant)` receives the graph's quantize.GraphQuant: the mode to convert
it in (one the backend declares) and, for static-int8, its calibration inputs.

`load(path, io, run, record)` receives the artifact's ArtifactRecord: what the bundle's manifest says about
how it was made (the export options, the graph's quantization), for a backend whose loading depends on it,
and the verified tensors it reads from the bundle's shared-weights file (below).

`share_weights(artifacts, data_path)`, where a backend has it, rewrites the expert paths of a fused bundle so
that every weight they all hold byte for byte (both MoE layers' attention) is stored once, in `data_path`, and
returns the table of those tensors for the manifest (shared_weights.py). Its `load` then takes them from
`record.external`: the runtime reads and hashes that file once, so an expert switch reads only its own MLP. A
backend whose runtime maps that file itself, by the name its artifacts give it (`maps_shared_weights`: LiteRT),
gets no tensors; the runtime checks the file before every load that reads it instead, as it checks artifacts.
A runner takes the graph's inputs as float32 numpy arrays in manifest order and returns its
outputs in manifest order, so the runtime never sees backend-specific tensor names.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import ConfigError, VmoeError
from ..graphio import GraphIO
from ..weight_cache import default_dir as default_weight_cache_dir

if TYPE_CHECKING:  # the build side: a runtime-only install (no torch) never calls export
    from ..quantize import GraphQuant
    from ..split import Graph

# The registry: module names under vmoe_export.backends, in `--target all` order.
REGISTRY = ("executorch", "coreml", "tflite", "onnx")
TARGETS = REGISTRY

MAX_THREADS = 256  # bound on --threads for every backend alike (some runtimes crash on absurd counts)

Runner = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


class BackendUnavailable(VmoeError):
    """The backend's converter or runtime package is missing, or cannot run on this platform."""


@dataclass(frozen=True)
class RunOptions:
    """How a runtime runs the graphs it loads. threads=0: the runtime's own default. weight_cache_dir: where a
    runtime that repacks weights for the CPU keeps them on disk (weight_cache.py; default from the environment,
    None: packed on the heap). pack_shared_weights: whether a runtime lent the weights every expert path holds
    alike (ONNX Runtime) packs them for its GEMMs in every path it loads (faster paths) or keeps their one
    unpacked copy (less memory and a faster load per expert); None decides by their size (backends/onnx.py has
    the rule and the figures)."""

    threads: int = 0
    weight_cache_dir: Path | None = field(default_factory=default_weight_cache_dir)
    pack_shared_weights: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or not 0 <= self.threads <= MAX_THREADS:
            raise ValueError(f"threads must be an integer from 1 to {MAX_THREADS} (0 = the runtime's default), got {self.threads!r}")
        if self.pack_shared_weights is not None and not isinstance(self.pack_shared_weights, bool):
            raise ValueError(f"pack_shared_weights must be True, False or None (by size), got {self.pack_shared_weights!r}")


@dataclass(frozen=True)
class NoOptions:
    """A backend without export options of its own."""


@dataclass(frozen=True)
class ArtifactRecord:
    """What a bundle records about how one artifact was made: its backend's export options (the manifest's
    backend_options; {} in bundles from before an option existed) and the graph's quantization mode."""

    backend_options: Mapping[str, Any] = field(default_factory=dict)
    quantization: str = "none"
    # Tensors the artifact stores outside itself (shared_weights.py), by name, as verified arrays: {} for most.
    external: Mapping[str, np.ndarray] = field(default_factory=dict)
    sha256: str = ""  # the artifact's verified content hash ("" when it is not from a bundle), keys weight caches
    shared_sha256: str = ""  # the verified hash of the shared-weights file it reads, if any: keys weight caches too

    @classmethod
    def from_manifest(cls, manifest: dict, graph: str, external: Mapping[str, np.ndarray] | None = None
                      ) -> "ArtifactRecord":
        q = manifest["graphs"][graph].get("quantization") or {}
        shared = manifest.get("shared_weights") or {}
        return cls(dict(manifest.get("backend_options") or {}), q.get("mode", "none"), dict(external or {}),
                   manifest["graphs"][graph]["sha256"], shared.get("sha256", "") if graph in shared.get("graphs", []) else "")

    @classmethod
    def of_export(cls, options: Any) -> "ArtifactRecord":
        """The record of an fp32 artifact exported here and now with `options` (a backend's options dataclass)."""
        return cls(asdict(options))


@dataclass(frozen=True)
class Backend:
    name: str
    suffix: str  # artifact file (or directory, for .mlpackage) suffix
    distributions: tuple[str, ...]  # pip packages it needs (their pins come from vmoe-export's own metadata)
    modules: tuple[str, ...]  # import names that must be importable to export
    export: Callable[[Graph, Path, Any, GraphQuant], None]  # (graph, artifact path, options instance, quantization)
    load: Callable[[Path, GraphIO, RunOptions, ArtifactRecord], Runner]
    options: type = NoOptions  # frozen dataclass of this backend's export options
    quantization: tuple[str, ...] = ("none",)  # quantization modes it supports (quantize.MODES names)
    # Why a supported mode cannot be produced here with these options (e.g. needs macOS), or None.
    quantization_unavailable: Callable[[str, Any], str | None] = lambda mode, options: None
    # What static-int8's --calibration auto means here: "routed" (each expert on its routed images) unless
    # measurements showed every-image calibration better for this backend (benchmarks/results/quantization.md).
    calibration: str = "routed"
    runtime_unavailable: Callable[[], str | None] = lambda: None  # why its runtime cannot run here, or None
    check_artifact: Callable[[Path, GraphIO], None] | None = None  # structural check without running
    add_arguments: Callable[[argparse._ArgumentGroup], None] | None = None  # its CLI flags
    options_from_args: Callable[[argparse.Namespace], Any] | None = None
    # Loads the runtime library itself (no model): its fixed cost, which memory measurements leave out.
    start_runtime: Callable[[], None] = lambda: None
    runtime_modules: tuple[str, ...] | None = None  # import names that must be importable to run; None: `modules`
    # What else decides the bytes this backend writes beyond its options and tool versions (a recipe choice);
    # artifact caches key on it, so changing it never serves an artifact converted the old way.
    recipe: str = ""
    # (expert path artifacts by graph, shared data file) -> tensor table: stores their common weights once.
    share_weights: Callable[[Mapping[str, Path], Path], dict[str, dict]] | None = None
    # Its runtime reads the shared data file itself (by the name the artifact gives it) instead of taking verified
    # tensors from the caller: the runtime then checks the file before each load of a graph that reads it.
    maps_shared_weights: bool = False

    def versions(self) -> dict[str, str]:
        return {d: package_version(d) for d in ("torch", *self.distributions)}

    def check_quantization(self, mode: str, options: Any) -> None:
        """Raise ConfigError, before any work, when this backend cannot produce `mode` here."""
        if mode not in self.quantization:
            raise ConfigError(f"--quantize {mode} is not supported by {self.name}; it supports: {', '.join(self.quantization)}")
        reason = self.quantization_unavailable(mode, options)
        if reason:
            raise ConfigError(f"--quantize {mode} on {self.name}: {reason}")

    def make_options(self, options: Any = None) -> Any:
        options = self.options() if options is None else options
        if not isinstance(options, self.options):
            raise TypeError(f"{self.name} takes {self.options.__name__}, not {type(options).__name__}")
        return options


def _module(name: str):
    if name not in REGISTRY:
        raise ValueError(f"unknown target '{name}'; choose one of: {', '.join(REGISTRY)}, all")
    return importlib.import_module(f"{__name__}.{name}")


def describe(name: str) -> Backend:
    """A backend's declaration (options, capabilities), whether or not its packages are installed."""
    return _module(name).BACKEND


def get_backend(name: str) -> Backend:
    """A backend ready to use: raises BackendUnavailable naming what to install when a package is missing."""
    backend = describe(name)
    _require(backend.modules, backend.distributions, f"target '{name}'")
    return backend


def get_runtime(name: str) -> Backend:
    """A backend ready to *run* bundles: needs only its runtime package (no converter, no torch)."""
    backend = describe(name)
    if backend.runtime_modules is None:
        _require(backend.modules, backend.distributions, f"running a {name} bundle")
    else:  # a runtime's import name is its distribution name with '-' for '_' (onnxruntime, ai_edge_litert)
        _require(backend.runtime_modules, tuple(m.replace("_", "-") for m in backend.runtime_modules),
                 f"running a {name} bundle")
    return backend


def _require(modules: tuple[str, ...], distributions: tuple[str, ...], what: str) -> None:
    """Raise BackendUnavailable naming the pip install when any of `modules` is not importable."""
    missing = [m for m in modules if _find_spec(m) is None]
    if missing:
        raise BackendUnavailable(f"{what} needs packages that are not installed ({', '.join(missing)}); "
                                 f"install them with: pip install {' '.join(_pinned(distributions))}")


def all_backends() -> list[Backend]:
    return [describe(n) for n in REGISTRY]


def runtime_targets() -> list[str]:
    """Backends whose runtime runs on this OS (the ones parity and benchmarks can execute)."""
    return [b.name for b in all_backends() if b.runtime_unavailable() is None]


def _find_spec(module: str):
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def _pinned(distributions: tuple[str, ...]) -> list[str]:
    """The exact pins vmoe-export was installed with (pyproject.toml), for an install hint."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        reqs = requires("vmoe-export") or []
    except PackageNotFoundError:
        reqs = []
    pins = {r.split("==")[0].strip().lower(): r.split(";")[0].strip() for r in reqs if "==" in r}
    return [pins.get(d.lower(), d) for d in distributions]


def package_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"
