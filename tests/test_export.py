"""Split exactness, every backend's bundle end to end, and the runtime's loading rules."""

import json
import platform
import shutil
import sys

import numpy as np
import pytest
import torch

from conftest import SHIPPED, assert_straight_line_matches_walk, needs_fmnist, synthetic_test_set, tiny_config
from vmoe_export.backends import TARGETS, BackendUnavailable, get_backend
from vmoe_export.bundle import BundleError, bundle_bytes, read_manifest
from vmoe_export.checkpoint import load_checkpoint
from vmoe_export.data import preprocess
from vmoe_export.exporter import ExportOptions, export_bundle
from vmoe_export.model import MobileVMoE, count_params
from vmoe_export.parity import ParityBounds, ParityError
from vmoe_export.runtime import BundleRuntime, ExpertCache, select_experts
from vmoe_export.split import run_split, split_model


@pytest.mark.parametrize("k", [1, 2, 3])
def test_composed_split_equals_pytorch(k):
    torch.manual_seed(k)
    model = MobileVMoE(tiny_config(top_k=k)).eval()
    images = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        logits, router_logits = model(images)
    traces = []
    out = run_split(split_model(model), model.schedule, images, traces)
    torch.testing.assert_close(torch.cat([t["router_logits"] for t in traces]), router_logits)
    torch.testing.assert_close(out, logits, atol=1e-5, rtol=1e-5)


def test_split_has_one_graph_per_expert_and_layer():
    names = [g.name for g in split_model(MobileVMoE(tiny_config()))]
    assert names == ["trunk", "router", "moe0_attn", "moe0_e0", "moe0_e1", "moe0_e2",
                     "moe1_attn", "moe1_e0", "moe1_e1", "moe1_e2", "head"]


@pytest.mark.parametrize("k", [1, 2])
def test_graph_params_are_each_graphs_own_and_sum_to_the_model(k):
    from vmoe_export.model import active_params, count_params, graph_params

    cfg = tiny_config(top_k=k)
    model = MobileVMoE(cfg)
    per_graph = graph_params(model)
    assert sum(per_graph.values()) == count_params(model)
    D, H = cfg.embed_dim, cfg.mlp_hidden
    assert per_graph["moe0_e1"] == D * H + H + H * D + D  # one expert MLP, nothing else
    assert per_graph["router"] == 2 * D + D * cfg.num_experts + cfg.num_experts
    assert per_graph["head"] == 2 * D + D * cfg.num_classes + cfg.num_classes
    dense = MobileVMoE(cfg.dense_twin())
    # Active = dense twin + router + the k-1 extra experts per MoE layer (each has the dense MLP's shape).
    extra = (k - 1) * cfg.moe_layers * per_graph["moe0_e1"]
    assert active_params(model) == count_params(dense) + per_graph["router"] + extra


def test_dense_model_cannot_be_split():
    with pytest.raises(ValueError, match="dense"):
        split_model(MobileVMoE(tiny_config().dense_twin()))


def test_select_experts_matches_torch_route():
    from vmoe_export.model import route

    logits = np.array([[0.3, 2.0, -1.0, 1.9]], dtype=np.float32)
    experts, gates = select_experts(logits, 2)
    g, e = route(torch.from_numpy(logits), 2)
    assert experts == e[0].tolist()
    np.testing.assert_allclose(gates, g[0].numpy(), rtol=1e-6)


# ---- runtime rules, on a tiny model exported to ONNX (the fastest real converter) ----

def _synthetic_test_set(n=40, seed=0):
    return synthetic_test_set(n, seed)


def _copy(bundle, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def _rewrite(bundle, manifest):
    """Edit a manifest as a hostile editor would: also drop the manifest.sha256 that would give it away."""
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "manifest.sha256").unlink(missing_ok=True)


def test_manifest_edited_after_export_is_caught_by_its_digest(tiny_onnx_bundle, tmp_path):
    bundle = _copy(tiny_onnx_bundle[0], tmp_path)
    digest = (bundle / "manifest.sha256").read_text().strip()
    BundleRuntime(bundle, expect_digest=digest)
    text = (bundle / "manifest.json").read_text()
    (bundle / "manifest.json").write_text(text.replace('"created_at"', '"created_at" ', 1))  # one harmless byte
    with pytest.raises(BundleError, match="does not match manifest.sha256"):
        BundleRuntime(bundle)
    (bundle / "manifest.sha256").unlink()
    BundleRuntime(bundle)  # unpinned: every check below the digest still passes
    with pytest.raises(BundleError, match="not the pinned"):
        BundleRuntime(bundle, expect_digest=digest)


