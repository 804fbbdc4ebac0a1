"""The vmoe-bench command: find (or export) bundles, run one benchmark, write the report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..clitools import (add_data_dir_argument, add_model_arguments, add_schedule_argument, fail, interrupt_on_sigterm,
                        quiet_converters, resolve_model, user_errors)


def parser() -> argparse.ArgumentParser:
    from ..backends import runtime_targets

    p = argparse.ArgumentParser(
        prog="vmoe-bench",
        description="Benchmark exported bundles on this CPU: FLOPs per graph and per image, per-stage and end-to-end "
        "latency (median/p90), cold vs warm expert load, resident memory with routed vs all experts, and ratios "
        "against a dense ViT of equal active FLOPs, a monolithic MoE export and eager PyTorch, all measured in one run. "
        "Bundles missing from --bundles are exported first. Writes bench.json, README.md and PNG plots to --out.",
    )
    p.add_argument("--bundles", type=Path, default=Path("bundles"), help="directory holding <target>/ bundles (default bundles)")
    p.add_argument("--target", default="all", choices=[*runtime_targets(), "all"],
                   help="backend to benchmark; all = every backend with a runtime on this OS (CoreML needs macOS)")
    add_model_arguments(p)
    p.add_argument("--dense-checkpoint", type=Path, default=None,
                   help="dense twin checkpoint (default: dense.pt beside --checkpoint if present, else the dense twin "
                   "with fresh weights: latency does not depend on weights)")
    add_data_dir_argument(p, "parity of bundles exported on demand and as benchmark inputs")
    p.add_argument("--out", type=Path, default=Path("bench-report"),
                   help="report directory (default bench-report/; benchmarks/run_all.sh records into benchmarks/results/)")
    p.add_argument("--threads", type=int, default=1, help="threads per runtime and for eager torch (default 1, like one big phone core)")
    p.add_argument("--quick", action="store_true", help="few runs, for CI and smoke checks (under two minutes)")
    p.add_argument("--images", type=int, default=64, help="test images cycled through (different images take different routes)")
    from ..quantize import MODES

    p.add_argument("--quantize", nargs="+", default=[], choices=[m for m in MODES if m != "none"], metavar="MODE",
                   help="also benchmark int8 bundles of these modes against fp32 (size, latency end to end and per "
                   "stage, cold expert load, accuracy and routing from their parity), each on the backends that offer "
                   "it; bundles live in BUNDLES/<mode>/<target>/ and are exported when missing (parity on 500 images)")
    add_schedule_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def find_or_export_bundles(targets: list[str], bundles_dir: Path, ckpt, data, progress: bool,
                           schedule: str = "per-layer") -> dict[str, Path]:
    """Each target's fp32 bundle of the resolved `schedule` kind from `bundles_dir`, exported when missing."""
    from ..bundle import read_manifest
    from ..export import ExportOptions, export_bundle

    if bundles_dir.exists() and not bundles_dir.is_dir():
        raise ValueError(f"--bundles {bundles_dir} is a file: pass the directory that holds <target>/ bundles")
    found = {}
    for t in targets:
        path = bundles_dir / t
        if not (path / "manifest.json").exists():
            print(f"no {t} bundle in {bundles_dir}: exporting one (parity on 100 images)", file=sys.stderr)
            options = ExportOptions(parity_images=100, progress=progress, schedule=schedule,
                                    eval_data={"kind": data.kind, "description": data.description})
            export_bundle(ckpt, t, bundles_dir, data.split.images, data.split.labels, options)
        has = read_manifest(path)["schedule"]["kind"]
        if has != schedule:
            raise ValueError(f"bundle {path} runs the {has} schedule, not {schedule}: pass --schedule {has}, or another "
                             "--bundles directory to export a fresh one")
        found[t] = path
    return found


def find_or_export_quantized(targets: list[str], modes: list[str], bundles_dir: Path, ckpt, data, args,
                             progress: bool) -> dict[str, dict[str, Path]]:
    """{mode: {target: bundle}} for every requested mode a target offers (skipped targets are named)."""
    from ..backends import describe
    from ..data import calibration_split
    from ..export import ExportOptions, export_bundle
    from ..quantize import QuantOptions

    cfg = ckpt.config
    found: dict[str, dict[str, Path]] = {}
    calibration = None
    for mode in modes:
        for t in targets:
            if mode not in describe(t).quantization:
                print(f"vmoe-bench: {t} has no {mode} mode: skipped", file=sys.stderr)
                continue
            path = bundles_dir / mode / t
            if not (path / "manifest.json").exists():
                quant = QuantOptions(mode)
                if quant.calibrated and calibration is None:
                    calibration = calibration_split(args.data_dir, ckpt.metrics.get("dataset", "fashion-mnist"),
                                                    cfg.image_size, cfg.in_chans, quant.calibration_images)[0].images
                print(f"no {mode} {t} bundle in {bundles_dir / mode}: exporting one (parity on 500 images)", file=sys.stderr)
                options = ExportOptions(parity_images=500, progress=progress, quant=quant,
                                        eval_data={"kind": data.kind, "description": data.description})
                export_bundle(ckpt, t, bundles_dir / mode, data.split.images, data.split.labels, options,
                              calibration_images=calibration)
            found.setdefault(mode, {})[t] = path
    return found


