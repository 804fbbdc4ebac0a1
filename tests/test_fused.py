"""The fused k=1 schedule: one graph per expert through every MoE layer. Exact against the model and the
per-layer schedule, refused where it would not be exact, and checked in the manifest like the per-layer one."""

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import assert_straight_line_matches_walk, synthetic_test_set, tiny_config
from vmoe_export.backends import RunOptions
from vmoe_export.bundle import BundleError, read_manifest
from vmoe_export.checkpoint import Checkpoint
from vmoe_export.errors import ConfigError
from vmoe_export.exporter import ExportOptions, export_bundle
from vmoe_export.plan import resolve_schedule
from vmoe_export.model import MobileVMoE
from vmoe_export.quantize import QuantOptions
from vmoe_export.runtime import BundleRuntime
from vmoe_export.schedule import FusedLine, Schedule, ScheduleError, execute
from vmoe_export.split import run_split, split_model


def test_fused_schedule_round_trips_and_counts():
    s = Schedule.fused(4, 2)
    assert Schedule.from_json(json.loads(json.dumps(s.to_json()))) == s
    assert s.kind == "fused" and s.top_k == 1 and s.num_experts == 4
    assert [g.name for g in s.graphs()] == ["trunk", "e0_path", "e1_path", "e2_path", "e3_path", "head"]
    assert s.shared_graphs == ["trunk", "head"] and s.expert_graphs(2) == ["e2_path"]
    per_graph = {g.name: 1 for g in s.graphs()}
    assert s.active(per_graph) == 3 and s.total(per_graph) == 6


def test_the_straight_line_is_the_canonical_fused_schedule_only():
    assert Schedule.fused(3, 2).fused_line() == FusedLine("trunk", None, ("e0_path", "e1_path", "e2_path"), "head")
    assert Schedule.fused(3, 2, router_graph=True).fused_line().router == "router"
    assert Schedule.per_layer(3, 2, 1).fused_line() is None
    steps = Schedule.fused(3, 2).to_json()
    steps[-1]["graph"] = "classifier"  # a fused schedule of another shape: walked, never guessed at
    assert Schedule.from_json(steps).fused_line() is None


def test_fused_schedule_is_refused_for_k_above_one():
    with pytest.raises(ScheduleError, match="exact only for top_k=1"):
        Schedule.of_kind("fused", 4, 2, 2)
    steps = Schedule.fused(4, 2).to_json()
    steps[1]["k"] = 2
    with pytest.raises(ScheduleError, match="needs k=1"):
        Schedule.from_json(steps)


def test_execute_runs_one_path_with_the_gate():
    calls = []

    def run(name, *xs):
        calls.append(name)
        if name == "trunk":
            return xs[0] + 1, np.array([0.0, 3.0])
        if name == "head":
            return (xs[0] * 10,)
        tokens, gate = xs
        assert gate.shape == (1, 1)
        return (tokens + gate[0, 0] * (1 + int(name[1])),)

    out = execute(Schedule.fused(2, 2), run, lambda logits: ([1], np.array([0.25], np.float32)), np.array(1.0))
    assert calls == ["trunk", "e1_path", "head"]
    assert out == pytest.approx((2.0 + 0.25 * 2) * 10)


@pytest.mark.parametrize("seed", [0, 1])
def test_fused_split_equals_the_model_and_the_per_layer_split(seed):
    torch.manual_seed(seed)
    model = MobileVMoE(tiny_config(top_k=1)).eval()
    images = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        logits, router_logits = model(images)
    fused, per_layer = model.schedule_of("fused"), model.schedule_of("per-layer")
    traces, ref = [], []
    out = run_split(split_model(model, fused), fused, images, traces)
    run_split(split_model(model, per_layer), per_layer, images, ref)
    torch.testing.assert_close(out, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([t["router_logits"] for t in traces]), router_logits)
    for t, r in zip(traces, ref):
        assert t["experts"] == r["experts"]
        torch.testing.assert_close(t["moe1_out"], r["moe1_out"], atol=1e-5, rtol=1e-5)  # the last MoE layer's tokens


def test_resolve_schedule_rules():
    assert resolve_schedule("auto", 1) == "fused"  # fp32 and int8 alike
    assert resolve_schedule("auto", 2) == "per-layer"
    assert resolve_schedule("per-layer", 1) == "per-layer"
    with pytest.raises(ConfigError, match="top_k=1"):
        resolve_schedule("fused", 2)


