"""Export backends. Each module in this package defines `BACKEND = Backend(...)`; adding a backend
is one new file plus its name in TARGETS.

A runner takes the graph's inputs as float32 numpy arrays in manifest order and returns its
outputs in manifest order, so the runtime never sees backend-specific tensor names.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

TARGETS = ("executorch", "coreml", "tflite", "onnx")

Runner = Callable[[list[np.ndarray]], list[np.ndarray]]

INSTALL_HINT = {
    "executorch": "executorch==1.5.1",
    "coreml": "coremltools==9.0",
    "tflite": "litert-torch==0.10.0 ai-edge-litert==2.3.0",
    "onnx": "onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.32.0",
}


class BackendUnavailable(RuntimeError):
    """The backend's converter or runtime package is missing, or cannot run on this platform."""


@dataclass(frozen=True)
class Backend:
    name: str
    suffix: str  # artifact file (or directory, for .mlpackage) suffix
    export: Callable  # (graph: split.Graph, path: Path, options: dict) -> None
    load: Callable[[Path, dict], Runner]  # (path, graph manifest entry) -> runner
    versions: Callable[[], dict[str, str]]
    runtime_unavailable: Callable[[], str | None] = lambda: None  # reason the runtime cannot run here
    check_artifact: Callable[[Path, dict], None] | None = None  # structural check without running


def get_backend(name: str) -> Backend:
    if name not in TARGETS:
        raise ValueError(f"unknown target '{name}'; choose one of: {', '.join(TARGETS)}, all")
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ImportError as e:
        raise BackendUnavailable(
            f"target '{name}' needs packages that are not installed ({e.name or e}); "
            f"install them with: pip install {INSTALL_HINT[name]}"
        ) from None
    return module.BACKEND


def package_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"