def main(argv: list[str] | None = None) -> int:
    from ..clitools import build_side_missing

    if (code := build_side_missing("vmoe-bench")) is not None:
        return code
    args = parser().parse_args(argv)
    quiet_converters()
    interrupt_on_sigterm()
    from ..backends import MAX_THREADS, RunOptions, get_backend, runtime_targets
    from ..checkpoint import load_checkpoint
    from ..clitools import DEFAULT_CHECKPOINT
    from ..data import eval_split
    from ..model import MobileVMoE
    from ..export import resolve_schedule
    from ..quantize import QuantOptions
    from .measure import BenchSettings
    from .report import write_report
    from .run import check_bundles_match, run_benchmarks
    import torch

    if args.images < 1 or args.threads < 1:
        return fail("vmoe-bench", f"--threads (1 to {MAX_THREADS}) and --images must be at least 1")
    targets = runtime_targets() if args.target == "all" else [args.target]
    try:
        RunOptions(threads=args.threads)
        for t in targets:
            get_backend(t)
        ckpt = resolve_model(args)
        model = ckpt.build_model()
        cfg = model.cfg
        source = f"--config {args.config} --random-init" if args.random_init else str(args.checkpoint or DEFAULT_CHECKPOINT)
        dense_path = args.dense_checkpoint or (None if args.random_init else (args.checkpoint or DEFAULT_CHECKPOINT).with_name("dense.pt"))
        if args.dense_checkpoint or (dense_path is not None and dense_path.exists()):
            dense = load_checkpoint(dense_path).build_model()
        else:
            torch.manual_seed(args.seed)
            dense = MobileVMoE(cfg.dense_twin()).eval()
        data = eval_split(args.data_dir, ckpt.metrics.get("dataset", "fashion-mnist"), cfg.image_size, cfg.in_chans)
        schedule = resolve_schedule(args.schedule, cfg.top_k, QuantOptions())  # the fp32 bundles'
        bundles = find_or_export_bundles(targets, args.bundles, ckpt, data, not args.quiet, schedule)
        quantized = find_or_export_quantized(targets, args.quantize, args.bundles, ckpt, data, args, not args.quiet)
        for by_target in quantized.values():
            check_bundles_match(by_target, model, source)
        check_bundles_match(bundles, model, source)
        s = BenchSettings.make(args.quick, args.threads)
        report = run_benchmarks(bundles, model, dense, s, data.split.images[: args.images], not args.quiet)
        if quantized:
            report["quantized"] = bench_quantized(quantized, report, s, data.split.images[: args.images], cfg)
        report["data"] = {"kind": data.kind, "description": data.description}
        write_report(report, args.out)
    except user_errors() as e:
        return fail("vmoe-bench", str(e))
    except KeyboardInterrupt:
        return fail("vmoe-bench", "interrupted; the previous report in --out is untouched")
    print(f"wrote {args.out}/bench.json, README.md and plots ({cfg.name}, E={cfg.num_experts}, k={cfg.top_k}, "
          f"{report['schedule']} schedule, "
          f"{cfg.image_size} px; inputs: {data.description}; ratios are measured in this one run)")
    for target, r in report["ratios"].items():
        b = report["backends"][target]
        print(f"{target}: split {b['split']['end_to_end']['median_ms']:.3f} ms | dense twin {b['dense_twin']['median_ms']:.3f} ms "
              f"(x{r['split_over_dense_twin']:.2f}) | monolithic {b['monolithic']['median_ms']:.3f} ms (x{r['split_over_monolithic']:.2f}) "
              f"| eager model x{r['split_over_eager_model']:.2f} | cold expert load {b['split']['expert_cold_load']['median_ms']:.2f} ms "
              f"| self-test at open {b['split']['self_test_ms']:.1f} ms")
    for row in report.get("quantized", []):
        print(f"{row['backend']} {row['mode']}: size x{row['size_ratio']:.2f} of fp32 | latency {row['latency_ms']:.3f} ms "
              f"(x{row['latency_ratio']:.2f}) | {row['parity_summary']}")
    return 0


def bench_quantized(quantized: dict, report: dict, s, images_u8, cfg) -> list[dict]:
    """Each int8 bundle against its backend's fp32 bundle from the same run: size and latency ratios, per-stage
    times, cold expert load, and what its parity measured against fp32 PyTorch."""
    from ..bundle import bundle_bytes, read_manifest
    from ..data import preprocess
    from .measure import bench_bundle

    images = [preprocess(images_u8[i : i + 1], cfg).numpy() for i in range(len(images_u8))]
    rows = []
    for mode, by_target in quantized.items():
        for t, path in by_target.items():
            fp32 = report["backends"][t]
            fp32_bytes = bundle_bytes(read_manifest(Path(fp32["bundle"])))
            m = read_manifest(path)
            timing = bench_bundle(path, images, s)
            size = bundle_bytes(m)
            p = m["parity"]
            summary = (f"accuracy {100 * p['accuracy_delta']:+.2f} pts vs fp32, " if "accuracy_delta" in p else "") + \
                f"routing agreement {100 * p['routing_agreement']:.2f}%, logits SNR {p['logits_snr_db']:.1f} dB on {p['images']} images"
            rows.append({"backend": t, "mode": mode, "size_bytes": size, "size_ratio": size / fp32_bytes,
                         "latency_ms": timing["end_to_end"]["median_ms"],
                         "latency_ratio": timing["end_to_end"]["median_ms"] / fp32["split"]["end_to_end"]["median_ms"],
                         "stages_ms": {k: v["median_ms"] for k, v in timing["stages"].items()},
                         "expert_cold_load_ms": timing["expert_cold_load"]["median_ms"],
                         "parity": {k: p.get(k) for k in ("images", "accuracy_delta", "routing_agreement", "top1_agreement",
                                                          "logits_snr_db")},
                         "parity_summary": summary})
    return rows
