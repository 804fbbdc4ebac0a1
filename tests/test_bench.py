"""FLOP counts against hand counts, and the benchmark report's files and fields (no timing asserted)."""

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from vmoe_export.bench.baselines import dense_graph, monolithic_graph
from vmoe_export.flops import count_flops
from vmoe_export.model import MobileVMoE
from vmoe_export.split import split_model


def hand_counts(c):
    """FLOPs = 2 x multiply-accumulates, written out from the architecture."""
    N, D, H, h = c.num_patches, c.embed_dim, c.mlp_hidden, c.num_heads
    dh = D // h
    patch = N * D * c.in_chans * c.patch_size ** 2
    attention = N * D * 3 * D + 2 * h * N * N * dh + N * D * D  # qkv, QK^T and AV, proj
    mlp = 2 * N * D * H
    macs = {
        "trunk": patch + (c.depth - c.moe_layers) * (attention + mlp),
        "router": D * c.num_experts,
        "attention": attention,
        "expert": mlp,
        "head": D * c.num_classes,
    }
    return {k: 2 * v for k, v in macs.items()}


@pytest.mark.parametrize("exported", [True, False])
def test_flops_match_hand_counts(exported):
    cfg = tiny_config()
    expected = hand_counts(cfg)
    for g in split_model(MobileVMoE(cfg)):
        assert count_flops(g.module, tuple(g.inputs.values()), exported=exported) == expected[g.role], g.name
    assert expected["attention"] > 0


def test_baseline_flops():
    cfg = tiny_config(top_k=1)
    e = hand_counts(cfg)
    model = MobileVMoE(cfg)
    x = torch.zeros(1, 1, 8, 8)
    dense = count_flops(dense_graph(MobileVMoE(cfg.dense_twin())).module, (x,))
    assert dense == e["trunk"] + cfg.moe_layers * (e["attention"] + e["expert"]) + e["head"]
    mono = count_flops(monolithic_graph(model).module, (x,))
    assert mono == e["trunk"] + e["router"] + cfg.moe_layers * (e["attention"] + cfg.num_experts * e["expert"]) + e["head"]


def test_sdpa_formula_is_registered():
    """The CPU SDPA kernel has no FLOP formula in torch; ours must count QK^T and AV."""
    q = torch.randn(1, 2, 5, 8)
    with torch.no_grad():
        flops = count_flops(SdpaModule(), (q,), exported=False)
    assert flops == 2 * (2 * 1 * 2 * 5 * 5 * 8)


class SdpaModule(torch.nn.Module):
    def forward(self, q):
        return torch.nn.functional.scaled_dot_product_attention(q, q, q)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from vmoe_export.checkpoint import Checkpoint, save_checkpoint
    from vmoe_export.exporter import ExportOptions, export_bundle

    torch.manual_seed(0)
    cfg = tiny_config()
    d = tmp_path_factory.mktemp("bench")
    ckpt = Checkpoint(cfg, MobileVMoE(cfg).state_dict(), [f"c{i}" for i in range(6)], [0, 0, 1, 1, 2, 2])
    save_checkpoint(ckpt, d / "model.pt")
    images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    bundle, _ = export_bundle(ckpt, "onnx", d / "bundles", images, torch.zeros(8, dtype=torch.int64),
                              ExportOptions(parity_images=8, progress=False, golden_images=1, schedule="per-layer"),
                              log=lambda s: None)  # per-layer: the report's per-stage columns are all filled
    return ckpt, bundle, images


