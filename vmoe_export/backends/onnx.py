"""ONNX via torch.onnx's dynamo exporter, run with onnxruntime's CPU provider.

Quantization is onnxruntime.quantization's flow on the exported fp32 model: quant_pre_process
(shape inference and graph optimisation), then quantize_dynamic (int8 per-channel weights,
activations quantized per call) or quantize_static in QDQ format with a CalibrationDataReader over
the graph's calibration inputs. Inputs and outputs stay float32.

The int8 formats are chosen so that one bundle gives the same answers on every CPU it may meet
(INT8_FORMATS below). ONNX Runtime picks its int8 GEMM by CPU: with uint8 activations x int8 weights
(U8S8) on AVX2 or AVX-512 without VNNI it uses VPMADDUBSW, whose int16 pair sums saturate unless the
weights use 7 bits (`reduce_range`); VNNI and Arm kernels do not saturate. ONNX Runtime's quantization
guide names the problem and the two ways out (reduce_range, or U8U8).

An expert switch on ONNX Runtime is mostly session creation, and half of that is ORT's graph optimiser
(a 0.46 MB fused expert path of the shipped model on an AVX2 EPYC: 8.7 ms with it, 3.9 ms without, same
outputs). So fp32 graphs are optimised once at export, at ORT's "extended" level (fusions that hold on
every CPU; the "all" level adds layout transforms for the exporting CPU and ORT warns against moving such a
file), saved as the artifact, and loaded with the optimiser off (OnnxOptions.optimize_offline, recorded in
the manifest's backend_options). int8 graphs stay as quantized and are optimised at load: on x86 ORT
rewrites int8 weights for AVX2 CPUs without VNNI (Avx2WeightS8ToU8Transformer) only when it sees such a
CPU, so that choice must be made on the machine that runs the graph.

In a fused bundle the weights all expert paths hold alike (both MoE layers' attention) are ONNX external
data in the bundle's one shared-weights file (share_weights, shared_weights.py). ONNX Runtime refuses external
data outside a model's own folder, so the paths lie beside that file in experts/; reading it by path would
skip the bundle's checksum and copy the tensors into every session, so the runtime passes the verified tensors
in as initializers shared by all sessions (SessionOptions.add_initializer) and ORT never reads the file.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..graphio import GraphIO
from . import ArtifactRecord, Backend, RunOptions

if TYPE_CHECKING:  # the build side; a runtime-only install has neither
    from ..quantize import GraphQuant
    from ..split import Graph


@dataclass(frozen=True)
class OnnxOptions:
    # fp32 graphs optimised by ONNX Runtime at export (level extended) and loaded with its optimiser off.
    optimize_offline: bool = True


def optimized_offline(record: ArtifactRecord) -> bool:
    """Was this artifact optimised at export, so that it loads with the optimiser off?"""
    return record.backend_options.get("optimize_offline") is True and record.quantization == "none"


def _optimize(src: Path, dst: Path) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dst)
    opts.intra_op_num_threads = 1
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])


def export(graph: Graph, path: Path, options: OnnxOptions, quant: GraphQuant) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph.module, tuple(graph.inputs.values()), dynamo=True, verbose=False,
            input_names=list(graph.inputs), output_names=list(graph.outputs),
        )
    if quant.mode == "none" and not options.optimize_offline:
        program.save(str(path))
        return
    with tempfile.TemporaryDirectory(dir=path.parent) as work:
        fp32, pre = Path(work) / "fp32.onnx", Path(work) / "pre.onnx"
        program.save(str(fp32))
        if quant.mode == "none":
            _optimize(fp32, path)
        else:
            _quantize(fp32, pre, path, list(graph.inputs), quant)


# Measured on the shipped model (python benchmarks/onnx_int8_formats.py, benchmarks/results/int8_cpus.md: natively on
# AVX-512 VNNI, and on an emulated AVX2-only CPU, qemu-x86_64 -cpu Haswell, which runs ONNX Runtime's AVX2
# kernels). Dynamic int8 with signed per-channel weights, as shipped before: logits SNR 41.0 dB with VNNI but
# 23.8 dB on AVX2 (top-1 agreement 98.70%). With reduce_range: 40.4 / 40.7 dB, at the same speed (vit-12x192
# trunk, 1 thread: 0.64x fp32 either way); U8U8 holds too (40.5 / 41.0 dB) but runs at 0.83x. Static int8 as
# shipped (S8S8 QDQ): 31.9 dB with VNNI, 22.2 dB and -1.1 points of accuracy on AVX2; U8S8 with reduce_range
# 31.7 / 31.8 dB, and faster (0.76x fp32 against 0.85x).
INT8_FORMATS = {
    "dynamic-int8": {"weight_type": "QInt8", "per_channel": True, "reduce_range": True},
    "static-int8": {"activation_type": "QUInt8", "weight_type": "QInt8", "per_channel": True, "reduce_range": True},
}


def _quantize(fp32: Path, pre: Path, path: Path, input_names: list[str], quant: GraphQuant) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(fp32), str(pre))
        fmt = {k: getattr(QuantType, v) if k.endswith("_type") else v for k, v in INT8_FORMATS[quant.mode].items()}
        if quant.mode == "dynamic-int8":
            quantize_dynamic(str(pre), str(path), **fmt)
            return

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._it = iter([{n: t.numpy() for n, t in zip(input_names, s, strict=True)} for s in quant.samples])

            def get_next(self):
                return next(self._it, None)

        quantize_static(str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ, **fmt)


def share_weights(artifacts: Mapping[str, Path], data_path: Path) -> dict[str, dict]:
    """Store the initializers every artifact holds alike once, in data_path, as external data of each model."""
    import onnx
    from onnx import numpy_helper

    from .. import shared_weights

    models = {g: onnx.load(str(p)) for g, p in artifacts.items()}
    common = shared_weights.common_tensors(
        {g: {t.name: numpy_helper.to_array(t) for t in m.graph.initializer} for g, m in models.items()})
    table = shared_weights.write(data_path, common)
    for g, m in models.items():
        # Where the data is, for a reader of the model file; the runtime passes the tensors in itself (load).
        location = Path(os.path.relpath(data_path, artifacts[g].parent)).as_posix()
        for t in m.graph.initializer:
            if t.name in table:
                entry = table[t.name]
                for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    t.ClearField(f)
                t.data_location = onnx.TensorProto.EXTERNAL
                del t.external_data[:]
                for key, value in (("location", location), ("offset", entry["offset"]),
                                   ("length", shared_weights.nbytes(entry))):
                    t.external_data.add(key=key, value=str(value))
        tmp = Path(artifacts[g]).with_suffix(".shared.tmp")  # a new file: never write through a link to a cached copy
        tmp.write_bytes(m.SerializeToString())
        os.replace(tmp, artifacts[g])
    return table


# Up to this many bytes of shared weights per path, ONNX Runtime packs them in every path it loads (RunOptions'
# pack_shared_weights=None). ORT prepacks (re-lays out) every MatMul weight per session, lent shared initializers
# included; unpacked, its GEMMs re-lay out their weights on every call instead. Packing buys a fixed amount per call
# and costs, per loaded path, memory and load time in proportion to the shared bytes, so it pays on small shared
# weights and not on large ones. Measured both ways, 1 thread, AVX-512 VNNI EPYC:
# - the shipped model (0.13 MiB shared per path, 49 tokens): split / dense twin 1.062 packed, 1.097 not (2000
#   interleaved runs); a further expert 0.83 MiB resident packed, 0.70 not (vmoe-bench --quick);
# - vit-12x192 (1.13 MiB shared, 197 tokens; benchmarks/results/paper_onnx_packing/): split / dense twin 1.000
#   packed, 1.017 not (0.999 and 1.019 at 2 threads); a further expert 1.68x its artifact bytes packed, 1.18x not;
#   cold expert load verified once 2.97 ms packed, 1.74 ms not.
PACK_SHARED_MAX_BYTES = 512 * 1024


def packs_shared_weights(option: bool | None, shared_bytes: int) -> bool:
    """Whether a path's session packs the `shared_bytes` of shared weights it is lent (RunOptions.pack_shared_weights)."""
    return shared_bytes <= PACK_SHARED_MAX_BYTES if option is None else option


