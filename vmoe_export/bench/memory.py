"""Resident memory of a bundle in a fresh process (Linux VmRSS), so one backend's allocations never
count against another's. `measure_rss(bundle)` runs this module as `python -m vmoe_export.bench.memory
BUNDLE [on|off]` (RunOptions.pack_shared_weights, by size without it) and reads the one JSON line it prints.

A phone does not count all resident pages alike: anonymous pages (heap copies, packed weights) are dirty
and stay until freed, while file-backed pages of a mapped artifact are clean and the OS may drop them under
pressure and read them back. So every reading is split, from /proc/self/smaps_rollup, into anonymous and
file-backed bytes, and /proc/self/smaps says how many of the file-backed bytes are the bundle's own files.

Every reading is taken after glibc's malloc_trim(0), so it counts memory the bundle holds, not heap the
allocator kept after a converter's or runtime's temporary buffers were freed (at vit-12x192 that
retention alone was about 1 MiB per ONNX Runtime session). Where glibc is absent the readings are raw."""

from __future__ import annotations

import ctypes
import os
import json
import subprocess
import sys
from pathlib import Path

MIB = 1 / 2**20

try:
    _trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):
    _trim = None


def _kib_fields(path: str) -> dict[str, int]:
    with open(path) as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {k: int(v.split()[0]) * 1024 for k, v in fields.items() if v.strip().endswith("kB")}


KINDS = ("heap", "anon mmap", "bundle files", "weight cache", "other files")


def resident_by_kind(bundle: Path, cache_dir: Path | None = None) -> dict[str, dict[str, int]]:
    """This process's resident bytes by kind of mapping (/proc/self/smaps), anonymous and file-backed: the heap,
    anonymous mmaps, files inside the bundle (an artifact the runtime mmapped), files inside `cache_dir` (a weight
    cache), other files. Summed by kind, not by address range: the heap and anonymous mappings grow in place."""
    out = {k: {"anon": 0, "file": 0} for k in KINDS}
    roots = {"bundle files": str(Path(bundle).resolve()) + "/",
             "weight cache": str(Path(cache_dir).resolve()) + "/" if cache_dir is not None else None}
    kind, rss = out["other files"], 0
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
                kind = out[_kind_of(head[5].strip() if len(head) == 6 else "", roots)]
            elif line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Anonymous:"):
                anon = int(line.split()[1]) * 1024
                kind["anon"] += anon
                kind["file"] += rss - anon
    return out


def _kind_of(name: str, roots: dict[str, str | None]) -> str:
    if name == "[heap]":
        return "heap"
    if not name or name.startswith("["):
        return "anon mmap"
    return next((kind for kind, root in roots.items() if root and name.startswith(root)), "other files")


def growth_by_kind(before: dict, after: dict) -> dict[str, dict[str, int]]:
    return {k: {part: after[k][part] - before[k][part] for part in ("anon", "file")} for k in KINDS}


def _bundle_mapped(bundle: Path) -> int:
    """Resident bytes of mappings of files inside the bundle (an artifact the runtime mmapped)."""
    mapped = resident_by_kind(bundle)["bundle files"]
    return mapped["anon"] + mapped["file"]


def trim() -> None:
    """Give the heap the allocator kept after frees back to the OS (glibc), so a reading counts what is held."""
    if _trim is not None:
        _trim(0)


def _reading(bundle: Path) -> dict[str, int]:
    """Resident bytes now: all (VmRSS), anonymous, file-backed (and shmem), of which the bundle's files."""
    trim()
    status = _kib_fields("/proc/self/status")
    rollup = _kib_fields("/proc/self/smaps_rollup")
    return {"rss": status["VmRSS"], "peak": status["VmHWM"], "anon": rollup["Anonymous"],
            "file": rollup["Rss"] - rollup["Anonymous"], "bundle_mapped": _bundle_mapped(bundle)}


def zero_inputs(rt, name: str) -> list:
    """Zeros for each input of one graph of a BundleRuntime's bundle, shaped as its manifest says."""
    import numpy as np

    return [np.zeros(t["shape"], np.float32) for t in rt.manifest["graphs"][name]["inputs"]]


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in ("rss", "anon", "file", "bundle_mapped")}


PACKING = {"on": True, "off": False}  # --pack-shared-weights / the probe's argument -> RunOptions (auto: None)


def packing_flag(pack_shared_weights: bool | None) -> str | None:
    """The --pack-shared-weights value of a forced RunOptions.pack_shared_weights; None when the runtime chooses."""
    return None if pack_shared_weights is None else "on" if pack_shared_weights else "off"


