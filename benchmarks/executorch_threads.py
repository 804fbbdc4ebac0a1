"""Where the ExecuTorch split's time goes at 1, 2 and 4 threads against its dense twin (issue 23, item 5).

Takes vit-12x192-moe (E=10, k=1, seeded random weights: latency does not depend on them) split by the fused
schedule (trunk = 10 blocks + router, e0_path = both MoE layers of one expert, head) and its dense twin (12
blocks, one graph), converts each as the bundles do (XnnpackPartitioner, fp32), and for each thread count:

- times trunk, path, head, the three in sequence (the split) and the dense twin, interleaved in rotating
  rounds through backends/executorch.py's runner (what BundleRuntime calls), and reports split / dense as
  the median of per-round ratios with its range;
- does both with PyTorch's own intra-op pool at 1 thread and at the runtime's count (woken once), since the
  benchmark process holds both: the split's slowdown at 2 threads comes from that pool, not from the split;
- profiles each graph with ExecuTorch's own ETDump (the runtime's per-instruction timer) and sums its events
  by kind: XNNPACK operator time inside delegate calls, the delegate-call overhead around them, portable
  (non-delegated) kernels, and the whole Method::execute. The split's sums are trunk + path + head.

On a 2-core machine 4 threads is oversubscribed; it is labelled so.

    python benchmarks/executorch_threads.py [--out benchmarks/results] [--rounds 8] [--threads 1 2 4]

Writes executorch_threads.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONFIG = "vit-12x192-moe"
SPLIT = ("trunk", "e0_path", "head")


def export_graphs(work: Path) -> dict[str, tuple[Path, list[np.ndarray], object]]:
    """name -> (its .pte, example inputs, its GraphIO) for the split's three graphs and the dense twin."""
    from vmoe_export.backends import get_backend
    from vmoe_export.bench.baselines import dense_graph
    from vmoe_export.checkpoint import random_checkpoint
    from vmoe_export.config import load_config
    from vmoe_export.model import MobileVMoE
    from vmoe_export.native_output import quiet
    from vmoe_export.plan import build_schedule
    from vmoe_export.quantize import FP32, QuantOptions
    from vmoe_export.split import split_model

    cfg = load_config(CONFIG)
    model = random_checkpoint(cfg, seed=0).build_model().eval()
    graphs = {g.name: g for g in split_model(model, build_schedule(cfg, "fused", QuantOptions()))}
    graphs["dense"] = dense_graph(MobileVMoE(cfg.dense_twin()).eval())
    backend = get_backend("executorch")
    out = {}
    for name in (*SPLIT, "dense"):
        g, path = graphs[name], work / f"{name}.pte"
        with quiet(f"executorch conversion of {name}"):
            backend.export(g, path, backend.make_options(), FP32)
        out[name] = (path, [np.ascontiguousarray(v.numpy()) for v in g.inputs.values()], g.io())
    return out


def torch_pool(threads: int) -> None:
    """PyTorch's own intra-op threadpool at `threads`, woken by one parallel op (as an eager run or a
    conversion leaves it in a benchmark process)."""
    import torch

    torch.set_num_threads(threads)
    torch.randn(512, 512) @ torch.randn(512, 512)


def time_split(graphs: dict, threads: int, rounds: int, calls: int) -> dict:
    from vmoe_export.backends import ArtifactRecord, RunOptions, get_backend
    from vmoe_export.bench.measure import round_ratios, time_interleaved

    backend = get_backend("executorch")
    record = ArtifactRecord.of_export(backend.make_options())
    runners = {n: backend.load(p, io, RunOptions(threads=threads), record) for n, (p, _, io) in graphs.items()}
    fns = {n: (lambda i, n=n: runners[n](graphs[n][1])) for n in graphs}
    fns["split"] = lambda i: [runners[n](graphs[n][1]) for n in SPLIT]
    timed = time_interleaved(fns, warmup=10, runs=rounds * calls, rounds=rounds)
    ratios = round_ratios(timed["split"], timed["dense"])
    return {"median_ms": {n: float(np.median([ms for r in timed[n] for ms in r])) for n in timed},
            "split_over_dense": float(np.median(ratios)), "range": [min(ratios), max(ratios)]}