def test_the_router_is_its_own_graph_exactly_where_it_converts_apart():
    from vmoe_export.plan import build_schedule, schedule_reason

    cfg = tiny_config(top_k=1)
    cases = [(QuantOptions(), False), (QuantOptions("dynamic-int8"), True), (QuantOptions("static-int8"), True),
             (QuantOptions("dynamic-int8", router="int8"), False)]
    for quant, apart in cases:
        s = build_schedule(cfg, "fused", quant)
        assert ("router" in s.shared_graphs) == apart and s.calls_per_image == (4 if apart else 3), quant
        assert Schedule.from_json(json.loads(json.dumps(s.to_json()))) == s
    assert build_schedule(cfg, "per-layer", QuantOptions()).calls_per_image == 3 + 2 * cfg.moe_layers
    assert schedule_reason("auto", cfg, build_schedule(cfg, "fused", QuantOptions())) == \
        f"auto: k=1, so fused: 3 graph calls per image instead of {3 + 2 * cfg.moe_layers} per-layer"
    assert schedule_reason("per-layer", cfg, build_schedule(cfg, "per-layer", QuantOptions())).startswith("requested")
    k2 = tiny_config(top_k=2)
    assert schedule_reason("auto", k2, build_schedule(k2, "per-layer", QuantOptions())).startswith("auto: k=2 mixes")


@pytest.fixture(scope="module")
def fused_bundles(tmp_path_factory):
    """The tiny k=1 model exported to ONNX with both schedules (ONNX: the fastest real converter)."""
    torch.manual_seed(0)
    cfg = tiny_config(top_k=1)
    ckpt = Checkpoint(cfg, MobileVMoE(cfg).state_dict(), [f"c{i}" for i in range(6)], [0, 0, 1, 1, 2, 2])
    images, labels = synthetic_test_set()
    out = {}
    for kind in ("fused", "per-layer"):
        root = tmp_path_factory.mktemp(kind)
        out[kind] = export_bundle(ckpt, "onnx", root, images, labels,
                                  ExportOptions(parity_images=40, progress=False, schedule=kind), log=lambda s: None)
    return out, images, ckpt


def test_fused_bundle_passes_parity_and_matches_the_per_layer_bundle(fused_bundles):
    bundles, images, ckpt = fused_bundles
    (fused, report), (per_layer, _) = bundles["fused"], bundles["per-layer"]
    m = read_manifest(fused)
    assert m["schedule"]["kind"] == "fused" and report["status"] == "pass"
    assert report["logits_max_abs_diff"] <= 1e-4 and report["routing_agreement"] == 1.0
    assert sorted(m["graphs"]) == ["e0_path", "e1_path", "e2_path", "head", "trunk"]
    assert m["experts"][1]["graphs"] == ["e1_path"] and m["graphs"]["e1_path"]["path"] == "experts/e1.onnx"
    assert "moe1_out" in report["stage_max_abs_diff"]
    golden = json.loads((fused / "golden" / "golden.json").read_text())
    assert golden["combine"] is None and golden["cases"]
    x = _same_predictions(fused, per_layer, ckpt, images)
    one = BundleRuntime(fused)
    pred = one.predict(x[:1])
    assert one.experts.loaded == pred.experts  # k=1: one path loaded, the one the image was routed to
    assert_straight_line_matches_walk(one, [x[i : i + 1] for i in range(len(x))])


def preprocess_for(ckpt, images_u8):
    from vmoe_export.data import preprocess

    return preprocess(images_u8, ckpt.config).numpy()