def packing_note(pack_shared_weights: bool | None) -> str:
    """What a report says of a forced RunOptions.pack_shared_weights: "" when the runtime chose by size."""
    flag = packing_flag(pack_shared_weights)
    return "" if flag is None else f", --pack-shared-weights {flag}"


def probe(bundle: str, pack_shared_weights: bool | None = None) -> dict:
    """Resident memory at each step of a bundle's life, each step's growth attributable to one thing:
    shared graphs loaded -> each shared graph run once (activation arenas, weights packed on first run, e.g.
    by XNNPACK in LiteRT) -> first image (the routed expert(s) loaded and run) -> warm-up image -> each other
    expert loaded (before it runs) and then run once."""
    import numpy as np

    from ..backends import RunOptions, get_backend
    from ..bundle import read_manifest
    from ..runtime import BundleRuntime

    path = Path(bundle)
    read = lambda: _reading(path)  # noqa: E731
    # The runtime library's own footprint is not the bundle's: load it before the baseline reading.
    get_backend(read_manifest(path)["target"]).start_runtime()
    at = {"baseline": read()}
    # Without the self-test: its golden images would run the shared graphs and load experts before the first reading.
    rt = BundleRuntime(path, run=RunOptions(threads=1, pack_shared_weights=pack_shared_weights), self_test=False)
    at["shared_loaded"] = read()
    for name in rt.schedule.shared_graphs:
        rt.run_graph(name, *zero_inputs(rt, name))
    at["shared_run"] = read()
    image = np.zeros(rt.input_shape, np.float32)
    routed_ids = rt.predict(image).experts
    at["routed_resident"], routed_count = read(), len(rt.experts.loaded)
    rt.predict(image)  # warm-up: arenas and packing done
    at["warm"] = read()
    loaded, marginal = [], []
    for e in range(rt.num_experts):
        if e in routed_ids:
            continue
        before = read()
        graphs = rt.experts.get(e)[0]
        loaded.append(_delta(read(), before))
        for name, run in graphs.items():
            run(zero_inputs(rt, name))
        marginal.append(_delta(read(), before))
    rt.predict(image)
    at["all_experts"] = read()
    return {**{f"{k}_rss": v["rss"] for k, v in at.items()}, "peak_rss": at["all_experts"]["peak"],
            "readings": at, "routed_experts": routed_count, "all_experts_loaded": len(rt.experts.loaded),
            "expert_load_rss": [d["rss"] for d in loaded], "expert_marginal_rss": [d["rss"] for d in marginal],
            "expert_load": loaded, "expert_marginal": marginal,
            "expert_bytes": [rt.expert_bytes(e) for e in range(rt.num_experts) if e not in routed_ids],
            "malloc_trim": _trim is not None}


CAN_EVICT = hasattr(os, "posix_fadvise")


def evict_from_page_cache(path: Path) -> None:
    """Drop a file's (or a directory's files') clean pages from the OS page cache."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _median(xs: list[float]) -> float | None:
    return sorted(xs)[len(xs) // 2] if xs else None


def measure_rss(bundle: Path, pack_shared_weights: bool | None = None) -> dict:
    # How much of an mmapped artifact the kernel maps around the pages a runtime touches depends on how the page
    # cache holds the file: a vit-12x192 LiteRT expert's .tflite, still cached from the export that wrote it,
    # measured 0.89x its bytes resident after a run; evicted and read back from storage, 0.155x. Measure the
    # latter, as on a phone after install.
    if CAN_EVICT:
        evict_from_page_cache(bundle)
    flag = packing_flag(pack_shared_weights)
    r = subprocess.run([sys.executable, "-m", __name__, str(bundle), *([] if flag is None else [flag])],
                       capture_output=True, text=True, timeout=600)
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
        # The same growth split by kind of page: anonymous (dirty, stays) and file-backed (clean, the OS may drop
        # it), and of the file-backed, the bundle's own mapped files.
        **{f"expert_marginal_{kind}_over_bytes": _median([d[kind] / b for d, b in zip(m["expert_marginal"], sizes,
                                                                                        strict=True)])
           for kind in ("anon", "file", "bundle_mapped")},
        **{f"{stage}_{kind}_mb": (m["readings"][stage][kind] - m["readings"]["baseline"][kind]) * MIB
           for stage in ("shared_loaded", "routed_resident", "all_experts") for kind in ("anon", "file")},
    }


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], PACKING[sys.argv[2]] if len(sys.argv) > 2 else None)))
