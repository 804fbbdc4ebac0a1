"""ONNX via torch.onnx's dynamo exporter, run with onnxruntime's CPU provider."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from . import Backend, package_version


def export(graph, path: Path, options: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph.module, tuple(graph.inputs.values()), dynamo=True, verbose=False,
            input_names=list(graph.inputs), output_names=list(graph.outputs),
        )
    program.save(str(path))


def load(path: Path, entry: dict):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(entry.get("threads", 0))
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    in_names = [i["name"] for i in entry["inputs"]]
    out_names = [o["name"] for o in entry["outputs"]]

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        return session.run(out_names, dict(zip(in_names, inputs, strict=True)))

    return run


def versions() -> dict[str, str]:
    return {name: package_version(name) for name in ("torch", "onnx", "onnxscript", "onnxruntime")}


BACKEND = Backend("onnx", ".onnx", export, load, versions)
