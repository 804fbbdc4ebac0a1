"""CoreML via coremltools: ExportedProgram (after run_decompositions) -> mlprogram .mlpackage.

Prediction needs Apple's Core ML framework, i.e. macOS; on other systems the bundle is
verified structurally (spec inputs/outputs/shapes) and numeric parity is skipped.
Optional weight compression with ct.optimize.coreml: int8 linear or 4-bit palettization.
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
from pathlib import Path

import numpy as np
import torch

from . import Backend, package_version

logging.getLogger("coremltools").setLevel(logging.ERROR)
import coremltools as ct  # noqa: E402

COMPRESSION = ("none", "int8", "palettize4")


def export(graph, path: Path, options: dict) -> None:
    exported = torch.export.export(graph.module, tuple(graph.inputs.values())).run_decompositions({})
    precision = ct.precision.FLOAT16 if options.get("coreml_fp16") else ct.precision.FLOAT32
    with contextlib.redirect_stderr(io.StringIO()):  # coremltools draws a progress bar per MIL pass
        model = _convert(exported, graph, precision)
        model = compress(model, options.get("coreml_compress", "none"))
    model.save(str(path))


def _convert(exported, graph, precision):
    return ct.convert(
        exported,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS17,
        compute_precision=precision,
        inputs=[ct.TensorType(name=n, shape=tuple(t.shape)) for n, t in graph.inputs.items()],
        outputs=[ct.TensorType(name=n) for n in graph.outputs],
        skip_model_load=True,
    )


def compress(model, mode: str):
    if mode == "none":
        return model
    from coremltools.optimize import coreml as cto

    if mode == "int8":
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"))
        return cto.linear_quantize_weights(model, config)
    if mode == "palettize4":
        config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=4))
        return cto.palettize_weights(model, config)
    raise ValueError(f"unknown CoreML compression '{mode}'; choose one of {', '.join(COMPRESSION)}")


def runtime_unavailable() -> str | None:
    if platform.system() != "Darwin":
        return "CoreML prediction needs macOS (Core ML framework); on this system the bundle is spec-verified only"
    return None


def check_artifact(path: Path, entry: dict) -> None:
    """Check the saved spec against the manifest: names, shapes, float32 types."""
    spec = ct.utils.load_spec(str(path))
    inputs = [(i.name, list(i.type.multiArrayType.shape)) for i in spec.description.input]
    outputs = [o.name for o in spec.description.output]
    want_in = [(i["name"], list(i["shape"])) for i in entry["inputs"]]
    want_out = [o["name"] for o in entry["outputs"]]
    if inputs != want_in or outputs != want_out:
        raise ValueError(f"{path.name}: spec has inputs {inputs} / outputs {outputs}, manifest says {want_in} / {want_out}")
    if not spec.WhichOneof("Type") == "mlProgram":
        raise ValueError(f"{path.name}: not an mlprogram")


def load(path: Path, entry: dict):
    reason = runtime_unavailable()
    if reason:
        from . import BackendUnavailable

        raise BackendUnavailable(reason)
    model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
    in_names = [i["name"] for i in entry["inputs"]]
    out_names = [o["name"] for o in entry["outputs"]]

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        result = model.predict(dict(zip(in_names, inputs, strict=True)))
        return [np.asarray(result[name], dtype=np.float32) for name in out_names]

    return run


def versions() -> dict[str, str]:
    return {name: package_version(name) for name in ("torch", "coremltools")}


BACKEND = Backend("coreml", ".mlpackage", export, load, versions, runtime_unavailable, check_artifact)