def test_onnx_fp32_graphs_are_optimised_at_export_and_int8_ones_at_load(tiny_onnx_bundle):
    """fp32 ONNX artifacts are ONNX Runtime's own optimised models (saved by it, so its operator domains are
    declared), recorded as such, and load with the optimiser off; int8 graphs and older bundles load as before."""
    import onnx

    from vmoe_export.backends import ArtifactRecord
    from vmoe_export.backends.onnx import optimized_offline

    path, _ = tiny_onnx_bundle
    m = read_manifest(path)
    assert m["backend_options"] == {"optimize_offline": True}
    for name, g in m["graphs"].items():
        model = onnx.load(str(path / g["path"]), load_external_data=False)
        assert "com.microsoft" in {o.domain for o in model.opset_import}, name  # written by ORT, not torch.onnx
        assert optimized_offline(ArtifactRecord.from_manifest(m, name))
    assert not optimized_offline(ArtifactRecord({"optimize_offline": True}, "dynamic-int8"))
    assert not optimized_offline(ArtifactRecord({}, "none"))  # a bundle from before the option: ORT optimises at load
    assert not optimized_offline(ArtifactRecord({"optimize_offline": False}, "none"))


def test_only_routed_experts_are_loaded(tiny_onnx_bundle):
    path, ckpt = tiny_onnx_bundle
    model = ckpt.build_model()
    rt = BundleRuntime(path)
    assert rt.experts.loaded == []
    images, _ = _synthetic_test_set(12, seed=5)
    x = preprocess(images, ckpt.config)
    routed = set()
    for i in range(len(x)):
        pred = rt.predict(x[i : i + 1].numpy())
        routed.update(pred.experts)
        assert set(rt.experts.loaded) == routed  # nothing loaded that no image asked for
    with torch.no_grad():
        _, r = model(x)
    assert routed == set(r.argmax(1).tolist())
    assert rt.experts.loads == len(routed)


def test_lru_eviction_respects_count_budget(tiny_onnx_bundle):
    path, _ = tiny_onnx_bundle
    rt = BundleRuntime(path, max_experts=1)
    cache = rt.experts
    for e in [0, 1, 0, 2, 2]:
        cache.get(e)
        assert len(cache.loaded) <= 1
    assert cache.loaded == [2] and cache.loads == 4 and cache.evictions == 3


def test_lru_eviction_respects_byte_budget():
    sizes = {0: 10, 1: 20, 2: 15}
    cache = ExpertCache(lambda e: f"expert{e}", sizes.__getitem__, max_bytes=35)
    for e in [0, 1, 2]:
        cache.get(e)
        assert cache.resident_bytes <= 35
    assert cache.loaded == [1, 2]  # 0 was least recently used
    cache.get(1)
    cache.get(0)  # evicts 2 (LRU), keeps 1
    assert cache.loaded == [1, 0] and cache.resident_bytes == 30


def test_budget_below_top_k_is_rejected(tiny_onnx_bundle):
    with pytest.raises(ValueError, match="below top_k"):
        BundleRuntime(tiny_onnx_bundle[0], max_experts=0)


def test_tampered_artifact_is_refused(tiny_onnx_bundle, tmp_path):
    bundle = _copy(tiny_onnx_bundle[0], tmp_path)
    victim = bundle / "experts" / "e1" / "moe0.onnx"
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    rt = BundleRuntime(bundle, self_test=False)  # shared graphs are fine; the lazy expert load is checked here
    with pytest.raises(BundleError, match="fails its checksum"):
        rt.experts.get(1)


