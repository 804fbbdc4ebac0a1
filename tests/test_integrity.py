"""Bundle integrity as a hostile or careless user meets it: one-field manifest edits, unfinished bundles,
crashes, malformed inputs of every kind. Each ends in the exact unmodified answer or in one clear
refusal (the project's own error type; at the CLI exit 2 and one `error:` line), never a traceback."""

import copy
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config
from vmoe_export.checkpoint import Checkpoint, save_checkpoint
from vmoe_export.cli import export_main, predict_main
from vmoe_export.errors import VmoeError
from vmoe_export.model import MobileVMoE
from vmoe_export.runtime import BundleRuntime, preprocess_image

BIN = Path(sys.executable).parent


@pytest.fixture
def bundle(tiny_onnx_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_onnx_bundle[0], dst)
    return dst


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "x.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (10, 9), dtype=np.uint8)).save(path)
    return path


def edit(bundle: Path, change) -> None:
    """A hostile edit: change the manifest and drop the manifest.sha256 that would give it away."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "manifest.sha256").unlink(missing_ok=True)


def refused(capsys, code: int, prog: str = "vmoe-predict") -> str:
    """The CLI refused with exit 2 and exactly one line on stderr; returns that line."""
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"{prog}: error: "), err
    return err[0]


def _swap_expert_entries(m):
    m["graphs"]["moe0_e2"] = dict(m["graphs"]["moe0_e0"])
    m["graphs"]["moe1_e2"] = dict(m["graphs"]["moe1_e0"])


# The four wrong answers the issue found (each printed a class with exit 0 before).
WRONG_ANSWER_EDITS = {
    "moe_layers=0": (lambda m: m["model"].update(moe_layers=0), "moe_layers"),
    "top_k=2 on a k=1 bundle": (lambda m: m["model"].update(top_k=2), "top_k is 2 but its config says 1"),
    "std=[0.0]": (lambda m: m["preprocessing"].update(std=[0.0]), "preprocessing does not follow"),
    "polarity rule switched on": (lambda m: m["preprocessing"].update(polarity="dark-background"),
                                  "preprocessing does not follow"),
    "expert 2 -> expert 0's artifacts": (_swap_expert_entries, "graph moe0_e2: path 'experts/e0/moe0.onnx' should be"),
}


@pytest.mark.parametrize("name", WRONG_ANSWER_EDITS)
def test_wrong_answer_edits_are_refused(bundle, image, capsys, name):
    change, message = WRONG_ANSWER_EDITS[name]
    edit(bundle, change)
    line = refused(capsys, predict_main(["--bundle", str(bundle), str(image)]))
    assert message in line


def test_verified_once_hashes_each_artifact_once_and_rehashes_what_changed(bundle, monkeypatch):
    import vmoe_export.bundle as bundle_mod

    calls = []
    real = bundle_mod.sha256_of
    monkeypatch.setattr(bundle_mod, "sha256_of", lambda p: calls.append(Path(p).name) or real(p))
    rt = BundleRuntime(bundle, verify="once")
    n_graphs = len(rt.manifest["graphs"])
    assert len(calls) == n_graphs  # all at open, shared and experts
    for _ in range(2):  # expert switches in fresh caches: no hashing
        cache = rt.experts.empty_copy()
        for e in range(rt.num_experts):
            cache.get(e)
    assert len(calls) == n_graphs
    victim = bundle / "experts" / "e1" / "moe0.onnx"
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")  # changed after the bundle was opened
    with pytest.raises(VmoeError, match="fails its checksum"):
        rt.experts.empty_copy().get(1)
    with pytest.raises(VmoeError, match="fails its checksum"):  # and a tampered bundle never opens in this mode
        BundleRuntime(bundle, verify="once")


def test_verified_once_notices_a_directory_swapped_for_a_link_outside(bundle, tmp_path):
    """An expert's folder replaced, after the bundle opened, by a link to an identical copy outside it: the
    bytes still match, but the file is another inode, so the place is checked again and refused."""
    rt = BundleRuntime(bundle, verify="once", self_test=False)
    outside = tmp_path / "outside"
    shutil.copytree(bundle / "experts" / "e1", outside)
    shutil.rmtree(bundle / "experts" / "e1")
    (bundle / "experts" / "e1").symlink_to(outside, target_is_directory=True)
    with pytest.raises(VmoeError, match="escapes the bundle"):
        rt.experts.empty_copy().get(1)


def test_pinned_digest(bundle, image, capsys):
    digest = (bundle / "manifest.sha256").read_text().strip()
    assert predict_main(["--bundle", str(bundle), "--expect-digest", digest, str(image)]) == 0
    capsys.readouterr()
    line = refused(capsys, predict_main(["--bundle", str(bundle), "--expect-digest", "0" * 64, str(image)]))
    assert "not the pinned" in line


def test_unfinished_bundle_is_not_runnable(bundle, image, capsys):
    """What a killed export leaves (a manifest written before parity) is refused, not run."""
    edit(bundle, lambda m: m.pop("parity"))
    assert "unfinished export" in refused(capsys, predict_main(["--bundle", str(bundle), str(image)]))
    edit(bundle, lambda m: m.update(parity={"status": "fail"}))
    assert "failed its parity" in refused(capsys, predict_main(["--bundle", str(bundle), str(image)]))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size in its header (with an empty image body): enough to test refusal from the header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


MANIFEST_CASES = {
    "no target": (lambda m: m.pop("target"), "target None is not one of"),
    "no preprocessing": (lambda m: m.pop("preprocessing"), "manifest field 'preprocessing'"),
    "graph without inputs": (lambda m: m["graphs"]["trunk"].pop("inputs"), "graphs.trunk.inputs"),
    'top_k "1"': (lambda m: m["model"].update(top_k="1"), "model.top_k"),
    "top_k 1.0": (lambda m: m["model"].update(top_k=1.0), "model.top_k"),
    "graph entry a string": (lambda m: m["graphs"].update(trunk="shared/trunk.onnx"), "graphs.trunk"),
    "num_experts 10^9": (lambda m: m["model"].update(num_experts=10**9), "model.num_experts"),
    "image_size 100000": (lambda m: m["model"]["config"].update(image_size=100000), "image_size 100000 must be between"),
    "target tflite": (lambda m: m.update(target="tflite"), "for a tflite bundle"),
    "old schema": (lambda m: m.update(schema_version=1), "re-export the bundle"),
}


@pytest.mark.parametrize("name", MANIFEST_CASES)
def test_malformed_manifest_is_one_line(bundle, image, capsys, name):
    change, message = MANIFEST_CASES[name]
    edit(bundle, change)
    assert message in refused(capsys, predict_main(["--bundle", str(bundle), str(image)]))


def test_deeply_nested_manifest_is_one_line(bundle, image, capsys):
    text = (bundle / "manifest.json").read_text()
    (bundle / "manifest.json").write_text(text.replace('"golden": ', '"golden": ' + "[" * 100_000 + "]" * 100_000 + ", \"x\": ", 1))
    (bundle / "manifest.sha256").unlink()
    assert "not valid JSON" in refused(capsys, predict_main(["--bundle", str(bundle), str(image)]))


@pytest.mark.parametrize("size,message", [((20000, 20000), "refused"), ((1, 30_000_000), "refused before decoding")])
def test_hostile_images_are_refused_from_the_header(tiny_onnx_bundle, tmp_path, capsys, size, message):
    path = tmp_path / "big.png"
    path.write_bytes(_png_header(*size))
    line = refused(capsys, predict_main(["--bundle", str(tiny_onnx_bundle[0]), str(path)]))
    assert message in line and str(path) in line


@pytest.mark.parametrize("threads", ["-1", "100000"])
def test_threads_are_bounded_for_every_backend(tiny_onnx_bundle, image, capsys, threads):
    line = refused(capsys, predict_main(["--bundle", str(tiny_onnx_bundle[0]), "--threads", threads, str(image)]))
    assert "threads must be an integer from 1 to 256" in line


def _tiny_checkpoint(path: Path, change=None) -> Path:
    torch.manual_seed(0)
    cfg = tiny_config()
    save_checkpoint(Checkpoint(cfg, MobileVMoE(cfg).state_dict(), [f"c{i}" for i in range(6)], [0, 0, 1, 1, 2, 2]), path)
    if change:  # the edit leaves the (now stale) digest in place: the checks before it must name the problem
        payload = torch.load(path, weights_only=True)
        change(payload)
        torch.save(payload, path)
    return path


CHECKPOINT_CASES = {
    "no state_dict": (lambda p: p.pop("state_dict"), "'state_dict' must map"),
    "class_names an int": (lambda p: p.update(class_names=7), "'class_names' must be a list"),
    "embed_dim 65536": (lambda p: p["config"].update(embed_dim=65536), "embed_dim 65536 must be between 1 and 4096"),
    "num_heads changed": (lambda p: p["config"].update(num_heads=4), "does not match its own digest"),  # same shapes
    "superclass out of range": (lambda p: p.update(superclass_of=[0, 0, 1, 1, 2, 9]), "super-class map"),
    "no digest": (lambda p: p.pop("digest"), "'digest' must be"),
    "format 1": (lambda p: p.update(format_version=1), "no content digest"),
}


@pytest.mark.parametrize("name", CHECKPOINT_CASES)
def test_malformed_checkpoint_is_one_line(tmp_path, capsys, name):
    change, message = CHECKPOINT_CASES[name]
    path = _tiny_checkpoint(tmp_path / "c.pt", change)
    line = refused(capsys, export_main(["--target", "onnx", "--checkpoint", str(path), "--output", str(tmp_path / "o")]),
                   "vmoe-export")
    assert message in line
    assert not (tmp_path / "o").exists()


def test_output_below_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    line = refused(capsys, export_main(["--target", "onnx", "--checkpoint", str(_tiny_checkpoint(tmp_path / "c.pt")),
                                        "--output", str(tmp_path / "f" / "sub")]), "vmoe-export")
    assert "lies below the file" in line


def test_bench_bundles_pointing_at_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    r = subprocess.run([str(BIN / "vmoe-bench"), "--bundles", str(tmp_path / "f"), "--target", "onnx", "--quick"],
                       capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "is a file" in lines[-1] and "Traceback" not in r.stderr


# ---- crashes

def test_sigterm_during_export_cleans_up_and_says_so(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path / "c.pt")
    from PIL import Image

    for split in ("train", "test"):
        for c in range(6):
            d = tmp_path / "data" / split / f"c{c}"
            d.mkdir(parents=True)
            Image.fromarray(np.full((8, 8), 40 * c, np.uint8)).save(d / "0.png")
    out = tmp_path / "out"
    proc = subprocess.Popen([str(BIN / "vmoe-export"), "--target", "onnx", "--checkpoint", str(ckpt), "--output", str(out),
                             "--data-dir", str(tmp_path / "data"), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".onnx.partial.*/shared")):
        time.sleep(0.05)
    assert list(out.glob(".onnx.partial.*")), "export never started writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err.strip().splitlines()[-1].startswith("vmoe-export: error: interrupted"), err[-2000:]
    assert "Traceback" not in err and sorted(p.name for p in out.iterdir()) == []


def test_next_export_removes_only_partials_of_dead_exports(tmp_path, tiny_onnx_bundle):
    from vmoe_export.staging import OWNER, remove_dead_partials

    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "out"
    for name, pid in ((".onnx.partial.dead", dead.pid), (".tflite.partial.live", os.getppid())):
        (out / name).mkdir(parents=True)
        (out / name / OWNER).write_text(json.dumps({"pid": pid, "start": None, "host": os.uname().nodename}))
    (out / ".onnx.partial.noowner").mkdir()  # cannot prove it is dead: kept
    (out / "mine").mkdir()
    removed = remove_dead_partials(out, log=lambda s: None)
    assert [p.name for p in removed] == [".onnx.partial.dead"]
    assert sorted(p.name for p in out.iterdir()) == [".onnx.partial.noowner", ".tflite.partial.live", "mine"]


# ---- fuzz: one mutation of a real manifest or checkpoint -> same answer, or the project's own error

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.sampled_from([10**30, -1, 0, 1, 2, 3]),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                      st.sampled_from(["moe0_e0", "experts/e0/moe0.onnx", "trunk", "../x", "/etc/passwd", ""]))
JSON_VALUE = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                          max_leaves=6)
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, print_blob=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _mutate(root, path, op, value, other):
    """Apply one mutation at `path` (never the root itself)."""
    parent = root
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if op == "delete":
        del parent[key]
    elif op == "replace":
        parent[key] = value
    elif op == "deepen":
        parent[key] = "__DEEP__"
    elif op == "duplicate" and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
    elif op == "duplicate":
        parent[f"{key}_copy"] = copy.deepcopy(parent[key])
    elif op == "swap":
        keys = list(range(len(parent))) if isinstance(parent, list) else list(parent)
        j = keys[other % len(keys)]
        parent[key], parent[j] = parent[j], parent[key]


def _get(root, path):
    for key in path:
        root = root[key]
    return root


def plausible(original):
    """A value of the original's own type, near it: what passes the type checks and probes the cross-checks."""
    if isinstance(original, bool):
        return st.just(not original)
    if isinstance(original, int):
        return st.integers(-2, 2 * original + 3)
    if isinstance(original, float):
        return st.sampled_from([0.0, -original, original * 2, original + 1e-6, float("nan"), 1e-30])
    if isinstance(original, str):
        return st.sampled_from(["c1", "moe0_e1", "experts/e1/moe0.onnx", "shared/head.onnx", "rgb", original + "x"])
    if isinstance(original, list) and original:
        return st.permutations(original) | st.just(original[:-1]) | st.just(original + original[-1:])
    return JSON_VALUE


