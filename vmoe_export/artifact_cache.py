"""Reuse converted graphs across exports (e.g. the same model at k=1 and k=2, whose graphs are identical).
An artifact is stored under the cache directory by a key over everything that decides its bytes; a graph
with the same key converts to the same artifact, so it is copied instead of converted again."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from ._version import __version__
from .backends import Backend
from .native_output import quiet
from .quantize import FP32, GraphQuant
from .split import Graph
from .tensor_digest import update_tensors


def artifact_key(graph: Graph, backend: Backend, backend_options: Any, quant: GraphQuant = FP32) -> str:
    """Identifies a converted artifact: the graph's code path (role), tensors and weights, the backend, its
    options, the quantization (mode and calibration data), the tool versions and the backend's recipe."""
    # A module that runs a schedule (the baselines) computes differently for another k: its schedule is part of it.
    schedule = repr(getattr(graph.module, "schedule", None))
    h = hashlib.sha256(json.dumps({"role": graph.role, "schedule": schedule, "io": repr(graph.io()), "backend": backend.name,
                                   "options": repr(backend_options), "quant": quant.key(), "versions": backend.versions(),
                                   "recipe": backend.recipe, "vmoe_export": __version__}, sort_keys=True).encode())
    update_tensors(h, sorted(graph.module.state_dict().items()))
    return h.hexdigest()


def convert(graph: Graph, backend: Backend, backend_options: Any, path: Path, cache: Path | None,
            quant: GraphQuant = FP32) -> None:
    """Write one graph's artifact to `path`: from the cache when it holds the same key, else by converting
    (and then filling the cache, atomically). cache None: always convert."""
    def export(dst: Path) -> None:
        with quiet(f"{backend.name} conversion of {graph.name}"):
            backend.export(graph, dst, backend_options, quant)

    if cache is None:
        export(path)
        return
    cached = Path(cache) / f"{artifact_key(graph, backend, backend_options, quant)}{backend.suffix}"
    if not cached.exists():
        Path(cache).mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{uuid.uuid4().hex[:8]}")
        export(tmp)
        os.replace(tmp, cached) if tmp.is_file() else tmp.rename(cached)
    if cached.is_dir():
        shutil.copytree(cached, path)
    else:
        shutil.copyfile(cached, path)
