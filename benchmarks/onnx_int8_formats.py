"""Which ONNX Runtime int8 formats hold on every CPU: the measurement behind backends/onnx.py's INT8_FORMATS.

    python benchmarks/onnx_int8_formats.py [--work DIR] [--native-images N] [--emulated-images N]

ONNX Runtime's int8 GEMM depends on the CPU: uint8 activations x int8 weights (U8S8) on AVX2 or AVX-512
without VNNI go through VPMADDUBSW, whose int16 pair sums can saturate (ONNX Runtime's quantization guide:
use reduce_range or U8U8 there). For each candidate format this exports the shipped model's ONNX bundle
through the real export path (parity on 2,000 images natively), then runs its first N test images natively
(this machine: AVX-512 VNNI) and on an emulated AVX2-only CPU (qemu-x86_64 -cpu Haswell, which makes ONNX
Runtime take its AVX2 kernels), and times the vit-12x192-moe trunk graph natively per format (1 thread,
interleaved rounds). Writes benchmarks/results/int8_cpus.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

CANDIDATES = {
    "dynamic-int8": {
        "S8 weights, per-channel (shipped before)": {"weight_type": "QInt8", "per_channel": True},
        "S8 weights, per-channel, reduce_range": {"weight_type": "QInt8", "per_channel": True, "reduce_range": True},
        "U8 weights (U8U8), per-channel": {"weight_type": "QUInt8", "per_channel": True},
        "S8 weights, per-tensor": {"weight_type": "QInt8", "per_channel": False},
        "U8 weights (U8U8), per-tensor": {"weight_type": "QUInt8", "per_channel": False},
    },
    "static-int8": {
        "S8S8 QDQ, per-channel (shipped before)": {"activation_type": "QInt8", "weight_type": "QInt8", "per_channel": True},
        "S8S8 QDQ, per-channel, reduce_range": {"activation_type": "QInt8", "weight_type": "QInt8", "per_channel": True,
                                                "reduce_range": True},
        "U8S8 QDQ, per-channel, reduce_range": {"activation_type": "QUInt8", "weight_type": "QInt8", "per_channel": True,
                                                "reduce_range": True},
        "U8U8 QDQ, per-channel": {"activation_type": "QUInt8", "weight_type": "QUInt8", "per_channel": True},
    },
}


def _chosen() -> dict:
    from vmoe_export.backends.onnx import INT8_FORMATS

    return {mode: dict(fmt) for mode, fmt in INT8_FORMATS.items()}


CHOSEN = _chosen()  # what backends/onnx.py ships, before export_variant swaps candidates in


def _key(label: str) -> str:
    import hashlib

    return hashlib.sha256(label.encode()).hexdigest()[:10]


def export_variant(work: Path, mode: str, label: str, fmt: dict, calibration) -> tuple[Path, dict]:
    from vmoe_export.backends import onnx as onnx_backend
    from vmoe_export.checkpoint import load_checkpoint
    from vmoe_export.data import load_fashion_mnist
    from vmoe_export.exporter import ExportOptions, export_bundle
    from vmoe_export.parity import ParityBounds
    from vmoe_export.quantize import QuantOptions

    out = work / "bundles" / f"{mode}-{_key(label)}"
    report_file = out / "report.json"
    if report_file.exists():
        return out / "onnx", json.loads(report_file.read_text())
    onnx_backend.INT8_FORMATS[mode] = fmt  # the candidate, through the real export path
    test = load_fashion_mnist().test
    record_only = ParityBounds(max_logit_diff=None, min_top1_agreement=None, min_routing_agreement=0.0,
                               max_accuracy_drop=None, min_snr_db=None)
    path, report = export_bundle(load_checkpoint(REPO / "models" / "fmnist-tiny" / "model.pt"), "onnx", out, test.images,
                                 test.labels, ExportOptions(parity_images=2000, progress=False, quant=QuantOptions(mode),
                                                            bounds=record_only),
                                 log=lambda s: None, calibration_images=calibration)
    report_file.write_text(json.dumps(report))
    return path, report


def trunk_latency(work: Path, rounds: int = 7) -> dict[str, float]:
    """ms per vit-12x192 trunk call (1 thread) for fp32 and every candidate, interleaved so drift hits all alike."""
    import subprocess

    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    bundle = work / "paper"
    if not (bundle / "onnx" / "manifest.sha256").exists():
        subprocess.run([str(REPO / ".venv" / "bin" / "vmoe-export"), "--target", "onnx", "--config", "vit-12x192-moe",
                        "--random-init", "--output", str(bundle), "--quiet", "--parity-images", "4"], check=True,
                       stdout=subprocess.DEVNULL)
    src, pre = bundle / "onnx" / "shared" / "trunk.onnx", work / "trunk_pre.onnx"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{"images": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self._it, None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(src), str(pre))
        paths = {"fp32": src}
        for mode, cands in CANDIDATES.items():
            for i, (label, fmt) in enumerate(cands.items()):
                kw = {k: getattr(QuantType, v) if k.endswith("_type") else v for k, v in fmt.items()}
                path = work / f"trunk-{mode}-{i}.onnx"
                if mode == "dynamic-int8":
                    quantize_dynamic(str(pre), str(path), **kw)
                else:
                    quantize_static(str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ, **kw)
                paths[f"{mode}: {label}"] = path
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, {"images": x})
    for _ in range(rounds):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(5):
                s.run(None, {"images": x})
            times[k].append((time.perf_counter() - t0) / 5 * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> int:
    from cross_cpu import compare, run_on, torch_reference

    from vmoe_export.data import calibration_split

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/vmoe-onnx-int8"))
    p.add_argument("--native-images", type=int, default=2000)
    p.add_argument("--emulated-images", type=int, default=1000)
    args = p.parse_args()
    t0 = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    calibration = calibration_split(None, "fashion-mnist", 28, 1, 256)[0].images
    refs = {n: torch_reference(args.work, n) for n in {args.native_images, args.emulated_images}}
    rows = []
    for mode, cands in CANDIDATES.items():
        for label, fmt in cands.items():
            print(f"[{time.time() - t0:5.0f}s] {mode}: {label}", flush=True)
            path, report = export_variant(args.work, mode, label, fmt, calibration)
            row = {"mode": mode, "format": label, "settings": fmt}
            for cpu, n in (("native", args.native_images), ("haswell", args.emulated_images)):
                data = run_on(cpu, path, n, args.work, None, f"{mode}-{_key(label)}")
                tokens = data["self_test"]["stage_snr_db"].get("tokens")
                row[cpu] = {**compare(data["run"], refs[n], None), "machine": data["machine"],
                            "self_test_tokens_snr_db": tokens}
            row["export_parity_stage_snr_db"] = report["stage_snr_db"]
            rows.append(row)
    from vmoe_export.backends import onnx as onnx_backend

    onnx_backend.INT8_FORMATS.update({m: dict(f) for m, f in CHOSEN.items()})
    latency = trunk_latency(args.work)
    result = {"command": "python benchmarks/onnx_int8_formats.py", "rows": rows, "trunk_ms": latency,
              "minutes": round((time.time() - t0) / 60, 1)}
    out = REPO / "benchmarks" / "results" / "int8_cpus.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(result, args))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def render(r: dict, args) -> str:
    from vmoe_export.machine import describe

    machines = {cpu: describe(r["rows"][0][cpu]["machine"]) for cpu in ("native", "haswell")}
    lines = ["# ONNX Runtime int8 formats on different CPUs", "",
             f"Run: `{r['command']}` ({r['minutes']} min). Shipped model, ONNX bundle per candidate format through the real "
             f"export path. native: first {args.native_images} test images on {machines['native']}; haswell: first "
             f"{args.emulated_images} on qemu-x86_64 -cpu Haswell ({machines['haswell']}), which runs ONNX Runtime's AVX2 "
             "kernels. SNR against fp32 PyTorch. Trunk latency: the vit-12x192-moe trunk graph (10 ViT-Tiny blocks, "
             "224 px), 1 thread, natively, median of interleaved rounds.", "",
             "| mode | format | trunk ms (/ fp32) | native: Δ acc (pts), top-1 / routing vs torch, logits SNR, tokens SNR (self-test) "
             "| AVX2: Δ acc (pts), top-1 / routing vs torch, logits SNR, tokens SNR (self-test) |", "|---|---|---|---|---|"]
    fp32 = r["trunk_ms"]["fp32"]
    for x in r["rows"]:
        ms = r["trunk_ms"][f"{x['mode']}: {x['format']}"]
        chosen = " **(chosen)**" if x["settings"] == CHOSEN[x["mode"]] else ""

        def cell(c):
            return (f"{100 * (c['accuracy'] - c['accuracy_torch']):+.2f}, {100 * c['top1_vs_torch']:.2f}% / "
                    f"{100 * c['routing_vs_torch']:.2f}%, {c['logits_snr_vs_torch_db']} dB, {c['self_test_tokens_snr_db']} dB")
        lines.append(f"| {x['mode']} | {x['format']}{chosen} | {ms:.2f} ({ms / fp32:.2f}) | {cell(x['native'])} | {cell(x['haswell'])} |")
    lines += ["", f"fp32 trunk: {fp32:.2f} ms.",
              "Chosen: the formats that keep the same SNR on both CPUs at the lowest latency here "
              "(backends/onnx.py INT8_FORMATS). U8U8 holds too but is slower on VNNI; per-tensor loses SNR."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
