"""CoreML via coremltools: ExportedProgram (after run_decompositions) -> mlprogram .mlpackage.

Prediction needs Apple's Core ML framework, i.e. macOS; on other systems the bundle is
verified structurally (spec inputs/outputs/shapes) and numeric parity is skipped.
Quantization: weight-int8 is ct.optimize.coreml.linear_quantize_weights (per-channel symmetric
int8). static-int8 (W8A8) is calibrated in PyTorch with PT2E (the same quantizer and calibration
inputs as the ExecuTorch bundle) and converted by ct.convert, whose PyTorch frontend maps the
quantize/dequantize ops to MIL (int8 constexpr weights, quantized activations). coremltools' own
activation flow, linear_quantize_activations, calibrates by running the model in Core ML, i.e. only
on macOS, and its PT2E CoreMLQuantizer imports torch.ao modules that torch 2.13 no longer has; this
path works on every OS. 4-bit palettization stays a CoreML extra (--coreml-compress palettize4).
"""

from __future__ import annotations

import argparse
import contextlib
import io as _io
import logging
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..graphio import GraphIO
from . import ArtifactRecord, Backend, BackendUnavailable, RunOptions

if TYPE_CHECKING:  # the build side
    from ..quantize import GraphQuant
    from ..split import Graph

COMPRESSION = ("none", "palettize4")


@dataclass(frozen=True)
class CoreMLOptions:
    compress: str = "none"  # none | palettize4 (4-bit k-means weights); int8 is --quantize weight-int8
    fp16: bool = False  # compute precision; fp32 by default

    def __post_init__(self) -> None:
        if self.compress not in COMPRESSION:
            raise ValueError(f"unknown CoreML compression '{self.compress}'; choose one of {', '.join(COMPRESSION)}")


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--coreml-compress", default="none", choices=COMPRESSION,
                       help="CoreML 4-bit k-means weight palettization with ct.optimize.coreml (default none); "
                       "for int8 weights use --quantize weight-int8")
    group.add_argument("--coreml-fp16", action="store_true", help="CoreML compute precision fp16 (default fp32)")


def options_from_args(args: argparse.Namespace) -> CoreMLOptions:
    return CoreMLOptions(compress=args.coreml_compress, fp16=args.coreml_fp16)


def _ct():
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    import coremltools as ct

    return ct


def export(graph: Graph, path: Path, options: CoreMLOptions, quant: GraphQuant) -> None:
    import torch

    from . import _pt2e as pt2e

    ct = _ct()
    example = tuple(graph.inputs.values())
    exported = torch.export.export(graph.module, example)
    if quant.mode == "static-int8":
        exported = torch.export.export(pt2e.quantize(exported.module(), quant, example), example)
    exported = exported.run_decompositions({})
    precision = ct.precision.FLOAT16 if options.fp16 else ct.precision.FLOAT32
    with contextlib.redirect_stderr(_io.StringIO()):  # coremltools draws a progress bar per MIL pass
        model = ct.convert(
            exported,
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS17,
            compute_precision=precision,
            inputs=[ct.TensorType(name=n, shape=tuple(t.shape)) for n, t in graph.inputs.items()],
            outputs=[ct.TensorType(name=n) for n in graph.outputs],
            skip_model_load=True,
        )
        if quant.mode == "weight-int8":
            model = quantize_weights(model)
        model = compress(model, options.compress)
    model.save(str(path))


def quantize_weights(model):
    from coremltools.optimize import coreml as cto

    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"))
    return cto.linear_quantize_weights(model, config)


def compress(model, mode: str):
    if mode == "none":
        return model
    from coremltools.optimize import coreml as cto

    config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=4))
    return cto.palettize_weights(model, config)


def quantization_unavailable(mode: str, options: CoreMLOptions) -> str | None:
    """Why a quantization mode cannot be produced with these options."""
    if mode != "none" and options.compress != "none":
        return f"--coreml-compress {options.compress} replaces the weights --quantize {mode} would quantize: pick one"
    return None


def runtime_unavailable() -> str | None:
    if platform.system() != "Darwin":
        return "CoreML prediction needs macOS (Core ML framework); on this system the bundle is spec-verified only"
    return None


def check_artifact(path: Path, io: GraphIO) -> None:
    """Open the saved package and check its spec against the manifest: an mlprogram whose input
    names and shapes and output names are the graph's."""
    ct = _ct()
    try:
        spec = ct.utils.load_spec(str(path))
    except Exception as e:  # coremltools raises bare Exceptions for unreadable packages
        raise ValueError(f"{path.name}: cannot be read as a Core ML package ({str(e).strip()[:200]})") from None
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"{path.name}: not an mlprogram")
    inputs = [(i.name, list(i.type.multiArrayType.shape)) for i in spec.description.input]
    outputs = [o.name for o in spec.description.output]
    want_in = [(t.name, list(t.shape)) for t in io.inputs]
    if inputs != want_in or outputs != io.output_names:
        raise ValueError(f"{path.name}: spec has inputs {inputs} / outputs {outputs}, manifest says {want_in} / {io.output_names}")


def load(path: Path, io: GraphIO, run: RunOptions, record: ArtifactRecord):
    reason = runtime_unavailable()
    if reason:
        raise BackendUnavailable(reason)
    ct = _ct()
    model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
    in_names, out_names = io.input_names, io.output_names

    def runner(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        result = model.predict(dict(zip(in_names, inputs, strict=True)))
        return [np.asarray(result[name], dtype=np.float32) for name in out_names]

    return runner


BACKEND = Backend(
    "coreml", ".mlpackage", distributions=("coremltools",), modules=("coremltools",), export=export, load=load,
    options=CoreMLOptions, quantization=("none", "weight-int8", "static-int8"),
    quantization_unavailable=quantization_unavailable,
    runtime_unavailable=runtime_unavailable, check_artifact=check_artifact,
    add_arguments=add_arguments, options_from_args=options_from_args, start_runtime=_ct,
)
