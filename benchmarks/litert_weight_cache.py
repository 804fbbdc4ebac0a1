"""What LiteRT's XNNPACK weight cache would do for a routed bundle's experts (issue 23, item 2).

The bundle's LiteRT runtime today is the TFLite Interpreter with the XNNPACK delegate: XNNPACK packs every
weight into a heap copy on first run, beside the mmapped .tflite file, so a loaded expert holds about 2.5x
its bytes. LiteRT's CompiledModel takes `CpuOptions(xnnpack_weight_cache_path=FILE)`: packed weights are
written to FILE once and mmapped from it afterwards ("the original weights are never read"). This script
loads and runs each expert graph of a LiteRT bundle through CompiledModel in a fresh process, three ways:
without a cache, building a cache, and reusing it, and reads each expert's resident growth by kind of page
(/proc/self/smaps_rollup, after malloc_trim) over its artifact bytes.

    python benchmarks/litert_weight_cache.py --bundle BUNDLE/tflite [--out benchmarks/results]

It measures; it does not change the runtime (the closing notes of issue 23 say why not yet).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = ("no cache", "cache built", "cache reused")


def _reading() -> tuple[int, int]:
    """(anonymous, file-backed) resident bytes of this process, after malloc_trim."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/smaps_rollup") as f:
        fields = {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f if ":" in line)
                  if v.strip().endswith("kB")}
    return fields["Anonymous"], fields["Rss"] - fields["Anonymous"]


def probe(bundle: Path, cache_dir: str) -> list[dict]:
    """In this process: every expert graph loaded and run once, in order, each one's growth recorded."""
    import numpy as np
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.options import CpuOptions, Options

    from vmoe_export.bundle import artifact_path, read_manifest

    manifest = read_manifest(bundle)
    experts = [n for n, g in manifest["graphs"].items() if g["role"] == "expert"]
    keep, rows = [], []
    for name in experts:
        entry = manifest["graphs"][name]
        path = artifact_path(bundle, manifest, name)  # sha256 checked, as the runtime does
        cache = str(Path(cache_dir) / f"{name}.xnnpack_cache") if cache_dir else ""
        anon0, file0 = _reading()
        t0 = time.perf_counter()
        model = CompiledModel.from_file(str(path), options=Options(cpu_options=CpuOptions(
            num_threads=1, xnnpack_weight_cache_path=cache)))
        inputs, outputs = model.create_input_buffers(0), model.create_output_buffers(0)
        for buffer, spec in zip(inputs, entry["inputs"], strict=True):
            buffer.write(np.zeros(spec["shape"], np.float32))
        model.run_by_index(0, inputs, outputs)
        ms = (time.perf_counter() - t0) * 1e3
        anon1, file1 = _reading()
        keep.append((model, inputs, outputs))  # resident, as the runtime keeps a loaded expert
        rows.append({"graph": name, "bytes": entry["size_bytes"], "load_and_first_run_ms": ms,
                     "anon_over_bytes": (anon1 - anon0) / entry["size_bytes"],
                     "file_over_bytes": (file1 - file0) / entry["size_bytes"]})
    return rows


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def run(bundle: Path) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="vmoe-xnnpack-cache-") as cache_dir:
        for mode in MODES:
            arg = "" if mode == "no cache" else cache_dir
            r = subprocess.run([sys.executable, __file__, "--probe", str(bundle), arg], capture_output=True,
                               text=True, timeout=900)
            if r.returncode != 0:
                raise SystemExit(f"probe ({mode}) failed: {r.stderr.strip().splitlines()[-1:]}")
            rows = json.loads(r.stdout.strip().splitlines()[-1])
            # The first expert also pays the runtime's own first-use costs (kernels' code pages, thread pool):
            # the medians are over the further experts, as vmoe-bench's per-expert figures are.
            further = rows[1:]
            results[mode] = {"rows": rows, **{k: _median([x[k] for x in further]) for k in
                                              ("anon_over_bytes", "file_over_bytes", "load_and_first_run_ms")}}
        results["cache_bytes"] = sum(p.stat().st_size for p in Path(cache_dir).iterdir())
    return results


def markdown(result: dict) -> str:
    lines = ["# LiteRT: XNNPACK weight cache against the packed heap copy (measured, not yet used by the runtime)", "",
             f"Bundle: {result['bundle']} ({result['experts']} expert graphs, {result['expert_bytes'] / 1e6:.2f} MB "
             f"each); {result['machine']}; measured {result['created_at']}. Each mode in a fresh process; per "
             "expert = median growth of the further experts (all but the first) after loading and running once, "
             "over the expert's artifact bytes. `python benchmarks/litert_weight_cache.py --bundle BUNDLE`.", "",
             "| mode | anonymous / bytes | file-backed / bytes | together | load + first run ms |", "|---|---|---|---|---|"]
    for mode in MODES:
        r = result[mode]
        lines.append(f"| {mode} | {r['anon_over_bytes']:.2f}x | {r['file_over_bytes']:.2f}x | "
                     f"{r['anon_over_bytes'] + r['file_over_bytes']:.2f}x | {r['load_and_first_run_ms']:.1f} |")
    lines += ["", f"Cache files: {result['cache_bytes'] / 1e6:.1f} MB for the {result['experts']} experts.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, help="a LiteRT bundle (vmoe-export --target tflite)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="where the results go")
    p.add_argument("--probe", nargs=2, metavar=("BUNDLE", "CACHE_DIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe:
        from vmoe_export.native_output import quiet

        with quiet("LiteRT CompiledModel"):  # its plugin and accelerator notices
            rows = probe(Path(args.probe[0]), args.probe[1])
        print(json.dumps(rows))
        return 0
    if args.bundle is None:
        p.error("--bundle is required")
    from vmoe_export.bench.run import machine_info
    from vmoe_export.bundle import read_manifest

    manifest = read_manifest(args.bundle)
    if manifest["target"] != "tflite":
        p.error(f"{args.bundle} is a {manifest['target']} bundle; this measures LiteRT (tflite) bundles")
    experts = [g for g in manifest["graphs"].values() if g["role"] == "expert"]
    m = machine_info(1)
    result = {"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "bundle": manifest["model"]["name"]
              + f" ({manifest['schedule']['kind']})", "experts": len(experts), "expert_bytes": experts[0]["size_bytes"],
              "machine": f"{m['cpu']}, ai-edge-litert {m['versions']['ai-edge-litert']}", **run(args.bundle)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "litert_weight_cache.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "litert_weight_cache.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