def draw_mutation(data, tree, sections):
    """Which path (a top-level section first, so small sections are not drowned by big ones), which operation,
    and with what value: half the time one of the original's type."""
    section = data.draw(st.sampled_from(sections))
    path = data.draw(st.sampled_from([p for p in _paths(tree[section], (section,))]))
    op = data.draw(st.sampled_from(["replace", "replace", "delete", "swap", "duplicate", "deepen"]))
    original = _get(tree, path)
    value = data.draw(st.one_of(plausible(original), JSON_VALUE))
    return path, op, value, data.draw(st.integers(0, 10**6))


@pytest.fixture(scope="module")
def baseline(tiny_onnx_bundle, image):
    rt = BundleRuntime(tiny_onnx_bundle[0])
    pred = rt.predict(preprocess_image(image, rt.manifest))
    manifest = json.loads((tiny_onnx_bundle[0] / "manifest.json").read_text())
    return manifest, pred, sorted(manifest)


@FUZZ
@given(data=st.data())
def test_fuzz_manifest_mutations(tmp_path_factory, tiny_onnx_bundle, image, baseline, data):
    manifest, base, sections = baseline
    path, op, value, other = draw_mutation(data, manifest, sections)
    mutated = copy.deepcopy(manifest)
    _mutate(mutated, path, op, value, other)
    text = json.dumps(mutated).replace('"__DEEP__"', "[" * 50_000 + "]" * 50_000)
    pred = _predict_or_refuse(tmp_path_factory, tiny_onnx_bundle, image, text)
    if pred is None:
        return
    np.testing.assert_array_equal(pred.logits, base.logits)
    assert (pred.experts, pred.gates, pred.label) == (base.experts, base.gates, base.label)


