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
    rt.predict(image)
    routed, routed_count = _rss()[0], len(rt.experts.loaded)
    for e in range(rt.num_experts):
        rt.experts.get(e)
    rt.predict(image)
    full, peak = _rss()
    return {"baseline_rss": base, "shared_loaded_rss": shared, "routed_resident_rss": routed, "all_experts_rss": full,
            "peak_rss": peak, "routed_experts": routed_count, "all_experts_loaded": len(rt.experts.loaded)}


def measure_rss(bundle: Path) -> dict:
    r = subprocess.run([sys.executable, "-m", __name__, str(bundle)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    m = json.loads(r.stdout.strip().splitlines()[-1])
    return {
        **m,
        "shared_graphs_mb": (m["shared_loaded_rss"] - m["baseline_rss"]) * MIB,
        "routed_resident_mb": (m["routed_resident_rss"] - m["baseline_rss"]) * MIB,
        "all_experts_mb": (m["all_experts_rss"] - m["baseline_rss"]) * MIB,
    }


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1])))
