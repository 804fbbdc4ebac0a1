"""Where each further expert's resident memory goes, mapping by mapping (issue 23, item 2).

The target is one copy of an expert's weights: at most 1.1x its artifact bytes resident per further expert,
anonymous and file-backed pages together. For each runtime backend's fused bundle of vit-12x192-moe (E=10,
k=1, seeded random weights: memory does not depend on them), in a fresh process: the routed expert loaded
and run, then every further expert loaded and run once, with /proc/self/smaps read before and after each
(after malloc_trim; the bundle's files evicted from the page cache first, as bench/memory.py does). Each
expert's growth is attributed to the mappings that grew: the heap, anonymous mmaps, the bundle's own files,
the weight cache's files (weight_cache.py), other files.

Beside it, what the excess over one copy is, where it can be read off the artifact or isolated:

- ExecuTorch: a method's planned activation memory (the .pte's non-const buffer sizes). The Python runtime
  allocates it per program, so every loaded expert holds its own; ExecuTorch's C++ runtime takes it from the
  caller (`Program::load_method` with a `MemoryManager` whose `HierarchicalAllocator` spans caller-owned
  buffers), so an app can lend every expert the same buffer, as only one runs at a time.
- ONNX Runtime: the same expert paths with their own weights moved into aligned ONNX external data, a file
  of their own, which ONNX Runtime maps instead of copying. What stays anonymous then is the session's own
  state (graph, kernels, plans), before and after the first run.

    .venv/bin/python benchmarks/expert_memory.py [--bundles DIR] [--out benchmarks/results]

--bundles: a directory holding executorch/, tflite/ and onnx/ fused bundles of one model (default: exported
into a temp dir first, about 3 minutes). Writes expert_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CONFIG = "vit-12x192-moe"
TARGETS = ("executorch", "tflite", "onnx")


def by_kind(bundle: Path, cache_dir: Path | None) -> dict[str, dict[str, int]]:
    """This process's resident bytes by kind of mapping, after malloc_trim (bench/memory.py)."""
    from vmoe_export.bench.memory import resident_by_kind, trim

    trim()
    return resident_by_kind(bundle, cache_dir)


def probe_bundle(bundle: Path) -> dict:
    """In this process: each further expert of a bundle loaded and run once through BundleRuntime."""
    import numpy as np

    from vmoe_export.backends import RunOptions
    from vmoe_export.bench.memory import growth_by_kind, zero_inputs
    from vmoe_export.runtime import BundleRuntime

    run = RunOptions(threads=1)
    rt = BundleRuntime(bundle, run=run, self_test=False)
    read = lambda: by_kind(bundle, run.weight_cache_dir)  # noqa: E731
    image = np.zeros(rt.input_shape, np.float32)
    routed = rt.predict(image).experts
    rt.predict(image)
    experts = []
    for e in range(rt.num_experts):
        if e in routed:
            continue
        before = read()
        graphs = rt.experts.get(e)[0]
        loaded = read()
        for name, runner in graphs.items():
            runner(zero_inputs(rt, name))
        ran = read()
        experts.append({"expert": e, "bytes": rt.expert_bytes(e), "loaded": growth_by_kind(before, loaded),
                        "run": growth_by_kind(before, ran)})
    return {"target": rt.target, "experts": experts}


