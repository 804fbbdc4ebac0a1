"""The codebase's structural promises: one owner of graph names and the schedule, no import circles,
a manifest schedule that round-trips and is checked, typed backends, and spec checks that can fail."""

import ast
import json
import platform
import shutil

import numpy as np
import pytest

from conftest import REPO, needs_fmnist
from vmoe_export.schedule import Schedule, ScheduleError, execute

PACKAGE = REPO / "vmoe_export"


def _sources():
    return sorted(PACKAGE.rglob("*.py"))


def test_graph_names_are_spelled_only_in_schedule_py():
    offenders = [f"{p.relative_to(REPO)}:{i}" for p in _sources() if p.name != "schedule.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if "moe{" in line or "_e{" in line]
    assert offenders == []


def _module_name(path):
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path):
    """Every package module this file imports, at module level or inside functions."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("vmoe_export"):
                # `from . import x` may name a submodule x; it depends on the
                # package's own code only when some name is not a submodule.
                names = [f"{target}.{a.name}" for a in node.names]
                submodules = {n for n in names if (REPO / (n.replace(".", "/") + ".py")).exists()}
                out.update(submodules)
                if len(submodules) < len(names):
                    out.add(target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("vmoe_export"))
    out.discard(me)
    return out


def _find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle in `graph` (module -> modules it imports), or []."""
    state: dict[str, str] = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, stack + [nxt])):
                return found
        state[node] = "done"
        return []

    for mod in sorted(graph):
        if mod not in state and (found := visit(mod, [mod])):
            return found
    return []


def test_no_import_circle_in_the_package():
    graph = {_module_name(p): _imports(p) for p in _sources()}
    assert len(graph) > 20 and "vmoe_export.schedule" in graph["vmoe_export.runtime"]
    assert _find_cycle(graph) == []


def test_import_circle_check_catches_one(tmp_path, monkeypatch):
    """The checker itself can fail: two modules importing each other (one lazily) are found."""
    pkg = tmp_path / "vmoe_export"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from .a import y\n")
    monkeypatch.setattr("test_structure.REPO", tmp_path)
    graph = {_module_name(p): _imports(p) for p in sorted(pkg.glob("*.py"))}
    assert _find_cycle(graph) == ["vmoe_export.a", "vmoe_export.b", "vmoe_export.a"]


@pytest.mark.parametrize("E,L,k", [(4, 2, 1), (10, 2, 2), (3, 1, 3), (5, 0, 1)])
def test_schedule_round_trips_through_json(E, L, k):
    s = Schedule.per_layer(E, L, k)
    assert Schedule.from_json(json.loads(json.dumps(s.to_json()))) == s
    assert s.num_experts == (E if L else 0) and s.top_k == (k if L else 0)
    assert len(s.graphs()) == (2 if not L else 3 + L * (1 + E))
    for e in range(E if L else 0):
        assert len(s.expert_graphs(e)) == L and not set(s.expert_graphs(e)) & set(s.shared_graphs)


@pytest.mark.parametrize("steps,match", [
    ([], "non-empty"),
    ([{"op": "jump"}], "unknown op"),
    ([{"op": "route", "logits": "router_logits"}], "lacks 'k'"),
    ([{"op": "route", "logits": "router_logits", "k": "1"}], "integer"),
    ([{"op": "route", "logits": "router_logits", "k": True}], "integer"),
    (["run trunk"], "not an object"),
])
def test_malformed_schedule_is_refused(steps, match):
    with pytest.raises(ScheduleError, match=match):
        Schedule.from_json(steps)


def test_schedule_arithmetic_counts_shared_plus_k_experts():
    s = Schedule.per_layer(3, 2, 2)
    per_graph = {g.name: 1 for g in s.graphs()}
    per_graph["trunk"] = 100
    assert s.total(per_graph) == 100 + 1 + 2 + 6 + 1
    assert s.active(per_graph) == 100 + 1 + 2 + 1 + 2 * 2  # trunk, router, 2 attention, head, 2 experts x 2 layers


