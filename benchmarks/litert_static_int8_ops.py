"""LiteRT static int8: which ops to quantize so XNNPACK on a CPU runs it faster than fp32 (issue 23, item 6).

The static recipe the bundle used to ship (ai-edge-quantizer's static_wi8_ai8 on ALL_SUPPORTED ops) also
quantizes BATCH_MATMUL, SOFTMAX, GELU, ADD, MUL and the LayerNorm arithmetic; ai-edge-quantizer's README
recommends dynamic quantization for CPUs and static for NPUs. This takes the vit-12x192-moe trunk graph (10
blocks: the bulk of the model's FLOPs) as litert-torch converts it and times, interleaved in alternating
rounds at 1 thread with the ai-edge-litert Interpreter (XNNPACK): fp32, dynamic int8, static int8 on every
supported op, static int8 restricted to the weight ops (backends/tflite.py's STATIC_OPS, what bundles ship:
float islands elsewhere, with QUANTIZE / DEQUANTIZE at their edges), and the same plus the attention's
BATCH_MATMULs, each through backends/tflite.py's own quantize. Each is compared with fp32 on 8 random inputs
(SNR); static variants calibrate on 16 other random inputs.

    python benchmarks/litert_static_int8_ops.py [--out benchmarks/results] [--rounds 9]

Writes litert_static_int8_ops.{json,md}.
"""

from __future__ import annotations

import collections
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CONFIG = "vit-12x192-moe"


def export_trunk(work: Path):
    """The config's trunk graph as fp32 .tflite, and the config."""
    from vmoe_export.backends.tflite import export as tflite_export
    from vmoe_export.bench.variants import paper_trunk
    from vmoe_export.quantize import FP32

    trunk, cfg = paper_trunk(CONFIG)
    path = work / "trunk_fp32.tflite"
    tflite_export(trunk, path, None, FP32)
    return path, cfg


def quantized(fp32: Path, out: Path, mode: str, calibration: list[np.ndarray] = (),
              static_ops: tuple[str, ...] | None = None) -> Path:
    """`fp32` quantized by backends/tflite.py's own quantize (static_ops None: the ops bundles ship)."""
    import torch

    from vmoe_export.backends.tflite import quantize
    from vmoe_export.quantize import GraphQuant

    samples = tuple((torch.from_numpy(x),) for x in calibration)
    out.write_bytes(quantize(fp32, GraphQuant(mode, samples), static_ops))
    return out


def op_counts(path: Path) -> dict[str, int]:
    from ai_edge_litert.interpreter import Interpreter

    ops = collections.Counter(op["op_name"] for op in Interpreter(model_path=str(path))._get_ops_details())
    return dict(ops.most_common(8))


def runners(paths: dict[str, Path]) -> dict:
    """Per variant, a call running it on one input through the Interpreter's signature runner (1 thread)."""
    from ai_edge_litert.interpreter import Interpreter

    from vmoe_export.backends.tflite import SIGNATURE

    out = {}
    for label, path in paths.items():
        interpreter = Interpreter(model_path=str(path), num_threads=1)
        interpreter.allocate_tensors()
        run = interpreter.get_signature_runner(SIGNATURE)
        (name,) = interpreter.get_signature_list()[SIGNATURE]["inputs"]
        out[label] = lambda a, run=run, name=name: next(iter(run(**{name: a}).values()))
    return out


def markdown(result: dict) -> str:
    from vmoe_export.bench.variants import variants_markdown

    intro = (f"{CONFIG} trunk graph (10 blocks), batch 1, 1 thread, ai-edge-litert Interpreter (XNNPACK), "
             f"{result['rounds']} interleaved rounds of 5 calls; {result['machine']}; measured {result['created_at']}. "
             "Ratio = median of per-round ratios against fp32 (range in brackets). SNR against fp32 on 8 random "
             "inputs. `python benchmarks/litert_static_int8_ops.py`.")
    return variants_markdown("LiteRT static int8: which ops to quantize for XNNPACK on a CPU", intro,
                             result["variants"], "fp32", (("bytes", lambda r: f"{r['bytes']:,}"),))


def main(argv: list[str] | None = None) -> int:
    from vmoe_export.backends.tflite import STATIC_OPS

    from vmoe_export.bench.variants import compare_variants, random_inputs, record, save_result, script_args
    from vmoe_export.native_output import quiet

    args = script_args(__doc__, argv, REPO / "benchmarks" / "results")
    with tempfile.TemporaryDirectory(prefix="vmoe-litert-int8-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        work = Path(tmp)
        with quiet("exporting and quantizing the trunk"):
            fp32, cfg = export_trunk(work)
            shape = (1, cfg.in_chans, cfg.image_size, cfg.image_size)
            _, calibration = random_inputs(shape, seed=1, probes=16)  # apart from the timed and SNR inputs
            static = lambda name, ops=None: quantized(fp32, work / name, "static-int8", calibration, ops)  # noqa: E731
            paths = {"fp32": fp32,
                     "dynamic int8": quantized(fp32, work / "dynamic.tflite", "dynamic-int8"),
                     "static int8, every supported op": static("static_all.tflite", ("ALL_SUPPORTED",)),
                     "static int8, FULLY_CONNECTED + CONV_2D only": static("static_weights.tflite"),
                     "static int8, the weight ops + BATCH_MATMUL": static("static_bmm.tflite",
                                                                         (*STATIC_OPS, "BATCH_MATMUL"))}
            variants = compare_variants(runners(paths), *random_inputs(shape), args.rounds)
            for label, path in paths.items():
                variants[label].update(ops=op_counts(path), bytes=path.stat().st_size)
    result = record(args.rounds, "ai-edge-litert", variants)
    save_result(args.out, "litert_static_int8_ops", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