def test_report_files_and_fields(tiny_run, tmp_path):
    from vmoe_export.bench.measure import BenchSettings
    from vmoe_export.bench.report import write_report
    from vmoe_export.bench.run import run_benchmarks
    from vmoe_export.model import count_params

    ckpt, bundle, images = tiny_run
    model = ckpt.build_model()
    runs = 3
    report = run_benchmarks({"onnx": bundle}, model, MobileVMoE(model.cfg.dense_twin()),
                            BenchSettings(warmup=1, runs=runs, quick=True), images, progress=False)
    write_report(report, tmp_path)
    data = json.loads((tmp_path / "bench.json").read_text())
    b = data["backends"]["onnx"]
    for stage in ("trunk", "router", "attention", "experts", "head"):
        assert b["split"]["stages"][stage]["median_ms"] > 0 and b["split"]["stages"][stage]["n"] == runs
    for timing in (b["split"]["end_to_end"], b["dense_twin"], b["monolithic"]):
        assert timing["n"] == runs and 0 < timing["median_ms"] <= timing["p90_ms"]
    # Stages are parts of the end-to-end time, never more.
    stage_sum = sum(b["split"]["stages"][st]["mean_ms"] for st in b["split"]["stages"])
    assert stage_sum <= b["split"]["end_to_end"]["mean_ms"]
    assert b["split"]["expert_cold_load"]["n"] == model.cfg.num_experts  # one cold load per expert
    assert b["split"]["expert_cold_load_verified_once"]["n"] == model.cfg.num_experts
    assert b["split"]["expert_cold_load_uncached"]["n"] == model.cfg.num_experts  # Linux: posix_fadvise exists
    assert sum(b["split"]["routed_histogram"]) == runs * model.cfg.top_k
    steps = b["split"]["expert_cold_load_steps"]  # one reading per expert of each step of a cold load
    assert {k: v["n"] for k, v in steps.items()} == dict.fromkeys(("verify", "runtime_load", "first_run"), model.cfg.num_experts)
    assert "| onnx | " in (tmp_path / "README.md").read_text().split("Where a cold load goes")[1]
    mem = b["memory"]
    assert "error" not in mem, mem
    # The probe did what it reports: one image routed to k experts, then every expert loaded.
    assert mem["routed_experts"] == model.cfg.top_k and mem["all_experts_loaded"] == model.cfg.num_experts
    assert mem["shared_loaded_rss"] > mem["baseline_rss"] > 10 * 2**20  # sessions cost memory; python itself > 10 MiB
    # One marginal reading per expert that the first image did not route to, each over its own bytes.
    assert len(mem["expert_marginal_rss"]) == len(mem["expert_bytes"]) == model.cfg.num_experts - model.cfg.top_k
    assert len(mem["expert_load_rss"]) == len(mem["expert_bytes"]) and mem["malloc_trim"]
    assert mem["first_image_growth_mb"] == pytest.approx(mem["shared_first_run_mb"] + mem["routed_experts_mb"])
    assert mem["expert_marginal_over_bytes"] is not None and "per expert / its bytes" in (tmp_path / "README.md").read_text()
    assert set(data["ratios"]["onnx"]) == {"split_over_dense_twin", "split_over_monolithic", "split_over_eager_model",
                                           "cold_load_over_warm_expert_exec", "spread_over_rounds"}
    # Timed interleaved: one ratio per round (3 rounds of one call each), the reported one their median.
    q = data["ratios"]["onnx"]
    for baseline in ("dense_twin", "monolithic"):
        per_round = b["split"]["round_ratios"][baseline]
        assert len(per_round) == runs and q["spread_over_rounds"][baseline] == [min(per_round), max(per_round)]
        assert min(per_round) <= q[f"split_over_{baseline}"] <= max(per_round)
    # Each reading split by kind of page: python's own mapped libraries are file-backed, its heap anonymous.
    for stage, r in mem["readings"].items():
        assert r["anon"] > 0 and r["file"] > 0 and 0 <= r["bundle_mapped"] <= r["file"], stage
    assert mem["expert_marginal_anon_over_bytes"] is not None and "By kind of page" in (tmp_path / "README.md").read_text()
    assert data["machine"]["threads_requested"] == 1 and data["machine"]["cpu"]
    f = data["flops"]
    assert f["active_per_image"] < f["total_all_graphs"]
    assert f["params"]["total"] == count_params(model) == sum(f["params"]["per_graph"].values())
    md = (tmp_path / "README.md").read_text()
    assert "| onnx |" in md and "![latency](latency.png)" in md
    for png in ("latency.png", "stages.png", "expert_load.png", "memory.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bundle_mapped_counts_resident_pages_of_the_bundle_files_only(tmp_path):
    import mmap

    from vmoe_export.bench.memory import _bundle_mapped

    (tmp_path / "bundle").mkdir()
    size = 64 * 4096
    for name in ("bundle/a.bin", "outside.bin"):
        (tmp_path / name).write_bytes(b"\1" * size)
    before = _bundle_mapped(tmp_path / "bundle")
    with open(tmp_path / "bundle" / "a.bin", "rb") as f, open(tmp_path / "outside.bin", "rb") as g:
        inside, outside = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), mmap.mmap(g.fileno(), 0, access=mmap.ACCESS_READ)
        sum(inside[i] for i in range(0, size, 4096)) + sum(outside[i] for i in range(0, size, 4096))  # touch every page
        assert _bundle_mapped(tmp_path / "bundle") - before == size
        inside.close()
        outside.close()
    assert _bundle_mapped(tmp_path / "bundle") == before