def profile(path: Path, inputs: list[np.ndarray], threads: int, calls: int, work: Path) -> dict:
    """ETDump of `calls` runs: per kind of event, the sum over the graph's events of each event's median ms;
    and each transformer block's fully connected ms (which blocks pay, where the split pays more)."""
    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    from vmoe_export.backends.executorch import set_threads

    set_threads(threads)
    module = portable_lib._load_for_executorch(str(path), enable_etdump=True)
    xs = [torch.from_numpy(x) for x in inputs]
    for _ in range(calls):
        module.forward(xs)
    dump = work / f"{path.stem}.{threads}.etdp"
    module.write_etdump_result_to_file(str(dump))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Output Buffer not found": no tensors were asked for
        block = Inspector(etdump_path=str(dump)).event_blocks[-1]
    kinds, fully_connected = collections.Counter(), []
    for ev in block.events:
        if ev.perf_data is None:
            continue
        ms = float(np.median(ev.perf_data.raw))
        if ev.name.startswith("native_call_"):
            kinds["portable kernels"] += ms
        elif ev.name in ("DELEGATE_CALL", "OPERATOR_CALL", "Method::execute"):
            kinds[ev.name] += ms
        elif "::" not in ev.name:  # an XNNPACK operator inside a delegate call
            kinds["XNNPACK operators"] += ms
            if "Fully Connected" in ev.name:
                kinds["fully connected (share of XNNPACK)"] += ms
                fully_connected.append(ms)
    kinds["delegate-call overhead"] = kinds.pop("DELEGATE_CALL") - kinds["XNNPACK operators"]
    kinds["operator dispatch"] = kinds.pop("OPERATOR_CALL", 0.0) - kinds["portable kernels"]
    # A block's four fully connected ops (qkv, proj, fc1, fc2) in program order; the router / head's last.
    blocks = [sum(fully_connected[i:i + 4]) for i in range(0, len(fully_connected) - 3, 4)]
    return {**kinds, "fully connected ms per block": blocks}


def markdown(result: dict) -> str:
    lines = ["# ExecuTorch split vs dense twin by thread count", "",
             f"vit-12x192-moe fused k=1 (trunk + e0_path + head) against the 12-block dense twin, fp32 XNNPACK, "
             f"{result['machine']}. Timed interleaved in {result['rounds']} rotating rounds through the bundle "
             "runner; ETDump sums are per call (medians per event, summed by kind). "
             "Command: `python benchmarks/executorch_threads.py`.", "",
             "The ExecuTorch graphs run at `threads`; `torch pool` is the thread count PyTorch's own intra-op "
             "pool was set to (and woken at) in the same process, as `vmoe-bench` used to leave it: PyTorch only "
             "hands tensors to the runtime, and no phone runs it beside the runtime.", "",
             "| threads | torch pool | trunk ms | path ms | head ms | split ms | dense ms | split / dense (range) |",
             "|---|---|---|---|---|---|---|---|"]
    cores = os.cpu_count() or 0
    for t, r in result["threads"].items():
        m = r["timing"]["median_ms"]
        label = f"{r['threads']} (oversubscribed: {cores} cores)" if r["threads"] > cores else str(r["threads"])
        lines.append(f"| {label} | {r['torch_threads']} | {m['trunk']:.2f} | {m['e0_path']:.2f} | {m['head']:.2f} | {m['split']:.2f} | "
                     f"{m['dense']:.2f} | {r['timing']['split_over_dense']:.3f} "
                     f"({r['timing']['range'][0]:.3f}-{r['timing']['range'][1]:.3f}) |")
    lines += ["", "ETDump, ms per call: split (trunk + path + head) / dense twin", "",
              "| threads / torch pool | " + " | ".join(KINDS) + " |", "|---|" + "---|" * len(KINDS)]
    for t, r in result["threads"].items():
        p = r["profile"]
        split = {k: sum(p[n].get(k, 0.0) for n in SPLIT) for k in KINDS}
        lines.append(f"| {t} | " + " | ".join(f"{split[k]:.2f} / {p['dense'].get(k, 0.0):.2f}" for k in KINDS) + " |")
    lines += ["", "Fully connected ms per transformer block (qkv + proj + fc1 + fc2), ETDump", "",
              "| threads / torch pool | graph | blocks in program order |", "|---|---|---|"]
    for t, r in result["threads"].items():
        for n in ("trunk", "e0_path", "dense"):
            blocks = r["profile"][n]["fully connected ms per block"]
            lines.append(f"| {t} | {n} | " + " ".join(f"{ms:.2f}" for ms in blocks) + " |")
    return "\n".join(lines + [""])


KINDS = ("Method::execute", "XNNPACK operators", "fully connected (share of XNNPACK)", "delegate-call overhead",
         "portable kernels", "operator dispatch")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="where the results go")
    p.add_argument("--rounds", type=int, default=8, help="interleaved timing rounds")
    p.add_argument("--calls", type=int, default=40, help="calls per graph per round (and profiled calls)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4], help="thread counts to measure")
    args = p.parse_args(argv)

    from vmoe_export.bench.variants import record, save_result

    result = record(args.rounds, "executorch", {})
    del result["variants"]
    result["threads"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        graphs = export_graphs(work)
        for t in args.threads:
            for pool in sorted({1, t}):
                print(f"executorch_threads: {t} thread(s), PyTorch's pool at {pool}", file=sys.stderr)
                torch_pool(pool)
                timing = time_split(graphs, t, args.rounds, args.calls)
                prof = {n: profile(path, xs, t, args.calls, work) for n, (path, xs, _) in graphs.items()}
                result["threads"][f"{t}/{pool}"] = {"threads": t, "torch_threads": pool, "timing": timing, "profile": prof}
    save_result(args.out, "executorch_threads", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
