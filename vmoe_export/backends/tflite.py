"""TFLite (LiteRT) via litert-torch, run with ai-edge-litert's CompiledModel (XNNPACK, with its weight cache).

Quantization is ai-edge-quantizer on the converted fp32 model, with its own recipes:
dynamic_wi8_afp32, weight_only_wi8_afp32, and for static-int8 its static W8A8 configuration
calibrated through the model's signature. Chosen over litert-torch's PT2E quantizer because it is
the LiteRT team's current tool, works on the .tflite the fp32 path already writes, and offers all
three modes. Static int8 covers the weight ops only (FULLY_CONNECTED, CONV_2D), the rest staying float
between QUANTIZE / DEQUANTIZE: int8 BATCH_MATMUL is slow under XNNPACK here, so on every supported op (the stock
static_wi8_ai8) the vit-12x192 trunk ran 1.4-1.8x slower than fp32 on an x86 CPU, on the weight ops 0.45x, with
a higher SNR (35.4 against 26.5 dB; benchmarks/results/litert_static_int8_ops.md). The INPUT and OUTPUT ops are
excluded so the graph keeps float32 I/O like every other bundle.

In a fused bundle the weights all expert paths hold alike (both MoE layers' attention) are stored once, in the
bundle's shared-weights file, as TFLite external buffers of each path (share_weights, shared_weights.py): the
model names the file (its external buffer group, "shared.bin", beside the path) and where each tensor lies in it,
and LiteRT's CompiledModel maps those slices itself when it loads the path. So the runtime cannot lend verified
bytes as it does to ONNX Runtime; it checks the file against the manifest before every load of a path that reads
it (BundleRuntime.verified_path), and the XNNPACK weight cache keys such a path by both files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io as _io
import os
from collections.abc import Mapping, Sequence
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


# TFLite tensor types whose buffers may be stored once for all expert paths (shared_weights.DTYPES).
_SHARED_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8}


def share_weights(artifacts: Mapping[str, Path], data_path: Path) -> dict[str, dict]:
    """Store the weights every artifact holds alike once, in data_path, as TFLite external buffers of each model.

    LiteRT's CompiledModel resolves an external buffer group's name relative to the model's own folder and maps
    the slices it needs, exactly as written (no copy; the paths compute what they computed before). A tensor's
    buffer moves out when every path holds a tensor of that name with the same type, shape and bytes."""
    from ai_edge_litert import schema_py_generated as schema

    from .. import shared_weights

    models = {g: schema.ModelT.InitFromObj(schema.Model.GetRootAs(Path(p).read_bytes(), 0)) for g, p in artifacts.items()}
    common = shared_weights.common_tensors({g: _weights(m) for g, m in models.items()})
    table = shared_weights.write(data_path, common)
    for g, m in models.items():
        group = schema.ExternalBufferGroupT()
        group.name = Path(os.path.relpath(data_path, artifacts[g].parent)).as_posix()
        m.externalBufferGroups, m.externalBuffers = [group], []
        moved: dict[int, int] = {}  # buffer index -> external buffer id (ids start at 1: 0 means none)
        for t in m.subgraphs[0].tensors:
            name = _tensor_name(t)
            if name not in table:
                continue
            if t.buffer not in moved:
                ext = schema.ExternalBufferT()
                ext.id, ext.group = len(m.externalBuffers) + 1, 0
                ext.offset, ext.length = table[name]["offset"], shared_weights.nbytes(table[name])
                m.externalBuffers.append(ext)
                moved[t.buffer] = ext.id
                m.buffers[t.buffer].data = None
            t.externalBuffer, t.buffer = moved[t.buffer], 0
        tmp = Path(artifacts[g]).with_suffix(".shared.tmp")  # a new file: never write through a link to a cached copy
        tmp.write_bytes(_serialize(m))
        os.replace(tmp, artifacts[g])
    return table


def _weights(model) -> dict[str, np.ndarray]:
    """The constant tensors of a model's main subgraph by name, as arrays over their buffers."""
    out = {}
    for t in model.subgraphs[0].tensors:
        data = model.buffers[t.buffer].data
        if t.buffer and data is not None and len(data) and t.type in _SHARED_DTYPES and t.shape is not None:
            raw = np.ascontiguousarray(data, np.uint8).tobytes()
            out[_tensor_name(t)] = np.frombuffer(raw, _SHARED_DTYPES[t.type]).reshape([int(d) for d in t.shape])
    return out


def _tensor_name(tensor) -> str:
    """The object API gives names as bytes."""
    return tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name