def test_execute_mixes_the_routed_experts_with_their_gates():
    """The executor alone, on numbers: tokens_out + sum_j gate_j * expert_j(hidden), per layer."""
    s = Schedule.per_layer(3, 2, 2)
    calls = []

    def run(name, *xs):
        calls.append(name)
        x = xs[0]
        if name == "trunk":
            return (x + 1,)
        if name == "router":
            return (np.array([0.0, 5.0, 4.0]),)
        if name.endswith("attn"):
            return (x * 2, x)
        if name == "head":
            return (x,)
        return (x * (10 ** int(name[-1])),)  # expert e multiplies by 10^e

    def select(logits):
        return [1, 2], [0.5, 0.25]

    out = execute(s, run, select, np.array(1.0))
    x = 2.0
    for _ in range(2):
        x = 2 * x + 0.5 * 10 * x + 0.25 * 100 * x
    assert out == pytest.approx(x)
    assert calls == ["trunk", "router", "moe0_attn", "moe0_e1", "moe0_e2", "moe1_attn", "moe1_e1", "moe1_e2", "head"]


# ---- backends: typed, declared in one place

def test_every_registered_backend_declares_itself():
    from vmoe_export.backends import REGISTRY, all_backends

    assert [b.name for b in all_backends()] == list(REGISTRY)
    for b in all_backends():
        assert b.suffix.startswith(".") and b.distributions and b.modules and "none" in b.quantization
        b.make_options()  # defaults construct


def test_run_options_bound_threads_for_every_backend():
    from vmoe_export.backends import MAX_THREADS, RunOptions

    RunOptions(threads=0)
    RunOptions(threads=MAX_THREADS)
    for bad in (-1, MAX_THREADS + 1, 100000, True, 1.5):
        with pytest.raises(ValueError, match="threads"):
            RunOptions(threads=bad)


def test_backend_refuses_another_backends_options():
    from vmoe_export.backends import describe
    from vmoe_export.backends.coreml import CoreMLOptions

    with pytest.raises(TypeError, match="onnx takes OnnxOptions"):
        describe("onnx").make_options(CoreMLOptions())
    with pytest.raises(ValueError, match="unknown CoreML compression"):
        CoreMLOptions(compress="int3")


def test_old_schema_version_says_re_export(tmp_path):
    from vmoe_export.bundle import BundleError, read_manifest

    (tmp_path / "manifest.json").write_text(json.dumps({"schema": "vmoe-export/bundle", "schema_version": 1, "target": "onnx"}))
    with pytest.raises(BundleError, match="older vmoe-export.*re-export the bundle with vmoe-export --target onnx"):
        read_manifest(tmp_path)


# ---- spec verification where no runtime runs (CoreML off macOS)

@needs_fmnist
@pytest.mark.slow
@pytest.mark.skipif(platform.system() == "Darwin", reason="on macOS CoreML bundles get numeric parity instead")
def test_coreml_spec_verification_opens_every_artifact_and_fails_on_a_corrupt_one(shipped_bundle, tmp_path):
    from vmoe_export.backends import describe, get_backend
    from vmoe_export.bundle import read_manifest
    from vmoe_export.parity import verify_specs

    path, _ = shipped_bundle("coreml")
    manifest = read_manifest(path)
    backend = get_backend("coreml")
    assert verify_specs(backend, path, manifest, "no runtime")["spec_verified_graphs"] == len(manifest["graphs"])

    copy = tmp_path / "coreml"
    shutil.copytree(path, copy)
    expert = manifest["experts"][2]["graphs"][-1]  # moe1_e2 (per-layer) or e2_path (fused)
    victim = next((copy / manifest["graphs"][expert]["path"]).rglob("*.mlmodel"))
    victim.write_bytes(b"\x00garbage" * 10)
    report = verify_specs(backend, copy, manifest, "no runtime")
    assert report["status"] == "fail" and report["spec_verified_graphs"] == len(manifest["graphs"]) - 1
    assert report["failures"][0].startswith(f"{expert}:")

    # A manifest whose tensor shapes disagree with the package fails too.
    manifest["graphs"]["head"]["inputs"][0]["shape"] = [1, 99, 64]
    assert verify_specs(backend, path, manifest, "no runtime")["status"] == "fail"
    # A backend without a checker verifies nothing and says so, rather than claiming every graph.
    unchecked = verify_specs(describe("onnx"), path, manifest, "no runtime")
    assert unchecked["spec_verified_graphs"] == 0 and "nothing was verified" in unchecked["reason"]
