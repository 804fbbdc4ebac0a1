"""TFLite (LiteRT) via litert-torch, run with ai-edge-litert's Interpreter signature runner.

Quantization is ai-edge-quantizer on the converted fp32 model, with its own recipes:
dynamic_wi8_afp32, weight_only_wi8_afp32, and for static-int8 its static W8A8 configuration
calibrated through the model's signature. Chosen over litert-torch's PT2E quantizer because it is
the LiteRT team's current tool, works on the .tflite the fp32 path already writes, and offers all
three modes. Static int8 covers the weight ops only (FULLY_CONNECTED, CONV_2D), the rest staying float
between QUANTIZE / DEQUANTIZE: int8 BATCH_MATMUL is slow under XNNPACK here, so on every supported op (the stock
static_wi8_ai8) the vit-12x192 trunk ran 1.4-1.8x slower than fp32 on an x86 CPU, on the weight ops 0.45x, with
a higher SNR (35.4 against 26.5 dB; benchmarks/results/litert_static_int8_ops.md). The INPUT and OUTPUT ops are
excluded so the graph keeps float32 I/O like every other bundle.
"""

from __future__ import annotations

import contextlib
import io as _io
import os
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from ..graphio import GraphIO
from . import ArtifactRecord, Backend, NoOptions, RunOptions

if TYPE_CHECKING:  # the build side; a runtime-only install has neither
    from ..quantize import GraphQuant
    from ..split import Graph


def export(graph: Graph, path: Path, options: NoOptions, quant: GraphQuant) -> None:
    import litert_torch

    # litert-torch and ai-edge-quantizer print progress and reports; keep the export's own progress readable.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(_io.StringIO()):
        model = litert_torch.convert(graph.module.eval(), tuple(graph.inputs.values()))
        model.export(str(path))
        if quant.mode != "none":
            path.write_bytes(quantize(path, quant))


def quantize(fp32: Path, quant: GraphQuant, static_ops: tuple[str, ...] | None = None) -> bytes:
    """The quantized model for `quant.mode`; static-int8 calibrates on `quant.samples` and quantizes `static_ops`
    (ai-edge-quantizer's op names; default STATIC_OPS, "ALL_SUPPORTED" for the stock recipe's every op)."""
    from ai_edge_quantizer import qtyping, quantizer, recipe, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    q = quantizer.Quantizer(str(fp32))
    if quant.mode == "dynamic-int8":
        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        return q.quantize().quantized_model
    if quant.mode == "weight-int8":
        q.load_quantization_recipe(recipe.weight_only_wi8_afp32())
        return q.quantize().quantized_model
    rm = recipe_manager.RecipeManager()
    for op in static_ops or STATIC_OPS:
        rm.add_static_config(".*", getattr(qtyping.TFLOperationName, op), activation_num_bits=8, weight_num_bits=8)
    for io_op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
        rm.add_quantization_config(".*", io_op, algorithm_key=AlgorithmName.NO_QUANTIZE)
    q.load_quantization_recipe(rm.get_quantization_recipe())
    names = _input_names(fp32)
    data = {SIGNATURE: [{n: t.numpy() for n, t in zip(names, s, strict=True)} for s in quant.samples]}
    return q.quantize(q.calibrate(data)).quantized_model


SIGNATURE = "serving_default"
STATIC_OPS = ("FULLY_CONNECTED", "CONV_2D")  # the ops XNNPACK runs in int8 on a CPU (see the module's docstring)


def _input_names(path: Path) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    return _signature_names(Interpreter(model_path=str(path)))[0]


def _signature_names(interpreter) -> tuple[list[str], list[str]]:
    """The signature's input and output names in positional order (litert-torch names them args_N / output_N)."""
    signature = interpreter.get_signature_list()[SIGNATURE]
    return sorted(signature["inputs"], key=_position), sorted(signature["outputs"], key=_position)


def load(path: Path, io: GraphIO, run: RunOptions, record: ArtifactRecord):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=run.threads or None)
    # Applies the XNNPACK delegate now rather than on the first run, so its arena and weight packing count as
    # load time and its native notice ("Created TensorFlow Lite XNNPACK delegate") falls in the load's quiet().
    interpreter.allocate_tensors()
    runner_fn = interpreter.get_signature_runner(SIGNATURE)
    in_names, out_names = _signature_names(interpreter)
    if len(in_names) != len(io.inputs) or len(out_names) != len(io.outputs):
        raise ValueError(f"{path}: signature inputs {in_names} / outputs {out_names} do not match the manifest's "
                         "inputs/outputs")

    def runner(inputs: list[np.ndarray]) -> list[np.ndarray]:
        result = runner_fn(**{name: np.ascontiguousarray(x, dtype=np.float32) for name, x in zip(in_names, inputs, strict=True)})
        return [result[name] for name in out_names]

    return runner


def _position(name: str) -> int:
    return int(name.rsplit("_", 1)[-1])


def start_runtime() -> None:
    from ai_edge_litert.interpreter import Interpreter  # noqa: F401

BACKEND = Backend("tflite", ".tflite", distributions=("litert-torch", "ai-edge-litert", "ai-edge-quantizer"),
                  modules=("litert_torch", "ai_edge_litert", "ai_edge_quantizer"), runtime_modules=("ai_edge_litert",),
                  export=export, load=load,
                  quantization=("none", "dynamic-int8", "static-int8", "weight-int8"), start_runtime=start_runtime,
                  # ai-edge-quantizer's static recipe takes plain min/max ranges: on the toy's 2,000-image ablation
                  # (with the former every-op recipe), experts calibrated on their routed images alone (38-85 of
                  # 256) scored 27.0 dB mean expert SNR, on every image 31.1 dB, with equal accuracy and routing.
                  # (XNNPACK's histogram observers and ONNX Runtime do better with routed calibration: 33.3 vs
                  # 30.3 dB and 32.8 vs 28.9 dB.)
                  calibration="all", recipe="static ops: " + ",".join(STATIC_OPS))