def _edits(original):
    """Deterministic plausible edits of one leaf: what a careless hand-edit looks like."""
    if isinstance(original, bool):
        return [not original]
    if isinstance(original, int):
        return [original + 1, original - 1]
    if isinstance(original, float):
        return [original * 2 + 1e-3]
    if isinstance(original, str):
        return [original + "x"]
    if original is None:
        return [0]
    return []


def _predict_or_refuse(tmp_path_factory, tiny_onnx_bundle, image, text):
    bundle = tmp_path_factory.mktemp("edit")
    for name in ("shared", "experts"):  # hard links: artifacts are read, never changed
        shutil.copytree(tiny_onnx_bundle[0] / name, bundle / name, copy_function=os.link)
    (bundle / "manifest.json").write_text(text)
    try:
        rt = BundleRuntime(bundle)
        return rt.predict(preprocess_image(image, rt.manifest))
    except VmoeError:
        return None


def test_every_single_field_edit(tmp_path_factory, tiny_onnx_bundle, image, baseline):
    """Exhaustive over the manifest's leaves (hundreds): each plausible one-field edit is refused or harmless.
    Where random fuzzing samples, this visits every field once, so a cross-check that is switched off shows."""
    manifest, base, _ = baseline
    leaves = [p for p in _paths(manifest) if p and not isinstance(_get(manifest, p), (dict, list))]
    assert len(leaves) > 200
    harmless = []
    for path in leaves:
        for value in _edits(_get(manifest, path)):
            mutated = copy.deepcopy(manifest)
            _mutate(mutated, path, "replace", value, 0)
            pred = _predict_or_refuse(tmp_path_factory, tiny_onnx_bundle, image, json.dumps(mutated))
            if pred is not None:
                np.testing.assert_array_equal(pred.logits, base.logits, err_msg=f"edit {path} = {value!r}")
                assert (pred.experts, pred.gates) == (base.experts, base.gates), path
                harmless.append(path[0])
    # Only fields no answer depends on may be edited without a refusal: provenance and reports (created_*,
    # backend_options, export_seconds, parity numbers, eval_data's description of the parity images) and the
    # per-graph flops/params figures (graphs, model).
    descriptive = {"created_at", "created_by", "backend_options", "export_seconds", "parity", "eval_data", "graphs", "model"}
    assert set(harmless) - descriptive == set()