def _serialize(model) -> bytes:
    """The model's flatbuffer, every buffer's data 16-byte aligned as the converter writes it (the schema's
    force_align: 16; the object API's own Pack would align bytes to 1)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    class AlignedBuffer(schema.BufferT):
        def Pack(self, builder):
            data = None
            if self.data is not None:
                payload = np.ascontiguousarray(self.data, np.uint8).tobytes()
                builder.StartVector(1, len(payload), 16)
                builder.head -= len(payload)
                builder.Bytes[builder.head:builder.head + len(payload)] = payload
                builder.vectorNumElems = len(payload)
                data = builder.EndVector()
            schema.BufferStart(builder)
            if data is not None:
                schema.BufferAddData(builder, data)
            schema.BufferAddOffset(builder, self.offset)
            schema.BufferAddSize(builder, self.size)
            return schema.BufferEnd(builder)

    for b in model.buffers:
        b.__class__ = AlignedBuffer
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def load(path: Path, io: GraphIO, run: RunOptions, record: ArtifactRecord):
    """A runner through LiteRT's CompiledModel (the API the Android app uses), with XNNPACK's weight cache where
    `run.weight_cache_dir` allows: the weights packed once into a file that later loads mmap (weight_cache.py)."""
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.options import CpuOptions, Options

    from .. import weight_cache

    key = cache_key(record.sha256 or _sha256(path), record.shared_sha256)
    cache = weight_cache.entry(run.weight_cache_dir, key, f"ai-edge-litert {_version()}", _xnnpack_cache_complete)
    try:
        # Creating it applies XNNPACK (packing, or mapping the cache), so that counts as load time and its native
        # notices fall in the load's quiet().
        model = CompiledModel.from_file(str(path), environment=_environment(), options=Options(cpu_options=CpuOptions(
            num_threads=run.threads, xnnpack_weight_cache_path=cache.path)))
    except BaseException:
        cache.discard()
        raise
    cache.publish()
    in_names, out_names = _signature_names(model)
    if len(in_names) != len(io.inputs) or len(out_names) != len(io.outputs):
        raise ValueError(f"{path}: signature inputs {in_names} / outputs {out_names} do not match the manifest's "
                         "inputs/outputs")
    in_details, out_details = model.get_input_tensor_details(SIGNATURE), model.get_output_tensor_details(SIGNATURE)
    for name, spec in zip(in_names, io.inputs, strict=True):
        if tuple(in_details[name]["shape"]) != tuple(spec.shape):
            raise ValueError(f"{path}: input {name} has shape {tuple(in_details[name]['shape'])}, the manifest says "
                             f"{tuple(spec.shape)}")
    # One set of buffers per graph, reused by every call: the runtime's own memory, as on a phone. Runs go by
    # signature index with the buffers in the signature's own order: run_by_name rebuilds two dicts and looks the
    # signature up on every call, 12.7 -> 7.0 us per call on the shipped model's head (3 calls an image).
    index = model.get_signature_index(SIGNATURE)
    order = model.get_signature_by_index(index)
    inputs = {n: model.create_input_buffer_by_name(SIGNATURE, n) for n in in_names}
    outputs = {n: model.create_output_buffer_by_name(SIGNATURE, n) for n in out_names}
    run_inputs, run_outputs = [inputs[n] for n in order["inputs"]], [outputs[n] for n in order["outputs"]]
    writes = [inputs[n].write for n in in_names]
    out_shapes = [tuple(out_details[n]["shape"]) for n in out_names]
    reads = [(outputs[n].read, int(np.prod(shape)), shape) for n, shape in zip(out_names, out_shapes)]
    # The process's first TensorBuffer.write creates a second, native default environment that logs each
    # accelerator it registers: done here, it happens inside the load's quiet() instead of in an image's run.
    for write, spec in zip(writes, io.inputs, strict=True):
        write(np.zeros(spec.shape, np.float32))

    def runner(xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        for write, x in zip(writes, xs, strict=True):
            write(np.ascontiguousarray(x, dtype=np.float32))
        model.run_by_index(index, run_inputs, run_outputs)
        return [read(n, np.float32).reshape(shape) for read, n, shape in reads]

    runner.model = model  # keeps the buffers' owner alive with the runner
    return runner


def cache_key(sha256: str, shared_sha256: str = "") -> str:
    """What an artifact's packed weights depend on: its bytes, and those of the shared-weights file it reads."""
    return hashlib.sha256(f"{sha256}+{shared_sha256}".encode()).hexdigest() if shared_sha256 else sha256


_ENVIRONMENT = None


def _environment():
    """One LiteRT environment for every graph this process loads (each model would otherwise make its own)."""
    global _ENVIRONMENT
    if _ENVIRONMENT is None:
        import ai_edge_litert
        from ai_edge_litert.environment import Environment

        from ..native_output import quiet, quiet_at_exit

        with quiet("LiteRT environment"):  # it reports each accelerator plugin it looks for
            _ENVIRONMENT = Environment.create(runtime_path=os.path.dirname(ai_edge_litert.__file__))
        quiet_at_exit()  # it logs each accelerator it destroys, at interpreter exit
    return _ENVIRONMENT


def _xnnpack_cache_complete(path: Path) -> bool:
    """XNNPACK writes its cache header's version (8 bytes, 0 while building) last, once every buffer is in."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return len(head) == 8 and head != bytes(8)


def _version() -> str:
    from . import package_version

    return package_version("ai-edge-litert")


def _sha256(path: Path) -> str:
    from ..bundle import sha256_of

    return sha256_of(path)


def _position(name: str) -> int:
    return int(name.rsplit("_", 1)[-1])


def start_runtime() -> None:
    _environment()

BACKEND = Backend("tflite", ".tflite", distributions=("litert-torch", "ai-edge-litert", "ai-edge-quantizer"),
                  modules=("litert_torch", "ai_edge_litert", "ai_edge_quantizer"), runtime_modules=("ai_edge_litert",),
                  export=export, load=load,
                  quantization=("none", "dynamic-int8", "static-int8", "weight-int8"), start_runtime=start_runtime,
                  # ai-edge-quantizer's static recipe takes plain min/max ranges: on the toy's 2,000-image ablation
                  # (with the former every-op recipe), experts calibrated on their routed images alone (38-85 of
                  # 256) scored 27.0 dB mean expert SNR, on every image 31.1 dB, with equal accuracy and routing.
                  # (XNNPACK's histogram observers and ONNX Runtime do better with routed calibration: 33.3 vs
                  # 30.3 dB and 32.8 vs 28.9 dB.)
                  calibration="all", recipe="static ops: " + ",".join(STATIC_OPS),
                  share_weights=share_weights, maps_shared_weights=True)
