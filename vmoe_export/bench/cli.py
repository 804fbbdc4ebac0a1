"""The vmoe-bench command: find (or export) bundles, run one benchmark, write the report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..clitools import (add_data_dir_argument, add_model_arguments, add_schedule_argument, add_verbose_argument,
                        apply_verbose, resolve_model, run_command)


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
    p.add_argument("--pack-shared-weights", choices=["auto", "on", "off"], default="auto",
                   help="ONNX Runtime: pack the weights every fused expert path shares for its GEMMs in each loaded "
                   "path (on: faster paths) or keep their one unpacked copy (off: less memory and faster loads per "
                   "expert); auto (default) packs them up to 512 KiB per path. The README has both measured")
    p.add_argument("--images", type=int, default=64, help="test images cycled through (different images take different routes)")
    from ..quantize import MODES

    p.add_argument("--quantize", nargs="+", default=[], choices=[m for m in MODES if m != "none"], metavar="MODE",
                   help="also benchmark int8 bundles of these modes against fp32 (size, latency end to end and per "
                   "stage, cold expert load, accuracy and routing from their parity), each on the backends that offer "
                   "it; bundles live in BUNDLES/<mode>/<target>/ and are exported when missing (parity on 500 images)")
    add_schedule_argument(p)
    p.add_argument("--device", default=None, metavar="adb[:SERIAL]",
                   help="also run the executorch/tflite bundles on an Android phone over adb, through the demo app's "
                   "headless BenchmarkActivity (real runtimes, routed schedule, per-expert loads, PSS memory), and put "
                   "its figures beside this host's in the report; adb:SERIAL picks one of several devices")
    p.add_argument("--apk", type=Path, default=None,
                   help="with --device: install this demo app build first (android_demo/app/build/outputs/apk/debug/"
                   "app-debug.apk); without it the app must already be installed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_verbose_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from ..clitools import build_side_missing, fail

    if (code := build_side_missing("vmoe-bench")) is not None:
        return code
    args = parser().parse_args(argv)
    apply_verbose(args)
    if args.apk is not None and args.device is None:
        return fail("vmoe-bench", "--apk installs the demo app on a phone: pass it with --device adb[:SERIAL]")

    def body():
        from ..api import benchmark
        from .memory import PACKING
        from ..clitools import DEFAULT_CHECKPOINT

        # A checkpoint path (not the loaded checkpoint) lets the API find its dense.pt; resolve_model refuses the
        # flag combinations that make no sense.
        fresh = args.random_init or args.config is not None
        model = resolve_model(args) if fresh else (args.checkpoint or DEFAULT_CHECKPOINT)
        result = benchmark(model, args.bundles, targets=args.target, out=args.out, dense=args.dense_checkpoint,
                               threads=args.threads, quick=args.quick, images=args.images, quantize=args.quantize,
                               schedule=args.schedule, data=args.data_dir, seed=args.seed,
                               progress=lambda line: print(f"vmoe-bench: {line}", file=sys.stderr),
                               progress_bars=not args.quiet, device=args.device, apk=args.apk,
                               pack_shared_weights=PACKING.get(args.pack_shared_weights))
        from .report import spread

        report = result.report
        m, cfg = report["model"], report["model"]["config"]
        print(f"wrote {args.out}/bench.json, README.md and plots ({m['name']}, E={m['num_experts']}, k={m['top_k']}, "
              f"{report['schedule']} schedule, {cfg['image_size']} px; inputs: {report['data']['description']}; ratios "
              "are measured in this one run)")
        if report.get("schedule_reason"):
            print(f"schedule: {report['schedule_reason']}")
        for target, r in report["ratios"].items():
            b = report["backends"][target]
            print(f"{target}: split {b['split']['end_to_end']['median_ms']:.3f} ms | dense twin {b['dense_twin']['median_ms']:.3f} ms "
                  f"(x{r['split_over_dense_twin']:.2f}{spread(r, 'dense_twin')}) | monolithic {b['monolithic']['median_ms']:.3f} ms "
                  f"(x{r['split_over_monolithic']:.2f}{spread(r, 'monolithic')}) "
                  f"| eager model x{r['split_over_eager_model']:.2f} | cold expert load {b['split']['expert_cold_load']['median_ms']:.2f} ms "
                  f"| self-test at open {b['split']['self_test_ms']:.1f} ms")
        for label, entry in report.get("devices", {}).items():
            for target, q in entry["ratios"].items():
                b = entry["backends"][target]["split"]
                dense = f" | split / dense twin on device x{q['split_over_dense_twin']:.2f}" if "split_over_dense_twin" in q else ""
                print(f"{label} {target}: split {b['end_to_end']['median_ms']:.3f} ms (x{q.get('device_over_host_split', float('nan')):.2f} "
                      f"of this host){dense} | cold expert load {b['expert_cold_load']['median_ms']:.2f} ms")
        for row in report.get("quantized", []):
            print(f"{row['backend']} {row['mode']}: size x{row['size_ratio']:.2f} of fp32 | latency {row['latency_ms']:.3f} ms "
                  f"(x{row['latency_ratio']:.2f}) | {row['parity_summary']}")

    return run_command("vmoe-bench", body, "interrupted; the previous report in --out is untouched")