def load(path: Path, io: GraphIO, run: RunOptions, record: ArtifactRecord):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # The bundle's shared weights, verified by the runtime, as initializers shared between sessions: ORT uses
    # the caller's buffer and never reads the model's external data (add_external_initializers would copy them
    # into every session: +4.3 MiB per session for a 4 MiB tensor, against +0.3). The runner keeps them alive.
    external = [ort.OrtValue.ortvalue_from_numpy(a) for a in record.external.values()]
    for name, value in zip(record.external, external):
        opts.add_initializer(name, value)
    if external and not packs_shared_weights(run.pack_shared_weights, sum(a.nbytes for a in record.external.values())):
        opts.add_session_config_entry("session.disable_prepacking", "1")
    opts.intra_op_num_threads = run.threads
    if optimized_offline(record):
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # A bundle opens one session per graph, each with its own intra-op pool. ORT's pool threads spin while
    # idle by default, so two dozen pools of 2 threads fight over the cores: measured at vit-12x192, 2 threads,
    # the routed bundle ran 6.3x slower than its dense twin. Idle threads sleep instead.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # A bundle opens one session per graph, and each session's arena grows in chunks and never shrinks: with it a
    # loaded vit-12x192 expert held 3.0x its artifact bytes, without it 1.11x (benchmarks/results/paper_matrix.md;
    # that run also reads RSS after malloc_trim). Latency did not move: 13.42/13.81 ms with the arena vs
    # 13.59/13.73 without (vit-12x192 fused, 1 thread, two alternating runs).
    opts.enable_cpu_mem_arena = False
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    in_names, out_names = io.input_names, io.output_names

    def runner(inputs: Sequence[np.ndarray], _keep=external) -> list[np.ndarray]:
        return session.run(out_names, dict(zip(in_names, inputs, strict=True)))

    runner.session = session
    return runner


def start_runtime() -> None:
    import onnxruntime  # noqa: F401

BACKEND = Backend("onnx", ".onnx", distributions=("onnx", "onnxscript", "onnxruntime"),
                  modules=("onnx", "onnxscript", "onnxruntime"), runtime_modules=("onnxruntime",),
                  export=export, load=load, options=OnnxOptions,
                  quantization=("none", "dynamic-int8", "static-int8"), start_runtime=start_runtime,
                  share_weights=share_weights)
