"""Resident memory of a bundle in a fresh process (Linux VmRSS), so one backend's allocations never
count against another's. `measure_rss(bundle)` runs this module as `python -m vmoe_export.bench.memory
BUNDLE` and reads the one JSON line it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MIB = 1 / 2**20


def _rss() -> tuple[int, int]:
    """(current, peak) resident bytes of this process."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def probe(bundle: str) -> dict:
    """RSS at each step of a bundle's life. Each expert is run once when loaded (runtimes like LiteRT pack
    weights only on first use), and every reading after the first image is taken once activation arenas
    and the shared graphs' packed weights exist, so the per-expert growth is the expert's own cost."""
    import numpy as np

    from ..backends import RunOptions, get_backend
    from ..bundle import read_manifest
    from ..runtime import BundleRuntime

    # The runtime library's own footprint is not the bundle's: load it before the baseline reading.
    get_backend(read_manifest(Path(bundle))["target"]).start_runtime()
    base = _rss()[0]
    rt = BundleRuntime(Path(bundle), run=RunOptions(threads=1))
    shared = _rss()[0]
    image = np.zeros(rt.input_shape, np.float32)
    routed_ids = rt.predict(image).experts
    routed, routed_count = _rss()[0], len(rt.experts.loaded)
    rt.predict(image)  # warm-up: arenas and packing done
    warm = _rss()[0]
    marginal = []
    for e in range(rt.num_experts):
        if e in routed_ids:
            continue
        before = _rss()[0]
        for name, run in rt.experts.get(e)[0].items():
            run([np.zeros(rt.manifest["graphs"][name]["inputs"][0]["shape"], np.float32)])
        marginal.append(_rss()[0] - before)
    rt.predict(image)
    full, peak = _rss()
    return {"baseline_rss": base, "shared_loaded_rss": shared, "routed_resident_rss": routed, "warm_rss": warm,
            "all_experts_rss": full, "peak_rss": peak, "routed_experts": routed_count,
            "all_experts_loaded": len(rt.experts.loaded), "expert_marginal_rss": marginal,
            "expert_bytes": [rt.expert_bytes(e) for e in range(rt.num_experts) if e not in routed_ids]}


def measure_rss(bundle: Path) -> dict:
    r = subprocess.run([sys.executable, "-m", __name__, str(bundle)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    m = json.loads(r.stdout.strip().splitlines()[-1])
    ratios = [rss / size for rss, size in zip(m["expert_marginal_rss"], m["expert_bytes"], strict=True)]
    return {
        **m,
        "shared_graphs_mb": (m["shared_loaded_rss"] - m["baseline_rss"]) * MIB,
        "routed_resident_mb": (m["routed_resident_rss"] - m["baseline_rss"]) * MIB,
        "all_experts_mb": (m["all_experts_rss"] - m["baseline_rss"]) * MIB,
        # First image minus loading: activation arenas, packed shared weights, the routed expert(s).
        "first_image_growth_mb": (m["routed_resident_rss"] - m["shared_loaded_rss"]) * MIB,
        # Each further expert, loaded and run once after warm-up, over its artifact bytes (median).
        "expert_marginal_over_bytes": sorted(ratios)[len(ratios) // 2] if ratios else None,
    }


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1])))
