"""FLOP counts against hand counts, and the benchmark report's files and fields (no timing asserted)."""

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from vmoe_export.baselines import dense_graph, monolithic_graph
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
    from vmoe_export.export import ExportOptions, export_bundle

    torch.manual_seed(0)
    cfg = tiny_config()
    d = tmp_path_factory.mktemp("bench")
    ckpt = Checkpoint(cfg, MobileVMoE(cfg).state_dict(), [f"c{i}" for i in range(6)], [0, 0, 1, 1, 2, 2])
    save_checkpoint(ckpt, d / "model.pt")
    images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    bundle, _ = export_bundle(ckpt, "onnx", d / "bundles", images, torch.zeros(8, dtype=torch.int64),
                              ExportOptions(parity_images=8, progress=False, golden_images=0), log=lambda s: None)
    return d, bundle, images


def test_report_files_and_fields(tiny_run, tmp_path):
    from vmoe_export.bench import BenchSettings, run_benchmarks
    from vmoe_export.report import write_report

    d, bundle, images = tiny_run
    report = run_benchmarks({"onnx": bundle}, d / "model.pt", None, BenchSettings(warmup=1, runs=3, quick=True),
                            images, progress=False)
    write_report(report, tmp_path)
    data = json.loads((tmp_path / "bench.json").read_text())
    b = data["backends"]["onnx"]
    for stage in ("trunk", "router", "attention", "experts", "head"):
        assert b["split"]["stages"][stage]["median_ms"] >= 0 and b["split"]["stages"][stage]["n"] == 3
    for key in ("median_ms", "p90_ms"):
        assert key in b["split"]["end_to_end"] and key in b["dense_twin"] and key in b["monolithic"]
    assert b["split"]["expert_cold_load"]["n"] == 3  # one cold load per expert
    mem = b["memory"]
    assert "error" not in mem, mem
    assert mem["all_experts_rss"] >= mem["baseline_rss"] and mem["peak_rss"] >= mem["all_experts_rss"]
    assert set(data["ratios"]["onnx"]) == {"split_over_dense_twin", "split_over_monolithic", "split_over_eager_model",
                                           "cold_load_over_warm_expert_exec"}
    assert data["machine"]["threads_requested"] == 1 and data["machine"]["cpu"]
    assert data["flops"]["active_per_image"] < data["flops"]["total_all_graphs"]
    md = (tmp_path / "README.md").read_text()
    assert "| onnx |" in md and "![latency](latency.png)" in md
    for png in ("latency.png", "stages.png", "expert_load.png", "memory.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bundles_from_another_model_are_refused(tiny_run, tmp_path):
    from vmoe_export.bench import BenchSettings, run_benchmarks
    from vmoe_export.checkpoint import Checkpoint, save_checkpoint

    _, bundle, images = tiny_run
    other = tiny_config(embed_dim=32)
    save_checkpoint(Checkpoint(other, MobileVMoE(other).state_dict(), [f"c{i}" for i in range(6)]), tmp_path / "o.pt")
    with pytest.raises(ValueError, match="was not exported from"):
        run_benchmarks({"onnx": bundle}, tmp_path / "o.pt", None, BenchSettings(warmup=1, runs=1, quick=True), images, False)


def _load_script(name):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_accuracy_seeds_summary(tmp_path):
    seeds = _load_script("accuracy_seeds")

    def run(seed, dense, moe, **options):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        cfg = {"dense_epochs": 15, "moe_epochs": 15, "seed": seed, **options}
        d.joinpath("metrics.json").write_text(json.dumps({
            "command": f"vmoe-train --seed {seed}", "dense": {"top1": dense},
            "moe": {"top1": moe, "router_top1_vs_superclass": 0.9}, "superclasses": [], "train_config": cfg}))
        return d

    s = seeds.summarize({0: run(0, 0.80, 0.82), 1: run(1, 0.82, 0.81), 2: run(2, 0.81, 0.83)})
    assert s["moe_wins"] == 2
    assert s["moe_minus_dense"]["mean"] == pytest.approx(0.01)
    assert s["moe_minus_dense"]["stdev"] == pytest.approx(0.0173205, rel=1e-4)
    assert "MoE ahead on 2 of 3 seeds" in seeds.markdown("tiny", s)
    with pytest.raises(SystemExit, match="differ in more than their seed"):
        seeds.summarize({0: tmp_path / "s0", 3: run(3, 0.8, 0.8, moe_epochs=5)})
