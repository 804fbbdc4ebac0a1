"""ONNX Runtime dynamic int8 with and without ORT's transformer optimiser first (issue 23, item 6).

ONNX Runtime's quantization guide suggests running its transformer optimiser (onnxruntime.transformers
.optimizer, which fuses attention, LayerNorm and GELU into contrib operators) before quantizing a transformer.
This takes the vit-12x192-moe trunk graph (10 blocks: the bulk of the model's FLOPs) as torch.onnx writes
it, and times, interleaved in alternating rounds at 1 thread: fp32 as exported (ORT optimising at load),
fp32 as the bundle ships it (ORT-optimised at export, loaded with the optimiser off), dynamic int8 as the
bundle ships it (quant_pre_process, then quantize_dynamic with backends/onnx.py's INT8_FORMATS), and the
same dynamic int8 after the transformer optimiser. Each is also compared with fp32 on 8 random inputs (SNR).

    python benchmarks/onnx_int8_transformer_opt.py [--out benchmarks/results] [--rounds 9]

Writes onnx_int8_transformer_opt.{json,md}.
"""

from __future__ import annotations

import collections
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = "vit-12x192-moe"


def export_trunk(work: Path) -> tuple[Path, Path, object]:
    """(as torch.onnx writes it, as the bundle ships it, the model config) for the config's trunk graph."""
    from vmoe_export.backends.onnx import OnnxOptions
    from vmoe_export.backends.onnx import export as onnx_export
    from vmoe_export.bench.variants import paper_trunk
    from vmoe_export.quantize import FP32

    trunk, cfg = paper_trunk(CONFIG)
    raw, shipped = work / "trunk_raw.onnx", work / "trunk_shipped.onnx"
    onnx_export(trunk, raw, OnnxOptions(optimize_offline=False), FP32)
    onnx_export(trunk, shipped, OnnxOptions(optimize_offline=True), FP32)
    return raw, shipped, cfg


def quantize(raw: Path, work: Path, cfg, transformer_optimizer: bool) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from onnxruntime.transformers.optimizer import optimize_model

    from vmoe_export.backends.onnx import INT8_FORMATS

    fmt = {k: getattr(QuantType, v) if k.endswith("_type") else v for k, v in INT8_FORMATS["dynamic-int8"].items()}
    src, tag = raw, "shipped"
    if transformer_optimizer:
        optimized = optimize_model(str(raw), model_type="vit", num_heads=cfg.num_heads, hidden_size=cfg.embed_dim,
                                   opt_level=0)  # Python fusions only: ORT's own pass runs at load
        src, tag = work / "trunk_transformer_opt.onnx", "transformer"
        optimized.save_model_to_file(str(src))
    pre, out = work / f"trunk_pre_{tag}.onnx", work / f"trunk_int8_{tag}.onnx"
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=transformer_optimizer)
    quantize_dynamic(str(pre), str(out), **fmt)
    return out


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    return dict(ops.most_common(8))


def runners(paths: dict[str, tuple[Path, bool]]) -> dict:
    """Per variant, a call running its session on one input (1 thread; optimiser off for offline-optimised ones)."""
    import onnxruntime as ort

    out = {}
    for label, (path, offline) in paths.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if offline:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        out[label] = lambda a, session=session, name=name: session.run(None, {name: a})[0]
    return out


def markdown(result: dict) -> str:
    from vmoe_export.bench.variants import variants_markdown

    intro = (f"{CONFIG} trunk graph (10 blocks), batch 1, 1 thread, {result['rounds']} interleaved rounds of 5 calls; "
             f"{result['machine']}; measured {result['created_at']}. Ratio = median of per-round ratios against fp32 "
             "as exported (range in brackets). SNR against fp32 on 8 random inputs. "
             "`python benchmarks/onnx_int8_transformer_opt.py`.")
    return variants_markdown("ONNX Runtime dynamic int8: the transformer optimiser before quantizing", intro,
                             result["variants"], "fp32 as exported")


def main(argv: list[str] | None = None) -> int:
    from vmoe_export.bench.variants import compare_variants, random_inputs, record, save_result, script_args
    from vmoe_export.native_output import quiet

    args = script_args(__doc__, argv, REPO / "benchmarks" / "results")
    with tempfile.TemporaryDirectory(prefix="vmoe-ort-int8-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        work = Path(tmp)
        with quiet("exporting and quantizing the trunk"):
            raw, shipped, cfg = export_trunk(work)
            int8 = quantize(raw, work, cfg, transformer_optimizer=False)
            int8_t = quantize(raw, work, cfg, transformer_optimizer=True)
        shape = (1, cfg.in_chans, cfg.image_size, cfg.image_size)
        paths = {"fp32, as exported": (raw, False), "fp32, as shipped (optimised at export)": (shipped, True),
                 "dynamic int8, as shipped": (int8, False), "dynamic int8, transformer optimiser first": (int8_t, False)}
        variants = compare_variants(runners(paths), *random_inputs(shape), args.rounds)
        for label, (path, _) in paths.items():
            variants[label]["ops"] = op_counts(path)
    result = record(args.rounds, "onnxruntime", variants)
    save_result(args.out, "onnx_int8_transformer_opt", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