def probe_onnx_mapped(bundle: Path) -> dict:
    """ONNX Runtime sessions of the bundle's expert paths with their own weights as aligned external data in a
    file of their own (ORT maps such data), the shared weights lent as the runtime lends them."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from vmoe_export.bench.memory import growth_by_kind
    from vmoe_export.bundle import artifact_path, read_manifest, read_shared_weights

    manifest = read_manifest(bundle)
    shared = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in read_shared_weights(bundle, manifest).items()}
    paths = {n: artifact_path(bundle, manifest, n) for n, g in manifest["graphs"].items() if g["role"] == "expert"}
    work = Path(tempfile.mkdtemp(prefix="vmoe-onnx-mapped-"))
    shutil.copy(paths[next(iter(paths))].parent / "shared.bin", work)  # ORT checks the data's location exists
    models = {}
    for name, path in paths.items():
        model, data = onnx.load(str(path), load_external_data=False), bytearray()
        for t in model.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL or numpy_helper.to_array(t).nbytes < 4096:
                continue
            array = numpy_helper.to_array(t)
            data += bytes(-len(data) % 65536)  # page-aligned offsets: ORT maps those instead of reading them
            offset = len(data)
            data += array.tobytes()
            for field in ("raw_data", "float_data"):
                t.ClearField(field)
            t.data_location = onnx.TensorProto.EXTERNAL
            for k, v in (("location", f"{name}.data"), ("offset", offset), ("length", array.nbytes)):
                t.external_data.add(key=k, value=str(v))
        (work / f"{name}.data").write_bytes(bytes(data))
        (work / f"{name}.onnx").write_bytes(model.SerializeToString())
        models[name] = (work / f"{name}.onnx", path.stat().st_size)

    def session(path: Path):
        o = ort.SessionOptions()
        o.intra_op_num_threads = 1
        for n, v in shared.items():
            o.add_initializer(n, v)
        o.add_session_config_entry("session.disable_prepacking", "1")  # as backends/onnx.py
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        o.enable_cpu_mem_arena = False
        return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])

    keep, experts = [], []
    for i, (name, (path, nbytes)) in enumerate(models.items()):
        before = by_kind(work, None)
        s = session(path)
        loaded = by_kind(work, None)
        feeds = {x.name: np.zeros([d if isinstance(d, int) else 1 for d in x.shape], np.float32) for x in s.get_inputs()}
        s.run(None, feeds)
        ran = by_kind(work, None)
        keep.append(s)
        if i:  # the first one also maps the shared file and loads ORT's kernels
            experts.append({"expert": name, "bytes": nbytes, "loaded": growth_by_kind(before, loaded),
                            "run": growth_by_kind(before, ran)})
    return {"target": "onnx, own weights mapped", "experts": experts}


def executorch_planned(bundle: Path) -> dict[str, int]:
    """Each expert path's planned activation memory, read off its .pte (the non-const buffers)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    from vmoe_export.bundle import artifact_path, read_manifest

    manifest, out = read_manifest(bundle), {}
    for name, g in manifest["graphs"].items():
        if g["role"] == "expert":
            pte = deserialize_pte_binary(artifact_path(bundle, manifest, name).read_bytes())
            program = getattr(pte, "program", pte)
            out[name] = sum(sum(plan.non_const_buffer_sizes) for plan in program.execution_plan)
    return out


def shared_bytes(bundle: Path) -> int:
    from vmoe_export.bundle import read_manifest, shared_weights_bytes

    return shared_weights_bytes(read_manifest(bundle))


