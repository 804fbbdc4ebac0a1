"""Resident memory of a bundle in a fresh process (Linux VmRSS), so one backend's allocations never
count against another's. `measure_rss(bundle)` runs this module as `python -m vmoe_export.bench.memory
BUNDLE` and reads the one JSON line it prints.

Every reading is taken after glibc's malloc_trim(0), so it counts memory the bundle holds, not heap the
allocator kept after a converter's or runtime's temporary buffers were freed (at vit-12x192 that
retention alone was about 1 MiB per ONNX Runtime session). Where glibc is absent the readings are raw."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path

MIB = 1 / 2**20

try:
    _trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):
    _trim = None


def _rss() -> tuple[int, int]:
    """(current, peak) resident bytes of this process."""
    if _trim is not None:
        _trim(0)
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def _zeros(rt, name: str) -> list:
    import numpy as np

    return [np.zeros(t["shape"], np.float32) for t in rt.manifest["graphs"][name]["inputs"]]


def probe(bundle: str) -> dict:
    """RSS at each step of a bundle's life, each step's growth attributable to one thing:
    shared graphs loaded -> each shared graph run once (activation arenas, weights packed on first run, e.g.
    by XNNPACK in LiteRT) -> first image (the routed expert(s) loaded and run) -> warm-up image -> each other
    expert loaded (before it runs) and then run once."""
    import numpy as np

    from ..backends import RunOptions, get_backend
    from ..bundle import read_manifest
    from ..runtime import BundleRuntime

    # The runtime library's own footprint is not the bundle's: load it before the baseline reading.
    get_backend(read_manifest(Path(bundle))["target"]).start_runtime()
    base = _rss()[0]
    # Without the self-test: its golden images would run the shared graphs and load experts before the first reading.
    rt = BundleRuntime(Path(bundle), run=RunOptions(threads=1), self_test=False)
    shared = _rss()[0]
    for name in rt.schedule.shared_graphs:
        rt.run_graph(name, *_zeros(rt, name))
    shared_run = _rss()[0]
    image = np.zeros(rt.input_shape, np.float32)
    routed_ids = rt.predict(image).experts
    routed, routed_count = _rss()[0], len(rt.experts.loaded)
    rt.predict(image)  # warm-up: arenas and packing done
    warm = _rss()[0]
    loaded, marginal = [], []
    for e in range(rt.num_experts):
        if e in routed_ids:
            continue
        before = _rss()[0]
        graphs = rt.experts.get(e)[0]
        after_load = _rss()[0]
        for name, run in graphs.items():
            run(_zeros(rt, name))
        loaded.append(after_load - before)
        marginal.append(_rss()[0] - before)
    rt.predict(image)
    full, peak = _rss()
    return {"baseline_rss": base, "shared_loaded_rss": shared, "shared_run_rss": shared_run,
            "routed_resident_rss": routed, "warm_rss": warm,
            "all_experts_rss": full, "peak_rss": peak, "routed_experts": routed_count,
            "all_experts_loaded": len(rt.experts.loaded), "expert_load_rss": loaded, "expert_marginal_rss": marginal,
            "expert_bytes": [rt.expert_bytes(e) for e in range(rt.num_experts) if e not in routed_ids],
            "malloc_trim": _trim is not None}


def _median(xs: list[float]) -> float | None:
    return sorted(xs)[len(xs) // 2] if xs else None


def measure_rss(bundle: Path) -> dict:
    r = subprocess.run([sys.executable, "-m", __name__, str(bundle)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    m = json.loads(r.stdout.strip().splitlines()[-1])
    sizes = m["expert_bytes"]
    return {
        **m,
        "shared_graphs_mb": (m["shared_loaded_rss"] - m["baseline_rss"]) * MIB,
        "routed_resident_mb": (m["routed_resident_rss"] - m["baseline_rss"]) * MIB,
        "all_experts_mb": (m["all_experts_rss"] - m["baseline_rss"]) * MIB,
        # First image minus loading: activation arenas, packed shared weights, the routed expert(s) ...
        "first_image_growth_mb": (m["routed_resident_rss"] - m["shared_loaded_rss"]) * MIB,
        # ... of which the shared graphs' own first run (arenas and weight packing, no expert involved) ...
        "shared_first_run_mb": (m["shared_run_rss"] - m["shared_loaded_rss"]) * MIB,
        # ... and the routed expert(s) loaded and run.
        "routed_experts_mb": (m["routed_resident_rss"] - m["shared_run_rss"]) * MIB,
        # Each further expert after warm-up over its artifact bytes (median): loaded only, then loaded and run once.
        "expert_load_over_bytes": _median([rss / b for rss, b in zip(m["expert_load_rss"], sizes, strict=True)]),
        "expert_marginal_over_bytes": _median([rss / b for rss, b in zip(m["expert_marginal_rss"], sizes, strict=True)]),
    }


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1])))
