"""Command-line entry points. Each turns expected failures into one clear line and exit code 2."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from .clitools import (DEFAULT_CONFIG, add_data_dir_argument, add_model_arguments, add_schedule_argument,
                       add_verbose_argument, apply_verbose, build_side_missing, fail, resolve_model, run_command)
from .config import list_configs


def train_parser() -> argparse.ArgumentParser:
    from .training import TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="vmoe-train",
        description="Train a dense ViT baseline, cluster its confusion graph into super-classes, then train the "
        "Mobile V-MoE with L = L_cls + lambda * CE(router, super-class). Writes OUT/model.pt (the MoE checkpoint), "
        "OUT/dense.pt, OUT/metrics.json and OUT/card.md. Rerunning an interrupted run with the same arguments "
        "resumes from its last epoch. Runs under torchrun for data-parallel training.",
    )
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"model config name in models/ or a JSON path (default {DEFAULT_CONFIG}; known: {', '.join(list_configs())})")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="ImageFolder dataset: DIR/train/<class>/* and DIR/test/<class>/* (default: Fashion-MNIST "
                   "from /usr/share/datasets/fashion-mnist, Debian package dataset-fashion-mnist)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default runs/<config>)")
    p.add_argument("--dense-epochs", type=int, default=d.dense_epochs, help=f"epochs for the dense baseline (default {d.dense_epochs})")
    p.add_argument("--moe-epochs", type=int, default=d.moe_epochs, help=f"epochs for the MoE (default {d.moe_epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"global batch size, split over ranks (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate, cosine decay (default {d.lr})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"AdamW weight decay (default {d.weight_decay})")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help=f"linear warm-up steps (default {d.warmup_steps})")
    p.add_argument("--router-weight", type=float, default=d.router_weight,
                   help=f"lambda, weight of the router's super-class cross-entropy (default {d.router_weight}, as in the paper)")
    p.add_argument("--holdout-fraction", type=float, default=d.holdout_fraction,
                   help=f"share of the training set held out for the dense model's confusion matrix (default {d.holdout_fraction})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed for init, shuffling and clustering (default {d.seed})")
    p.add_argument("--no-augment", action="store_true", help="disable random shift + horizontal flip")
    p.add_argument("--moe-init", default=d.moe_init, choices=["scratch", "dense"],
                   help="initialise the MoE from scratch, or by sparse upcycling from the dense twin trained first "
                   f"(shared weights copied, every expert a copy of the dense MLP, router fresh) (default {d.moe_init})")
    p.add_argument("--dense-checkpoint", type=Path, default=None,
                   help="start from this trained dense twin (a dense.pt from vmoe-train) instead of training one; "
                   "it must have the config's widths, depth, patch size and classes")
    p.add_argument("--no-equal-compute", action="store_true",
                   help="skip the control run that trains the dense twin for the MoE epochs more (same total "
                   "training as dense + MoE); saves a third of the training time, but the report then cannot tell "
                   "an MoE gain from the gain of training longer")
    p.add_argument("--data-loader", default="auto", choices=["auto", "memory", "stream"],
                   help="memory: decode the data set once into RAM (fast for small images); stream: decode and augment "
                   "in DataLoader workers from disk (random resized crop + flip; for ImageNet-size data); auto "
                   "(default): stream an ImageFolder whose decoded images would exceed 2 GiB. Fashion-MNIST is in memory")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes per rank for --data-loader stream (default: min(8, CPU count))")
    p.add_argument("--train-limit", type=int, default=0, help="use only the first N training images (0 = all; for smoke tests)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in OUT instead of refusing")
    add_verbose_argument(p)
    return p


def train_main(argv: list[str] | None = None) -> int:
    if (code := build_side_missing("vmoe-train")) is not None:
        return code
    args = train_parser().parse_args(argv)
    apply_verbose(args)
    errors = [n for n, v in (("--dense-epochs", args.dense_epochs), ("--moe-epochs", args.moe_epochs),
                             ("--batch-size", args.batch_size)) if v < 1]
    if errors:
        return fail("vmoe-train", f"{', '.join(errors)} must be at least 1")
    if not 0 < args.holdout_fraction < 1:
        return fail("vmoe-train", "--holdout-fraction must be between 0 and 1")
    if args.router_weight < 0 or args.lr <= 0:
        return fail("vmoe-train", "--router-weight must be >= 0 and --lr > 0")

    def body():
        from .api import train as api_train

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        api_train(args.config, args.out, data=args.data_dir, data_loader=args.data_loader, workers=args.workers,
                  overwrite=args.overwrite, command=shlex.join(["vmoe-train", *(sys.argv[1:] if argv is None else argv)]),
                  progress=lambda line: print(f"vmoe-train: {line}", file=sys.stderr),
                  dense_epochs=args.dense_epochs, moe_epochs=args.moe_epochs, batch_size=args.batch_size, lr=args.lr,
                  weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, router_weight=args.router_weight,
                  holdout_fraction=args.holdout_fraction, seed=args.seed, augment=not args.no_augment,
                  train_limit=args.train_limit, moe_init=args.moe_init, equal_compute=not args.no_equal_compute,
                  dense_checkpoint=str(args.dense_checkpoint or ""))

    return run_command("vmoe-train", body, "interrupted; rerun the same command to resume from the last finished epoch")


def export_parser() -> argparse.ArgumentParser:
    from .backends import TARGETS, all_backends
    from .exporter import ExportOptions
    from .parity import MIN_SNR_DB, ParityBounds

    from .plan import FP32_PARITY_IMAGES, QUANTIZED_PARITY_IMAGES
    from .quantize import CALIBRATION, MODES, ROUTER_PRECISION, QuantOptions

    b, qb, o, q = ParityBounds(), ParityBounds.quantized("dynamic-int8"), ExportOptions(), QuantOptions()
    p = argparse.ArgumentParser(
        prog="vmoe-export",
        description="Split a Mobile V-MoE checkpoint into trunk, router, shared-attention, per-expert and head graphs, "
        "export them with the real converter for each target into OUT/<target>/ with a manifest.json, and validate "
        "the bundle against PyTorch on held-out test images (parity report). To run a bundle: "
        "`vmoe-export run --bundle DIR IMAGE...` (see `vmoe-export run --help`); to check a bundle on the machine that "
        "will run it: `vmoe-export verify --bundle DIR` (see `vmoe-export verify --help`).",
    )
    p.add_argument("--target", required=True, choices=[*TARGETS, "all"], help="backend to export to, or all four")
    add_model_arguments(p)
    p.add_argument("--output", type=Path, default=Path("bundles"), help="output directory; each target goes to OUTPUT/<target>/ (default bundles)")
    add_data_dir_argument(p, "parity and golden vectors")
    p.add_argument("--parity-images", type=int, default=None,
                   help=f"test images for the parity report (default {FP32_PARITY_IMAGES}; {QUANTIZED_PARITY_IMAGES} or all "
                   "there are when quantized; min 1)")
    p.add_argument("--max-logit-diff", type=float, default=b.max_logit_diff,
                   help=f"fp32 parity bound on logits max abs diff (default {b.max_logit_diff}; not applied when quantized)")
    p.add_argument("--min-top1-agreement", type=float, default=b.min_top1_agreement,
                   help=f"fp32 parity bound on top-1 agreement (default {b.min_top1_agreement}; not applied when quantized)")
    p.add_argument("--min-snr-db", type=float, default=None,
                   help="parity bound on every stage's signal-to-noise ratio against fp32 PyTorch, in dB (default per "
                   "mode: " + ", ".join(f"{m} {v:g}" for m, v in MIN_SNR_DB.items()) + ")")
    p.add_argument("--min-routing-agreement", type=float, default=None,
                   help=f"parity bound on routing agreement (default {b.min_routing_agreement}; {qb.min_routing_agreement} "
                   "when quantized)")
    g = p.add_argument_group("quantization")
    g.add_argument("--quantize", default="none", choices=MODES,
                   help="int8 through each backend's official flow: dynamic-int8 (int8 weights, activations quantized per "
                   "call), static-int8 (W8A8, calibrated), weight-int8 (int8 weights, float compute). Supported: "
                   + "; ".join(f"{x.name}: {', '.join(m for m in x.quantization if m != 'none')}" for x in all_backends())
                   + " (default none)")
    g.add_argument("--calibration-images", type=int, default=q.calibration_images,
                   help=f"static-int8: training images to calibrate on (default {q.calibration_images})")
    g.add_argument("--calibration", default=q.calibration, choices=CALIBRATION,
                   help="static-int8: 'routed' calibrates each expert on the hidden states of the images the fp32 model "
                   "routes to it; 'all' on every image; 'auto' (default) is each backend's measured choice: "
                   + ", ".join(f"{x.name} {x.calibration}" for x in all_backends() if "static-int8" in x.quantization))
    g.add_argument("--min-calibration-samples", type=int, default=q.min_samples,
                   help=f"an expert routed fewer calibration images calibrates on all of them instead (default {q.min_samples})")
    g.add_argument("--router-precision", default=q.router, choices=ROUTER_PRECISION,
                   help=f"keep the router in fp32 or quantize it with the rest (default {q.router}: see "
                   "benchmarks/results/quantization.md)")
    g.add_argument("--max-accuracy-drop", type=float, default=100 * qb.max_accuracy_drop,
                   help=f"quantized parity: fail when top-1 accuracy drops more than this many points below fp32 "
                   f"(default {100 * qb.max_accuracy_drop:.1f})")
    for backend in all_backends():
        if backend.add_arguments:
            backend.add_arguments(p.add_argument_group(f"{backend.name} options"))
    add_schedule_argument(p)
    p.add_argument("--golden-images", type=int, default=o.golden_images, help=f"test images written as golden vectors (the apps' exact checks and every runtime's self-test; at least 1; default {o.golden_images})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_verbose_argument(p)
    return p


def export_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:
        return predict_main(argv[1:], prog="vmoe-export run")
    if argv[:1] == ["verify"]:
        return verify_main(argv[1:])
    if (code := build_side_missing("vmoe-export")) is not None:
        return code
    args = export_parser().parse_args(argv)
    apply_verbose(args)

    def body():
        from .api import export as api_export
        from .backends import TARGETS, get_backend
        from .parity import ParityBounds

        targets = "all" if args.target == "all" else [args.target]
        names = list(TARGETS) if targets == "all" else targets
        # A backend's own flags become its typed options (before any work; a missing package fails here).
        backends = [get_backend(t) for t in names]
        backend_options = {b.name: b.options_from_args(args) for b in backends if b.options_from_args}
        # Flags that were not given keep the plan's per-mode defaults.
        bounds = (ParityBounds.quantized(args.quantize, max_accuracy_drop=args.max_accuracy_drop / 100)
                  if args.quantize != "none"
                  else ParityBounds(max_logit_diff=args.max_logit_diff, min_top1_agreement=args.min_top1_agreement))
        if args.min_snr_db is not None:
            bounds = replace(bounds, min_snr_db=args.min_snr_db)
        if args.min_routing_agreement is not None:
            bounds = replace(bounds, min_routing_agreement=args.min_routing_agreement)
        # Every line the export reports (skips, calibration, each parity report, each bundle written) to
        # stdout as it happens; a failed target ends the command with its error after the others are published.
        api_export(resolve_model(args), targets, args.output, quantize=args.quantize, schedule=args.schedule,
                   data=args.data_dir, parity_images=args.parity_images, bounds=bounds, calibration=args.calibration,
                   calibration_images=args.calibration_images, min_calibration_samples=args.min_calibration_samples,
                   router_precision=args.router_precision, golden_images=args.golden_images,
                   backend_options=backend_options, progress=print, progress_bars=not args.quiet)

    return run_command("vmoe-export", body, "interrupted; no partial bundle was published")


def predict_parser(prog: str = "vmoe-predict") -> argparse.ArgumentParser:
    from .backends import MAX_THREADS

    p = argparse.ArgumentParser(
        prog=prog,
        description="Classify images with an exported bundle through its backend's runtime: trunk, router, then only "
        "the routed experts (loaded on first use, LRU-cached), head. Prints class, super-class, routed experts, "
        "gates and per-stage milliseconds.",
    )
    p.add_argument("images", nargs="+", type=Path, help="image files (any format Pillow reads)")
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory written by vmoe-export (e.g. bundles/onnx)")
    p.add_argument("--max-experts", type=int, default=None, help="keep at most this many experts loaded (LRU); default unbounded")
    p.add_argument("--max-bytes", type=int, default=None, help="keep loaded experts under this many artifact bytes (LRU)")
    p.add_argument("--threads", type=int, default=0,
                   help=f"runtime threads, 1 to {MAX_THREADS} (default 0: the runtime's own choice)")
    p.add_argument("--verify", default="every-load", choices=["every-load", "once"],
                   help="every-load (default): sha256 of an artifact each time it is loaded; once: hash every artifact "
                   "when the bundle opens, then re-hash only files that changed since (faster expert switches)")
    p.add_argument("--expect-digest", default=None, metavar="HEX",
                   help="refuse the bundle unless the sha256 of its manifest.json is HEX (the digest vmoe-export "
                   "printed; also in BUNDLE/manifest.sha256)")
    p.add_argument("--no-self-test", action="store_true",
                   help="skip the self-test at open (the bundle's golden vectors run on this machine and must match "
                   "within the tolerances recorded at export); on by default")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    add_verbose_argument(p)
    return p


def predict_main(argv: list[str] | None = None, prog: str = "vmoe-predict") -> int:
    args = predict_parser(prog).parse_args(argv)
    apply_verbose(args)

    def body():
        import json

        from .api import load as api_load

        rt = api_load(args.bundle, threads=args.threads, max_experts=args.max_experts, max_bytes=args.max_bytes,
                      expect_digest=args.expect_digest, verify=args.verify, self_test=not args.no_self_test)
        m = rt.manifest
        for path in args.images:
            pred = rt.classify(path)
            name = m["class_names"][pred.label]
            sc = [", ".join(m["experts"][e]["superclass"]) for e in pred.experts]
            if args.json:
                print(json.dumps({"image": str(path), "class": name, "class_id": pred.label, "experts": pred.experts,
                                  "gates": pred.gates, "expert_superclasses": sc, "timings_ms": pred.timings_ms}))
            else:
                stages = " ".join(f"{k}={v:.2f}" for k, v in pred.timings_ms.items())
                routed = "; ".join(f"expert {e} (gate {g:.2f}: {s})" for e, g, s in zip(pred.experts, pred.gates, sc))
                print(f"{path}: {name} | routed to {routed} | ms: {stages}")

    return run_command(prog, body)


def verify_parser() -> argparse.ArgumentParser:
    from .backends import MAX_THREADS

    p = argparse.ArgumentParser(
        prog="vmoe-export verify",
        description="Check a bundle on the machine that will run it: every integrity check (manifest schema and "
        "cross-checks, checksums, pinned digest), then its golden vectors from raw pixels through the manifest's "
        "preprocessing and the real runtime, every stage compared with fp32 PyTorch within the tolerances the export "
        "recorded for this bundle. Prints per stage max diff and SNR, top-1 and routing agreement; exit 0 when within "
        "tolerance, 2 with one error line when not. Needs no PyTorch.",
    )
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory written by vmoe-export (e.g. bundles/onnx)")
    p.add_argument("--expect-digest", default=None, metavar="HEX",
                   help="refuse the bundle unless the sha256 of its manifest.json is HEX (BUNDLE/manifest.sha256 as exported)")
    p.add_argument("--images", type=Path, default=None, metavar="DIR",
                   help="also run your own images: DIR/*.png|jpg... (predictions reported) or DIR/<class name>/* "
                   "(accuracy reported); with --reference, agreement with that bundle")
    p.add_argument("--reference", type=Path, default=None, metavar="BUNDLE",
                   help="with --images: an fp32 bundle of the same model to report top-1 and routing agreement against")
    p.add_argument("--threads", type=int, default=0, help=f"runtime threads, 1 to {MAX_THREADS} (default 0: the runtime's own)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    add_verbose_argument(p)
    return p


def verify_main(argv: list[str] | None = None) -> int:
    args = verify_parser().parse_args(argv)
    apply_verbose(args)
    prog = "vmoe-export verify"

    def body():
        import json

        from .api import verify as api_verify
        from .selftest import format_report

        result = api_verify(args.bundle, expect_digest=args.expect_digest, threads=args.threads, images=args.images,
                            reference=args.reference, check=False)
        report, extra = result.report, result.images
        if args.json:
            print(json.dumps({"bundle": str(args.bundle), "target": result.target, **report.to_json(),
                              **({"images": extra} if extra else {})}, indent=1))
        else:
            print(f"{args.bundle} ({result.target}, {result.quantization}, {result.schedule} schedule)")
            print("\n".join(format_report(report)))
            if extra:
                print(extra["summary"])
        if not report.passed:
            return fail(prog, f"{args.bundle}: " + "; ".join(report.failures))

    return run_command(prog, body)
