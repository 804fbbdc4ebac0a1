"""Demo apps: every Swift and Kotlin source parses, and the Kotlin routing core's JUnit tests pass on
the JVM against golden vectors from a fresh export of the shipped model."""

import shutil
import subprocess

import pytest

from conftest import REPO, SHIPPED, needs_fmnist

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


@needs_fmnist
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("kotlinc") is None, reason="kotlinc not installed (apt-get install kotlin junit4)")
def test_kotlin_core_junit_against_golden_vectors(shipped_bundle, tmp_path):
    from vmoe_export.checkpoint import load_checkpoint
    from vmoe_export.data import load_fashion_mnist
    from vmoe_export.exporter import ExportOptions, export_bundle

    bundle, report = shipped_bundle("executorch")
    assert report["status"] == "pass"
    test = load_fashion_mnist().test
    fused, fused_report = export_bundle(load_checkpoint(SHIPPED), "executorch", tmp_path, test.images, test.labels,
                                        ExportOptions(parity_images=50, progress=False, schedule="fused"),
                                        log=lambda s: None)
    assert fused_report["status"] == "pass"
    r = subprocess.run([str(REPO / "android_demo" / "core" / "run_tests.sh"), str(bundle), str(fused)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "OK (18 tests)" in r.stdout
