"""int8 bundles against their backend's fp32 bundle from the same benchmark run."""

from __future__ import annotations

from pathlib import Path


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