def in_fresh_process(*args: str) -> dict:
    from vmoe_export.bench.memory import evict_from_page_cache

    evict_from_page_cache(Path(args[-1]))  # read from storage, not from the page cache the export left
    r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=900)
    if r.returncode:
        raise SystemExit(f"probe {args} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def summary(probe: dict) -> dict:
    """Per further expert over its bytes (median): totals loaded and run, and the run growth by kind."""
    from vmoe_export.bench.memory import KINDS

    def med(xs):
        return sorted(xs)[len(xs) // 2]

    rows = probe["experts"]
    out = {"experts": len(rows), "expert_bytes": med([r["bytes"] for r in rows])}
    for stage in ("loaded", "run"):
        for part in ("anon", "file"):
            out[f"{stage}_{part}"] = med([sum(k[part] for k in r[stage].values()) / r["bytes"] for r in rows])
    out["by_kind"] = {kind: {part: med([r["run"][kind][part] / r["bytes"] for r in rows]) for part in ("anon", "file")}
                      for kind in KINDS}
    return out


def export_bundles(out: Path) -> None:
    from vmoe_export import export
    from vmoe_export.checkpoint import random_checkpoint
    from vmoe_export.config import load_config

    export(random_checkpoint(load_config(CONFIG), seed=0), list(TARGETS), out, schedule="fused", parity_images=4,
           golden_images=1)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Where each further expert's resident memory goes (vit-12x192-moe, fused, k=1, 1 thread)", "",
        f"Measured {result['created_at']} on {m['cpu']} ({m['features']}) by `python benchmarks/expert_memory.py`. "
        "Per further expert (the routed one warm), loaded then run once, growth of this process's mappings over the "
        "expert's artifact bytes (median over the experts), read from /proc/self/smaps after malloc_trim. "
        "Target (issue 23): anonymous + file-backed <= 1.1x.", "",
        "| runtime | expert MiB | loaded: anon + file | run: anon + file | total | heap | anon mmap | bundle files "
        "| weight cache | other files |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in result["summaries"].items():
        kinds = " | ".join(f"{v['anon']:.2f} + {v['file']:.2f}" for v in s["by_kind"].values())
        lines.append(f"| {name} | {s['expert_bytes'] / 2**20:.2f} | {s['loaded_anon']:.2f} + {s['loaded_file']:.2f} | "
                     f"{s['run_anon']:.2f} + {s['run_file']:.2f} | {s['run_anon'] + s['run_file']:.2f}x | {kinds} |")
    planned = result["executorch_planned_bytes"]
    et = result["summaries"]["executorch"]
    arena = sorted(planned.values())[len(planned) // 2]
    lines += [
        "", "Columns by kind of mapping: anonymous + file-backed growth over the expert's bytes.", "",
        "## What the excess is", "",
        f"- **ExecuTorch**: each expert path's planned activation memory is {arena / 2**20:.2f} MiB "
        f"({arena / et['expert_bytes']:.2f}x its bytes; the .pte's non-const buffers), against a measured excess of "
        f"{et['run_anon'] + et['run_file'] - 1:.2f}x over one copy. The Python runtime allocates it per program; "
        "ExecuTorch's C++ runtime takes the planned buffers from the caller (`Program::load_method` with a "
        "`MemoryManager` whose `HierarchicalAllocator` spans caller-owned memory), so an app that lends every "
        "expert one buffer (one runs at a time) would hold "
        f"{et['run_anon'] + et['run_file'] - arena / et['expert_bytes']:.2f}x per further expert. Neither the "
        "Python `Runtime` nor the Android `Module` API exposes that.",
    ]
    if "onnx, own weights mapped" in result["summaries"]:
        o, mapped = result["summaries"]["onnx"], result["summaries"]["onnx, own weights mapped"]
        lines.append(
            f"- **ONNX Runtime**: as shipped, an expert's own weights are copied into its session (anonymous "
            f"{o['run_anon']:.2f}x). With them as aligned external data in a file of their own, ORT maps them: "
            f"{mapped['run_anon']:.2f}x anonymous + {mapped['run_file']:.2f}x file-backed after the first run, "
            f"{mapped['loaded_anon']:.2f}x anonymous before it. That anonymous part holds no weight: it is the "
            "session's own state (graph, kernels, plans), so the mapped layout makes the weights clean pages the "
            "OS may drop but leaves the total where it was.")
    lit, shared = result["summaries"]["tflite"], result.get("tflite_shared_bytes", 0)
    packed = (f"every weight the path runs, the shared attention included: the bundle stores that once "
              f"({shared / 2**20:.2f} MiB in experts/shared.bin, mapped slice by slice), but each path's cache file "
              "packs its own copy" if shared else "every weight the path runs")
    lines.append(
        f"- **LiteRT**: {lit['by_kind']['weight cache']['file']:.2f}x is XNNPACK's packed weights in the mapped "
        f"cache file ({packed}), {lit['by_kind']['bundle files']['file']:.2f}x the bundle's own pages read, and "
        f"{lit['run_anon']:.2f}x anonymous (the compiled model's tensor arena and buffers, per model). "
        "CompiledModel's Python API has no shared arena between models.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundles", type=Path, default=None, help="executorch/, tflite/ and onnx/ fused bundles of one model")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--probe-onnx-mapped", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe:
        print(json.dumps(probe_bundle(args.probe)))
        return 0
    if args.probe_onnx_mapped:
        print(json.dumps(probe_onnx_mapped(args.probe_onnx_mapped)))
        return 0
    from vmoe_export.bench.run import machine_info
    from vmoe_export.machine import cpu_features

    with tempfile.TemporaryDirectory(prefix="vmoe-expert-memory-") as tmp:
        bundles = args.bundles
        if bundles is None:
            bundles = Path(tmp)
            export_bundles(bundles)
        probes = {t: in_fresh_process("--probe", str(bundles / t)) for t in TARGETS}
        probes["onnx, own weights mapped"] = in_fresh_process("--probe-onnx-mapped", str(bundles / "onnx"))
        machine = machine_info(1)
        result = {"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "machine": {"cpu": machine["cpu"], "features": " ".join(cpu_features()), "versions": machine["versions"]},
                  "probes": probes, "summaries": {k: summary(v) for k, v in probes.items()},
                  "executorch_planned_bytes": executorch_planned(bundles / "executorch"),
                  "tflite_shared_bytes": shared_bytes(bundles / "tflite")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "expert_memory.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "expert_memory.md").write_text(markdown(result))
    print((args.out / "expert_memory.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