def test_escaping_manifest_path_is_refused(tiny_onnx_bundle, tmp_path):
    bundle = _copy(tiny_onnx_bundle[0], tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for evil in ["../outside.onnx", "/etc/passwd", "experts/../../x.onnx"]:
        manifest["graphs"]["moe0_e0"]["path"] = evil
        _rewrite(bundle, manifest)
        with pytest.raises(BundleError, match="should be 'experts/e0/moe0.onnx'"):
            BundleRuntime(bundle)
    # The path check under it, on its own (artifact_path uses it too).
    from vmoe_export.bundle import safe_join

    (tmp_path / "outside.onnx").write_bytes(b"")
    (bundle / "shared" / "link.onnx").symlink_to(tmp_path / "outside.onnx")
    for evil in ["../outside.onnx", "/etc/passwd", "experts/../../x.onnx", "shared/link.onnx", "a\\b", ""]:
        with pytest.raises(BundleError, match="escapes|not a relative path"):
            safe_join(bundle, evil)


def test_missing_expert_in_manifest_is_refused(tiny_onnx_bundle, tmp_path):
    bundle = _copy(tiny_onnx_bundle[0], tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["graphs"]["moe1_e2"]
    _rewrite(bundle, manifest)
    with pytest.raises(BundleError, match="lacks graphs moe1_e2"):
        read_manifest(bundle)


@pytest.mark.parametrize("edit", [
    lambda m: m["model"].update(top_k=2),  # two experts would run and be mixed on a k=1 bundle
    lambda m: m["model"].update(moe_layers=1),
    lambda m: m["schedule"]["steps"].pop(3),  # drop an MoE layer from the schedule
    lambda m: m["schedule"]["steps"][2].update(k=2),
    lambda m: m["schedule"]["steps"][3]["experts"].reverse(),  # expert ids no longer name their graphs
])
def test_schedule_that_disagrees_with_the_model_is_refused(tiny_onnx_bundle, tmp_path, edit):
    bundle = _copy(tiny_onnx_bundle[0], tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    _rewrite(bundle, manifest)
    with pytest.raises(BundleError, match="schedule does not match its model|but its config says"):
        BundleRuntime(bundle)


def test_wrong_input_shape_is_refused(tiny_onnx_bundle):
    rt = BundleRuntime(tiny_onnx_bundle[0])
    with pytest.raises(ValueError, match=r"expects \(1, 1, 8, 8\)"):
        rt.predict(np.zeros((1, 3, 8, 8), np.float32))


def test_unknown_target_and_missing_package(monkeypatch):
    with pytest.raises(ValueError, match="unknown target 'tensorrt'"):
        get_backend("tensorrt")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "vmoe_export.backends.onnx", raising=False)
    with pytest.raises(BackendUnavailable, match="pip install .*onnxruntime"):
        get_backend("onnx")


def test_parity_failure_publishes_nothing(tmp_path):
    from vmoe_export.checkpoint import Checkpoint

    cfg = tiny_config()
    ckpt = Checkpoint(cfg, MobileVMoE(cfg).state_dict(), [f"c{i}" for i in range(6)], [0, 0, 1, 1, 2, 2])
    images, labels = _synthetic_test_set(8)
    impossible = ExportOptions(parity_images=8, bounds=ParityBounds(max_logit_diff=-1.0), progress=False, golden_images=1)
    with pytest.raises(ParityError, match="kept for inspection"):
        export_bundle(ckpt, "onnx", tmp_path, images, labels, impossible, log=lambda s: None)
    assert not (tmp_path / "onnx").exists()
    assert (tmp_path / "onnx.rejected" / "manifest.json").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial." in p.name]


# ---- every backend, on the shipped checkpoint and real Fashion-MNIST test images ----

@pytest.fixture(scope="module")
def fmnist_test():
    from vmoe_export.data import load_fashion_mnist

    return load_fashion_mnist().test


@needs_fmnist
@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_backend_bundle_end_to_end(target, shipped_bundle):
    ckpt = load_checkpoint(SHIPPED)
    path, report = shipped_bundle(target)
    manifest = read_manifest(path)
    assert manifest["target"] == target and manifest["parity"] == report
    model = ckpt.build_model()
    fused = model.schedule_of("fused")  # the default (auto) at k=1: trunk with the router, one path per expert, head
    assert manifest["schedule"]["kind"] == "fused" and manifest["schedule"]["reason"].startswith("auto: k=1")
    assert list(manifest["graphs"]) == [g.name for g in fused.graphs()]
    assert len(manifest["graphs"]) == 2 + ckpt.config.num_experts
    # params_total counts what the bundle stores: each path holds the MoE attention again
    stored = sum(count_params(model.graph_module(g)) for g in fused.graphs())
    assert manifest["model"]["params_total"] == stored > count_params(model)
    golden = json.loads((path / "golden" / "golden.json").read_text())
    inverted = [c for c in golden["cases"] if c["inverted"]]
    assert manifest["preprocessing"]["polarity"] == ckpt.config.polarity == "dark-background" and len(inverted) == 1
    assert inverted[0]["pixels_u8"] == [255 - p for p in golden["cases"][0]["pixels_u8"]]
    assert inverted[0]["input"] == golden["cases"][0]["input"]  # the rule gives back the stored image exactly
    if target == "coreml" and platform.system() != "Darwin":
        assert report["status"] == "skipped" and "macOS" in report["reason"]
        assert report["spec_verified_graphs"] == len(manifest["graphs"])
        return
    assert report["status"] == "pass"
    assert report["routing_agreement"] >= 0.995 and report["logits_max_abs_diff"] <= 1e-3
    rt = BundleRuntime(path)
    inputs = [np.asarray(case["input"], np.float32).reshape(golden["shape"]) for case in golden["cases"]]
    for x, case in zip(inputs, golden["cases"]):
        pred = rt.predict(x)
        assert pred.experts == case["experts"]
        np.testing.assert_allclose(pred.logits, case["logits"], atol=1e-3)
    assert_straight_line_matches_walk(rt, inputs)


@pytest.mark.skipif(platform.system() != "Darwin", reason="CoreML prediction needs macOS (Core ML framework)")
@needs_fmnist
def test_coreml_numeric_parity_on_macos(tmp_path, fmnist_test):
    ckpt = load_checkpoint(SHIPPED)
    _, report = export_bundle(ckpt, "coreml", tmp_path, fmnist_test.images, fmnist_test.labels,
                              ExportOptions(parity_images=100, progress=False), log=lambda s: None)
    assert report["status"] == "pass"


@pytest.mark.slow
def test_coreml_compression_shrinks_the_bundle(tmp_path):
    from vmoe_export.checkpoint import Checkpoint
    from vmoe_export.model import load_config

    torch.manual_seed(0)
    cfg = load_config("fmnist-tiny")
    ckpt = Checkpoint(cfg, MobileVMoE(cfg).state_dict(), [f"c{i}" for i in range(10)], [0, 1, 0, 1, 0, 2, 0, 2, 3, 2])
    images, labels = torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64)
    from vmoe_export.backends.coreml import CoreMLOptions

    sizes = {}
    for mode in ("none", "palettize4"):
        options = ExportOptions(progress=False, golden_images=1, backend_options={"coreml": CoreMLOptions(compress=mode)})
        path, _ = export_bundle(ckpt, "coreml", tmp_path / mode, images, labels, options, log=lambda s: None)
        sizes[mode] = bundle_bytes(read_manifest(path))
    assert sizes["palettize4"] < 0.5 * sizes["none"]


def test_byte_budget_must_hold_top_k_largest_experts(tiny_onnx_bundle):
    path, _ = tiny_onnx_bundle
    largest = max(BundleRuntime(path).expert_bytes(e) for e in range(3))
    BundleRuntime(path, max_bytes=largest)  # k=1: the largest expert alone must fit
    with pytest.raises(ValueError, match="cannot hold 1 experts"):
        BundleRuntime(path, max_bytes=largest - 1)


def test_min_byte_budget_sums_the_k_largest_experts():
    from vmoe_export.schedule import Schedule, expert_graph

    sizes = {(0, 0): 10, (1, 0): 5, (0, 1): 30, (1, 1): 1, (0, 2): 20, (1, 2): 2}  # (layer, expert) -> bytes
    per_graph = {expert_graph(l, e): b for (l, e), b in sizes.items()}
    assert Schedule.per_layer(3, 2, 2).routed_experts_max(per_graph) == 31 + 22  # experts 1 and 2
    assert Schedule.per_layer(3, 2, 1).routed_experts_max(per_graph) == 31


def test_predict_command_on_image_files(tiny_onnx_bundle, tmp_path, capsys):
    from PIL import Image

    from vmoe_export.cli import predict_main
    from vmoe_export.data import load_image

    path, ckpt = tiny_onnx_bundle
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        f = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (16, 12), dtype=np.uint8)).save(f)  # resized + cropped to 8x8
        files.append(f)
    assert predict_main(["--bundle", str(path), "--json", *map(str, files)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    model = ckpt.build_model()
    for f, out in zip(files, lines, strict=True):
        x = preprocess(load_image(f, 8, 1)[None], ckpt.config)
        with torch.no_grad():
            logits, router_logits = model(x)
        assert out["class_id"] == int(logits.argmax()) and out["class"] == f"c{out['class_id']}"
        assert out["experts"] == [int(router_logits.argmax())]
        assert set(out["timings_ms"]) >= {"trunk", "router", "attention", "experts", "head", "total"}