@pytest.mark.parametrize("edit", [
    lambda m: m["schedule"].update(kind="per-layer"),  # a fused step list claimed as per-layer
    lambda m: m["schedule"]["steps"][2]["experts"].reverse(),  # expert ids no longer name their paths
    lambda m: m["schedule"]["steps"][1].update(k=2),
    lambda m: m["model"].update(top_k=2),
    # the fp32 bundle claims an int8 block: its router would have to be a graph of its own
    lambda m: m.update(quantization={"mode": "dynamic-int8", "router": "fp32"}),
])
def test_edited_fused_schedule_is_refused(fused_bundles, tmp_path, edit):
    from vmoe_export.bundle import DIGEST, manifest_digest

    bundle = tmp_path / "b"
    shutil.copytree(fused_bundles[0]["fused"][0], bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    raw = (json.dumps(manifest, indent=1) + "\n").encode()
    (bundle / "manifest.json").write_bytes(raw)
    (bundle / DIGEST).write_text(manifest_digest(raw) + "\n")
    with pytest.raises(BundleError, match="schedule|but its config says"):
        BundleRuntime(bundle)


def _inline_weights(path, backend: str) -> dict[str, int]:
    """The weights an artifact stores inside itself: tensor name -> bytes."""
    if backend == "onnx":
        import onnx
        from onnx import numpy_helper

        m = onnx.load(str(path), load_external_data=False)
        return {t.name: numpy_helper.to_array(t).nbytes for t in m.graph.initializer
                if t.data_location != onnx.TensorProto.EXTERNAL}
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromObj(schema.Model.GetRootAs(path.read_bytes(), 0))
    return {(t.name.decode() if isinstance(t.name, bytes) else t.name): len(m.buffers[t.buffer].data)
            for t in m.subgraphs[0].tensors if t.buffer and m.buffers[t.buffer].data is not None}


def _weight_bytes(bundle, manifest, backend) -> tuple[int, dict[str, set[str]]]:
    """Bytes of every weight a bundle stores (inline weights of all graphs plus its shared-weights tensors),
    and per graph the tensors it stores inline."""
    from vmoe_export.bundle import safe_join
    from vmoe_export.shared_weights import nbytes

    total, inline = 0, {}
    for name, entry in manifest["graphs"].items():
        kept = _inline_weights(safe_join(bundle, entry["path"]), backend)
        inline[name] = set(kept)
        total += sum(kept.values())
    shared = manifest.get("shared_weights")
    return total + sum(nbytes(t) for t in (shared["tensors"].values() if shared else [])), inline


@pytest.fixture(scope="module", params=["onnx", "tflite"])
def sharing(request, fused_bundles, tmp_path_factory):
    """(backend, fused bundle, per-layer bundle, checkpoint) of the tiny k=1 model on each backend that stores the
    expert paths' common weights once: ONNX as external data it is lent, LiteRT as external buffers it maps."""
    bundles, _, ckpt = fused_bundles
    if request.param == "onnx":
        return "onnx", bundles["fused"][0], bundles["per-layer"][0], ckpt
    images, labels = synthetic_test_set()
    out = {kind: export_bundle(ckpt, "tflite", tmp_path_factory.mktemp(f"tflite-{kind}"), images, labels,
                               ExportOptions(parity_images=40, progress=False, schedule=kind), log=lambda s: None)
           for kind in ("fused", "per-layer")}
    assert out["fused"][1]["status"] == "pass" and out["fused"][1]["logits_max_abs_diff"] <= 1e-4
    return "tflite", out["fused"][0], out["per-layer"][0], ckpt


def test_fused_bundle_stores_each_shared_weight_once(sharing):
    backend, fused, per_layer, ckpt = sharing
    m, p = read_manifest(fused), read_manifest(per_layer)
    shared = m["shared_weights"]
    paths = [f"e{e}_path" for e in range(ckpt.config.num_experts)]
    assert shared["graphs"] == paths and (fused / shared["path"]).stat().st_size == shared["size_bytes"]
    assert m["graphs"]["e1_path"]["path"] == f"experts/e1{'.onnx' if backend == 'onnx' else '.tflite'}"
    # Both MoE layers' attention (qkv and projection weights at least) are in the shared file...
    d = ckpt.config.embed_dim
    big = [t for t in shared["tensors"].values() if t["shape"] in ([d, 3 * d], [3 * d, d])]
    assert len(big) == ckpt.config.moe_layers, shared["tensors"]
    # ...no path holds a copy of any of them...
    fused_bytes, inline = _weight_bytes(fused, m, backend)
    assert all(not inline[g] & set(shared["tensors"]) for g in paths)
    # ...so the fused bundle stores no more weight bytes than the per-layer one, which holds each weight once
    # (without sharing: E - 1 more copies of the shared tensors). Graph structure is not counted: on this
    # 16-wide model it outweighs the weights; at vit-12x192 the whole fused bundle is within 1.02x (benchmarks).
    per_layer_bytes, _ = _weight_bytes(per_layer, p, backend)
    assert fused_bytes <= 1.02 * per_layer_bytes, (fused_bytes, per_layer_bytes)


def test_fused_bundle_with_shared_weights_matches_the_per_layer_one(sharing):
    _, fused, per_layer, ckpt = sharing
    _same_predictions(fused, per_layer, ckpt, synthetic_test_set()[0])


def _same_predictions(fused, per_layer, ckpt, images):
    """The two bundles route and classify 12 images alike; returns those images preprocessed."""
    a, b = BundleRuntime(fused), BundleRuntime(per_layer)
    x = preprocess_for(ckpt, images[:12])
    for i in range(len(x)):
        pa, pb = a.predict(x[i : i + 1]), b.predict(x[i : i + 1])
        assert pa.experts == pb.experts
        np.testing.assert_allclose(pa.logits, pb.logits, atol=1e-5)
    return x


def test_tampered_shared_weights_are_refused(sharing, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(sharing[1], bundle)
    data = bundle / "experts" / "shared.bin"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 1
    data.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="shared.bin fails its checksum"):
        BundleRuntime(bundle)
    data.unlink()
    with pytest.raises(BundleError, match="shared.bin listed in the manifest is missing"):
        BundleRuntime(bundle)


def test_shared_weights_a_runtime_maps_itself_are_checked_before_each_load(sharing, tmp_path):
    """LiteRT maps experts/shared.bin itself at each expert load: verified once, the runtime still checks that the
    file is the one it hashed before every load (ONNX Runtime never reads it: it is lent the verified bytes)."""
    backend, fused, _, _ = sharing
    if backend != "tflite":
        pytest.skip("only a runtime that reads the shared-weights file itself (LiteRT) reads it after open")
    bundle = tmp_path / "b"
    shutil.copytree(fused, bundle)
    for verify in ("once", "every-load"):
        shutil.copyfile(fused / "experts" / "shared.bin", bundle / "experts" / "shared.bin")
        rt = BundleRuntime(bundle, verify=verify, self_test=False)
        rt.experts.empty_copy().get(0)
        data = bundle / "experts" / "shared.bin"
        raw = bytearray(data.read_bytes())
        raw[-1] ^= 1
        data.write_bytes(bytes(raw))  # same size, changed after the bundle opened
        with pytest.raises(BundleError, match="shared.bin fails its checksum"):
            rt.experts.empty_copy().get(1)


def test_onnx_packs_small_lent_weights_and_keeps_one_copy_of_large_ones(fused_bundles):
    """ONNX Runtime packs the shared weights it is lent in every path (a packed copy per loaded path, faster paths)
    when they are small, keeps their one unpacked copy when they are large, and does what RunOptions says when
    it says; the paths compute the same outputs either way."""
    from vmoe_export.backends.onnx import PACK_SHARED_MAX_BYTES, packs_shared_weights

    assert packs_shared_weights(None, PACK_SHARED_MAX_BYTES) and not packs_shared_weights(None, PACK_SHARED_MAX_BYTES + 1)
    assert packs_shared_weights(True, 2**30) and not packs_shared_weights(False, 0)
    bundle = fused_bundles[0]["fused"][0]
    assert read_manifest(bundle)["shared_weights"]["size_bytes"] <= PACK_SHARED_MAX_BYTES  # tiny: auto packs

    def prepacking_disabled(rt: BundleRuntime) -> str | None:
        options = rt.experts.get(0)[0]["e0_path"].session.get_session_options()
        try:
            return options.get_session_config_entry("session.disable_prepacking")
        except RuntimeError:  # never set: ORT's default, prepacking on
            return None

    x = np.zeros(BundleRuntime(bundle, self_test=False).input_shape, np.float32)
    outputs = {}
    for pack in (None, True, False):
        rt = BundleRuntime(bundle, run=RunOptions(pack_shared_weights=pack), self_test=False)
        assert prepacking_disabled(rt) == (None if pack in (None, True) else "1")
        outputs[pack] = rt.predict(x)
    assert outputs[True].experts == outputs[False].experts
    np.testing.assert_allclose(outputs[True].logits, outputs[False].logits, atol=1e-6)
    with pytest.raises(ValueError, match="pack_shared_weights must be True, False or None"):
        RunOptions(pack_shared_weights="no")
