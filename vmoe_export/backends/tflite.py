"""TFLite (LiteRT) via litert-torch, run with ai-edge-litert's Interpreter signature runner."""

from __future__ import annotations

import contextlib
import io as _io
import os
from pathlib import Path

import numpy as np

from ..split import Graph, GraphIO
from . import Backend, NoOptions, RunOptions


def export(graph: Graph, path: Path, options: NoOptions) -> None:
    import litert_torch

    # litert-torch prints a progress tree per conversion; keep the export's own progress readable.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(_io.StringIO()):
        model = litert_torch.convert(graph.module.eval(), tuple(graph.inputs.values()))
        model.export(str(path))


def load(path: Path, io: GraphIO, run: RunOptions):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=run.threads or None)
    signature = interpreter.get_signature_list()["serving_default"]
    runner_fn = interpreter.get_signature_runner("serving_default")
    # litert-torch names signature tensors args_N / output_N in positional order.
    in_names = sorted(signature["inputs"], key=_position)
    out_names = sorted(signature["outputs"], key=_position)
    if len(in_names) != len(io.inputs) or len(out_names) != len(io.outputs):
        raise ValueError(f"{path}: signature {signature} does not match the manifest's inputs/outputs")

    def runner(inputs: list[np.ndarray]) -> list[np.ndarray]:
        result = runner_fn(**{name: np.ascontiguousarray(x, dtype=np.float32) for name, x in zip(in_names, inputs, strict=True)})
        return [result[name] for name in out_names]

    return runner


def _position(name: str) -> int:
    return int(name.rsplit("_", 1)[-1])


def start_runtime() -> None:
    from ai_edge_litert.interpreter import Interpreter  # noqa: F401

BACKEND = Backend("tflite", ".tflite", distributions=("litert-torch", "ai-edge-litert"),
                  modules=("litert_torch", "ai_edge_litert"), export=export, load=load,
                  start_runtime=start_runtime)
