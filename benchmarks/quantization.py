"""fp32 vs int8 bundles on every backend with a Linux runtime, and the two quantization ablations.

Toy (the shipped fmnist-tiny, trained): per backend and mode, bundle size, accuracy on the test set
vs fp32 PyTorch, top-1 and routing agreement, logits SNR, latency (end to end and per stage), cold
expert load and resident memory. Ablations on static-int8: routed calibration vs every expert on
every image (accuracy, routing, per-expert output SNR on test hidden states), and router quantized
vs kept fp32 (routing agreement).

Paper scale (vit-12x192-moe, E=10, k=1, random init, synthetic images: latency and size only):
size and latency per backend, mode and schedule (per-layer and fused), 1 thread.

Writes OUT/quantization.json, OUT/quantization.md and OUT/quantization_size_latency.png.

    .venv/bin/python benchmarks/quantization.py                 # the committed run (about 35 min on 2 cores)
    .venv/bin/python benchmarks/quantization.py --quick --out /tmp/q   # a few minutes, fewer images
    .venv/bin/python benchmarks/quantization.py --only paper    # re-run paper scale, keep the recorded toy rows
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent


def record_only():
    """Parity bounds that reject nothing, so every row is measured and recorded."""
    from vmoe_export.parity import ParityBounds

    return ParityBounds(max_logit_diff=None, min_top1_agreement=None, min_routing_agreement=0.0, max_accuracy_drop=None,
                        min_snr_db=None)


def export(ckpt, target, out, test, quant, options, calibration):
    from vmoe_export.exporter import export_bundle

    opts = replace(options, quant=quant)
    path, report = export_bundle(ckpt, target, out, test.images, test.labels, opts, log=lambda s: None,
                                 calibration_images=calibration)
    return path, report


def bundle_row(path: Path, report: dict, settings, images, memory: bool) -> dict:
    from vmoe_export.bench.measure import bench_bundle
    from vmoe_export.bench.memory import measure_rss
    from vmoe_export.bundle import bundle_bytes, read_manifest

    m = read_manifest(path)
    timing = bench_bundle(path, images, settings)
    row = {
        "size_bytes": bundle_bytes(m),
        "parity": {k: v for k, v in report.items() if k not in ("bounds", "data")},
        "latency_ms": timing["end_to_end"], "stages_ms": {k: v["median_ms"] for k, v in timing["stages"].items()},
        "expert_cold_load_ms": timing["expert_cold_load"]["median_ms"],
        "export_seconds": m["export_seconds"],
    }
    if memory:
        row["rss"] = measure_rss(path)
    return row


@torch.no_grad()
def expert_snr(path: Path, ckpt, x: torch.Tensor) -> dict[str, float]:
    """Each expert graph of a bundle against PyTorch on the fp32 hidden states of the test images routed
    to it: the error quantization adds to that expert alone."""
    from vmoe_export.compare import power, snr_db
    from vmoe_export.quantize import record_inputs
    from vmoe_export.runtime import BundleRuntime
    from vmoe_export.split import split_model

    model = ckpt.build_model()
    graphs = split_model(model)
    seen, _ = record_inputs(graphs, model.schedule, x)
    rt = BundleRuntime(path)
    out = {}
    for g in graphs:
        if g.role != "expert" or not seen[g.name]:
            continue
        signal = noise = 0.0
        for sample in seen[g.name]:
            want = g.run(*sample)[0].numpy()
            got = rt.run_graph(g.name, *(t.numpy() for t in sample))[0]
            signal += power(want)
            noise += power(want - got)
        out[g.name] = round(snr_db(signal, noise), 2)
    return out


def toy(work: Path, parity_images: int, ablation_images: int, settings, progress) -> dict:
    from vmoe_export.backends import describe, runtime_targets
    from vmoe_export.plan import supports
    from vmoe_export.checkpoint import load_checkpoint
    from vmoe_export.data import calibration_split, eval_split, preprocess
    from vmoe_export.exporter import ExportOptions
    from vmoe_export.quantize import QuantOptions

    ckpt = load_checkpoint(REPO / "models" / "fmnist-tiny" / "model.pt")
    cfg = ckpt.config
    data = eval_split(None, "fashion-mnist", cfg.image_size, cfg.in_chans)
    test = data.split
    calib, _ = calibration_split(None, "fashion-mnist", cfg.image_size, cfg.in_chans, QuantOptions().calibration_images)
    images = [preprocess(test.images[i : i + 1], cfg).numpy() for i in range(64)]
    # The toy rows and ablations compare modes on one schedule: per-layer, whose expert graphs the ablations read.
    base = ExportOptions(parity_images=parity_images, bounds=record_only(), golden_images=1, progress=False,
                         schedule="per-layer", eval_data={"kind": data.kind, "description": data.description})
    rows, ablations = [], []
    for t in runtime_targets():
        for mode in describe(t).quantization:
            progress(f"toy {t} {mode}")
            path, report = export(ckpt, t, work / f"toy-{t}-{mode}", test, QuantOptions(mode), base, calib.images)
            rows.append({"backend": t, "mode": mode, **bundle_row(path, report, settings, images, memory=True)})
        # Ablations on 'ablation_images' test images: calibration strategy and router precision.
        small = replace(base, parity_images=ablation_images)
        x = preprocess(test.images[:ablation_images], cfg)
        for label, quant in (("routed calibration, fp32 router", QuantOptions("static-int8", calibration="routed")),
                             ("every expert on all images", QuantOptions("static-int8", calibration="all")),
                             ("routed calibration, router quantized",
                              QuantOptions("static-int8", calibration="routed", router="int8")),
                             ("dynamic-int8, router quantized", QuantOptions("dynamic-int8", router="int8")),
                             ("dynamic-int8, fp32 router", QuantOptions("dynamic-int8"))):
            if not supports(t, quant.mode):
                continue
            progress(f"toy {t} ablation: {label}")
            path, report = export(ckpt, t, work / "ablation" / f"{t}-{len(ablations)}", test, quant, small, calib.images)
            snr = expert_snr(path, ckpt, x)
            ablations.append({"backend": t, "mode": quant.mode, "variant": label,
                              "accuracy_delta": report["accuracy_delta"], "routing_agreement": report["routing_agreement"],
                              "top1_agreement": report["top1_agreement"], "logits_snr_db": report["logits_snr_db"],
                              "expert_snr_db_mean": round(float(np.mean(list(snr.values()))), 2),
                              "expert_snr_db_min": round(float(min(snr.values())), 2), "images": report["images"]})
    return {"rows": rows, "ablations": ablations}


def paper(work: Path, settings, progress, config: str) -> dict:
    from vmoe_export.backends import runtime_targets
    from vmoe_export.plan import supports
    from vmoe_export.checkpoint import random_checkpoint
    from vmoe_export.data import SYNTHETIC_NOTE, preprocess, synthetic_split
    from vmoe_export.exporter import ExportOptions
    from vmoe_export.model import load_config
    from vmoe_export.quantize import QuantOptions

    cfg = load_config(config)
    ckpt = random_checkpoint(cfg, seed=0)
    test = synthetic_split(cfg.image_size, cfg.in_chans, n=32, seed=0)
    calib = synthetic_split(cfg.image_size, cfg.in_chans, n=32, seed=1)
    images = [preprocess(test.images[i : i + 1], cfg).numpy() for i in range(16)]
    base = ExportOptions(parity_images=16, bounds=record_only(), golden_images=1, progress=False,
                         eval_data={"kind": "synthetic", "description": SYNTHETIC_NOTE})
    rows = []
    for t in runtime_targets():
        for mode in ("none", "dynamic-int8", "static-int8"):
            if not supports(t, mode):
                continue
            for schedule in ("per-layer", "fused"):
                progress(f"paper {cfg.name} {t} {mode} {schedule}")
                quant = QuantOptions(mode, calibration_images=len(calib), min_samples=1)
                path, report = export(ckpt, t, work / f"paper-{t}-{mode}-{schedule}", test, quant,
                                      replace(base, schedule=schedule), calib.images)
                rows.append({"backend": t, "mode": mode, "schedule": schedule,
                             **bundle_row(path, report, settings, images, memory=False)})
    return {"config": cfg.name, "rows": rows}


def ratios(rows: list[dict]) -> None:
    """Size and latency of each row relative to its backend's fp32 row of the same schedule, and (fused rows)
    relative to the per-layer row of the same backend and mode."""
    key = lambda r: (r["backend"], r.get("schedule", "per-layer"))  # noqa: E731
    fp32 = {key(r): r for r in rows if r["mode"] == "none"}
    per_layer = {(r["backend"], r["mode"]): r for r in rows if r.get("schedule", "per-layer") == "per-layer"}
    for r in rows:
        base = fp32[key(r)]
        r["size_ratio"] = round(r["size_bytes"] / base["size_bytes"], 3)
        r["latency_ratio"] = round(r["latency_ms"]["median_ms"] / base["latency_ms"]["median_ms"], 3)
        if r.get("schedule") == "fused":
            pl = per_layer[(r["backend"], r["mode"])]
            r["size_over_per_layer"] = round(r["size_bytes"] / pl["size_bytes"], 3)
            r["latency_over_per_layer"] = round(r["latency_ms"]["median_ms"] / pl["latency_ms"]["median_ms"], 3)


def markdown(result: dict) -> str:
    toy_run = result.get("toy_run")
    out = ["# Quantized bundles: fp32 vs int8 per backend", "",
           f"Run: `{result['command']}` on {result['machine']['cpu']} ({result['machine']['logical_cores']} cores), "
           f"{result['seconds'] / 60:.1f} min. "
           + (f"The toy rows and ablations are kept from an earlier run (`{toy_run['command']}`, "
              f"{toy_run['seconds'] / 60:.1f} min): {toy_run['note']} " if toy_run else "")
           + 
           "Latency: median ms of the routed runtime, 1 thread. Ratios are against the same backend's fp32 bundle "
           "in this run. Router kept fp32 unless noted (see the ablation).", "",
           f"## Toy: fmnist-tiny (trained), parity on {result['toy']['rows'][0]['parity']['images']} test images", "",
           "| backend | mode | size KB | size / fp32 | latency ms | latency / fp32 | accuracy | Δ vs fp32 torch (pts) | "
           "top-1 agree | routing agree | logits SNR dB | cold expert load ms | RSS routed / all MiB |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["toy"]["rows"]:
        p, rss = r["parity"], r.get("rss", {})
        out.append(f"| {r['backend']} | {r['mode']} | {r['size_bytes'] / 1024:.0f} | {r['size_ratio']:.2f} | "
                   f"{r['latency_ms']['median_ms']:.3f} | {r['latency_ratio']:.2f} | {100 * p['top1_accuracy_backend']:.2f}% | "
                   f"{100 * p['accuracy_delta']:+.2f} | {100 * p['top1_agreement']:.2f}% | {100 * p['routing_agreement']:.2f}% | "
                   f"{p['logits_snr_db']:.1f} | {r['expert_cold_load_ms']:.2f} | "
                   f"{rss.get('routed_resident_mb', float('nan')):.1f} / {rss.get('all_experts_mb', float('nan')):.1f} |")
    out += ["", f"## Ablations (toy, {result['toy']['ablations'][0]['images'] if result['toy']['ablations'] else 0} test images)", "",
            "Expert SNR: each expert graph of the bundle against PyTorch on the fp32 hidden states of the test images "
            "routed to it (mean and worst expert).", "",
            "| backend | mode | variant | Δ accuracy (pts) | routing agree | top-1 agree | logits SNR dB | expert SNR dB mean / min |",
            "|---|---|---|---|---|---|---|---|"]
    for a in result["toy"]["ablations"]:
        out.append(f"| {a['backend']} | {a['mode']} | {a['variant']} | {100 * a['accuracy_delta']:+.2f} | "
                   f"{100 * a['routing_agreement']:.2f}% | {100 * a['top1_agreement']:.2f}% | {a['logits_snr_db']:.1f} | "
                   f"{a['expert_snr_db_mean']:.1f} / {a['expert_snr_db_min']:.1f} |")
    pr = result["paper"]
    out += ["", f"## Paper scale: {pr['config']}, random init (synthetic: latency and size only, not accuracy)", "",
            "Ratios / fp32 are against the same backend's fp32 bundle of the same schedule; fused / per-layer against "
            "the same backend and mode. Fused int8 bundles keep the fp32 router as a graph of its own (4 graph calls "
            "per image; fp32 fused: 3; per-layer: 7). Stage columns: per-layer attention and experts, or the fused "
            "expert path (attention and MLP of both MoE layers) under experts.", "",
            "| backend | mode | schedule | size MB | size / fp32 | latency ms (median, p90) | latency / fp32 | "
            "fused / per-layer size, latency | trunk ms | attention ms | experts ms | export s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in pr["rows"]:
        s = r["stages_ms"]
        vs = (f"{r['size_over_per_layer']:.2f}, {r['latency_over_per_layer']:.2f}" if "size_over_per_layer" in r else "")
        out.append(f"| {r['backend']} | {r['mode']} | {r.get('schedule', 'per-layer')} | {r['size_bytes'] / 1e6:.2f} | "
                   f"{r['size_ratio']:.2f} | {r['latency_ms']['median_ms']:.2f}, {r['latency_ms']['p90_ms']:.2f} | "
                   f"{r['latency_ratio']:.2f} | {vs} | {s.get('trunk', 0):.2f} | {s.get('attention', 0):.2f} | "
                   f"{s.get('experts', 0):.2f} | {r['export_seconds']:.0f} |")
    return "\n".join(out) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vmoe_export.bench.report import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (("toy: fmnist-tiny", result["toy"]["rows"], "KB", 1024),
              (f"paper: {result['paper']['config']}", result["paper"]["rows"], "MB", 1e6))
    for ax, (title, rows, unit, scale) in zip(axes, panels, strict=True):
        for backend in sorted({r["backend"] for r in rows}):
            pts = [r for r in rows if r["backend"] == backend]
            ax.plot([r["size_bytes"] / scale for r in pts], [r["latency_ms"]["median_ms"] for r in pts], "o", label=backend)
            for r in pts:
                ax.annotate(r["mode"].replace("-int8", ""), (r["size_bytes"] / scale, r["latency_ms"]["median_ms"]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"bundle size ({unit})")
        ax.set_ylabel("latency, median ms (1 thread)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    save_figure(fig, axes[-1], path, "latency, median ms (1 thread)", f"paper: {result['paper']['config']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few images and runs (minutes; numbers are rough)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--work", type=Path, default=None, help="where bundles are built (default: a temp dir)")
    p.add_argument("--paper-config", default="vit-12x192-moe")
    p.add_argument("--only", choices=["paper"], default=None,
                   help="re-run only the paper-scale section; the toy rows and ablations are kept from OUT/quantization.json")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from vmoe_export.bench.measure import BenchSettings
    from vmoe_export.bench.run import machine_info
    from vmoe_export.clitools import quiet_converters

    quiet_converters()
    torch.set_num_threads(1)
    settings = BenchSettings(warmup=5 if args.quick else 20, runs=20 if args.quick else 150, threads=1, quick=args.quick)
    parity_images, ablation_images = (500, 300) if args.quick else (10_000, 2_000)
    started = time.time()

    def progress(msg):
        print(f"[{(time.time() - started) / 60:5.1f} min] {msg}", file=sys.stderr, flush=True)

    recorded = args.out / "quantization.json"
    if args.only and not recorded.exists():
        p.error(f"--only paper keeps the toy rows of {recorded}, which does not exist: run without --only first")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if args.only:
            old = json.loads(recorded.read_text())
            result = {"toy": old["toy"], "toy_run": old.get("toy_run") or {
                "command": old["command"], "seconds": old["seconds"],
                "note": "measured on the checkpoint shipped then (MoE from scratch, 88.25% top-1), per-layer schedule."}}
        else:
            result = {"toy": toy(work, parity_images, ablation_images, settings, progress)}
        result["paper"] = paper(work, replace(settings, runs=20 if args.quick else 60), progress, args.paper_config)
    ratios(result["toy"]["rows"])
    ratios(result["paper"]["rows"])
    result.update(command="python benchmarks/quantization.py" + (" --quick" if args.quick else "")
                  + (f" --only {args.only}" if args.only else ""), machine=machine_info(1),
                  seconds=round(time.time() - started, 1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantization.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "quantization.md").write_text(markdown(result))
    plot(result, args.out / "quantization_size_latency.png")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
