"""The Python API: the README example as written, typed results and errors, every choice refused before any
work, and the rules each living in one module."""

import ast
import re
import subprocess
import sys

import pytest
import torch

import vmoe_export as v
from vmoe_export.errors import ConfigError
from vmoe_export.model import MobileVMoE
from vmoe_export.parity import ParityBounds, ParityError

from conftest import REPO, needs_fmnist, tiny_config


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@needs_fmnist
def test_readme_python_example_runs_as_written(tmp_path):
    (tmp_path / "models").symlink_to(REPO / "models")
    r = subprocess.run([sys.executable, "-c", readme_example()], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    digest = (tmp_path / "bundles-py" / "onnx" / "manifest.sha256").read_text().strip()
    assert f"manifest digest {digest}" in r.stdout and "top-1 agreement 100.0%" in r.stdout
    assert "self-test passed: True" in r.stdout and "via experts [" in r.stdout
    # The API prints nothing of its own without a progress callback, and hides the converters' chatter.
    assert "parity PASS" not in r.stdout + r.stderr and "torchvision is not installed" not in r.stderr


def test_import_loads_no_torch_and_names_the_api():
    code = "import sys, vmoe_export as v; assert 'torch' not in sys.modules; print(sorted(set(v.__all__) - {'__version__'}))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    for name in ("export", "load", "verify", "benchmark", "train"):
        assert name in r.stdout and callable(getattr(v, name))
    with pytest.raises(AttributeError):
        v.no_such_function


@pytest.mark.parametrize("kwargs, match", [
    (dict(targets=["onnx", "onnx"]), "listed twice"),
    (dict(targets=["tensorrt"]), "unknown target"),
    (dict(targets=[]), "no targets"),
    (dict(targets=["onnx"], parity_images=0), "at least 1"),
    (dict(targets=["onnx"], golden_images=0), "golden images"),
    (dict(targets=["onnx"], quantize="int4"), "unknown quantize"),
    (dict(targets=["coreml"], quantize="weight-int8", backend_options={"onnx": None}), "not being exported"),
])
def test_every_choice_is_refused_before_any_work(tmp_path, tiny_model, kwargs, match):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=match):
        v.export(tiny_model, output=out, **kwargs)
    assert not out.exists()


def test_dense_and_k2_fused_models_are_refused(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match="dense"):
        v.export(MobileVMoE(tiny_config(moe_layers=0)), ["onnx"], tmp_path / "a")
    with pytest.raises(ConfigError, match="top_k=1"):
        v.export(MobileVMoE(tiny_config(top_k=2)), ["onnx"], tmp_path / "b", schedule="fused")
    with pytest.raises(ConfigError, match="cannot export a dict"):
        v.export({}, ["onnx"], tmp_path / "c")


def test_a_module_exports_with_synthetic_parity_and_typed_results(tmp_path, tiny_model):
    lines = []
    [r] = v.export(tiny_model, ["onnx"], tmp_path, parity_images=8, schedule="auto", progress=lines.append)
    assert r.target == "onnx" and r.path == tmp_path / "onnx" and r.schedule == "fused" and r.quantization == "none"
    assert r.parity.passed and r.parity.images == 8 and r.parity.accuracy_delta is None  # synthetic: no accuracy
    assert len(r.digest) == 64 and r.size_bytes > 0 and r.graphs == 2 + tiny_model.cfg.num_experts
    assert any(line.startswith("onnx: parity PASS") for line in lines) and lines[-1] == r.summary()
    rt = v.load(r.path, expect_digest=r.digest)
    assert rt.self_test_report.passed and rt.schedule.kind == "fused"
    check = v.verify(r.path)
    assert check.passed and check.target == "onnx" and check.schedule == "fused"


def test_all_skips_targets_without_the_mode_and_says_so(tmp_path, tiny_model):
    from vmoe_export.backends import TARGETS, describe
    from vmoe_export.plan import plan_export
    from vmoe_export.quantize import QuantOptions

    plan = plan_export(tiny_model.cfg, "all", QuantOptions("weight-int8"))
    offered = [t for t in TARGETS if "weight-int8" in describe(t).quantization]
    assert [t.target for t in plan.targets] == offered and {t for t, _ in plan.skipped} == set(TARGETS) - set(offered)
    assert all("has no weight-int8 mode" in why for _, why in plan.skipped)
    static = plan_export(tiny_model.cfg, ["onnx", "tflite"], QuantOptions("static-int8"))
    assert all(t.quant.calibration in ("routed", "all") for t in static.targets)  # `auto` resolved per backend
    assert static.calibration_strategies == sorted({t.quant.calibration for t in static.targets})


def test_parity_failure_is_typed_and_keeps_the_rejected_bundle(tmp_path, tiny_model):
    impossible = ParityBounds(min_snr_db=1000.0)
    with pytest.raises(ParityError) as e:
        v.export(tiny_model, ["onnx"], tmp_path, parity_images=4, bounds=impossible)
    err = e.value
    assert err.target == "onnx" and err.rejected == tmp_path / "onnx.rejected" and err.rejected.is_dir()
    assert [f.check for f in err.failures] == ["stage_snr_db"] and err.failures[0].bound == 1000.0
    assert err.failures[0].measured < 1000.0 and err.results == [] and not (tmp_path / "onnx").exists()


def _calls(path, names: set[str]) -> set[str]:
    """Which of `names` the module at `path` calls or imports."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            found.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
        elif isinstance(node, ast.ImportFrom):
            found.update(a.name for a in node.names)
    return found & names


def test_each_rule_is_decided_in_one_module_and_the_commands_only_parse_and_print():
    pkg = REPO / "vmoe_export"
    rules = {"for_backend", "check_quantization", "check_kind", "resolve_schedule", "graph_mode", "router_apart"}
    deciders = {p.relative_to(pkg).as_posix(): _calls(p, rules) for p in pkg.rglob("*.py")}
    # plan.py resolves auto calibration, checks support and resolves the schedule; exporter.py asks the plan
    # for one target; quantize.py and manifest.py apply the one router-precision rule (precision.router_apart
    # derives from it whether a fused schedule keeps the router a graph of its own: plan.py and manifest.py ask).
    assert {m for m, c in deciders.items() if c & {"for_backend", "check_quantization"}} == {"plan.py"}
    assert {m for m, c in deciders.items() if "check_kind" in c} <= {"plan.py", "schedule.py"}
    assert {m for m, c in deciders.items() if "resolve_schedule" in c} <= {"plan.py", "exporter.py"}
    assert {m for m, c in deciders.items() if "graph_mode" in c} == {"quantize.py", "manifest.py", "precision.py"}
    assert {m for m, c in deciders.items() if "router_apart" in c} == {"plan.py", "manifest.py"}
    orchestration = {"export_bundle", "calibrate", "plan_export", "calibration_split", "run_benchmarks", "run_training"}
    for cli in ("cli.py", "bench/cli.py"):
        assert not _calls(pkg / cli, orchestration), f"{cli} orchestrates; it should call vmoe_export.api"
