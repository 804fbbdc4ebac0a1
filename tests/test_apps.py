"""Demo apps: every Swift and Kotlin source parses; the Android app's sources import only what exists and use
no API above min-sdk unguarded (kotlin_checks.py); the Kotlin core compiles with exactly the Kotlin version the
Gradle build declares and its JUnit tests pass on the JVM against fresh fp32 per-layer, fused and int8 exports of
the shipped model; the phone benchmark's JSON, written by that core, is parsed by vmoe-bench's own reader."""

import json
import re
import subprocess

import pytest

import kotlin_checks
from conftest import REPO, SHIPPED, needs_fmnist

CATALOG = REPO / "android_demo" / "gradle" / "libs.versions.toml"
APP_KT = sorted((REPO / "android_demo" / "app").rglob("*.kt"))

KOTLIN = sorted((REPO / "android_demo").rglob("*.kt")) + sorted((REPO / "android_demo").rglob("*.kts"))
SWIFT = sorted((REPO / "ios_demo").rglob("*.swift"))


def _parser(language_module):
    from tree_sitter import Language, Parser

    return Parser(Language(language_module.language()))


def _errors(node, out):
    if node.type == "ERROR" or node.is_missing:
        out.append(f"line {node.start_point[0] + 1}: {node.type}")
    for child in node.children:
        _errors(child, out)
    return out


def test_sources_exist():
    assert len([p for p in KOTLIN if p.suffix == ".kt"]) >= 8 and len(SWIFT) >= 8


@pytest.mark.parametrize("path", KOTLIN, ids=lambda p: str(p.relative_to(REPO)))
def test_kotlin_parses(path):
    import tree_sitter_kotlin

    tree = _parser(tree_sitter_kotlin).parse(path.read_bytes())
    assert _errors(tree.root_node, []) == []


@pytest.mark.parametrize("path", SWIFT, ids=lambda p: str(p.relative_to(REPO)))
def test_swift_parses(path):
    import tree_sitter_swift

    tree = _parser(tree_sitter_swift).parse(path.read_bytes())
    assert _errors(tree.root_node, []) == []


def test_parse_check_catches_a_syntax_error():
    import tree_sitter_kotlin
    import tree_sitter_swift

    assert _errors(_parser(tree_sitter_kotlin).parse(b"fun f( { val = }").root_node, [])
    assert _errors(_parser(tree_sitter_swift).parse(b"func f( { let = }").root_node, [])


def _declared_kotlin() -> str:
    m = re.search(r'^kotlin\s*=\s*"([^"]+)"', CATALOG.read_text(), re.M)
    assert m, f"{CATALOG} declares no kotlin version"
    return m.group(1)


def test_installed_kotlin_is_the_declared_one():
    """install.sh installs the compiler the Gradle catalog names; a catalog bump without a reinstall fails here."""
    version = _declared_kotlin()
    home = REPO / ".toolchain" / f"kotlinc-{version}"
    assert (home / "bin" / "kotlinc").is_file(), f"no Kotlin {version} compiler at {home}: run ./install.sh"
    assert (home / "build.txt").read_text().split("-")[0] == version
    r = subprocess.run([str(home / "bin" / "kotlinc"), "-version"], capture_output=True, text=True, timeout=300)
    assert f"kotlinc-jvm {version} " in r.stdout + r.stderr


def test_gradle_build_reads_versions_from_the_catalog():
    """One source of truth: no build script names a plugin or library version of its own."""
    for script in sorted((REPO / "android_demo").rglob("*.gradle.kts")):
        text = script.read_text()
        assert not re.search(r'version\s+"[\d.]+"', text), f"{script} pins a plugin version outside the catalog"
        assert not re.search(r'\("[\w.-]+:[\w.-]+:[\d.]+"\)', text), f"{script} pins a library outside the catalog"
    assert "executorchVersion" not in (REPO / "android_demo" / "gradle.properties").read_text()


@pytest.mark.parametrize("path", APP_KT, ids=lambda p: p.name)
def test_app_imports_resolve_and_apis_fit_min_sdk(path):
    assert kotlin_checks.check_app_file(path) == []


def test_import_check_catches_missing_and_repeated_imports():
    decls = kotlin_checks.public_declarations(kotlin_checks.CORE_SOURCES)
    assert {"RoutedModel", "Bundle", "DeviceBench", "Pixels", "int", "GraphLoader"} <= decls["dev.vmoe.core"]
    bad = b"package dev.vmoe.demo\nimport dev.vmoe.core.list\nimport dev.vmoe.core.int\nimport dev.vmoe.core.int\n" \
          b"import dev.vmoe.core.Step.Run\nimport dev.vmoe.core.*\nimport java.io.File\n"
    problems = kotlin_checks.unresolved_imports(bad, decls)
    assert len(problems) == 2 and "declares no public list" in problems[0] and "repeated" in problems[1]
    hidden = kotlin_checks.public_declarations(kotlin_checks.APP_SOURCES)
    assert "MainActivity" in hidden["dev.vmoe.demo"]


