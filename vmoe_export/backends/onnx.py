"""ONNX via torch.onnx's dynamo exporter, run with onnxruntime's CPU provider."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..split import Graph, GraphIO
from . import Backend, NoOptions, RunOptions


def export(graph: Graph, path: Path, options: NoOptions) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph.module, tuple(graph.inputs.values()), dynamo=True, verbose=False,
            input_names=list(graph.inputs), output_names=list(graph.outputs),
        )
    program.save(str(path))


def load(path: Path, io: GraphIO, run: RunOptions):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = run.threads
    # A bundle opens one session per graph, each with its own intra-op pool. ORT's pool threads spin while
    # idle by default, so two dozen pools of 2 threads fight over the cores: measured at vit-12x192, 2 threads,
    # the routed bundle ran 6.3x slower than its dense twin. Idle threads sleep instead.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    in_names, out_names = io.input_names, io.output_names

    def runner(inputs: list[np.ndarray]) -> list[np.ndarray]:
        return session.run(out_names, dict(zip(in_names, inputs, strict=True)))

    return runner


def start_runtime() -> None:
    import onnxruntime  # noqa: F401

BACKEND = Backend("onnx", ".onnx", distributions=("onnx", "onnxscript", "onnxruntime"),
                  modules=("onnx", "onnxscript", "onnxruntime"), export=export, load=load,
                  start_runtime=start_runtime)
