"""ExecuTorch: torch.export -> to_edge_transform_and_lower(XnnpackPartitioner) -> .pte,
run with executorch's Python runtime (the same C++ runtime and XNNPACK kernels as on device).

Each graph is its own self-contained .pte (weights inside): XNNPACK keys external weights by
content hash, so a shared .ptd would tie experts together and defeat loading one alone.

Quantization is ExecuTorch's PT2E flow for XNNPACK: XNNPACKQuantizer with per-channel symmetric
int8 weights (dynamic: activations quantized per call; static: ranges observed on the graph's
calibration inputs), prepare_pt2e -> calibrate -> convert_pt2e, then lowered like fp32. XNNPACK
has no weight-only int8 mode, so weight-int8 is not offered.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..graphio import GraphIO
from . import ArtifactRecord, Backend, NoOptions, RunOptions

if TYPE_CHECKING:  # the build side
    from ..quantize import GraphQuant
    from ..split import Graph


def export(graph: Graph, path: Path, options: NoOptions, quant: GraphQuant) -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    import torch

    from . import _pt2e as pt2e

    example = tuple(graph.inputs.values())
    exported = torch.export.export(graph.module, example)
    if quant.mode != "none":
        exported = torch.export.export(pt2e.quantize(exported.module(), quant, example), example)
    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(program.buffer)


def set_threads(threads: int) -> None:
    """XNNPACK's threadpool is process-wide in ExecuTorch; resize it only when asked to."""
    if threads:
        from executorch.extension.pybindings import portable_lib

        if portable_lib._threadpool_get_thread_count() != threads:
            portable_lib._unsafe_reset_threadpool(threads)


def load(path: Path, io: GraphIO, run: RunOptions, record: ArtifactRecord):
    import torch  # ExecuTorch's Python runtime exchanges torch tensors: its wheel depends on torch
    from executorch.runtime import Runtime

    set_threads(run.threads)
    method = Runtime.get().load_program(Path(path)).load_method("forward")

    def runner(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        # execute() hands back clones of the planned output memory the next call reuses (the binding's
        # clone_outputs=True), so the arrays are the caller's without a copy of ours.
        return [o.numpy() for o in method.execute([torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])]

    return runner


def start_runtime() -> None:
    from executorch.runtime import Runtime

    Runtime.get()

BACKEND = Backend("executorch", ".pte", distributions=("executorch",), modules=("executorch",), export=export, load=load,
                  quantization=("none", "dynamic-int8", "static-int8"), start_runtime=start_runtime)