def test_interleaved_rounds_split_the_runs_and_rotate_the_order():
    from vmoe_export.bench.measure import time_interleaved

    calls = []
    out = time_interleaved({"a": lambda i: calls.append(("a", i)), "b": lambda i: calls.append(("b", i))},
                           warmup=1, runs=5, rounds=2)
    assert [len(r) for r in out["a"]] == [len(r) for r in out["b"]] == [3, 2]
    timed = calls[2:]  # after one warm-up call each
    assert timed == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2), ("b", 3), ("b", 4), ("a", 3), ("a", 4)]


def test_bundles_from_another_model_are_refused(tiny_run):
    from vmoe_export.bench.run import check_bundles_match

    _, bundle, _ = tiny_run
    with pytest.raises(ValueError, match="was not exported from"):
        check_bundles_match({"onnx": bundle}, MobileVMoE(tiny_config(embed_dim=32)), "other.pt")


@pytest.mark.slow
def test_bench_cli_on_an_image_folder_model(tmp_path, image_folder):
    """A model trained on an ImageFolder (not Fashion-MNIST) is benchmarked from the command line."""
    import subprocess
    import sys

    from vmoe_export.checkpoint import Checkpoint, save_checkpoint

    torch.manual_seed(0)
    cfg = tiny_config(num_classes=3, num_experts=2)
    save_checkpoint(Checkpoint(cfg, MobileVMoE(cfg).state_dict(), ["a", "b", "c"], [0, 1, 1],
                               metrics={"dataset": image_folder.name}), tmp_path / "model.pt")
    bench = Path(sys.executable).parent / "vmoe-bench"
    args = [str(bench), "--checkpoint", str(tmp_path / "model.pt"), "--target", "onnx", "--quick", "--quiet",
            "--bundles", str(tmp_path / "b"), "--out", str(tmp_path / "r"), "--images", "4"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "pass --data-dir" in r.stderr  # no hidden Fashion-MNIST fallback
    r = subprocess.run(args + ["--data-dir", str(image_folder)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "onnx: split" in r.stdout
    report = json.loads((tmp_path / "r" / "bench.json").read_text())
    assert report["model"]["config"]["num_classes"] == 3 and report["settings"]["quick"]
    # int8 beside fp32 in one run; static-int8 calibrates on the folder's train/ images.
    r = subprocess.run(args + ["--data-dir", str(image_folder), "--quantize", "dynamic-int8", "static-int8"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((tmp_path / "r" / "bench.json").read_text())["quantized"]
    assert [(q["backend"], q["mode"]) for q in rows] == [("onnx", "dynamic-int8"), ("onnx", "static-int8")]
    # Against the fp32 bundle of the same run. (Whether int8 is smaller is test_quantize's question: on a model this
    # tiny, static int8's quantize/dequantize nodes outweigh its weights, 1.8x the ORT-optimised fp32 file.)
    from vmoe_export.bundle import bundle_bytes, read_manifest

    fp32_bytes = bundle_bytes(read_manifest(tmp_path / "b" / "onnx"))
    assert all(q["size_ratio"] == pytest.approx(q["size_bytes"] / fp32_bytes) and q["latency_ms"] > 0 for q in rows)
    manifest = json.loads((tmp_path / "b" / "static-int8" / "onnx" / "manifest.json").read_text())
    assert manifest["quantization"]["calibration"]["images"] > 0
    assert "## Quantized bundles against fp32" in (tmp_path / "r" / "README.md").read_text()
    assert "onnx static-int8: size x" in r.stdout


def _load_script(name):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_paper_matrix_quick_writes_its_tables(tmp_path):
    """benchmarks/paper_matrix.py --quick on a tiny config: each backend asked for gets a row whose figures
    are consistent with each other (the full run is recorded in benchmarks/results/, not timed here). Two of
    the three runtime backends keep the suite short; the script is backend-agnostic, the rest of the suite
    exports and runs all three."""
    targets = ["tflite", "onnx"]

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(tiny_config(name="tiny-rgb", image_size=16, in_chans=3, mean=(0.5,) * 3,
                                          std=(0.25,) * 3).to_dict()))
    assert _load_script("paper_matrix").main(["--quick", "--variants", str(cfg), "--out", str(tmp_path / "r"),
                                              "--targets", *targets]) == 0
    result = json.loads((tmp_path / "r" / "paper_matrix.json").read_text())
    rows = result["rows"]
    assert [(r["schedule"], r["backend"]) for r in rows] == [(s, t) for s in ("per-layer", "fused") for t in targets]
    assert result["settings"]["quick"]
    for r in rows:
        assert r["variant"] == "tiny-rgb" and r["top_k"] == 1 and r["threads"] == 1
        assert r["flops_active"] < r["flops_monolithic"] and r["params_active"] < r["params_total"]
        lo, hi = r["spread_over_rounds"]["dense_twin"]  # the median of per-round ratios, timed interleaved
        assert lo <= r["split_over_dense"] <= hi and r["split_ms"] > 0 and r["dense_ms"] > 0
        assert r["expert_anon_over_bytes"] is not None and r["expert_file_over_bytes"] is not None
        assert r["rss_shared_mb"] is not None and r["bundle_bytes"] > 0
        assert r["rss_first_image_mb"] == pytest.approx(r["rss_shared_first_run_mb"] + r["rss_routed_experts_mb"])
    # Same model, same FLOPs: the fused bundle stores the MoE attention once per expert, so it is larger.
    by = {(r["schedule"], r["backend"]): r for r in rows}
    for t in targets:
        assert by["fused", t]["flops_active"] == by["per-layer", t]["flops_active"]
        assert by["fused", t]["bundle_bytes"] > by["per-layer", t]["bundle_bytes"]
    md = (tmp_path / "r" / "paper_matrix.md").read_text()
    assert md.count("| tiny-rgb | 1 | per-layer | 1 |") == md.count("| tiny-rgb | 1 | fused | 1 |") == len(rows) // 2
    assert "synthetic: latency only" in md
    header = next(line for line in md.splitlines() if line.startswith("| variant |"))
    assert {line.count("|") for line in md.splitlines() if line.startswith("| tiny-rgb |")} == {header.count("|")}
    script = _load_script("paper_matrix")  # the targets section, fed this run's rows as if they were vit-12x192's
    as_target = {**result, "rows": [{**r, "variant": script.TARGET_VARIANT} for r in rows]}
    section = script.markdown(as_target).split("against issue 23's targets")[1]
    assert section.count("\n| fused |") == section.count("\n| per-layer |") == len(targets)
    # 1 thread only here, so the 2-thread column is "-": bundle size, verified-once load and memory are marked
    assert section.count(" met") + section.count(" missed") == 3 * len(rows)
    assert section.count("| 1.000 met |") >= len(targets)  # a per-layer bundle is its own size
    for png in ("paper_latency.png", "paper_memory.png"):
        assert (tmp_path / "r" / png).read_bytes()[:4] == b"\x89PNG"


def test_artifact_cache_reuses_identical_graphs_only(tmp_path):
    """k=1 and k=2 bundles of one model share every converted graph; the monolithic baselines differ by k."""
    from vmoe_export.backends import get_backend
    from vmoe_export.bench.baselines import monolithic_graph
    from vmoe_export.artifact_cache import artifact_key
    from vmoe_export.split import split_model

    torch.manual_seed(0)
    k1 = MobileVMoE(tiny_config(top_k=1))
    k2 = MobileVMoE(tiny_config(top_k=2))
    k2.load_state_dict(k1.state_dict())
    onnx = get_backend("onnx")
    keys = lambda m: [artifact_key(g, onnx, onnx.make_options()) for g in split_model(m)]  # noqa: E731
    assert keys(k1) == keys(k2) and len(set(keys(k1))) == len(keys(k1))
    mono = [artifact_key(monolithic_graph(m), onnx, onnx.make_options()) for m in (k1, k2)]
    assert mono[0] != mono[1]
    # A changed conversion recipe (LiteRT's static ops) is a new artifact, whatever the tool versions.
    from dataclasses import replace

    graph = split_model(k1)[0]
    assert artifact_key(graph, replace(onnx, recipe="another"), onnx.make_options()) != keys(k1)[0]


def test_accuracy_seeds_summary(tmp_path):
    seeds = _load_script("accuracy_seeds")

    def run(seed, arm, dense, moe, eq=None, **options):
        d = tmp_path / f"s{seed}-{arm}"
        d.mkdir()
        cfg = {"dense_epochs": 15, "moe_epochs": 15, "seed": seed, "moe_init": arm, **options}
        m = {"command": f"vmoe-train --seed {seed}", "dense": {"top1": dense},
             "moe": {"top1": moe, "router_top1_vs_superclass": 0.9}, "superclasses": [], "train_config": cfg}
        if eq is not None:
            m["dense_equal_compute"] = {"top1": eq}
        d.joinpath("metrics.json").write_text(json.dumps(m))
        return d

    runs = {s: {"upcycled": run(s, "upcycled", d, up, eq), "scratch": run(s, "scratch", d, sc)}
            for s, d, sc, up, eq in ((0, 0.80, 0.82, 0.85, 0.84), (1, 0.82, 0.81, 0.84, 0.85), (2, 0.81, 0.83, 0.86, 0.84))}
    s = seeds.summarize(runs)
    assert s["scratch_minus_dense"]["wins"] == 2
    assert s["scratch_minus_dense"]["mean"] == pytest.approx(0.01)
    assert s["scratch_minus_dense"]["stdev"] == pytest.approx(0.0173205, rel=1e-4)
    assert s["upcycled_minus_equal_compute"]["mean"] == pytest.approx(0.02 / 3)
    assert s["upcycled_minus_equal_compute"]["wins"] == 2
    text = seeds.markdown("tiny", s)
    assert "MoE upcycled - dense at equal total training: mean +0.67 points" in text and "positive on 2 of 3" in text
    assert "| dense 30 ep (equal compute) |" in text
    with pytest.raises(SystemExit, match="differ in more than their seed"):
        seeds.summarize({0: runs[0], 3: {"upcycled": run(3, "upcycled", 0.8, 0.8, 0.8, moe_epochs=5),
                                          "scratch": run(3, "scratch", 0.8, 0.8, moe_epochs=5)}})
    with pytest.raises(SystemExit, match="different dense twins"):
        seeds.summarize({4: {"upcycled": run(4, "upcycled", 0.8, 0.8, 0.8), "scratch": run(4, "scratch", 0.7, 0.8)}})


def test_runtimes_are_timed_with_torchs_own_pool_at_one_thread(tiny_run, monkeypatch):
    """PyTorch's intra-op pool left at the bench's thread count competes with the runtime's threads (ExecuTorch's
    split paid 1.21x its dense twin at 2 threads so; benchmarks/results/executorch_threads.md): the eager rows
    run at --threads, the runtimes with that pool at 1, and the caller's setting comes back."""
    from vmoe_export.bench import run as bench_run
    from vmoe_export.bench.measure import BenchSettings

    ckpt, bundle, images = tiny_run
    model = ckpt.build_model()
    seen = {}

    class Stop(Exception):
        pass

    def eager(*args):
        seen["eager"] = torch.get_num_threads()
        return {}

    def baseline(*args):
        seen["runtime"] = torch.get_num_threads()
        raise Stop

    monkeypatch.setattr(bench_run, "bench_eager", eager)
    monkeypatch.setattr(bench_run, "load_single_graph", baseline)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with pytest.raises(Stop):
            bench_run.run_benchmarks({"onnx": bundle}, model, MobileVMoE(model.cfg.dense_twin()),
                                     BenchSettings(warmup=1, runs=2, quick=True, threads=2), images, progress=False)
        assert seen == {"eager": 2, "runtime": 1}
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_expert_memory_attributes_every_resident_page_to_one_kind_of_mapping(tmp_path):
    """bench/memory.resident_by_kind (benchmarks/expert_memory.py's reading, and the memory probe's bundle_mapped)
    sums /proc/self/smaps by kind of mapping: together the kinds are the process's whole RSS (smaps_rollup), the
    anonymous part its Anonymous, a file mapped inside the bundle counts as the bundle's, one inside the weight
    cache as the cache's (the full run is recorded in benchmarks/results/expert_memory.md)."""
    import mmap

    from vmoe_export.bench.memory import _kind_of, growth_by_kind, resident_by_kind

    script = _load_script("expert_memory")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    artifact = bundle / "x.bin"
    artifact.write_bytes(b"\1" * (1 << 20))
    before = script.by_kind(bundle, None)
    with open(artifact, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert sum(m[i] for i in range(0, len(m), 4096)) == 256  # every page touched
        after = script.by_kind(bundle, None)
        rollup = {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in
                                                         Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])}
    grown = growth_by_kind(before, after)
    assert grown["bundle files"] == {"anon": 0, "file": 1 << 20}
    total, anon = sum(k["anon"] + k["file"] for k in after.values()), sum(k["anon"] for k in after.values())
    assert abs(total - rollup["Rss"]) < (1 << 20) and abs(anon - rollup["Anonymous"]) < (1 << 20)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "w.bin").write_bytes(b"\2" * (1 << 16))
    with open(cache / "w.bin", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert sum(m[i] for i in range(0, len(m), 4096)) == 32
        assert resident_by_kind(bundle, cache)["weight cache"] == {"anon": 0, "file": 1 << 16}
        assert resident_by_kind(bundle)["weight cache"] == {"anon": 0, "file": 0}  # no cache dir: other files
    roots = {"bundle files": str(bundle) + "/", "weight cache": str(cache) + "/"}
    assert _kind_of("[heap]", roots) == "heap" and _kind_of("", roots) == "anon mmap"
    assert _kind_of(str(cache / "w.bin"), roots) == "weight cache"


def test_the_packing_choice_reaches_every_runtime_the_bench_opens(monkeypatch, tmp_path):
    """`vmoe-bench --pack-shared-weights on|off` measures ONNX Runtime in that mode everywhere it opens a bundle: the
    timed runtimes (BenchSettings.run_options) and the memory probe in its own process; auto leaves it to size."""
    import subprocess

    from vmoe_export import api
    from vmoe_export.bench import cli as bench_cli
    from vmoe_export.bench import memory
    from vmoe_export.bench.measure import BenchSettings

    class Stop(Exception):
        pass

    seen = {}

    def benchmark(*args, **kwargs):
        seen["api"] = kwargs["pack_shared_weights"]
        raise Stop

    def run(cmd, **kwargs):
        seen["probe_argv"] = cmd[3:]
        raise Stop

    monkeypatch.setattr(api, "benchmark", benchmark)
    monkeypatch.setattr(subprocess, "run", run)
    for flag, pack in (("auto", None), ("on", True), ("off", False)):
        with pytest.raises(Stop):
            bench_cli.main(["--pack-shared-weights", flag, "--quiet"])
        assert seen["api"] is pack
        for quick in (True, False):
            assert BenchSettings.make(quick, 1, pack).run_options.pack_shared_weights is pack
        with pytest.raises(Stop):
            memory.measure_rss(tmp_path, pack)
        assert seen["probe_argv"] == [str(tmp_path)] + ([] if pack is None else [flag])
        assert memory.PACKING.get(flag) is pack
        assert memory.packing_note(pack) == ("" if pack is None else f", --pack-shared-weights {flag}")