@pytest.mark.parametrize("body, flagged", [
    ("val b = ImageDecoder.decodeBitmap(s)", True),
    ("if (Build.VERSION.SDK_INT >= 28) { val b = ImageDecoder.decodeBitmap(s) }", False),
    ("if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.P) { ImageDecoder.decodeBitmap(s) }", False),
    ("if (Build.VERSION.SDK_INT > 27) { ImageDecoder.decodeBitmap(s) }", False),
    ("if (Build.VERSION.SDK_INT >= 26) { ImageDecoder.decodeBitmap(s) }", True),
    ("if (Build.VERSION.SDK_INT >= 28) { f() } else { ImageDecoder.decodeBitmap(s) }", True),
    ("val e = context.mainExecutor", True),
    ("val p = Paths.get(x)", True),
])
def test_api_level_check_catches_unguarded_use(body, flagged):
    src = ("package dev.vmoe.demo\nimport android.graphics.ImageDecoder\nimport java.nio.file.Paths\n"
           f"class A {{\n    fun f(s: Any) {{\n        {body}\n    }}\n}}\n").encode()
    assert bool(kotlin_checks.api_level_problems(src, 24)) == flagged
    annotated = src.replace(b"    fun f(", b"    @RequiresApi(33)\n    fun f(")
    assert kotlin_checks.api_level_problems(annotated, 24) == []


@needs_fmnist
@pytest.mark.slow
def test_kotlin_core_junit_against_golden_vectors(shipped_bundle, tmp_path):
    """The core's JUnit suite, compiled with the declared Kotlin compiler, on the shipped model's fp32 per-layer,
    fused (the default) and dynamic-int8 (fused, its fp32 router a graph of its own) ExecuTorch bundles and its
    fused LiteRT bundle (shared weights checked); the benchmark report its DeviceBench wrote is read by vmoe-bench."""
    from vmoe_export.bench.device import device_markdown, merge_device_reports, parse_device_report
    from vmoe_export.checkpoint import load_checkpoint
    from vmoe_export.data import load_fashion_mnist
    from vmoe_export.exporter import ExportOptions, export_bundle
    from vmoe_export.quantize import QuantOptions

    fused, fused_report = shipped_bundle("executorch")  # auto: fused at k=1
    test = load_fashion_mnist().test
    ckpt = load_checkpoint(SHIPPED)
    bundle, report = export_bundle(ckpt, "executorch", tmp_path / "per-layer", test.images, test.labels,
                                   ExportOptions(parity_images=50, progress=False, schedule="per-layer"),
                                   log=lambda s: None)
    int8, int8_report = export_bundle(ckpt, "executorch", tmp_path / "int8", test.images, test.labels,
                                      ExportOptions(parity_images=1000, progress=False, quant=QuantOptions("dynamic-int8")),
                                      log=lambda s: None)
    assert report["status"] == fused_report["status"] == int8_report["status"] == "pass"
    assert [json.loads((b / "manifest.json").read_text())["schedule"]["kind"] for b in (bundle, fused, int8)] == \
        ["per-layer", "fused", "fused"]
    out = tmp_path / "device.json"
    shared = shipped_bundle("tflite")[0]  # fused, its paths' common weights in experts/shared.bin
    assert json.loads((shared / "manifest.json").read_text())["shared_weights"]["graphs"]
    r = subprocess.run([str(REPO / "android_demo" / "core" / "run_tests.sh"), str(bundle), str(fused), str(int8),
                        str(shared)],
                       capture_output=True, text=True, timeout=900, env={**__import__("os").environ, "VMOE_BENCH_OUT": str(out)})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert f"kotlinc: kotlinc-jvm {_declared_kotlin()}" in r.stdout
    assert r.stdout.count("OK (28 tests)") == 2, r.stdout[-3000:]

    device = parse_device_report(out.read_text(), str(out))
    assert device["bundle"]["digest"] == (fused / "manifest.sha256").read_text().strip()
    # The host half of a report, as run_benchmarks writes it, for the merge (the numbers are made up: only the
    # arithmetic and the layout are under test).
    host = {"backends": {"executorch": {"split": {"end_to_end": {"median_ms": 2.0}}}},
            "ratios": {"executorch": {"split_over_dense_twin": 1.2}}}
    merge_device_reports(host, [device])
    (label, entry), = host["devices"].items()
    assert label.startswith("JVM ") and set(entry["backends"]) == {"executorch"}
    q = entry["ratios"]["executorch"]
    assert q["device_over_host_split"] == pytest.approx(device["split"]["end_to_end"]["median_ms"] / 2.0)
    assert q["split_over_dense_twin"] == pytest.approx(device["split"]["end_to_end"]["median_ms"]
                                                       / device["dense_twin"]["median_ms"])
    assert any(line.startswith(f"| {label} | executorch |") for line in device_markdown(host))
    json.dumps(host)