@pytest.fixture(scope="module")
def checkpoint_baseline(tmp_path_factory):
    path = _tiny_checkpoint(tmp_path_factory.mktemp("ck") / "c.pt")
    payload = torch.load(path, weights_only=True)
    x = torch.randn(3, 1, 8, 8)
    from vmoe_export.checkpoint import load_checkpoint

    with torch.no_grad():
        logits = load_checkpoint(path).build_model()(x)[0]
    return payload, x, logits


@FUZZ
@given(data=st.data())
def test_fuzz_checkpoint_mutations(tmp_path_factory, checkpoint_baseline, data):
    """One mutation of a real checkpoint: a key, a type, a config number, a label, a tensor's presence, shape
    or place (two weights exchanged)."""
    from vmoe_export.checkpoint import load_checkpoint

    payload, x, base = checkpoint_baseline
    structure = {k: v for k, v in payload.items() if k != "state_dict"}
    structure["state_dict"] = dict.fromkeys(payload["state_dict"], 0)  # tensors are leaves here
    path, op, value, other = draw_mutation(data, structure, sorted(structure))
    if op == "deepen":
        op = "delete"
    mutated = {k: (dict(v) if k == "state_dict" else copy.deepcopy(v)) for k, v in payload.items()}
    if path[:1] == ("state_dict",) and len(path) == 2 and op == "replace":
        value = torch.zeros(3, 5) if isinstance(value, int) else payload["state_dict"][path[1]] * 1.5
    if path == ("state_dict",) and op == "replace":
        value = {}
    _mutate(mutated, path, op, value, other)
    file = tmp_path_factory.mktemp("ckfuzz") / "c.pt"
    torch.save(mutated, file)
    try:
        model = load_checkpoint(file).build_model()
    except VmoeError:
        return
    with torch.no_grad():
        out = model(x)[0]
    torch.testing.assert_close(out, base, rtol=0, atol=0)
